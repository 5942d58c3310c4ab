"""PeerProtocol driven with bytes only: handshake, push, catch-up, relay, limits."""

from __future__ import annotations

import pytest

from sync import events as ev
from sync import messages as m
from sync._state import State
from sync.channel import auth_mac
from sync.config import SyncConfig
from sync.exceptions import CloseCode, InvalidMessage
from sync.memstore import MemStore
from sync.store import run_sync
from sync.truncation import min_acked, truncation_vector
from sync.types import LogEntry
from tests.sync.helpers import SECRET, Pair, handle, make_protocol, sealed

INC = [{"op": "increment", "path": ["n"]}]


def failed(events: list[ev.Event]) -> list[ev.Failed]:
    return [e for e in events if isinstance(e, ev.Failed)]


def effects(events: list[ev.Event]) -> list[ev.Event]:
    return [e for e in events if isinstance(e, ev.ApplyDeltas | ev.MergeStates)]


def test_handshake_then_push() -> None:
    pair = Pair()
    pair.sync_until_quiet()
    assert pair.pa.state is State.OPEN and pair.pb.state is State.OPEN
    assert pair.pa.peer is not None and pair.pa.peer.replica_id == "b"
    e1 = pair.write("a", "doc", INC)
    e2 = pair.write("b", "doc", [{"op": "set", "path": ["x"], "value": 1}])
    pair.sync_until_quiet()
    assert pair.a.encoded() == pair.b.encoded()
    assert run_sync(pair.a.merkle_root()) == run_sync(pair.b.merkle_root())
    # Each side acknowledged the other's write durably.
    assert pair.acks["a"]["b"][e1.origin] == 1 and pair.acks["b"]["a"][e2.origin] == 1


def test_bad_secret_fails_and_applies_nothing() -> None:
    pair = Pair(secret_b=b"wrong")
    pair.write("a", "doc", INC)
    pair.sync_until_quiet()
    for side in ("a", "b"):
        assert not effects(pair.events[side])
    codes = {f.close_code for f in failed(pair.events["a"] + pair.events["b"])}
    assert codes == {CloseCode.AUTH_FAILED}
    assert "doc" not in pair.b.docs


def test_messages_before_auth_fail() -> None:
    store = MemStore("b", region="us", nonce="n")
    proto = make_protocol(store)
    proto.messages_to_send()
    proto.receive_message(m.Deltas((LogEntry("a.1.x", 1, "d", b"{}"),)).encode())
    events = proto.events_received()
    assert failed(events)[0].close_code == CloseCode.AUTH_FAILED and not effects(events)
    assert proto.messages_to_send() == []
    # Once failed, later bytes are ignored and eof is idempotent.
    proto.receive_message(b"junk")
    proto.receive_eof()
    proto.receive_eof()
    assert proto.state is State.CLOSED and proto.events_received() == []


def test_auth_before_hello_fails() -> None:
    proto = make_protocol(MemStore("b", region="us", nonce="n"))
    proto.receive_message(m.Auth(bytes(32)).encode())
    assert failed(proto.events_received())[0].close_code == CloseCode.AUTH_FAILED


def test_reflected_mac_is_rejected() -> None:
    # An attacker without the secret replays b's own Auth back to b.
    a = MemStore("a", region="eu", nonce="n1")
    b = MemStore("b", region="us", nonce="n2")
    pb = make_protocol(b, nonce=2)
    hello_b = m.decode(pb.messages_to_send()[0])
    assert isinstance(hello_b, m.Hello)
    pb.receive_message(m.Hello("a", a.origin, "eu", 1, m.PROTOCOL_VERSION, (9).to_bytes(16, "big")).encode())
    own = m.decode(pb.messages_to_send()[0])
    assert isinstance(own, m.Auth)
    pb.receive_message(own.encode())
    assert failed(pb.events_received())[0].close_code == CloseCode.AUTH_FAILED
    # The MAC binds the direction: the same two Hellos in the other order give another MAC.
    hello_a = m.Hello("a", a.origin, "eu", 1, m.PROTOCOL_VERSION, b"n" * 16).encode()
    assert auth_mac(SECRET, hello_a, hello_b.encode()) != auth_mac(SECRET, hello_b.encode(), hello_a)


