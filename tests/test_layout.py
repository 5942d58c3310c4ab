"""The node's modules import only downward, and stay small (issue #10, item 4)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "crdtstore"

# Module -> the modules of this group it may import at run time. A write goes
# node -> docstore -> feed -> storage, and nothing calls back up.
LAYERS: dict[str, set[str]] = {
    "crdtstore.region": set(),
    "crdtstore.node": {"crdtstore.docstore", "crdtstore.feed", "crdtstore.remote", "crdtstore.local"},
    "crdtstore.local": {"crdtstore.docstore"},
    "crdtstore.remote": {"crdtstore.docstore"},
    "crdtstore.docstore": {"crdtstore.doccache"},
    "crdtstore.doccache": set(),
    "crdtstore.feed": set(),
}
GROUP = {*LAYERS, "crdtstore.api", "crdtstore.cli", "crdtstore.replicator"}
MAX_LINES = 650


def runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs (imports under ``if TYPE_CHECKING:`` do not count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            for field in ("body", "orelse", "finalbody", "handlers"):
                child = getattr(node, field, None)
                if isinstance(child, list):
                    visit([c for c in child if isinstance(c, ast.stmt | ast.ExceptHandler)])  # type: ignore[misc]

    visit(tree.body)
    return found


def in_group(module: str) -> str | None:
    for name in GROUP:
        if module == name or module.startswith(name + "."):
            return name
    return None


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_the_node_modules_import_only_downward(module: str) -> None:
    path = PACKAGE / f"{module.split('.', 1)[1]}.py"
    imported = {in_group(m) for m in runtime_imports(path)} - {None, module}
    assert imported <= LAYERS[module], f"{module} imports {sorted(imported - LAYERS[module])}"  # type: ignore[operator]


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_the_node_modules_stay_small(module: str) -> None:
    path = PACKAGE / f"{module.split('.', 1)[1]}.py"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_checker_sees_an_upward_import_and_ignores_type_checking_ones(tmp_path: Path) -> None:
    """Abuse: an import back up is found even nested in a try or a function; a TYPE_CHECKING one is not."""
    typing_only = tmp_path / "typing_only.py"
    typing_only.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from crdtstore.node import Node\n", encoding="utf-8"
    )
    assert "crdtstore.node" not in runtime_imports(typing_only)
    nested = tmp_path / "nested.py"
    nested.write_text(
        "try:\n    import crdtstore.remote\nexcept ImportError:\n    pass\n"
        "def f():\n    from crdtstore.node import NodeConfig\n",
        encoding="utf-8",
    )
    assert {"crdtstore.remote", "crdtstore.node"} <= runtime_imports(nested)
