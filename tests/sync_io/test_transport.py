"""Websocket peer links on loopback: messages both ways, idempotent close, reconnect with backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from crdtstore.api.peerlink import ServerPeerConnection
from sync.io.transport import Dialer, PeerConnection, TransportSettings, dial
from sync.io.wanproxy import WanLink
from tests.sync_io.io_helpers import serve_app

LIMIT = 30.0
FAST = TransportSettings(
    ping_interval=0.2, ping_timeout=0.5, close_timeout=0.5, backoff_initial=0.02, backoff_max=0.2, max_size=1 << 20
)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=LIMIT))


def echo_app(accepted: list[ServerPeerConnection]) -> Starlette:
    async def peer(websocket: WebSocket) -> None:
        await websocket.accept()
        conn = ServerPeerConnection(websocket)
        accepted.append(conn)
        for _ in range(10_000):
            data = await conn.recv()
            if data is None:
                break
            if data == b"close-4001":
                await conn.close(4001, "asked to")
                await conn.close(4001, "twice is fine")
                break
            await conn.send(b"echo:" + data)

    return Starlette(routes=[WebSocketRoute("/v1/peer", peer)])


def test_binary_messages_go_both_ways_in_order_and_close_codes_surface() -> None:
    async def scenario() -> None:
        accepted: list[ServerPeerConnection] = []
        async with serve_app(echo_app(accepted)) as port:
            conn = await dial(f"ws://127.0.0.1:{port}/v1/peer", settings=FAST)
            for i in range(50):
                await conn.send(b"%d" % i)
            got = [await conn.recv() for _ in range(50)]
            assert got == [b"echo:%d" % i for i in range(50)]
            await conn.send(b"close-4001")
            assert await conn.recv() is None
            assert conn.close_code == 4001
            assert await conn.recv() is None  # stays closed
            await conn.close()
            await conn.close()  # idempotent

    run(scenario)


def test_dialer_reconnects_after_the_link_is_cut_and_healed() -> None:
    async def scenario() -> None:
        accepted: list[ServerPeerConnection] = []
        async with serve_app(echo_app(accepted)) as port:
            link = WanLink(random=random.Random(1).random, target=("127.0.0.1", port))
            await link.start()
            ended: list[int | None] = []
            replies: list[bytes] = []

            async def session(conn: PeerConnection) -> None:
                await conn.send(b"hello")
                for _ in range(1000):
                    data = await conn.recv()
                    if data is None:
                        break
                    replies.append(data)
                ended.append(conn.close_code)
                await conn.close()

            dialer = Dialer(
                f"ws://127.0.0.1:{link.port}/v1/peer",
                session,
                settings=FAST,
                random=random.Random(2).random,
            )
            dialer.start()
            try:

                async def until(pred: Callable[[], bool]) -> None:
                    for _ in range(1000):
                        if pred():
                            return
                        await asyncio.sleep(0.01)
                    raise AssertionError("condition not reached in time")

                await until(lambda: replies == [b"echo:hello"])
                link.cut()
                await until(lambda: len(ended) == 1)
                # While cut, dials fail and are retried (bounded by backoff_max).
                attempts = dialer.attempts
                await until(lambda: dialer.attempts >= attempts + 2)
                link.heal()
                await until(lambda: replies.count(b"echo:hello") == 2)
                assert dialer.sessions >= 2
            finally:
                await dialer.close()
                await dialer.close()
                await link.close()

    run(scenario)


def test_a_silent_partition_is_detected_by_keepalive_pings() -> None:
    async def scenario() -> None:
        accepted: list[ServerPeerConnection] = []
        async with serve_app(echo_app(accepted), ping_interval=0.2, ping_timeout=0.5) as port:
            link = WanLink(random=random.Random(3).random, target=("127.0.0.1", port))
            await link.start()
            try:
                conn = await dial(f"ws://127.0.0.1:{link.port}/v1/peer", settings=FAST)
                await conn.send(b"x")
                assert await conn.recv() == b"echo:x"
                link.cut("hold")  # no FIN, no RST: only the missing pongs tell
                assert await asyncio.wait_for(conn.recv(), 10) is None
                assert conn.close_code is not None
            finally:
                await link.close()

    run(scenario)


def test_dialer_keeps_retrying_a_peer_that_drops_connections_mid_handshake() -> None:
    # A cut WAN link may accept the TCP connection and drop it before the upgrade completes:
    # websockets raises ConnectionClosedError there, and the dialer must treat it as a failed dial.
    calls: list[str] = []

    async def dropped(url: str) -> PeerConnection:
        calls.append(url)
        raise websockets.ConnectionClosedError(None, None)

    async def scenario() -> None:
        sessions: list[object] = []

        async def session(conn: object) -> None:
            sessions.append(conn)

        dialer = Dialer(
            "ws://127.0.0.1:9/v1/peer", session, settings=TransportSettings(backoff_max=0.05), dial_fn=dropped
        )
        dialer.start()
        try:
            for _ in range(500):  # bounded: several failed attempts, and the dialer is still at it
                if dialer.attempts >= 4:
                    break
                await asyncio.sleep(0.01)
            assert dialer.attempts >= 4 and len(calls) >= 4 and not sessions
            assert dialer._task is not None and not dialer._task.done()
        finally:
            await dialer.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
