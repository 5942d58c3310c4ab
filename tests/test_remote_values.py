"""A peer's delta that decodes must also encode and render: values obey the limits of local writes."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.crdt.ormap import ORMap
from crdtstore.crdt.tags import Tag
from crdtstore.document import Delta, Document
from crdtstore.errors import DecodeError
from crdtstore.limits import INT64_MAX, MAX_DEPTH

DEEP = b"[" * 300 + b"1" + b"]" * 300


def _sample() -> bytes:
    doc = Document()
    ops = [
        {"op": "set", "path": ["k"], "value": 1},
        {"op": "set", "path": ["l"], "value": 1, "lww": True},
        {"op": "add", "path": ["s"], "value": 1},
        {"op": "increment", "path": ["c"], "by": 5},
        {"op": "enable", "path": ["f"]},
        {"op": "set", "path": ["m", "k"], "value": {"x": [1]}},
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


def test_a_dot_counter_past_the_bound_does_not_decode() -> None:
    # Shrunk by hypothesis (the mutation test below): a counter entry's dot at 2**64 - 1 decoded, then
    # the document's context range ending at 2**64 could not be encoded.
    data = _sample()
    assert b"[[0,5,5]]" in data
    for counter in (b"18446744073709551615", b"4611686018427387905", b"0"):
        with pytest.raises(DecodeError):
            decode_delta(data.replace(b"[[0,5,5]]", b"[[0," + counter + b",5]]"))
    decode_delta(data.replace(b"[[0,5,5]]", b"[[0,4611686018427387904,5]]"))  # the bound itself is fine


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


def _leaves(node: object, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    if isinstance(node, list):
        out = [path] if path else []
        for i, child in enumerate(node):
            out += _leaves(child, (*path, i))
        return out
    return [path]


def _replace(node: object, path: tuple[int, ...], value: object) -> object:
    if not path:
        return value
    assert isinstance(node, list)
    copy = list(node)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


# Mostly numbers (dots, refs, sums, timestamps are numbers), some values that nest.
_junk = st.one_of(
    st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1),
    st.integers(min_value=-3, max_value=70),
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=12,
    ),
)


@given(st.data())
def test_any_decodable_mutation_of_a_non_sequence_delta_joins_encodes_and_renders(data: st.DataObject) -> None:
    base = Document()
    base.apply(
        [{"op": "increment", "path": ["c"], "by": INT64_MAX}, {"op": "set", "path": ["m", "k"], "value": 0}],
        replica="b",
    )
    tree = orjson.loads(_sample())
    for _ in range(data.draw(st.integers(1, 2))):
        body = [p for p in _leaves(tree) if p[:1] == (4,)]  # the envelope is checked first anyway
        tree = _replace(tree, data.draw(st.sampled_from(body)), data.draw(_junk))
    try:
        raw = orjson.dumps(tree)
        delta = decode_delta(raw)
    except (DecodeError, TypeError):
        event("undecodable")
        return  # not a delta (or not even JSON orjson writes): bytes that never reach a join
    event("decoded")
    for doc in (Document(), base):
        doc.join(delta)
        encoded = encode_document(doc)
        assert encode_document(decode_document(encoded)) == encoded
        orjson.dumps(doc.value())
        orjson.dumps(doc.siblings())
