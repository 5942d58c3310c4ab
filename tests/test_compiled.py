"""The core compiled by mypyc and its Python source give the same bytes, and stale native code never runs.

Whatever this process runs (compiled after ``pip install -e .``, pure
without a compiler) is compared with a subprocess that runs the source
(``CRDTSTORE_PURE=1``): both replay the same trace prefix, concurrent
joins included, and hash every delta, every loaded-and-re-encoded state and
the final document.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crdtstore import codec, compiled
from crdtstore.document import Document
from crdtstore.testing.traces import load_trace, patch_ops

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "tests" / "data" / "traces"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def encodings_digest(trace_name: str, txns: int) -> str:
    """A hash of every encoding a short replay makes: deltas, states reloaded, the final states.

    Replica ``a`` replays the trace; replica ``b`` joins its deltas late and types and deletes
    concurrently now and then (``a`` joins those late too), so joins interleave runs and tombstones.
    """
    trace = load_trace(TRACES / trace_name)
    a, b = Document(), Document()
    digest = hashlib.sha256()
    to_b: list[bytes] = []
    to_a: list[bytes] = []
    for i, txn in enumerate(trace.txns[:txns]):
        for patch in txn.patches:
            raw = codec.encode_delta(a.apply(patch_ops(patch), replica="a", now=i))
            digest.update(raw)
            to_b.append(raw)
        if i % 7 == 6:
            for raw in to_b[:-2]:
                b.join(codec.decode_delta(raw))
            del to_b[:-2]
            length = len(b.value().get("text", ""))
            ops = patch_ops((length // 3, 1 if length and i % 2 else 0, "b"))
            raw = codec.encode_delta(b.apply(ops, replica="b", now=i))
            digest.update(raw)
            to_a.append(raw)
        if i % 5 == 4:
            for raw in to_a:
                a.join(codec.decode_delta(raw))
            to_a.clear()
        if i % 100 == 0:
            state = codec.encode_document(a)
            digest.update(state + codec.encode_document(codec.decode_document(state)))
    for raw in to_b:
        b.join(codec.decode_delta(raw))
    for raw in to_a:
        a.join(codec.decode_delta(raw))
    final = codec.encode_document(a)
    assert final == codec.encode_document(b)
    digest.update(final + codec.encode_document(codec.decode_document(final)))
    return digest.hexdigest()


@pytest.mark.parametrize(("trace", "txns"), [("sveltecomponent.json.gz", 2000)])
def test_the_running_core_and_its_source_encode_alike(trace: str, txns: int) -> None:
    code = (
        "import sys; from crdtstore import compiled; from tests.test_compiled import encodings_digest; "
        "assert compiled.status().startswith('pure'), compiled.status(); "
        "import crdtstore.crdt.sequence as s; assert s.__file__.endswith('.py'), s.__file__; "
        f"print(encodings_digest({trace!r}, {txns}))"
    )
    env = {**os.environ, compiled.PURE_ENV: "1"}
    pure = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert pure.stdout.strip() == encodings_digest(trace, txns)


def test_ci_runs_the_compiled_core() -> None:
    # .ci/run installs with a compiler at hand: a core left pure there means the build fell back.
    if os.environ.get("CI") != "true":
        pytest.skip("only CI promises a compiler")
    assert compiled.status() == "compiled (mypyc)"


def _fake_tree(tmp_path: Path) -> Path:
    """A copy of the core's sources with stand-ins for the native modules and their build record."""
    for module in compiled.MODULES:
        source = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        target = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.with_suffix(SUFFIX).write_bytes(b"")
    (tmp_path / "crdtstore" / compiled.BUILD_INFO).write_text(json.dumps(compiled.source_hashes(tmp_path)))
    return tmp_path


def test_a_fresh_build_runs_compiled(tmp_path: Path) -> None:
    assert compiled.decide(_fake_tree(tmp_path), {}) == "compiled (mypyc)"


def test_no_native_module_is_pure(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path)
    for path in root.rglob(f"*{SUFFIX}"):
        path.unlink()
    assert compiled.decide(root, {}) == "pure"


def test_the_environment_forces_the_source(tmp_path: Path) -> None:
    assert compiled.decide(_fake_tree(tmp_path), {compiled.PURE_ENV: "1"}) == "pure (CRDTSTORE_PURE=1)"
    assert compiled.decide(tmp_path, {compiled.PURE_ENV: "0"}) == "compiled (mypyc)"


def test_an_edited_source_is_never_run_compiled(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path)
    source = root / "crdtstore" / "crdt" / "sequence.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    assert compiled.decide(root, {}).startswith("pure (compiled core is stale")


def test_a_partial_or_unrecorded_build_is_never_run(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path)
    (root / "crdtstore" / "codec").with_suffix(SUFFIX).unlink()  # one module lost: a mix is never run
    assert compiled.decide(root, {}).startswith("pure (compiled core is stale")
    root = _fake_tree(tmp_path / "other")
    (root / "crdtstore" / compiled.BUILD_INFO).write_text("{not json")
    assert compiled.decide(root, {}).startswith("pure (compiled core is stale")


def test_a_stale_core_loads_every_module_from_source(tmp_path: Path) -> None:
    # The switch itself, in a process of its own: with the source finder installed, every module of the
    # core (not some) comes from its .py file, whatever lies beside it.
    code = (
        "import importlib, sys; from crdtstore import compiled; "
        "mods = [importlib.import_module(m).__file__ for m in compiled.MODULES]; "
        "assert all(f.endswith('.py') for f in mods), mods; print(compiled.status())"
    )
    env = {**os.environ, compiled.PURE_ENV: "yes"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("pure")
