"""A peer's delta that decodes must also encode and render: values obey the limits of local writes."""

from __future__ import annotations

import pytest

from crdtstore.codec import decode_delta, encode_delta, encode_document
from crdtstore.crdt.ormap import ORMap
from crdtstore.crdt.tags import Tag
from crdtstore.document import Delta, Document
from crdtstore.errors import DecodeError
from crdtstore.limits import MAX_DEPTH

DEEP = b"[" * 300 + b"1" + b"]" * 300


def _sample() -> bytes:
    doc = Document()
    ops = [
        {"op": "set", "path": ["k"], "value": 1},
        {"op": "set", "path": ["l"], "value": 1, "lww": True},
        {"op": "add", "path": ["s"], "value": 1},
    ]
    return encode_delta(doc.apply(ops, replica="a"))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"[[0,1,1]]", b"[[0,1," + DEEP + b"]]"),  # register value deeper than orjson writes
        (b"[[0,1,1]]", b"[[0,1,18446744073709551615]]"),  # beyond int64
        (b"[0,2,[0,1]]", b"[0,2,[0," + DEEP + b"]]"),  # lww value
        (b'["1",', b'["' + DEEP + b'",'),  # set element
    ],
)
def test_values_past_the_local_limits_do_not_decode(old: bytes, new: bytes) -> None:
    data = _sample()
    assert old in data
    decode_delta(data)
    with pytest.raises(DecodeError):
        decode_delta(data.replace(old, new, 1))


def test_maps_nest_in_a_delta_no_deeper_than_local_paths_allow() -> None:
    doc = Document()
    delta = doc.apply([{"op": "set", "path": ["k"] * MAX_DEPTH, "value": 1}], replica="a")
    joined = Document()
    joined.join(decode_delta(encode_delta(delta)))  # the deepest legal path decodes and encodes
    encode_document(joined)
    root = delta.root
    # Past about 50 maps the encoding fails (orjson stops at 254 levels); the old bound let 64 decode.
    for _ in range(5):
        root = ORMap(set(), {"k": {Tag.MAP: root}}, is_delta=True)
    with pytest.raises(DecodeError):
        decode_delta(encode_delta(Delta(root, delta.ctx)))
