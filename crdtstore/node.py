"""The region node: the facade over one replica's documents, change feed and peer data.

Theory of operation
-------------------

:class:`Node` is what the HTTP API (``crdtstore/api/``), the replicator
(``crdtstore/replicator.py``, through the :class:`sync.store.ReplicaStore`
protocol), the CLI and the tests call. It owns one
:class:`~crdtstore.storage.Storage` (an LMDB environment) and one
:class:`~crdtstore.commit.GroupCommitWriter` (one writer thread), and keeps
the event loop free of blocking work: writes run on the writer thread, reads
in the default executor (or inline, for a stored view). The work is split
along three jobs, each in its own module, and the node wires them:

* :mod:`crdtstore.docstore`: how a document is stored (snapshot plus tail,
  compaction, the writer's cache, views, tombstones, Merkle leaves);
* :mod:`crdtstore.feed`: the change feed (records, ``changes()`` followers);
* :mod:`crdtstore.remote`: joining peers' deltas and states, with the
  quarantine of documents whose peer data cannot be joined.

**A local write.** ``apply`` sends one function to the writer. Inside the
group commit's transaction it loads the document (:meth:`DocStore.load`),
applies the ops under the node's replica id and a hybrid-logical-clock
timestamp, appends the encoded delta to the log under ``(replica id, next
seq)`` and persists the HLC, then :meth:`DocStore.settle` stores the change
(tail or snapshot, Merkle leaf, view) and writes its feed record. The call
returns only after that transaction committed (fsync). Calls only go down:
node, then document store, then feed, then storage.

**Deletion.** ``delete`` removes every visible field with ordinary CRDT ops
and logs that delta, so peers drop the same fields when the log is shipped;
the document store then keeps the cleared state as a tombstone (see
:mod:`crdtstore.docstore` for why). A remote delta or merged state that makes
a deleted document visible again resurrects it (add-wins, as in the CRDT);
one that does not only updates the tombstone. Deletedness itself is not
replicated state: a peer that applies the clearing delta (or joins the
tombstone) into a live copy holds an *empty* live document, which reads as
``{}`` there while the deleting region answers 404; digests, bytes and values
(empty) agree.

**Size limits.** A local write may not leave a document stored in more
than ``max_document_bytes`` (snapshot plus tail: what each load decodes;
past it the writer compacts first and refuses only if the encoding alone
is too large) nor a text or list it inserted into longer than
``max_sequence_length``: ``DocumentTooLarge`` (413), nothing written. A
batch of removals only is always allowed, so an oversized document can be
cut down. Remote deltas and states are not limited by them (see
:mod:`crdtstore.remote`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from crdtstore.commit import GroupCommitWriter, Overloaded, WriteContext, WriterClosed
from crdtstore.docstore import (
    DocStore,
    DocumentNotFound,
    DocumentTooLarge,
    NodeNotRunning,
    ReadResult,
    split_view,
)
from crdtstore.feed import ChangeFeed, InvalidCursor, RemoteWatcher, parse_since
from crdtstore.hlc import HybridClock
from crdtstore.limits import MAX_DOCUMENT_BYTES, MAX_SEQUENCE_LENGTH
from crdtstore.local import LocalWrites, WriteResult
from crdtstore.merkle import MerkleShape
from crdtstore.remote import RemoteJoin
from crdtstore.storage import (
    IncompatibleStorage,
    InvalidDocumentId,
    Storage,
    StorageError,
    StorageFull,
    check_doc_id,
)
from sync.events import PeerInfo
from sync.quarantine import ForgedDots, Quarantined, Rejected
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
        tail_bytes_per_delta: A snapshot of S bytes lets the tail hold S / this deltas, if more
            than ``tail_max_deltas`` (0: never more); see :mod:`crdtstore.docstore`.
        view_max_bytes: Documents stored in at most this many bytes get a read view once read
            (rendered by their writes from then on); bigger ones are decoded by each read.
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
        replica_name: Put into the replica id when the directory is new (see ``Storage.open``).
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
    tail_bytes_per_delta: int = 256
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
    replica_name: str | None = None


def _default_random_id() -> str:
    return secrets.token_hex(4)


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
        # Built by start(), once the storage is open.
        self._docs: DocStore | None = None
        self._feed: ChangeFeed | None = None
        self._remote: RemoteJoin | None = None
        self._local: LocalWrites | None = None
        self._closed = False

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
            name=cfg.replica_name,
        )
        with storage.read() as txn:
            self._hlc = HybridClock(storage.get_hlc(txn))
        self._storage = storage
        self.replica_id = storage.replica_id
        self._feed = ChangeFeed(
            storage,
            read=self._read,
            decode=lambda txn, doc_id: self.docs.decode(txn, doc_id),
            closing=lambda: self._closed,
            closed_errors=(NodeNotRunning,),
            queue=cfg.feed_queue,
            page=cfg.feed_page,
        )
        self._docs = DocStore(
            storage,
            self._feed,
            cache_docs=cfg.cache_docs,
            cache_bytes=cfg.cache_bytes,
            tail_max_deltas=cfg.tail_max_deltas,
            tail_min_bytes=cfg.tail_min_bytes,
            tail_bytes_per_delta=cfg.tail_bytes_per_delta,
            submit=lambda fn: self.writer.submit(fn),
            view_max_bytes=cfg.view_max_bytes,
        )
        self._remote = RemoteJoin(self._docs, self.replica_id, submit=self._submit, clock=self._clock)
        self._local = LocalWrites(
            self._docs,
            self.replica_id,
            self._hlc,
            self._clock,
            max_document_bytes=cfg.max_document_bytes,
            max_sequence_length=cfg.max_sequence_length,
        )
        self._writer = GroupCommitWriter(storage, max_queue=cfg.max_queue, max_batch=cfg.max_batch)
        self._writer.start()

    async def close(self) -> None:
        """Commit queued writes, end every change feed, close the storage (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer.close()
        if self._feed is not None:
            self._feed.wake_all()
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

    @property
    def docs(self) -> DocStore:
        """The document store (its layout, cache and reads), for tests."""
        if self._docs is None:
            raise NodeNotRunning("node not started")
        return self._docs

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
        return await self._submit(lambda ctx: self._local_writes().apply(ctx, doc_id, ops))

    async def apply_many(self, items: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[WriteResult | Exception]:
        """Apply many documents' op batches in one writer submission; answer per document.

        Each document's batch is atomic on its own, exactly as :meth:`apply` would apply it alone: one
        that is refused is refused before anything of it is written (see :meth:`LocalWrites.apply_many`)
        and answered with its exception, and the others commit. All of them share one queue slot and one
        future, so a bulk writer costs the writer one request, not one per document. A document named
        twice applies twice, in order.

        Returns:
            Per item, in order: its :class:`WriteResult`, or the exception :meth:`apply` would have
            raised for it alone (``OpError``, ``InvalidDocumentId``, ``DocumentTooLarge``, ...).

        Raises:
            Overloaded: Too many writes are waiting (nothing applied).
            StorageFull: The whole submission does not fit at ``max_map_size`` (nothing applied).
        """
        results: list[WriteResult | Exception | None] = [None] * len(items)
        ready: list[int] = []
        for index, (doc_id, _) in enumerate(items):
            try:
                check_doc_id(doc_id)
            except InvalidDocumentId as exc:
                results[index] = exc
            else:
                ready.append(index)
        if ready:
            local = self._local_writes()
            batches = [items[i] for i in ready]
            for index, outcome in zip(
                ready, await self._submit(lambda ctx: local.apply_many(ctx, batches)), strict=True
            ):
                results[index] = outcome
        return [r for r in results if r is not None]

    async def read(self, doc_id: str, *, siblings: bool = False) -> ReadResult:
        """The committed state of a document.

        Raises:
            DocumentNotFound: No live document has this id.
        """
        check_doc_id(doc_id)
        self._require_running()
        if not siblings:
            # The common case, one lookup of a stored view: cheaper inline than
            # the thread hop would be (see crdtstore.docstore).
            view = self.storage.read_view(doc_id)
            if view is not None:
                version, value = orjson.loads(view)
                return ReadResult(value=value, version=version, siblings=None)
            return await self.docs.read_decoded(self._read, doc_id)
        return await self._read(self.docs.read, doc_id, siblings)

    async def read_view(self, doc_id: str) -> bytes:
        """:meth:`read` as the view ``["<version>",<value>]`` in JSON (:func:`split_view` cuts it), for
        a server that sends the value on as it is: the stored view, or one rendered where none is.
        Equal views are equal reads: a server may reuse what it built from the same bytes.

        Raises:
            DocumentNotFound: No live document has this id.
        """
        storage = self._storage
        if storage is None or self._closed:
            raise NodeNotRunning("node is not running")
        view = storage.read_view(doc_id)  # checks the id
        if view is not None:
            return view
        result = await self.docs.read_decoded(self._read, doc_id)
        return orjson.dumps([result.version, result.value])

    async def delete(self, doc_id: str) -> None:
        """Delete a document on this replica (see the module docstring) and wait until durable.

        Raises:
            DocumentNotFound: No live document has this id.
        """
        check_doc_id(doc_id)
        await self._submit(lambda ctx: self._local_writes().delete(ctx, doc_id))

    async def run_local(self, fn: Callable[[WriteContext, LocalWrites], T]) -> T:
        """Run ``fn`` on the writer with the local-write step, in one durable transaction (the live channel's
        batch ids commit with the write they name: crdtstore/api/live_batches.py)."""
        return await self._submit(lambda ctx: fn(ctx, self._local_writes()))

    def changes(self, doc_id: str, since: str | None) -> AsyncIterator[dict[str, Any]]:
        """Follow a document's changes: history after ``since``, then live commits (see :mod:`crdtstore.feed`).

        A plain method returning an async iterator (``async for record in node.changes(...)``), so
        that a bad id or ``since`` raises here, before an HTTP layer starts streaming. Records are
        shared between subscribers: treat them as read-only. The iteration ends when the node closes.

        Raises:
            InvalidCursor: ``since`` is neither a feed cursor nor a version token.
            InvalidVersion: ``since`` looks like a version token but is malformed.
            InvalidDocumentId: Bad id.
        """
        return self._feed_of(doc_id).follow(doc_id, parse_since(since))

    def watch_remote(self, doc_id: str, watcher: RemoteWatcher) -> Callable[[], None]:
        """Call ``watcher`` with each peer's change to ``doc_id`` once accepted, before it is durable here: to
        show it early, never to acknowledge it (:meth:`crdtstore.feed.ChangeFeed.watch_remote`); returns its stop."""
        return self._feed_of(doc_id).watch_remote(doc_id, watcher)

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics: documents, LMDB sizes, commit stats, cache, subscribers."""
        storage = self.storage
        with storage.read() as txn:
            documents = storage.count_docs(txn)
        assert self._feed is not None and self._remote is not None
        return {
            "replica_id": self.replica_id,
            "epoch": storage.identity.epoch,
            "documents": documents,
            "lmdb": storage.info(),
            "commit": self.writer.stats(),
            "cache": self.docs.cache.stats(),
            "subscribers": self._feed.subscriber_count(),
            "quarantine": self._remote.quarantine.stats(),
        }

    def quarantined(self) -> list[Quarantined]:
        """The documents in quarantine, oldest first (at most ``sync.quarantine.MAX_LISTED``)."""
        return [] if self._remote is None else self._remote.quarantined()

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
        log from us treats the same way. Anti-entropy repairs the document
        (see :mod:`crdtstore.remote`).

        Returns:
            Per entry, False if it was already received.

        Raises:
            ValueError: An origin or seq the log cannot hold (nothing of the batch was written).
        """
        return await self._remote_join().apply_many(entries)

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
        return list(await asyncio.gather(*(self._merge_one(d, s) for d, s in states), return_exceptions=True))

    async def _merge_one(self, doc_id: str, state: bytes) -> bool | Rejected:
        return await self._remote_join().merge_one(doc_id, state)

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
        self._require_running()
        docs = self.docs
        return await self._read(lambda txn: [docs.state(txn, doc_id) for doc_id in doc_ids])

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

    def _local_writes(self) -> LocalWrites:
        self._require_running()
        assert self._local is not None
        return self._local

    def _feed_of(self, doc_id: str) -> ChangeFeed:
        check_doc_id(doc_id)
        self._require_running()
        assert self._feed is not None
        return self._feed

    def _remote_join(self) -> RemoteJoin:
        self._require_running()
        assert self._remote is not None
        return self._remote

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
