"""The sequence CRDT: reading an older version, the deletion log, and the position index at scale."""

from __future__ import annotations

import tracemalloc
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.causal import CausalContext, Dot
from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.crdt.sequence import BLOCK_MAX, Sequence, _normalize, _normalize_tail
from crdtstore.crdt.tags import Tag
from crdtstore.document import Document


def text_of(doc: Document) -> Sequence:
    seq = doc.root.get("t", Tag.TEXT)
    assert isinstance(seq, Sequence)
    return seq


def visible_ids(seq: Sequence) -> list[Dot]:
    return [(it.replica, it.counter + k) for it in seq._items() if it.content is not None for k in range(it.length)]


edits = st.lists(
    st.tuples(st.integers(0, 2), st.booleans(), st.floats(0, 1), st.text("ab", min_size=1, max_size=3)),
    min_size=1,
    max_size=25,
)


@given(edits, st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=10))
def test_every_old_version_reads_back_exactly_as_it_was(steps: list[Any], merges: list[tuple[int, int]]) -> None:
    """The view at a version V is exactly what the replica that made V saw, on any replica that later saw more."""
    docs = [Document() for _ in range(3)]
    docs[0].apply([{"op": "insert", "path": ["t"], "index": 0, "text": "x"}], replica="seed")
    for d in docs[1:]:
        d.merge(docs[0])
    snapshots: list[tuple[CausalContext, list[Dot]]] = []
    for k, (i, insert, frac, text) in enumerate(steps):
        doc = docs[i]
        length = len(text_of(doc))
        if insert or length == 0:
            doc.apply([{"op": "insert", "path": ["t"], "index": int(frac * length), "text": text}], replica=f"r{i}")
        else:
            index = min(int(frac * length), length - 1)
            doc.apply([{"op": "delete", "path": ["t"], "index": index, "count": 1}], replica=f"r{i}")
        snapshots.append((doc.ctx.copy(), visible_ids(text_of(doc))))
        if k < len(merges):
            a, b = merges[k]
            docs[b].merge(docs[a])
    final = docs[0]
    for d in docs[1:]:
        final.merge(d)
    seq = text_of(final)
    for ctx, ids in snapshots:
        assert seq.length_at(ctx) == len(ids)
        assert seq.ids_at(ctx, 0, len(ids)) == (ids if ids else None)


def test_backspacing_is_one_deletion_segment_and_one_dead_run() -> None:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hello world"}], replica="a")
    for k in range(5):  # backspace "world"
        doc.apply([{"op": "delete", "path": ["t"], "index": 10 - k, "count": 1}], replica="a")
    assert doc.value() == {"t": "hello "}
    encoded = encode_document(doc)
    seq = text_of(decode_document(encoded))
    assert len(seq.deletions) == 1  # five deletes, consecutive deleters, descending targets
    assert len(list(seq._items())) == 2  # "hello " and one dead run of five
    assert encode_document(decode_document(encoded)) == encoded


def pairs_of(segments: list[Any]) -> set[tuple[str, int, str, int]]:
    return {(dr, d0 + k * ds, tr, t0 + k * ts) for dr, d0, ds, tr, t0, ts, n in segments for k in range(n)}


segment_lists = st.lists(
    st.one_of(
        st.tuples(st.just(0), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3)),  # one deleter, a range
        st.tuples(st.sampled_from([1, -1]), st.integers(1, 6), st.integers(4, 9), st.integers(2, 4)),  # a chain
    ),
    max_size=12,
)


@given(segment_lists, st.randoms(use_true_random=False))
def test_normalized_deletions_depend_only_on_the_pairs(raw: list[tuple[int, int, int, int]], rnd: Any) -> None:
    segments = [("d", d, 0, "t", t, 1, n) if step == 0 else ("d", d, 1, "t", t, step, n) for step, d, t, n in raw]
    normal = _normalize(segments)
    shuffled = list(segments)
    rnd.shuffle(shuffled)
    assert _normalize(shuffled) == normal
    assert _normalize(normal) == normal
    assert pairs_of(normal) == pairs_of(segments)
    # The same pairs written one by one normalize the same way.
    assert _normalize([("d", d, 0, "t", t, 1, 1) for _, d, _, t in pairs_of(segments)]) == normal


@given(segment_lists, segment_lists, st.sampled_from(["c", "d", "e"]))
def test_normalizing_only_the_new_tail_agrees_with_normalizing_everything(
    old: list[tuple[int, int, int, int]], new: list[tuple[int, int, int, int]], replica: str
) -> None:
    def segs(raw: list[tuple[int, int, int, int]], dr: str, shift: int) -> list[Any]:
        return [
            (dr, d + shift, 0, "t", t, 1, n) if st_ == 0 else (dr, d + shift, 1, "t", t, st_, n) for st_, d, t, n in raw
        ]

    canonical = _normalize(segs(old, "d", 0))
    for shift in (0, 10):  # new deleters among the old ones, then after them (the usual case)
        fresh = segs(new, replica, shift)
        assert _normalize_tail(canonical + fresh, len(canonical)) == _normalize(canonical + fresh)


