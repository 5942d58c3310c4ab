"""The live channel's fan-out: one pass per burst writes each connection once, without a task wakeup, in order.

Unit tests drive :class:`LiveConn` over fake sockets that offer the server's synchronous write
(:data:`crdtstore.api.peerlink.SEND_NOWAIT_EXTENSION`); the last test runs a real node, whose uvicorn
protocol offers it, with a client that negotiates compression beside one that does not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from crdtstore.api.auth import Scope
from crdtstore.api.limits import Limits
from crdtstore.api.live import CLOSE_SLOW_READER, DocChannel, LiveConn, LiveHub, LiveSettings
from crdtstore.api.peerlink import SEND_NOWAIT_EXTENSION
from tests.live.idle import IdleNode
from tests.server_helpers import RW, ServerProcess, write_tokens


class _Socket:
    """A client socket behind a server that writes without waiting while ``takes`` says so.

    ``written`` holds every frame in the order the client receives it: the synchronous writes
    (payload and the frame bytes offered) and the awaited sends alike.
    """

    def __init__(self, *, direct: bool = True) -> None:
        self.written: list[tuple[str, str, bytes | None]] = []  # (how, text, frame bytes offered)
        self.takes = True
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed: tuple[int, str] | None = None
        self.scope: dict[str, Any] = {"extensions": {SEND_NOWAIT_EXTENSION: {"send": self._send}}} if direct else {}

    def _send(self, payload: bytes, frame: bytes | None) -> bool:
        if not self.takes:
            return False
        self.written.append(("direct", payload.decode(), frame))
        return True

    async def send_text(self, data: str) -> None:
        await self.gate.wait()
        self.written.append(("awaited", data, None))

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def texts(self) -> list[str]:
        return [text for _, text, _ in self.written]


def _hub(**settings: Any) -> LiveHub:
    ctx = SimpleNamespace(node=IdleNode(), version_key=b"k" * 32, limits=Limits(), replicator=None)
    return LiveHub(ctx, LiveSettings(**settings))  # type: ignore[arg-type]


async def _settle() -> None:
    for _ in range(5):  # a few loop passes: the fan-out's call_soon, the sender's wakeup
        await asyncio.sleep(0)


async def _joined(hub: LiveHub, socket: _Socket, *, coalesce: bool) -> tuple[LiveConn, asyncio.Task[None]]:
    conn = LiveConn(socket, hub, "d", Scope.READWRITE, "p")  # type: ignore[arg-type]
    conn.coalesce = coalesce
    channel = hub.join("d", conn)
    run = asyncio.create_task(conn.run(channel, None))
    await channel.until_ready()
    await _settle()
    socket.written.clear()  # the snapshot
    return conn, run


async def _stop(*runs: asyncio.Task[None]) -> None:
    for run in runs:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run


def test_one_pass_writes_each_connection_once_and_equal_frames_are_encoded_once() -> None:
    async def scenario() -> tuple[_Socket, _Socket, _Socket]:
        hub = _hub()
        a, b, c = _Socket(), _Socket(), _Socket()
        conn_a, run_a = await _joined(hub, a, coalesce=True)
        _, run_b = await _joined(hub, b, coalesce=True)
        _, run_c = await _joined(hub, c, coalesce=False)
        channel: DocChannel = conn_a.channel
        # A burst: three changes, the second owned by a's batch, then a's ack, all in one pass.
        channel.broadcast('{"n":1}')
        channel.broadcast('{"n":2}', owner=conn_a, owned='{"n":2,"batch":"x"}')
        channel.broadcast('{"n":3}')
        conn_a.push('{"ack":"x"}')
        assert a.written == b.written == c.written == []  # nothing before the pass
        await _settle()
        await _stop(run_a, run_b, run_c)
        return a, b, c

    a, b, c = asyncio.run(scenario())
    # One frame for each coalescing connection, the ack after the change that carries its batch.
    assert a.texts() == ['[{"n":1},{"n":2,"batch":"x"},{"n":3},{"ack":"x"}]']
    assert b.texts() == ['[{"n":1},{"n":2},{"n":3}]']
    assert c.texts() == ['{"n":1}', '{"n":2}', '{"n":3}']  # one frame a message without ?coalesce
    assert all(how == "direct" for how, _, _ in a.written + b.written + c.written)  # no sender wakeup
    # The frame bytes are the websocket encoding of the text, and b's were not re-encoded for c.
    _, text, frame = b.written[0]
    assert frame == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert c.written[0][2] == Frame(Opcode.TEXT, b'{"n":1}').serialize(mask=False)


def test_equal_lists_share_one_frame_object() -> None:
    async def scenario() -> list[bytes | None]:
        hub = _hub()
        sockets = [_Socket() for _ in range(4)]
        joined = [await _joined(hub, s, coalesce=True) for s in sockets]
        joined[0][0].channel.broadcast('{"n":1}')
        joined[0][0].channel.broadcast('{"n":2}')
        await _settle()
        await _stop(*(run for _, run in joined))
        return [s.written[0][2] for s in sockets]

    frames = asyncio.run(scenario())
    assert frames[0] is not None and all(f is frames[0] for f in frames)


def test_a_socket_that_would_wait_gets_the_rest_through_the_sender_in_order() -> None:
    async def scenario() -> tuple[_Socket, LiveConn]:
        hub = _hub()
        s = _Socket()
        conn, run = await _joined(hub, s, coalesce=False)
        s.takes, s.gate = False, asyncio.Event()  # the transport is full: sends wait
        conn.channel.broadcast('{"n":1}')
        conn.channel.broadcast('{"n":2}')
        await _settle()
        assert s.written == [] and list(conn.out) == ['{"n":2}']  # n=1 is in the sender's pending send
        s.takes = True  # writable again, but the sender has not written its frames yet
        conn.channel.broadcast('{"n":3}')
        await _settle()
        assert s.written == []  # n=3 did not overtake them
        s.gate.set()
        await _settle()
        conn.channel.broadcast('{"n":4}')  # the sender is done: direct again
        await _settle()
        await _stop(run)
        return s, conn

    s, conn = asyncio.run(scenario())
    assert s.texts() == ['{"n":1}', '{"n":2}', '{"n":3}', '{"n":4}']
    assert [how for how, _, _ in s.written] == ["awaited", "awaited", "awaited", "direct"]
    assert not conn.out


def test_abuse_a_reader_that_stops_is_closed_with_4008_though_writes_were_direct() -> None:
    async def scenario() -> tuple[_Socket, int, int]:
        hub = _hub(send_queue=8)
        s = _Socket()
        conn, run = await _joined(hub, s, coalesce=True)
        s.takes, s.gate = False, asyncio.Event()  # a reader that stopped: its socket never drains
        pushed = peak = 0
        while not run.done() and pushed < 1000:  # bounded: the queue holds 8
            conn.channel.broadcast('{"type":"change"}')
            pushed += 1
            await asyncio.sleep(0)
            peak = max(peak, len(conn.out))
        await asyncio.wait_for(run, 5)
        hub.leave("d", conn)
        await conn.finish()
        return s, pushed, peak

    s, pushed, peak = asyncio.run(scenario())
    assert s.closed is not None and s.closed[0] == CLOSE_SLOW_READER
    assert peak <= 8  # the queue never held more than its bound
    assert pushed <= 8 + 4  # the frame in the stuck send, the queue, the one that found it full, the cancel


def test_without_the_extension_every_frame_goes_through_the_sender() -> None:
    async def scenario() -> _Socket:
        hub = _hub()
        s = _Socket(direct=False)
        conn, run = await _joined(hub, s, coalesce=True)
        conn.channel.broadcast('{"n":1}')
        conn.push('{"ack":1}')
        await _settle()
        await _stop(run)
        return s

    s = asyncio.run(scenario())
    assert s.written == [("awaited", '[{"n":1},{"ack":1}]', None)]


# A real node: its uvicorn protocol offers the synchronous write.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = Path(tmp_path_factory.mktemp("fanout"))
    tokens = write_tokens(tmp / "tokens")
    proc = ServerProcess(tmp, ["--region", "fo", "--data", str(tmp / "d"), "--tokens", str(tokens), "--no-sync"])
    yield proc.start()
    proc.kill()


def test_a_compressing_client_and_a_plain_one_see_the_same_changes(server: ServerProcess) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        url = server.url.replace("http://", "ws://", 1) + f"/v1/docs/fanout/live?coalesce=1&token={RW}"
        async with (
            connect(url, compression="deflate") as zipped,
            connect(url, compression=None) as plain,
            connect(url.replace("coalesce=1&", ""), compression=None) as single,
        ):
            assert zipped.protocol.extensions and not plain.protocol.extensions
            for ws in (zipped, plain, single):
                assert orjson.loads(await ws.recv())["type"] == "snapshot"
            text = "x" * 300  # long enough that compressing it is worth it
            for n in range(5):
                op = {"op": "insert", "path": ["t"], "index": 0, "text": f"{n}{text}"}
                await plain.send(orjson.dumps({"type": "batch", "id": f"b{n}", "ops": [op]}).decode())

            async def changes(ws: Any) -> list[dict[str, Any]]:
                seen: list[dict[str, Any]] = []
                while len(seen) < 5:
                    data = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
                    seen += [m for m in (data if isinstance(data, list) else [data]) if m["type"] == "change"]
                return seen

            return await changes(zipped), await changes(plain), await changes(single)

    zipped, plain, single = asyncio.run(asyncio.wait_for(scenario(), 60))
    strip = [{k: v for k, v in m.items() if k != "batch"} for m in plain]
    assert zipped == strip == single
    assert [m["patches"][0]["insert"]["text"][0] if "insert" in m["patches"][0] else None for m in zipped][1:] == list(
        "1234"
    )
