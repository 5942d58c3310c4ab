"""Attacks on the peer link against real region nodes: relay, reflection, splicing, replay, injection, big frames.

The attacker holds neither the cluster secret nor a token; it reaches the
regions' ``/v1/peer`` like anyone on their network. Every attack ends with the
link closed with its close code and the regions' documents, vectors and Merkle
roots as they were.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crdtstore.config import ServeConfig
from sync import messages as m
from sync.exceptions import CloseCode
from sync.io.transport import ClientPeerConnection, TransportSettings, dial
from sync.memstore import MemStore
from tests.sync_io.regions import TOKEN, Member, Region, run_region, wait_for

DOCS = ["x", "big"]
BIG = "y" * (20 << 10)  # a state well over the pre-handshake limit: it crosses only once the limit is lifted


class Relay:
    """The stranger in the middle: dials both regions and forwards every message unchanged, both ways."""

    def __init__(self, a: ClientPeerConnection, b: ClientPeerConnection) -> None:
        self.a, self.b = a, b
        self.from_a: list[bytes] = []
        self.from_b: list[bytes] = []
        self._tasks = [
            asyncio.create_task(self._pump(a, b, self.from_a)),
            asyncio.create_task(self._pump(b, a, self.from_b)),
        ]

    @classmethod
    async def between(cls, a: Region, b: Region) -> Relay:
        settings = TransportSettings(close_timeout=1.0)
        conn_a, conn_b = await dial(a.peer_url, settings=settings), await dial(b.peer_url, settings=settings)
        # A relay has no reason to keep the small pre-handshake limit: it forwards whatever comes.
        conn_a.lift_limit()
        conn_b.lift_limit()
        return cls(conn_a, conn_b)

    async def _pump(self, src: ClientPeerConnection, dst: ClientPeerConnection, seen: list[bytes]) -> None:
        while True:
            data = await src.recv()
            if data is None:
                await dst.close(1001)
                return
            seen.append(data)
            with contextlib.suppress(ConnectionError):
                await dst.send(data)

    async def stop_forwarding(self) -> None:
        """Keep both connections, forward nothing more (so the attacker alone speaks from now on)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def closed_code(self, conn: ClientPeerConnection) -> int | None:
        for _ in range(1000):  # bounded: read until the region closes the link
            if await asyncio.wait_for(conn.recv(), 10) is None:
                return conn.close_code
        raise AssertionError("the region kept the link open")

    async def close(self) -> None:
        await self.stop_forwarding()
        await self.a.close()
        await self.b.close()


@contextlib.asynccontextmanager
async def two_regions(tmp_path: Path) -> AsyncIterator[tuple[Region, Region]]:
    """Two regions that know nothing of each other (no peer configured): only a relay can link them."""
    async with run_region(tmp_path, "ra") as a, run_region(tmp_path, "rb", peer_port=True) as b:
        await a.node.apply("x", [{"op": "increment", "path": ["n"]}])
        await a.node.apply("big", [{"op": "set", "path": ["s"], "value": BIG}])
        yield a, b


async def relayed(a: Region, b: Region) -> Relay:
    """A relay that let the regions authenticate each other and catch up (it reads all of it)."""
    relay = await Relay.between(a, b)

    async def caught_up() -> bool:
        return (await b.node.read_states(DOCS)) == (await a.node.read_states(DOCS))

    assert await wait_for(lambda: a.replicator.peers() and b.replicator.peers())
    assert await wait_for(caught_up), "a pure relay links the regions: they talk to each other through it"
    return relay


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=60))  # type: ignore[arg-type]


def test_a_relay_between_two_regions_that_injects_frames_is_closed_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_regions(tmp_path) as (a, b):
            relay = await relayed(a, b)
            before_a, before_b = await a.snapshot(DOCS + ["new"]), await b.snapshot(DOCS + ["new"])
            await relay.stop_forwarding()
            # It read the regions' Hellos and every frame; now it speaks as b to a: read a document...
            await relay.a.send(m.ReadRequest(7, "x").encode())
            # ...and as a to b: create one, and overwrite one with a pushed state.
            await relay.b.send(m.StatePush((("new", b"{}"), ("x", b"{}"))).encode())
            assert await relay.closed_code(relay.a) == CloseCode.FRAME_AUTH_FAILED
            assert await relay.closed_code(relay.b) == CloseCode.FRAME_AUTH_FAILED
            # Nothing answered the read: the last frame a sent before closing was no ReadResponse.
            assert not any(d[0] == m.MessageType.READ_RESPONSE for d in relay.from_a)
            assert await a.snapshot(DOCS + ["new"]) == before_a
            assert await b.snapshot(DOCS + ["new"]) == before_b
            assert await wait_for(lambda: not a.replicator.peers() and not b.replicator.peers())
            assert await a.healthy() and await b.healthy()
            await relay.close()

    run(scenario())


