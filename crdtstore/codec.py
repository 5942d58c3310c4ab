"""Documents and deltas to bytes and back: the canonical encoding, and short forms of small deltas.

A document state and a delta are written in the canonical encoding of
:mod:`crdtstore.canonical` (kind ``"D"`` and ``"d"``); a delta of one
insert or one delete in one text or list takes a short form instead (below).
Decoding untrusted bytes raises a ``DecodeError`` and never anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, Final

import orjson

from .canonical import FORMAT, MAX_ENCODED_BYTES, check_deleters, decode_state, encode_state
from .causal import CausalContext, Dot, ranges_remove
from .crdt.ormap import ORMap
from .crdt.sequence import MAX_ELEMENTS, SeqDelta
from .crdt.tags import Tag
from .document import Delta, Document
from .errors import DecodeError

__all__ = [
    "FORMAT",
    "MAX_ENCODED_BYTES",
    "decode_delta",
    "decode_document",
    "digest",
    "encode_delta",
    "encode_document",
]

_MAX_PATH: Final = 64  # as deep as a decoded map may nest


def encode_document(doc: Document) -> bytes:
    return encode_state("D", doc.root, doc.ctx)


def encode_delta(delta: Delta) -> bytes:
    short = _short_form(delta)
    if short is not None:
        return bytes(memoryview(orjson.dumps(short)))
    return _encode_full_delta(delta)


def _encode_full_delta(delta: Delta) -> bytes:
    # A delta's context always holds the dots its stores hold and its inserts
    # imply (``apply`` mints them into both): write only the rest, the dots it
    # covers without holding. Decoding adds the implied ones back.
    implied: list[tuple[str, int, int]] = []
    _collect_implied(delta.root, implied)
    ctx = delta.ctx
    if implied:
        # Copy only the replicas' ranges that change (usually one of them).
        ranges = dict(ctx.ranges)
        copied: set[str] = set()
        for replica, lo, hi in implied:
            flat = ranges.get(replica)
            if flat is None:
                continue
            if replica not in copied:
                flat = ranges[replica] = list(flat)
                copied.add(replica)
            ranges_remove(flat, lo, hi)
            if not flat:
                del ranges[replica]
        ctx = CausalContext(ranges)
    return encode_state("d", delta.root, ctx)


def decode_document(data: bytes) -> Document:
    root, ctx = decode_state(data, "D")
    check_deleters(root, ctx)
    return Document(root, ctx)


def decode_delta(data: bytes) -> Delta:
    if isinstance(data, bytes | bytearray | memoryview) and len(data) <= _SHORT_MAX and data[2:3] in _SHORT_KINDS:
        return _decode_short(data)
    root, ctx = decode_state(data, "d")
    for replica, lo, hi in _implied(root):
        ctx.add_range(replica, lo, hi)
    check_deleters(root, ctx)
    return Delta(root, ctx)


def _collect_implied(node: ORMap, out: list[tuple[str, int, int]]) -> None:
    """:func:`_implied` into a list: no generator frames on the path of every write."""
    for replica, counter in node.presence:
        out.append((replica, counter, counter + 1))
    for entries in node.fields.values():
        for value in entries.values():
            kind = type(value)
            if kind is ORMap:
                _collect_implied(value, out)
                continue
            for replica, counter in value.dots():
                out.append((replica, counter, counter + 1))
            if kind is SeqDelta:
                for replica, counter, _, _, content in value.inserts:
                    out.append((replica, counter, counter + (content if type(content) is int else len(content))))


def _implied(node: ORMap) -> Iterator[tuple[str, int, int]]:
    """The dot ranges a delta map holds: store dots, and the ids its sequence inserts take."""
    for replica, counter in node.presence:
        yield (replica, counter, counter + 1)
    for entries in node.fields.values():
        for value in entries.values():
            if isinstance(value, ORMap):
                yield from _implied(value)
                continue
            for replica, counter in value.dots():
                yield (replica, counter, counter + 1)
            if isinstance(value, SeqDelta):
                for replica, counter, _, _, content in value.inserts:
                    yield (replica, counter, counter + (content if isinstance(content, int) else len(content)))


# The short forms: most deltas are one keystroke, one insert or one delete in
# one text or list, and everything in them but the op itself is implied.
#
#   ["i", replica, path, counter, lamport - counter, origin, content]  an insert
#   ["I", ...same...]    an insert that also creates the sequence: its presence
#                        dot is (replica, counter - 1)
#   ["x" | "y", replica, path, deleter counter, target replica, lo, count]
#                        a delete of [lo, lo + count) in a text ("x") or list ("y")
#
# ``path`` is the key when the path is one key, else the list of keys; the
# insert's origin is null (the start), a count back in the same replica, or
# ``[replica, counter]``. The context is exactly the implied dots: the
# presence dot, the insert's ids, the deleter. A delta of any other shape
# (several ops, created ancestors, a removal) takes the full form. The kind
# letters are this format's: a reader that does not know them refuses the
# delta with a DecodeError.
_SHORT_KINDS = (b"i", b"I", b"x", b"y")
_SHORT_MAX = 1 << 22  # a short form holds one insert of at most a 1 MiB string, JSON-escaped


def _short_form(delta: Delta) -> list[Any] | None:
    # Every delta an editor ships comes through here: plain loops, exact type checks
    # (ORMap and SeqDelta have no subclasses) and no temporary containers.
    node: Any = delta.root
    path: list[str] = []
    while type(node) is ORMap:
        fields = node.fields
        if node.presence or len(fields) != 1:
            return None
        ((name, entries),) = fields.items()
        if len(entries) != 1:
            return None
        path.append(name)
        ((_, node),) = entries.items()
    if type(node) is not SeqDelta or len(path) > _MAX_PATH:
        return None
    ranges = delta.ctx.ranges
    if len(ranges) != 1:
        return None
    key: Any = path[0] if len(path) == 1 else path
    inserts = node.inserts
    deletes = node.deletes
    if len(inserts) == 1 and not deletes:
        replica, counter, lamport, origin, content = inserts[0]
        if isinstance(content, int):
            return None
        kind = "i"
        first = counter
        presence = node.presence
        if presence:
            if len(presence) != 1 or (replica, counter - 1) not in presence:
                return None
            kind = "I"
            first = counter - 1
        flat = ranges.get(replica)
        if flat is None or len(flat) != 2 or flat[0] != first or flat[1] != counter + len(content):
            return None
        rel: Any = None
        if origin is not None:
            rel = counter - origin[1] if origin[0] == replica else [origin[0], origin[1]]
        return [kind, replica, key, counter, lamport - counter, rel, content]
    if len(deletes) == 1 and not inserts and not node.presence:
        target, lo, hi, deleters = deletes[0]
        if len(deleters) != 1:
            return None
        ((replica, counter),) = deleters
        flat = ranges.get(replica)
        if flat is None or len(flat) != 2 or flat[0] != counter or flat[1] != counter + 1:
            return None
        return ["x" if node.tag is Tag.TEXT else "y", replica, key, counter, target, lo, hi - lo]
    return None


def _decode_short(data: bytes | bytearray | memoryview) -> Delta:
    try:
        short = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from exc
    if type(short) is not list or len(short) != 7:
        raise DecodeError("bad short delta")
    kind, replica, key, counter, a, b, c = short
    if type(key) is str:
        path = [key]
    elif type(key) is list and 1 <= len(key) <= _MAX_PATH and all(type(k) is str for k in key):
        path = key
    else:
        raise DecodeError("bad short delta path")
    if type(replica) is not str or not replica or type(counter) is not int or counter < 1:
        raise DecodeError("bad short delta dot")
    if kind == "i" or kind == "I":
        ctype = type(c)
        if ctype is str:
            tag = Tag.TEXT
        elif ctype is list:
            tag = Tag.LIST
        else:
            raise DecodeError("bad short delta content")
        if not c:
            raise DecodeError("bad short delta content")
        if type(a) is not int or counter + a < 1:
            raise DecodeError("bad short delta timestamp")
        origin: Any = None
        if type(b) is int:
            if not 1 <= b < counter:
                raise DecodeError("bad short delta origin")
            origin = (replica, counter - b)
        elif type(b) is list:
            if len(b) != 2 or type(b[0]) is not str or not b[0] or type(b[1]) is not int or b[1] < 1:
                raise DecodeError("bad short delta origin")
            origin = (b[0], b[1])
        elif b is not None:
            raise DecodeError("bad short delta origin")
        presence: set[Dot] = set()
        first = counter
        if kind == "I":
            if counter < 2:
                raise DecodeError("bad short delta dot")
            presence.add((replica, counter - 1))
            first = counter - 1
        ctx = CausalContext({replica: [first, counter + len(c)]})
        leaf = SeqDelta(tag, presence, [(replica, counter, counter + a, origin, c)])
    elif kind == "x" or kind == "y":
        tag = Tag.TEXT if kind == "x" else Tag.LIST
        if type(a) is not str or not a or type(b) is not int or b < 1 or type(c) is not int:
            raise DecodeError("bad short delete")
        if not 1 <= c <= MAX_ELEMENTS:
            raise DecodeError("bad short delete range")
        ctx = CausalContext({replica: [counter, counter + 1]})
        leaf = SeqDelta(tag, set(), [], [(a, b, b + c, ((replica, counter),))])
    else:
        raise DecodeError(f"unknown delta kind {kind!r:.20}")
    node: Any = leaf
    for name in reversed(path):
        node = ORMap(set(), {name: {node.tag: node}}, is_delta=True)
    return Delta(node, ctx)


def digest(data: bytes) -> bytes:
    """The digest of an encoding: what Merkle trees and equality checks compare."""
    return hashlib.blake2b(data, digest_size=16).digest()
