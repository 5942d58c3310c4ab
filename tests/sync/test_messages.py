"""Wire messages: encode/decode roundtrip, and junk decodes to MalformedMessage only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync import messages as m
from sync.exceptions import InvalidMessage, LocalProtocolError, MalformedMessage, RemoteProtocolError
from sync.types import LogEntry
from tests.sync.strategies import messages


@given(messages)
def test_roundtrip(msg: m.Message) -> None:
    data = msg.encode()
    assert data[0] == msg.TYPE
    assert m.decode(data) == msg
    assert m.decode(data).encode() == data  # canonical: one encoding per message


@given(st.binary(max_size=200))
def test_junk_raises_malformed_only(data: bytes) -> None:
    try:
        msg = m.decode(data)
    except MalformedMessage:
        return
    assert msg.encode() == data  # whatever decodes is canonical


@given(messages, st.data())
def test_mutated_messages_raise_malformed_only(msg: m.Message, data: st.DataObject) -> None:
    raw = bytearray(msg.encode())
    if len(raw) > 1:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        m.decode(bytes(raw[:cut]))
    except MalformedMessage:
        pass


def test_registry_is_complete_and_unique() -> None:
    assert len({cls.TYPE for cls in m._REGISTRY.values()}) == len(m.MessageType)


def test_trailing_bytes_and_unknown_type() -> None:
    with pytest.raises(MalformedMessage, match="trailing"):
        m.decode(m.MerkleRootRequest(1).encode() + b"\x00")
    with pytest.raises(MalformedMessage, match="unknown message type"):
        m.decode(b"\xff")
    with pytest.raises(MalformedMessage, match="empty"):
        m.decode(b"")
    with pytest.raises(MalformedMessage, match="non-canonical"):
        m.decode(b"\x20\x80\x00")


def test_validation_in_post_init() -> None:
    with pytest.raises(InvalidMessage):
        m.Auth(b"short")
    with pytest.raises(InvalidMessage):
        m.Deltas((LogEntry("o", 0, "d", b""),))  # seqs start at 1
    with pytest.raises(InvalidMessage):
        m.Ack((("b", 1), ("a", 1)))  # unsorted
    with pytest.raises(InvalidMessage):
        m.Hello("a", "a.1", "eu", 1, 1, b"x" * 8)  # nonce too short
    with pytest.raises(InvalidMessage):
        m.ReadRequest(1, "x" * 300)
    # Local misuse and peer misbehaviour are told apart.
    assert issubclass(InvalidMessage, LocalProtocolError)
    assert not issubclass(MalformedMessage, LocalProtocolError)
    assert issubclass(MalformedMessage, RemoteProtocolError)


def test_oversize_batch_is_malformed() -> None:
    entries = tuple(LogEntry("o", i + 1, "d", b"") for i in range(m.MAX_BATCH))
    data = bytearray(m.Deltas(entries).encode())
    # Claim one more entry than the limit in the count varint (1024 -> 1025).
    assert data[1:3] == bytes([0x80, 0x08])
    data[1] = 0x81
    with pytest.raises(MalformedMessage, match="exceeds"):
        m.decode(bytes(data))
