"""The canonical encoding of a CRDT state: a root map and its causal context.

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

This module knows maps and contexts, not documents: both
:mod:`crdtstore.document` (equality, digests and copies compare canonical
bytes) and :mod:`crdtstore.codec` (documents, deltas and the short forms of
deltas) build on it, so neither imports the other's user.
"""

from __future__ import annotations

import gc
from typing import Any, Final

import orjson

from .causal import CausalContext
from .crdt.base import ReplicaTable
from .crdt.ormap import ORMap
from .crdt.sequence import SeqDelta, Sequence
from .errors import DecodeError, UnsupportedVersion

__all__ = ["FORMAT", "MAX_ENCODED_BYTES", "check_deleters", "decode_state", "encode_state"]

FORMAT: Final = 1
# The largest encoding decoding accepts: 64 times the node's per-document
# write limit (16 MiB), so that a document many regions filled concurrently
# still loads. What peers may send is capped much lower by the transport.
MAX_ENCODED_BYTES = 1 << 30
# orjson returns bytes inside an allocation of at least 4 KiB; an encoding
# that is kept (a delta log, a replay) is copied out below this size, so a
# 30-byte delta costs about 30 bytes, not 4,097.
_COMPACT_BELOW: Final = 1 << 16


def encode_state(kind: str, root: ORMap, ctx: CausalContext) -> bytes:
    """The canonical bytes of ``root`` under ``ctx``, of ``kind`` ``"D"`` (a state) or ``"d"`` (a delta)."""
    table = ReplicaTable()
    body = root.to_json(table)[1]  # the root map has no presence: write its fields only
    context = {}
    for replica in sorted(ctx.ranges):
        context[str(table.ref(replica))] = ctx.ranges[replica]
    out = orjson.dumps([kind, FORMAT, table.names, context, body], option=orjson.OPT_SORT_KEYS)
    return bytes(memoryview(out)) if len(out) < _COMPACT_BELOW else out


def decode_state(data: Any, kind: str) -> tuple[ORMap, CausalContext]:
    """The root map and context of an encoding of ``kind``; the caller checks what its kind needs.

    Raises:
        DecodeError: Not an encoding of ``kind`` (``UnsupportedVersion`` for another format).
    """
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


def check_deleters(node: ORMap, ctx: CausalContext) -> None:
    """Every delete's dot must be in the context, as every dot a legal write mints is.

    Joins skip the deletes whose deleter they have already seen (a deleter's
    deletes travel whole), which keeps the deletion log free of duplicates;
    a deleter missing from the context would break that.
    """
    for entries in node.fields.values():
        for value in entries.values():
            if isinstance(value, ORMap):
                check_deleters(value, ctx)
            elif isinstance(value, SeqDelta):
                if any(dot not in ctx for d in value.deletes for dot in d[3]):
                    raise DecodeError(f"{value.tag.label}: a delete's dot is not in the context")
            elif isinstance(value, Sequence) and not value.deleters_seen(ctx):
                raise DecodeError(f"{value.tag.label}: a deletion's dot is not in the context")