def test_malformed_message_after_auth_fails_with_no_effect() -> None:
    pair = Pair()
    pair.sync_until_quiet()
    pair.pb.receive_message(sealed(pair.pa, b"\x10\x05"))  # a truncated Deltas, sealed by a member
    events = pair.pb.events_received()
    assert failed(events)[0].close_code == CloseCode.PROTOCOL_ERROR and not effects(events)


def test_wrong_version_and_own_id() -> None:
    b = MemStore("b", region="us", nonce="n2")
    pb = make_protocol(b)
    pb.receive_message(m.Hello("a", "a.1.x", "eu", 1, 99, bytes(16)).encode())
    assert failed(pb.events_received())[0].close_code == CloseCode.UNSUPPORTED_PROTOCOL
    pb = make_protocol(b)
    pb.receive_message(m.Hello("b", "b.1.y", "us", 1, m.PROTOCOL_VERSION, bytes(16)).encode())
    assert failed(pb.events_received())[0].close_code == CloseCode.AUTH_FAILED


def test_forbidden_origin_fails_whole_batch() -> None:
    pair = Pair()
    pair.write("b", "doc", INC)
    pair.sync_until_quiet()
    good = run_sync(pair.a.log_range(pair.a.origin, 0, 1)) or []
    # A delta claiming b's own origin beyond what b minted is forged: the whole batch is refused.
    forged = LogEntry(pair.b.origin, 5, "doc", b"{}")
    other = LogEntry("c.1.z", 1, "doc2", pair.b.log[pair.b.origin][1].delta)
    pair.pb.receive_message(sealed(pair.pa, m.Deltas((other, forged, *good))))
    events = pair.pb.events_received()
    assert failed(events)[0].close_code == CloseCode.FORBIDDEN_ORIGIN and not effects(events)


def test_out_of_order_is_buffered_and_applied_in_order() -> None:
    pair = Pair()
    pair.sync_until_quiet()
    src = MemStore("c", region="ap", nonce="n3")
    entries = [src.apply("doc", INC) for _ in range(3)]
    pair.pb.receive_message(sealed(pair.pa, m.Deltas((entries[2], entries[1]))))
    assert not effects(pair.pb.events_received())
    pair.pb.receive_message(sealed(pair.pa, m.Deltas((entries[0],))))
    (apply,) = effects(pair.pb.events_received())
    assert isinstance(apply, ev.ApplyDeltas) and [e.seq for e in apply.entries] == [1, 2, 3]


def test_buffer_overflow_fails() -> None:
    pair = Pair(
        config=SyncConfig(max_buffered=2, anti_entropy_interval=None, shape=MemStore("x", region="r", nonce="n").shape)
    )
    pair.sync_until_quiet()
    far = [LogEntry("c.1.z", s, "doc", b"{}") for s in (5, 6, 7)]
    pair.pb.receive_message(sealed(pair.pa, m.Deltas(tuple(far))))
    assert failed(pair.pb.events_received())[0].close_code == CloseCode.LIMIT_EXCEEDED


def test_catch_up_after_reconnect() -> None:
    pair = Pair()
    pair.sync_until_quiet()
    pair.pa.receive_eof()
    pair.pb.receive_eof()
    # Writes while disconnected, on both sides.
    for _ in range(5):
        pair.a.apply("doc", INC)
        pair.b.apply("other", INC)
    pair.connect()
    pair.sync_until_quiet()
    assert pair.a.encoded() == pair.b.encoded()
    assert run_sync(pair.a.version_vector()) == run_sync(pair.b.version_vector())
    # Catch-up came from the logs (NeedLog), not from anti-entropy.
    assert any(isinstance(e, ev.NeedLog) for e in pair.events["a"])
    assert not any(isinstance(e, ev.MergeStates) for e in pair.events["a"] + pair.events["b"])


