"""The region node: one replica's documents, storage, writer and change feed.

Theory of operation
-------------------

:class:`Node` is the facade the HTTP API (``crdtstore/api/``), the CLI and,
later, the replicator call. It owns a :class:`~crdtstore.storage.Storage`
(one LMDB environment) and a :class:`~crdtstore.commit.GroupCommitWriter`
(one writer thread), and keeps the asyncio side free of blocking work:
writes run on the writer thread, reads run in the default executor.

**Writes.** ``apply`` sends one function to the writer. Inside the group
commit's child transaction it loads the document, applies the ops under the
node's replica id and a hybrid-logical-clock timestamp, and, in the same
transaction, appends the encoded delta to the document's tail and to the log
under ``(replica id, next seq)``, records the document's new digest in its
Merkle leaf, stores the read view, advances the version vector and the
persisted HLC, and appends a change-feed record. The call returns only after
that transaction committed (fsync).

**Snapshot plus tail.** A document is stored as a snapshot (its full
encoding) and a tail of encoded deltas joined after it in order (see
:mod:`crdtstore.storage`). A write already has its delta encoded for the log,
so appending it costs O(delta) where re-encoding the document cost
O(document). The writer compacts (re-encodes the snapshot and drops the
tail, in the write's own transaction) when the tail holds
``tail_max_deltas`` deltas or more bytes than the snapshot (or than
``tail_min_bytes``, whichever is more): encoding a document of ``S`` bytes
happens at most once per ``S`` bytes of deltas, so a write's amortized
encoding cost is O(its delta), and a load decodes at most twice the
snapshot's bytes (or ``tail_min_bytes``) plus a bounded number of joins. The
floor keeps a small document, whose delta is about its own size, from being
re-encoded by nearly every write. Every commit
leaves a loadable document: snapshot and tail change in one transaction.

**The Merkle digest** of a document is ``Document.version_digest()``, the
hash of its causal context, not the hash of its full encoding. That is
valid because every op mints a dot, so two replicas whose contexts are equal
have joined the same ops and hold equal states (an invariant the core
guarantees and the replica state machine checks); conversely different
contexts mean different states, so equal digests still mean equal states,
which is all anti-entropy needs. It costs O(replicas) per write.

**Reads** are served from the ``views`` database when they can: the writer
stores ``[version, value]`` as JSON in the same transaction as the change,
so a plain read is one LMDB lookup plus ``orjson.loads`` and never decodes
the document. Such a read is a few microseconds, less than the cost of
handing it to a thread, so it runs on the event loop itself; everything
else (siblings, documents without a view, misses) runs in the default
executor and decodes snapshot plus tail. Rendering is O(value) per write, so
the writer renders only documents whose stored size is at most
``view_max_bytes`` (measured: rendering a small document costs a few
microseconds, a fraction of the read decode it saves); for bigger ones it
deletes the view and reads decode instead, since a large, frequently
written document would otherwise pay O(value) on every write.

**The document cache.** Decoding a large document per write would dominate
the write path, so the writer keeps a bounded LRU of decoded documents
(by count and by stored bytes, snapshot plus tail: memory stays flat however
many documents LMDB holds), each with the bookkeeping of its tail. Only the
writer thread touches it, and ``Document.apply`` mutates in place, so the cache may briefly hold state that is not yet
committed; any rollback (a rejected batch, a batch retried after growing
the map, a failed commit) evicts the document through ``on_abort``, and the
next use decodes it again from the transaction. Reads never use this
cache: they decode from an LMDB read transaction, so they only ever see
committed state.

**Deletion.** ``delete`` removes the document from ``docs`` (with its tail
and view), so it disappears from reads and listings. It first removes every
visible field with ordinary CRDT ops and logs that delta, so peers drop the
same fields when the log is shipped. The cleared state is kept in
``tombstones``: dots are minted per document, so a document re-created from
nothing would mint dots it already minted, and peers would silently drop
the new writes. A re-created document starts from its tombstone instead. A
remote delta or merged state that makes a deleted document visible again
resurrects it (add-wins, as in the CRDT); one that does not only updates
the tombstone.

The tombstone stays in the Merkle tree under its version digest and
``read_state`` ships it, so anti-entropy carries a delete to a peer whose
log no longer holds the delete delta (truncated, or a region restored from
a backup): the peer joins the tombstone, which removes every field the
delete had seen, and both digests end equal. A state merged into a
document this replica never had stays a tombstone if its value is empty.
Deletedness itself is not replicated state: a peer that applies the clearing
delta (or joins the tombstone) into a live copy holds an *empty* live
document, which reads as ``{}`` there while the deleting region answers 404;
digests, bytes and values (empty) agree.

**Quarantine.** Nothing a peer sends about one document may stop the
others (the rules, which the simulator's in-memory store follows too, are
:mod:`sync.quarantine`'s). A remote delta that does not decode, join or
store, claims dots of this incarnation it never minted (forged: joined, it
would make our next write mint past them), or names an id the API could
not address is *skipped*: inside the batch's commit, a
savepoint (child transaction) rolls back just that entry, and a
placeholder without a delta is logged under its ``(origin, seq)``, so the
origin's contiguous mark advances, the peer's acks and truncation move on,
and nothing re-sends it. The placeholder, not the delta, is what a peer
pulling our log gets: a bad delta is never relayed, and the next replica
skips it the same way. Savepoints cost page copies, so a batch runs
without them first and again with them only if an entry failed. The
document is then *quarantined*: logged, counted in ``stats()["quarantine"]``
(exported as metrics) and listed by :meth:`quarantined` (shown by
``/v1/admin/links``). Later remote deltas of that document are skipped the
same way: joined without the skipped one, out of causal order, they could
show wrong values (a counter replica's replaced sum would stay), so the
document stays as it was, consistent if stale; local writes to it go on.
Its digest now differs from the peer's, so the next anti-entropy round
ships the peer's full state; when a state merges the document leaves
quarantine, and a state that does not merge keeps it there and changes
nothing. Ids the API cannot address are never stored, only counted. The
quarantine lives in memory: after a restart it starts empty (later deltas
join again) and the repair does not depend on it (the digests still
differ).

**Size limits.** A local write may not leave a document stored in more
than ``max_document_bytes`` (snapshot plus tail: what each load decodes;
past it the writer compacts first and refuses only if the encoding alone
is too large) nor a text or list it inserted into longer than
``max_sequence_length``: ``DocumentTooLarge`` (413), nothing written. A
batch of removals only is always allowed, so an oversized document can be
cut down. Remote deltas and states are not limited by them: concurrent
writes in several regions may together pass the limits, and the merge must
load everywhere (the decoder's own bounds are much larger).

**The change feed.** Each committed write appends a record to ``feed``
under ``(doc id, local seq)``; the seq is global to the replica and never
reused in this directory. Records are JSON objects::

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
its records on the event loop (before the writer's future resolves) to a
bounded queue per subscriber. A subscriber that falls ``feed_queue`` records
behind loses its queue and gets one ``{"type": "resync", ...}`` record (a
consistent snapshot of the document and the feed position it reflects)
and continues from there, so memory per subscriber stays bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import lmdb
import orjson

from crdtstore import codec
from crdtstore.causal import CausalContext
from crdtstore.commit import GroupCommitWriter, Overloaded, WriteContext, WriterClosed, WriterError
from crdtstore.crdt.ormap import ORMap
from crdtstore.crdt.sequence import SeqDelta
from crdtstore.crdt.tags import Tag
from crdtstore.document import Delta, Document
from crdtstore.errors import InvalidVersion
from crdtstore.hlc import HybridClock
from crdtstore.limits import MAX_BATCH_OPS, MAX_DOCUMENT_BYTES, MAX_SEQUENCE_LENGTH, doc_id_problem
from crdtstore.merkle import MerkleShape
from crdtstore.storage import (
    IncompatibleStorage,
    InvalidDocumentId,
    Storage,
    StorageClosed,
    StorageError,
    StorageFull,
    check_doc_id,
)
from crdtstore.version import decode_version
from sync.events import PeerInfo
from sync.quarantine import (
    ForgedDots,
    Quarantine,
    Quarantined,
    Rejected,
    check_entry,
    check_own_dots,
    describe,
    hold,
    placeholder,
    screen,
)
from sync.types import LogEntry

if TYPE_CHECKING:
    from crdtstore.storage import Txn

__all__ = [
    "DocumentNotFound",
    "DocumentTooLarge",
    "ForgedDots",
    "IncompatibleStorage",
    "InvalidCursor",
    "InvalidDocumentId",
    "Node",
    "NodeConfig",
    "NodeNotRunning",
    "Overloaded",
    "Quarantined",
    "ReadResult",
    "StorageError",
    "StorageFull",
    "WriteResult",
    "split_view",
    "WriterClosed",
]

T = TypeVar("T")

logger = logging.getLogger("crdtstore.node")

_CURSOR_PREFIX = "f1."
_VERSION_PREFIX = "v1."

_State = Literal["live", "tombstone", "new"]


class DocumentNotFound(LookupError):
    """No live document has this id (HTTP 404)."""

    code = "not_found"

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        super().__init__(f"document {doc_id!r} not found")


class InvalidCursor(InvalidVersion):
    """A ``since`` that is neither a feed cursor nor a version token (HTTP 400)."""

    code = "invalid_cursor"


class NodeNotRunning(RuntimeError):
    """The node was not started, or is closed."""

    code = "not_running"


class DocumentTooLarge(Exception):
    """A local write would take a document past ``max_document_bytes`` or ``max_sequence_length`` (HTTP 413).

    Nothing was written.
    """

    code = "document_too_large"

    def __init__(self, doc_id: str, reason: str, *, limit: int, size: int, path: list[str] | None = None) -> None:
        self.doc_id = doc_id
        self.reason = reason
        self.limit = limit
        self.size = size
        self.path = path
        super().__init__(f"document {doc_id!r}: {reason}")

    def detail(self) -> dict[str, Any]:
        """A JSON-able description for API error bodies."""
        return {"id": self.doc_id, "reason": self.reason, "limit": self.limit, "size": self.size, "path": self.path}


class _Poisoned(Exception):
    """A peer's entry failed inside a batch run without savepoints: run the batch again with them."""


