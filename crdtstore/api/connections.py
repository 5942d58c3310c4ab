"""Deadlines and a connection cap for the HTTP listener, below the app.

Why here, and why this shape
----------------------------

Uvicorn (0.54, httptools) times out one thing: a keep-alive connection
idle *after a response* (``timeout_keep_alive``); the first byte of the next
request cancels that timer and nothing re-arms it until a response goes out.
A connection that never sends a byte, or sends a header line every few
seconds, or a body one byte at a time, holds its socket forever. Its only
cap, ``limit_concurrency``, counts every open connection and task and
answers everyone past it, ``/healthz`` and peers included, with a plain-text
503: 2,000 idle sockets take the node off the air.

A middleware cannot fix that: the app first hears of a request once its
headers are complete, and cannot tell a slow client from its own slowness.
The protocol object sees every byte, so :class:`GuardedHttpToolsProtocol`
subclasses uvicorn's own (passed as ``uvicorn.Config(http=...)``) and adds,
per connection, one timer and a phase:

* headers: from the accept, or from the end of the previous response, the
  next request's headers must be complete within ``header_timeout`` and
  ``max_header_bytes``; uvicorn's ``timeout_keep_alive`` still closes a
  keep-alive connection that sends nothing sooner;
* body: from the end of the headers, the body must be complete within
  ``body_timeout``;
* app: the request is the app's; no deadline (the app bounds its own work).

Each deadline falls at a random point of the last quarter of its limit, so
that a thousand sockets opened together do not all expire (and reconnect)
in one turn of the event loop: such a burst stalled reads for tens of
milliseconds in ``bench/connections.py``. Past a deadline the connection
is closed, with a JSON 408 when a request had begun and no response has,
and counted. One summary line per ``log_interval`` says how many were
closed and why, not a line each.

The cap (:class:`ConnectionGuard`, one per listener): a connection is
*unauthenticated* until a request on it carries a valid token (the app
calls the ``crdtstore.connection`` scope extension). At most
``max_connections - reserve`` connections are unauthenticated; at the cap a
new connection closes the oldest unauthenticated one that is waiting for
headers or a body (a probe, a peer's upgrade or a new client gets in by
pushing out an idle or trickling socket), and is itself refused only when
every unauthenticated connection has a request in the app. Authenticated
connections are never pushed out and may use the whole of
``max_connections``. A websocket upgrade leaves this module's care: the
feed authenticates in its handshake, and the replication protocol bounds a
peer's handshake.

What cannot be answered in JSON here: a request line or header that the
parser rejects gets a JSON 400 (or 431), but a TLS handshake failure, a
websocket handshake the ``websockets`` library refuses, and a connection
refused at the cap get no HTTP answer at all.

One write per small response
----------------------------

Uvicorn's :class:`RequestResponseCycle` writes a response's status line and
headers in one ``transport.write`` and each body chunk in another: two
``send`` syscalls for every small response. The protocol gives each cycle a
:class:`_HeadHoldingTransport` instead of the socket's transport: it holds
the head and sends it together with the first body write (one syscall), and
sends it alone when the response completes without a body write (HEAD,
uvicorn writes nothing), at a close, or one turn of the event loop after the
head if no body came (a stream that waits for its first event goes out at
once, as before). Everything else (HEAD, 100-continue, 204/304, chunking,
keep-alive, pipelining, close) is uvicorn's own code, unchanged: only where
its bytes are written moves. It relies on the cycle's ``transport``,
``response_started``, ``disconnected`` and ``on_response`` attributes;
``tests/api/test_onewrite.py`` fails if uvicorn changes them.
"""

from __future__ import annotations

import asyncio
import http
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from crdtstore.api.errors import error_body

__all__ = [
    "EXTENSION",
    "ConnectionGuard",
    "ConnectionLimits",
    "GuardedHttpToolsProtocol",
    "guarded_protocol",
    "mark_authenticated",
]

logger = logging.getLogger("crdtstore.api")

# A generator of its own: the module-level random functions share one state with whatever else
# runs in the process (a test's hypothesis draws in the server's process flag a change to it).
_jitter = random.Random().random

EXTENSION = "crdtstore.connection"
"""The key, in a request scope's ``extensions``, of ``{"authenticated": callable}``."""

