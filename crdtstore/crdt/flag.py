"""Enable-wins flag: a dot set (Almeida et al. 2018, 7.1).

Enabling mints a dot and covers the observed ones; disabling covers them
and adds nothing, so a concurrent enable wins. ``presence`` keeps a disabled
flag readable as ``false`` until its key is removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..causal import CausalContext, Dot
from ..errors import DecodeError
from .base import ReplicaTable, decode_dots, encode_dots, join_dotset
from .tags import Tag

__all__ = ["Flag"]


class Flag:
    tag = Tag.FLAG
    __slots__ = ("enabled", "presence")

    def __init__(self, presence: set[Dot] | None = None, enabled: set[Dot] | None = None) -> None:
        self.presence: set[Dot] = presence if presence is not None else set()
        self.enabled: set[Dot] = enabled if enabled is not None else set()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Flag) and self.presence == other.presence and self.enabled == other.enabled

    def __repr__(self) -> str:
        return f"Flag({self.presence!r}, {self.enabled!r})"

    def join(self, other: Flag, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        self.presence = join_dotset(self.presence, other.presence, ours, theirs)
        self.enabled = join_dotset(self.enabled, other.enabled, ours, theirs)

    def is_bottom(self) -> bool:
        return not self.presence and not self.enabled

    def visible(self) -> bool:
        return not self.is_bottom()

    def dots(self) -> Iterator[Dot]:
        yield from self.presence
        yield from self.enabled

    def value(self) -> bool:
        return bool(self.enabled)

    def siblings(self) -> bool:
        return self.value()

    def copy(self) -> Flag:
        return Flag(set(self.presence), set(self.enabled))

    def removal(self, ctx: CausalContext) -> Flag:
        ctx.add_all(self.dots())
        return Flag()

    def enable(self, dot: Dot, ctx: CausalContext) -> Flag:
        ctx.add_all(self.enabled)
        ctx.add(dot)
        return Flag(set(), {dot})

    def disable(self, ctx: CausalContext) -> Flag:
        ctx.add_all(self.enabled)
        return Flag()

    def to_json(self, table: ReplicaTable) -> list[Any]:
        return [encode_dots(self.presence, table), encode_dots(self.enabled, table)]

    @classmethod
    def from_json(cls, data: Any, table: ReplicaTable) -> Flag:
        if not isinstance(data, list) or len(data) != 2:
            raise DecodeError("flag: bad body")
        return cls(set(decode_dots(data[0], table)), set(decode_dots(data[1], table)))
