"""The codec: untrusted bytes raise a typed error and nothing else; versions are checked."""

from __future__ import annotations

import sys
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import _encode_full_delta, decode_delta, decode_document, encode_delta, encode_document
from crdtstore.crdt.sequence import MAX_ELEMENTS, Sequence
from crdtstore.crdt.tags import Tag
from crdtstore.document import Document
from crdtstore.errors import DecodeError, InvalidVersion, OpError, UnsupportedVersion
from crdtstore.version import decode_version


def sample() -> tuple[bytes, bytes]:
    doc = Document()
    delta = doc.apply(
        [
            {"op": "set", "path": ["m", "r"], "value": {"k": [1, 2]}},
            {"op": "increment", "path": ["n"], "by": 2},
            {"op": "add", "path": ["s"], "value": "x"},
            {"op": "enable", "path": ["f"]},
            {"op": "insert", "path": ["t"], "index": 0, "text": "héllo"},
            {"op": "insert", "path": ["l"], "index": 0, "values": [1, {"a": None}]},
        ],
        replica="a",
    )
    doc.apply([{"op": "delete", "path": ["t"], "index": 1, "count": 2}], replica="b")
    return encode_document(doc), encode_delta(delta)


def test_one_character_insert_delta_is_small() -> None:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["text"], "index": 0, "text": "x" * 1000}], replica="r1")
    delta = doc.apply([{"op": "insert", "path": ["text"], "index": 1000, "text": "y"}], replica="r1")
    assert len(encode_delta(delta)) <= 64


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    for decode in (decode_document, decode_delta):
        try:
            decode(data)
        except DecodeError:
            pass


def _mutations(value: object) -> st.SearchStrategy[object]:
    leaves = st.one_of(st.none(), st.integers(-3, 300), st.text(max_size=3), st.lists(st.integers(-1, 5), max_size=3))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=8)


@given(st.data())
def test_mutated_encodings_raise_decode_errors_only(data: st.DataObject) -> None:
    for encoded, decode in zip(sample(), (decode_document, decode_delta), strict=True):
        tree = orjson.loads(encoded)
        # Replace one randomly chosen subtree with junk.
        node = tree
        while isinstance(node, list) and node and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(node) - 1))
            if isinstance(node[i], list) and data.draw(st.booleans()):
                node = node[i]
            else:
                node[i] = data.draw(_mutations(node[i]))
                break
        try:
            decode(orjson.dumps(tree))
        except DecodeError:
            pass


def test_unknown_format_is_unsupported() -> None:
    doc_bytes, _ = sample()
    tree = orjson.loads(doc_bytes)
    tree[1] = 99
    with pytest.raises(UnsupportedVersion):
        decode_document(orjson.dumps(tree))


def test_a_delta_is_not_a_document() -> None:
    _, delta_bytes = sample()
    with pytest.raises(DecodeError):
        decode_document(delta_bytes)


@pytest.mark.parametrize("token", ["", "v2.e30", "v1.!!!", "v1.W10", "v1.eyJhIjpbMiwxXX0", 42, None])
def test_bad_version_tokens_are_rejected(token: object) -> None:
    with pytest.raises(InvalidVersion):
        decode_version(token)


def test_huge_claimed_runs_are_refused_before_any_work() -> None:
    """A few bytes must not claim billions of elements for later work to walk."""
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "ab"}], replica="a")
    doc.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 1}], replica="a")
    tree = orjson.loads(encode_document(doc))
    body = tree[4][0][1][0][1]  # the text's [presence, runs, deletions, pending, pending deletes]
    runs, deletions = body[1], body[2]
    dead = runs.index(1, 4)  # the dead run's length sits at a content slot
    huge_run = orjson.loads(orjson.dumps(tree))
    huge_run[4][0][1][0][1][1][dead] = 2**40
    huge_deletes = orjson.loads(orjson.dumps(tree))
    huge_deletes[4][0][1][0][1][2][4] = 2**40  # a segment's count
    assert deletions and runs
    for bad in (huge_run, huge_deletes):
        with pytest.raises(DecodeError):
            decode_document(orjson.dumps(bad))


def _dead_run_delta(replica: str, length: int) -> bytes:
    """A forged delta: one insert by ``replica`` that claims a dead run of ``length`` elements."""
    tree = orjson.loads(
        _encode_full_delta(
            Document().apply([{"op": "insert", "path": ["t"], "index": 0, "text": "x"}], replica=replica)
        )
    )
    seq_body = tree[4][0][1][0][1]  # [presence, inserts]
    seq_body[1][0][4] = length  # the insert's content becomes a dead run's length
    return orjson.dumps(tree)


