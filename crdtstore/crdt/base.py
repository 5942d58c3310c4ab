"""The shared interface of every CRDT type, and the dot-store joins they are built from.

Theory of operation (Almeida, Shoker, Baquero, "Delta state replicated data
types", JPDC 2018, section 6). A state is a pair (store, causal context).
A store is one of three shapes:

- a *dot set*: the dots that are live;
- a *dot function*: live dots mapped to values (registers, counters);
- a *dot map*: keys mapped to nested stores (sets, maps).

They all join by one rule: a dot survives if both sides hold it, or one
side holds it and the other side has never seen it. A dot one side has
seen but no longer holds was removed there, and removal wins over the stale
copy. Every mutator returns a *delta*: a small (store, context) pair that
joins into any replica by that same rule.

Stores join **in place**: documents are large and joined one small delta at
a time, so copying on every join would dominate. ``==`` is structural.

Joins take ``full``: a full-state join must visit every key on both sides,
a delta join only the keys the delta mentions. Deltas mention every key
whose dots they cover (a removed key stays in the delta as an empty store),
so skipping the rest is exact, and keeps a delta join proportional to the
delta rather than to the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, Self, TypeVar

from ..causal import CausalContext, Dot
from ..errors import DecodeError
from .tags import Tag

__all__ = [
    "MAX_DOT_COUNTER",
    "Crdt",
    "ReplicaTable",
    "decode_dot",
    "decode_dots",
    "encode_dots",
    "join_dotfun",
    "join_dotset",
]

V = TypeVar("V")


class Crdt(Protocol):
    """What every type stored in a document provides."""

    tag: Tag

    def join(self, other: Self, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        """Join ``other`` (with context ``theirs``) into self (with context ``ours``), in place."""

    def is_bottom(self) -> bool:
        """True when the store holds nothing at all and may be dropped from its parent."""

    def visible(self) -> bool:
        """True when the value should appear in the document's JSON."""

    def dots(self) -> Iterator[Dot]:
        """Every dot the store holds (what a remove of this value must cover)."""

    def value(self) -> Any: ...

    def siblings(self) -> Any: ...

    def copy(self) -> Self: ...

    def to_json(self, table: ReplicaTable) -> Any: ...


def join_dotset(ours: set[Dot], theirs: set[Dot], c_ours: CausalContext, c_theirs: CausalContext) -> set[Dot]:
    """The dot-set join: keep what both hold, or what one holds and the other never saw."""
    if ours == theirs:
        return ours
    kept = {d for d in ours if d in theirs or d not in c_theirs}
    kept.update(d for d in theirs if d not in c_ours)
    return kept


def join_dotfun(
    ours: dict[Dot, V], theirs: dict[Dot, V], c_ours: CausalContext, c_theirs: CausalContext
) -> dict[Dot, V]:
    """The dot-function join. A dot names one write, so both sides agree on its value."""
    if ours == theirs:
        return ours
    kept = {d: v for d, v in ours.items() if d in theirs or d not in c_theirs}
    for d, v in theirs.items():
        if d not in c_ours:
            kept[d] = v
    return kept


class ReplicaTable:
    """Replica ids are written once per encoding and referenced by index.

    The table fills in the order the canonical traversal meets replicas, so
    equal states give equal tables.
    """

    __slots__ = ("index", "names")

    def __init__(self, names: list[str] | None = None) -> None:
        self.names: list[str] = names if names is not None else []
        self.index: dict[str, int] = {n: i for i, n in enumerate(self.names)}

    def ref(self, replica: str) -> int:
        i = self.index.get(replica)
        if i is None:
            i = self.index[replica] = len(self.names)
            self.names.append(replica)
        return i

    def name(self, ref: Any) -> str:
        if type(ref) is not int or not 0 <= ref < len(self.names):
            raise DecodeError(f"unknown replica reference {ref!r}")
        return self.names[ref]


def encode_dots(dots: set[Dot] | dict[Dot, Any], table: ReplicaTable) -> list[int]:
    """Sorted dots as a flat list ``[r0, c0, r1, c1, ...]``."""
    if not dots:
        return []
    out: list[int] = []
    for r, c in sorted(dots):
        out += (table.ref(r), c)
    return out


MAX_DOT_COUNTER = 1 << 62
"""Largest dot counter a decoded dot may carry: a replica mints one per op, so no legal
state comes near it, and ``counter + length`` (a context range, a sequence run) still
encodes as a 64-bit integer."""


def decode_dot(r: Any, c: Any, table: ReplicaTable) -> Dot:
    if type(c) is not int or not 1 <= c <= MAX_DOT_COUNTER:
        raise DecodeError(f"bad dot counter {c!r:.30}")
    return (table.name(r), c)


def decode_dots(data: Any, table: ReplicaTable) -> list[Dot]:
    if not isinstance(data, list) or len(data) % 2:
        raise DecodeError("bad dot list")
    return [decode_dot(data[k], data[k + 1], table) for k in range(0, len(data), 2)]
