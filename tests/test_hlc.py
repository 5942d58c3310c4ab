"""Tests of the hybrid logical clock (crdtstore.hlc)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.hlc import ClockDriftError, HybridClock, pack, unpack

walls = st.floats(min_value=0, max_value=4e9, allow_nan=False)
events = st.lists(st.tuples(st.booleans(), walls, st.integers(min_value=0, max_value=2**60)), max_size=50)


@given(events)
def test_strictly_increasing_and_above_everything_seen(steps: list[tuple[bool, float, int]]) -> None:
    clock = HybridClock()
    last = 0
    for local, wall, remote in steps:
        ts = clock.now(wall) if local else clock.observe(remote, wall)
        assert ts > last
        if not local:
            assert ts > remote
        # Never behind the wall clock.
        assert unpack(ts)[0] >= int(wall * 1000)
        last = ts


def test_follows_wall_clock_and_counts_within_a_millisecond() -> None:
    clock = HybridClock()
    assert clock.now(1.0) == pack(1000, 0)
    assert clock.now(1.0) == pack(1000, 1)
    assert clock.now(0.5) == pack(1000, 2)  # wall clock went back: logical counter carries on
    assert clock.now(2.0) == pack(2000, 0)


def test_counter_overflow_carries_into_millis() -> None:
    clock = HybridClock(pack(1000, 0xFFFF))
    assert unpack(clock.now(1.0)) == (1001, 0)


def test_restart_from_persisted_value_never_goes_back() -> None:
    first = HybridClock()
    issued = first.now(100.0)
    restarted = HybridClock(issued)
    assert restarted.now(50.0) > issued


def test_drift_guard() -> None:
    clock = HybridClock(max_drift_ms=1000)
    with pytest.raises(ClockDriftError):
        clock.observe(pack(10_000), 1.0)
    assert clock.observe(pack(1500), 1.0) == pack(1500, 1)


def test_bad_parts() -> None:
    with pytest.raises(ValueError):
        pack(1, 1 << 16)
    with pytest.raises(ValueError):
        unpack(-1)
    with pytest.raises(ValueError):
        HybridClock(-1)
