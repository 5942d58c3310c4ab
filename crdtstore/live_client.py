"""The Python side of ``/v1/docs/{id}/live``: :class:`LiveDoc`, from ``AsyncClient.live(doc_id)``.

::

    async with client.live("notes:1") as doc:
        await doc.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hi"}])
        async for event in doc:  # snapshot, change and presence frames, as the server sent them
            print(doc.value)

Resume and resend are built in: after a dropped connection it reconnects
(with backoff) from the last version it holds and resends the batch in
flight under the same id, which the server acknowledges again instead of
applying twice. The document state and the rebase are the pure
:class:`crdtstore.rebase.LiveState`; this module only moves frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .rebase import LiveState

__all__ = ["LiveDoc", "Wire"]

# Close codes after which reconnecting cannot help: the token or the document id is refused.
_FATAL = {4400, 4401, 4403, 1008, 1009}


@dataclass(frozen=True, slots=True)
class Wire:
    """What a :class:`LiveDoc` borrows from the client that made it (passed in, so neither module imports the other).

    Attributes:
        headers: The upgrade request's headers (the bearer token).
        ssl_for: The TLS context for a ``wss://`` URL (None for ``ws://``).
        error: Builds the client's ``ApiError(status, code, message, detail)``.
        denied: Builds it from a refused upgrade's status and JSON body.
    """

    headers: dict[str, str]
    ssl_for: Callable[[str], ssl.SSLContext | None]
    error: Callable[[int, str, str, Any], Exception]
    denied: Callable[[int, bytes], Exception]


class LiveDoc:
    """One document followed and edited over its live websocket (made by ``AsyncClient.live``).

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8080``.
        doc_id: The document.
        wire: Headers, TLS and errors, from the client.
        w: The consistency level every batch waits for before its ack (None: ``one``).
        open_timeout: Seconds to open one connection.
        max_backoff: Longest wait between reconnects, in seconds.
        events: Frames kept for ``async for`` before the oldest are dropped.
    """

    def __init__(
        self,
        base_url: str,
        doc_id: str,
        *,
        wire: Wire,
        w: str | None = None,
        open_timeout: float = 10.0,
        max_backoff: float = 5.0,
        events: int = 10_000,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        self._base = (scheme, parts.netloc, parts.path + f"/v1/docs/{quote(doc_id, safe='')}/live")
        self._wire = wire
        self._w = w
        self._open_timeout = open_timeout
        self._max_backoff = max_backoff
        self.doc_id = doc_id
        self.state = LiveState(prefix=secrets.token_hex(6))
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: list[asyncio.Future[str]] = []  # one per apply() call not yet in a batch
        self._batches: dict[str, list[asyncio.Future[str]]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(events)
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self.reconnects = 0

    # Public methods.

    @property
    def value(self) -> dict[str, Any]:
        """The document as this client shows it: the server's value with the pending edits on top."""
        return self.state.value()

    @property
    def version(self) -> str | None:
        """The version token of the last server state this client holds."""
        return self.state.version

    async def apply(self, ops: list[dict[str, Any]]) -> str:
        """Edit (indexes into :attr:`value`) and wait for the ack; returns the version token it carries.

        Raises:
            crdtstore.client.ApiError: The server refused the batch (nothing of it was applied).
        """
        self._raise_failure()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.state.edit(ops)
        self._waiting.append(future)
        await self._flush()
        return await future

    async def presence(self, state: dict[str, Any] | None) -> None:
        """Send this connection's presence (None clears it); the server relays it, never stores it."""
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(orjson.dumps({"type": "presence", "state": state}).decode())

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def __aenter__(self) -> LiveDoc:
        self._ws = await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._ready.wait()
        self._raise_failure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        self._fail(self._wire.error(499, "closed", "the live document was closed", None))

    # Private methods: the connection.

    def _url(self) -> str:
        params = {"coalesce": "1"} | ({"version": self.state.version} if self.state.version else {})
        query = urlencode(params)
        return urlunsplit((*self._base, query, ""))

    async def _connect(self) -> ClientConnection:
        url = self._url()
        try:
            return await connect(
                url,
                additional_headers=self._wire.headers,
                ssl=self._wire.ssl_for(url),
                open_timeout=self._open_timeout,
                max_size=None,
                proxy=None,
            )
        except InvalidStatus as exc:
            raise self._wire.denied(exc.response.status_code, bytes(exc.response.body or b"")) from None

    async def _run(self) -> None:
        delay = 0.05
        try:
            while True:
                ws = self._ws
                assert ws is not None
                try:
                    for frame in list(self.state.unacked.values()):
                        # Resend under the same id: acknowledged again if it was applied, applied once if not.
                        await ws.send(orjson.dumps(frame).decode())
                    async for raw in ws:
                        data = orjson.loads(raw)
                        for message in data if isinstance(data, list) else (data,):
                            self._take(message)
                        delay = 0.05
                        await self._flush()
                    code = ws.close_code
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else None
                if code in _FATAL or (code is not None and 4400 <= code < 4500 and code != 4408):
                    reason = ws.close_reason or "closed"
                    status = code - 4000 if code >= 4000 else 400
                    raise self._wire.error(status, reason, f"live channel closed: {reason}", None)
                self._ws = None
                while self._ws is None:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff)
                    with contextlib.suppress(OSError, asyncio.TimeoutError):
                        self._ws = await self._connect()
                self.reconnects += 1
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)

    def _take(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        self.state.receive(message)
        if kind == "snapshot":
            self._ready.set()
        batch_id = message.get("id")
        if kind in ("ack", "error") and isinstance(batch_id, str):
            for future in self._batches.pop(batch_id, []):
                if future.done():
                    continue
                if kind == "ack":
                    future.set_result(message["version"])
                else:
                    future.set_exception(
                        self._wire.error(
                            message.get("status", 400), message["error"], message["message"], message["detail"]
                        )
                    )
            return
        if kind in ("change", "snapshot", "presence", "error"):
            if self._events.full():
                self._events.get_nowait()  # a reader that does not keep up loses the oldest frames
            self._events.put_nowait(message)

    async def _flush(self) -> None:
        ws = self._ws
        if ws is None:
            return
        calls = self.state.queued_calls
        frame = self.state.next_batch(self._w)
        if frame is None:
            return
        self._batches[frame["id"]], self._waiting = self._waiting[:calls], self._waiting[calls:]
        with contextlib.suppress(ConnectionClosed):  # the run loop reconnects and resends it
            await ws.send(orjson.dumps(frame).decode())

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self._events.get()
            if event is None:
                self._raise_failure()
                return
            yield event

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        for futures in [*self._batches.values(), self._waiting]:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        self._batches.clear()
        self._waiting = []
        self._ready.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
