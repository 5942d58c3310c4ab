"""The change feed of one replica: records written with each change, and ``changes()`` followers.

Theory of operation
-------------------

Each committed change appends a record to ``feed`` under ``(doc id, local
seq)``, in the change's own transaction (:meth:`ChangeFeed.append`, called by
:class:`~crdtstore.docstore.DocStore` on the writer thread); the seq is global
to the replica and never reused in this directory. Records are JSON objects::

    {"type": "change" | "delete", "seq": 17, "cursor": "f1.17.3.9c1e...",
     "version": "v1...", "origin": "eu-ab12.3.9c1e", "origin_seq": 5, "delta": [...]}

``changes(doc_id, since)`` resumes after ``since``, which is either

* a feed cursor (``record["cursor"]``): resume right after that record. A
  cursor names the incarnation that wrote the record, so a cursor from a
  timeline this directory no longer has (it was restored from a backup)
  is detected and answered with a resync instead of silently skipping; or
* a document version token (``ReadResult.version``): resume with the first
  record whose version the token does not contain. A document's versions
  only grow along its feed, so the records a token contains are a prefix,
  and read-then-subscribe misses nothing; or
* ``None``: the whole feed of the document.

After the history the generator follows live commits: each commit publishes
its records on the event loop (an ``on_commit`` hook, before the writer's
future resolves) to a bounded queue per subscriber. A subscriber that falls
``queue`` records behind loses its queue and gets one ``{"type": "resync",
...}`` record (a consistent snapshot of the document and the feed position
it reflects) and continues from there, so memory per subscriber stays
bounded.

A peer's change can also be *watched* (:meth:`ChangeFeed.watch_remote`):
the watcher gets its delta once the writer accepted it, before this
replica's commit and fsync (an ``on_applied`` hook, see
:mod:`crdtstore.commit`). The change is durable at its origin already; here
it may still be lost to a failed commit or a crash, so a watcher may show it
but must not count on it, and the feed itself publishes it only once it is
durable. The live channel watches, so that a change from another region
reaches its editors without waiting for this region's disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from crdtstore.causal import CausalContext
from crdtstore.errors import InvalidVersion
from crdtstore.storage import StorageClosed
from crdtstore.version import decode_version

if TYPE_CHECKING:
    from crdtstore.commit import WriteContext
    from crdtstore.document import Document
    from crdtstore.storage import Storage, Txn

__all__ = ["ChangeFeed", "InvalidCursor", "RemoteWatcher", "Since", "parse_since"]

logger = logging.getLogger(__name__)

_CURSOR_PREFIX = "f1."
_VERSION_PREFIX = "v1."

# A parsed ``since``: everything, a version (causal context), or (seq, cursor).
Since = CausalContext | tuple[int, str] | None

# Sees a peer's change before it is durable here: ((origin, origin seq), delta bytes).
RemoteWatcher = Callable[[tuple[str, int | None], bytes], None]

# Runs ``fn(txn, *args)`` in a read transaction off the event loop.
Reader = Callable[..., Awaitable[Any]]


class InvalidCursor(InvalidVersion):
    """A ``since`` that is neither a feed cursor nor a version token (HTTP 400)."""

    code = "invalid_cursor"


def parse_since(since: str | None) -> Since:
    """Check the syntax of a ``since`` token; what it points at is resolved in a read."""
    if since is None:
        return None
    if not isinstance(since, str):
        raise InvalidCursor("since must be a string")
    if since.startswith(_VERSION_PREFIX):
        return decode_version(since)
    if since.startswith(_CURSOR_PREFIX):
        parts = since[len(_CURSOR_PREFIX) :].split(".", 1)
        if len(since) > 256 or len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
            raise InvalidCursor("malformed feed cursor")
        return int(parts[0]), since
    raise InvalidCursor("since must be a feed cursor (f1.) or a version token (v1.)")


@dataclass(eq=False)
class _Subscriber:
    """One ``changes()`` consumer's live queue; touched only on the event loop."""

    limit: int
    queue: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)
    overflowed: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, record: dict[str, Any]) -> None:
        if self.overflowed:
            return
        if len(self.queue) >= self.limit:
            # Dropping everything is fine: the consumer resyncs from a snapshot.
            self.queue.clear()
            self.overflowed = True
        else:
            self.queue.append(record)
        self.wakeup.set()


