"""The canonical, versioned encoding of documents and deltas.

An encoding is the JSON array ``[kind, format, replicas, context, root]``
serialized by orjson with sorted object keys:

- ``kind`` is ``"D"`` for a document state, ``"d"`` for a delta;
- ``format`` is the encoding version (``FORMAT``); an unknown one raises
  ``UnsupportedVersion``;
- ``replicas`` lists the replica ids once, in the order the canonical
  traversal meets them; everything else names a replica by its index;
- ``context`` maps replica index to half-open counter ranges;
- ``root`` is the root map (see ``crdt/ormap.py``); every value inside is
  ``[tag, body]`` with the tag from ``crdt/tags.py``.

Canonical: maps, sets and dots are written sorted, sequences in document
order with runs merged, so replicas that joined the same deltas in any
order write identical bytes. Decoding untrusted bytes raises a
``DecodeError`` and never anything else.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

from .causal import CausalContext, Dot
from .crdt.base import ReplicaTable
from .crdt.ormap import ORMap
from .crdt.sequence import MAX_ELEMENTS, SeqDelta, Sequence
from .crdt.tags import Tag
from .document import Delta, Document
from .errors import DecodeError, UnsupportedVersion

__all__ = [
    "FORMAT",
    "MAX_ENCODED_BYTES",
    "decode_delta",
    "decode_document",
    "digest",
    "encode_delta",
    "encode_document",
]

FORMAT = 1
# The largest encoding decoding accepts: 64 times the node's per-document
# write limit (16 MiB), so that a document many regions filled concurrently
# still loads. What peers may send is capped much lower by the transport.
MAX_ENCODED_BYTES = 1 << 30
# orjson returns bytes inside an allocation of at least 4 KiB; an encoding
# that is kept (a delta log, a replay) is copied out below this size, so a
# 30-byte delta costs about 30 bytes, not 4,097.
_COMPACT_BELOW = 1 << 16
_MAX_PATH = 64  # as deep as a decoded map may nest


def encode_document(doc: Document) -> bytes:
    return _encode("D", doc.root, doc.ctx)


def encode_delta(delta: Delta) -> bytes:
    short = _short_form(delta)
    if short is not None:
        return bytes(memoryview(orjson.dumps(short)))
    return _encode_full_delta(delta)


def _encode_full_delta(delta: Delta) -> bytes:
    # A delta's context always holds the dots its stores hold and its inserts
    # imply (``apply`` mints them into both): write only the rest, the dots it
    # covers without holding. Decoding adds the implied ones back.
    implied = list(_implied(delta.root))
    ctx = delta.ctx
    if implied:
        ctx = ctx.copy()
        for replica, lo, hi in implied:
            ctx.remove_range(replica, lo, hi)
    return _encode("d", delta.root, ctx)


def decode_document(data: bytes) -> Document:
    root, ctx = _decode(data, "D")
    _check_deleters(root, ctx)
    return Document(root, ctx)


def decode_delta(data: bytes) -> Delta:
    if isinstance(data, bytes | bytearray | memoryview) and len(data) <= _SHORT_MAX and data[2:3] in _SHORT_KINDS:
        return _decode_short(data)
    root, ctx = _decode(data, "d")
    for replica, lo, hi in _implied(root):
        ctx.add_range(replica, lo, hi)
    _check_deleters(root, ctx)
    return Delta(root, ctx)


def _check_deleters(node: ORMap, ctx: CausalContext) -> None:
    """Every delete's dot must be in the context, as every dot a legal write mints is.

    Joins skip the deletes whose deleter they have already seen (a deleter's
    deletes travel whole), which keeps the deletion log free of duplicates;
    a deleter missing from the context would break that.
    """
    for entries in node.fields.values():
        for value in entries.values():
            if isinstance(value, ORMap):
                _check_deleters(value, ctx)
            elif isinstance(value, SeqDelta):
                if any(dot not in ctx for d in value.deletes for dot in d[3]):
                    raise DecodeError(f"{value.tag.label}: a delete's dot is not in the context")
            elif isinstance(value, Sequence) and not value.deleters_seen(ctx):
                raise DecodeError(f"{value.tag.label}: a deletion's dot is not in the context")


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
    node: Any = delta.root
    path: list[str] = []
    while isinstance(node, ORMap):
        if node.presence or len(node.fields) != 1:
            return None
        ((name, entries),) = node.fields.items()
        if len(entries) != 1:
            return None
        path.append(name)
        ((_, node),) = entries.items()
    if not isinstance(node, SeqDelta) or len(path) > _MAX_PATH:
        return None
    key: Any = path[0] if len(path) == 1 else path
    if len(node.inserts) == 1 and not node.deletes:
        replica, counter, lamport, origin, content = node.inserts[0]
        if isinstance(content, int):
            return None
        kind = "i"
        first = counter
        if node.presence:
            if node.presence != {(replica, counter - 1)}:
                return None
            kind = "I"
            first = counter - 1
        if delta.ctx.ranges != {replica: [first, counter + len(content)]}:
            return None
        rel: Any = None
        if origin is not None:
            rel = counter - origin[1] if origin[0] == replica else [origin[0], origin[1]]
        return [kind, replica, key, counter, lamport - counter, rel, content]
    if len(node.deletes) == 1 and not node.inserts and not node.presence:
        target, lo, hi, deleters = node.deletes[0]
        if len(deleters) != 1:
            return None
        ((replica, counter),) = deleters
        if delta.ctx.ranges != {replica: [counter, counter + 1]}:
            return None
        return ["x" if node.tag is Tag.TEXT else "y", replica, key, counter, target, lo, hi - lo]
    return None


def _decode_short(data: bytes | bytearray | memoryview) -> Delta:
    try:
        short = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from exc
    if not isinstance(short, list) or len(short) != 7:
        raise DecodeError("bad short delta")
    kind, replica, key, counter, a, b, c = short
    path = [key] if isinstance(key, str) else key
    if not isinstance(path, list) or not 1 <= len(path) <= _MAX_PATH or not all(isinstance(k, str) for k in path):
        raise DecodeError("bad short delta path")
    if not isinstance(replica, str) or not replica or type(counter) is not int or counter < 1:
        raise DecodeError("bad short delta dot")
    if kind in ("i", "I"):
        tag = Tag.TEXT if isinstance(c, str) else Tag.LIST
        if not c or not isinstance(c, str | list):
            raise DecodeError("bad short delta content")
        if type(a) is not int or counter + a < 1:
            raise DecodeError("bad short delta timestamp")
        origin: Any = None
        if type(b) is int:
            if not 1 <= b < counter:
                raise DecodeError("bad short delta origin")
            origin = (replica, counter - b)
        elif isinstance(b, list):
            if len(b) != 2 or not isinstance(b[0], str) or not b[0] or type(b[1]) is not int or b[1] < 1:
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
    elif kind in ("x", "y"):
        tag = Tag.TEXT if kind == "x" else Tag.LIST
        if not isinstance(a, str) or not a or type(b) is not int or b < 1 or type(c) is not int:
            raise DecodeError("bad short delete")
        if not 1 <= c <= MAX_ELEMENTS:
            raise DecodeError("bad short delete range")
        ctx = CausalContext({replica: [counter, counter + 1]})
        leaf = SeqDelta(tag, set(), [], [(a, b, b + c, ((replica, counter),))])
    else:
        raise DecodeError(f"unknown delta kind {kind!r}")
    node: Any = leaf
    for name in reversed(path):
        node = ORMap(set(), {name: {node.tag: node}}, is_delta=True)
    return Delta(node, ctx)


def digest(data: bytes) -> bytes:
    """The digest of an encoding: what Merkle trees and equality checks compare."""
    return hashlib.blake2b(data, digest_size=16).digest()


def _encode(kind: str, root: ORMap, ctx: CausalContext) -> bytes:
    table = ReplicaTable()
    body = root.to_json(table)[1]  # the root map has no presence: write its fields only
    context = {}
    for replica in sorted(ctx.ranges):
        context[str(table.ref(replica))] = ctx.ranges[replica]
    out = orjson.dumps([kind, FORMAT, table.names, context, body], option=orjson.OPT_SORT_KEYS)
    return bytes(memoryview(out)) if len(out) < _COMPACT_BELOW else out


def _decode(data: Any, kind: str) -> tuple[ORMap, CausalContext]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("expected bytes")
    if len(data) > MAX_ENCODED_BYTES:
        raise DecodeError("encoding too large")
    # Decoding a large document allocates tens of thousands of objects that
    # all live on: collecting in between finds nothing and costs a fifth of
    # the load. (Another thread may switch it back on early; that only costs time.)
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decode_body(data, kind)
    finally:
        if collecting:
            gc.enable()


def _decode_body(data: bytes | bytearray | memoryview, kind: str) -> tuple[ORMap, CausalContext]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, list) or len(doc) != 5:
        raise DecodeError("expected [kind, format, replicas, context, root]")
    got_kind, fmt, names, context, body = doc
    if got_kind != kind:
        raise DecodeError(f"expected kind {kind!r}, got {got_kind!r}")
    if fmt != FORMAT:
        raise UnsupportedVersion(f"encoding format {fmt!r} is not supported (this build reads {FORMAT})")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DecodeError("bad replica table")
    if len(set(names)) != len(names):
        raise DecodeError("duplicate replica in table")
    table = ReplicaTable(list(names))
    if not isinstance(context, dict):
        raise DecodeError("bad context")
    ranges: dict[str, list[int]] = {}
    for ref, flat in context.items():
        try:
            replica = table.name(int(ref))
        except ValueError as exc:
            raise DecodeError("bad context replica") from exc
        if not isinstance(flat, list) or not flat or len(flat) % 2:
            raise DecodeError("bad context ranges")
        prev = 0
        for n in flat:
            if type(n) is not int or n <= prev:
                raise DecodeError("context ranges must increase")
            prev = n
        ranges[replica] = flat
    try:
        root = ORMap.from_json([[], body], table, is_delta=kind == "d")
    except DecodeError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        # A malformed body that slipped past the structural checks: still the caller's bad bytes.
        raise DecodeError(f"malformed body: {type(exc).__name__}") from exc
    return root, CausalContext(ranges)
