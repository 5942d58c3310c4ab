"""The authenticated channel: relayed, reflected and spliced handshakes; injected, replayed, reordered frames.

Each abuse is checked on the sans-I/O protocol with bytes only: the link fails
with its close code and no effect (``ApplyDeltas``, ``MergeStates``, a read
answer) is emitted. ``tests/sync_io/test_peer_auth.py`` plays the same attacks
against real region nodes.
"""

from __future__ import annotations

import pytest

from sync import events as ev
from sync import messages as m
from sync._state import State
from sync.channel import TAG_SIZE, Channel, auth_mac, frame_key
from sync.exceptions import CloseCode, FrameAuthFailed
from sync.memstore import MemStore
from sync.protocol import PeerProtocol
from tests.sync.helpers import SECRET, Pair, make_protocol, sealed

INC = [{"op": "increment", "path": ["n"]}]
# What an attacker would love the node to do: answer a read, merge a state, apply a delta.
HARMFUL = (ev.ApplyDeltas, ev.MergeStates, ev.NeedStates, ev.NeedLog, ev.NeedMerkleRoot)


def failed(proto: PeerProtocol) -> tuple[list[ev.Failed], list[ev.Event]]:
    events = proto.events_received()
    return [e for e in events if isinstance(e, ev.Failed)], [e for e in events if isinstance(e, HARMFUL)]


def assert_failed_cleanly(proto: PeerProtocol, code: int) -> None:
    fails, harmful = failed(proto)
    assert [f.close_code for f in fails] == [code]
    assert harmful == []
    assert proto.state is State.FAILED and proto.messages_to_send() == []


def open_pair() -> Pair:
    pair = Pair()
    pair.sync_until_quiet()
    assert pair.pa.state is State.OPEN and pair.pb.state is State.OPEN
    return pair


# The key schedule.


def test_keys_and_macs_depend_on_every_part_of_the_transcript() -> None:
    hello_a = m.Hello("a", "a.1.x", "eu", 1, m.PROTOCOL_VERSION, b"A" * 16).encode()
    hello_b = m.Hello("b", "b.1.y", "us", 1, m.PROTOCOL_VERSION, b"B" * 16).encode()
    other_nonce = m.Hello("b", "b.1.y", "us", 1, m.PROTOCOL_VERSION, b"C" * 16).encode()
    other_epoch = m.Hello("b", "b.1.y", "us", 2, m.PROTOCOL_VERSION, b"B" * 16).encode()
    values = {
        auth_mac(SECRET, hello_a, hello_b),
        auth_mac(SECRET, hello_b, hello_a),  # the other direction
        auth_mac(SECRET, hello_a, other_nonce),
        auth_mac(SECRET, hello_a, other_epoch),
        auth_mac(b"another secret", hello_a, hello_b),
        frame_key(SECRET, hello_a, hello_b),  # the frame key is not the Auth
        frame_key(SECRET, hello_b, hello_a),
    }
    assert len(values) == 7
    # The two ends of one link agree: a's sending side is b's receiving side.
    ca, cb = Channel(SECRET, hello_a, hello_b), Channel(SECRET, hello_b, hello_a)
    assert ca.our_auth == cb.their_auth and cb.check_auth(ca.our_auth) and not cb.check_auth(cb.our_auth)
    for i in range(3):
        assert cb.open(ca.seal(b"x%d" % i)) == b"x%d" % i
    assert (ca.sent, cb.received) == (3, 3)


def test_a_channel_refuses_what_it_did_not_seal_in_order() -> None:
    hello_a = m.Hello("a", "a.1.x", "eu", 1, m.PROTOCOL_VERSION, b"A" * 16).encode()
    hello_b = m.Hello("b", "b.1.y", "us", 1, m.PROTOCOL_VERSION, b"B" * 16).encode()
    ca, cb = Channel(SECRET, hello_a, hello_b), Channel(SECRET, hello_b, hello_a)
    first, second = ca.seal(b"one"), ca.seal(b"two")
    with pytest.raises(FrameAuthFailed):
        cb.open(second)  # reordered (or the first was dropped)
    assert cb.open(first) == b"one"
    with pytest.raises(FrameAuthFailed):
        cb.open(first)  # replayed
    with pytest.raises(FrameAuthFailed):
        cb.open(second[:-1] + bytes([second[-1] ^ 1]))  # tag flipped
    with pytest.raises(FrameAuthFailed):
        cb.open(b"X" + second[1:])  # body changed
    with pytest.raises(FrameAuthFailed):
        cb.open(b"short")
    with pytest.raises(FrameAuthFailed):
        ca.open(second)  # reflected: a's own message back to a
    assert cb.open(second) == b"two"  # failures moved no counter
    assert len(second) == len(b"two") + TAG_SIZE


