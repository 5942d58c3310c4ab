"""A reader that stops reading is closed with 4008 once its send queue is full, not buffered without end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from crdtstore.api.auth import Scope
from crdtstore.api.limits import Limits
from crdtstore.api.live import CLOSE_SLOW_READER, LiveConn, LiveHub, LiveSettings


class _StuckSocket:
    """A client whose socket takes nothing: every send blocks, as on a full TCP window."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed: tuple[int, str] | None = None
        self._never = asyncio.Event()

    async def send_text(self, data: str) -> None:
        self.sent += 1
        await self._never.wait()

    async def receive(self) -> dict[str, Any]:
        await self._never.wait()
        raise AssertionError("unreachable")

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class _IdleNode:
    replica_id = "r"

    async def read_state(self, doc_id: str) -> bytes | None:
        return None

    def changes(self, doc_id: str, since: str | None) -> AsyncIterator[dict[str, Any]]:
        async def feed() -> AsyncIterator[dict[str, Any]]:
            await asyncio.Event().wait()
            yield {}

        return feed()


def test_a_slow_reader_is_closed_with_4008() -> None:
    async def scenario() -> tuple[_StuckSocket, int]:
        ctx = SimpleNamespace(node=_IdleNode(), version_key=b"k" * 32, limits=Limits())
        hub = LiveHub(ctx, LiveSettings(send_queue=8))  # type: ignore[arg-type]
        ws = _StuckSocket()
        conn = LiveConn(ws, hub, "d", Scope.READWRITE, "p")  # type: ignore[arg-type]
        channel = hub.join("d", conn)
        run = asyncio.create_task(conn.run(channel, None))
        await channel.until_ready()
        pushed = 0
        while not run.done() and pushed < 1000:  # bounded: the queue holds 8
            conn.push('{"type": "change"}')
            pushed += 1
            await asyncio.sleep(0)
        await asyncio.wait_for(run, 5)
        hub.leave("d", conn)
        await conn.finish()
        return ws, pushed

    ws, pushed = asyncio.run(scenario())
    assert ws.closed is not None and ws.closed[0] == CLOSE_SLOW_READER
    assert pushed <= 8 + 2  # the snapshot plus the queue: nothing more was buffered
