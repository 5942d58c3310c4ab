"""Acks after commits: the first goes at once, the rest of a tick share one (``SyncConfig.ack_delay``)."""

from __future__ import annotations

import pytest

from sync import events as ev
from sync.config import SyncConfig
from sync.memstore import MemStore
from sync.store import run_sync
from tests.sync.helpers import Pair

INC = [{"op": "increment", "path": ["n"]}]
SHAPE = MemStore("x", region="r", nonce="n").shape


def _acks_from_b(pair: Pair) -> list[dict[str, int]]:
    """The vectors b acknowledged to a, in order (each ack that moved a's view is one ``PeerAcked``)."""
    return [dict(e.vector) for e in pair.events["a"] if isinstance(e, ev.PeerAcked)]


def _three_commits_in_one_tick(config: SyncConfig) -> tuple[Pair, str]:
    pair = Pair(config=config)
    pair.sync_until_quiet()
    pair.tick(1.0)
    pair.sync_until_quiet()
    pair.events["a"].clear()
    origin = ""
    for _ in range(3):  # three deltas, each committed by b on its own, all before b's next tick
        origin = pair.write("a", "doc", INC).origin
        pair.sync_until_quiet()
    return pair, origin


def test_commits_within_a_tick_share_one_ack_after_the_first() -> None:
    pair, origin = _three_commits_in_one_tick(SyncConfig(shape=SHAPE, anti_entropy_interval=None))
    assert [v[origin] for v in _acks_from_b(pair)] == [1]  # the first at once; 2 and 3 wait
    pair.tick(1.05)
    pair.sync_until_quiet()
    assert [v[origin] for v in _acks_from_b(pair)] == [1, 3]  # one ack covers both
    assert run_sync(pair.b.version_vector())[origin] == 3
    # A commit in a later tick is acknowledged at once again.
    pair.tick(1.2)
    pair.write("a", "doc", INC)
    pair.sync_until_quiet()
    assert [v[origin] for v in _acks_from_b(pair)] == [1, 3, 4]


def test_ack_delay_zero_acks_every_commit_at_once() -> None:
    pair, origin = _three_commits_in_one_tick(SyncConfig(shape=SHAPE, anti_entropy_interval=None, ack_delay=0.0))
    assert [v[origin] for v in _acks_from_b(pair)] == [1, 2, 3]


def test_abuse_a_peer_at_its_window_is_not_left_waiting_for_the_tick() -> None:
    # Window 4: after 2 entries the sender may be near it, so b acks at once; the 12 writes cross without a tick.
    config = SyncConfig(shape=SHAPE, anti_entropy_interval=None, window=4, batch_size=2, log_fetch=2)
    pair = Pair(config=config)
    pair.sync_until_quiet()
    for _ in range(12):
        pair.write("a", "doc", INC)
    pair.sync_until_quiet(max_rounds=60)
    assert run_sync(pair.b.version_vector()) == run_sync(pair.a.version_vector())


@pytest.mark.parametrize("delay", [-0.1, 2.0])
def test_an_ack_delay_outside_zero_to_the_ack_interval_is_refused(delay: float) -> None:
    with pytest.raises(ValueError, match="ack_delay"):
        SyncConfig(shape=SHAPE, ack_delay=delay, ack_interval=1.0)
