"""Document semantics: each op, concurrent conflicts, errors, and index edits from an older version."""

from __future__ import annotations

from typing import Any

import pytest

from crdtstore.codec import decode_delta, encode_delta, encode_document
from crdtstore.document import Document
from crdtstore.errors import IndexOutOfRange, InvalidOp, InvalidValue, OpError, TypeMismatch, VersionAhead


def apply(doc: Document, *ops: dict[str, Any], replica: str = "a", now: int = 0) -> bytes:
    return encode_delta(doc.apply(list(ops), replica=replica, now=now))


def sync(*docs: Document) -> None:
    for a in docs:
        for b in docs:
            if a is not b:
                b.merge(a)


def fork(doc: Document) -> Document:
    return doc.copy()


# Each op on its own.


def test_every_op_kind_reads_back_as_plain_json() -> None:
    doc = Document()
    apply(
        doc,
        {"op": "set", "path": ["title"], "value": "hello"},
        {"op": "set", "path": ["meta", "owner"], "value": {"name": "ada"}, "lww": True},
        {"op": "increment", "path": ["views"], "by": 5},
        {"op": "increment", "path": ["views"], "by": -2},
        {"op": "add", "path": ["tags"], "value": "b"},
        {"op": "add", "path": ["tags"], "value": "a"},
        {"op": "remove", "path": ["tags"], "value": "b"},
        {"op": "enable", "path": ["done"]},
        {"op": "insert", "path": ["body"], "index": 0, "text": "helo"},
        {"op": "insert", "path": ["body"], "index": 3, "text": "l"},
        {"op": "insert", "path": ["items"], "index": 0, "values": [1, 2, 3]},
        {"op": "delete", "path": ["items"], "index": 1, "count": 1},
    )
    assert doc.value() == {
        "body": "hello",
        "done": True,
        "items": [1, 3],
        "meta": {"owner": {"name": "ada"}},
        "tags": ["a"],
        "title": "hello",
        "views": 3,
    }


def test_emptied_containers_stay_until_their_key_is_deleted() -> None:
    doc = Document()
    apply(doc, {"op": "add", "path": ["s"], "value": 1}, {"op": "insert", "path": ["t"], "index": 0, "text": "x"})
    apply(doc, {"op": "remove", "path": ["s"], "value": 1}, {"op": "delete", "path": ["t"], "index": 0})
    apply(doc, {"op": "enable", "path": ["f"]}, {"op": "disable", "path": ["f"]})
    assert doc.value() == {"f": False, "s": [], "t": ""}
    apply(doc, {"op": "delete", "path": ["s"]}, {"op": "delete", "path": ["t"]}, {"op": "delete", "path": ["f"]})
    assert doc.value() == {}


def test_deleting_a_missing_key_changes_no_value_but_is_recorded() -> None:
    doc = Document()
    apply(doc, {"op": "set", "path": ["x"], "value": 1})
    before = doc.value()
    delta = doc.apply([{"op": "delete", "path": ["nothing", "here"]}], replica="a")
    assert doc.value() == before
    # Like every op it mints one dot, so equal contexts keep meaning equal states.
    assert list(delta.dots()) == [("a", 2)]
    assert doc.vector() == {"a": 2}


def test_every_op_kind_mints_a_dot() -> None:
    doc = Document()
    apply(doc, {"op": "add", "path": ["s"], "value": 1}, {"op": "enable", "path": ["f"]})
    for op in (
        {"op": "remove", "path": ["s"], "value": 1},
        {"op": "disable", "path": ["f"]},
        {"op": "delete", "path": ["s"]},
    ):
        count = doc.ctx.count()
        doc.apply([op], replica="a")
        assert doc.ctx.count() == count + 1, op


# Concurrency.


def test_concurrent_register_writes_stay_as_siblings() -> None:
    a = Document()
    apply(a, {"op": "set", "path": ["x"], "value": 0})
    b = fork(a)
    apply(a, {"op": "set", "path": ["x"], "value": "from a"}, replica="a")
    apply(b, {"op": "set", "path": ["x"], "value": "from b"}, replica="b")
    sync(a, b)
    assert sorted(a.siblings()["x"]) == ["from a", "from b"]
    assert a.value()["x"] == b.value()["x"] in ("from a", "from b")
    apply(a, {"op": "set", "path": ["x"], "value": "resolved"})
    sync(a, b)
    assert b.siblings()["x"] == ["resolved"]


def test_lww_register_takes_the_latest_timestamp_and_breaks_ties_by_replica() -> None:
    a, b = Document(), Document()
    apply(a, {"op": "set", "path": ["x"], "value": "late", "lww": True}, replica="a", now=20)
    apply(b, {"op": "set", "path": ["x"], "value": "early", "lww": True}, replica="b", now=10)
    sync(a, b)
    assert a.value()["x"] == b.value()["x"] == "late"
    c, d = Document(), Document()
    apply(c, {"op": "set", "path": ["x"], "value": "c", "lww": True}, replica="c", now=5)
    apply(d, {"op": "set", "path": ["x"], "value": "d", "lww": True}, replica="d", now=5)
    sync(c, d)
    assert c.value()["x"] == d.value()["x"] == "d"


