"""The reconnect policy: pure, seeded, capped, growing."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.backoff import backoff


def test_without_jitter_it_doubles_up_to_the_cap() -> None:
    delays = list(backoff(initial=0.1, factor=2, cap=1.0, jitter=0, random=lambda: 0.5, limit=7))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_same_seed_same_delays() -> None:
    a = list(backoff(random=random.Random(7).random, limit=20))
    b = list(backoff(random=random.Random(7).random, limit=20))
    c = list(backoff(random=random.Random(8).random, limit=20))
    assert a == b
    assert a != c


@given(
    initial=st.floats(0.001, 1),
    factor=st.floats(1, 4),
    extra=st.floats(0, 10),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_within_its_step_and_the_cap(
    initial: float, factor: float, extra: float, jitter: float, seed: int
) -> None:
    cap = initial + extra
    rng = random.Random(seed)
    step = initial
    for delay in backoff(initial=initial, factor=factor, cap=cap, jitter=jitter, random=rng.random, limit=40):
        assert step * (1 - jitter) - 1e-12 <= delay <= step + 1e-12
        assert 0 <= delay <= cap + 1e-12
        step = min(step * factor, cap)


def test_unbounded_generator_keeps_going_and_a_bad_source_is_clamped() -> None:
    delays = list(itertools.islice(backoff(cap=2.0, random=lambda: 7.0), 100))
    assert len(delays) == 100
    assert all(0 <= d <= 2.0 for d in delays)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"factor": 0.5}, {"initial": 3, "cap": 2}, {"jitter": 1.5}, {"limit": -1}],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        next(backoff(random=lambda: 0.0, **kwargs))