def test_a_relay_that_replays_a_frame_it_saw_is_closed_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_regions(tmp_path) as (a, b):
            relay = await relayed(a, b)
            await relay.stop_forwarding()
            before_b = await b.snapshot(DOCS)
            deltas = [d for d in relay.from_a if d[0] == m.MessageType.DELTAS]
            assert deltas, "the relay saw a's deltas cross"
            await relay.b.send(deltas[0])  # b already applied it once
            assert await relay.closed_code(relay.b) == CloseCode.FRAME_AUTH_FAILED
            assert await b.snapshot(DOCS) == before_b
            await relay.close()

    run(scenario())


def test_a_frame_moved_to_another_link_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_regions(tmp_path) as (a, b):
            first = await relayed(a, b)
            await first.stop_forwarding()
            second = await Relay.between(a, b)
            assert await wait_for(lambda: len(second.from_a) >= 3 and len(second.from_b) >= 3)
            await second.stop_forwarding()
            before_b = await b.snapshot(DOCS)
            # Same two regions, same position in the stream, another link: another session key.
            await second.b.send(first.from_a[3])
            assert await second.closed_code(second.b) == CloseCode.FRAME_AUTH_FAILED
            assert await b.snapshot(DOCS) == before_b
            await first.close()
            await second.close()

    run(scenario())


def test_a_reflected_handshake_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with run_region(tmp_path, "ra") as a:
            before = await a.snapshot(DOCS)
            # The region's own Hello, sent back to it.
            conn = await dial(a.peer_url, settings=TransportSettings(close_timeout=1.0))
            hello = await asyncio.wait_for(conn.recv(), 5)
            assert hello is not None and hello[0] == m.MessageType.HELLO
            await conn.send(hello)
            assert await Relay.closed_code(None, conn) == CloseCode.AUTH_FAILED  # type: ignore[arg-type]
            # A stranger's Hello, then the region's own Auth sent back to it.
            stranger = Member("stranger", secret=b"not the cluster secret at all!!")
            await stranger.connect(a.peer_url)
            await stranger.flush()
            assert stranger.conn is not None
            own_hello = await asyncio.wait_for(stranger.conn.recv(), 5)
            own_auth = await asyncio.wait_for(stranger.conn.recv(), 5)
            assert own_hello is not None and own_auth is not None and own_auth[0] == m.MessageType.AUTH
            await stranger.send_raw(own_auth)
            assert await stranger.recv_until_closed() == CloseCode.AUTH_FAILED
            assert await a.snapshot(DOCS) == before and a.replicator.peers() == []

    run(scenario())


def test_a_spliced_handshake_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_regions(tmp_path) as (a, b):
            settings = TransportSettings(close_timeout=1.0)
            to_a, to_b1, to_b2 = [await dial(r.peer_url, settings=settings) for r in (a, b, b)]
            hello_a, hello_b1, hello_b2 = [await asyncio.wait_for(c.recv(), 5) for c in (to_a, to_b1, to_b2)]
            assert hello_a and hello_b1 and hello_b2
            # a and b's first link swap Hellos; a's Auth for that link goes to b's second link.
            await to_a.send(hello_b1)
            await to_b2.send(hello_a)
            auth_a = await asyncio.wait_for(to_a.recv(), 5)
            assert auth_a is not None and auth_a[0] == m.MessageType.AUTH
            await to_b2.send(auth_a)
            for _ in range(5):  # b2 answered our Hello with its Auth; then it closes
                if await asyncio.wait_for(to_b2.recv(), 5) is None:
                    break
            assert to_b2.close_code == CloseCode.AUTH_FAILED
            assert a.replicator.peers() == [] and b.replicator.peers() == []
            for conn in (to_a, to_b1, to_b2):
                await conn.close()

    run(scenario())


def test_a_member_link_carries_large_messages_both_ways_once_authenticated(tmp_path: Path) -> None:
    # The limit is lifted on both ends before any large message: a catch-up right after the handshake.
    async def scenario() -> None:
        async with run_region(tmp_path, "ra") as a:
            await a.node.apply("big", [{"op": "set", "path": ["s"], "value": BIG}])
            async with run_region(tmp_path, "rb", peers=[a.peer_url], peer_port=True) as b:
                await b.node.apply("big2", [{"op": "set", "path": ["s"], "value": BIG}])

                async def converged() -> bool:
                    states = ["big", "big2"]
                    return (await a.node.read_states(states)) == (await b.node.read_states(states))

                assert await wait_for(converged)
                assert a.replicator.stats["protocol_errors"] == 0 and b.replicator.stats["protocol_errors"] == 0

    run(scenario())