def test_window_limits_in_flight_and_resumes() -> None:
    shape = MemStore("x", region="r", nonce="n").shape
    pair = Pair(config=SyncConfig(window=3, batch_size=2, log_fetch=2, anti_entropy_interval=None, shape=shape))
    pair.sync_until_quiet()
    for _ in range(10):
        pair.write("a", "doc", INC)
    pair.sync_until_quiet(max_rounds=40)
    assert run_sync(pair.b.version_vector()) == run_sync(pair.a.version_vector())
    assert pair.a.encoded() == pair.b.encoded()


def test_truncated_log_repairs_by_anti_entropy_then_skips() -> None:
    pair = Pair()
    pair.pa.receive_eof()
    pair.pb.receive_eof()
    for i in range(6):
        pair.a.apply(f"doc{i % 3}", INC)
    run_sync(pair.a.truncate_log({pair.a.origin: 4}))  # b never acked these: a restored-from-backup b, say
    pair.connect()
    pair.sync_until_quiet(max_rounds=40)
    assert pair.a.encoded() == pair.b.encoded()
    assert run_sync(pair.b.version_vector())[pair.a.origin] == 6
    assert any(isinstance(e, ev.SkipLog) and e.upto == 4 for e in pair.events["b"])
    # Deltas resume from the log afterwards.
    pair.write("a", "doc0", INC)
    pair.sync_until_quiet()
    assert run_sync(pair.b.version_vector())[pair.a.origin] == 7 and pair.a.encoded() == pair.b.encoded()


def test_anti_entropy_repairs_both_ways_and_counts() -> None:
    pair = Pair()
    pair.sync_until_quiet()
    pair.a.apply("only-a", INC)  # committed but never announced: a lost local_update, say
    pair.b.apply("only-b", INC)
    pair.pa.start_anti_entropy()
    pair.sync_until_quiet()
    assert pair.a.encoded() == pair.b.encoded() and run_sync(pair.a.merkle_root()) == run_sync(pair.b.merkle_root())
    (done,) = [e for e in pair.events["a"] if isinstance(e, ev.AntiEntropyDone)]
    # root + one step per inner level + buckets + states
    assert done.round_trips == 1 + pair.a.shape.depth + 1 + 1
    assert done.docs_pulled == 1 and done.docs_pushed == 1 and done.bytes_sent > 0 and done.bytes_received > 0


def test_read_request_and_write_ack() -> None:
    pair = Pair()
    pair.write("b", "doc", INC)
    pair.sync_until_quiet()
    pair.pa.request_read(7, "doc")
    pair.pa.request_read(8, "missing")
    entry = pair.a.apply("doc", INC)  # not yet pushed to b
    pair.pa.request_write_ack(9, "doc", entry.origin, entry.seq)
    pair.pa.local_update(*entry)
    pair.sync_until_quiet()
    reads = {e.request_id: e for e in pair.events["a"] if isinstance(e, ev.ReadResponded)}
    assert reads[7].state is not None and reads[8].state is None and reads[7].peer_id == "b"
    acks = [e for e in pair.events["a"] if isinstance(e, ev.WriteAcked)]
    assert [(a.request_id, a.peer_id) for a in acks] == [(9, "b")]