_HEADERS, _BODY, _APP = "headers", "body", "app"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Limits of one listener (keyword-only, immutable).

    Attributes:
        max_connections: Most open HTTP connections.
        reserve: Of those, how many only authenticated connections may use.
        header_timeout: Seconds from the accept (or the previous response) to the end of the next request's headers.
        body_timeout: Seconds from the end of a request's headers to the end of its body.
        max_header_bytes: Largest request line plus headers.
        log_interval: Seconds between two summary lines of closed connections.
    """

    max_connections: int = 4096
    reserve: int = 512
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    log_interval: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.reserve < self.max_connections:
            raise ValueError("reserve must be at least 0 and below max_connections")
        if self.header_timeout <= 0 or self.body_timeout <= 0 or self.max_header_bytes <= 0:
            raise ValueError("timeouts and max_header_bytes must be positive")


def mark_authenticated(scope: Any) -> None:
    """Tell the listener that the connection of ``scope`` carried a valid token (no-op elsewhere)."""
    extension = scope.get("extensions", {}).get(EXTENSION)
    if extension is not None:
        extension["authenticated"]()


class ConnectionGuard:
    """The connections of one listener: who is unauthenticated, in age order, and what was closed.

    Args:
        limits: The listener's limits.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, limits: ConnectionLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        # Insertion order is age order: the first evictable one is the oldest.
        self.unauthenticated: dict[GuardedHttpToolsProtocol, None] = {}
        self.authenticated: set[GuardedHttpToolsProtocol] = set()
        self.closed: Counter[str] = Counter()
        """Every close since start, by reason (tests and metrics read it)."""
        self._unlogged: Counter[str] = Counter()
        self._last_log = float("-inf")
        self._flush: asyncio.TimerHandle | None = None

    # Public methods for the protocol.

    def admit(self, conn: GuardedHttpToolsProtocol) -> bool:
        """Take a new connection; False if it must be refused (closing someone else's when there is room to make)."""
        limits = self.limits
        full = len(self.unauthenticated) >= limits.max_connections - limits.reserve
        if full or len(self.unauthenticated) + len(self.authenticated) >= limits.max_connections:
            victim = next((c for c in self.unauthenticated if c.waiting_for_client), None)
            if victim is None:
                self.note_close("refused", conn.loop)
                return False
            victim.close_for("evicted")
        self.unauthenticated[conn] = None
        return True

    def authenticate(self, conn: GuardedHttpToolsProtocol) -> None:
        if conn in self.unauthenticated:  # not if it was closed meanwhile
            del self.unauthenticated[conn]
            self.authenticated.add(conn)

    def forget(self, conn: GuardedHttpToolsProtocol) -> None:
        self.unauthenticated.pop(conn, None)
        self.authenticated.discard(conn)

    def note_close(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        """Count a close; the log hears of it in the next summary line, at most one per ``log_interval``."""
        self.closed[reason] += 1
        self._unlogged[reason] += 1
        if self._flush is None:
            delay = max(0.0, self._last_log + self.limits.log_interval - self.clock())
            self._flush = loop.call_later(delay, self._log_summary)

    # Private methods.

    def _log_summary(self) -> None:
        self._flush = None
        self._last_log = self.clock()
        counts, self._unlogged = dict(self._unlogged), Counter()
        logger.warning(
            "closed slow, idle or surplus client connections",
            extra={
                "closed": counts,
                "open_unauthenticated": len(self.unauthenticated),
                "open_authenticated": len(self.authenticated),
            },
        )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with request deadlines, a header size limit and the guard's cap.

    Not used directly: :func:`guarded_protocol` makes a subclass bound to one guard.
    """

    guard: ClassVar[ConnectionGuard]

    # Public methods for the guard.

    @property
    def waiting_for_client(self) -> bool:
        """True while the next step is the client's (its headers or body): such a connection may be pushed out."""
        return self._phase is not _APP

    def close_for(self, reason: str) -> None:
        """Close this connection and count why; a JSON 408 first when a request began and has no response yet."""
        if self.transport is None or self.transport.is_closing():
            return
        self._cancel_deadline()
        self.guard.forget(self)  # now, not at connection_lost: the slot is free for whoever pushed this one out
        began = self._phase is _BODY or (self._phase is _HEADERS and self._received > 0)
        if reason != "evicted" and began and (self.cycle is None or not self.cycle.response_started):
            message = "the request's headers took too long" if self._phase is _HEADERS else "the body took too long"
            self.transport.write(self._json_response(408, "request_timeout", message))
        self.guard.note_close(reason, self.loop)
        self.transport.close()

    # Protocol interface (uvicorn's methods, extended).

    # asyncio.Protocol takes a BaseTransport; uvicorn narrows it to Transport with the same ignore.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._phase = _HEADERS
        self._received = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._oversized = False
        # The ASGI spec types an extension as dict[object, object] (uvicorn's scope TypedDict too).
        self._extension: dict[object, object] = {"authenticated": self._authenticated}
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.abort()  # no request yet: nothing to answer, and no lingering in TIME_WAIT here
            return
        self._arm(self.guard.limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is _HEADERS:
            self._received += len(data)
        super().data_received(data)
        # Headers still incomplete: every byte of this phase was header, so the count is exact.
        if (
            self._phase is _HEADERS
            and self._received > self.guard.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._oversized = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {EXTENSION: self._extension}

    def on_headers_complete(self) -> None:
        # Cheap test first: the parsed headers are no larger than the bytes received.
        if self._received > self.guard.limits.max_header_bytes and self._parsed_header_bytes() > (
            self.guard.limits.max_header_bytes
        ):
            self._oversized = True
            raise _HeadersTooLarge  # stops the parser; uvicorn answers through send_400_response
        self._phase = _BODY
        self._arm(self.guard.limits.body_timeout, "body_timeout")
        previous = self.cycle
        super().on_headers_complete()
        # A new cycle (not an upgrade): its task has not run yet, so nothing was written through the socket.
        if self.cycle is not previous and self.cycle is not None:
            _HeadHoldingTransport(self.cycle, self.loop)

    def on_message_complete(self) -> None:
        if self._phase is _BODY:
            self._phase = _APP
            self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._phase = _HEADERS
            self._received = 0
            self._arm(self.guard.limits.header_timeout, "header_timeout")

    def handle_websocket_upgrade(self) -> None:
        # The websocket protocol takes the socket from here on; this module's deadlines end.
        self._phase = _APP
        self._cancel_deadline()
        self.guard.forget(self)
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        """Uvicorn's answer to a request it cannot parse, as JSON (431 when the headers were too large)."""
        self._cancel_deadline()
        if self._oversized:
            limit = self.guard.limits.max_header_bytes
            response = self._json_response(431, "headers_too_large", f"request line and headers exceed {limit} bytes")
            self.guard.note_close("headers_too_large", self.loop)
        else:
            response = self._json_response(400, "invalid_request", "the request is not valid HTTP/1.1")
        self.transport.write(response)
        self.transport.close()

    # Private methods.

    def _authenticated(self) -> None:
        self.guard.authenticate(self)

    def _arm(self, seconds: float, reason: str) -> None:
        self._cancel_deadline()
        # Somewhere in the last quarter of the limit: sockets opened together (a flood) then expire over
        # a while instead of in one turn of the event loop, which would stall every other request.
        self._deadline = self.loop.call_later(seconds * (0.75 + 0.25 * _jitter()), self._expire, reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, reason: str) -> None:
        self._deadline = None
        # Nothing of a next request arrived: an idle connection rather than a slow one.
        self.close_for("idle" if reason == "header_timeout" and self._received == 0 else reason)

    def _parsed_header_bytes(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _json_response(self, status: int, code: str, message: str) -> bytes:
        body = orjson.dumps(error_body(code, message))
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("ascii")]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        return b"".join(head) + body


class _HeadHoldingTransport(asyncio.Transport):
    """One cycle's view of the socket: the response head waits for the first body write.

    It installs itself as ``cycle.transport`` and wraps ``cycle.on_response``; the protocol's
    own writes (400, 408, upgrades) and flow control keep the socket's transport.
    """

    __slots__ = ("_cycle", "_loop", "_transport", "_held", "_flush_handle", "_head_seen")

    def __init__(self, cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._cycle = cycle
        self._loop = loop
        self._transport = cycle.transport
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._head_seen = False
        on_response = cycle.on_response

        def completed() -> None:
            self._flush()  # a HEAD response has no body write
            # Nothing is held any more: the cycle gets the socket back, so that it and this object are not a
            # reference cycle (freed at once, not by the garbage collector, one per request).
            cycle.transport = self._transport
            on_response()

        cycle.on_response = completed
        cycle.transport = self

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._cancel_flush()
            if data:
                self._transport.writelines((held, data))  # one syscall; uvloop does not even copy
            else:
                self._transport.write(held)
        elif not self._head_seen and self._cycle.response_started:
            # The first write after the start message is the head (a 100 Continue comes before it).
            self._head_seen = True
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def _flush(self) -> None:
        self._cancel_flush()
        held, self._held = self._held, None
        if held is not None and not self._cycle.disconnected:
            self._transport.write(held)

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None


class _HeadersTooLarge(Exception):
    """Raised in a parser callback to stop parsing a request whose headers are over the limit."""


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with a guard of its own (one per listener)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": ConnectionGuard(limits)})