def test_after_the_handshake_peer_links_take_peer_max_size_and_api_websockets_keep_theirs(tmp_path: Path) -> None:
    # One listener for both: uvicorn has one ws_max_size, so the peer paths' limit is the gate's own.
    async def scenario() -> None:
        async with run_region(tmp_path, "ra") as a:
            member = Member()
            await member.handshake(a.peer_url)
            huge = MemStore("m", region="rx", nonce="n").apply(
                "huge", [{"op": "set", "path": ["s"], "value": "h" * 200_000}]
            )
            assert len(huge.delta) > ServeConfig().ws_max_size  # over the API's websocket limit
            await member.send_raw(member.proto._channel.seal(m.Deltas((huge,)).encode()))  # type: ignore[union-attr]
            assert await wait_for(lambda: a.node.read_state("huge"))
            await member.close()
            # The change feed, an API websocket, still refuses a message over ws_max_size.
            feed = f"ws://127.0.0.1:{a.api_port}/v1/docs/huge/changes"
            async with connect(feed, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                await ws.send(bytes(ServeConfig().ws_max_size + 1))
                with pytest.raises(ConnectionClosed) as closed:
                    for _ in range(100):  # bounded: feed records, then the close
                        await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG

    run(scenario())


# Big frames before the handshake.


def _upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/peer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _frame_header(length: int) -> bytes:
    # FIN + binary, masked (a client's frames are), 64-bit length, then a zero mask key.
    return bytes([0x82, 0x80 | 127]) + struct.pack("!Q", length) + bytes(4)


async def _claim_a_big_frame(port: int) -> tuple[int, int]:
    """Upgrade, then send a frame *header* claiming 16 MiB and 1 KiB of it; the close code and bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_upgrade_request(port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        sent = _frame_header(16 << 20) + bytes(1024)
        writer.write(sent)
        await writer.drain()
        # Read the server's frames until its close frame: opcode 8, payload = code (2 bytes) + reason.
        for _ in range(20):
            first, second = await asyncio.wait_for(reader.readexactly(2), 5)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", await reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(length)
            if first & 0x0F == 0x8:
                return struct.unpack("!H", payload[:2])[0], len(sent)
        raise AssertionError("no close frame")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.parametrize("peer_port", [False, True], ids=["api-listener", "peer-listener"])
def test_a_big_frame_before_the_handshake_is_refused_from_its_header(tmp_path: Path, peer_port: bool) -> None:
    async def scenario() -> None:
        async with run_region(tmp_path, "ra", peer_port=peer_port) as a:
            before = await a.snapshot(DOCS)
            code, sent = await _claim_a_big_frame(a.peer_port)
            # Refused with 1009 after ~1 KiB of a claimed 16 MiB: the server did not wait for (or
            # buffer) the payload, it judged the header.
            assert code == CloseCode.MESSAGE_TOO_BIG and sent < 2048
            assert await a.snapshot(DOCS) == before and await a.healthy()
            # A member still links and, authenticated, may send large messages.
            member = Member()
            await member.handshake(a.peer_url)
            state = await a.node.read_state("x")
            assert state is None
            await member.send_raw(member.proto._channel.seal(m.ReadRequest(1, "z" * 200).encode()))  # type: ignore[union-attr]
            await member.close()

    run(scenario())


def test_a_dialed_server_that_sends_a_big_frame_before_the_handshake_is_dropped() -> None:
    # The dialing side is gated too: whoever answers at a peer URL gets the small limit until it authenticates.
    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            # An unmasked server frame claiming 16 MiB, and only a little of it.
            writer.write(bytes([0x82, 127]) + struct.pack("!Q", 16 << 20) + bytes(1024))
            await writer.drain()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.read(65536), 5)
            writer.close()

        sock = socket.create_server(("127.0.0.1", 0))
        server = await asyncio.start_server(handler, sock=sock)
        try:
            port = sock.getsockname()[1]
            conn = await dial(f"ws://127.0.0.1:{port}/v1/peer", settings=TransportSettings(close_timeout=1.0))
            assert await asyncio.wait_for(conn.recv(), 5) is None
            assert conn.close_code == CloseCode.MESSAGE_TOO_BIG
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())
