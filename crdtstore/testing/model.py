"""Abstract ops, made concrete against a replica's current state, and a plain Python model.

Hypothesis draws *abstract* ops (an index as a fraction of the length, say)
so that a drawn op stays meaningful whatever state it lands on; ``concretize``
turns one into the JSON op the document takes. ``Model`` applies the same
JSON ops to plain dicts, lists, strings, ints and sets: a single replica
must always agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..crdt.awset import element_key
from ..document import Document

__all__ = ["PATHS", "AbstractOp", "Model", "concretize", "read_path"]

PATHS: tuple[tuple[str, ...], ...] = (("a",), ("b",), ("m", "a"), ("m", "t"), ("t",))


@dataclass(frozen=True)
class AbstractOp:
    kind: str  # set, lww, delete, increment, add, remove, enable, disable, insert_text, insert_list, delete_range
    path: tuple[str, ...]
    value: Any = None
    frac: float = 0.0
    count: int = 1

    def __repr__(self) -> str:
        return f"AbstractOp({self.kind!r}, {self.path!r}, {self.value!r}, {self.frac!r}, {self.count!r})"


def read_path(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def concretize(op: AbstractOp, current: Any) -> dict[str, Any]:
    """The JSON op for ``op`` given the document's current JSON ``current`` (indexes scaled to fit)."""
    path = list(op.path)
    here = read_path(current, op.path)
    length = len(here) if isinstance(here, str | list) else 0
    if op.kind == "set":
        return {"op": "set", "path": path, "value": op.value}
    if op.kind == "lww":
        return {"op": "set", "path": path, "value": op.value, "lww": True}
    if op.kind == "delete":
        return {"op": "delete", "path": path}
    if op.kind == "increment":
        return {"op": "increment", "path": path, "by": op.count}
    if op.kind in ("add", "remove"):
        return {"op": op.kind, "path": path, "value": op.value}
    if op.kind in ("enable", "disable"):
        return {"op": op.kind, "path": path}
    if op.kind == "insert_text":
        return {"op": "insert", "path": path, "index": int(op.frac * (length + 1) * 0.999), "text": op.value}
    if op.kind == "insert_list":
        return {"op": "insert", "path": path, "index": int(op.frac * (length + 1) * 0.999), "values": op.value}
    index = int(op.frac * length * 0.999)
    return {"op": "delete", "path": path, "index": index, "count": max(1, min(op.count, length - index))}


class Model:
    """Sequential semantics of the ops on plain Python values."""

    def __init__(self) -> None:
        self.root: dict[str, Any] = {}

    def value(self) -> dict[str, Any]:
        return _export_map(self.root)

    def apply(self, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            self._apply(op)

    def _apply(self, op: dict[str, Any]) -> None:
        *parents, key = op["path"]
        node = self.root
        if op["op"] == "delete" and "index" not in op:
            for p in parents:
                child = node.get(p)
                if not isinstance(child, dict):
                    return
                node = child
            node.pop(key, None)
            return
        for p in parents:
            node = node.setdefault(p, {})
        kind = op["op"]
        if kind == "set":
            node[key] = op["value"]
        elif kind == "increment":
            node[key] = node.get(key, 0) + op.get("by", 1)
        elif kind == "add":
            node.setdefault(key, _Set())[element_key(op["value"])] = op["value"]
        elif kind == "remove":
            node.setdefault(key, _Set()).pop(element_key(op["value"]), None)
        elif kind in ("enable", "disable"):
            node[key] = kind == "enable"
        elif kind == "insert":
            content = op["text"] if "text" in op else op["values"]
            old = node.get(key, "" if "text" in op else [])
            node[key] = old[: op["index"]] + content + old[op["index"] :]
        else:
            old = node[key]
            node[key] = old[: op["index"]] + old[op["index"] + op["count"] :]


class _Set(dict[str, Any]):
    """A set of JSON values keyed by canonical text."""


def _export(value: Any) -> Any:
    if isinstance(value, _Set):
        return [value[k] for k in sorted(value)]
    if isinstance(value, dict):
        return _export_map(value)
    return value


def _export_map(node: dict[str, Any]) -> dict[str, Any]:
    return {k: _export(v) for k, v in sorted(node.items())}


def document_matches(doc: Document, model: Model) -> bool:
    return doc.value() == model.value()
