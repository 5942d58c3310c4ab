"""Add-wins set: a dot map from element to dot set (Almeida et al. 2018, 7.4).

An add mints a dot for the element and covers the element's observed dots;
a remove covers them and adds nothing, so an add concurrent with a remove
wins. Elements are JSON values, keyed by their canonical JSON text, so
``1`` and ``"1"`` are different elements and ``{"a": 1, "b": 2}`` equals
``{"b": 2, "a": 1}``.

``presence`` is a dot set of its own: creating the set mints one, so an
emptied set still reads as ``[]`` until its key is removed from the map.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from ..causal import CausalContext, Dot
from ..errors import DecodeError
from ..limits import check_json
from .base import ReplicaTable, decode_dots, encode_dots, join_dotset
from .tags import Tag

__all__ = ["AWSet", "element_key"]


def element_key(value: Any) -> str:
    """The canonical JSON text that identifies a set element."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class AWSet:
    tag = Tag.SET
    __slots__ = ("elements", "is_delta", "presence")

    def __init__(
        self,
        presence: set[Dot] | None = None,
        elements: dict[str, set[Dot]] | None = None,
        *,
        is_delta: bool = False,
    ) -> None:
        self.presence: set[Dot] = presence if presence is not None else set()
        self.elements: dict[str, set[Dot]] = elements if elements is not None else {}
        # A delta keeps removed elements as empty entries: they tell a delta join what to visit.
        self.is_delta = is_delta

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AWSet) and self.presence == other.presence and self.elements == other.elements

    def __repr__(self) -> str:
        return f"AWSet({self.presence!r}, {self.elements!r})"

    def join(self, other: AWSet, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        self.presence = join_dotset(self.presence, other.presence, ours, theirs)
        keys = self.elements.keys() | other.elements.keys() if full else other.elements.keys()
        for key in list(keys):
            joined = join_dotset(self.elements.get(key, set()), other.elements.get(key, set()), ours, theirs)
            if joined or self.is_delta:
                self.elements[key] = joined
            else:
                self.elements.pop(key, None)

    def is_bottom(self) -> bool:
        return not self.presence and not self.elements

    def visible(self) -> bool:
        return bool(self.presence or self.elements)

    def dots(self) -> Iterator[Dot]:
        yield from self.presence
        for dots in self.elements.values():
            yield from dots

    def value(self) -> list[Any]:
        return [orjson.loads(k) for k in sorted(self.elements)]

    def siblings(self) -> list[Any]:
        return self.value()

    def copy(self) -> AWSet:
        return AWSet(set(self.presence), {k: set(v) for k, v in self.elements.items()}, is_delta=self.is_delta)

    def removal(self, ctx: CausalContext) -> AWSet:
        ctx.add_all(self.dots())
        return AWSet(set(), {k: set() for k in self.elements}, is_delta=True)

    def add(self, dot: Dot, key: str, ctx: CausalContext) -> AWSet:
        ctx.add_all(self.elements.get(key, ()))
        ctx.add(dot)
        return AWSet(set(), {key: {dot}}, is_delta=True)

    def remove(self, key: str, ctx: CausalContext) -> AWSet:
        ctx.add_all(self.elements.get(key, ()))
        return AWSet(set(), {key: set()}, is_delta=True)

    def to_json(self, table: ReplicaTable) -> list[Any]:
        return [
            encode_dots(self.presence, table),
            [[k, encode_dots(self.elements[k], table)] for k in sorted(self.elements)],
        ]

    @classmethod
    def from_json(cls, data: Any, table: ReplicaTable, *, is_delta: bool = False) -> AWSet:
        if not isinstance(data, list) or len(data) != 2 or not isinstance(data[1], list):
            raise DecodeError("set: bad body")
        elements: dict[str, set[Dot]] = {}
        for entry in data[1]:
            if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
                raise DecodeError("set: bad element")
            try:
                element = orjson.loads(entry[0])
            except orjson.JSONDecodeError as exc:
                raise DecodeError("set: element key is not JSON") from exc
            # Within the limits of a local add, so reads can render it (orjson stops at 254 levels).
            reason = check_json(element)
            if reason is not None:
                raise DecodeError(f"set: {reason}")
            elements[entry[0]] = set(decode_dots(entry[1], table))
        return cls(set(decode_dots(data[0], table)), elements, is_delta=is_delta)
