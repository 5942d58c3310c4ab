"""Merkle anti-entropy sessions between in-memory stores."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync.antientropy import run_local
from sync.memstore import MemStore
from sync.store import run_sync

INC = [{"op": "increment", "path": ["n"]}]


def stores() -> tuple[MemStore, MemStore]:
    return MemStore("a", region="eu", nonce="1"), MemStore("b", region="us", nonce="2")


def test_equal_trees_cost_one_round_trip() -> None:
    a, b = stores()
    stats = run_sync(run_local(a, b, a.shape))
    assert stats.round_trips == 1 and stats.docs_pulled == stats.docs_pushed == 0


@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 40)), max_size=30),
)
def test_session_makes_both_sides_equal(writes: list[tuple[str, int]]) -> None:
    a, b = stores()
    for side, n in writes:
        (a if side == "a" else b).apply(f"doc{n}", INC)
    stats = run_sync(run_local(a, b, a.shape, chunk=7, states_chunk=3))
    assert a.encoded() == b.encoded() and run_sync(a.merkle_root()) == run_sync(b.merkle_root())
    assert stats.round_trips <= 1 + a.shape.depth + 2
    # Only differing documents travel.
    assert stats.docs_pulled == len({n for s, n in writes if s == "b"})


def test_only_differing_documents_are_shipped() -> None:
    a, b = stores()
    for i in range(50):
        entry = a.apply(f"doc{i}", INC)
        b.apply_remote(*entry)
    a.apply("doc7", INC)
    stats = run_sync(run_local(b, a, a.shape))
    # Digests say "different", not "older": the differing document goes both ways (a join is harmless).
    assert stats.docs_pulled == 1 and stats.docs_pushed == 1
    assert a.encoded() == b.encoded()


def test_new_empty_replica() -> None:
    a, b = stores()
    for i in range(30):
        a.apply(f"doc{i}", INC)
    stats = run_sync(run_local(b, a, a.shape))
    assert a.encoded() == b.encoded() and stats.docs_pulled == 30


def test_deferred_documents_stay_as_they_are_and_the_rest_is_repaired() -> None:
    a, b = stores()
    for doc in ("x", "y", "z"):
        a.apply(doc, INC)
        b.apply(doc, [{"op": "add", "path": ["s"], "value": doc}])
    y_a, y_b = a.encoded()["y"], b.encoded()["y"]
    stats = run_sync(run_local(a, b, a.shape, defer=lambda doc_id: doc_id == "y"))
    assert stats.docs_deferred == 1 and stats.docs_pulled == stats.docs_pushed == 2
    # Neither side shipped y: each keeps its own state, and the trees still differ there only.
    assert a.encoded()["y"] == y_a and b.encoded()["y"] == y_b
    assert {d: s for d, s in a.encoded().items() if d != "y"} == {d: s for d, s in b.encoded().items() if d != "y"}
    assert run_sync(a.merkle_root()) != run_sync(b.merkle_root())
    # The next session that does not defer it repairs y too.
    assert run_sync(run_local(a, b, a.shape)).docs_pulled == 1
    assert a.encoded() == b.encoded() and run_sync(a.merkle_root()) == run_sync(b.merkle_root())


def test_a_predicate_is_asked_only_about_differing_documents() -> None:
    a, b = stores()
    for i in range(20):
        b.apply_remote(*a.apply(f"doc{i}", INC))
    a.apply("doc3", INC)
    asked: list[str] = []
    stats = run_sync(run_local(a, b, a.shape, defer=lambda doc_id: asked.append(doc_id) or False))
    assert asked == ["doc3"] and stats.docs_deferred == 0 and a.encoded() == b.encoded()