def test_concurrent_increments_add_up() -> None:
    a, b = Document(), Document()
    apply(a, {"op": "increment", "path": ["n"], "by": 2}, replica="a")
    apply(b, {"op": "increment", "path": ["n"], "by": 3}, replica="b")
    apply(b, {"op": "increment", "path": ["n"], "by": -1}, replica="b")
    sync(a, b)
    assert a.value() == b.value() == {"n": 4}


def test_add_wins_over_concurrent_remove() -> None:
    a = Document()
    apply(a, {"op": "add", "path": ["s"], "value": "x"})
    b = fork(a)
    apply(a, {"op": "remove", "path": ["s"], "value": "x"}, replica="a")
    apply(b, {"op": "add", "path": ["s"], "value": "x"}, replica="b")
    sync(a, b)
    assert a.value() == b.value() == {"s": ["x"]}


def test_enable_wins_over_concurrent_disable() -> None:
    a = Document()
    apply(a, {"op": "enable", "path": ["f"]})
    b = fork(a)
    apply(a, {"op": "disable", "path": ["f"]}, replica="a")
    apply(b, {"op": "enable", "path": ["f"]}, replica="b")
    sync(a, b)
    assert a.value() == b.value() == {"f": True}


def test_update_concurrent_with_removing_its_map_survives() -> None:
    a = Document()
    apply(
        a,
        {"op": "set", "path": ["m", "old"], "value": 1},
        {"op": "insert", "path": ["m", "t"], "index": 0, "text": "ab"},
    )
    b = fork(a)
    apply(a, {"op": "delete", "path": ["m"]}, replica="a")
    apply(
        b,
        {"op": "set", "path": ["m", "new"], "value": 2},
        {"op": "insert", "path": ["m", "t"], "index": 2, "text": "c"},
        replica="b",
    )
    sync(a, b)
    assert a.value() == b.value() == {"m": {"new": 2, "t": "c"}}


def test_concurrent_first_writes_of_different_types_converge() -> None:
    a, b = Document(), Document()
    apply(a, {"op": "set", "path": ["x"], "value": 1}, replica="a")
    apply(b, {"op": "increment", "path": ["x"], "by": 7}, replica="b")
    sync(a, b)
    assert a.value() == b.value() == {"x": 7}  # counters take precedence over registers
    with pytest.raises(TypeMismatch):
        a.apply([{"op": "set", "path": ["x"], "value": 2}], replica="a")


def test_concurrent_text_inserts_at_one_spot_do_not_interleave() -> None:
    a = Document()
    apply(a, {"op": "insert", "path": ["t"], "index": 0, "text": "[]"})
    b = fork(a)
    apply(a, {"op": "insert", "path": ["t"], "index": 1, "text": "alpha"}, replica="a")
    apply(b, {"op": "insert", "path": ["t"], "index": 1, "text": "beta"}, replica="b")
    sync(a, b)
    assert a.value()["t"] in ("[alphabeta]", "[betaalpha]")
    assert a.value() == b.value()


def test_deltas_arriving_before_their_causes_wait_and_then_apply() -> None:
    a = Document()
    first = decode_delta(apply(a, {"op": "insert", "path": ["t"], "index": 0, "text": "abc"}))
    second = decode_delta(apply(a, {"op": "insert", "path": ["t"], "index": 1, "text": "X"}))
    third = decode_delta(apply(a, {"op": "delete", "path": ["t"], "index": 2, "count": 2}))
    b = Document()
    b.join(third)
    b.join(second)
    assert b.value().get("t", "") == ""
    b.join(first)
    assert b.value() == a.value() == {"t": "aX"}
    assert encode_document(b) == encode_document(a)


# Index edits against the version a client saw.


def test_insert_against_an_old_version_lands_where_the_client_meant() -> None:
    server = Document()
    apply(server, {"op": "insert", "path": ["t"], "index": 0, "text": "hello world"})
    seen = server.version()
    apply(server, {"op": "insert", "path": ["t"], "index": 0, "text": ">> "}, replica="other")
    apply(server, {"op": "delete", "path": ["t"], "index": 3, "count": 1}, replica="other")  # drops the "h"
    # The client saw "hello world" and types "," after "hello" (index 5 in its view).
    apply(server, {"op": "insert", "path": ["t"], "index": 5, "text": ",", "version": seen}, replica="client")
    assert server.value()["t"] == ">> ello, world"
    # Deleting "world" (index 6 in the version the client saw) hits the same characters.
    apply(server, {"op": "delete", "path": ["t"], "index": 6, "count": 5, "version": seen}, replica="client")
    assert server.value()["t"] == ">> ello, "


