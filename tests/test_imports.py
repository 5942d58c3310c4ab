"""Package boundaries: no import cycle among our modules, and the pure packages import no I/O."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crdtstore", "sync")

# What only an adapter may import: sockets, event loops, servers, files and clocks.
IO_MODULES = frozenset(
    {"asyncio", "socket", "ssl", "selectors", "threading", "time"}
    | {"lmdb", "websockets", "starlette", "uvicorn", "httpx"}
)
# The pure layers: the CRDT core and the replication protocol (``sync/io/`` is its I/O).
PURE = ("crdtstore.crdt", "crdtstore.causal", "crdtstore.canonical", "crdtstore.codec", "crdtstore.document", "sync")
NOT_PURE = ("sync.io",)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every module ``name`` imports, at any depth of its body (TYPE_CHECKING blocks included)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            if not all(s in known for s in submodules):
                yield module  # names from the module itself, not only its submodules
            yield from (s for s in submodules if s in known)


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: {d for d in _imports(name, path, known) if d in known and d != name} for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    # codec and document imported each other (document lazily, inside methods) until the canonical
    # encoding moved to crdtstore/canonical.py; TYPE_CHECKING imports count too.
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _is_pure(name: str) -> bool:
    def under(prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return under(PURE) and not under(NOT_PURE)


@pytest.mark.parametrize("name", sorted(n for n in _modules() if _is_pure(n)))
def test_pure_modules_import_no_io(name: str) -> None:
    path = _modules()[name]
    imported = {m.split(".")[0] for m in _imports(name, path, set(_modules()))}
    assert not imported & IO_MODULES, f"{name} imports {sorted(imported & IO_MODULES)}"
    # Nor an adapter of ours: the pure layers sit below them.
    adapters = {m for m in _imports(name, path, set(_modules())) if m.startswith(("sync.io", "crdtstore.api"))}
    assert not adapters, f"{name} imports {sorted(adapters)}"
