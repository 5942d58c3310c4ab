"""A thin client applying every patch in order holds exactly the document's value."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from crdtstore import patches as patches_module
from crdtstore.codec import decode_delta, encode_delta
from crdtstore.document import Delta, Document
from crdtstore.errors import OpError
from crdtstore.patches import apply_patches, before, patches
from crdtstore.testing.model import concretize
from crdtstore.testing.strategies import TYPE_KINDS, abstract_ops

REPLICAS = 3


def follow(doc: Document, thin: dict[str, Any], delta: Delta) -> list[dict[str, Any]]:
    """What the live channel does per feed record: picture, join, patches, and the thin client applies them."""
    old = before(doc.root, delta.root)
    doc.join(delta)
    changes = patches(old, doc.root, delta.root)
    apply_patches(thin, changes)
    return changes


@given(
    steps=st.lists(
        st.tuples(st.integers(0, REPLICAS - 1), st.lists(abstract_ops(), min_size=1, max_size=3)),
        min_size=1,
        max_size=25,
    ),
    data=st.data(),
)
def test_a_thin_client_applying_every_patch_holds_the_value(steps: list[Any], data: st.DataObject) -> None:
    replicas = [Document() for _ in range(REPLICAS)]
    observer, thin = Document(), {}
    pending: list[bytes] = []
    now = 0
    for i, batch in steps:
        now += 1
        ops = [concretize(op, replicas[i].value()) for op in batch]
        try:
            delta = replicas[i].apply(ops, replica=f"r{i}", now=now)
        except OpError:
            continue
        raw = encode_delta(delta)
        pending.append(raw)
        for j in range(REPLICAS):
            if j != i:
                replicas[j].join(decode_delta(raw))
        # The observer (a region's node) gets deltas in an order hypothesis picks, out of causal order too.
        while pending and data.draw(st.booleans(), label="deliver"):
            k = data.draw(st.integers(0, len(pending) - 1), label="which")
            changes = follow(observer, thin, decode_delta(pending.pop(k)))
            note(f"patches {changes}")
            assert thin == observer.value()
    for raw in pending:
        follow(observer, thin, decode_delta(raw))
        assert thin == observer.value()
    assert thin == replicas[0].value()


text_ops = abstract_ops(kinds=TYPE_KINDS["text"], paths=(("t",),))


@given(
    steps=st.lists(
        st.tuples(st.integers(0, REPLICAS - 1), st.lists(text_ops, min_size=1, max_size=3)), min_size=1, max_size=25
    ),
    data=st.data(),
)
def test_concurrent_typing_on_one_text(steps: list[Any], data: st.DataObject) -> None:
    """The same property with every op on one text: inserts, range deletes and removals meet often."""
    test_a_thin_client_applying_every_patch_holds_the_value.hypothesis.inner_test(steps, data)  # type: ignore[attr-defined]


def test_a_range_delete_and_a_run_of_inserts_are_one_patch_each() -> None:
    mirror, thin = Document(), {}
    follow(
        mirror, thin, mirror.copy().apply([{"op": "insert", "path": ["t"], "index": 0, "text": "abcdef"}], replica="a")
    )
    writer = mirror.copy()
    delta = writer.apply([{"op": "delete", "path": ["t"], "index": 1, "count": 3}], replica="b")
    assert follow(mirror, thin, delta) == [{"path": ["t"], "delete": {"index": 1, "count": 3}}]
    delta = writer.apply([{"op": "insert", "path": ["t"], "index": 1, "text": "XYZ"}], replica="b")
    assert follow(mirror, thin, delta) == [{"path": ["t"], "insert": {"index": 1, "text": "XYZ"}}]
    assert thin == {"t": "aXYZef"}


@given(steps=st.lists(st.lists(abstract_ops(), min_size=1, max_size=3), min_size=1, max_size=15))
def test_full_diff_between_two_states(steps: list[Any]) -> None:
    """No delta (a merged state): the picture of every field against the new state."""
    a, b = Document(), Document()
    for n, batch in enumerate(steps):
        target = a if n % 2 else b
        try:
            target.apply([concretize(op, target.value()) for op in batch], replica=f"r{n % 2}", now=n)
        except OpError:
            continue
    thin = a.value()
    old = before(a.root, None)
    a.merge(b)
    apply_patches(thin, patches(old, a.root, None))
    assert thin == a.value()


def test_concurrent_typing_gives_index_patches() -> None:
    server, alice, bob = Document(), Document(), Document()
    seed = server.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hello"}], replica="s")
    alice.join(seed)
    bob.join(seed)
    thin: dict[str, Any] = {}
    follow(Document(), thin, seed)
    mirror = Document()
    mirror.join(seed)
    a = alice.apply([{"op": "insert", "path": ["t"], "index": 5, "text": "!"}], replica="a")
    b = bob.apply([{"op": "delete", "path": ["t"], "index": 0, "count": 1}], replica="b")
    assert follow(mirror, thin, a) == [{"path": ["t"], "insert": {"index": 5, "text": "!"}}]
    assert follow(mirror, thin, b) == [{"path": ["t"], "delete": {"index": 0, "count": 1}}]
    assert thin == {"t": "ello!"}


@pytest.mark.parametrize(
    "patch",
    [
        {"path": ["t"], "insert": {"index": 9, "text": "x"}},
        {"path": ["t"], "delete": {"index": 1, "count": 9}},
        {"path": ["t"], "delete": {"index": -1, "count": 1}},
        {"path": ["n", "x"], "value": 1},
        {"path": [], "value": 1},
        {"path": ["t"], "bogus": 1},
    ],
)
def test_a_patch_that_does_not_fit_is_refused(patch: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        apply_patches({"t": "ab", "n": 1}, [patch])


def _early_and_late() -> tuple[Delta, Delta, Delta]:
    """Three deltas of one text: "ab" by r0, then "X" by r1 after the "b", then "Y" by r2 after the "X"."""
    a, b, c = Document(), Document(), Document()
    first = a.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "ab"}], replica="r0")
    b.join(decode_delta(encode_delta(first)))
    second = b.apply([{"op": "insert", "path": ["t"], "index": 2, "text": "X"}], replica="r1")
    c.join(decode_delta(encode_delta(first)))
    c.join(decode_delta(encode_delta(second)))
    third = c.apply([{"op": "insert", "path": ["t"], "index": 3, "text": "Y"}], replica="r2")
    return first, second, third


def test_a_delta_that_releases_waiting_inserts_is_patched_from_ids_without_a_walk() -> None:
    first, second, third = _early_and_late()
    observer, thin = Document(), {}
    follow(observer, thin, decode_delta(encode_delta(first)))
    # "Y" arrives before the "X" it follows (another region was faster): it waits, nothing shows.
    assert follow(observer, thin, decode_delta(encode_delta(third))) == []
    late = decode_delta(encode_delta(second))
    old = before(observer.root, late.root)
    assert old["t"].delta is not None and old["t"].waiting == [("r2", 1, 2)]  # the ids, not the runs of the text
    observer.join(late)
    changes = patches(old, observer.root, late.root)
    assert changes == [{"path": ["t"], "insert": {"index": 2, "text": "XY"}}]
    assert apply_patches(thin, changes) == observer.value() == {"t": "abXY"}


def test_past_the_bound_on_waiting_inserts_a_change_walks_the_sequence_and_is_still_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(patches_module, "_WAITING_MAX", 0)
    first, second, third = _early_and_late()
    observer, thin = Document(), {}
    follow(observer, thin, decode_delta(encode_delta(first)))
    follow(observer, thin, decode_delta(encode_delta(third)))
    late = decode_delta(encode_delta(second))
    old = before(observer.root, late.root)
    assert old["t"].delta is None and old["t"].runs is not None
    observer.join(late)
    assert apply_patches(thin, patches(old, observer.root, late.root)) == observer.value() == {"t": "abXY"}
