"""Request deadlines, the header limit and the unauthenticated-connection cap, over real sockets.

A uvicorn server with :func:`guarded_protocol` runs in a thread on
127.0.0.1, with deadlines of a fraction of a second; clients are raw
sockets, so a test can stall mid-request. Every wait is bounded, and no
assertion is about how long anything took: only what was answered, what
was closed and what the guard counted.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.connections import ConnectionGuard, ConnectionLimits, GuardedHttpToolsProtocol, guarded_protocol
from crdtstore.node import Node, NodeConfig
from tests.api.helpers import RW_TOKEN

WAIT = 20.0  # the bound of every wait: generous, never a measurement

FAST = ConnectionLimits(max_connections=8, reserve=2, header_timeout=0.4, body_timeout=0.4, max_header_bytes=4096)


class Served:
    def __init__(self, port: int, guard: ConnectionGuard) -> None:
        self.port = port
        self.guard = guard
        self.sockets: list[socket.socket] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        self.sockets.append(sock)
        return sock

    def request(self, sock: socket.socket, path: str, *, token: str | None = RW_TOKEN, close: bool = False) -> bytes:
        headers = f"GET {path} HTTP/1.1\r\nHost: t\r\n"
        if token:
            headers += f"Authorization: Bearer {token}\r\n"
        if close:
            headers += "Connection: close\r\n"
        sock.sendall(headers.encode() + b"\r\n")
        return read_response(sock)

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.02)


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length (all of ours have one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status_and_json(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw
    return int(head.split(b" ")[1]), orjson.loads(body)


@contextmanager
def serving(tmp_path: Path, limits: ConnectionLimits = FAST, **options: Any) -> Iterator[Served]:
    node = Node(NodeConfig(region="conn", data_dir=tmp_path / "node", sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})))
    protocol = guarded_protocol(limits)
    config = uvicorn.Config(
        app, http=protocol, lifespan="on", log_config=None, access_log=False, timeout_keep_alive=30, **options
    )
    server = uvicorn.Server(config)
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    served = Served(sock.getsockname()[1], protocol.guard)
    try:
        served.wait_for(lambda: server.started)
        yield served
    finally:
        for client in served.sockets:
            client.close()
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive()


# Deadlines.


def test_a_connection_that_never_sends_a_byte_is_closed(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        sock = served.connect()
        assert read_until_closed(sock) == b""  # closed without a word: no request had begun
        assert served.guard.closed["idle"] == 1


def test_deadlines_leave_the_process_wide_random_state_alone(tmp_path: Path) -> None:
    # The server's jitter once drew from the random module's shared state: a hypothesis test with the
    # server in its process then saw its strategy "use random" and failed, now and then.
    with serving(tmp_path) as served:
        before = random.getstate()
        for _ in range(3):
            sock = served.connect()  # armed for its first request, then again after each response
            assert served.request(sock, "/healthz").startswith(b"HTTP/1.1 200")
            assert served.request(sock, "/healthz").startswith(b"HTTP/1.1 200")
        assert random.getstate() == before


def test_headers_trickled_past_the_deadline_get_a_json_408(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        sock = served.connect()
        request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000
        sent = 0
        sock.settimeout(0.05)
        answer = b""
        # One byte at a time until the server answers; bounded by the request's length.
        while sent < len(request) and not answer:
            try:
                sock.send(request[sent : sent + 1])
                sent += 1
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(WAIT)
        answer += read_until_closed(sock)
        assert sent < len(request), "the server waited for the whole trickle"
        status, body = status_and_json(answer)
        assert (status, body["error"]) == (408, "request_timeout")
        assert served.guard.closed["header_timeout"] == 1


def test_a_body_stalled_past_the_deadline_gets_a_json_408(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        sock = served.connect()
        head = (
            f"POST /v1/docs/d HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {RW_TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"ops": [')
        status, body = status_and_json(read_until_closed(sock))
        assert (status, body["error"]) == (408, "request_timeout")
        assert served.guard.closed["body_timeout"] == 1
        # Nothing was written.
        fresh = served.connect()
        assert b" 404 " in served.request(fresh, "/v1/docs/d").split(b"\r\n")[0]


def test_keep_alive_requests_each_get_their_own_deadline(tmp_path: Path) -> None:
    """A connection that keeps sending whole requests in time is never closed by the deadlines."""
    limits = ConnectionLimits(max_connections=8, reserve=2, header_timeout=1.0, body_timeout=1.0)
    with serving(tmp_path, limits) as served:
        sock = served.connect()
        for _ in range(6):
            assert b" 200 " in served.request(sock, "/healthz").split(b"\r\n")[0]
            time.sleep(0.3)  # pacing, not a measurement: six rounds span more than one deadline
        assert sum(served.guard.closed.values()) == 0


def test_an_idle_keep_alive_connection_is_closed_after_its_response(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        sock = served.connect()
        assert b" 200 " in served.request(sock, "/healthz").split(b"\r\n")[0]
        assert read_until_closed(sock) == b""
        assert served.guard.closed["idle"] == 1


# Malformed and oversized requests answer JSON.


def test_headers_over_the_limit_get_a_json_431(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        for request in [
            # In one piece (headers complete), and never ending (headers incomplete).
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8000,
        ]:
            sock = served.connect()
            sock.sendall(request)
            status, body = status_and_json(read_until_closed(sock))
            assert (status, body["error"]) == (431, "headers_too_large")
        assert served.guard.closed["headers_too_large"] == 2


def test_headers_just_under_the_limit_are_served(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        sock = served.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        assert b" 200 " in read_response(sock).split(b"\r\n")[0]


@pytest.mark.parametrize("garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"])
def test_unparsable_requests_get_a_json_400(tmp_path: Path, garbage: bytes) -> None:
    with serving(tmp_path) as served:
        sock = served.connect()
        sock.sendall(garbage)
        status, body = status_and_json(read_until_closed(sock))
        assert (status, body["error"]) == (400, "invalid_request")


# The cap.


def test_idle_sockets_cannot_lock_out_probes_or_clients(tmp_path: Path) -> None:
    """The bug: a full house of idle sockets made every request a plain-text 503, /healthz included."""
    limits = ConnectionLimits(max_connections=8, reserve=2, header_timeout=60, body_timeout=60)
    with serving(tmp_path, limits) as served:
        idle = [served.connect() for _ in range(20)]
        served.wait_for(lambda: served.guard.closed["evicted"] >= 20 - 6)
        for path in ("/healthz", "/readyz", "/v1/docs/none"):
            status, _ = status_and_json(served.request(served.connect(), path, close=True))
            assert status in (200, 404)
        # The oldest idle sockets went first.
        idle[0].settimeout(WAIT)
        assert read_until_closed(idle[0]) == b""
        assert len(served.guard.unauthenticated) <= limits.max_connections - limits.reserve


def test_authenticated_connections_are_never_pushed_out(tmp_path: Path) -> None:
    limits = ConnectionLimits(max_connections=8, reserve=2, header_timeout=60, body_timeout=60)
    with serving(tmp_path, limits) as served:
        mine = served.connect()
        assert b" 404 " in served.request(mine, "/v1/docs/x").split(b"\r\n")[0]
        assert len(served.guard.authenticated) == 1
        for _ in range(30):
            served.connect()
        served.wait_for(lambda: served.guard.closed["evicted"] >= 30 - 6)
        assert b" 404 " in served.request(mine, "/v1/docs/x").split(b"\r\n")[0]


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abcdef"])
def test_a_request_without_a_valid_token_does_not_authenticate(tmp_path: Path, token: str | None) -> None:
    limits = ConnectionLimits(max_connections=8, reserve=2, header_timeout=60, body_timeout=60)
    with serving(tmp_path, limits) as served:
        sock = served.connect()
        assert b" 401 " in served.request(sock, "/v1/docs/x", token=token).split(b"\r\n")[0]
        assert b" 200 " in served.request(sock, "/healthz", token=None).split(b"\r\n")[0]
        assert not served.guard.authenticated
        for _ in range(10):
            served.connect()
        assert read_until_closed(sock) == b""  # pushed out like any idle socket


# The guard alone: the refusal rule and the log.


class FakeConn:
    def __init__(self, waiting: bool, loop: Any) -> None:
        self.waiting_for_client = waiting
        self.loop = loop
        self.closed_for: str | None = None
        self.guard: ConnectionGuard | None = None

    def close_for(self, reason: str) -> None:
        self.closed_for = reason
        assert self.guard is not None
        self.guard.forget(self)  # type: ignore[arg-type]
        self.guard.note_close(reason, self.loop)


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        self.timers.append((delay, callback))
        return object()

    def run_timers(self) -> None:
        timers, self.timers = self.timers, []
        for _, callback in timers:
            callback()


def test_a_new_connection_is_refused_only_when_every_unauthenticated_one_is_busy() -> None:
    loop = FakeLoop()
    guard = ConnectionGuard(ConnectionLimits(max_connections=4, reserve=1))
    busy = [FakeConn(False, loop) for _ in range(3)]
    for conn in busy:
        conn.guard = guard
        assert guard.admit(conn)  # type: ignore[arg-type]
    newcomer = FakeConn(True, loop)
    assert not guard.admit(newcomer)  # type: ignore[arg-type]
    assert guard.closed["refused"] == 1
    busy[1].waiting_for_client = True
    assert guard.admit(newcomer)  # type: ignore[arg-type]
    assert busy[1].closed_for == "evicted" and busy[0].closed_for is None


def test_the_reserve_is_for_authenticated_connections() -> None:
    loop = FakeLoop()
    guard = ConnectionGuard(ConnectionLimits(max_connections=4, reserve=1))
    conns = [FakeConn(True, loop) for _ in range(4)]
    for conn in conns:
        conn.guard = guard
        assert guard.admit(conn)  # type: ignore[arg-type]
        guard.authenticate(conn)  # type: ignore[arg-type]
    # All four authenticated: the whole cap is theirs, and a fifth (unauthenticated) finds no one to push out.
    assert len(guard.authenticated) == 4
    assert not guard.admit(FakeConn(True, loop))  # type: ignore[arg-type]


def test_closes_are_logged_as_one_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    loop = FakeLoop()
    guard = ConnectionGuard(ConnectionLimits(log_interval=10), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="crdtstore.api"):
        for _ in range(500):
            guard.note_close("idle", loop)  # type: ignore[arg-type]
        guard.note_close("body_timeout", loop)  # type: ignore[arg-type]
        assert len(loop.timers) == 1  # one summary pending, not one line per close
        loop.run_timers()
        for _ in range(7):
            guard.note_close("idle", loop)  # type: ignore[arg-type]
        assert [delay for delay, _ in loop.timers] == [10.0]  # the next one waits out the interval
        now[0] += 10
        loop.run_timers()
    lines = [r for r in caplog.records if r.name == "crdtstore.api"]
    assert [r.closed for r in lines] == [{"idle": 500, "body_timeout": 1}, {"idle": 7}]  # type: ignore[attr-defined]
    assert guard.closed == {"idle": 507, "body_timeout": 1}


def test_serve_listeners_use_the_guarded_protocol_with_a_guard_each(tmp_path: Path) -> None:
    from crdtstore.config import ServeConfig
    from crdtstore.server import server_configs

    config = ServeConfig(data=tmp_path, max_connections=100, timeout_request_headers=3.0, peer_port=0)
    app = Starlette()
    app.state.api = None
    first, second = server_configs(app, config)
    for listener in (first, second):
        assert issubclass(listener.http, GuardedHttpToolsProtocol)
        assert listener.limit_concurrency is None  # uvicorn's plain-text 503 for everyone stays off
    assert first.http.guard is not second.http.guard
    assert first.http.guard.limits == ConnectionLimits(max_connections=100, reserve=12, header_timeout=3.0)