def test_line_topology_relays() -> None:
    # A - B - C: C only hears A's writes through B.
    stores = {n: MemStore(n, region="r", nonce=f"n{n}") for n in "abc"}
    links = {("a", "b"): None, ("b", "c"): None}
    protos = {}
    for x, y in links:
        protos[(x, y)] = make_protocol(stores[x], nonce=ord(x) * 10 + ord(y))
        protos[(y, x)] = make_protocol(stores[y], nonce=ord(y) * 10 + ord(x))

    def of(name: str) -> list:
        return [p for (x, _), p in protos.items() if x == name]

    clock = [0.0]

    def run() -> None:
        # Ten ack intervals: relays go out when the next hop's ack shows what it lacks.
        for _ in range(10):
            clock[0] += 1.0
            for p in protos.values():
                p.receive_tick(clock[0])
            for _ in range(100):  # deliver until this interval is quiet
                moved = False
                for (x, y), p in list(protos.items()):
                    events = p.events_received()
                    for event in events:
                        handle(stores[x], p, event, [q for q in of(x) if q is not p])
                    msgs = p.messages_to_send()
                    for data in msgs:
                        protos[(y, x)].receive_message(data)
                    moved = moved or bool(events or msgs)
                if not moved:
                    break
            else:
                raise AssertionError("not quiet within an interval")

    run()
    for name in "ac":
        entry = stores[name].apply("doc", INC)
        for p in of(name):
            p.local_update(*entry)
    run()
    assert stores["a"].encoded() == stores["b"].encoded() == stores["c"].encoded()
    assert run_sync(stores["c"].version_vector()) == run_sync(stores["a"].version_vector())


def test_idle_and_handshake_timeouts() -> None:
    pair = Pair()
    pair.tick(100.0)
    assert failed(pair.pa.events_received())[0].close_code == CloseCode.TIMEOUT
    pair = Pair()
    pair.sync_until_quiet()
    pair.tick(1000.0)
    assert failed(pair.pa.events_received())[0].close_code == CloseCode.TIMEOUT


def test_min_acked_and_truncation_vector() -> None:
    assert min_acked([]) == {}
    assert min_acked([{"x": 3, "y": 2}, {"x": 5}]) == {"x": 3}
    acked = {"b": {"x": 5, "y": 2}, "c": {"x": 4, "y": 9}}
    assert truncation_vector({"x": 10, "y": 1}, acked, ["b", "c"]) == {"x": 4, "y": 1}
    assert truncation_vector({"x": 10}, acked, ["b", "c", "new"]) == {}


def test_push_states_is_merged_by_the_peer_and_dropped_when_not_open() -> None:
    pair = Pair()
    pair.sync_until_quiet()
    entry = pair.a.apply("doc", INC)  # not announced: b can only learn it from the pushed state
    state = pair.a.read_state(entry.doc_id)
    assert state is not None
    pair.pa.push_states([("doc", state)])
    pair.sync_until_quiet()
    merges = [e for e in pair.events["b"] if isinstance(e, ev.MergeStates)]
    assert merges == [ev.MergeStates((("doc", state),))]
    assert pair.b.encoded() == pair.a.encoded()
    pair.pa.receive_eof()
    pair.pa.push_states([("doc", state)])  # best effort: a closed link sends nothing
    assert pair.pa.messages_to_send() == []


def periodic_config(**kwargs: float) -> SyncConfig:
    shape = MemStore("x", region="r", nonce="n").shape
    return SyncConfig(shape=shape, anti_entropy_interval=10.0, anti_entropy_settle=5.0, **kwargs)  # type: ignore[arg-type]


def sessions(pair: Pair) -> list[ev.AntiEntropyDone]:
    return [e for e in pair.events["a"] if isinstance(e, ev.AntiEntropyDone)]


