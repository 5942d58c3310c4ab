"""One socket write per small response: the listener holds a response's head until its first body write.

Every response is compared byte for byte with uvicorn's own protocol serving the
same app (HEAD, 204/304, chunking, 100-continue, pipelining and close are
uvicorn's code, so they must not change), and the writes are counted with a
transport that records each call. Waits are bounded; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from crdtstore.api.connections import ConnectionLimits, guarded_protocol

WAIT = 20.0


class _Gate:
    """An asyncio.Event made in the server's loop (each server runs its own loop)."""

    event: asyncio.Event | None = None


def make_app(gate: _Gate) -> Starlette:
    async def small(request: Request) -> Response:
        return JSONResponse({"a": 1})

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    async def missing(request: Request) -> Response:
        raise HTTPException(404, "no such thing")

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def nocontent(request: Request) -> Response:
        return Response(status_code=204)

    async def notmodified(request: Request) -> Response:
        return Response(status_code=304, headers={"etag": '"v1"'})

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in (b"one", b"", b"two"):
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    async def gated(request: Request) -> Response:
        gate.event = asyncio.Event()
        event = gate.event

        async def chunks() -> AsyncIterator[bytes]:
            await asyncio.wait_for(event.wait(), WAIT)
            yield b"late"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def release(request: Request) -> Response:
        assert gate.event is not None
        gate.event.set()
        return Response(b"ok")

    async def slow(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(500):
                await asyncio.sleep(0.002)
                yield b"x" * 1024

        return StreamingResponse(chunks(), media_type="text/plain")

    routes = [
        Route("/small", small),
        Route("/echo", echo, methods=["POST"]),
        Route("/missing", missing),
        Route("/boom", boom),
        Route("/nocontent", nocontent),
        Route("/notmodified", notmodified),
        Route("/stream", stream),
        Route("/gated", gated),
        Route("/release", release),
        Route("/slow", slow),
    ]
    return Starlette(routes=routes)


class _CountingTransport:
    """The socket's transport, with every write (and writelines, one syscall) recorded."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        lines = [bytes(line) for line in lines]
        self._writes.append(b"".join(lines))
        self._transport.writelines(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def counting(base: type[HttpToolsProtocol], writes: list[bytes]) -> type[HttpToolsProtocol]:
    class Counting(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_CountingTransport(transport, writes))

    return Counting


class Server:
    def __init__(self, port: int, writes: list[bytes]) -> None:
        self.port = port
        self.writes = writes

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)

    def exchange(self, raw: bytes) -> bytes:
        """Send ``raw`` and read everything until the server closes."""
        with self.connect() as sock:
            sock.sendall(raw)
            return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


@contextmanager
def serving(guarded: bool, loop: str = "auto") -> Iterator[Server]:
    writes: list[bytes] = []
    base = guarded_protocol(ConnectionLimits()) if guarded else HttpToolsProtocol
    config = uvicorn.Config(
        make_app(_Gate()),
        http=counting(base, writes),
        loop=loop,
        lifespan="off",
        log_config=None,
        access_log=False,
        date_header=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield Server(sock.getsockname()[1], writes)
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive()


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def servers(request: pytest.FixtureRequest) -> Iterator[tuple[Server, Server]]:
    with serving(guarded=False, loop=request.param) as plain, serving(guarded=True, loop=request.param) as ours:
        yield plain, ours


def get(path: str, method: str = "GET", extra: str = "Connection: close\r\n") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


REQUESTS = {
    "get": get("/small"),
    "head": get("/small", "HEAD"),
    "post": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    "not_found": get("/missing"),
    "server_error": get("/boom"),
    "method_not_allowed": get("/echo"),
    "no_content": get("/nocontent"),
    "not_modified": get("/notmodified"),
    "stream": get("/stream"),
    "head_stream": get("/stream", "HEAD"),
    "http10": b"GET /small HTTP/1.0\r\n\r\n",
    "expect_100": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello"
    ),
    "pipelined": get("/small", extra="") + get("/stream", extra="") + get("/small", "HEAD", extra="") + get("/small"),
    "pipelined_post": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" + get("/nocontent", extra="") + get("/small")
    ),
}


# Byte-exact: the same bytes as uvicorn's own protocol.


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_responses_are_byte_for_byte_uvicorns(servers: tuple[Server, Server], name: str) -> None:
    plain, ours = servers
    raw = REQUESTS[name]
    assert ours.exchange(raw) == plain.exchange(raw)


def test_a_small_response_is_exactly_these_bytes(servers: tuple[Server, Server]) -> None:
    _, ours = servers
    assert ours.exchange(REQUESTS["get"]) == (
        b'HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"a":1}'
    )
    assert ours.exchange(REQUESTS["head"]) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
    )


# One write per response.


def _writes_for(server: Server, raw: bytes) -> list[bytes]:
    del server.writes[:]
    server.exchange(raw)
    return list(server.writes)


@pytest.mark.parametrize("name", ["get", "post", "not_found", "no_content", "not_modified", "head", "http10"])
def test_a_small_response_goes_out_in_one_write(servers: tuple[Server, Server], name: str) -> None:
    plain, ours = servers
    raw = REQUESTS[name]
    writes = _writes_for(ours, raw)
    assert len(writes) == 1, writes
    assert writes[0] == plain.exchange(raw)


def test_keep_alive_requests_take_one_write_each_where_uvicorn_takes_two(servers: tuple[Server, Server]) -> None:
    plain, ours = servers
    raw = get("/small", extra="") * 4 + get("/small")
    assert len(_writes_for(ours, raw)) == 5
    # If this fails, uvicorn now coalesces by itself and connections.py's override can go.
    assert len(_writes_for(plain, raw)) == 10


def test_a_chunked_stream_writes_its_head_with_the_first_chunk(servers: tuple[Server, Server]) -> None:
    _, ours = servers
    writes = _writes_for(ours, REQUESTS["stream"])
    assert writes[0].endswith(b"\r\n\r\n3\r\none\r\n"), writes
    assert b"".join(writes).endswith(b"3\r\ntwo\r\n0\r\n\r\n")


def test_a_stream_waiting_for_its_first_chunk_sends_its_head_at_once(servers: tuple[Server, Server]) -> None:
    """A change feed's head must not wait for the first event: the client reads it before any event is released."""
    _, ours = servers
    with ours.connect() as feed:
        feed.sendall(get("/gated"))
        head = read_until(feed, b"\r\n\r\n")  # the app is still blocked on the gate here
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n"), head
        assert b"transfer-encoding: chunked" in head
        assert ours.exchange(get("/release")).endswith(b"ok")
        rest = read_until_closed(feed)
        assert (head + rest).endswith(b"\r\n\r\n4\r\nlate\r\n0\r\n\r\n")


# Abuse: clients that go away.


def test_a_client_that_closes_mid_response_leaves_the_server_serving(servers: tuple[Server, Server]) -> None:
    _, ours = servers
    for _ in range(3):
        with ours.connect() as sock:
            sock.sendall(get("/slow"))
            read_until(sock, b"\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    with ours.connect() as sock:  # closed before its head can go out
        sock.sendall(get("/gated"))
    assert ours.exchange(get("/release")).endswith(b"ok")
    assert ours.exchange(REQUESTS["get"]).endswith(b'{"a":1}')


def test_a_client_that_closes_between_pipelined_requests_leaves_the_server_serving(
    servers: tuple[Server, Server],
) -> None:
    _, ours = servers
    with ours.connect() as sock:
        sock.sendall(get("/slow", extra="") + get("/small", extra="") * 3)
        read_until(sock, b"\r\n\r\n")
    assert ours.exchange(REQUESTS["pipelined"]) == servers[0].exchange(REQUESTS["pipelined"])


# What the override relies on in uvicorn: fail loudly if it changes.


def test_uvicorns_cycle_still_has_what_the_override_relies_on() -> None:
    parameters = inspect.signature(RequestResponseCycle.__init__).parameters
    assert {"transport", "on_response"} <= set(parameters)
    init = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in ("self.transport = transport", "self.on_response = on_response", "self.disconnected"):
        assert attribute in init, attribute
    send = inspect.getsource(RequestResponseCycle.send)
    # The head is recognised as the first write after response_started is set; a 100 Continue comes before.
    assert send.index("self.response_started = True") < send.index("self.transport.write(")
    assert "self.on_response()" in send
    assert "self.cycle = RequestResponseCycle(" in inspect.getsource(HttpToolsProtocol.on_headers_complete)


def test_finished_responses_leave_no_garbage_cycles(servers: tuple[Server, Server]) -> None:
    """A held head must not tie a cycle to its transport for the garbage collector: one per request adds up."""
    from crdtstore.api.connections import _HeadHoldingTransport

    def alive() -> set[int]:
        return {id(o) for o in gc.get_objects() if isinstance(o, _HeadHoldingTransport)}

    _, ours = servers
    gc.collect()
    gc.disable()
    try:
        before = alive()  # streams of earlier tests may still be running
        ours.exchange(get("/small", extra="") * 20 + get("/small"))
        left = alive() - before
    finally:
        gc.enable()
    assert len(left) <= 1, len(left)
