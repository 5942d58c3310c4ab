"""Reading an index against a recent version through the current view (``Sequence._recent``).

The shortcut must answer exactly as the walk over every item
(``Sequence._visible_at``) does, for every version it accepts; and it must be
taken for the versions editors send (a few commits old, no delete since),
since that is what keeps a write's cost off O(items).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.causal import CausalContext, Dot
from crdtstore.crdt.sequence import Sequence
from crdtstore.crdt.tags import Tag
from crdtstore.document import Document
from crdtstore.version import decode_version


def text_of(doc: Document) -> Sequence:
    seq = doc.root.get("t", Tag.TEXT)
    assert isinstance(seq, Sequence)
    return seq


def walk_ids(seq: Sequence, seen: CausalContext, start: int, count: int) -> list[Dot] | None:
    ids = [(r, c) for r, lo, hi in seq._visible_at(seen) for c in range(lo, hi)]
    if start + count > len(ids) or (count == 0 and start >= len(ids)):
        return None
    return ids[start : start + count]


steps_st = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["insert", "insert", "delete"]), st.floats(0, 1), st.integers(1, 3)),
    min_size=1,
    max_size=30,
)


@given(steps_st, st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=15), st.data())
def test_the_shortcut_answers_as_the_walk(steps: list[Any], merges: list[tuple[int, int]], data: st.DataObject) -> None:
    docs = [Document() for _ in range(3)]
    docs[0].apply([{"op": "insert", "path": ["t"], "index": 0, "text": "xyz"}], replica="seed")
    for d in docs[1:]:
        d.merge(docs[0])
    versions: list[CausalContext] = []
    for k, (i, kind, frac, n) in enumerate(steps):
        doc = docs[i]
        length = len(text_of(doc))
        if kind == "insert" or length == 0:
            doc.apply([{"op": "insert", "path": ["t"], "index": int(frac * length), "text": "ab"[:n]}], replica=f"r{i}")
        else:
            at = min(int(frac * length), length - 1)
            doc.apply([{"op": "delete", "path": ["t"], "index": at, "count": min(n, length - at)}], replica=f"r{i}")
        versions.append(doc.ctx.copy())
        if k < len(merges):
            a, b = merges[k]
            docs[b].merge(docs[a])
    final = docs[0]
    for d in docs[1:]:
        final.merge(d)
    seq = text_of(final)
    versions.append(final.ctx.copy())
    for seen in versions:
        walked = sum(hi - lo for _, lo, hi in seq._visible_at(seen))
        assert seq.length_at(seen) == walked
        start = data.draw(st.integers(0, walked + 1))
        count = data.draw(st.integers(0, walked + 2 - start))
        assert seq.ids_at(seen, start, count) == walk_ids(seq, seen, start, count)


def test_editors_versions_take_the_shortcut() -> None:
    # 50 typists on one node: each types at a spot it saw a few commits ago. Past the first
    # thousand items, the walk is what made a keystroke cost milliseconds.
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "start"}], replica="node")
    versions = [doc.version()]
    lengths = [5]
    for k in range(2000):
        back = max(0, len(versions) - 1 - k % 7)
        at = (k * 7919) % (lengths[back] + 1)
        doc.apply(
            [{"op": "insert", "path": ["t"], "index": at, "text": "ab", "version": versions[back]}], replica="node"
        )
        versions.append(doc.version())
        lengths.append(len(text_of(doc)))
    seq = text_of(doc)
    assert len(list(seq._items())) > 1000
    seen = decode_version(versions[-5])
    assert seq._recent(seen) is not None
    assert seq.length_at(seen) == len(seq) - 8
    assert seq.ids_at(seen, 10, 30) == walk_ids(seq, seen, 10, 30)


def test_a_delete_the_version_lacks_sends_the_read_through_the_walk() -> None:
    # The old view holds what was deleted since: the current view cannot give it back.
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hello"}], replica="a")
    seen = doc.ctx.copy()
    doc.apply([{"op": "delete", "path": ["t"], "index": 1, "count": 3}], replica="a")
    seq = text_of(doc)
    assert seq._recent(seen) is None
    assert seq.length_at(seen) == 5
    assert seq.ids_at(seen, 1, 3) == walk_ids(seq, seen, 1, 3) == [("a", 3), ("a", 4), ("a", 5)]