# The handshake.


def test_a_pure_relay_links_the_members_but_cannot_speak_on_the_link() -> None:
    # The attacker connects to a and to b and forwards each one's bytes to the other unchanged.
    evil = MemStore("evil", region="xx", nonce="n").apply("doc", [{"op": "set", "path": ["x"], "value": "evil"}])
    attacks = (
        m.ReadRequest(1, "doc"),
        m.StatePush((("doc", evil.delta),)),
        m.Deltas((evil,)),
    )
    for msg in attacks:
        pair = Pair()
        pair.write("a", "doc", INC)
        pair.sync_until_quiet()  # Pair's link *is* the relay: it moves bytes it cannot forge
        assert pair.a.encoded() == pair.b.encoded()
        # It read everything (no TLS) and now speaks, in clear: a read, a state push, a delta.
        before = pair.b.encoded()
        pair.pb.receive_message(msg.encode())
        assert_failed_cleanly(pair.pb, CloseCode.FRAME_AUTH_FAILED)
        assert pair.b.encoded() == before
    # ...or one of a's own earlier messages again (it saw them all): replayed.
    pair = Pair()
    pair.write("a", "doc", INC)
    pair.sync_until_quiet()
    before = pair.b.encoded()
    deltas = [d for d in pair.wire_a_to_b if d[0] == m.MessageType.DELTAS]
    assert deltas, "the relay saw a's delta go by"
    pair.pb.receive_message(deltas[0])
    assert_failed_cleanly(pair.pb, CloseCode.FRAME_AUTH_FAILED)
    assert pair.b.encoded() == before


def test_a_reflected_handshake_fails() -> None:
    # The attacker plays b's own Hello and Auth back to b (a "second b" on the other end).
    b = MemStore("b", region="us", nonce="n2")
    pb = make_protocol(b, nonce=2)
    (hello_b,) = pb.messages_to_send()
    pb.receive_message(hello_b)
    assert_failed_cleanly(pb, CloseCode.AUTH_FAILED)
    # With another identity in the Hello, b answers an Auth; sending b its own Auth back fails.
    pb = make_protocol(b, nonce=2)
    pb.messages_to_send()
    pb.receive_message(m.Hello("x", "x.1.z", "eu", 1, m.PROTOCOL_VERSION, b"X" * 16).encode())
    (auth_b,) = pb.messages_to_send()
    pb.receive_message(auth_b)
    assert_failed_cleanly(pb, CloseCode.AUTH_FAILED)


def test_a_spliced_handshake_fails() -> None:
    # Two links a-b at once: the attacker feeds b an Auth of a from the other link.
    a = MemStore("a", region="eu", nonce="n1")
    b = MemStore("b", region="us", nonce="n2")
    a1, b1 = make_protocol(a, nonce=11), make_protocol(b, nonce=21)
    a2, b2 = make_protocol(a, nonce=12), make_protocol(b, nonce=22)
    _, (hello_b1,) = a1.messages_to_send(), b1.messages_to_send()
    (hello_a2,), (hello_b2,) = a2.messages_to_send(), b2.messages_to_send()
    a1.receive_message(hello_b1)
    (auth_a1,) = a1.messages_to_send()
    b2.receive_message(hello_a2)
    b2.messages_to_send()
    b2.receive_message(auth_a1)
    assert_failed_cleanly(b2, CloseCode.AUTH_FAILED)
    # Splicing the Hellos instead: b1 hears a2's Hello, then a2's Auth made for b2's Hello.
    b1.receive_message(hello_a2)
    b1.messages_to_send()
    a2.receive_message(hello_b2)
    (auth_a2,) = a2.messages_to_send()
    b1.receive_message(auth_a2)
    assert_failed_cleanly(b1, CloseCode.AUTH_FAILED)


def test_frames_of_one_link_fail_on_another_and_in_the_other_direction() -> None:
    first, second = open_pair(), Pair(nonces=(3, 4))
    second.sync_until_quiet()
    # Same replicas, same counters, other nonces: another session key.
    second.pb.receive_message(sealed(first.pa, m.ReadRequest(1, "doc")))
    assert_failed_cleanly(second.pb, CloseCode.FRAME_AUTH_FAILED)
    # b's own message reflected back to b.
    first.pb.receive_message(sealed(first.pb, m.ReadRequest(1, "doc")))
    assert_failed_cleanly(first.pb, CloseCode.FRAME_AUTH_FAILED)


