"""Registers: multi-value (concurrent writes stay visible as siblings) and last-writer-wins.

Both are dot functions (delta-state framework, Almeida et al. 2018, 7.2):
a write mints a dot, maps it to the value, and covers every dot it saw, so
it replaces what it observed and nothing else. Concurrent writes survive
side by side.

- ``MVRegister`` shows one winner in ``value()`` (the write with the highest
  dot, a deterministic but arbitrary choice) and every sibling in
  ``siblings()``: resolving the conflict is the reader's business.
- ``LWWRegister`` stores ``(timestamp, value)`` per dot; ``value()`` is the
  write with the greatest ``(timestamp, replica, counter)``. The timestamp is
  a hybrid logical clock passed in by the caller, never read here; the dot
  breaks ties deterministically.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Self

from ..causal import CausalContext, Dot
from ..errors import DecodeError
from ..limits import check_json
from .base import ReplicaTable, decode_dot, join_dotfun
from .tags import Tag

__all__ = ["LWWRegister", "MVRegister"]


class _DotFunRegister:
    tag: ClassVar[Tag]
    __slots__ = ("entries",)

    def __init__(self, entries: dict[Dot, Any] | None = None) -> None:
        self.entries: dict[Dot, Any] = entries if entries is not None else {}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.entries == other.entries

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.entries!r})"

    def join(self, other: Self, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        self.entries = join_dotfun(self.entries, other.entries, ours, theirs)

    def is_bottom(self) -> bool:
        return not self.entries

    def visible(self) -> bool:
        return bool(self.entries)

    def dots(self) -> Iterator[Dot]:
        return iter(self.entries)

    def copy(self) -> Self:
        return type(self)(dict(self.entries))

    def removal(self, ctx: CausalContext) -> Self:
        """The delta that removes every write observed here."""
        ctx.add_all(self.entries)
        return type(self)()

    def write(self, dot: Dot, value: Any, ctx: CausalContext) -> Self:
        """The delta of a write: the new dot, covering every write observed here."""
        ctx.add_all(self.entries)
        ctx.add(dot)
        return type(self)({dot: value})

    def to_json(self, table: ReplicaTable) -> list[Any]:
        # One entry (the usual register: no concurrent write) needs no sort.
        items = self.entries.items()
        return [[table.ref(r), c, v] for (r, c), v in (items if len(items) < 2 else sorted(items, key=_by_dot))]

    @classmethod
    def from_json(cls, data: Any, table: ReplicaTable) -> Self:
        if not isinstance(data, list):
            raise DecodeError(f"{cls.tag.label}: expected a list")
        entries: dict[Dot, Any] = {}
        for entry in data:
            if not isinstance(entry, list) or len(entry) != 3:
                raise DecodeError(f"{cls.tag.label}: bad entry")
            entries[decode_dot(entry[0], entry[1], table)] = cls._decode_payload(entry[2])
        return cls(entries)

    @classmethod
    def _decode_payload(cls, payload: Any) -> Any:
        return _checked(payload, cls.tag.label)


def _by_dot(item: tuple[Dot, Any]) -> Dot:
    return item[0]


def _dot_order(dot: Dot) -> tuple[int, str]:
    return (dot[1], dot[0])


class MVRegister(_DotFunRegister):
    tag = Tag.REGISTER
    __slots__ = ()

    def value(self) -> Any:
        if not self.entries:
            return None
        return self.entries[max(self.entries, key=_dot_order)]

    def siblings(self) -> list[Any]:
        return [self.entries[d] for d in sorted(self.entries, key=_dot_order)]


class LWWRegister(_DotFunRegister):
    """Entries map a dot to ``[timestamp, value]``."""

    tag = Tag.LWW
    __slots__ = ()

    def _winner(self) -> Dot:
        return max(self.entries, key=lambda d: (self.entries[d][0], d[0], d[1]))

    def value(self) -> Any:
        return self.entries[self._winner()][1] if self.entries else None

    def siblings(self) -> list[Any]:
        order = sorted(self.entries, key=lambda d: (self.entries[d][0], d[0], d[1]))
        return [self.entries[d][1] for d in order]

    @classmethod
    def _decode_payload(cls, payload: Any) -> Any:
        if not isinstance(payload, list) or len(payload) != 2 or type(payload[0]) is not int:
            raise DecodeError("lww-register: bad payload")
        return (payload[0], _checked(payload[1], cls.tag.label))


def _checked(value: Any, label: str) -> Any:
    # A peer's value must obey the limits a local write does (depth, sizes, int64):
    # one that does not would decode, then fail to encode or render, much later.
    reason = check_json(value)
    if reason is not None:
        raise DecodeError(f"{label}: {reason}")
    return value
