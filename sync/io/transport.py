"""Websocket links between regions, the side that dials: the I/O of the replication protocol.

This module moves opaque binary messages; it knows nothing of what they
mean (that is :mod:`sync.protocol`) nor of what to do with them (that is
the replicator adapter, :mod:`crdtstore.replicator`). It has three parts:

* :class:`PeerConnection`, one link as the adapter sees it: ``send``,
  ``recv`` (None once the link is closed), an idempotent ``close``. Two
  implementations share it: :class:`ClientPeerConnection` here, over a
  ``websockets`` client connection (the side that dialed), and
  :class:`crdtstore.api.peerlink.ServerPeerConnection` over a Starlette
  ``WebSocket`` (the side that accepted, on the node's own HTTP server at
  ``/v1/peer``).
* :class:`TransportSettings`, the ``websockets`` settings of a link:
  ``max_size`` bounds one message, ``ping_interval``/``ping_timeout``
  detect a dead link (a silent partition sends no FIN), ``compression`` is
  off (deltas are small and compact already, and permessage-deflate costs
  memory per connection), and ``max_queue``/``write_limit`` bound the
  buffers so a slow peer pushes back instead of growing memory.
  ``ssl_context`` is the TLS of ``wss://`` dials: under mutual TLS it
  trusts only the cluster's CA and presents our client certificate.
* :class:`Dialer`, the reconnect loop of one configured peer: dial, hand
  the connection to a session callback, and when it ends wait the next
  delay of :func:`sync.backoff.backoff` (reset after a session that got
  going), until closed.

The accepting side's keepalive and size limits are the HTTP server's
(uvicorn's ``ws_ping_interval``, ``ws_ping_timeout``, ``ws_max_size``; see
:mod:`crdtstore.api.peerlink`).

**Messages before the handshake** are limited to
:data:`sync.messages.MAX_HANDSHAKE_BYTES` (4 KiB) by the websocket parser
itself, on both sides: a stranger's 16 MiB frame is refused from its header
(close 1009) before its payload is read, so it costs no memory. Once the
protocol reports ``peer_verified``, the adapter calls
:meth:`PeerConnection.lift_limit` and the link's full ``max_size`` applies.
The ``websockets`` parser reads its limit afresh for every frame
(``Protocol.max_message_size``), so a dialed link just sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from sync.backoff import backoff
from sync.messages import MAX_HANDSHAKE_BYTES

__all__ = [
    "ClientPeerConnection",
    "Dialer",
    "PeerConnection",
    "Session",
    "TransportSettings",
    "dial",
]

logger = logging.getLogger("sync.io.transport")


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """How peer links behave.

    Attributes:
        max_size: Largest message in bytes, either way.
        ping_interval: Seconds between keepalive pings.
        ping_timeout: Seconds without a pong before the link is closed as dead.
        open_timeout: Seconds a dial (TCP + handshake) may take.
        close_timeout: Seconds a closing handshake may take before the TCP connection is dropped.
        max_queue: Received messages buffered before reading from the socket stops (backpressure).
        write_limit: Bytes buffered for sending before ``send`` waits (backpressure).
        backoff_initial: First reconnect delay, seconds.
        backoff_max: Longest reconnect delay, seconds.
        ssl_context: TLS for ``wss://`` peers (CA to verify them against, our client certificate);
            None: the system's CAs and no client certificate. ``ws://`` dials refuse a context
            (they would silently go unencrypted).
    """

    max_size: int = 16 << 20
    ping_interval: float = 5.0
    ping_timeout: float = 10.0
    open_timeout: float = 10.0
    close_timeout: float = 5.0
    max_queue: int = 32
    write_limit: int = 1 << 20
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    ssl_context: ssl.SSLContext | None = None


class PeerConnection(Protocol):
    """One peer link as the adapter drives it.

    Attributes:
        remote: Who is on the other side (the dialed URL, or the client's address), for logs.
        close_code: The close code once closed, else None.
    """

    remote: str
    close_code: int | None

    async def send(self, data: bytes) -> None:
        """Send one message; waits while the send buffer is full. Raises ConnectionError if closed."""
        ...

    async def recv(self) -> bytes | None:
        """The next message, or None once the link closed (for whatever reason)."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the link (idempotent; never raises)."""
        ...

    def lift_limit(self) -> None:
        """The peer authenticated: accept messages up to the link's full size from now on."""
        ...


class ClientPeerConnection:
    """The dialing side, over a ``websockets`` client connection.

    Args:
        ws: The connection, opened with the pre-handshake message limit.
        remote: The dialed URL.
        max_size: The limit :meth:`lift_limit` sets.
    """

    def __init__(self, ws: ClientConnection, remote: str, *, max_size: int | None = None) -> None:
        self._ws = ws
        self.remote = remote
        self.close_code: int | None = None
        self._max_size = max_size

    def lift_limit(self) -> None:
        # Read by the parser for each frame it starts: frames after this call get the full limit.
        self._ws.protocol.max_message_size = self._max_size

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send(data)
        except websockets.ConnectionClosed as exc:
            self._closed(exc)
            raise ConnectionError(f"peer link to {self.remote} closed") from exc

    async def recv(self) -> bytes | None:
        try:
            message = await self._ws.recv()
        except websockets.ConnectionClosed as exc:
            self._closed(exc)
            return None
        # Peers speak binary; a text frame is the peer's bug, surfaced as bytes for the protocol to reject.
        return message.encode() if isinstance(message, str) else bytes(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
        with contextlib.suppress(Exception):  # closing is best effort: the link may already be gone
            await self._ws.close(code, reason[:120])

    def _closed(self, exc: websockets.ConnectionClosed) -> None:
        if self.close_code is None:
            # The peer's code; else ours, when we failed the link (a frame over our limit: 1009).
            frame = exc.rcvd if exc.rcvd is not None else exc.sent
            self.close_code = frame.code if frame is not None else 1006


async def dial(
    url: str,
    *,
    settings: TransportSettings,
    headers: Mapping[str, str] | None = None,
    address: tuple[str, int] | None = None,
) -> ClientPeerConnection:
    """Open a peer link to ``url`` (``ws://`` or ``wss://``).

    ``address`` is where to connect when the caller resolved the URL's host itself (membership from DNS
    resolves a name to several replicas): the URL's host still names the peer in the handshake and, over
    TLS, is the name its certificate must hold.

    Raises:
        OSError: TCP failed (refused, reset, unreachable), or TLS did (``ssl.SSLError``: a
            certificate that does not verify, or the peer refused ours).
        TimeoutError: The handshake took longer than ``open_timeout``.
        websockets.InvalidHandshake: The server answered but refused the upgrade.
        ValueError: ``settings.ssl_context`` with a ``ws://`` URL.
    """
    tls: dict[str, Any] = {}  # ssl= only for wss:// (websockets refuses ssl= on ws://)
    if settings.ssl_context is not None:
        if not url.startswith("wss://"):
            raise ValueError(f"a TLS context is set but {url} is not a wss:// URL")
        tls["ssl"] = settings.ssl_context
    if address is not None:
        tls["host"], tls["port"] = address  # create_connection's own; the URL's host stays the TLS name
    ws = await connect(
        url,
        additional_headers=dict(headers or {}),
        # Until the peer proves it holds the secret; lift_limit() raises it (see the module docstring).
        max_size=min(MAX_HANDSHAKE_BYTES, settings.max_size),
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        open_timeout=settings.open_timeout,
        close_timeout=settings.close_timeout,
        max_queue=settings.max_queue,
        write_limit=settings.write_limit,
        compression=None,
        # The Dialer owns reconnection (with our backoff); no proxy from the environment between regions.
        proxy=None,
        **tls,
    )
    return ClientPeerConnection(ws, url, max_size=settings.max_size)


Session = Callable[[PeerConnection], Awaitable[None]]


class Dialer:
    """Keeps one configured peer connected: dial, run a session, back off, repeat until closed.

    Args:
        url: The peer's websocket URL.
        session: Runs one connected link to its end (the adapter's loop). It
            must close the connection before returning; it should not raise
            (an exception is logged and counts as a failed session).
        settings: Link settings, including the backoff bounds.
        random: Jitter source for the backoff (seeded in tests).
        headers: Sent with every handshake.
        stable_after: A session that lasted this long resets the backoff.
        dial_fn: Opens one link (tests swap in a fake).
    """

    def __init__(
        self,
        url: str,
        session: Session,
        *,
        settings: TransportSettings,
        random: Callable[[], float] | None = None,
        headers: Mapping[str, str] | None = None,
        stable_after: float = 1.0,
        dial_fn: Callable[[str], Awaitable[PeerConnection]] | None = None,
    ) -> None:
        self.url = url
        self.settings = settings
        self.attempts = 0
        self.sessions = 0
        self.connected = False
        self._session = session
        self._random = random or _random.Random().random
        self._headers = dict(headers or {})
        self._stable_after = stable_after
        self._dial_fn = dial_fn
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the loop as a task of the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"dialer {self.url}")

    async def close(self) -> None:
        """Stop reconnecting and end the current session (idempotent)."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _delays(self) -> Iterator[float]:
        return backoff(
            initial=self.settings.backoff_initial,
            cap=max(self.settings.backoff_max, self.settings.backoff_initial),
            random=self._random,
        )

    async def _open(self) -> PeerConnection:
        if self._dial_fn is not None:
            return await self._dial_fn(self.url)
        return await dial(self.url, settings=self.settings, headers=self._headers)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delays = self._delays()
        tls_warned = False
        while not self._closing:
            self.attempts += 1
            try:
                conn = await self._open()
            # A cut link may accept TCP and then drop the handshake: that is
            # ConnectionClosed, and it must be retried like any refused dial.
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                # A peer certificate that does not verify is a configuration problem, not a flapping link:
                # worth a warning, once per run of failures. (A peer refusing *our* certificate cannot be
                # told apart here: TLS 1.3 servers just close, which looks like any dropped handshake.)
                if isinstance(exc, ssl.SSLError) and not tls_warned:
                    tls_warned = True
                    logger.warning("peer TLS handshake failed", extra={"peer": self.url, "error": repr(exc)})
                else:
                    logger.debug("dial failed", extra={"peer": self.url, "error": repr(exc)})
            else:
                tls_warned = False
                self.sessions += 1
                self.connected = True
                started = loop.time()
                try:
                    await self._session(conn)
                except asyncio.CancelledError:
                    await conn.close(1001, "going away")
                    raise
                except Exception:
                    logger.exception("peer session failed", extra={"peer": self.url})
                finally:
                    self.connected = False
                    await conn.close(1011, "session ended")
                if loop.time() - started >= self._stable_after:
                    delays = self._delays()  # a link that worked a while is a fresh start, not a flap
            await asyncio.sleep(next(delays))
