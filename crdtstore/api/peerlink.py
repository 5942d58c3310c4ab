"""The accepting side of peer links, in the node's HTTP server (Starlette on uvicorn).

A peer region dials ``/v1/peer`` (:mod:`sync.io.transport` is the dialing
side); the route hands the accepted websocket to the replicator as a
:class:`ServerPeerConnection`, one :class:`sync.io.transport.PeerConnection`.

The accepting side's keepalive and size limits are the HTTP server's
(uvicorn's ``ws_ping_interval``, ``ws_ping_timeout``, ``ws_max_size`` for
API websockets, and :func:`gated_protocol`'s ``peer_max_size`` for peer
links); the CLI sets them from the same settings as the dialing side's.

**Messages before the handshake** are limited to
:data:`sync.messages.MAX_HANDSHAKE_BYTES` (4 KiB), as on a dialed link.
uvicorn offers no setting for a limit that changes during a connection, so
the node's servers run :class:`GatedWebSocketProtocol`: uvicorn's own
websockets (sans-I/O) protocol, whose peer-link paths start at the small
limit and expose the lift to the app as an ASGI extension in the scope.

**Writing without a wakeup.** The same protocol offers the node's other
websockets (the live channel, :mod:`crdtstore.api.live`) a synchronous
write, :data:`SEND_NOWAIT_EXTENSION`: a fan-out to many editors then writes
each socket in one pass, with no task wakeup per connection, and one
encoded frame is shared by every connection without a compression
extension. It writes only when ``websocket.send`` would not wait (the
transport takes data, the connection is open); else it returns False and
the caller awaits the ordinary ASGI send, which keeps uvicorn's backpressure.
"""

from __future__ import annotations

import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from sync.messages import MAX_HANDSHAKE_BYTES

__all__ = [
    "LIFT_EXTENSION",
    "PEER_PATHS",
    "SEND_NOWAIT_EXTENSION",
    "GatedWebSocketProtocol",
    "ServerPeerConnection",
    "gated_protocol",
]

LIFT_EXTENSION = "crdtstore.peer.lift_limit"
"""The ASGI scope extension of :class:`GatedWebSocketProtocol`: ``{"lift": callable}``."""

SEND_NOWAIT_EXTENSION = "crdtstore.ws.send_nowait"
"""The ASGI scope extension of :class:`GatedWebSocketProtocol` on API websockets: ``{"send": callable}``,
``send(payload, frame) -> bool`` (see :meth:`GatedWebSocketProtocol.send_nowait`)."""

PEER_PATHS = frozenset({"/v1/peer"})
"""Websocket paths that carry peer links (gated until the peer authenticates)."""


class ServerPeerConnection:
    """The accepting side, over an accepted Starlette ``WebSocket``."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        client = websocket.client
        self.remote = f"{client.host}:{client.port}" if client else "unknown"
        self.close_code: int | None = None

    def lift_limit(self) -> None:
        # Absent under another ASGI server: its own limit applies from the start, and the protocol
        # still refuses a message over MAX_HANDSHAKE_BYTES before the handshake (once buffered).
        extension = self._ws.scope.get("extensions", {}).get(LIFT_EXTENSION)
        if extension is not None:
            extension["lift"]()

    async def send(self, data: bytes) -> None:
        if self.close_code is not None:
            raise ConnectionError(f"peer link from {self.remote} closed")
        try:
            await self._ws.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self.close_code = getattr(exc, "code", 1006)
            raise ConnectionError(f"peer link from {self.remote} closed") from exc

    async def recv(self) -> bytes | None:
        if self.close_code is not None:
            return None
        try:
            message = await self._ws.receive()
        except (RuntimeError, OSError):
            self.close_code = 1006
            return None
        if message["type"] == "websocket.disconnect":
            self.close_code = int(message.get("code", 1005))
            return None
        data = message.get("bytes")
        if data is None:
            text = message.get("text") or ""
            data = text.encode()
        return bytes(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
        if self._ws.application_state is WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            await self._ws.close(code=code, reason=reason[:120])


class GatedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, with a small message limit on peer links until lifted.

    Pass the class, or a :func:`gated_protocol`, as ``uvicorn.Config(ws=...)``.
    On a path of :data:`PEER_PATHS` the limit is
    :data:`~sync.messages.MAX_HANDSHAKE_BYTES` until the app calls
    ``scope["extensions"][LIFT_EXTENSION]["lift"]()``
    (:meth:`ServerPeerConnection.lift_limit` does), then :attr:`peer_max_size`
    (None: uvicorn's ``ws_max_size``). Other paths get ``ws_max_size`` from the
    start. The parser checks the limit against each frame's header, so a frame
    over it closes the connection with 1009 before its payload is read.
    """

    peer_max_size: int | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # Small until the request names its path: a client sends no frame before the 101 it waits for.
        self.conn.max_message_size = min(MAX_HANDSHAKE_BYTES, self.config.ws_max_size)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is None:
            return  # the upgrade was refused: no app runs
        if scope["path"][len(self.root_path) :] in PEER_PATHS:
            scope["extensions"][LIFT_EXTENSION] = {"lift": self._lift}
        else:
            self.conn.max_message_size = self.config.ws_max_size
            scope["extensions"][SEND_NOWAIT_EXTENSION] = {"send": self.send_nowait}

    def send_nowait(self, payload: bytes, frame: bytes | None = None) -> bool:
        """Write one text message now if ``websocket.send`` would not wait; False (nothing written) otherwise.

        Args:
            payload: The message, UTF-8.
            frame: ``payload`` as an unmasked, uncompressed text frame, ready to write; used when the
                connection negotiated no extension (else the message is encoded for this connection).
        """
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.transport.is_closing()
            or self.conn.state is not State.OPEN
        ):
            return False
        if frame is not None and not self.conn.extensions:
            self.transport.write(frame)
        else:
            self.conn.send_text(payload)
            self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def _lift(self) -> None:
        self.conn.max_message_size = self.peer_max_size if self.peer_max_size is not None else self.config.ws_max_size


def gated_protocol(*, peer_max_size: int) -> type[GatedWebSocketProtocol]:
    """:class:`GatedWebSocketProtocol` whose peer links, once authenticated, take messages up to ``peer_max_size``.

    A listener then keeps ``ws_max_size`` for its API websockets and gives peer
    links their own limit (uvicorn has one size for every websocket).
    """
    return type("GatedWebSocketProtocol", (GatedWebSocketProtocol,), {"peer_max_size": peer_max_size})