def test_claimed_dead_runs_never_make_a_document_unreadable() -> None:
    """Tiny deltas that claim huge dead runs: a join past the decoder's bounds is refused whole."""
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hello"}], replica="a")
    refused = 0
    for replica in ("p", "q", "r"):
        delta = decode_delta(_dead_run_delta(replica, MAX_ELEMENTS // 2))  # each alone passes the bounds
        before = encode_document(doc)
        try:
            doc.join(delta)
        except DecodeError:
            refused += 1
            assert encode_document(doc) == before  # nothing changed
    assert refused == 2
    loaded = decode_document(encode_document(doc))  # still loads, reads and replicates
    assert loaded.value() == {"t": "hello"}
    assert encode_document(loaded) == encode_document(doc)
    state = Document()
    state.join(decode_delta(_dead_run_delta("s", MAX_ELEMENTS)))
    with pytest.raises(DecodeError):
        doc.merge(state)
    assert decode_document(encode_document(doc)).value() == {"t": "hello"}


def test_documents_many_regions_filled_concurrently_still_load() -> None:
    """Regions each at a 4M-element write limit, merged: the decoder must accept the result."""
    regions = 6
    merged = Document()
    for r in range(regions):
        doc = Document()
        for _ in range(4):
            doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "x" * (1 << 20)}], replica=f"r{r}")
        doc.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 4 << 20}], replica=f"r{r}")
        merged.merge(doc)
    assert text_size(merged) == regions * (4 << 20) > 1 << 24
    loaded = decode_document(encode_document(merged))
    assert loaded.value() == {"t": ""}
    assert text_size(loaded) == text_size(merged)


def text_size(doc: Document) -> int:
    seq = doc.root.get("t", Tag.TEXT)
    assert isinstance(seq, Sequence)
    return sum(it.length for it in seq._items())


def test_deletes_outside_the_context_are_refused() -> None:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "abc"}], replica="a")
    delta = doc.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 1}], replica="b")
    tree = orjson.loads(encode_delta(delta))
    tree[3] = {}  # drop the delete's own dot from the context
    with pytest.raises(DecodeError):
        decode_delta(orjson.dumps(tree))
    state = orjson.loads(encode_document(doc))
    state[3] = {k: v for k, v in state[3].items() if state[2][int(k)] != "b"}
    with pytest.raises(DecodeError):
        decode_document(orjson.dumps(state))


def test_deletion_chains_may_share_a_few_deleters_but_not_millions() -> None:
    """Logs written before the per-deleter form could end one chain and start another on one deleter."""
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "abcdefgh"}], replica="a")
    for k in range(3):  # backspaces: one chain
        doc.apply([{"op": "delete", "path": ["t"], "index": 5 - k, "count": 1}], replica="a")
    tree = orjson.loads(encode_document(doc))
    deletions = tree[4][0][1][0][1][2]
    assert len(deletions) == 6 and deletions[5] == 1  # one segment, a backspace chain
    shared = orjson.loads(orjson.dumps(tree))
    shared[4][0][1][0][1][2] += [0, 2, 0, 4, 1, 0]  # its last deleter also deleted another element
    loaded = decode_document(orjson.dumps(shared))
    pairs = {(d0 + k * ds, t0 + k * ts) for _, d0, ds, _, t0, ts, n in text_seq(loaded).deletions for k in range(n)}
    assert encode_document(decode_document(encode_document(loaded))) == encode_document(loaded)
    assert len(pairs) == 4
    claims = orjson.loads(orjson.dumps(tree))
    claims[4][0][1][0][1][2] = [
        0,
        20,
        0,
        30,
        1 << 20,
        2,
        0,
        0,
        0,
        1 << 21,
        1 << 20,
        1,
    ]  # two long chains, one deleter range
    with pytest.raises(DecodeError, match="share"):
        decode_document(orjson.dumps(claims))


def text_seq(doc: Document) -> Sequence:
    seq = doc.root.get("t", Tag.TEXT)
    assert isinstance(seq, Sequence)
    return seq


def test_kept_encodings_cost_their_size() -> None:
    """orjson's output sits in a 4 KiB allocation; what the codec returns must not."""
    doc = Document()
    deltas = []
    tracemalloc.start()
    try:
        for k in range(200):
            deltas.append(
                encode_delta(doc.apply([{"op": "insert", "path": ["t"], "index": k, "text": "x"}], replica="a"))
            )
        held = sum(sys.getsizeof(d) for d in deltas)
        traced = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert all(len(d) < 100 for d in deltas)
    assert held < 200 * 200
    assert traced < 200 * 1024  # 200 kept 4 KiB buffers would be 800 KiB