# Failures that are not the peer data's fault: the write path must see them
# (the map grows on MapFullError; a full or closed store fails the request).
_NOT_POISON: tuple[type[BaseException], ...] = (lmdb.Error, StorageError, WriterError, NodeNotRunning, _Poisoned)

@dataclass
class NodeConfig:
    """Configuration of one region node.

    Attributes:
        region: Region name (``[A-Za-z0-9_-]{1,64}``); part of the replica id.
        data_dir: The replica directory (one LMDB environment).
        map_size: Initial LMDB map size in bytes.
        max_map_size: The map doubles on demand up to this; beyond it writes fail with StorageFull.
        sync: fsync every commit (acknowledged writes survive power loss).
        metasync: fsync the meta page on commit.
        cache_docs: Decoded documents the writer keeps, at most.
        cache_bytes: Stored bytes (snapshot plus tail) of the cached documents, at most
            (a proxy for their memory).
        tail_max_deltas: Deltas a document's tail may hold before the writer compacts it
            (it also compacts when the tail's bytes exceed the snapshot's and ``tail_min_bytes``).
        tail_min_bytes: The tail may always hold this many bytes, however small the snapshot.
        view_max_bytes: Documents stored in at most this many bytes get a read view
            rendered at every write; bigger ones are decoded by each read.
        max_queue: Writes waiting for a commit before apply raises Overloaded.
        max_batch: Writes per group commit, at most.
        feed_queue: Live records a change-feed subscriber may fall behind before a resync.
        feed_page: Feed records read per read transaction when replaying history.
        max_readers: Concurrent LMDB read transactions.
        max_dbs: LMDB named databases allowed (room above the nine used, for migrations).
        merkle_fanout: Merkle tree fanout; all replicas must agree.
        merkle_depth: Merkle tree depth; all replicas must agree.
        max_document_bytes: A local write may leave a document stored in at most this many
            bytes (snapshot plus tail; the writer compacts before refusing), else 413.
        max_sequence_length: A local insert may leave a text or list at most this long, else 413.
    """

    region: str
    data_dir: Path
    map_size: int = 64 << 20
    max_map_size: int = 8 << 30
    sync: bool = True
    metasync: bool = True
    cache_docs: int = 1024
    cache_bytes: int = 64 << 20
    tail_max_deltas: int = 32
    tail_min_bytes: int = 2048
    view_max_bytes: int = 64 << 10
    max_queue: int = 1024
    max_batch: int = 256
    feed_queue: int = 256
    feed_page: int = 256
    max_readers: int = 126
    max_dbs: int = 16
    merkle_fanout: int = 16
    merkle_depth: int = 4
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    max_sequence_length: int = MAX_SEQUENCE_LENGTH


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of an acknowledged (committed) write.

    Attributes:
        version: The document's version token after the write.
        created: True if the document did not exist (or was deleted) before.
        origin: The origin the write's delta was logged under (this incarnation's replica id).
        seq: Its sequence number in that origin's log: a quorum write waits for
            peers to hold exactly ``(origin, seq)``, not whatever is newest.
    """

    version: str
    created: bool
    origin: str = ""
    seq: int = 0


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A committed document as read from this replica.

    Attributes:
        value: Plain JSON; multi-value registers show one winner.
        version: Version token; pass it to ``changes`` to follow on from this read.
        siblings: The same tree with every register as the list of its concurrent values;
            None unless the read asked for it (it costs a second walk of the document).
    """

    value: dict[str, Any]
    version: str
    siblings: dict[str, Any] | None