def test_normalizing_never_expands_runs() -> None:
    """A long range delete and a long run of backspaces stay one segment each, in memory as on the wire."""
    n = 1 << 20
    segments = [("a", 5, 0, "b", 1, 1, n), ("a", 6, 1, "b", 3 * n, -1, n), ("a", 6 + n, 0, "b", 4 * n, 1, 1)]
    tracemalloc.start()
    try:
        normal = _normalize(list(reversed(segments)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert normal == [segments[0], ("a", 6, 1, "b", 3 * n, -1, n), ("a", 6 + n, 0, "b", 4 * n, 1, 1)]
    assert peak < 64 << 10  # the old expansion held a tuple per pair: tens of MiB


def test_encoding_after_a_delete_costs_a_repeat_encode_in_memory() -> None:
    """An encode after one small delete on a long-edited text holds no more than a repeat encode does."""
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "x" * 300_000}], replica="a")
    doc.apply([{"op": "delete", "path": ["t"], "index": 10, "count": 299_000}], replica="a")
    for k in range(50):  # some backspacing
        doc.apply([{"op": "delete", "path": ["t"], "index": 900 - k, "count": 1}], replica="b")
    doc = decode_document(encode_document(doc))  # a loaded document's log is untrusted until normalized
    doc.apply([{"op": "delete", "path": ["t"], "index": 5, "count": 1}], replica="a")
    tracemalloc.start()
    try:
        after = encode_document(doc)
        peak_after = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert encode_document(doc) == after
        peak_repeat = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_after < 2 * peak_repeat + (64 << 10)
    assert len(text_of(doc).deletions) == 3


def test_a_dead_run_merged_onto_its_own_start_claims_no_more_ids() -> None:
    """Regression: the receiver held the run's first 4 ids live; the sender's state has all 10 dead.

    Merging it placed the unknown tail as a dead run of the full 10 (the length it arrived with),
    not the 6 left: ids r:11..14 that no one minted, and replicas that no longer encoded alike.
    """
    sender, receiver = Document(), Document()
    first = sender.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "abcd"}], replica="r")
    receiver.join(decode_delta(encode_delta(first)))
    sender.apply([{"op": "insert", "path": ["t"], "index": 4, "text": "efghij"}], replica="r")
    sender.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 10}], replica="r")
    receiver.merge(sender)
    assert text_of(receiver).size == text_of(sender).size == 10
    assert encode_document(receiver) == encode_document(sender)
    assert receiver.value() == sender.value() == {"t": ""}


def test_a_delete_joined_twice_is_logged_once() -> None:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "abcdef"}], replica="a")
    other = doc.copy()
    delta = other.apply([{"op": "delete", "path": ["t"], "index": 1, "count": 3}], replica="b")
    wire = encode_delta(delta)
    doc.join(decode_delta(wire))
    before = list(text_of(doc).deletions)
    doc.join(decode_delta(wire))
    doc.merge(other)
    assert text_of(doc).deletions == before == [("b", 1, 0, "a", 3, 1, 3)]
    assert encode_document(doc) == encode_document(other)


def test_many_blocks_keep_positions_right() -> None:
    doc = Document()
    expected = ""
    for k in range(BLOCK_MAX * 6):
        index = (k * 7919) % (len(expected) + 1)  # scattered inserts split runs and blocks
        doc.apply([{"op": "insert", "path": ["t"], "index": index, "text": "ab"[k % 2]}], replica="a")
        expected = expected[:index] + "ab"[k % 2] + expected[index:]
    seq = text_of(doc)
    assert len(seq.blocks) > 2
    assert all(len(b.items) <= BLOCK_MAX for b in seq.blocks)
    assert doc.value()["t"] == expected
    for k in range(0, len(expected), 97):
        doc.apply([{"op": "delete", "path": ["t"], "index": k // 2, "count": 1}], replica="a")
        expected = expected[: k // 2] + expected[k // 2 + 1 :]
    assert doc.value()["t"] == expected
    assert decode_document(encode_document(doc)).value()["t"] == expected


def test_sequence_deltas_joined_remotely_leave_the_state_their_replica_has() -> None:
    """Keystrokes, deletes and a removal of the whole text, each joined as bytes elsewhere."""
    doc = Document()
    other = Document()
    batches: list[list[dict[str, Any]]] = [
        [{"op": "insert", "path": ["m", "t"], "index": 0, "text": "ab"}],
        [{"op": "insert", "path": ["m", "t"], "index": 2, "text": "c"}],
        [{"op": "delete", "path": ["m", "t"], "index": 0, "count": 3}],
        [{"op": "insert", "path": ["m", "t"], "index": 0, "text": "d"}],
        [{"op": "delete", "path": ["m", "t"]}],
        [{"op": "delete", "path": ["m"]}],
    ]
    for ops in batches:
        delta = other.apply(ops, replica="a")
        doc.join(decode_delta(encode_delta(delta)))
        assert encode_document(doc) == encode_document(other)
    assert doc.value() == {}
