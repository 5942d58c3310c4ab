"""``/v1/docs/{id}/live``: one websocket per document for an editor (issue #12).

Op batches in, acks and index patches out, presence both ways. JSON text
frames; the README's "Live editing" section is the protocol's reference.

Per document, one :class:`DocChannel` follows the node's change feed,
keeps a mirror of the document's CRDT state, and turns each committed
delta into patches (:mod:`crdtstore.patches`) once, for every connection
on the document. A connection (:class:`LiveConn`) is three tasks: the
receiver (the handler), a batch worker (writes wait for durability without
holding up presence) and a sender draining a bounded queue: a reader that
falls that far behind is closed with 4008, not buffered without end.

Fan-out: every frame for a connection (a change for all, an ack for one)
joins that connection's list for the current loop pass, and one pass per
burst (:meth:`DocChannel._flush`, scheduled with ``call_soon``) writes each
connection's list as one frame (an array under ``?coalesce=1``), right
away through the server's synchronous write
(:data:`crdtstore.api.peerlink.SEND_NOWAIT_EXTENSION`), with no task
wakeup per connection; equal lists share one encoded frame. A connection
whose socket would make a send wait, whose sender is still busy, or that
runs under a server without the extension gets its frames through the
bounded queue and its sender instead, in the same order.

A change from another region is shown as soon as this region's writer
accepted it (:meth:`crdtstore.node.Node.watch_remote`), not once it is
durable here: it is durable at its origin, so waiting on this region's
commit and fsync would only add them to every cross-region edit's latency.
Its feed record follows and changes nothing then. Should a crash undo it
here, an edit against a version that holds it waits for it or is refused
(``version_ahead``), never misplaced. Our own region's changes are shown
once durable, like the feed: a client must not see, and edit on top of, a
write that a crash could take back.

Ordering promise to a client: the change that carries its own batch
(``"batch": id``) comes before that batch's ack, and nothing of it is sent
untagged; this is what lets a thin client drop the batch from its pending
edits instead of rebasing them over their own effect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.frames import Frame, Opcode

from crdtstore import codec
from crdtstore.api import limits as checks
from crdtstore.api import versions
from crdtstore.api.auth import Scope
from crdtstore.api.connections import mark_authenticated
from crdtstore.api.context import ApiContext
from crdtstore.api.errors import ApiError, error_response, status_and_body
from crdtstore.api.live_batches import BatchLedger, batch_key, ledger_for
from crdtstore.api.peerlink import SEND_NOWAIT_EXTENSION
from crdtstore.document import Document
from crdtstore.errors import DecodeError
from crdtstore.patches import before, patches
from crdtstore.version import decode_version, seal_version
from sync.quorum import Level

__all__ = ["LiveSettings", "configure", "live_channel"]

logger = logging.getLogger("crdtstore.api.live")

# A batch id's outcome: ("ok", sealed version, the WriteResult, whether this process applied it)
# or ("error", the error body, None, False).
BatchOutcome = tuple[str, Any, Any, bool]

_COALESCE_MAX = 256  # messages in one coalesced frame
_OWNED_MAX = 4096
CLOSE_SLOW_READER = 4008
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """The live channel's limits (one set per app).

    Attributes:
        send_queue: Messages waiting to be sent to one connection before it is closed as a slow reader.
        batch_queue: Batches of one connection waiting for the node before new ones are refused.
        presence_bytes: Largest presence state (encoded).
        presence_per_second: Presence updates a connection may send per second (a burst of as many).
        presence_ttl: Seconds a presence lives without a refresh.
        remembered_batches: Batch ids kept for resends (oldest forgotten first): in memory, and on disk
            with the writes they name (:mod:`crdtstore.api.live_batches`), so a restart forgets none.
        max_batch_id: Longest batch id (characters).
        version_wait: Seconds a batch whose ``version`` names changes this region has not received
            yet (a token from another region, or from before a crash that lost unflushed changes)
            waits for them before it is refused with ``version_ahead``: read against less, its
            indexes would edit another spot than the client meant.
    """

    send_queue: int = 1024
    batch_queue: int = 64
    presence_bytes: int = 1024
    presence_per_second: float = 20.0
    presence_ttl: float = 30.0
    remembered_batches: int = 100_000
    max_batch_id: int = 128
    version_wait: float = 5.0


# Public handler.


async def live_channel(ctx: ApiContext, websocket: WebSocket, *, wait_for_write: WaitForWrite) -> None:
    """Serve one live connection. Errors before the upgrade are HTTP denials (as on the feed).

    Args:
        wait_for_write: POST's wait for a write's ``w`` level (``crdtstore.api.routes`` passes it in,
            so that this module does not import the routes that register it).
    """
    hub = _hub(ctx)
    hub.wait_for_write = wait_for_write
    try:
        query_token = websocket.query_params.get("token")
        authorization = _header(websocket, b"authorization")
        scope = ctx.auth.authorize(authorization, query_token, Scope.READ)
        if authorization is not None or query_token is not None:
            mark_authenticated(websocket.scope)
        doc_id = checks.check_doc_id(websocket.path_params["id"], ctx.limits, websocket.scope.get("raw_path"))
        resume = _open_version(websocket.query_params.get("version"), doc_id, ctx)
        coalesce = websocket.query_params.get("coalesce") in ("1", "true")
        if not ctx.ready:
            raise ApiError(503, "not_ready", "the node is not started or is shutting down")
    except Exception as exc:
        await _deny(websocket, exc)
        return
    await websocket.accept()
    principal = hashlib.blake2b((query_token or authorization or "").encode(), digest_size=16).hexdigest()
    conn = LiveConn(websocket, hub, doc_id, scope, principal)
    conn.coalesce = coalesce
    channel = hub.join(doc_id, conn)
    try:
        await conn.run(channel, resume)
    finally:
        hub.leave(doc_id, conn)
    await conn.finish()


# The per-app registry.


# Returns what the wait reached (a ``sync.quorum.QuorumOutcome``), or None when this replica answered alone.
WaitForWrite = Callable[[ApiContext, str, Level, Any, str], Awaitable[Any]]


class LiveHub:
    """The document channels of one app and the batch ids it remembers."""

    wait_for_write: WaitForWrite

    def __init__(self, ctx: ApiContext, settings: LiveSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.channels: dict[str, DocChannel] = {}
        # (principal, document, batch id) -> the future of its outcome: a version or an error body.
        self.batches: collections.OrderedDict[tuple[str, str, str], asyncio.Future[BatchOutcome]] = (
            collections.OrderedDict()
        )
        self.ids = itertools.count(1)
        self._ledger: BatchLedger | None = None

    @property
    def ledger(self) -> BatchLedger:
        """Where a batch's id is recorded with its write (built at first use: after :func:`configure`)."""
        if self._ledger is None:
            self._ledger = ledger_for(self.ctx.node, keep=self.settings.remembered_batches)
        return self._ledger

    def join(self, doc_id: str, conn: LiveConn) -> DocChannel:
        channel = self.channels.get(doc_id)
        if channel is None or channel.failed is not None:
            channel = self.channels[doc_id] = DocChannel(self, doc_id)
        channel.conns.add(conn)
        conn.channel = channel
        return channel

    def leave(self, doc_id: str, conn: LiveConn) -> None:
        channel = self.channels.get(doc_id)
        if channel is None:
            return
        channel.conns.discard(conn)
        channel.drop_presence(conn.client_id)
        if not channel.conns and channel.applying == 0:
            del self.channels[doc_id]
            channel.stop()

    def remote_presence(self, event: Any) -> None:
        """A peer relayed an editor's presence (``sync.events.PresenceReceived``): for our editors of that document."""
        channel = self.channels.get(event.doc_id)
        if channel is None:
            return  # nobody here follows the document; its editors refresh their presence
        if not event.state:
            channel.drop_presence(event.client)
            return
        try:
            state = orjson.loads(event.state)
        except orjson.JSONDecodeError:
            return
        channel.set_presence(event.client, state, event.peer_id)

    def peer_lost(self, peer_id: str) -> None:
        """The last link to a peer closed: the presence it relayed expires now."""
        for channel in list(self.channels.values()):
            channel.drop_peer(peer_id)

    def remember(self, key: tuple[str, str, str]) -> tuple[asyncio.Future[BatchOutcome], bool]:
        """The outcome future of a batch id, and whether it is new (the caller then applies the batch)."""
        known = self.batches.get(key)
        if known is not None:
            self.batches.move_to_end(key)
            return known, False
        future: asyncio.Future[BatchOutcome] = asyncio.get_running_loop().create_future()
        self.batches[key] = future
        while len(self.batches) > self.settings.remembered_batches:
            self.batches.popitem(last=False)
        return future, True

    def forget(self, key: tuple[str, str, str]) -> None:
        self.batches.pop(key, None)


