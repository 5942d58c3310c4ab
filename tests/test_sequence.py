"""The sequence CRDT: reading an older version, the deletion log, and the position index at scale."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.causal import CausalContext, Dot
from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.crdt.sequence import BLOCK_MAX, Sequence, _normalize, _normalize_tail
from crdtstore.crdt.tags import Tag
from crdtstore.document import Document
from crdtstore.errors import DecodeError


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


# The position index's shortcuts (the finger on the last block and item found, the Fenwick update
# deferred while edits stay in one block) against a plain list, through local edits, remote joins,
# reloads and reads of positions by id.


def check_index(seq: Sequence) -> None:
    """Every visible position found as a scan finds it, and the tree agrees with the blocks."""
    seq._flush()
    expected = Sequence(seq.tag)
    expected.blocks = seq.blocks
    expected._rebuild()
    assert seq.tree == expected.tree
    assert seq.total == sum(b.vis for b in seq.blocks) == len(seq.value())
    for blk in seq.blocks:
        assert blk.vis == sum(blk.lens)
        assert blk.lens == [it.length if it.content is not None else 0 for it in blk.items]
    index = 0
    for blk in seq.blocks:
        for j, it in enumerate(blk.items):
            if it.content is None:
                continue
            for off in (0, it.length - 1):
                assert seq._find(index + off) == (blk, j, off)
                assert seq.index_of((it.replica, it.counter + off)) == index + off
            index += it.length


typing = st.lists(
    st.tuples(
        st.sampled_from(["type", "type", "type", "jump", "delete", "backspace", "remote", "reload"]),
        st.floats(0, 1),
        st.text("ab", min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=60,
)


@given(typing)
def test_edits_where_the_last_one_was_keep_every_position_right(steps: list[tuple[str, float, str]]) -> None:
    doc, remote = Document(), Document()
    expected = ""
    caret = 0
    for kind, frac, text in steps:
        if kind == "reload":
            doc = decode_document(encode_document(doc))
            continue
        if kind == "remote":
            # Another replica types into what it has seen, and the delta joins here.
            remote.merge(doc)
            at = int(frac * len(expected))
            delta = remote.apply([{"op": "insert", "path": ["t"], "index": at, "text": text}], replica="r")
            doc.join(decode_delta(encode_delta(delta)))
            expected = expected[:at] + text + expected[at:]
            caret = at + len(text) if at < caret else caret
            continue
        if kind == "jump" or caret > len(expected):
            caret = int(frac * len(expected))
        if kind in ("type", "jump"):
            doc.apply([{"op": "insert", "path": ["t"], "index": caret, "text": text}], replica="a")
            expected = expected[:caret] + text + expected[caret:]
            caret += len(text)
        elif expected:
            at = caret - 1 if kind == "backspace" and caret else min(caret, len(expected) - 1)
            doc.apply([{"op": "delete", "path": ["t"], "index": at, "count": 1}], replica="a")
            expected = expected[:at] + expected[at + 1 :]
            caret = at
        assert doc.value().get("t", "") == expected
    if expected:
        check_index(text_of(doc))
    assert decode_document(encode_document(doc)).value().get("t", "") == expected


def test_typing_on_through_many_blocks_and_runs_keeps_positions_right() -> None:
    """Long typing at one caret crosses run and block limits; a jump back and forth must not lose it."""
    doc = Document()
    expected = ""
    caret = 0
    for k in range(3000):
        if k % 700 == 699:
            caret = (k * 31) % (len(expected) + 1)
        ch = "abc"[k % 3]
        doc.apply([{"op": "insert", "path": ["t"], "index": caret, "text": ch}], replica="a")
        expected = expected[:caret] + ch + expected[caret:]
        caret += 1
    seq = text_of(doc)
    assert len(seq.blocks) > 1 or max(len(it.content or "") for it in seq._items()) > 1
    assert doc.value()["t"] == expected
    check_index(seq)


def test_remote_inserts_in_earlier_blocks_move_the_local_caret() -> None:
    """Joins grow blocks before the one local typing holds: the finger on that block must not go stale."""
    doc = Document()
    expected = ""
    for k in range(BLOCK_MAX * 4):
        index = (k * 7919) % (len(expected) + 1)
        doc.apply([{"op": "insert", "path": ["t"], "index": index, "text": "ab"[k % 2]}], replica="a")
        expected = expected[:index] + "ab"[k % 2] + expected[index:]
    remote = doc.copy()
    assert len(text_of(doc).blocks) > 2
    caret = len(expected) - 5
    for _ in range(40):
        delta = remote.apply([{"op": "insert", "path": ["t"], "index": 3, "text": "xy"}], replica="r")
        doc.join(decode_delta(encode_delta(delta)))
        expected = expected[:3] + "xy" + expected[3:]
        caret += 2
        for ch in "cd":
            doc.apply([{"op": "insert", "path": ["t"], "index": caret, "text": ch}], replica="a")
            expected = expected[:caret] + ch + expected[caret:]
            caret += 1
        remote.merge(doc)
        assert doc.value()["t"] == expected
    check_index(text_of(doc))


# Loading: the shortcuts for one replica's runs and for the deletion log, and what they must refuse.


def loaded_body(doc: Document) -> list[Any]:
    import orjson

    return list(orjson.loads(encode_document(doc)))


def with_body(body: list[Any]) -> bytes:
    import orjson

    return orjson.dumps(body)


def text_body(body: list[Any]) -> list[Any]:
    """The sequence body inside a document encoding whose one field is the text ``t``."""
    ((name, [[_, seq]]),) = [(f[0], f[1]) for f in body[4]]
    assert name == "t"
    return list(seq)


def test_a_loaded_deletion_log_is_built_when_first_used_and_equals_the_encoded_one() -> None:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hello world"}], replica="a")
    for k in range(3):
        doc.apply([{"op": "delete", "path": ["t"], "index": 10 - k, "count": 1}], replica="a")
    doc.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 2}], replica="a")
    loaded = decode_document(encode_document(doc))
    seq = text_of(loaded)
    assert seq._deletions is None  # a read does not build it
    assert loaded.value() == doc.value()
    assert seq.deletions == text_of(doc.copy()).deletions
    assert encode_document(loaded) == encode_document(doc)


def test_a_deleter_missing_from_the_context_is_refused_though_its_replica_bounds_are_covered() -> None:
    """The deleter bounds answer only when one context range holds them; a gap in the middle is refused."""
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "abcdefgh"}], replica="a")  # dots 1..9
    for _ in range(3):
        doc.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 1}], replica="a")  # deleters 10, 11, 12
    body = loaded_body(doc)
    assert body[3] == {"0": [1, 13]}
    body[3] = {"0": [1, 11, 12, 13]}  # deleter 11 was never seen
    with pytest.raises(DecodeError):
        decode_document(with_body(body))
    body[3] = {"0": [1, 10, 11, 13]}  # deleter 10 unseen: the least one
    with pytest.raises(DecodeError):
        decode_document(with_body(body))


def test_one_replicas_runs_may_not_name_an_origin_in_a_replica_holding_no_run() -> None:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "ab"}], replica="a")
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "c"}], replica="a")
    body = loaded_body(doc)
    good = decode_document(with_body(body))
    assert good.value() == {"t": "cab"}
    seq = text_body(body)
    runs = list(seq[1])
    assert len(runs) == 10 and runs[8] is None  # "ab" typed first sits after "c", origin the start
    body[2] = [*body[2], "z"]
    runs[8] = [len(body[2]) - 1, runs[1]]  # an origin in replica z, at the counter of "c", placed before
    seq[1] = runs
    body[4] = [[body[4][0][0], [[body[4][0][1][0][0], seq]]]]
    with pytest.raises(DecodeError):
        decode_document(with_body(body))


def test_one_replicas_runs_may_not_share_ids() -> None:
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "ab"}], replica="a")
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "c"}], replica="a")
    body = loaded_body(doc)
    seq = text_body(body)
    runs = list(seq[1])
    runs[1] -= 2  # the second run's counter steps back onto the first run's ids
    seq[1] = runs
    body[4] = [[body[4][0][0], [[body[4][0][1][0][0], seq]]]]
    with pytest.raises(DecodeError):
        decode_document(with_body(body))