class ChangeFeed:
    """Feed records of one replica and their live subscribers.

    Args:
        storage: The open storage.
        read: Runs ``fn(txn, *args)`` in a read transaction off the event loop.
        decode: The live document of an id in a read transaction, or None (for resync records).
        closing: True once the replica began to close; followers then end.
        closed_errors: What ``read`` raises once the replica closed under it (the feed then ends quietly).
        queue: Live records a subscriber may fall behind before a resync.
        page: Records read per read transaction when replaying history.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        read: Reader,
        decode: Callable[[Txn, str], Document | None],
        closing: Callable[[], bool],
        closed_errors: tuple[type[BaseException], ...],
        queue: int,
        page: int,
    ) -> None:
        self.storage = storage
        self._read = read
        self._decode = decode
        self._closing = closing
        self._closed_errors: tuple[type[BaseException], ...] = (*closed_errors, StorageClosed)
        self.queue = queue
        self.page = page
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._watchers: dict[str, list[RemoteWatcher]] = {}  # doc id -> callbacks (event loop only)
        self._own = storage.identity.replica_id
        self._incarnation = storage.identity.incarnation  # fixed for the storage's life; every record names it

    # Public methods for the writer thread.

    def append(
        self,
        ctx: WriteContext,
        doc_id: str,
        kind: str,
        origin: str | None,
        origin_seq: int | None,
        version: str,
        delta: bytes | None,
    ) -> None:
        """Write a record in the change's transaction; publish it once that commits."""
        storage = self.storage
        seq = storage.next_feed_seq(ctx.txn)
        record: dict[str, Any] = {
            "seq": seq,
            "cursor": f"{_CURSOR_PREFIX}{seq}.{self._incarnation}",
            "type": kind,
            "origin": origin,
            "version": version,
        }
        if kind == "change" or origin_seq is not None:
            record["origin_seq"] = origin_seq
        if delta is not None:
            # The delta encoding is JSON already: embed it without a decode/encode round.
            record["delta"] = orjson.Fragment(delta)
        raw = orjson.dumps(record)
        storage.put_feed(ctx.txn, doc_id, seq, raw)
        ctx.on_commit(lambda: self._publish(doc_id, raw))
        # A read of a dict another thread writes: a watcher that joins meanwhile
        # misses this early call and gets the record from the feed, as always.
        if delta is not None and origin is not None and origin != self._own and doc_id in self._watchers:
            seen = (origin, origin_seq)
            ctx.on_applied(lambda: self._show(doc_id, seen, delta))

    # Public methods for the event loop.

    def follow(self, doc_id: str, since: Since) -> AsyncIterator[dict[str, Any]]:
        """History after ``since``, then live commits, until the replica closes (see the module docstring)."""
        return self._changes(doc_id, since)

    def wake_all(self) -> None:
        """Wake every follower (the replica closed: they end)."""
        for subscribers in self._subscribers.values():
            for sub in subscribers:
                sub.wakeup.set()

    def watch_remote(self, doc_id: str, watcher: RemoteWatcher) -> Callable[[], None]:
        """Call ``watcher((origin, origin_seq), delta)`` with each peer's change to ``doc_id`` before it
        is durable here (see the module docstring); returns the function that stops it."""
        self._watchers.setdefault(doc_id, []).append(watcher)

        def stop() -> None:
            watchers = self._watchers.get(doc_id)
            if watchers is not None and watcher in watchers:
                watchers.remove(watcher)
                if not watchers:
                    del self._watchers[doc_id]

        return stop

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    # Private methods.

    def _show(self, doc_id: str, seen: tuple[str, int | None], delta: bytes) -> None:
        for watcher in list(self._watchers.get(doc_id, ())):
            try:
                watcher(seen, delta)
            except Exception:  # one broken watcher must not keep the others from theirs
                logger.exception("a watcher of remote changes failed")

    def _publish(self, doc_id: str, raw: bytes) -> None:
        subscribers = self._subscribers.get(doc_id)
        if subscribers:
            record = orjson.loads(raw)
            for sub in subscribers:
                sub.push(record)

    async def _changes(self, doc_id: str, since: Since) -> AsyncGenerator[dict[str, Any], None]:
        sub = _Subscriber(self.queue)
        # Subscribe before reading the history: a commit landing in between is
        # then in the history, in the queue, or both (deduplicated by seq).
        self._subscribers.setdefault(doc_id, set()).add(sub)
        try:
            # aclosing: when our consumer stops early, the inner generator is
            # closed right away rather than whenever the loop gets to it.
            async with contextlib.aclosing(self._follow(doc_id, since, sub)) as records:
                async for record in records:
                    yield record
        except self._closed_errors:
            if not self._closing():
                raise
            # The replica closed under a read of ours: end the feed like close() does.
        finally:
            subscribers = self._subscribers.get(doc_id)
            if subscribers is not None:
                subscribers.discard(sub)
                if not subscribers:
                    del self._subscribers[doc_id]

    async def _follow(self, doc_id: str, since: Since, sub: _Subscriber) -> AsyncGenerator[dict[str, Any], None]:
        """The body of :meth:`follow`, once ``sub`` is registered."""
        after, resync = await self._read(self._resolve_since, doc_id, since)
        if resync:
            snapshot = await self._read(self._snapshot_txn, doc_id)
            yield snapshot
            after = snapshot["seq"]
        while True:
            page = await self._read(self._page_txn, doc_id, after)
            for seq, raw in page:
                yield orjson.loads(raw)
                after = seq
            if len(page) < self.page:
                break
        while not self._closing():
            if sub.overflowed:
                sub.overflowed = False
                sub.queue.clear()
                snapshot = await self._read(self._snapshot_txn, doc_id)
                yield snapshot
                after = snapshot["seq"]
            elif sub.queue:
                record = sub.queue.popleft()
                if record["seq"] > after:
                    yield record
                    after = record["seq"]
            else:
                sub.wakeup.clear()
                await sub.wakeup.wait()

    def _page_txn(self, txn: Txn, doc_id: str, after: int) -> list[tuple[int, bytes]]:
        return self.storage.feed_range(txn, doc_id, after, self.page)

    def _resolve_since(self, txn: Txn, doc_id: str, since: Since) -> tuple[int, bool]:
        """Map ``since`` to (feed seq to resume after, whether a resync is needed first)."""
        storage = self.storage
        if since is None:
            return 0, False
        if isinstance(since, CausalContext):
            # Contained records form a prefix of the feed: walk back from the
            # newest to the first one the token contains (cheap for a fresh token).
            before = storage.last_feed_seq(txn, doc_id) + 1
            while True:
                page = storage.feed_before(txn, doc_id, before, self.page)
                for seq, raw in page:
                    if since.contains_context(decode_version(orjson.loads(raw)["version"])):
                        return seq, False
                if len(page) < self.page:
                    return 0, False
                before = page[-1][0]
        seq, cursor = since
        record = storage.get_feed(txn, doc_id, seq)
        if record is not None and orjson.loads(record)["cursor"] == cursor:
            return seq, False
        # Not a record of this document on this timeline (e.g. the directory
        # was restored from an older backup): resuming by number could skip
        # or repeat changes, so start from a snapshot.
        return 0, True

    def _snapshot_txn(self, txn: Txn, doc_id: str) -> dict[str, Any]:
        """A resync record: the document and the feed position it reflects, from one transaction."""
        storage = self.storage
        seq = storage.last_feed_seq(txn, doc_id)
        cursor = orjson.loads(storage.get_feed(txn, doc_id, seq) or b"{}").get("cursor") if seq else None
        doc = self._decode(txn, doc_id)
        record: dict[str, Any] = {"type": "resync", "seq": seq, "cursor": cursor, "exists": doc is not None}
        if doc is None:
            record.update(value=None, siblings=None, version=None)
        else:
            record.update(value=doc.value(), siblings=doc.siblings(), version=doc.version())
        return record
