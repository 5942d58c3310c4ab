"""Causal contexts: ranges behave as the sets of dots they stand for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.causal import CausalContext

dots = st.tuples(st.sampled_from("abc"), st.integers(1, 40))
dot_sets = st.sets(dots, max_size=30)


def context(ds: set[tuple[str, int]]) -> CausalContext:
    ctx = CausalContext()
    ctx.add_all(ds)
    return ctx


@given(dot_sets, dots)
def test_contains_matches_the_set(ds: set[tuple[str, int]], probe: tuple[str, int]) -> None:
    assert (probe in context(ds)) == (probe in ds)
    assert context(ds).count() == len(ds)


@given(dot_sets, dot_sets)
def test_join_is_union(a: set[tuple[str, int]], b: set[tuple[str, int]]) -> None:
    ctx = context(a)
    ctx.join(context(b))
    assert ctx == context(a | b)
    assert ctx.contains_context(context(a)) and ctx.contains_context(context(b))
    assert context(a).contains_context(context(b)) == (b <= a)


@given(dot_sets, st.sampled_from("abc"), st.integers(1, 40), st.integers(0, 10))
def test_remove_range_is_difference(ds: set[tuple[str, int]], r: str, lo: int, n: int) -> None:
    ctx = context(ds)
    ctx.remove_range(r, lo, lo + n)
    assert ctx == context({d for d in ds if not (d[0] == r and lo <= d[1] < lo + n)})


def test_compaction_turns_out_of_order_dots_into_a_vector() -> None:
    ctx = context({("a", 3), ("a", 2)})
    assert ctx.vector() == {}
    ctx.add(("a", 1))
    assert ctx.vector() == {"a": 3}
    assert ctx.ranges == {"a": [1, 4]}
    assert ctx.next_dot("a") == ("a", 4)


def canonical_ranges(ds: set[int]) -> list[int]:
    """The one flat range list of a set of counters: sorted, disjoint, adjacent ranges merged."""
    flat: list[int] = []
    for c in sorted(ds):
        if flat and flat[-1] == c:
            flat[-1] = c + 1
        else:
            flat += [c, c + 1]
    return flat


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 40), st.integers(0, 4)), max_size=40))
def test_adds_in_any_order_keep_the_ranges_canonical(steps: list[tuple[str, int, int]]) -> None:
    # Dots and runs added in any order (at the end, past it, inside, overlapping): the ranges are
    # always the canonical ones of the set they stand for (the fast path at the end included).
    ctx = CausalContext()
    model: dict[str, set[int]] = {}
    for replica, lo, n in steps:
        if n == 0:
            ctx.add((replica, lo))
            model.setdefault(replica, set()).add(lo)
        else:
            ctx.add_range(replica, lo, lo + n)
            model.setdefault(replica, set()).update(range(lo, lo + n))
        assert ctx.ranges == {r: canonical_ranges(cs) for r, cs in model.items()}
