"""The replicator's peer numbers (crdtstore/peermetrics.py): lag per write, bounds, the log's age."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.peermetrics import ReplicationMeter


def test_an_ack_observes_one_lag_per_write_it_newly_covers() -> None:
    meter = ReplicationMeter()
    meter.peer_seen("eu-1", "eu")
    meter.committed(1, 3, now=10.0)
    meter.committed(4, 4, now=11.0)
    meter.acked("eu-1", 2, now=12.0)  # writes 1 and 2, committed at 10
    meter.acked("eu-1", 4, now=12.5)  # write 3 at 10, write 4 at 11
    meter.acked("eu-1", 3, now=13.0)  # an older link's late ack: nothing new
    lag = meter.lag["eu-1"]
    assert lag.count == 4
    assert lag.total == 2 * 2.0 + 2.5 + 1.5
    assert meter.unacked("eu-1") == 0


def test_an_unseen_or_untracked_peer_gets_no_series() -> None:
    meter = ReplicationMeter(max_peers=1)
    assert meter.peer_seen("a", "us")
    assert not meter.peer_seen("b", "eu")
    meter.committed(1, 1, now=0.0)
    meter.acked("b", 1, now=1.0)
    meter.acked("nobody", 1, now=1.0)
    assert set(meter.lag) == {"a"} and meter.untracked == {"b"}
    assert meter.lag["a"].count == 0 and meter.unacked("a") == 1


@given(st.lists(st.integers(1, 5), min_size=1, max_size=60), st.integers(1, 8))
def test_held_runs_stay_bounded_and_every_write_is_still_observed_once(runs: list[int], cap: int) -> None:
    meter = ReplicationMeter(max_runs=cap)
    meter.peer_seen("down", "eu")
    seq = 0
    for i, size in enumerate(runs):
        meter.committed(seq + 1, seq + size, now=float(i))
        seq += size
        assert meter.runs_held() <= cap
    meter.acked("down", seq, now=1000.0)
    lag = meter.lag["down"]
    assert lag.count == seq  # merged runs keep their writes
    # Merging keeps the older time: a lag reads high, never low.
    exact = sum(size * (1000.0 - i) for i, size in enumerate(runs))
    assert lag.total >= exact - 1e-6
    assert meter.runs_held() == 0  # every seen peer acknowledged them


def test_runs_wait_for_the_slowest_seen_peer() -> None:
    meter = ReplicationMeter()
    meter.peer_seen("fast", "eu")
    meter.peer_seen("slow", "ap")
    meter.committed(1, 1, now=0.0)
    meter.committed(2, 2, now=1.0)
    meter.acked("fast", 2, now=2.0)
    assert meter.runs_held() == 2
    meter.acked("slow", 1, now=3.0)
    assert meter.runs_held() == 1
    assert meter.lag["slow"].total == 3.0 and meter.unacked("slow") == 1


def test_the_oldest_entry_age_is_a_lower_bound_and_zero_once_truncated() -> None:
    meter = ReplicationMeter()
    assert meter.log_age(5.0, {}) is None  # no checkpoint yet
    meter.checkpoint(10.0, {"a": 3}, {})
    meter.checkpoint(11.0, {"a": 5, "b": 1}, {})
    assert meter.log_age(20.0, {}) == 10.0
    assert meter.log_age(20.0, {"a": 3}) == 9.0  # a:4 was logged after 10, by 11
    assert meter.log_age(20.0, {"a": 5, "b": 1}) == 0.0
    meter.checkpoint(12.0, {"a": 5, "b": 1}, {"a": 5, "b": 1})  # same vector, all truncated: nothing held
    assert meter.log_age(30.0, {"a": 5, "b": 1}) == 0.0


@given(st.lists(st.integers(0, 3), min_size=1, max_size=80), st.integers(2, 6))
def test_thinned_checkpoints_keep_the_age_a_lower_bound(steps: list[int], cap: int) -> None:
    meter = ReplicationMeter(max_checkpoints=cap)
    exact = ReplicationMeter(max_checkpoints=10_000)
    seq = 0
    for t, step in enumerate(steps):
        seq += step
        for m in (meter, exact):
            m.checkpoint(float(t), {"a": seq}, {})
        assert len(meter._checkpoints) <= cap
    now = float(len(steps))
    for truncated in range(seq + 1):
        got, want = meter.log_age(now, {"a": truncated}), exact.log_age(now, {"a": truncated})
        assert got is not None and want is not None and got <= want
