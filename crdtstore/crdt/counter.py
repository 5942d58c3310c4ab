"""PN-counter as a dot function ("causal counter", Almeida et al. 2018, 7.3).

Each replica keeps one live dot mapped to the sum of its own increments and
decrements. An increment replaces the replica's observed dots with a new
one holding the new sum, so the delta is one entry whatever the history.
Being a dot store, the counter nests in an observed-remove map: removing the
key removes every contribution the remover saw. An increment concurrent
with that removal survives, carrying its replica's whole sum (the usual
reset anomaly of observed-remove counters; Riak's map behaves alike).

Range. A local increment may not take its replica's own sum, nor the
counter's value, outside int64 (``check_increment``, called by the
document's planner before anything changes). Merging is still total: two
regions can each add 2**63 - 1 concurrently, so the merged value is kept as
an exact Python int and ``value()`` shows it as a decimal string once it
leaves int64 (JSON peers lose precision past 2**53 and most stop at 64
bits; a string keeps every digit and tells the reader it is out of range).
The encoding writes each replica's sum as a JSON integer when orjson can
(``[-2**63, 2**64)``) and as a canonical decimal string beyond that, so
encoding never raises and equal states still give equal bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final, Self

from ..causal import CausalContext, Dot
from ..errors import DecodeError, InvalidValue
from ..limits import INT64_MAX, INT64_MIN
from .base import ReplicaTable, decode_dot, join_dotfun
from .tags import Tag

__all__ = ["MAX_SUM_DIGITS", "Counter", "check_increment"]

# orjson writes integers in [-2**63, 2**64) as numbers; anything else is a string.
_JSON_MIN: Final = INT64_MIN
_JSON_MAX: Final = (1 << 64) - 1
MAX_SUM_DIGITS = 40
"""Digits a replica's sum may have in an encoding (far beyond what merging legal writes makes)."""
_DECIMAL = re.compile(r"-?[1-9][0-9]*")


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

    def total(self) -> int:
        """The exact value, whatever its size."""
        return sum(self.entries.values())

    def own(self, replica: str) -> int:
        """The sum of ``replica``'s own increments and decrements."""
        return sum(v for d, v in self.entries.items() if d[0] == replica)

    def value(self) -> int | str:
        """The value: an int inside int64, else its exact decimal string (see the module docstring)."""
        return _shown(self.total())

    def siblings(self) -> int | str:
        return self.value()

    def copy(self) -> Self:
        return type(self)(dict(self.entries))

    def removal(self, ctx: CausalContext) -> Counter:
        ctx.add_all(self.entries)
        return Counter()

    def increment(self, dot: Dot, by: int, ctx: CausalContext) -> Counter:
        """The delta adding ``by`` (negative to decrement) for ``dot``'s replica."""
        replica = dot[0]
        own: list[Dot] = []
        total = by
        for d, v in self.entries.items():
            if d[0] == replica:
                own.append(d)
                total += v
        ctx.add_all(own)
        ctx.add(dot)
        return Counter({dot: total})

    def to_json(self, table: ReplicaTable) -> list[Any]:
        # One entry (a counter one replica writes) needs no sort.
        items = self.entries.items()
        return [[table.ref(r), c, _encode_sum(v)] for (r, c), v in (items if len(items) < 2 else sorted(items))]

    @classmethod
    def from_json(cls, data: Any, table: ReplicaTable) -> Counter:
        if not isinstance(data, list):
            raise DecodeError("counter: expected a list")
        entries: dict[Dot, int] = {}
        for entry in data:
            if not isinstance(entry, list) or len(entry) != 3:
                raise DecodeError("counter: bad entry")
            entries[decode_dot(entry[0], entry[1], table)] = _decode_sum(entry[2])
        return cls(entries)


def check_increment(counter: Counter | None, replica: str, by: int, earlier: int) -> None:
    """Raise ``InvalidValue`` if adding ``by`` would leave int64 (own sum or value).

    Args:
        counter: The counter as the document holds it (None: none yet, or removed earlier in the batch).
        replica: The replica making the change.
        by: The increment.
        earlier: What earlier ops of the same batch added to this counter.
    """
    own = (counter.own(replica) if counter is not None else 0) + earlier
    if _excess(own + by) > _excess(own):
        raise InvalidValue("the increment takes this replica's share of the counter outside int64")
    before = (counter.total() if counter is not None else 0) + earlier
    # An out-of-range value (only concurrent merges make one) may still move back toward the range.
    if _excess(before + by) > _excess(before):
        raise InvalidValue("the increment takes the counter's value outside int64")


def _excess(v: int) -> int:
    return v - INT64_MAX if v > INT64_MAX else INT64_MIN - v if v < INT64_MIN else 0


def _shown(v: int) -> int | str:
    return v if INT64_MIN <= v <= INT64_MAX else str(v)


def _encode_sum(v: int) -> int | str:
    return v if _JSON_MIN <= v <= _JSON_MAX else str(v)


def _decode_sum(raw: Any) -> int:
    if type(raw) is int:
        return raw
    # Canonical only: a string is used exactly when orjson cannot write the number.
    if type(raw) is not str or len(raw) > MAX_SUM_DIGITS + 1 or not _DECIMAL.fullmatch(raw):
        raise DecodeError("counter: bad sum")
    v = int(raw)
    if _JSON_MIN <= v <= _JSON_MAX:
        raise DecodeError("counter: a sum that fits a JSON integer must be written as one")
    return v