def test_a_replayed_or_reordered_frame_fails_and_changes_nothing() -> None:
    pair = open_pair()
    state = pair.a.apply("doc", INC)
    push = sealed(pair.pa, m.Deltas((state,)))
    pair.pb.receive_message(push)
    assert [type(e) for e in pair.pb.events_received()] == [ev.ApplyDeltas]
    pair.pb.receive_message(push)  # the same bytes again
    assert_failed_cleanly(pair.pb, CloseCode.FRAME_AUTH_FAILED)
    pair = open_pair()
    sealed(pair.pa, m.ReadRequest(1, "doc"))  # sealed, then overtaken by the next one
    pair.pb.receive_message(sealed(pair.pa, m.ReadRequest(2, "doc")))
    assert_failed_cleanly(pair.pb, CloseCode.FRAME_AUTH_FAILED)


def test_a_frame_injected_mid_link_fails_and_later_good_frames_are_ignored() -> None:
    pair = open_pair()
    pair.write("a", "doc", INC)
    pair.sync_until_quiet()
    forged = Channel(b"a guessed secret", b"h1", b"h2").seal(m.StatePush((("doc", b"{}"),)).encode())
    pair.pb.receive_message(forged)
    assert_failed_cleanly(pair.pb, CloseCode.FRAME_AUTH_FAILED)
    pair.pb.receive_message(sealed(pair.pa, m.ReadRequest(1, "doc")))  # a valid one, too late
    assert pair.pb.events_received() == [] and pair.pb.messages_to_send() == []


def test_nothing_but_ready_before_the_peers_ready() -> None:
    a = MemStore("a", region="eu", nonce="n1")
    b = MemStore("b", region="us", nonce="n2")
    pa, pb = make_protocol(a, nonce=1), make_protocol(b, nonce=2)
    (hello_a,), (hello_b,) = pa.messages_to_send(), pb.messages_to_send()
    pa.receive_message(hello_b)
    pb.receive_message(hello_a)
    (auth_a,), _ = pa.messages_to_send(), pb.messages_to_send()
    assert not pb.peer_verified
    pb.receive_message(auth_a)
    assert pb.peer_verified and pb.state is State.CONFIRMING
    assert pb.events_received() == []  # not Authenticated yet: a's Ready has not come
    (ready_b,) = pb.messages_to_send()
    assert len(ready_b) == 1 + TAG_SIZE
    # Anything but a's Ready first, even sealed by a, fails: the link is not open yet.
    pb.receive_message(sealed(pa, m.Ack(())))
    assert_failed_cleanly(pb, CloseCode.AUTH_FAILED)


def test_a_second_ready_on_an_open_link_fails() -> None:
    pair = open_pair()
    pair.pb.receive_message(sealed(pair.pa, m.Ready()))
    assert_failed_cleanly(pair.pb, CloseCode.UNEXPECTED_MESSAGE)


def test_a_large_message_before_the_handshake_fails_with_1009() -> None:
    b = MemStore("b", region="us", nonce="n2")
    pb = make_protocol(b)
    pb.messages_to_send()
    pb.receive_message(b"\x01" + bytes(m.MAX_HANDSHAKE_BYTES))
    assert_failed_cleanly(pb, CloseCode.MESSAGE_TOO_BIG)
    # After the peer's Hello, before its Auth: still limited.
    pb = make_protocol(b)
    pb.receive_message(m.Hello("a", "a.1.x", "eu", 1, m.PROTOCOL_VERSION, b"A" * 16).encode())
    pb.receive_message(m.Auth(bytes(32)).encode() + bytes(m.MAX_HANDSHAKE_BYTES))
    assert_failed_cleanly(pb, CloseCode.MESSAGE_TOO_BIG)
    # A Hello at the largest size the messages allow fits the limit.
    big = m.Hello("a" * 256, "o" * 256, "r" * 256, 2**64 - 1, m.PROTOCOL_VERSION, b"n" * 64).encode()
    assert len(big) <= m.MAX_HANDSHAKE_BYTES
    # Once open, large messages are fine.
    pair = open_pair()
    entry = pair.a.apply("doc", [{"op": "set", "path": ["x"], "value": "y" * 3 * m.MAX_HANDSHAKE_BYTES}])
    pair.pb.receive_message(sealed(pair.pa, m.Deltas((entry,))))
    assert [type(e) for e in pair.pb.events_received()] == [ev.ApplyDeltas]