def test_index_without_version_reads_the_current_document() -> None:
    doc = Document()
    apply(doc, {"op": "insert", "path": ["t"], "index": 0, "text": "abc"})
    apply(doc, {"op": "insert", "path": ["t"], "index": 1, "text": "X"})
    assert doc.value()["t"] == "aXbc"


def test_version_tokens_say_what_a_document_contains() -> None:
    a = Document()
    apply(a, {"op": "set", "path": ["x"], "value": 1})
    v1 = a.version()
    apply(a, {"op": "set", "path": ["x"], "value": 2})
    b = Document()
    assert a.contains_version(v1)
    assert not b.contains_version(v1)
    assert a.vector() == {"a": 2}


# Bad input: rejected whole, with the op's index, and nothing changes.

BAD_BATCHES: list[tuple[Any, type[OpError], int | None]] = [
    ("not a list", InvalidOp, None),
    ([], InvalidOp, None),
    ([{"op": "frobnicate", "path": ["x"]}], InvalidOp, 0),
    ([{"op": "set", "path": [], "value": 1}], InvalidOp, 0),
    ([{"op": "set", "path": ["x"]}], InvalidOp, 0),
    ([{"op": "set", "path": ["x"], "value": 1, "extra": 1}], InvalidOp, 0),
    ([{"op": "set", "path": ["x"], "value": 2**64}], InvalidValue, 0),
    ([{"op": "set", "path": ["x"], "value": float("nan")}], InvalidValue, 0),
    ([{"op": "set", "path": ["k" * 300], "value": 1}], InvalidOp, 0),
    (
        [{"op": "set", "path": ["x"], "value": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}],
        InvalidValue,
        0,
    ),
    ([{"op": "set", "path": ["ok"], "value": 1}, {"op": "increment", "path": ["title"]}], TypeMismatch, 1),
    ([{"op": "insert", "path": ["body"], "index": 99, "text": "x"}], IndexOutOfRange, 0),
    ([{"op": "delete", "path": ["body"], "index": 0, "count": 99}], IndexOutOfRange, 0),
    ([{"op": "insert", "path": ["body"], "index": 0, "values": [1]}], TypeMismatch, 0),
    ([{"op": "set", "path": ["title", "sub"], "value": 1}], TypeMismatch, 0),
    ([{"op": "delete", "path": ["title"], "index": 0}], TypeMismatch, 0),
    ([{"op": "insert", "path": ["body"], "index": 0, "text": "x", "version": "v1.garbage"}], InvalidOp, 0),
    ([{"op": "increment", "path": ["n"], "by": 1.5}], InvalidOp, 0),
    (
        [
            {"op": "insert", "path": ["new"], "index": 0, "text": "ab"},
            {"op": "delete", "path": ["new"], "index": 1, "count": 2},
        ],
        IndexOutOfRange,
        1,
    ),
]


@pytest.mark.parametrize(("batch", "error", "op_index"), BAD_BATCHES)
def test_bad_batch_is_rejected_whole_and_changes_nothing(
    batch: Any, error: type[OpError], op_index: int | None
) -> None:
    doc = Document()
    apply(
        doc,
        {"op": "set", "path": ["title"], "value": "t"},
        {"op": "insert", "path": ["body"], "index": 0, "text": "hi"},
    )
    before = encode_document(doc)
    with pytest.raises(error) as info:
        doc.apply(batch, replica="a")
    assert info.value.op_index == op_index
    assert encode_document(doc) == before


def test_batch_sees_its_own_earlier_ops() -> None:
    doc = Document()
    apply(
        doc,
        {"op": "insert", "path": ["t"], "index": 0, "text": "ab"},
        {"op": "insert", "path": ["t"], "index": 2, "text": "cd"},
        {"op": "delete", "path": ["t"], "index": 0, "count": 1},
        {"op": "delete", "path": ["m"]},
        {"op": "set", "path": ["m", "x"], "value": 1},
    )
    assert doc.value() == {"m": {"x": 1}, "t": "bcd"}


def test_an_index_read_against_a_version_this_replica_has_not_received_is_refused_until_it_has() -> None:
    """A token from a replica that is ahead: its index counts text not here yet, and would land elsewhere."""
    a, b = Document(), Document()
    b.join(a.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "ad"}], replica="a"))
    late = a.apply([{"op": "insert", "path": ["t"], "index": 1, "text": "bc"}], replica="a")
    seen = a.version()  # the client read "abcd" at a and means "abc|d"
    edit = [
        {"op": "increment", "path": ["n"]},
        {"op": "insert", "path": ["t"], "index": 3, "text": "X", "version": seen},
    ]
    before = encode_document(b)
    with pytest.raises(VersionAhead) as refused:
        b.apply(edit, replica="b")
    assert refused.value.op_index == 1 and refused.value.code == "version_ahead"
    assert encode_document(b) == before  # the whole batch, its increment too
    b.join(late)
    b.apply(edit, replica="b")
    assert b.value() == {"t": "abcXd", "n": 1}
