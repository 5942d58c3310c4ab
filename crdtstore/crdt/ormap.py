"""Observed-remove map with nested values: a dot map (Almeida et al. 2018, 7.5).

A field is keyed by ``(name, type tag)``, as in Riak's map: two replicas
that concurrently create ``name`` with different types both keep their
value, and the read shows the one of higher precedence (``PRECEDENCE``).
Removing a name removes every dot the remover observed under it, in every
type; a concurrent update survives (observed-remove, add-wins).

A map is used both as a state and as a delta. A delta map (``is_delta``)
mentions every field whose dots it covers, even when that field's store is
empty, which is what lets a delta join visit only the delta's fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from ..causal import CausalContext, Dot
from ..errors import DecodeError
from ..limits import MAX_DEPTH
from .awset import AWSet
from .base import ReplicaTable, decode_dots, encode_dots, join_dotset
from .counter import Counter
from .flag import Flag
from .registers import LWWRegister, MVRegister
from .sequence import SeqDelta, Sequence
from .tags import Tag

__all__ = ["PRECEDENCE", "ORMap", "empty_value"]

# When concurrent first writes gave one name several types, the read shows
# the first visible one in this order: containers before scalars.
PRECEDENCE: Final = (Tag.MAP, Tag.LIST, Tag.TEXT, Tag.SET, Tag.COUNTER, Tag.FLAG, Tag.LWW, Tag.REGISTER)

_SIMPLE: Final[dict[Tag, Any]] = {
    Tag.REGISTER: MVRegister,
    Tag.LWW: LWWRegister,
    Tag.COUNTER: Counter,
    Tag.SET: AWSet,
    Tag.FLAG: Flag,
}


def empty_value(tag: Tag, *, delta: bool) -> Any:
    """A bottom value of ``tag``: the start of a new field, in state or delta form."""
    if tag is Tag.MAP:
        return ORMap(is_delta=delta)
    if tag is Tag.TEXT or tag is Tag.LIST:
        return SeqDelta(tag) if delta else Sequence(tag)
    if tag is Tag.SET:
        return AWSet(is_delta=delta)
    return _SIMPLE[tag]()


class ORMap:
    tag = Tag.MAP
    __slots__ = ("fields", "is_delta", "presence")

    def __init__(
        self,
        presence: set[Dot] | None = None,
        fields: dict[str, dict[Tag, Any]] | None = None,
        *,
        is_delta: bool = False,
    ) -> None:
        self.presence: set[Dot] = presence if presence is not None else set()
        self.fields: dict[str, dict[Tag, Any]] = fields if fields is not None else {}
        self.is_delta = is_delta

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ORMap) and self.presence == other.presence and self.fields == other.fields

    def __repr__(self) -> str:
        return f"ORMap({self.presence!r}, {self.fields!r})"

    # Public methods for reading.

    def visible_tag(self, name: str) -> Tag | None:
        entries = self.fields.get(name)
        if not entries:
            return None
        if len(entries) == 1:  # the usual case: one type under a name
            for tag, value in entries.items():
                return tag if value.visible() else None
        for tag in PRECEDENCE:
            value = entries.get(tag)
            if value is not None and value.visible():
                return tag
        return None

    def get(self, name: str, tag: Tag) -> Any:
        entries = self.fields.get(name)
        return entries.get(tag) if entries else None

    def value(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(self.fields):
            tag = self.visible_tag(name)
            if tag is not None:
                out[name] = self.fields[name][tag].value()
        return out

    def siblings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(self.fields):
            tag = self.visible_tag(name)
            if tag is not None:
                out[name] = self.fields[name][tag].siblings()
        return out

    def is_bottom(self) -> bool:
        return not self.presence and not self.fields

    def visible(self) -> bool:
        return bool(self.presence) or any(self.visible_tag(name) is not None for name in self.fields)

    def dots(self) -> Iterator[Dot]:
        yield from self.presence
        for entries in self.fields.values():
            for value in entries.values():
                yield from value.dots()

    def copy(self) -> ORMap:
        fields = {name: {tag: v.copy() for tag, v in entries.items()} for name, entries in self.fields.items()}
        return ORMap(set(self.presence), fields, is_delta=self.is_delta)

    # Public methods for joining and removing.

    def join(self, other: ORMap, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        if self.presence or other.presence:  # two empty sets join to the empty set
            self.presence = join_dotset(self.presence, other.presence, ours, theirs)
        if not full:
            self._join_delta(other, ours, theirs)
            return
        names = self.fields.keys() | other.fields.keys()
        for name in list(names):
            mine = self.fields.get(name)
            their_entries = other.fields.get(name, {})
            tags = (mine.keys() | their_entries.keys()) if (full and mine) else their_entries.keys()
            for tag in list(tags):
                theirs_value = their_entries.get(tag)
                if theirs_value is None:
                    theirs_value = empty_value(tag, delta=other.is_delta)
                ours_value = mine.get(tag) if mine else None
                if ours_value is None:
                    ours_value = empty_value(tag, delta=self.is_delta)
                ours_value.join(theirs_value, ours, theirs, full)
                if ours_value.is_bottom() and not self.is_delta:
                    if mine is not None:
                        mine.pop(tag, None)
                else:
                    if mine is None:
                        mine = self.fields[name] = {}
                    mine[tag] = ours_value
            if mine is not None and not mine and not self.is_delta:
                del self.fields[name]

    def _join_delta(self, other: ORMap, ours: CausalContext, theirs: CausalContext) -> None:
        """``join`` of a delta (not ``full``): only the fields ``other`` mentions, each of its values there.

        The same steps as the full join with ``other``'s names and tags alone,
        without the unions and the bottom values a full join needs: this is
        the path of every local op and every replicated delta.
        """
        fields = self.fields
        keep_bottom = self.is_delta
        for name, their_entries in list(other.fields.items()):
            mine = fields.get(name)
            for tag, theirs_value in list(their_entries.items()):
                ours_value = mine.get(tag) if mine else None
                if ours_value is None:
                    ours_value = empty_value(tag, delta=keep_bottom)
                ours_value.join(theirs_value, ours, theirs, False)
                if not keep_bottom and ours_value.is_bottom():
                    if mine is not None:
                        mine.pop(tag, None)
                else:
                    if mine is None:
                        mine = fields[name] = {}
                    mine[tag] = ours_value
            if mine is not None and not mine and not keep_bottom:
                del fields[name]

    def removal(self, ctx: CausalContext, deleter: Callable[[], Dot]) -> ORMap:
        """The delta that removes everything observed in this map, mentioning every field."""
        ctx.add_all(self.presence)
        return ORMap(
            set(), {name: removal_of(entries, ctx, deleter) for name, entries in self.fields.items()}, is_delta=True
        )

    # Encoding: [presence, [[name, [[tag, body], ...]], ...]] with names and tags sorted.

    def to_json(self, table: ReplicaTable) -> list[Any]:
        fields = []
        for name in sorted(self.fields):
            entries = self.fields[name]
            fields.append([name, [[int(tag), entries[tag].to_json(table)] for tag in sorted(entries)]])
        return [encode_dots(self.presence, table), fields]

    @classmethod
    def from_json(cls, data: Any, table: ReplicaTable, *, is_delta: bool, depth: int = 0) -> ORMap:
        # Paths hold at most MAX_DEPTH keys, so no legal document nests deeper; a deeper one would
        # decode, then fail to encode (orjson stops at 254 levels, about 50 maps).
        if depth > MAX_DEPTH:
            raise DecodeError("map: nested too deep")
        if not isinstance(data, list) or len(data) != 2 or not isinstance(data[1], list):
            raise DecodeError("map: bad body")
        fields: dict[str, dict[Tag, Any]] = {}
        for entry in data[1]:
            if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
                raise DecodeError("map: bad field")
            if not isinstance(entry[1], list) or entry[0] in fields:
                raise DecodeError("map: bad field")
            values: dict[Tag, Any] = {}
            for tagged in entry[1]:
                if not isinstance(tagged, list) or len(tagged) != 2 or type(tagged[0]) is not int:
                    raise DecodeError("map: bad value")
                try:
                    tag = Tag(tagged[0])
                except ValueError as exc:
                    raise DecodeError(f"map: unknown type tag {tagged[0]}") from exc
                values[tag] = decode_value(tag, tagged[1], table, is_delta=is_delta, depth=depth + 1)
            fields[entry[0]] = values
        return cls(set(decode_dots(data[0], table)), fields, is_delta=is_delta)


def removal_of(entries: dict[Tag, Any], ctx: CausalContext, deleter: Callable[[], Dot]) -> dict[Tag, Any]:
    out: dict[Tag, Any] = {}
    for tag, value in entries.items():
        if isinstance(value, ORMap | Sequence):
            out[tag] = value.removal(ctx, deleter)
        else:
            out[tag] = value.removal(ctx)
    return out


def decode_value(tag: Tag, body: Any, table: ReplicaTable, *, is_delta: bool, depth: int) -> Any:
    if tag is Tag.MAP:
        return ORMap.from_json(body, table, is_delta=is_delta, depth=depth)
    if tag is Tag.TEXT or tag is Tag.LIST:
        return SeqDelta.from_json(tag, body, table) if is_delta else Sequence.from_json(tag, body, table)
    if tag is Tag.SET:
        return AWSet.from_json(body, table, is_delta=is_delta)
    return _SIMPLE[tag].from_json(body, table)