# A parsed ``since``: everything, a version (causal context), or (seq, cursor).
_Since = CausalContext | tuple[int, str] | None


def _parse_since(since: str | None) -> _Since:
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


def _default_random_id() -> str:
    return secrets.token_hex(4)


V = TypeVar("V")


class _DocCache(Generic[V]):
    """LRU of decoded documents bounded by count and by stored bytes; writer thread only."""

    def __init__(self, max_docs: int, max_bytes: int) -> None:
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._docs: collections.OrderedDict[str, tuple[V, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, doc_id: str) -> V | None:
        entry = self._docs.get(doc_id)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._docs.move_to_end(doc_id)
        return entry[0]

    def put(self, doc_id: str, doc: V, size: int) -> None:
        self.discard(doc_id)
        if size > self.max_bytes or self.max_docs < 1:
            return  # caching it would evict everything else
        self._docs[doc_id] = (doc, size)
        self.bytes += size
        while len(self._docs) > self.max_docs or self.bytes > self.max_bytes:
            _, (_, old_size) = self._docs.popitem(last=False)
            self.bytes -= old_size

    def discard(self, doc_id: str) -> None:
        entry = self._docs.pop(doc_id, None)
        if entry is not None:
            self.bytes -= entry[1]

    def stats(self) -> dict[str, int]:
        return {
            "docs": len(self._docs),
            "bytes": self.bytes,
            "max_docs": self.max_docs,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
        }


@dataclass(eq=False, slots=True)
class _Loaded:
    """A decoded live document on the writer, with what it knows of its stored tail.

    Attributes:
        doc: The document (mutated in place by writes; see ``on_abort``).
        snapshot: Bytes of the stored snapshot.
        tail: Deltas in the stored tail.
        tail_bytes: Their bytes.
        next_seq: The tail seq the next appended delta gets.
    """

    doc: Document
    snapshot: int = 0
    tail: int = 0
    tail_bytes: int = 0
    next_seq: int = 1

    @property
    def size(self) -> int:
        return self.snapshot + self.tail_bytes


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


class Node:
    """One region replica.

    Args:
        config: The node's configuration.
        clock: Wall time in seconds; read on the writer thread for HLC timestamps.
        random_id: Random url-safe token source for replica ids (see
            :mod:`crdtstore.storage` for how they are used).
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Callable[[], float] = time.time,
        random_id: Callable[[], str] = _default_random_id,
    ) -> None:
        self.config = config
        self.replica_id = ""
        self._clock = clock
        self._random_id = random_id
        self._storage: Storage | None = None
        self._writer: GroupCommitWriter | None = None
        self._hlc = HybridClock()
        self._cache: _DocCache[_Loaded] = _DocCache(config.cache_docs, config.cache_bytes)
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._closed = False
        # Writer thread only: documents whose remote deltas are held back (skipped) until a state merges.
        self._held: set[str] = set()
        # Event loop only (updated by on_commit hooks and after merges): doc id -> record.
        self._quarantine = Quarantine()

    # Public methods for the lifecycle.

    async def start(self) -> None:
        """Open the storage (starting a new epoch) and the writer thread.

        Raises:
            IncompatibleStorage: The directory belongs to another region or shape.
        """
        if self._storage is not None or self._closed:
            raise NodeNotRunning("a node starts once")
        cfg = self.config
        storage = await asyncio.to_thread(
            Storage.open,
            Path(cfg.data_dir),
            region=cfg.region,
            random_id=self._random_id,
            map_size=cfg.map_size,
            max_map_size=cfg.max_map_size,
            sync=cfg.sync,
            metasync=cfg.metasync,
            max_readers=cfg.max_readers,
            max_dbs=cfg.max_dbs,
            shape=MerkleShape(cfg.merkle_fanout, cfg.merkle_depth),
        )
        with storage.read() as txn:
            self._hlc = HybridClock(storage.get_hlc(txn))
        self._storage = storage
        self.replica_id = storage.replica_id
        self._writer = GroupCommitWriter(storage, max_queue=cfg.max_queue, max_batch=cfg.max_batch)
        self._writer.start()

    async def close(self) -> None:
        """Commit queued writes, end every change feed, close the storage (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer.close()
        for subscribers in self._subscribers.values():
            for sub in subscribers:
                sub.wakeup.set()
        if self._storage is not None:
            await asyncio.to_thread(self._storage.close)

    @property
    def storage(self) -> Storage:
        """The storage, for the replicator and tests."""
        if self._storage is None:
            raise NodeNotRunning("node not started")
        return self._storage

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer (for metrics wiring)."""
        if self._writer is None:
            raise NodeNotRunning("node not started")
        return self._writer

    # Public methods for documents.

    async def apply(self, doc_id: str, ops: list[dict[str, Any]]) -> WriteResult:
        """Apply a batch of ops to a document (creating it) and wait until it is durable.

        Raises:
            OpError: The batch was rejected (subclasses unchanged); nothing was written.
            InvalidDocumentId: Empty id, longer than 256 utf-8 bytes, or containing NUL.
            DocumentTooLarge: The document would pass ``max_document_bytes`` or
                ``max_sequence_length``; nothing was written.
            StorageFull: The write does not fit at ``max_map_size``.
            Overloaded: Too many writes are waiting.
        """
        check_doc_id(doc_id)
        return await self._submit(lambda ctx: self._apply_txn(ctx, doc_id, ops))

    async def read(self, doc_id: str, *, siblings: bool = False) -> ReadResult:
        """The committed state of a document.

        Raises:
            DocumentNotFound: No live document has this id.
        """
        check_doc_id(doc_id)
        self._require_running()
        if not siblings:
            # The common case, one lookup of a stored view: cheaper inline than
            # the thread hop would be (see the module docstring).
            view = self.storage.read_view(doc_id)
            if view is not None:
                version, value = orjson.loads(view)
                return ReadResult(value=value, version=version, siblings=None)
        return await self._read(self._read_txn, doc_id, siblings)

    async def read_json(self, doc_id: str) -> tuple[str, bytes]:
        """The version token and the value already encoded as JSON: :meth:`read` for a server
        that sends the value on as it is, without parsing the stored view and serializing it again.

        Raises:
            DocumentNotFound: No live document has this id.
        """
        storage = self._storage
        if storage is None or self._closed:
            raise NodeNotRunning("node is not running")
        view = storage.read_view(doc_id)  # checks the id
        if view is not None:
            return split_view(view)
        result = await self._read(self._read_txn, doc_id, False)
        return result.version, orjson.dumps(result.value)

    async def delete(self, doc_id: str) -> None:
        """Delete a document on this replica (see the module docstring) and wait until durable.

        Raises:
            DocumentNotFound: No live document has this id.
        """
        check_doc_id(doc_id)
        await self._submit(lambda ctx: self._delete_txn(ctx, doc_id))

    def changes(self, doc_id: str, since: str | None) -> AsyncIterator[dict[str, Any]]:
        """Follow a document's changes: history after ``since``, then live commits.

        A plain method returning an async iterator (``async for record in
        node.changes(...)``), so that a bad id or ``since`` raises here, before
        an HTTP layer starts streaming. Records are shared between subscribers:
        treat them as read-only. The iteration ends when the node closes.

        Raises:
            InvalidCursor: ``since`` is neither a feed cursor nor a version token.
            InvalidVersion: ``since`` looks like a version token but is malformed.
            InvalidDocumentId: Bad id.
        """
        check_doc_id(doc_id)
        self._require_running()
        return self._changes(doc_id, _parse_since(since))

    async def _changes(self, doc_id: str, since: _Since) -> AsyncGenerator[dict[str, Any], None]:
        sub = _Subscriber(self.config.feed_queue)
        # Subscribe before reading the history: a commit landing in between is
        # then in the history, in the queue, or both (deduplicated by seq).
        self._subscribers.setdefault(doc_id, set()).add(sub)
        try:
            # aclosing: when our consumer stops early, the inner generator is
            # closed right away rather than whenever the loop gets to it.
            async with contextlib.aclosing(self._follow(doc_id, since, sub)) as records:
                async for record in records:
                    yield record
        except (NodeNotRunning, StorageClosed):
            if not self._closed:
                raise
            # The node closed under a read of ours: end the feed like close() does.
        finally:
            subscribers = self._subscribers.get(doc_id)
            if subscribers is not None:
                subscribers.discard(sub)
                if not subscribers:
                    del self._subscribers[doc_id]

    async def _follow(self, doc_id: str, since: _Since, sub: _Subscriber) -> AsyncGenerator[dict[str, Any], None]:
        """The body of :meth:`changes`, once ``sub`` is registered."""
        after, resync = await self._read(self._resolve_since, doc_id, since)
        if resync:
            snapshot = await self._read(self._snapshot_txn, doc_id)
            yield snapshot
            after = snapshot["seq"]
        while True:
            page = await self._read(self._feed_page_txn, doc_id, after)
            for seq, raw in page:
                yield orjson.loads(raw)
                after = seq
            if len(page) < self.config.feed_page:
                break
        while not self._closed:
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

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics: documents, LMDB sizes, commit stats, cache, subscribers."""
        storage = self.storage
        with storage.read() as txn:
            documents = storage.count_docs(txn)
        return {
            "replica_id": self.replica_id,
            "epoch": storage.identity.epoch,
            "documents": documents,
            "lmdb": storage.info(),
            "commit": self.writer.stats(),
            "cache": self._cache.stats(),
            "subscribers": sum(len(s) for s in self._subscribers.values()),
            "quarantine": self._quarantine.stats(),
        }

    def quarantined(self) -> list[Quarantined]:
        """The documents in quarantine, oldest first (at most ``sync.quarantine.MAX_LISTED``)."""
        return self._quarantine.listed()

    # Public methods for the replicator (the sync.store.ReplicaStore protocol).

    @property
    def info(self) -> PeerInfo:
        """Who this replica is: stable id, this start's origin (``replica_id``), region, epoch."""
        identity = self.storage.identity
        return PeerInfo(identity.base, self.replica_id, self.config.region, identity.epoch)

    async def apply_remote(self, origin: str, seq: int, doc_id: str, delta: bytes) -> bool:
        """Join a delta received from a peer, log it under ``(origin, seq)``, wait until durable.

        The log record needs the document id: a delta does not name its
        document, so it travels next to it (:class:`~sync.types.LogEntry`).
        A delta that cannot be joined is skipped and its document quarantined
        (see :meth:`apply_remote_many`).

        Returns:
            False if ``(origin, seq)`` was already received (nothing written).
        """
        return (await self.apply_remote_many([LogEntry(origin, seq, doc_id, delta)]))[0]

    async def apply_remote_many(self, entries: Sequence[LogEntry]) -> list[bool]:
        """Join a peer's batch of deltas, in order, in one commit (one fsync, not one each).

        Total on the peer's data: an entry whose id the API could not address
        is skipped, and one that does not decode or join (or whose result
        cannot be stored) is skipped with its document quarantined. A skipped
        entry still counts as received, so the origin's sequence advances and
        the link goes on; its delta is not logged (so never relayed): a
        placeholder with no delta takes its place, which a peer pulling the
        log from us treats the same way. Anti-entropy repairs the document.

        Returns:
            Per entry, False if it was already received.

        Raises:
            ValueError: An origin or seq the log cannot hold (nothing of the batch was written).
        """
        logged = [e if isinstance(e, LogEntry) else LogEntry(e.origin, e.seq, e.doc_id, e.delta) for e in entries]
        for entry in logged:
            check_entry(entry)
        try:
            return await self._submit(lambda ctx: self._remote_many_txn(ctx, logged, savepoints=False))
        except _Poisoned:
            # Rare: run the batch again with a savepoint per entry, so that only the bad ones are skipped.
            return await self._submit(lambda ctx: self._remote_many_txn(ctx, logged, savepoints=True))

    async def merge_state(self, doc_id: str, state: bytes) -> bool:
        """Join a peer's full document state (anti-entropy repair); not logged.

        A state that merges clears the document's quarantine; one that does
        not (undecodable, or failing to join or store) quarantines the
        document and changes nothing. An id the API could not address is
        ignored (counted, never stored).

        Returns:
            True if the local state changed.
        """
        outcome = await self._merge_one(doc_id, state)
        return outcome if isinstance(outcome, bool) else False

    async def merge_states(self, states: Sequence[tuple[str, bytes]]) -> list[bool | BaseException]:
        """:meth:`merge_state` of each; per state its result, :class:`~sync.quarantine.Rejected` for
        a state it did not merge (quarantined, or an unaddressable id), or the error a store failure raised.

        Joins commute, so the states need no order among themselves: submitted
        together they share one group commit, where one await each cost a
        commit each.
        """
        return await asyncio.gather(*(self._merge_one(d, s) for d, s in states), return_exceptions=True)

    async def _merge_one(self, doc_id: str, state: bytes) -> bool | Rejected:
        problem = doc_id_problem(doc_id)
        if problem is not None:
            self._reject_id(doc_id, problem, "state")
            return Rejected(f"state of an unaddressable id: {problem}")
        outcome = await self._submit(lambda ctx: self._guarded(ctx, lambda sub: self._repair_txn(sub, doc_id, state)))
        if isinstance(outcome, BaseException):
            self._quarantine_add(doc_id, outcome, None, None, "states_rejected")
            rejected = Rejected(f"state of {doc_id!r:.80}: {describe(outcome)}")
            rejected.__cause__ = outcome
            return rejected
        if self._quarantine.release(doc_id):
            logger.info("document left quarantine: a peer's state merged", extra={"doc_id": doc_id})
        return outcome

    async def read_state(self, doc_id: str) -> bytes | None:
        """The encoded state of a document, live or deleted (what anti-entropy ships), or None.

        A deleted document's tombstone is shipped too: it is in the Merkle
        tree, and merging it is how a peer learns of the delete when the
        delete's delta is no longer in any log.
        """
        return (await self.read_states([doc_id]))[0]

    async def read_states(self, doc_ids: Sequence[str]) -> list[bytes | None]:
        """:meth:`read_state` of each id, read in one transaction (one snapshot, one hop to a thread)."""
        for doc_id in doc_ids:
            check_doc_id(doc_id)
        return await self._read(lambda txn: [self._state_txn(txn, doc_id) for doc_id in doc_ids])

    async def log_range(self, origin: str, after: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` logged deltas of ``origin`` with seq > ``after``.

        Read on the event loop, like a view: a cursor scan of recent entries
        costs less than a hop to a thread and back, and it sits on the path
        of every replicated write (the replicator tails our origin with it).
        """
        self._require_running()
        with self.storage.read() as txn:
            return self.storage.log_range(txn, origin, after, limit)

    async def version_vector(self) -> dict[str, int]:
        """Per origin, the highest seq received with no gap below it."""
        return await self._read(self.storage.vector)

    async def skip_log(self, origin: str, upto: int) -> int:
        """Raise the contiguous mark of ``origin`` to at least ``upto``, durably; return the new mark.

        Anti-entropy merged a peer's states, which hold every delta of
        ``origin`` up to ``upto``, because its log could no longer ship them
        (``SkipLog``). Entries already logged beyond ``upto`` extend the mark.
        """
        return await self._submit(lambda ctx: ctx.storage.skip_log(ctx.txn, origin, upto))

    async def truncate_log(self, vector: dict[str, int]) -> int:
        """Drop log entries with seq at or below ``vector[origin]`` (every peer holds them); return the count."""

        def run(ctx: WriteContext) -> int:
            return sum(ctx.storage.truncate_log(ctx.txn, o, s) for o, s in sorted(vector.items()) if s > 0)

        return await self._submit(run)

    async def acked(self, peer: str) -> dict[str, int]:
        """The vector ``peer`` acknowledged."""
        return await self._read(lambda txn: self.storage.acked(txn, peer))

    async def set_acked(self, peer: str, vector: dict[str, int]) -> None:
        """Raise ``peer``'s acknowledged vector (durably)."""
        await self._submit(lambda ctx: ctx.storage.set_acked(ctx.txn, peer, vector))

    async def merkle_root(self) -> bytes:
        return await self._read(lambda txn: self.storage.merkle(txn).root())

    async def merkle_children(self, level: int, index: int) -> list[bytes]:
        return (await self.merkle_children_many([(level, index)]))[0]

    async def merkle_children_many(self, nodes: Sequence[tuple[int, int]]) -> list[list[bytes]]:
        """The children of each ``(level, index)`` node, read in one transaction (one snapshot, one hop)."""

        def run(txn: Txn) -> list[list[bytes]]:
            tree = self.storage.merkle(txn)
            return [tree.children(level, index) for level, index in nodes]

        return await self._read(run)

    async def bucket_items(self, bucket: int) -> list[tuple[str, bytes]]:
        """The ``(doc_id, digest)`` pairs of one Merkle leaf bucket."""
        return (await self.bucket_items_many([bucket]))[0]

    async def bucket_items_many(self, buckets: Sequence[int]) -> list[list[tuple[str, bytes]]]:
        """:meth:`bucket_items` of each bucket, read in one transaction (one snapshot, one hop)."""
        return await self._read(lambda txn: [self.storage.bucket_items(txn, bucket) for bucket in buckets])

    # Private methods: plumbing.

    def _require_running(self) -> None:
        if self._storage is None or self._closed:
            raise NodeNotRunning("node is not running")

    async def _submit(self, fn: Callable[[WriteContext], T]) -> T:
        self._require_running()
        return await self.writer.submit(fn)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        self._require_running()
        storage = self.storage

        def run() -> T:
            with storage.read() as txn:
                return fn(txn, *args)

        return await asyncio.to_thread(run)

    # Private methods: the writer thread.

    def _load(self, txn: Txn, doc_id: str) -> tuple[_Loaded, _State]:
        entry = self._cache.get(doc_id)
        if entry is not None:
            return entry, "live"
        storage = self.storage
        raw = storage.get_doc(txn, doc_id)
        if raw is not None:
            tail = storage.get_tail(txn, doc_id)
            entry = _Loaded(
                _join_tail(codec.decode_document(raw), tail),
                snapshot=len(raw),
                tail=len(tail),
                tail_bytes=sum(len(delta) for _, delta in tail),
                next_seq=tail[-1][0] + 1 if tail else 1,
            )
            self._cache.put(doc_id, entry, entry.size)
            return entry, "live"
        raw = storage.get_tombstone(txn, doc_id)
        if raw is not None:
            return _Loaded(codec.decode_document(raw)), "tombstone"
        return _Loaded(Document()), "new"

    def _now(self) -> int:
        return self._hlc.now(self._clock())

    def _apply_txn(self, ctx: WriteContext, doc_id: str, ops: list[dict[str, Any]]) -> WriteResult:
        # Registered first: whatever fails from here on, the cached document
        # (possibly mutated) must not outlive the rollback.
        ctx.on_abort(lambda: self._cache.discard(doc_id))
        entry, state = self._load(ctx.txn, doc_id)
        now = self._now()
        batch = entry.doc.apply(ops, replica=self.replica_id, now=now)
        delta = codec.encode_delta(batch)
        limited = not _only_removals(ops)
        if limited:
            self._check_lengths(doc_id, entry.doc, batch)
        storage = ctx.storage
        seq = storage.append_local(ctx.txn, self.replica_id, doc_id, delta)
        storage.set_hlc(ctx.txn, self._hlc.last)
        if _is_empty(entry.doc):
            version = self._bury(ctx, doc_id, entry.doc, state, self.replica_id, seq, delta)
        else:
            # Never past the decoder's own bound, whatever the configuration: the document must load again.
            limit = min(self.config.max_document_bytes, codec.MAX_ENCODED_BYTES) if limited else codec.MAX_ENCODED_BYTES
            version = self._store(ctx, doc_id, entry, state, "change", self.replica_id, seq, delta, limit=limit)
        return WriteResult(version=version, created=state != "live", origin=self.replica_id, seq=seq)

    def _check_lengths(self, doc_id: str, doc: Document, batch: Delta) -> None:
        limit = self.config.max_sequence_length
        for path, length in _grown_sequences(doc.root, batch.root):
            if length > limit:
                raise DocumentTooLarge(
                    doc_id, f"a text or list would hold {length} elements", limit=limit, size=length, path=path
                )

    def _delete_txn(self, ctx: WriteContext, doc_id: str) -> None:
        ctx.on_abort(lambda: self._cache.discard(doc_id))
        entry, state = self._load(ctx.txn, doc_id)
        if state != "live":
            raise DocumentNotFound(doc_id)
        self._cache.discard(doc_id)  # the cache holds live documents only
        doc = entry.doc
        storage = self.storage
        keys = [{"op": "delete", "path": [key]} for key in doc.value()]
        delta_bytes = None
        origin_seq = None
        if keys:
            now = self._now()
            delta = doc.apply(keys[:MAX_BATCH_OPS], replica=self.replica_id, now=now)
            for start in range(MAX_BATCH_OPS, len(keys), MAX_BATCH_OPS):
                delta.join(doc.apply(keys[start : start + MAX_BATCH_OPS], replica=self.replica_id, now=now))
            delta_bytes = codec.encode_delta(delta)
            origin_seq = storage.append_local(ctx.txn, self.replica_id, doc_id, delta_bytes)
            storage.set_hlc(ctx.txn, self._hlc.last)
        storage.delete_doc(ctx.txn, doc_id)
        self._put_tombstone(ctx, doc_id, doc)
        self._append_feed(ctx, doc_id, "delete", self.replica_id, origin_seq, doc.version(), delta_bytes)

    def _remote_many_txn(self, ctx: WriteContext, entries: list[LogEntry], *, savepoints: bool) -> list[bool]:
        out = []
        for entry in entries:
            if savepoints:
                result = self._guarded(ctx, lambda sub, entry=entry: self._remote_txn(sub, entry))
                out.append(self._skip_txn(ctx, entry, result) if isinstance(result, Exception) else result)
                continue
            try:
                out.append(self._remote_txn(ctx, entry))
            except _NOT_POISON:
                raise
            except Exception as exc:
                raise _Poisoned(f"({entry.origin}, {entry.seq})") from exc
        return out

    def _guarded(self, ctx: WriteContext, fn: Callable[[WriteContext], T]) -> T | Exception:
        """Run ``fn`` in a savepoint (a child transaction): its result, or the exception the peer's data caused.

        On such an exception nothing ``fn`` wrote is kept and its abort hooks
        ran; failures of the store itself propagate.
        """
        child = ctx.storage.begin_write(parent=ctx.txn)
        sub = WriteContext(child, ctx.storage)
        try:
            result = fn(sub)
            child.commit()
        except BaseException as exc:
            child.abort()
            for hook in sub._on_abort:
                hook()
            if isinstance(exc, _NOT_POISON) or not isinstance(exc, Exception):
                raise
            return exc
        # Kept: the hooks now belong to the enclosing request.
        for hook in sub._on_commit:
            ctx.on_commit(hook)
        for hook in sub._on_abort:
            ctx.on_abort(hook)
        return result

    def _remote_txn(self, ctx: WriteContext, entry: LogEntry) -> bool:
        storage = self.storage
        if storage.has_log(ctx.txn, entry.origin, entry.seq):
            return False
        why = screen(entry.doc_id, entry.delta, self._held)
        if why is not None:
            return self._skip_txn(ctx, entry, why)
        delta = codec.decode_delta(entry.delta)  # before any change: bad bytes write nothing
        ctx.on_abort(lambda: self._cache.discard(entry.doc_id))
        loaded, state = self._load(ctx.txn, entry.doc_id)
        check_own_dots(self.replica_id, loaded.doc.ctx, delta.ctx)
        loaded.doc.join(delta)
        storage.append_remote(ctx.txn, entry)
        if _is_empty(loaded.doc):
            # Still deleted, or deleted now (by a peer's delete): as on the peer.
            self._bury(ctx, entry.doc_id, loaded.doc, state, entry.origin, entry.seq, entry.delta)
        else:
            self._store(
                ctx,
                entry.doc_id,
                loaded,
                state,
                "change",
                entry.origin,
                entry.seq,
                entry.delta,
                limit=codec.MAX_ENCODED_BYTES,
            )
        return True

    def _skip_txn(self, ctx: WriteContext, entry: LogEntry, reason: BaseException | str) -> bool:
        """Count ``entry`` as received without joining it: log a placeholder, quarantine its document."""
        storage = self.storage
        if storage.has_log(ctx.txn, entry.origin, entry.seq):
            return False
        storage.append_remote(ctx.txn, LogEntry(*placeholder(entry)))
        doc_id = entry.doc_id
        if doc_id_problem(doc_id) is not None:
            ctx.on_commit(lambda: self._reject_id(doc_id, describe(reason), f"delta ({entry.origin}, {entry.seq})"))
            return True
        if hold(self._held, doc_id):
            ctx.on_abort(lambda: self._held.discard(doc_id))
        ctx.on_commit(lambda: self._quarantine_add(doc_id, reason, entry.origin, entry.seq, "deltas_skipped"))
        return True

    # Quarantine bookkeeping: event loop only (on_commit hooks, merge_state).

    def _quarantine_add(
        self, doc_id: str, error: BaseException | str, origin: str | None, seq: int | None, counter: str
    ) -> None:
        record = self._quarantine.add(doc_id, error, origin, seq, counter, now=self._clock())
        if record is None:
            return  # logged when it entered quarantine
        logger.warning(
            "peer data quarantined a document",
            extra={"doc_id": doc_id[:300], "origin": origin, "seq": seq, "reason": record.reason},
        )

    def _reject_id(self, doc_id: str, problem: str, what: str) -> None:
        self._quarantine.reject_id()
        logger.warning(
            "ignored peer data for an unaddressable id",
            extra={"doc_id": repr(doc_id)[:300], "what": what, "reason": problem},
        )

    def _repair_txn(self, ctx: WriteContext, doc_id: str, state_bytes: bytes) -> bool:
        """:meth:`_merge_txn`, then deltas of the document are no longer held back."""
        changed = self._merge_txn(ctx, doc_id, state_bytes)
        if doc_id in self._held:
            self._held.discard(doc_id)
            ctx.on_abort(lambda: self._held.add(doc_id))
        return changed

    def _merge_txn(self, ctx: WriteContext, doc_id: str, state_bytes: bytes) -> bool:
        other = codec.decode_document(state_bytes)
        ctx.on_abort(lambda: self._cache.discard(doc_id))
        entry, state = self._load(ctx.txn, doc_id)
        doc = entry.doc
        before = codec.encode_document(doc)
        check_own_dots(self.replica_id, doc.ctx, other.ctx)
        doc.merge(other)
        if codec.encode_document(doc) == before:
            return False
        if _is_empty(doc):
            # A peer's tombstone (or a state that stays deleted here): keep it deleted,
            # and in the Merkle tree under its digest so both sides compare equal.
            self._bury(ctx, doc_id, doc, state, None, None, None)
        else:
            # No delta to append: the full state goes in as a new snapshot.
            self._store(ctx, doc_id, entry, state, "change", None, None, None, limit=codec.MAX_ENCODED_BYTES)
        return True

    def _bury(
        self,
        ctx: WriteContext,
        doc_id: str,
        doc: Document,
        state: _State,
        origin: str | None,
        origin_seq: int | None,
        delta: bytes | None,
    ) -> str:
        """Store a document with no field left as deleted (a tombstone); publish the delete if it was live.

        "Deleted" is not a flag of its own but read off the state: a document
        whose every field is removed does not exist. So every replica that
        joined the same changes agrees, whether the delete reached it as a
        delta, as a state, or as the removal of the last field by an op.
        """
        self._cache.discard(doc_id)  # the cache holds live documents only
        if state == "live":
            self.storage.delete_doc(ctx.txn, doc_id)
        self._put_tombstone(ctx, doc_id, doc)
        version = doc.version()
        if state == "live":
            self._append_feed(ctx, doc_id, "delete", origin, origin_seq, version, delta)
        return version

    def _put_tombstone(self, ctx: WriteContext, doc_id: str, doc: Document) -> None:
        """Store a deleted document's state and keep it in the Merkle tree under its version digest.

        Anti-entropy compares digests: were a deleted document absent from the
        tree, a peer still holding it live (its delete delta truncated away
        from the log, or a region restored from a backup) would differ forever
        and could never be repaired. With the tombstone present, the two
        states are exchanged and joined, which removes what the delete saw.
        """
        data = codec.encode_document(doc)
        if len(data) > codec.MAX_ENCODED_BYTES:
            raise DocumentTooLarge(
                doc_id, "the decoder's bound on encodings", limit=codec.MAX_ENCODED_BYTES, size=len(data)
            )
        self.storage.put_tombstone(ctx.txn, doc_id, data)
        self.storage.put_digest(ctx.txn, doc_id, _version_digest(doc.version()))

    def _store(
        self,
        ctx: WriteContext,
        doc_id: str,
        entry: _Loaded,
        state: _State,
        kind: str,
        origin: str | None,
        origin_seq: int | None,
        delta: bytes | None,
        *,
        limit: int | None = None,
    ) -> str:
        """Write a live document's change (tail append or new snapshot), digest, view and feed record.

        Args:
            limit: The stored bytes (snapshot plus tail) the change may leave:
                ``max_document_bytes`` for a local write, the decoder's bound
                for a remote join (past it the document could never be loaded
                again: the join is refused and quarantined instead). Past it the
                document is compacted first, and refused (``DocumentTooLarge``,
                before anything is stored here) if its encoding alone is still
                too large.

        Returns:
            The document's version token.
        """
        storage = self.storage
        txn = ctx.txn
        doc = entry.doc
        version = doc.version()
        digest = _version_digest(version)
        cfg = self.config
        if (
            state == "live"
            and delta is not None
            and entry.tail < cfg.tail_max_deltas
            and entry.tail_bytes + len(delta) <= max(entry.snapshot, cfg.tail_min_bytes)
            and (limit is None or entry.size + len(delta) <= limit)
        ):
            storage.append_tail(txn, doc_id, entry.next_seq, delta, digest)
            entry.tail += 1
            entry.tail_bytes += len(delta)
            entry.next_seq += 1
        else:
            # Compaction (or a first write): one encoding of the whole document.
            data = codec.encode_document(doc)
            if limit is not None and len(data) > limit:
                raise DocumentTooLarge(
                    doc_id, f"its encoding would take {len(data)} bytes", limit=limit, size=len(data)
                )
            storage.put_doc(txn, doc_id, data, digest)
            entry.snapshot, entry.tail, entry.tail_bytes, entry.next_seq = len(data), 0, 0, 1
            if state == "tombstone":
                storage.delete_tombstone(txn, doc_id)
        if entry.size <= cfg.view_max_bytes:
            storage.put_view(txn, doc_id, orjson.dumps([version, doc.value()]))
        elif state == "live":
            storage.delete_view(txn, doc_id)  # a stale view must never be served
        self._cache.put(doc_id, entry, entry.size)
        self._append_feed(ctx, doc_id, kind, origin, origin_seq, version, delta)
        return version

    def _append_feed(
        self,
        ctx: WriteContext,
        doc_id: str,
        kind: str,
        origin: str | None,
        origin_seq: int | None,
        version: str,
        delta: bytes | None,
    ) -> None:
        storage = self.storage
        seq = storage.next_feed_seq(ctx.txn)
        record: dict[str, Any] = {
            "seq": seq,
            "cursor": f"{_CURSOR_PREFIX}{seq}.{storage.identity.incarnation}",
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

    # Private methods: the event loop and readers.

    def _publish(self, doc_id: str, raw: bytes) -> None:
        subscribers = self._subscribers.get(doc_id)
        if subscribers:
            record = orjson.loads(raw)
            for sub in subscribers:
                sub.push(record)

    def _decode_txn(self, txn: Txn, doc_id: str) -> Document | None:
        """The live document decoded from its snapshot and tail, or None."""
        storage = self.storage
        raw = storage.get_doc(txn, doc_id)
        if raw is None:
            return None
        return _join_tail(codec.decode_document(raw), storage.get_tail(txn, doc_id))

    def _state_txn(self, txn: Txn, doc_id: str) -> bytes | None:
        raw = self.storage.get_doc(txn, doc_id)
        if raw is None:
            return self.storage.get_tombstone(txn, doc_id)
        tail = self.storage.get_tail(txn, doc_id)
        if not tail:
            return raw  # the snapshot is the whole state: ship it as stored
        return codec.encode_document(_join_tail(codec.decode_document(raw), tail))

    def _read_txn(self, txn: Txn, doc_id: str, siblings: bool) -> ReadResult:
        if not siblings:
            view = self.storage.get_view(txn, doc_id)
            if view is not None:
                version, value = orjson.loads(view)
                return ReadResult(value=value, version=version, siblings=None)
        doc = self._decode_txn(txn, doc_id)
        if doc is None:
            raise DocumentNotFound(doc_id)
        return ReadResult(value=doc.value(), version=doc.version(), siblings=doc.siblings() if siblings else None)

    def _feed_page_txn(self, txn: Txn, doc_id: str, after: int) -> list[tuple[int, bytes]]:
        return self.storage.feed_range(txn, doc_id, after, self.config.feed_page)

    def _resolve_since(self, txn: Txn, doc_id: str, since: _Since) -> tuple[int, bool]:
        """Map ``since`` to (feed seq to resume after, whether a resync is needed first)."""
        storage = self.storage
        if since is None:
            return 0, False
        if isinstance(since, CausalContext):
            # Contained records form a prefix of the feed: walk back from the
            # newest to the first one the token contains (cheap for a fresh token).
            before = storage.last_feed_seq(txn, doc_id) + 1
            while True:
                page = storage.feed_before(txn, doc_id, before, self.config.feed_page)
                for seq, raw in page:
                    if since.contains_context(decode_version(orjson.loads(raw)["version"])):
                        return seq, False
                if len(page) < self.config.feed_page:
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
        doc = self._decode_txn(txn, doc_id)
        record: dict[str, Any] = {"type": "resync", "seq": seq, "cursor": cursor, "exists": doc is not None}
        if doc is None:
            record.update(value=None, siblings=None, version=None)
        else:
            record.update(value=doc.value(), siblings=doc.siblings(), version=doc.version())
        return record

    # Public methods for listing. Last in the class on purpose: the method's
    # name shadows the builtin ``list`` for type checkers in the class body.

    async def list(self, prefix: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        """Ids of live documents starting with ``prefix``, in utf-8 byte order.

        Args:
            prefix: Only ids starting with it.
            cursor: The cursor a previous page returned, or None for the first page.
            limit: Ids per page (at least 1).

        Returns:
            The ids and the cursor of the next page (None on the last page).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")

        def run(txn: Txn) -> tuple[list[str], str | None]:
            ids, more = self.storage.list_docs(txn, prefix, cursor, limit)
            return ids, (ids[-1] if more else None)

        return await self._read(run)


def _grown_sequences(node: ORMap | None, delta: ORMap, path: tuple[str, ...] = ()) -> Iterator[tuple[list[str], int]]:
    """``(path, length)`` of every text or list ``delta`` inserted into, as ``node`` holds it now."""
    for name, entries in delta.fields.items():
        for tag, value in entries.items():
            if isinstance(value, ORMap):
                yield from _grown_sequences(node.get(name, Tag.MAP) if node is not None else None, value, (*path, name))
            elif isinstance(value, SeqDelta) and value.inserts and node is not None:
                seq = node.get(name, tag)
                if seq is not None:
                    yield [*path, name], len(seq)


def _only_removals(ops: Any) -> bool:
    """A batch that can only shrink a document: allowed even past the size limit, so it can be cut down."""
    return isinstance(ops, list) and all(
        isinstance(op, dict) and op.get("op") in ("delete", "remove", "disable") for op in ops
    )


def _join_tail(doc: Document, tail: list[tuple[int, bytes]]) -> Document:
    """Join a stored tail into its decoded snapshot, in seq order (the order they were applied)."""
    for _, delta in tail:
        doc.join(codec.decode_delta(delta))
    return doc


def split_view(view: bytes) -> tuple[str, bytes]:
    """A stored view ``["<version>",<value>]`` as (version token, value JSON bytes), without parsing the value.

    A version token is ``v1.`` and base64url (:mod:`crdtstore.version`): it
    holds no quote or backslash, so the first quote after the opening one ends it.
    """
    end = view.index(b'"', 2)
    return view[2:end].decode("ascii"), view[end + 2 : -1]


def _version_digest(version: str) -> bytes:
    """``Document.version_digest()`` from an already encoded version token (saves a second encoding).

    The two must agree byte for byte: ``tests/test_node.py`` checks it.
    """
    return hashlib.blake2b(version.encode(), digest_size=16).digest()


def _is_empty(doc: Document) -> bool:
    """No visible field: the document reads as deleted (cheaper than ``not doc.value()``)."""
    root = doc.root
    return all(root.visible_tag(name) is None for name in root.fields)
