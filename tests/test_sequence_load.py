"""Loading a text or list: its runs are checked at once and built into items only when first needed.

A read of a loaded document needs only the contents in order, so the items,
blocks and id index wait for the first edit, join or encode (as the deletion
log does). Whatever runs first after a load must see the same sequence as on
the document that was encoded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.crdt.sequence import Segment, Sequence, _shared_count, _shared_count_sorted, _shared_deleters
from crdtstore.crdt.tags import Tag
from crdtstore.document import Document
from crdtstore.errors import DecodeError


def _text(doc: Document, key: str = "t") -> Sequence:
    seq = doc.root.get(key, Tag.TEXT)
    assert isinstance(seq, Sequence)
    return seq


def _edited() -> Document:
    """A text with runs by two replicas, a split run, tombstones and a list beside it."""
    doc = Document()
    doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hello world"}], replica="a")
    doc.apply([{"op": "insert", "path": ["t"], "index": 5, "text": ","}], replica="b")
    doc.apply([{"op": "delete", "path": ["t"], "index": 1, "count": 2}], replica="a")
    doc.apply([{"op": "insert", "path": ["l"], "index": 0, "values": [1, 2, 3]}], replica="b")
    doc.apply([{"op": "delete", "path": ["l"], "index": 1, "count": 1}], replica="a")
    return doc


def test_a_read_of_a_loaded_document_builds_no_items() -> None:
    doc = _edited()
    loaded = decode_document(encode_document(doc))
    seq = _text(loaded)
    assert seq._runs is not None
    assert loaded.value() == doc.value() == {"t": "hlo, world", "l": [1, 3]}
    assert len(seq) == len("hlo, world")
    assert seq._runs is not None  # reading did not build them
    assert encode_document(loaded) == encode_document(doc)
    assert seq._runs is None  # encoding did


EDITS: list[Callable[[Document], Any]] = [
    lambda d: d.apply([{"op": "insert", "path": ["t"], "index": 3, "text": "XY"}], replica="c"),
    lambda d: d.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "<"}], replica="a"),
    lambda d: d.apply([{"op": "insert", "path": ["t"], "index": 10, "text": "!"}], replica="b"),
    lambda d: d.apply([{"op": "delete", "path": ["t"], "index": 2, "count": 4}], replica="c"),
    lambda d: d.apply([{"op": "insert", "path": ["l"], "index": 2, "values": [9]}], replica="c"),
    lambda d: d.apply([{"op": "delete", "path": ["t"]}], replica="c"),
    lambda d: d.join(
        decode_delta(
            encode_delta(_edited().apply([{"op": "delete", "path": ["t"], "index": 0, "count": 1}], replica="z"))
        )
    ),
    lambda d: d.merge(_edited()),
    lambda d: d.copy(),
    lambda d: _text(d).index_of(("a", 9)),
    lambda d: _text(d).ids_at(d.ctx, 0, 3),
]


@pytest.mark.parametrize("edit", EDITS)
def test_the_first_use_after_a_load_sees_the_encoded_sequence(edit: Callable[[Document], Any]) -> None:
    doc = _edited()
    loaded = decode_document(encode_document(doc))
    assert _text(loaded)._runs is not None
    expected = edit(doc)
    got = edit(loaded)
    if isinstance(expected, Document):
        expected, got = encode_document(expected), encode_document(got)
    elif expected is not None and hasattr(expected, "root"):  # a delta
        expected, got = encode_delta(expected), encode_delta(got)
    assert got == expected
    assert loaded.value() == doc.value()
    assert encode_document(loaded) == encode_document(doc)


def _with_runs(runs: list[tuple[int, int | None, str]]) -> bytes:
    """A document whose text ``t`` holds ``runs`` of replica ``a`` in this order: (counter, origin counter, text)."""
    flat: list[Any] = []
    prev_end = 0
    for counter, origin, content in runs:
        # lamport = counter, so the relative timestamp is 0 throughout
        flat += [0, counter - prev_end, 0, None if origin is None else counter - origin, content]
        prev_end = counter + len(content)
    body = [[], flat, [], [], []]
    end = max(c + len(t) for c, _, t in runs)
    return orjson.dumps(["D", 1, ["a"], {"0": [1, end]}, [["t", [[int(Tag.TEXT), body]]]]])


def test_origins_at_a_run_end_or_inside_a_run_load_when_placed_before() -> None:
    # "ab" (1, 2) first; "c" (3) after the end of "ab"; "d" (4) after "a", inside the run "ab"
    doc = decode_document(_with_runs([(1, None, "ab"), (3, 2, "c"), (4, 1, "d")]))
    assert doc.value() == {"t": "abcd"}


@pytest.mark.parametrize(
    "runs",
    [
        [(3, 2, "c"), (1, None, "ab")],  # origin: the end of a run that comes after
        [(3, 1, "c"), (1, None, "ab")],  # origin: inside a run that comes after
        [(1, None, "ab"), (3, 5, "c")],  # origin: no run holds it
        [(1, None, "ab"), (4, 3, "c")],  # origin: the element itself
        [(1, None, "ab"), (3, 3, "c")],  # origin: no such element yet (a gap after "ab")
    ],
)
def test_an_origin_not_placed_before_its_element_is_refused(runs: list[tuple[int, int | None, str]]) -> None:
    with pytest.raises(DecodeError):
        decode_document(_with_runs(runs))


@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 6), st.booleans()), min_size=1, max_size=30))
def test_shared_deleters_counted_from_sorted_columns_match_the_general_count(
    raw: list[tuple[int, int, bool]],
) -> None:
    # One replica's segments sorted by first deleter, as a canonical log holds them: ranges (one
    # deleter) and chains (consecutive deleters); the load counts what they share from the columns.
    segs: list[Segment] = sorted(("a", d0, 1 if chain else 0, "t", 100, 1, n + 1) for d0, n, chain in raw)
    d0s = [s[1] for s in segs]
    lasts = [s[1] + s[2] * (s[6] - 1) for s in segs]
    assert _shared_count_sorted(d0s, lasts) == _shared_count(_shared_deleters(segs))


def test_a_log_claiming_many_shared_deleters_is_refused_without_building_it() -> None:
    # Chains of one replica, sorted, each overlapping the last on 600 deleters: 600 * 3 shared
    # deleters among 4 segments is far past what legal writes make (a few per segment).
    flat: list[int] = []
    prev = 0
    for k in range(4):
        d0 = 1 + k * 400
        flat += [0, d0 - prev, 0, 1 if k == 0 else 0, 1000, 2]  # code 2: a forward chain of 1000
        prev = d0
    body = orjson.loads(_with_runs([(1, None, "ab")]))
    body[3] = {"0": [1, 5000]}
    body[4][0][1][0][1][2] = flat
    with pytest.raises(DecodeError, match="share too many deleters"):
        decode_document(orjson.dumps(body))
