"""Counters and int64: local ops stay inside it, merges never fail, reads have one form past it."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.crdt.tags import Tag
from crdtstore.document import Document
from crdtstore.errors import DecodeError, InvalidValue
from crdtstore.limits import INT64_MAX, INT64_MIN

MAX = INT64_MAX


def _inc(by: int, path: str = "c") -> dict[str, object]:
    return {"op": "increment", "path": [path], "by": by}


def _two_regions_at_max() -> tuple[Document, Document]:
    """Two replicas that each added int64 max concurrently, then exchanged deltas."""
    a, b = Document(), Document()
    da = encode_delta(a.apply([_inc(MAX)], replica="a"))
    db = encode_delta(b.apply([_inc(MAX)], replica="b"))
    a.join(decode_delta(db))
    b.join(decode_delta(da))
    return a, b


def test_concurrent_int64_max_increments_merge_and_read_as_a_decimal_string() -> None:
    a, b = _two_regions_at_max()
    assert encode_document(a) == encode_document(b)
    assert a.value() == {"c": str(2 * MAX)}
    assert a.siblings() == {"c": str(2 * MAX)}
    # The view the node stores and the API returns must serialize.
    assert orjson.loads(orjson.dumps(a.value())) == {"c": "18446744073709551614"}
    back = decode_document(encode_document(a))
    assert back.value() == a.value() and encode_document(back) == encode_document(a)


def test_values_inside_int64_still_read_as_numbers() -> None:
    doc = Document()
    doc.apply([_inc(MAX)], replica="a")
    doc.join(decode_delta(encode_delta(Document().apply([_inc(INT64_MIN)], replica="b"))))
    assert doc.value() == {"c": -1}


def test_an_increment_past_the_replicas_own_int64_share_is_rejected_and_changes_nothing() -> None:
    doc = Document()
    doc.apply([_inc(MAX)], replica="a")
    before = encode_document(doc)
    with pytest.raises(InvalidValue) as info:
        doc.apply([{"op": "set", "path": ["x"], "value": 1}, _inc(1)], replica="a")
    assert info.value.op_index == 1 and info.value.path == ["c"]
    assert info.value.code == "invalid_value"
    assert encode_document(doc) == before


def test_increments_of_one_batch_are_checked_together() -> None:
    doc = Document()
    with pytest.raises(InvalidValue) as info:
        doc.apply([_inc(MAX), _inc(-5), _inc(6)], replica="a")
    assert info.value.op_index == 2
    assert doc.value() == {}
    # A removal earlier in the batch starts the counter afresh.
    doc.apply([_inc(MAX), {"op": "delete", "path": ["c"]}, _inc(MAX)], replica="a")
    assert doc.value() == {"c": MAX}


def test_an_increment_taking_the_value_out_of_range_is_rejected_even_within_the_own_share() -> None:
    a = Document()
    a.join(decode_delta(encode_delta(Document().apply([_inc(MAX)], replica="b"))))
    with pytest.raises(InvalidValue, match="value outside int64"):
        a.apply([_inc(1)], replica="a")
    with pytest.raises(InvalidValue):
        a.apply([_inc(INT64_MIN), _inc(INT64_MIN)], replica="a")  # own share out of range below
    a.apply([_inc(-1)], replica="a")
    assert a.value() == {"c": MAX - 1}


def test_a_merged_out_of_range_value_may_move_back_but_not_further_out() -> None:
    a, _ = _two_regions_at_max()
    with pytest.raises(InvalidValue):
        a.apply([_inc(1, "c")], replica="z")
    a.apply([_inc(-MAX, "c")], replica="z")
    assert a.value() == {"c": MAX}


def test_a_sum_past_64_bits_is_encoded_as_a_canonical_string() -> None:
    # No local op makes one; a hostile or older peer could. Encoding must not raise.
    doc = Document()
    doc.apply([_inc(1)], replica="a")
    counter = doc.root.get("c", Tag.COUNTER)
    big = 1 << 70
    for dot in counter.entries:
        counter.entries[dot] = big
    data = encode_document(doc)
    assert b'"1180591620717411303424"' in data
    back = decode_document(data)
    assert back.value() == {"c": str(big)} and encode_document(back) == data


@pytest.mark.parametrize(
    "sum_json",
    [
        b'"5"',  # fits a JSON integer: must be written as one
        b'"18446744073709551615"',  # 2**64 - 1 still fits
        b'"007"',
        b'"+18446744073709551616"',
        b'"1e30"',
        b'"' + b"9" * 60 + b'"',  # beyond the digit bound
        b"1.5",
        b"null",
    ],
)
def test_non_canonical_or_bad_sums_do_not_decode(sum_json: bytes) -> None:
    doc = Document()
    doc.apply([_inc(7)], replica="a")
    data = encode_document(doc)
    assert b",7]" in data
    with pytest.raises(DecodeError):
        decode_document(data.replace(b",7]", b"," + sum_json + b"]"))


@given(st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=1, max_size=6))
def test_merging_any_int64_shares_is_total_and_exact(shares: list[int]) -> None:
    docs = [Document() for _ in shares]
    deltas = [
        encode_delta(d.apply([_inc(by)], replica=f"r{i}")) for i, (d, by) in enumerate(zip(docs, shares, strict=True))
    ]
    merged = Document()
    for delta in reversed(deltas):
        merged.join(decode_delta(delta))
    total = sum(shares)
    assert merged.root.fields["c"]  # the counter exists
    shown = merged.value()["c"]
    assert shown == (total if INT64_MIN <= total <= INT64_MAX else str(total))
    assert int(shown) == total
    data = encode_document(merged)
    assert decode_document(data).value() == merged.value()
    orjson.dumps(merged.value())  # the stored view serializes
