"""The per-link state objects of PeerProtocol on their own: Inbound, Outbound, Requests."""

from __future__ import annotations

from typing import Any

import pytest

from sync import events as ev
from sync import messages as m
from sync._inbound import Inbound
from sync._outbound import Outbound
from sync._requests import Requests
from sync.config import SyncConfig
from sync.exceptions import InvalidState, LimitExceeded, UnexpectedMessage
from sync.types import LogEntry


def e(seq: int, origin: str = "o") -> LogEntry:
    return LogEntry(origin, seq, "doc", b"d%d" % seq)


# Inbound: in-order delivery, the buffer, the acks we owe.


def test_inbound_delivers_in_order_and_buffers_what_comes_early() -> None:
    inbound = Inbound({}, max_buffered=4, max_write_waits=4)
    assert inbound.receive(e(2)) == []
    assert inbound.receive(e(3)) == []
    assert inbound.receive(e(1)) == [e(1), e(2), e(3)]
    assert inbound.receive(e(2)) is None  # held: a duplicate
    assert inbound.held("o") == 3 and inbound.buffered == 0 and inbound.buffer == {}


def test_inbound_buffer_overflow_raises_and_keeps_what_it_had() -> None:
    inbound = Inbound({}, max_buffered=1, max_write_waits=4)
    assert inbound.receive(e(3)) == []
    with pytest.raises(LimitExceeded):
        inbound.receive(e(5))
    assert inbound.buffer == {"o": {3: e(3)}} and inbound.buffered == 1
    assert inbound.receive(e(3)) == []  # the same early entry again costs nothing more


def test_inbound_owes_an_ack_once_everything_handed_over_is_durable() -> None:
    inbound = Inbound({"o": 1}, max_buffered=4, max_write_waits=4)
    first, second = inbound.receive(e(2)), inbound.receive(e(3))
    assert first == [e(2)] and second == [e(3)]
    inbound.await_durable([*first, *second])
    assert inbound.committed("o", 2) and not inbound.settle("o")  # 3 is not durable yet
    assert not inbound.committed("o", 2)  # not the next seq: nothing changes
    assert inbound.committed("o", 3) and inbound.settle("o")
    assert inbound.vector == {"o": 3}


def test_inbound_write_waits_are_answered_once_held_and_bounded() -> None:
    inbound = Inbound({"o": 2}, max_buffered=4, max_write_waits=1)
    assert inbound.wait_for_write(1, "doc", "o", 2)  # held already: answer at once
    assert not inbound.wait_for_write(2, "doc", "o", 4)
    with pytest.raises(LimitExceeded):
        inbound.wait_for_write(3, "doc", "o", 5)
    assert inbound.write_waits == {2: ("doc", "o", 4)}
    inbound.raise_to("o", 3)
    assert inbound.writes_reached("o") == []
    inbound.raise_to("o", 4)
    assert inbound.writes_reached("o") == [(2, "doc", "o", 4)] and inbound.write_waits == {}


def test_inbound_gaps_are_skipped_only_above_what_we_hold() -> None:
    inbound = Inbound({"o": 5}, max_buffered=4, max_write_waits=4)
    assert not inbound.note_gap("o", 4)  # we hold it: no repair needed
    assert inbound.note_gap("p", 7) and inbound.gaps == {"p": 7}
    assert inbound.skip_gaps({"p": 7, "o": 3}) == [("p", 7)]
    assert inbound.vector == {"o": 5, "p": 7} and inbound.gaps == {}


# Outbound: the window, order, acks, truncated logs.


def test_outbound_pushes_in_order_within_the_window() -> None:
    out = Outbound(window=2, now=0.0)
    assert out.can_push("o", 1) and not out.can_push("o", 2)  # a gap: pull it from the log instead
    out.push(e(1))
    out.push(e(2))
    assert out.in_flight() == 2 and not out.can_push("o", 3)  # the window is full
    assert out.receive_ack([("o", 1)], now=1.0) and out.last_progress == 1.0
    assert out.can_push("o", 3)
    assert out.take_batches(1) == [(e(1),), (e(2),)] and out.outbox == []


def test_outbound_rewinds_to_what_the_peer_acknowledged() -> None:
    out = Outbound(window=8, now=0.0)
    for seq in (1, 2, 3):
        out.push(e(seq))
    out.receive_ack([("o", 1)], now=0.5)
    out.rewind(now=5.0)
    assert out.sent == {"o": 1} and out.outbox == [] and out.last_progress == 5.0
    assert out.can_push("o", 2)


def test_outbound_asks_the_log_once_per_origin_and_blocks_on_a_truncated_log() -> None:
    out = Outbound(window=8, now=0.0)
    assert out.log_request("o", held=5, log_fetch=3) == 3
    assert out.log_request("o", held=5, log_fetch=3) is None  # one request at a time
    out.log_pending.discard("o")
    # The log starts at 4: the peer lacks 1..3 and the log cannot give them.
    assert out.truncated_at("o", 0, [e(4), e(5)], held=5) == 4
    assert out.truncated_at("o", 0, [e(1), e(2)], held=5) is None
    assert out.block("o", 4) and not out.block("o", 4)  # said once
    assert out.log_request("o", held=5, log_fetch=3) is None and not out.can_push("o", 1)
    out.receive_ack([("o", 3)], now=1.0)  # anti-entropy brought the peer to 3
    assert out.blocked == {} and out.can_push("o", 4)


# Requests: the peer's requests and our session's queries.


class _Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.sent: list[Any] = []
        self.open = True
        self.finished: list[dict[str, int]] = []

    def requests(self, config: SyncConfig) -> Requests:
        return Requests(
            config,
            now=0.0,
            emit=self.events.append,
            send=lambda msg, count=False: self.sent.append(msg),
            is_open=lambda: self.open,
            on_finish=self.finished.append,
        )


def test_requests_answer_the_peer_under_its_own_request_id() -> None:
    sink = _Sink()
    req = sink.requests(SyncConfig())
    req.receive_request(m.MerkleRootRequest(41))
    (need,) = sink.events
    assert isinstance(need, ev.NeedMerkleRoot)
    req.answer_merkle_root(need.request_id, b"\0" * 16)
    shape = SyncConfig().shape
    assert sink.sent == [m.MerkleRootResponse(41, shape.fanout, shape.depth, b"\0" * 16)]
    with pytest.raises(InvalidState):
        req.answer_merkle_root(need.request_id, b"\0" * 16)  # answered already: the adapter's bug


def test_requests_bound_what_the_peer_leaves_unanswered() -> None:
    sink = _Sink()
    req = sink.requests(SyncConfig(max_pending_requests=1))
    req.receive_request(m.ReadRequest(1, "doc"))
    with pytest.raises(LimitExceeded):
        req.receive_request(m.ReadRequest(2, "doc"))
    assert len(sink.events) == 1
    with pytest.raises(UnexpectedMessage):
        sink.requests(SyncConfig()).receive_request(m.BucketItemsRequest(3, (1 << 30,)))  # no such bucket


def test_requests_drop_an_answer_for_an_abandoned_session() -> None:
    sink = _Sink()
    config = SyncConfig(anti_entropy_timeout=10.0)
    req = sink.requests(config)
    req.start(periodic=False, gaps={})
    (root_query,) = [x for x in sink.events if isinstance(x, ev.NeedMerkleRoot)]
    assert req.session is not None
    req.expire(11.0)
    assert req.session is None
    req.answer_merkle_root(root_query.request_id, b"\0" * 16)  # late: ignored, no error
    assert req.session is None and sink.finished == []