one_op_batches = st.one_of(
    st.builds(
        lambda path, index, text: [{"op": "insert", "path": path, "index": index, "text": text}],
        st.sampled_from([["t"], ["m", "t"], ["m", "n", "t"]]),
        st.integers(0, 4),
        st.text(min_size=1, max_size=3),
    ),
    st.builds(
        lambda index, values: [{"op": "insert", "path": ["l"], "index": index, "values": values}],
        st.integers(0, 4),
        st.lists(st.one_of(st.integers(), st.none(), st.text(max_size=2)), min_size=1, max_size=3),
    ),
    st.builds(
        lambda path, index, count: [{"op": "delete", "path": path, "index": index, "count": count}],
        st.sampled_from([["t"], ["m", "t"], ["l"]]),
        st.integers(0, 3),
        st.integers(1, 3),
    ),
)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "long-replica.1.0f9a"]), one_op_batches), max_size=12))
def test_short_deltas_decode_as_their_full_form(steps: list[tuple[str, list[Any]]]) -> None:
    """The short form is only a spelling: it decodes to the very delta the full form does."""
    docs = {"a": Document(), "b": Document(), "long-replica.1.0f9a": Document()}
    for replica, ops in steps:
        doc = docs[replica]
        try:
            delta = doc.apply(ops, replica=replica)
        except OpError:
            continue
        short, full = encode_delta(delta), _encode_full_delta(delta)
        assert decode_delta(short) == decode_delta(full) == delta
        assert len(short) <= len(full)
        for other in docs.values():
            other.join(decode_delta(short))
    encodings = {encode_document(d) for d in docs.values()}
    assert len(encodings) == 1


def test_one_character_edits_take_the_short_form() -> None:
    doc = Document()
    first = encode_delta(doc.apply([{"op": "insert", "path": ["text"], "index": 0, "text": "a"}], replica="a0"))
    typed = encode_delta(doc.apply([{"op": "insert", "path": ["text"], "index": 1, "text": "b"}], replica="a0"))
    deleted = encode_delta(doc.apply([{"op": "delete", "path": ["text"], "index": 0, "count": 1}], replica="a0"))
    assert first == b'["I","a0","text",2,-1,null,"a"]'
    assert typed == b'["i","a0","text",3,-1,1,"b"]'
    assert deleted == b'["x","a0","text",4,"a0",2,1]'
    assert max(len(first), len(typed), len(deleted)) <= 32


@given(st.data())
def test_mutated_short_deltas_raise_decode_errors_only(data: st.DataObject) -> None:
    doc = Document()
    samples = [
        doc.apply([{"op": "insert", "path": ["m", "t"], "index": 0, "text": "ab"}], replica="a"),
        doc.apply([{"op": "insert", "path": ["m", "t"], "index": 1, "text": "c"}], replica="b"),
        doc.apply([{"op": "insert", "path": ["l"], "index": 0, "values": [1, None]}], replica="a"),
        doc.apply([{"op": "delete", "path": ["m", "t"], "index": 0, "count": 2}], replica="b"),
        doc.apply([{"op": "delete", "path": ["l"], "index": 1, "count": 1}], replica="b"),
    ]
    tree = orjson.loads(encode_delta(data.draw(st.sampled_from(samples))))
    i = data.draw(st.integers(0, len(tree) - 1))
    tree[i] = data.draw(_mutations(tree[i]) | st.sampled_from(["i", "I", "x", "y", "", 0, -1, 2**62]))
    try:
        decode_delta(orjson.dumps(tree))
    except DecodeError:
        pass


def _two_replica_text() -> tuple[Document, list[Any]]:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "abc"}], replica="a")
    doc.apply([{"op": "insert", "path": ["t"], "index": 2, "text": "XY"}], replica="b")  # origin in a: [ref, c]
    doc.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 1}], replica="b")
    tree = orjson.loads(encode_document(doc))
    return doc, tree


def test_loading_checks_every_run_against_the_others() -> None:
    doc, tree = _two_replica_text()
    assert encode_document(decode_document(orjson.dumps(tree))) == encode_document(doc)
    runs = tree[4][0][1][0][1][1]
    assert any(isinstance(x, list) for x in runs[3::5])  # an origin in another replica
    bad: list[list[Any]] = []
    swapped = orjson.loads(orjson.dumps(tree))  # the first two runs' order reversed: an origin comes later
    r = swapped[4][0][1][0][1][1]
    r[0:10] = r[5:10] + r[0:5]
    bad.append(swapped)
    duplicate = orjson.loads(orjson.dumps(tree))  # a run claims ids another run holds
    duplicate[4][0][1][0][1][1] += [0, -3, 0, None, "zz"]
    bad.append(duplicate)
    for k in range(3, len(runs), 5):  # every origin pointed past anything there
        missing = orjson.loads(orjson.dumps(tree))
        rel = missing[4][0][1][0][1][1][k]
        missing[4][0][1][0][1][1][k] = [rel[0], 99] if isinstance(rel, list) else -5
        bad.append(missing)
    for b in bad:
        with pytest.raises(DecodeError):
            decode_document(orjson.dumps(b))
