"""The package declares what it imports: an install without the test extra can run the node, the CLI and the client.

``.ci/run`` also installs the package bare (no extras) into a venv of its own
and imports every public module there; this test says which distribution was
missing, before that install would fail.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crdtstore", "sync", "demo_app")
# Test support shipped in the package (as zarr.testing is): importing it needs the test extra.
TEST_SUPPORT = ROOT / "crdtstore" / "testing"


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalize(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in PACKAGES}


@functools.cache
def _installed() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _distributions(module: str) -> set[str]:
    return {_normalize(d) for d in _installed().get(module, [])}


def _undeclared(paths: list[Path], declared: set[str]) -> dict[str, set[str]]:
    missing: dict[str, set[str]] = {}
    for path in paths:
        where = str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)
        for module in _third_party_imports(path):
            dists = _distributions(module)
            assert dists, f"{where} imports {module}, which no installed distribution provides"
            if not dists & declared:
                missing.setdefault(module, set()).add(where)
    return missing


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_module_but_the_test_support_imports_only_runtime_dependencies() -> None:
    project = _project()
    runtime = _requirement_names(project["dependencies"])  # type: ignore[arg-type]
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if TEST_SUPPORT not in p.parents]
    assert _undeclared(paths, runtime) == {}


def test_the_test_support_imports_only_runtime_and_test_dependencies() -> None:
    project = _project()
    declared = _requirement_names(project["dependencies"]) | _requirement_names(
        project["optional-dependencies"]["test"]  # type: ignore[index]
    )
    assert _undeclared(sorted(TEST_SUPPORT.rglob("*.py")), declared) == {}


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import httpx\nfrom orjson import dumps\nimport json\n")
    assert _undeclared([module], {"orjson"}) == {"httpx": {str(module)}}
