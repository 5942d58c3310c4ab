"""PN-counter as a dot function ("causal counter", Almeida et al. 2018, 7.3).

Each replica keeps one live dot mapped to the sum of its own increments and
decrements. An increment replaces the replica's observed dots with a new
one holding the new sum, so the delta is one entry whatever the history.
Being a dot store, the counter nests in an observed-remove map: removing the
key removes every contribution the remover saw. An increment concurrent
with that removal survives, carrying its replica's whole sum (the usual
reset anomaly of observed-remove counters; Riak's map behaves alike).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

from ..causal import CausalContext, Dot
from ..errors import DecodeError
from .base import ReplicaTable, decode_dot, join_dotfun
from .tags import Tag

__all__ = ["Counter"]


class Counter:
    tag = Tag.COUNTER
    __slots__ = ("entries",)

    def __init__(self, entries: dict[Dot, int] | None = None) -> None:
        self.entries: dict[Dot, int] = entries if entries is not None else {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counter) and self.entries == other.entries

    def __repr__(self) -> str:
        return f"Counter({self.entries!r})"

    def join(self, other: Counter, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        self.entries = join_dotfun(self.entries, other.entries, ours, theirs)

    def is_bottom(self) -> bool:
        return not self.entries

    def visible(self) -> bool:
        return bool(self.entries)

    def dots(self) -> Iterator[Dot]:
        return iter(self.entries)

    def value(self) -> int:
        return sum(self.entries.values())

    def siblings(self) -> int:
        return self.value()

    def copy(self) -> Self:
        return type(self)(dict(self.entries))

    def removal(self, ctx: CausalContext) -> Counter:
        ctx.add_all(self.entries)
        return Counter()

    def increment(self, dot: Dot, by: int, ctx: CausalContext) -> Counter:
        """The delta adding ``by`` (negative to decrement) for ``dot``'s replica."""
        own = [d for d in self.entries if d[0] == dot[0]]
        total = sum(self.entries[d] for d in own) + by
        ctx.add_all(own)
        ctx.add(dot)
        return Counter({dot: total})

    def to_json(self, table: ReplicaTable) -> list[Any]:
        return [[table.ref(r), c, v] for (r, c), v in sorted(self.entries.items())]

    @classmethod
    def from_json(cls, data: Any, table: ReplicaTable) -> Counter:
        if not isinstance(data, list):
            raise DecodeError("counter: expected a list")
        entries: dict[Dot, int] = {}
        for entry in data:
            if not isinstance(entry, list) or len(entry) != 3 or type(entry[2]) is not int:
                raise DecodeError("counter: bad entry")
            entries[decode_dot(entry[0], entry[1], table)] = entry[2]
        return cls(entries)