def test_periodic_anti_entropy_defers_documents_in_flight_but_not_forever() -> None:
    pair = Pair(config=periodic_config(anti_entropy_max_deferrals=2))
    pair.sync_until_quiet()
    # b holds changes of "hot" and "cold" that never reached a (lost local_updates, say).
    pair.b.apply("hot", [{"op": "add", "path": ["s"], "value": "b"}])
    pair.b.apply("cold", INC)
    for n, t in enumerate((10.0, 20.0, 30.0), start=1):
        # a writes "hot" a second before each session: its deltas are what one would see in flight.
        pair.tick(t - 1.0)
        pair.write("a", "hot", INC)
        pair.sync_until_quiet()
        pair.tick(t)  # a has the smaller id: it starts the session
        pair.sync_until_quiet()
        assert len(sessions(pair)) == n
        assert pair.a.encoded()["cold"] == pair.b.encoded()["cold"]  # repaired by the first session
    first, second, third = sessions(pair)
    assert (first.docs_deferred, first.docs_pulled, first.docs_pushed) == (1, 1, 0)
    assert (second.docs_deferred, second.docs_pulled) == (1, 0)
    # Deferred by two sessions in a row (the bound): the third repairs it, though it is still hot.
    assert (third.docs_deferred, third.docs_pulled, third.docs_pushed) == (0, 1, 1)
    assert pair.a.encoded() == pair.b.encoded() and run_sync(pair.a.merkle_root()) == run_sync(pair.b.merkle_root())


def test_a_document_no_delta_touched_lately_is_not_deferred() -> None:
    pair = Pair(config=periodic_config())
    pair.sync_until_quiet()
    pair.write("a", "doc", INC)  # at t=0
    pair.sync_until_quiet()
    pair.b.apply("doc", [{"op": "add", "path": ["s"], "value": "b"}])  # never announced
    pair.tick(10.0)  # the write is 10 s old, more than the settle time
    pair.sync_until_quiet()
    (done,) = sessions(pair)
    assert done.docs_deferred == 0 and pair.a.encoded() == pair.b.encoded()


def test_a_session_started_on_demand_defers_nothing() -> None:
    pair = Pair(config=periodic_config())
    pair.sync_until_quiet()
    pair.b.apply("hot", [{"op": "add", "path": ["s"], "value": "b"}])
    pair.tick(9.0)
    pair.write("a", "hot", INC)
    pair.pa.start_anti_entropy()
    pair.sync_until_quiet()
    (done,) = sessions(pair)
    assert done.docs_deferred == 0 and pair.a.encoded() == pair.b.encoded()


def test_only_a_pushing_connection_starts_periodic_sessions() -> None:
    # An adapter with two links to one peer switches one off (set_pushing): that one compares nothing.
    pair = Pair(config=periodic_config())
    pair.sync_until_quiet()
    pair.b.apply("cold", INC)
    pair.pa.set_pushing(False)
    pair.tick(10.0)
    pair.sync_until_quiet()
    assert not sessions(pair) and not any(isinstance(e, ev.NeedMerkleRoot) for e in pair.events["b"])
    assert "cold" not in pair.a.docs
    pair.pa.set_pushing(True)
    pair.tick(20.0)
    pair.sync_until_quiet()
    assert len(sessions(pair)) == 1 and pair.a.encoded() == pair.b.encoded()


def test_presence_is_relayed_once_open_and_dropped_before() -> None:
    pair = Pair()
    pair.pa.send_presence("doc", "a/1", b'{"caret":1}')  # not open yet: dropped, not queued
    pair.sync_until_quiet()
    pair.pa.send_presence("doc", "a/2", b'{"caret":2}')
    pair.pb.send_presence("doc", "b/1", b"")
    pair.sync_until_quiet()
    got_b = [e for e in pair.events["b"] if isinstance(e, ev.PresenceReceived)]
    got_a = [e for e in pair.events["a"] if isinstance(e, ev.PresenceReceived)]
    assert got_b == [ev.PresenceReceived("a", "doc", "a/2", b'{"caret":2}')]
    assert got_a == [ev.PresenceReceived("b", "doc", "b/1", b"")]


def test_oversized_presence_is_malformed() -> None:
    with pytest.raises(InvalidMessage):
        m.Presence("doc", "c", b"x" * (m.MAX_PRESENCE_BYTES + 1))
