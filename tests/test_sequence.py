"""The sequence CRDT: reading an older version, the deletion log, and the position index at scale."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.causal import CausalContext, Dot
from crdtstore.codec import decode_document, encode_document
from crdtstore.crdt.sequence import BLOCK_MAX, Sequence, _normalize
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
        assert seq.length_at(ctx.__contains__) == len(ids)
        assert seq.ids_at(ctx.__contains__, 0, len(ids)) == (ids if ids else None)


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


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3)), max_size=12))
def test_normalized_deletions_depend_only_on_the_pairs(raw: list[tuple[int, int, int]]) -> None:
    segments = [("d", d, 0, "t", t, 1, n) for d, t, n in raw]
    pairs = {(d, t + k) for d, t, n in raw for k in range(n)}
    normal = _normalize(segments)
    assert _normalize(list(reversed(segments))) == normal
    assert _normalize(normal) == normal
    expanded = {(d0 + k * ds, t0 + k * ts) for _, d0, ds, _, t0, ts, n in normal for k in range(n)}
    assert expanded == pairs


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