_COMMITS: set[asyncio.Task[None]] = set()  # writes in flight, referenced until done
_hubs: weakref.WeakKeyDictionary[ApiContext, LiveHub] = weakref.WeakKeyDictionary()


def _hub(ctx: ApiContext) -> LiveHub:
    hub = _hubs.get(ctx)
    if hub is None:
        hub = _hubs[ctx] = LiveHub(ctx, LiveSettings())
        if ctx.replicator is not None:
            ctx.replicator.presence_sink = hub.remote_presence
            ctx.replicator.presence_link_lost = hub.peer_lost
    return hub


def configure(ctx: ApiContext, settings: LiveSettings) -> None:
    """Set the live channel's limits of the app whose context is ``ctx`` (before its first connection)."""
    _hub(ctx).settings = settings


# One document.


@dataclass(eq=False)
class _Presence:
    state: Any
    expires: float
    source: LiveConn | str  # a local connection, or the replica id of the peer that relayed it


class DocChannel:
    """One document's mirror, its live connections and their presence."""

    def __init__(self, hub: LiveHub, doc_id: str) -> None:
        self.hub = hub
        self.doc_id = doc_id
        self.conns: set[LiveConn] = set()
        self.mirror = Document()
        self.version = self.mirror.version()  # the mirror's, kept with it
        # Peers' changes the mirror took before their feed records (see the module docstring).
        self.early: set[tuple[str, int | None]] = set()
        self.reading = False  # a whole-document read is under way: early changes wait for the feed
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None
        self.applying = 0  # batches of live connections inside node.apply
        # Local log seq -> the connection and batch id it came from: set by the write's commit hook, which
        # runs before the feed's followers see the record, so the follower never waits to know the owner.
        self.owned: dict[int, tuple[LiveConn, str]] = {}
        self.presence: dict[str, _Presence] = {}  # client name -> its presence, local and relayed
        self._dirty: list[LiveConn] = []  # connections with frames for this pass (see "Fan-out")
        self._flush_handle: asyncio.Handle | None = None
        self._advanced = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def stop(self) -> None:
        self._task.cancel()
        self._sweeper.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    # Fan-out: one pass for what a burst of changes left for each connection.

    def mark(self, conn: LiveConn) -> None:
        """``conn`` has frames for this pass: write them once the current burst is done."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def broadcast(self, data: str, *, skip: object = None, owner: LiveConn | None = None, owned: str = "") -> None:
        """``data`` to every connection but ``skip``; ``owner`` gets ``owned`` in its place."""
        for conn in self.conns:
            if conn is owner:
                conn.push(owned)
            elif conn is not skip:
                conn.push(data)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        frames: dict[tuple[int, ...], _Encoded] = {}  # equal lists of frames, encoded once
        for conn in dirty:
            conn.flush(frames)

    # Waiting for the mirror.

    async def until_ready(self) -> None:
        await self.ready.wait()
        if self.failed is not None:
            raise ApiError(503, "unavailable", "the document's live channel failed")

    async def until_contains(self, version: str) -> None:
        """Until the mirror (and so every connection's stream) holds ``version``."""
        wanted = decode_version(version)  # once: every record wakes every waiter
        while not self.mirror.ctx.contains_context(wanted):
            if self.failed is not None:
                raise ApiError(503, "unavailable", "the document's live channel failed")
            await self._advanced.wait()

    def batch_done(self) -> None:
        self.applying -= 1
        if not self.conns and self.applying == 0 and self.hub.channels.get(self.doc_id) is self:
            del self.hub.channels[self.doc_id]
            self.stop()

    # The feed follower.

    async def _run(self) -> None:
        node: Any = self.hub.ctx.node
        try:
            state = await node.read_state(self.doc_id)
            if state is not None:
                self.mirror = codec.decode_document(state)
                self.version = self.mirror.version()
            feed = node.changes(self.doc_id, self.version if state is not None else None)
            unwatch = node.watch_remote(self.doc_id, self._take_early)
            self.ready.set()
            try:
                async for record in feed:
                    await self._take(record)
            finally:
                unwatch()
                await feed.aclose()
            self.failed = ConnectionAbortedError("the node closed")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.exception("live channel of a document failed")
            self.failed = exc
        finally:
            self.ready.set()
            self._wake()
            for conn in list(self.conns):
                conn.close_soon(1001, "going away")

    async def _take(self, record: dict[str, Any]) -> None:
        node: Any = self.hub.ctx.node
        origin = "local" if record.get("origin") == node.replica_id else "remote"
        seen = (record.get("origin"), record.get("origin_seq"))
        if origin == "remote" and seen in self.early:
            self.early.discard(seen)  # shown already: the mirror holds it
            self._wake()
            return
        delta_json = record.get("delta")
        changes: list[dict[str, Any]] | None = None
        if delta_json is not None and record.get("type") != "resync":
            changes = self._join(orjson.dumps(delta_json))
        if changes is None:
            # A merged state, a resync or a join the mirror refused: compare whole documents.
            self.reading = True
            try:
                state = await node.read_state(self.doc_id)
            finally:
                self.reading = False
            fresh = codec.decode_document(state) if state is not None else Document()
            # What the connections hold now, early changes taken during the read included.
            changes = patches(before(self.mirror.root, None), fresh.root, None)
            self.mirror = fresh
            self.early.clear()  # their feed records join again, changing nothing or restoring them
        owner = None
        seq = record.get("origin_seq")
        if origin == "local" and isinstance(seq, int):
            owner = self.owned.pop(seq, None)
            if len(self.owned) > _OWNED_MAX:  # owners of records this follower skipped (a resync)
                self.owned = {s: o for s, o in self.owned.items() if s > seq}
        self._send(changes, origin, owner)

    def _take_early(self, seen: tuple[str, int | None], delta: bytes) -> None:
        """A peer's change, before it is durable here (see the module docstring)."""
        if self.reading:
            return  # its feed record comes, and is taken then
        changes = self._join(delta)
        if changes is None:
            return
        if len(self.early) >= _OWNED_MAX:  # feed records that never came (a failed commit): they would join as no-ops
            self.early.clear()
        self.early.add(seen)
        self._send(changes, "remote", None)

    def _join(self, delta_bytes: bytes) -> list[dict[str, Any]] | None:
        """Join a delta into the mirror: the patches it makes, or None if the mirror refused it (unchanged)."""
        try:
            delta = codec.decode_delta(delta_bytes)
            old = before(self.mirror.root, delta.root)
            self.mirror.join(delta)
        except DecodeError:
            return None
        return patches(old, self.mirror.root, delta.root)

    def _send(self, changes: list[dict[str, Any]], origin: str, owner: tuple[LiveConn, str] | None) -> None:
        """Push the mirror's new state to every connection (as ``changes``), then wake the version waiters."""
        old_version = self.version
        # Encoded from the mirror every time (well under a microsecond): with early changes in it,
        # the mirror may hold more than the node did at any one feed record.
        self.version = version = self.mirror.version()
        if changes or version != old_version:
            key = self.hub.ctx.version_key
            message: dict[str, Any] = {
                "type": "change",
                "version": seal_version(version, self.doc_id, key),
                "patches": changes,
                "origin": origin,
            }
            data = orjson.dumps(message).decode()
            if owner is not None and owner[0] in self.conns:
                owned = orjson.dumps(message | {"batch": owner[1]}).decode()
                self.broadcast(data, owner=owner[0], owned=owned)
            else:
                self.broadcast(data)
        self._wake()

    def _wake(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    # Presence: in memory, never stored.

    def set_presence(self, client: str, state: Any, source: LiveConn | str) -> None:
        self.presence[client] = _Presence(state, time.monotonic() + self.hub.settings.presence_ttl, source)
        self._broadcast_presence(client, state, source)

    def drop_presence(self, client: str) -> None:
        p = self.presence.pop(client, None)
        if p is not None:
            self._broadcast_presence(client, None, p.source)

    def drop_peer(self, peer_id: str) -> None:
        for client, p in list(self.presence.items()):
            if p.source == peer_id:
                self.drop_presence(client)

    def presence_snapshot(self, conn: LiveConn) -> list[dict[str, Any]]:
        return [{"client": client, "state": p.state} for client, p in self.presence.items() if p.source is not conn]

    def _broadcast_presence(self, client: str, state: Any, source: LiveConn | str) -> None:
        data = orjson.dumps({"type": "presence", "client": client, "state": state}).decode()
        self.broadcast(data, skip=source)
        replicator = self.hub.ctx.replicator
        if isinstance(source, LiveConn) and replicator is not None:
            # Ours: to the other regions (a relayed one is not relayed on: every region links to every other).
            replicator.relay_presence(self.doc_id, client, b"" if state is None else orjson.dumps(state))

    async def _sweep(self) -> None:
        ttl = self.hub.settings.presence_ttl
        while True:
            await asyncio.sleep(min(ttl / 3, 5.0))
            now = time.monotonic()
            for client, p in list(self.presence.items()):
                if p.expires <= now:
                    self.drop_presence(client)


# One connection.


@dataclass(slots=True)
class _Encoded:
    """One frame's text, shared by the connections whose list of frames it is; its bytes when first written."""

    messages: list[str]  # held, so that the ids keying it stay theirs for the whole pass
    text: str
    payload: bytes | None = None
    frame: bytes | None = None


@dataclass(eq=False)
class LiveConn:
    """One editor's websocket on one document."""

    websocket: WebSocket
    hub: LiveHub
    doc_id: str
    scope: Scope
    principal: str
    client_id: str = ""
    out: collections.deque[str] = field(default_factory=collections.deque)
    close_code: int | None = None
    close_reason: str = ""
    client_left: bool = False
    coalesce: bool = False  # the client takes a JSON array of messages in one frame
    channel: DocChannel = field(init=False)
    pending: list[str] = field(default_factory=list)  # frames of this fan-out pass, in order

    def __post_init__(self) -> None:
        self.client_id = f"{self.hub.ctx.node.replica_id}/{next(self.hub.ids)}"
        extension = (getattr(self.websocket, "scope", None) or {}).get("extensions", {}).get(SEND_NOWAIT_EXTENSION)
        # The server's synchronous write (see "Fan-out"); None: every frame goes through the sender task.
        self._send_nowait: Callable[[bytes, bytes | None], bool] | None = (
            extension["send"] if extension is not None else None
        )
        self._sending = False  # the sender task is inside a send: nothing may overtake its frame
        self._wakeup = asyncio.Event()
        self._batches: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.hub.settings.batch_queue)
        self._cancel: anyio.CancelScope | None = None
        self._tokens = self.hub.settings.presence_per_second
        self._refill = time.monotonic()

    # Sending.

    def push(self, data: str) -> None:
        """Send a frame with this fan-out pass (:meth:`DocChannel._flush`), after those pushed before it."""
        if self.close_code is not None:
            return
        if not self.pending:
            self.channel.mark(self)
        self.pending.append(data)

    def flush(self, frames: dict[tuple[int, ...], _Encoded]) -> None:
        """Write this pass's frames now, or queue them behind what the sender has not written yet.

        ``frames``: what this pass encoded so far, by the ids of the messages in it (shared by the
        connections of a document: most receive the same list).
        """
        pending, self.pending = self.pending, []
        if self.close_code is not None or not pending:
            return
        send = self._send_nowait
        if send is None or self.out or self._sending:
            self._enqueue(pending)
            return
        step = _COALESCE_MAX if self.coalesce else 1
        for start in range(0, len(pending), step):
            chunk = pending[start : start + step]
            key = tuple(map(id, chunk))
            encoded = frames.get(key)
            if encoded is None:
                text = chunk[0] if len(chunk) == 1 else "[" + ",".join(chunk) + "]"
                encoded = frames[key] = _Encoded(chunk, text)
            if encoded.payload is None:
                encoded.payload = encoded.text.encode()
                encoded.frame = Frame(Opcode.TEXT, encoded.payload).serialize(mask=False)
            if not send(encoded.payload, encoded.frame):
                # The socket would make a send wait: the rest goes by the sender, which awaits it.
                self._enqueue(pending[start:])
                return

    def _enqueue(self, messages: list[str]) -> None:
        """Queue for the sender task; past the bound the connection is closed as a slow reader, not buffered."""
        limit = self.hub.settings.send_queue
        for data in messages:
            if len(self.out) >= limit:
                self.close_soon(CLOSE_SLOW_READER, "slow reader: send queue full")
                return
            self.out.append(data)
        self._wakeup.set()

    def close_soon(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.out.clear()
            self.pending.clear()
        if self._cancel is not None:
            self._cancel.cancel()

    async def _sender(self) -> None:
        while True:
            out = self.out
            while out:
                if self.coalesce and len(out) > 1:
                    # What queued up while the last frame went out, as one frame: a websocket send costs
                    # more than the few bytes of a change, and under load many wait together.
                    text = "[" + ",".join([out.popleft() for _ in range(min(len(out), _COALESCE_MAX))]) + "]"
                else:
                    text = out.popleft()
                self._sending = True
                try:
                    await self.websocket.send_text(text)
                finally:
                    self._sending = False
            self._wakeup.clear()
            await self._wakeup.wait()

    # The connection's life.

    async def run(self, channel: DocChannel, resume: str | None) -> None:
        self.channel = channel
        try:
            await channel.until_ready()
        except ApiError as exc:
            _, body, _ = status_and_body(exc)
            self.close_soon(4000 + exc.status, body["error"])
            return
        self._hello(resume)
        async with anyio.create_task_group() as tg:
            self._cancel = tg.cancel_scope
            if self.close_code is not None:
                tg.cancel_scope.cancel()
            else:
                tg.start_soon(self._guard, self._sender)
                tg.start_soon(self._guard, self._worker)
                await self._guard(self._receiver)

    async def _guard(self, fn: Any) -> None:
        try:
            await fn()
        except WebSocketDisconnect:
            self.client_left = True
        except (OSError, RuntimeError):  # sending on a socket the client already closed
            self.client_left = True
        finally:
            if self._cancel is not None:
                self._cancel.cancel()

    def _hello(self, resume: str | None) -> None:
        """What a joining client needs first: the value (unless it holds this version already) and who is here."""
        mirror = self.channel.mirror
        if resume is None or resume != self.channel.version:
            version = seal_version(self.channel.version, self.doc_id, self.hub.ctx.version_key)
            self.push(orjson.dumps({"type": "snapshot", "version": version, "value": mirror.value()}).decode())
        for entry in self.channel.presence_snapshot(self):
            self.push(orjson.dumps({"type": "presence", **entry}).decode())

    async def finish(self) -> None:
        if self.client_left:
            return
        code = self.close_code or 1000
        with anyio.move_on_after(1):  # a slow reader may not take even the close frame
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                await self.websocket.close(code=code, reason=self.close_reason)

    # Receiving.

    async def _receiver(self) -> None:
        limit = self.hub.ctx.limits.max_body_bytes
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.client_left = True
                return
            raw = message.get("text")
            if raw is None:
                raw = (message.get("bytes") or b"").decode("utf-8", "replace")
            if len(raw) > limit:
                self.close_soon(CLOSE_TOO_BIG, f"frame over {limit} bytes")
                return
            try:
                self._dispatch(raw)
            except ApiError as exc:
                self._error(None, exc)

    def _dispatch(self, raw: str) -> None:
        data = checks.parse_json(raw.encode())
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise ApiError(400, "invalid_request", 'a frame is an object with a "type"')
        kind = data["type"]
        if kind == "batch":
            if self._batches.full():
                self._error(data.get("id"), ApiError(503, "overloaded", "too many batches waiting on this connection"))
                return
            self._batches.put_nowait(data)
        elif kind == "presence":
            self._presence(data)
        elif kind == "resume":
            resume = _open_version(data.get("version"), self.doc_id, self.hub.ctx)
            self._hello(resume)
        else:
            raise ApiError(400, "invalid_request", "unknown frame type", {"type": kind[:40]})

    def _presence(self, data: dict[str, Any]) -> None:
        settings = self.hub.settings
        now = time.monotonic()
        self._tokens = min(
            settings.presence_per_second, self._tokens + (now - self._refill) * settings.presence_per_second
        )
        self._refill = now
        if self._tokens < 1:
            raise ApiError(429, "rate_limited", f"at most {settings.presence_per_second:g} presence updates a second")
        self._tokens -= 1
        if set(data) - {"type", "state"} or "state" not in data:
            raise ApiError(400, "invalid_request", 'presence is {"type": "presence", "state": ...}')
        state = data["state"]
        size = len(orjson.dumps(state))
        if size > settings.presence_bytes:
            raise ApiError(413, "too_large", f"presence over {settings.presence_bytes} bytes", {"size": size})
        if state is None:
            self.channel.drop_presence(self.client_id)
        else:
            self.channel.set_presence(self.client_id, state, self)

    # Writing.

    async def _worker(self) -> None:
        while True:
            data = await self._batches.get()
            try:
                await self._batch(data)
            except ApiError as exc:
                self._error(data.get("id"), exc)

    async def _batch(self, data: dict[str, Any]) -> None:
        batch_id = data.get("id")
        settings = self.hub.settings
        if not isinstance(batch_id, str) or not 0 < len(batch_id) <= settings.max_batch_id:
            raise ApiError(400, "invalid_request", f"a batch has an id: a string of 1 to {settings.max_batch_id} chars")
        if self.scope < Scope.READWRITE:
            raise ApiError(403, "forbidden", "this token's scope is read", {"needed": "readwrite"})
        extra = sorted(set(data) - {"type", "id", "ops", "w", "version"})
        if extra:
            raise ApiError(400, "invalid_request", "unknown fields in the batch", {"fields": extra[:10]})
        level = _level(data.get("w"))
        ctx = self.hub.ctx
        ops = checks.check_batch({"ops": data.get("ops")}, ctx.limits)
        versions.open_op_versions(ops, self.doc_id, ctx.version_key)
        base = _open_version(data.get("version"), self.doc_id, ctx)
        if base is not None:
            if not self.channel.mirror.ctx.contains_context(decode_version(base)):
                try:
                    await asyncio.wait_for(self.channel.until_contains(base), settings.version_wait)
                except TimeoutError:
                    raise ApiError(
                        409, "version_ahead", "the version names changes this region has not received yet"
                    ) from None
            # The batch's indexes are read against the version the client last saw (README: versioned ops).
            ops = [op | {"version": base} if "index" in op and "version" not in op else op for op in ops]
        key = (self.principal, self.doc_id, batch_id)
        future, new = self.hub.remember(key)
        if new:
            # Its own task: a connection cut mid-write must not cancel a write the node may commit anyway,
            # or a resend could not learn its outcome and would apply it twice.
            task = asyncio.get_running_loop().create_task(self._commit(key, ops, future))
            _COMMITS.add(task)
            task.add_done_callback(_COMMITS.discard)
        outcome, value, result, applied = await asyncio.shield(future)
        if outcome != "ok":
            self.push(orjson.dumps({"type": "error", "id": batch_id, **value}).decode())
            return
        # The change carrying this batch goes out before its ack.
        await self.channel.until_contains(result.version)
        outcome = await self.hub.wait_for_write(ctx, self.doc_id, level, result, value)
        # As a POST's 504 says how far a write got: the replicas holding it now, of those its w needs.
        reached, needed = (1, 1) if outcome is None else (outcome.reached, outcome.needed)
        ack: dict[str, Any] = {"type": "ack", "id": batch_id, "version": value, "reached": reached, "needed": needed}
        if not new or not applied:
            ack["again"] = True
        self.push(orjson.dumps(ack).decode())

    async def _commit(self, key: tuple[str, str, str], ops: list[dict[str, Any]], future: asyncio.Future[Any]) -> None:
        ctx = self.hub.ctx
        channel = self.channel
        channel.applying += 1

        def owned(result: Any) -> None:
            if result.seq:
                channel.owned[result.seq] = (self, key[2])

        try:
            # A batch applied before a restart is not owned: its change went out then, nothing of it comes now.
            result, applied = await self.hub.ledger.apply_once(self.doc_id, ops, batch_key(*key), on_commit=owned)
            future.set_result(("ok", seal_version(result.version, self.doc_id, ctx.version_key), result, applied))
        except Exception as exc:
            status, body, _ = status_and_body(exc)
            if status >= 500:
                self.hub.forget(key)  # transient (overloaded, closing): a resend may try again
                if status not in (503, 504):
                    logger.error("live batch failed", exc_info=exc)
            future.set_result(("error", {"status": status, **body}, None, False))
        finally:
            channel.batch_done()

    def _error(self, batch_id: Any, exc: BaseException) -> None:
        status, body, _ = status_and_body(exc)
        if status >= 500 and status not in (503, 504):
            logger.error("live batch failed", exc_info=exc)
        ident = batch_id if isinstance(batch_id, str) and len(batch_id) <= self.hub.settings.max_batch_id else None
        self.push(orjson.dumps({"type": "error", "id": ident, "status": status, **body}).decode())


# Private helpers.


def _level(raw: Any) -> Level:
    if raw is None or raw == "":
        return Level.ONE
    try:
        return Level(raw)
    except ValueError:
        allowed = ", ".join(c.value for c in Level)
        raise ApiError(400, "invalid_request", f"w must be one of {allowed}", {"w": str(raw)[:40]}) from None


def _open_version(raw: Any, doc_id: str, ctx: ApiContext) -> str | None:
    if raw is None:
        return None
    opened = versions.open_since(raw, doc_id, ctx.version_key) if isinstance(raw, str) else None
    if opened is None or opened == raw:  # a feed cursor or not a sealed token
        raise ApiError(400, "invalid_version", "version must be a version token of this document")
    return opened


def _header(websocket: WebSocket, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = websocket.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def _deny(websocket: WebSocket, exc: Exception) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(exc))
    else:
        status, body, _ = status_and_body(exc)
        await websocket.close(code=4000 + status, reason=body["error"])
