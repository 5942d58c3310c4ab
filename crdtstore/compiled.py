"""Whether the pure core runs compiled (mypyc) or interpreted, and the switch back to its Python source.

``setup.py`` compiles ``MODULES`` with mypyc when it can and records the
SHA-256 of each one's source next to them (``core_build.json``). The
compiled modules sit beside their ``.py`` files and Python's import system
prefers them. :func:`install` (run by ``crdtstore/__init__.py``, before any
of them is imported) makes every one of them load from its ``.py`` instead
when ``CRDTSTORE_PURE=1`` is set, or when any source differs from what was
compiled (an editable install whose core was edited since: stale native
code must never run). It is all or none: compiled modules call each other
natively and share classes, so a mix would hold two ``Sequence`` classes.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["BUILD_INFO", "MODULES", "PURE_ENV", "decide", "install", "source_hashes", "status"]

# The modules mypyc compiles: the CRDT core and the document over it, with no I/O
# (crdtstore/crdt/__init__.py stays Python), then the writer thread's Python work
# over LMDB for local writes and peers' deltas (storage.py, whose methods tests
# replace, and commit.py stay Python).
# Exceptions with a class-level ``code`` live outside them (crdtstore/doc_errors.py):
# a native class keeps no such attribute on its instances.
MODULES = (
    "crdtstore.causal",
    "crdtstore.canonical",
    "crdtstore.codec",
    "crdtstore.crdt.awset",
    "crdtstore.crdt.base",
    "crdtstore.crdt.counter",
    "crdtstore.crdt.flag",
    "crdtstore.crdt.ormap",
    "crdtstore.crdt.registers",
    "crdtstore.crdt.sequence",
    "crdtstore.crdt.tags",
    "crdtstore.document",
    "crdtstore.limits",
    "crdtstore.ops",
    "crdtstore.doccache",
    "crdtstore.docstore",
    "crdtstore.hlc",
    "crdtstore.local",
    "crdtstore.merkle",
    "crdtstore.remote",
    "crdtstore.version",
)
PURE_ENV = "CRDTSTORE_PURE"
BUILD_INFO = "core_build.json"

_ROOT = Path(__file__).resolve().parent.parent
_status = "pure"


def _source(module: str, root: Path = _ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_hashes(root: Path = _ROOT) -> dict[str, str]:
    """The SHA-256 of each compiled module's source under ``root`` (``setup.py`` records these)."""
    return {m: hashlib.sha256(_source(m, root).read_bytes()).hexdigest() for m in MODULES}


def decide(root: Path = _ROOT, environ: Mapping[str, str] = os.environ) -> str:
    """What :func:`status` says for the package under ``root``; only what starts "compiled" runs compiled."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    if not any(_source(m, root).with_suffix(s).exists() for m in MODULES for s in suffixes):
        return "pure"
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return f"pure ({PURE_ENV}=1)"
    try:
        built = json.loads((root / "crdtstore" / BUILD_INFO).read_text(encoding="utf-8"))
        fresh = built == source_hashes(root)
        fresh = fresh and all(any(_source(m, root).with_suffix(s).exists() for s in suffixes) for m in MODULES)
    except (OSError, ValueError):
        fresh = False
    return "compiled (mypyc)" if fresh else "pure (compiled core is stale or partial: reinstall to rebuild it)"


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the core's modules as their ``.py`` sources, ahead of the compiled ones beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def install() -> None:
    """Decide once per process whether the core runs compiled; if not, make its modules load from source."""
    global _status
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return
    _status = decide()
    if _status != "pure" and not _status.startswith("compiled"):
        sys.meta_path.insert(0, _SourceFinder())


def status() -> str:
    """``"compiled (mypyc)"``, or ``"pure"`` with the reason when compiled modules exist but are not used."""
    return _status
