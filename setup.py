"""Build: the pure core compiled with mypyc where that works, the plain Python package where it does not.

``pyproject.toml`` holds the metadata; this adds only the optional native
modules. ``crdtstore.compiled.MODULES`` are compiled when mypyc and a C
compiler are there, unless ``CRDTSTORE_PURE=1`` is set. Any failure (mypyc
missing or refusing the code, no compiler) leaves the install pure-Python
instead of failing it: the sources are the same modules, only slower. The
hashes of the compiled sources go into ``crdtstore/core_build.json``, so
that a compiled module which no longer matches its source is not used.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from crdtstore.compiled import BUILD_INFO, MODULES, PURE_ENV, source_hashes  # noqa: E402

del sys.path[0]
PURE = os.environ.get(PURE_ENV, "") not in ("", "0")


def _remove_native(root: Path) -> None:
    """Drop native modules an earlier in-place build left beside the sources: they would shadow them.

    Beside every source, not only today's ``MODULES``: a module taken off the list must not keep
    running from the native file an older build left next to it.
    """
    for source in (root / "crdtstore").rglob("*.py"):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            source.with_suffix(suffix).unlink(missing_ok=True)
    for shared in root.glob("crdtstore_core__mypyc.*"):
        shared.unlink()
    (root / "crdtstore" / BUILD_INFO).unlink(missing_ok=True)


class _OptionalBuildExt(build_ext):
    """Compiles the core with mypyc when extensions are built, not whenever setup.py is read (pip reads
    it several times, and mypyc type-checks first); on any failure it builds nothing: pure-Python.

    Only an in-place (editable) build touches the source tree: it first removes what an earlier one
    left there, so that ``CRDTSTORE_PURE=1 pip install -e .`` leaves no native module behind.
    """

    def finalize_options(self) -> None:
        self.in_tree = bool(getattr(self, "editable_mode", False) or self.inplace)
        if self.in_tree:
            _remove_native(ROOT)
        if PURE:
            print(f"crdtstore: {PURE_ENV} is set; the core installs pure-Python", file=sys.stderr)
        self.distribution.ext_modules = [] if PURE else self._mypycify()
        super().finalize_options()

    @staticmethod
    def _mypycify() -> list[Extension]:
        try:
            from mypyc.build import mypycify

            paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in MODULES]
            return list(mypycify(paths, group_name="crdtstore_core"))
        except (Exception, SystemExit) as exc:  # mypyc missing, or refusing the code
            print(f"crdtstore: mypyc failed ({exc!r}); the core installs pure-Python", file=sys.stderr)
            return []

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except (Exception, SystemExit) as exc:  # no compiler, or any compiler error
            print(f"crdtstore: compiling the core failed ({exc!r}); it installs pure-Python", file=sys.stderr)
            self.extensions = []
            _remove_native(Path(self.build_lib))
            if self.in_tree:
                _remove_native(ROOT)
            return
        hashes = json.dumps(source_hashes(ROOT), indent=1) + "\n"
        for root in [Path(self.build_lib), *([ROOT] if self.in_tree else [])]:
            (root / "crdtstore").mkdir(parents=True, exist_ok=True)
            (root / "crdtstore" / BUILD_INFO).write_text(hashes, encoding="utf-8")


# The placeholder only makes setuptools run build_ext, which puts mypyc's modules in its place.
setup(ext_modules=[Extension("crdtstore_core__placeholder", sources=[])], cmdclass={"build_ext": _OptionalBuildExt})
