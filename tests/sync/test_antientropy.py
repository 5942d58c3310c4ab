"""Merkle anti-entropy sessions between in-memory stores."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync.antientropy import run_local
from sync.memstore import MemStore

INC = [{"op": "increment", "path": ["n"]}]


def stores() -> tuple[MemStore, MemStore]:
    return MemStore("a", region="eu", nonce="1"), MemStore("b", region="us", nonce="2")


def test_equal_trees_cost_one_round_trip() -> None:
    a, b = stores()
    stats = run_local(a, b, a.shape)
    assert stats.round_trips == 1 and stats.docs_pulled == stats.docs_pushed == 0


@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 40)), max_size=30),
)
def test_session_makes_both_sides_equal(writes: list[tuple[str, int]]) -> None:
    a, b = stores()
    for side, n in writes:
        (a if side == "a" else b).apply(f"doc{n}", INC)
    stats = run_local(a, b, a.shape, chunk=7, states_chunk=3)
    assert a.encoded() == b.encoded() and a.merkle_root() == b.merkle_root()
    assert stats.round_trips <= 1 + a.shape.depth + 2
    # Only differing documents travel.
    assert stats.docs_pulled == len({n for s, n in writes if s == "b"})


def test_only_differing_documents_are_shipped() -> None:
    a, b = stores()
    for i in range(50):
        entry = a.apply(f"doc{i}", INC)
        b.apply_remote(*entry)
    a.apply("doc7", INC)
    stats = run_local(b, a, a.shape)
    # Digests say "different", not "older": the differing document goes both ways (a join is harmless).
    assert stats.docs_pulled == 1 and stats.docs_pushed == 1
    assert a.encoded() == b.encoded()


def test_new_empty_replica() -> None:
    a, b = stores()
    for i in range(30):
        a.apply(f"doc{i}", INC)
    stats = run_local(b, a, a.shape)
    assert a.encoded() == b.encoded() and stats.docs_pulled == 30
