"""A reader that stops reading is closed with 4008 once its send queue is full, not buffered without end."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

from crdtstore.api.auth import Scope
from crdtstore.api.limits import Limits
from crdtstore.api.live import CLOSE_SLOW_READER, LiveConn, LiveHub, LiveSettings
from tests.live.idle import IdleNode


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


def test_a_slow_reader_is_closed_with_4008() -> None:
    async def scenario() -> tuple[_StuckSocket, int, int]:
        ctx = SimpleNamespace(node=IdleNode(), version_key=b"k" * 32, limits=Limits())
        hub = LiveHub(ctx, LiveSettings(send_queue=8))  # type: ignore[arg-type]
        ws = _StuckSocket()
        conn = LiveConn(ws, hub, "d", Scope.READWRITE, "p")  # type: ignore[arg-type]
        channel = hub.join("d", conn)
        run = asyncio.create_task(conn.run(channel, None))
        await channel.until_ready()
        pushed = peak = 0
        while not run.done() and pushed < 1000:  # bounded: the queue holds 8
            conn.push('{"type": "change"}')
            pushed += 1
            await asyncio.sleep(0)
            peak = max(peak, len(conn.out))
        await asyncio.wait_for(run, 5)
        hub.leave("d", conn)
        await conn.finish()
        return ws, pushed, peak

    ws, pushed, peak = asyncio.run(scenario())
    assert ws.closed is not None and ws.closed[0] == CLOSE_SLOW_READER
    assert peak <= 8  # the queue never held more than its bound
    # The snapshot in the stuck send, the queue, the frame that found it full, and one pushed while the
    # connection's tasks were being cancelled: nothing more was taken.
    assert pushed <= 8 + 3


class _GatedSocket(_StuckSocket):
    """Takes frames one at a time, when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[str] = []
        self.gate = asyncio.Event()

    async def send_text(self, data: str) -> None:
        self.frames.append(data)
        await self.gate.wait()
        self.gate.clear()


def test_with_coalesce_what_queued_up_goes_as_one_array_frame() -> None:
    async def scenario() -> list[str]:
        ctx = SimpleNamespace(node=IdleNode(), version_key=b"k" * 32, limits=Limits(), replicator=None)
        hub = LiveHub(ctx, LiveSettings())  # type: ignore[arg-type]
        ws = _GatedSocket()
        conn = LiveConn(ws, hub, "d", Scope.READWRITE, "p")  # type: ignore[arg-type]
        conn.coalesce = True
        channel = hub.join("d", conn)
        run = asyncio.create_task(conn.run(channel, None))
        await channel.until_ready()
        for _ in range(100):  # bounded: until the snapshot is on its way
            if ws.frames:
                break
            await asyncio.sleep(0.01)
        conn.push('{"n":1}')
        conn.push('{"n":2}')
        ws.gate.set()  # the snapshot went out; the two queued meanwhile go together
        for _ in range(100):
            if len(ws.frames) == 2:
                break
            await asyncio.sleep(0.01)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        return ws.frames

    frames = asyncio.run(scenario())
    assert frames[0].startswith('{"type":"snapshot"')
    assert frames[1] == '[{"n":1},{"n":2}]'
