"""LMDB storage of one region replica.

Theory of operation
-------------------

One LMDB environment per replica directory holds everything the replica
must not lose, in named databases that a single write transaction updates
together (so a document, its delta in the log, its Merkle leaf, its feed
record and the counters can never disagree after a crash):

============  =====================================  ==========================================
database      key                                    value
============  =====================================  ==========================================
docs          doc id (utf-8)                         snapshot: encoded document (``codec``)
tail          doc id + NUL + seq (u32 BE)            encoded delta joined after the snapshot
views         doc id (utf-8)                         read view: JSON ``[version, value]`` (optional)
buckets       Merkle bucket (u32 BE) + doc id        the document's digest
merkle        level (u8) + index (u32 BE)            Merkle node value (sparse: no empty nodes)
log           origin + NUL + seq (u64 BE)            doc id + delta (:class:`sync.types.LogEntry`)
feed          doc id + NUL + local seq (u64 BE)      one change-feed record (JSON)
tombstones    doc id (utf-8)                         encoded state of a deleted document
meta          see ``_META_*`` below                  identity, counters, vectors
============  =====================================  ==========================================

``tail``, ``views``, ``buckets`` and ``tombstones`` go beyond the original sketch.

A document is its snapshot joined with its tail deltas in seq order, so a
write appends its (already encoded) delta instead of re-encoding the whole
document; :mod:`crdtstore.docstore`, which decides a document's layout (this
module only stores it), rewrites the snapshot and drops the tail
(compaction) in one transaction when the tail grows past a bound. Every
state a commit can leave is therefore loadable. ``views`` holds a
ready-to-serve JSON rendering of a document's plain value and version,
for the documents that are read: written by the document store in the same
transaction as the change it reflects, or later if the document has not
changed since (and deleted, when a change is not rendered): a read that
finds it needs no decode at all. ``buckets``
lets anti-entropy list the (id, digest) pairs of one differing leaf without
scanning every document, and gives the old digest for a Merkle update
without decoding the old document. ``tombstones`` keeps the causal history
of a deleted document: dots are minted per document (one past the highest
counter the document has seen), so a document re-created from nothing
would mint dots it already minted before its deletion, and a peer that saw
the old ones would silently drop the new writes.

Big-endian integers make LMDB's byte order the numeric order, so a cursor
walks one origin's log or one document's feed in sequence order.

The Merkle tree is updated in two steps. A document write changes only its
leaf (an XOR, O(1)) and records the leaf as dirty; :meth:`Storage.flush_merkle`
rehashes the inner nodes above every dirty leaf once, level by level, and
the group-commit writer calls it right before each commit. Rehashing a path
per write cost ``depth * fanout`` point reads per write (40% of the writer's
time in profiles); per commit, the upper levels are shared by the whole
batch and each inner node reads its children with one cursor range scan.
Anything that commits document writes without the writer must call
``flush_merkle`` too; readers only ever see flushed trees.

The counters every write bumps (its origin's log mark, the feed sequence,
the HLC) live in ``meta``, and each write used to read and rewrite them: a
few LMDB calls per write, each of which releases and retakes the GIL, and
every one a chance for the event loop to take it in between. Within one
top-level write transaction (the writer's batch) they are kept in memory
and written once, by :meth:`Storage.flush_merkle` before the commit. The
memory belongs to that transaction alone: a new top-level transaction
starts empty (so an aborted batch leaves nothing behind), and the first
child transaction (a savepoint, whose abort the memory could not follow)
writes it out and turns it off for the rest of the batch.

The same memory keeps two more things of the batch. Merkle leaf changes
(an XOR per bucket) wait for the flush, so many writes to one bucket cost
one leaf read and write. Puts to ``log``, ``tail``, ``buckets`` and
``feed`` wait too, and go in with one ``putmulti`` per database: py-lmdb
releases the GIL around every call, and on a busy node each release hands
the GIL to the event loop, after which the writer waits to get it back, so
a write that made six calls waited six times. Every read or delete of those
databases in the batch's transaction writes that database's kept puts out
first (``Storage._reading``), so the transaction always reads its own writes.

Replica identity and epochs
---------------------------

A dot ``(replica, counter)`` must never name two different events. The
counters live in the documents, so a replica that loses committed state
would mint a counter again: after a power failure with ``sync=False``
(LMDB keeps the transaction order but may lose the last ones, after they
were already gossiped), or after an operator restores the directory from a
backup. The fix is to never mint under the same name twice across starts:

* An empty directory gets a *base* id ``f"{region}-{random_id()}"`` and epoch 1.
* Every start, before anything else, bumps the epoch and draws a fresh
  *nonce* with ``random_id()``, and commits both durably (forced fsync even
  when ``sync=False``). Dots are minted under the effective id
  ``f"{base}.{epoch}.{nonce}"``.

The epoch alone handles crashes and lost tail transactions: a new start
always has a larger epoch than any start whose writes reached the disk.
It does not handle a restored backup: the restored directory bumps to an
epoch that the lost timeline already used. The nonce handles that without
coordinating with peers: two starts collide only if they share base, epoch
*and* nonce. The cost is one more entry per start in the version vectors of
the documents written afterwards; the core's vectors are compact, and the
replicator can later retire old incarnations once every peer acknowledged them.

The log is keyed by the effective id too, so each incarnation is its own
origin stream with sequence numbers from 1, and a restored directory can
never reuse a (origin, seq) that a peer already acknowledged.

Durability and the map size
---------------------------

The environment opens with ``sync=True, metasync=True`` (configurable): an
acknowledged commit is on disk, data and meta page. With both on, LMDB is
opened with ``metasync=False`` instead and :attr:`Storage.meta_sync_deferred`
is set: ``commit()`` then fsyncs the data pages and only writes the meta page,
and :meth:`Storage.sync_meta` (an ``fdatasync``) makes it durable. The
group-commit writer runs that second flush on a thread of its own and
acknowledges a batch only after it returned, so the writer can go on with the
next batch meanwhile instead of waiting for a second synchronous write inside
the write lock. Integrity is LMDB's own: the data pages of a commit are
durable before its meta page is written (``MDB_NOMETASYNC`` "maintains database
integrity"; a crash between the two only undoes commits nobody was told about).
The map starts at ``map_size`` and doubles on
``lmdb.MapFullError`` up to ``max_map_size`` (see :meth:`Storage.grow`).
LMDB requires that no transaction of this process is active while the map
is resized; the single writer guarantees that for writes and a small
readers/resizer gate does it for reads, so every read must go through
:meth:`Storage.read`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import lmdb

from crdtstore.merkle import MerkleShape, MerkleTree, leaf_change, rehash, xor_leaves
from sync.types import LogEntry

if TYPE_CHECKING:
    # Every transaction here is opened with buffers=False: values are bytes.
    Txn: TypeAlias = lmdb.Transaction[bytes]

__all__ = [
    "DB_NAMES",
    "IncompatibleStorage",
    "InvalidDocumentId",
    "MAX_ID_BYTES",
    "ReplicaIdentity",
    "Storage",
    "StorageClosed",
    "StorageError",
    "StorageFull",
    "Txn",
    "check_doc_id",
]

DB_NAMES = ("docs", "tail", "views", "buckets", "merkle", "log", "feed", "tombstones", "meta")

MAX_ID_BYTES = 256
"""Longest document id (utf-8 bytes); LMDB keys stop at 511 bytes and the feed adds 9."""

FORMAT_VERSION = 1

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_SEP = b"\x00"

_META_FORMAT = b"format"
_META_REGION = b"region"
_META_BASE = b"base"
_META_EPOCH = b"epoch"
_META_NONCE = b"nonce"
_META_SHAPE = b"merkle_shape"
_META_HLC = b"hlc"
_META_FEED_SEQ = b"feed_seq"
_META_VV = b"vv\x00"  # + origin -> highest contiguous seq of that origin in the log
_META_ACK = b"ack\x00"  # + peer + NUL + origin -> highest seq the peer acknowledged

# Region and random parts end up inside replica ids, version tokens and log
# keys: keep them to a url-safe alphabet with no '.' (the epoch separator)
# and no NUL (the key separator).
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Unknown:
    """The type of :data:`UNKNOWN`: a stored digest the caller does not know (read it)."""


UNKNOWN = Unknown()


class StorageError(Exception):
    """Root of the storage layer's errors."""

    code = "storage_error"


class StorageFull(StorageError):
    """A write does not fit even at ``max_map_size``; it was not committed."""

    code = "storage_full"


class StorageClosed(StorageError):
    """The storage was closed."""

    code = "storage_closed"


class IncompatibleStorage(StorageError):
    """The directory belongs to another region, format or Merkle shape."""

    code = "incompatible_storage"


class InvalidDocumentId(StorageError, ValueError):
    """A document id that is empty, too long or contains NUL."""

    code = "invalid_document_id"


def check_doc_id(doc_id: str) -> bytes:
    """Validate a document id and return its key bytes.

    Raises:
        InvalidDocumentId: If the id is empty, longer than :data:`MAX_ID_BYTES`
            in utf-8, or contains NUL (the key separator of ``feed``).
    """
    if type(doc_id) is not str:
        raise InvalidDocumentId("document id must be a non-empty string")
    # A write checks its id in each of the half dozen storage calls it makes: remember recent ones.
    return _checked_id(doc_id)


@functools.lru_cache(maxsize=4096)
def _checked_id(doc_id: str) -> bytes:
    if not doc_id:
        raise InvalidDocumentId("document id must be a non-empty string")
    try:
        raw = doc_id.encode()
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidDocumentId("document id is not valid unicode") from exc
    if len(raw) > MAX_ID_BYTES:
        raise InvalidDocumentId(f"document id longer than {MAX_ID_BYTES} bytes")
    if _SEP in raw:
        raise InvalidDocumentId("document id contains NUL")
    return raw


def _check_name(what: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{what} must match {_NAME.pattern}, got {value!r}")
    return value


def _check_origin(origin: str) -> bytes:
    if type(origin) is not str:
        raise ValueError(f"bad origin replica id {origin!r}")
    return _origin_bytes(origin)


@functools.lru_cache(maxsize=256)
def _origin_bytes(origin: str) -> bytes:
    raw = origin.encode()
    if not raw or _SEP in raw or len(raw) > 200:
        raise ValueError(f"bad origin replica id {origin!r}")
    return raw


@dataclass(frozen=True, slots=True)
class ReplicaIdentity:
    """Who this replica is during this start (see the module docstring).

    Attributes:
        region: The region the directory was created for.
        base: The stable id, ``f"{region}-{random}"``, kept for the directory's life.
        epoch: Bumped on every start.
        nonce: Random, drawn on every start.
    """

    region: str
    base: str
    epoch: int
    nonce: str

    @property
    def replica_id(self) -> str:
        """The effective id dots are minted under and the local log is keyed by."""
        return f"{self.base}.{self.epoch}.{self.nonce}"

    @property
    def incarnation(self) -> str:
        """``f"{epoch}.{nonce}"``: names this start (used in change-feed cursors)."""
        return f"{self.epoch}.{self.nonce}"


@functools.lru_cache(maxsize=4096)
def _bucket_key(shape: MerkleShape, doc_id: str) -> bytes:
    """``buckets`` key of a document: its leaf bucket (u32 BE), then its id (a hash per write saved)."""
    return _U32.pack(shape.bucket(doc_id)) + check_doc_id(doc_id)


def _encode_log_value(entry: LogEntry) -> bytes:
    """The ``log`` value of an entry: its document id (a delta does not name its document), then the delta."""
    return _log_value(entry.doc_id, entry.delta)


def _log_key(origin: bytes, seq: int) -> bytes:
    """The ``log`` key of an entry: its (checked) origin, then its seq, big-endian so that a scan goes in order."""
    return origin + _SEP + _U64.pack(seq)


def _log_value(doc_id: str, delta: bytes) -> bytes:
    raw = doc_id.encode()
    return _U16.pack(len(raw)) + raw + delta


def _decode_log_value(origin: str, seq: int, value: bytes) -> LogEntry:
    (n,) = struct.unpack_from(">H", value)
    return LogEntry(origin, seq, bytes(value[2 : 2 + n]).decode(), bytes(value[2 + n :]))


def _restore_map_size(env: lmdb.Environment, map_size: int, max_map_size: int) -> None:
    """Give a reopened environment back the room it had grown to.

    LMDB opens with the requested size, raised only to what the data already
    uses, so a map that grew before the restart would be full again at the
    first write. Replay the doubling instead: the first size that leaves
    room above the data, capped. Runs before any transaction of this process.
    """
    info, stat = env.info(), env.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    size = map_size
    while size <= used and size < max_map_size:
        size = min(size * 2, max_map_size)
    if size > info["map_size"]:
        env.set_mapsize(size)


class _ResizeGate:
    """Readers share, the resizer is exclusive and preferred (no starvation by a reader stream)."""

    def __init__(self) -> None:
        # A plain Lock, not the default RLock: nothing re-enters, and it is cheaper.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._readers = 0
        self._resizing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self.enter_shared()
        try:
            yield
        finally:
            self.exit_shared()

    # The read path of every GET calls these two directly: a generator-based
    # context manager costs more than the lookup it guards.
    def enter_shared(self) -> None:
        with self._lock:  # the condition's own lock, entered without the Python-level wrapper
            while self._resizing:
                self._cond.wait()
            self._readers += 1

    def exit_shared(self) -> None:
        with self._lock:
            self._readers -= 1
            # Only a resizer waits for the readers to drain (it set _resizing under this lock first).
            if not self._readers and self._resizing:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _LmdbNodes:
    """A :class:`crdtstore.merkle.NodeStore` over one named db inside one transaction."""

    __slots__ = ("_db", "_txn")

    def __init__(self, txn: Txn, db: Any) -> None:
        self._txn = txn
        self._db = db

    def get(self, key: bytes, /) -> bytes | None:
        return self._txn.get(key, db=self._db)

    def __setitem__(self, key: bytes, value: bytes, /) -> None:
        self._txn.put(key, value, db=self._db)

    def __delitem__(self, key: bytes, /) -> None:
        self._txn.delete(key, db=self._db)


class Storage:
    """The LMDB environment of one replica and typed helpers over its databases.

    Open it with :meth:`open`. Write helpers take the write transaction the
    caller (the group-commit writer) owns; read helpers take a transaction
    from :meth:`read`. Nothing here starts a write transaction on its own
    except :meth:`open`, so every change goes through the single writer.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        dbs: dict[str, Any],
        identity: ReplicaIdentity,
        *,
        max_map_size: int,
        shape: MerkleShape,
    ) -> None:
        self.env = env
        self.dbs = dbs
        self.identity = identity
        self.max_map_size = max_map_size
        self.shape = shape
        self.map_grows = 0
        self.meta_sync_deferred = False
        """Commits leave their meta page unflushed: call :meth:`sync_meta` before acknowledging them."""
        self._gate = _ResizeGate()
        self._closed = False
        # Leaves changed since the last flush_merkle; writer thread only. Extra
        # entries (from a rolled-back child transaction) only cost a rehash
        # that finds nothing to change, so aborts need not clean up here.
        self._dirty_leaves: set[int] = set()
        # The meta counters of one top-level write transaction (see the module docstring);
        # writer thread only. _scope is that transaction, None while the memory is off.
        self._scope: Txn | None = None
        self._meta: dict[bytes, bytes | None] = {}
        self._meta_dirty: set[bytes] = set()
        # Merkle leaf changes (bucket -> XOR of item hashes) of the same transaction, kept in
        # memory like the counters: many writes to one bucket cost one leaf read and write.
        self._leaf_xor: dict[int, int] = {}
        # Puts of the same transaction to the append-mostly databases (log, tail, buckets, feed), written
        # by one putmulti per database at the flush: every LMDB call releases the GIL, and each release
        # lets the busy event loop take it, so a write that makes four calls waits four times to get it back.
        self._pending: dict[str, dict[bytes, bytes]] = {}

    # Public methods for the lifecycle.

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        region: str,
        random_id: Callable[[], str],
        map_size: int = 64 << 20,
        max_map_size: int = 8 << 30,
        sync: bool = True,
        metasync: bool = True,
        max_dbs: int = 16,
        max_readers: int = 126,
        shape: MerkleShape | None = None,
        name: str | None = None,
    ) -> Storage:
        """Open (or create) the replica directory ``path`` and start a new epoch.

        Args:
            path: The directory; created if missing.
            region: The region name; must match the one the directory was created for.
            random_id: Source of randomness for the base id and the per-start
                nonce (injected so tests are deterministic).
            map_size: Initial map size in bytes (an existing larger map is kept).
            max_map_size: Cap for :meth:`grow`.
            sync: fsync on every commit (``False`` trades durability of the last
                commits on power loss for speed; a crash of the process loses nothing).
            metasync: fsync the meta page too (with ``sync``: deferred to
                :meth:`sync_meta`, see the module docstring).
            max_dbs: Named databases allowed (at least ``len(DB_NAMES)``).
            max_readers: Concurrent read transactions allowed.
            shape: Merkle tree shape; must match the directory's and the peers'.
            name: Put into a new directory's base id, ``f"{region}-{name}-{random}"`` (a pod's
                ordinal: ids then say which pod holds them); the random part still makes it unique.

        Raises:
            IncompatibleStorage: The directory was created for another region,
                format or Merkle shape.
            ValueError: Bad region or ``random_id`` output.
        """
        shape = shape if shape is not None else MerkleShape()
        _check_name("region", region)
        if name is not None:
            _check_name("name", name)
        if max_dbs < len(DB_NAMES):
            raise ValueError(f"max_dbs must be at least {len(DB_NAMES)}")
        if map_size > max_map_size:
            raise ValueError("map_size exceeds max_map_size")
        path.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=max_dbs,
            max_readers=max_readers,
            sync=sync,
            # With sync, the meta page's flush is deferred to sync_meta() (see the module docstring).
            metasync=metasync and not sync,
            # Random access over a map that may exceed RAM: readahead only
            # pollutes the page cache.
            readahead=False,
        )
        try:
            # A process that died holding a read slot would pin old pages
            # forever and make the file grow; clear such stale slots now.
            env.reader_check()
            _restore_map_size(env, map_size, max_map_size)
            prefix = region if name is None else f"{region}-{name}"
            storage = cls._init(
                env, region=region, prefix=prefix, random_id=random_id, shape=shape, max_map_size=max_map_size
            )
            storage.meta_sync_deferred = sync and metasync
        except BaseException:
            env.close()
            raise
        return storage

    @classmethod
    def _init(
        cls,
        env: lmdb.Environment,
        *,
        region: str,
        prefix: str,
        random_id: Callable[[], str],
        shape: MerkleShape,
        max_map_size: int,
    ) -> Storage:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name.encode(), txn=txn, create=True) for name in DB_NAMES}
            meta = dbs["meta"]
            shape_raw = struct.pack(">II", shape.fanout, shape.depth)
            base_raw = txn.get(_META_BASE, db=meta)
            if base_raw is None:
                if txn.stat(dbs["docs"])["entries"] or txn.stat(dbs["log"])["entries"]:
                    raise IncompatibleStorage("directory holds data but no replica identity")
                base = f"{prefix}-{_check_name('random_id()', random_id())}"
                epoch = 1
                txn.put(_META_FORMAT, _U32.pack(FORMAT_VERSION), db=meta)
                txn.put(_META_REGION, region.encode(), db=meta)
                txn.put(_META_BASE, base.encode(), db=meta)
                txn.put(_META_SHAPE, shape_raw, db=meta)
            else:
                base = base_raw.decode()

                def required(key: bytes) -> bytes:
                    value = txn.get(key, db=meta)
                    if value is None:
                        raise IncompatibleStorage(f"replica metadata {key.decode()!r} is missing")
                    return value

                stored_format = _U32.unpack(required(_META_FORMAT))[0]
                if stored_format != FORMAT_VERSION:
                    raise IncompatibleStorage(f"storage format {stored_format}, this code reads {FORMAT_VERSION}")
                stored_region = required(_META_REGION).decode()
                if stored_region != region:
                    raise IncompatibleStorage(f"directory belongs to region {stored_region!r}, not {region!r}")
                if required(_META_SHAPE) != shape_raw:
                    raise IncompatibleStorage("directory was built with another Merkle shape")
                epoch = int(_U64.unpack(required(_META_EPOCH))[0]) + 1
            nonce = _check_name("random_id()", random_id())
            txn.put(_META_EPOCH, _U64.pack(epoch), db=meta)
            txn.put(_META_NONCE, nonce.encode(), db=meta)
        # The new epoch must be on disk before the first dot is minted under
        # it, whatever durability the operator chose for ordinary commits.
        env.sync(True)
        identity = ReplicaIdentity(region=region, base=base, epoch=epoch, nonce=nonce)
        max_map_size = max(max_map_size, env.info()["map_size"])
        return cls(env, dbs, identity, max_map_size=max_map_size, shape=shape)

    def close(self) -> None:
        """Close the environment (idempotent); waits for running reads, refuses later ones."""
        with self._gate.exclusive():
            if not self._closed:
                self._closed = True
                self.env.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def replica_id(self) -> str:
        return self.identity.replica_id

    # Public methods for transactions.

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """A read transaction; keep it short and never hold it across an ``await``."""
        with self._gate.shared():
            if self._closed:
                raise StorageClosed("storage is closed")
            with self.env.begin(buffers=False) as txn:
                yield txn

    def begin_write(self, parent: Txn | None = None) -> Txn:
        """A write transaction (or a child of ``parent``); only the writer thread calls this."""
        if parent is not None:
            # A savepoint: its abort would not undo the counters kept in memory, so write them
            # into the parent now and read the transaction itself from here on.
            self._spill(parent)
            self._scope = None
            return self.env.begin(write=True, parent=parent)
        txn = self.env.begin(write=True)
        self._scope = txn
        self._meta = {}
        self._meta_dirty = set()
        self._leaf_xor = {}
        self._pending = {}
        return txn

    def sync_meta(self) -> None:
        """Make every commit so far durable (``fdatasync``; the GIL is released meanwhile).

        Safe on any thread, next to a write transaction of the writer's: it
        only flushes what earlier commits wrote.
        """
        with self._gate.shared():
            if self._closed:
                raise StorageClosed("storage is closed")
            self.env.sync(True)

    def grow(self) -> bool:
        """Double the map size, up to ``max_map_size``.

        The caller must hold no transaction; readers are drained through the gate.

        Returns:
            False if the map is already at the cap (the caller raises :class:`StorageFull`).
        """
        with self._gate.exclusive():
            current = self.env.info()["map_size"]
            target = min(current * 2, self.max_map_size)
            if target <= current:
                return False
            self.env.set_mapsize(target)
            self.map_grows += 1
            return True

    def info(self) -> dict[str, int]:
        """Sizes for metrics: map size, bytes in use, page size."""
        with self._gate.shared():
            if self._closed:
                raise StorageClosed("storage is closed")
            info = self.env.info()
            stat = self.env.stat()
        return {
            "map_size": info["map_size"],
            "max_map_size": self.max_map_size,
            "used_bytes": (info["last_pgno"] + 1) * stat["psize"],
            "page_size": stat["psize"],
            "readers": info["num_readers"],
            "map_grows": self.map_grows,
        }

    # Public methods for documents.

    def get_doc(self, txn: Txn, doc_id: str) -> bytes | None:
        """The document's snapshot (an encoded document), or None; see :meth:`get_tail` for the rest."""
        return txn.get(check_doc_id(doc_id), db=self.dbs["docs"])

    def get_tail(self, txn: Txn, doc_id: str) -> list[tuple[int, bytes]]:
        """The ``(seq, encoded delta)`` pairs to join after the snapshot, in seq order."""
        prefix = check_doc_id(doc_id) + _SEP
        out: list[tuple[int, bytes]] = []
        with txn.cursor(db=self._reading(txn, "tail")) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out.append((_U32.unpack_from(key, len(prefix))[0], value))
        return out

    def append_tail(
        self, txn: Txn, doc_id: str, seq: int, delta: bytes, digest: bytes, old: bytes | None | Unknown = UNKNOWN
    ) -> None:
        """Append a delta to a live document's tail under ``seq`` and record its new digest.

        The caller tracks the next seq (one past the last of :meth:`get_tail`);
        :meth:`put_doc` drops the tail, so seqs start again at 1 after it.
        ``old``: the digest stored now, when the caller knows it (saves reading it).
        """
        key = check_doc_id(doc_id)
        self._put(txn, "tail", key + _SEP + _U32.pack(seq), delta)
        self._set_digest(txn, doc_id, digest, old)

    def get_view(self, txn: Txn, doc_id: str) -> bytes | None:
        """The stored read view of a live document, or None if none is stored."""
        return txn.get(check_doc_id(doc_id), db=self.dbs["views"])

    def read_view(self, doc_id: str) -> bytes | None:
        """:meth:`get_view` in a read transaction of its own: the hot path of a plain read."""
        key = check_doc_id(doc_id)
        gate = self._gate
        gate.enter_shared()
        try:
            if self._closed:
                raise StorageClosed("storage is closed")
            with self.env.begin(buffers=False) as txn:
                return txn.get(key, db=self.dbs["views"])
        finally:
            gate.exit_shared()

    def put_view(self, txn: Txn, doc_id: str, view: bytes) -> None:
        txn.put(check_doc_id(doc_id), view, db=self.dbs["views"])

    def delete_view(self, txn: Txn, doc_id: str) -> None:
        txn.delete(check_doc_id(doc_id), db=self.dbs["views"])

    def get_digest(self, txn: Txn, doc_id: str) -> bytes | None:
        """The digest the Merkle tree holds for ``doc_id``, or None if absent."""
        return txn.get(self._bucket_key(doc_id), db=self._reading(txn, "buckets"))

    def put_doc(self, txn: Txn, doc_id: str, data: bytes, digest: bytes, old: bytes | None | Unknown = UNKNOWN) -> bool:
        """Store a document's snapshot (dropping its tail) and record its new digest.

        Returns:
            True if the document did not exist before (a deleted document's tombstone
            digest, see :meth:`put_digest`, does not count).
        """
        key = check_doc_id(doc_id)
        # put(overwrite=False) stores only a new key: it tells creation apart without reading the old snapshot.
        created = txn.put(key, data, db=self.dbs["docs"], overwrite=False)
        if not created:
            txn.put(key, data, db=self.dbs["docs"])
        self._drop_tail(txn, key)
        self._set_digest(txn, doc_id, digest, old)
        return bool(created)

    def delete_doc(self, txn: Txn, doc_id: str) -> bool:
        """Remove a document, its tail, view and Merkle leaf contribution; False if it did not exist."""
        key = check_doc_id(doc_id)
        if not txn.delete(key, db=self.dbs["docs"]):
            return False
        bkey = self._bucket_key(doc_id)
        old = txn.get(bkey, db=self._reading(txn, "buckets"))
        txn.delete(key, db=self.dbs["views"])
        self._drop_tail(txn, key)
        if old is not None:
            txn.delete(bkey, db=self._reading(txn, "buckets"))
            self._update_leaf(txn, doc_id, bkey, old, None)
        return True

    def put_digest(self, txn: Txn, doc_id: str, digest: bytes) -> None:
        """Record ``doc_id``'s digest in its bucket and Merkle leaf without touching ``docs``.

        The node uses it for deleted documents: their tombstones stay in the
        tree so anti-entropy can ship a delete to a peer whose log no longer
        holds it.
        """
        self._set_digest(txn, doc_id, digest)

    def get_tombstone(self, txn: Txn, doc_id: str) -> bytes | None:
        return txn.get(check_doc_id(doc_id), db=self.dbs["tombstones"])

    def put_tombstone(self, txn: Txn, doc_id: str, data: bytes) -> None:
        txn.put(check_doc_id(doc_id), data, db=self.dbs["tombstones"])

    def delete_tombstone(self, txn: Txn, doc_id: str) -> bool:
        return txn.delete(check_doc_id(doc_id), db=self.dbs["tombstones"])

    def count_docs(self, txn: Txn) -> int:
        return txn.stat(self.dbs["docs"])["entries"]

    def list_docs(self, txn: Txn, prefix: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Document ids starting with ``prefix``, in utf-8 byte order, strictly after ``after``.

        Returns:
            Up to ``limit`` ids and whether more follow.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        raw_prefix = prefix.encode()
        start = raw_prefix
        if after is not None:
            # Resume strictly after the cursor: the smallest key above it is cursor + NUL.
            start = max(start, after.encode() + _SEP)
        ids: list[str] = []
        with txn.cursor(db=self.dbs["docs"]) as cur:
            if not cur.set_range(start):
                return ids, False
            for key in cur.iternext(keys=True, values=False):
                if not key.startswith(raw_prefix):
                    break
                if len(ids) == limit:
                    return ids, True
                ids.append(key.decode())
        return ids, False

    # Public methods for the Merkle tree.

    def merkle(self, txn: Txn) -> MerkleTree:
        """The Merkle tree as ``txn`` sees it (in a write transaction: after :meth:`flush_merkle`)."""
        self._spill(txn)
        return MerkleTree(_LmdbNodes(txn, self.dbs["merkle"]), shape=self.shape)

    @property
    def merkle_dirty(self) -> int:
        """Leaves changed since the last :meth:`flush_merkle` (0 when the inner nodes are current)."""
        return len(self._dirty_leaves)

    def flush_merkle(self, txn: Txn) -> int:
        """Rehash the inner nodes above every leaf changed since the last flush.

        Call it in the write transaction that holds the leaf changes, before
        committing it. Level by level, each parent of a changed node is
        recomputed once from its children, read with one cursor range scan
        (empty nodes are absent, so the scan sees only the stored ones):
        :func:`crdtstore.merkle.rehash`, compiled with the core.

        It also writes the meta counters the transaction kept in memory (see
        the module docstring), so whatever commits writes must call it first.

        Returns:
            The number of inner nodes recomputed.
        """
        self._spill(txn)
        if not self._dirty_leaves:
            return 0
        with txn.cursor(db=self.dbs["merkle"]) as cur:
            rehashed = rehash(cur, self.shape, self._dirty_leaves)
        self._dirty_leaves = set()
        return rehashed

    def bucket_items(self, txn: Txn, bucket: int) -> list[tuple[str, bytes]]:
        """The ``(doc_id, digest)`` pairs in one leaf bucket, in id order."""
        prefix = _U32.pack(bucket)
        items: list[tuple[str, bytes]] = []
        with txn.cursor(db=self._reading(txn, "buckets")) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    items.append((key[4:].decode(), value))
        return items

    # Public methods for the log and version vectors.

    def get_seq(self, txn: Txn, origin: str) -> int:
        """The highest seq of ``origin`` with no gap below it in this replica (0 if none)."""
        raw = self._meta_get(txn, _META_VV + _check_origin(origin))
        return 0 if raw is None else _U64.unpack(raw)[0]

    def vector(self, txn: Txn) -> dict[str, int]:
        """The replication version vector: origin -> highest contiguous seq held."""
        return self._scan_u64(txn, _META_VV)

    def append_local(self, txn: Txn, origin: str, doc_id: str, delta: bytes) -> int:
        """Log a delta minted here under the next seq of ``origin``; return that seq."""
        # get_seq, _put_log and _set_seq in one: every local write passes here, and each
        # Python-level call of theirs cost about what the work itself does.
        raw = _check_origin(origin)
        mark = _META_VV + raw
        stored = self._meta_get(txn, mark)
        seq = (0 if stored is None else _U64.unpack(stored)[0]) + 1
        self._put(txn, "log", _log_key(raw, seq), _log_value(doc_id, delta))
        self._meta_put(txn, mark, _U64.pack(seq))
        return seq

    def has_log(self, txn: Txn, origin: str, seq: int) -> bool:
        """True if ``(origin, seq)`` was already received (logged, or below the contiguous mark)."""
        if seq <= self.get_seq(txn, origin):
            return True
        return txn.get(self._log_key(origin, seq), db=self._reading(txn, "log")) is not None

    def append_remote(self, txn: Txn, entry: LogEntry) -> bool:
        """Log a delta received from a peer, out of order if need be.

        The log itself is the set of sequence numbers received beyond the
        contiguous mark: after storing, the mark advances over every
        consecutive entry present.

        Returns:
            False (and stores nothing) if the entry was already received.
        """
        if entry.seq < 1:
            raise ValueError(f"bad seq {entry.seq}")
        if self.has_log(txn, entry.origin, entry.seq):
            return False
        self._put_log(txn, entry)
        seq = self.get_seq(txn, entry.origin)
        if entry.seq == seq + 1:
            while txn.get(self._log_key(entry.origin, seq + 1), db=self._reading(txn, "log")) is not None:
                seq += 1
            self._set_seq(txn, entry.origin, seq)
        return True

    def skip_log(self, txn: Txn, origin: str, upto: int) -> int:
        """Raise ``origin``'s contiguous mark to at least ``upto``, then over consecutive logged entries.

        For entries this replica never logged but holds anyway (anti-entropy
        merged states that include them). Returns the new mark.
        """
        seq = max(self.get_seq(txn, origin), upto)
        while txn.get(self._log_key(origin, seq + 1), db=self._reading(txn, "log")) is not None:
            seq += 1
        if seq > 0:
            self._set_seq(txn, origin, seq)
        return seq

    def log_range(self, txn: Txn, origin: str, after: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` log entries of ``origin`` with seq > ``after``, in seq order."""
        prefix = _check_origin(origin) + _SEP
        entries: list[LogEntry] = []
        if limit < 1:
            return entries
        with txn.cursor(db=self._reading(txn, "log")) as cur:
            if cur.set_range(prefix + _U64.pack(after + 1)):
                for key, value in cur:
                    if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                        break
                    entries.append(_decode_log_value(origin, _U64.unpack(key[len(prefix) :])[0], value))
                    if len(entries) == limit:
                        break
        return entries

    def truncate_log(self, txn: Txn, origin: str, upto: int) -> int:
        """Delete ``origin``'s entries with seq <= ``upto`` (all peers have them); return the count."""
        prefix = _check_origin(origin) + _SEP
        removed = 0
        with txn.cursor(db=self._reading(txn, "log")) as cur:
            found = cur.set_range(prefix)
            while found:
                key = cur.key()
                if not key.startswith(prefix) or _U64.unpack(key[len(prefix) :])[0] > upto:
                    break
                # delete() moves the cursor to the next entry; past the end it reports no key.
                cur.delete()
                removed += 1
                found = bool(cur.key())
        return removed

    def acked(self, txn: Txn, peer: str) -> dict[str, int]:
        """What ``peer`` acknowledged: origin -> highest seq."""
        return self._scan_u64(txn, _META_ACK + _check_origin(peer) + _SEP)

    def set_acked(self, txn: Txn, peer: str, vector: dict[str, int]) -> None:
        """Raise ``peer``'s acknowledged vector (never lowers an entry: acks are monotonic)."""
        base = _META_ACK + _check_origin(peer) + _SEP
        for origin, seq in vector.items():
            key = base + _check_origin(origin)
            old = txn.get(key, db=self.dbs["meta"])
            if old is None or _U64.unpack(old)[0] < seq:
                txn.put(key, _U64.pack(seq), db=self.dbs["meta"])

    # Public methods for the change feed.

    def next_feed_seq(self, txn: Txn) -> int:
        """Reserve the next local feed sequence number (global to the replica, never reused here)."""
        raw = self._meta_get(txn, _META_FEED_SEQ)
        seq = (0 if raw is None else _U64.unpack(raw)[0]) + 1
        self._meta_put(txn, _META_FEED_SEQ, _U64.pack(seq))
        return seq

    def put_feed(self, txn: Txn, doc_id: str, seq: int, record: bytes) -> None:
        self._put(txn, "feed", self._feed_key(doc_id, seq), record)

    def get_feed(self, txn: Txn, doc_id: str, seq: int) -> bytes | None:
        return txn.get(self._feed_key(doc_id, seq), db=self._reading(txn, "feed"))

    def feed_range(self, txn: Txn, doc_id: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` feed records of ``doc_id`` with seq > ``after``, in order."""
        prefix = check_doc_id(doc_id) + _SEP
        records: list[tuple[int, bytes]] = []
        with txn.cursor(db=self._reading(txn, "feed")) as cur:
            if cur.set_range(prefix + _U64.pack(after + 1)):
                for key, value in cur:
                    if not key.startswith(prefix) or len(records) == limit:
                        break
                    records.append((_U64.unpack(key[len(prefix) :])[0], value))
        return records

    def feed_before(self, txn: Txn, doc_id: str, before: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` feed records of ``doc_id`` with seq < ``before``, newest first."""
        prefix = check_doc_id(doc_id) + _SEP
        records: list[tuple[int, bytes]] = []
        with txn.cursor(db=self._reading(txn, "feed")) as cur:
            # Position on the first key >= (doc, before), then step back.
            found = cur.prev() if cur.set_range(prefix + _U64.pack(before)) else cur.last()
            while found and len(records) < limit:
                key = cur.key()
                if not key.startswith(prefix):
                    break
                records.append((_U64.unpack(key[len(prefix) :])[0], cur.value()))
                found = cur.prev()
        return records

    def last_feed_seq(self, txn: Txn, doc_id: str) -> int:
        """The seq of the newest feed record of ``doc_id`` (0 if none)."""
        prefix = check_doc_id(doc_id) + _SEP
        with txn.cursor(db=self._reading(txn, "feed")) as cur:
            # Ids never contain NUL, so prefix + 0xff.. is past every key of this document.
            if cur.set_range(prefix + b"\xff" * 8):
                found = cur.prev()
            else:
                found = cur.last()
            if found and cur.key().startswith(prefix):
                return int(_U64.unpack(cur.key()[len(prefix) :])[0])
        return 0

    # Public methods for the clock.

    def get_hlc(self, txn: Txn) -> int:
        raw = self._meta_get(txn, _META_HLC)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def set_hlc(self, txn: Txn, ts: int) -> None:
        self._meta_put(txn, _META_HLC, _U64.pack(ts))

    # Private methods.

    def _bucket_key(self, doc_id: str) -> bytes:
        return _bucket_key(self.shape, doc_id)

    def _set_digest(self, txn: Txn, doc_id: str, digest: bytes, old: bytes | None | Unknown = UNKNOWN) -> bytes | None:
        """Record a live document's digest in its bucket and leaf; return the previous one."""
        bkey = self._bucket_key(doc_id)
        if isinstance(old, Unknown):
            old = txn.get(bkey, db=self._reading(txn, "buckets"))
        if old != digest:
            self._put(txn, "buckets", bkey, digest)
            self._update_leaf(txn, doc_id, bkey, old, digest)
        return old

    def _update_leaf(self, txn: Txn, doc_id: str, bkey: bytes, old: bytes | None, new: bytes | None) -> None:
        """XOR the document's change into its leaf; the inner nodes wait for :meth:`flush_merkle`."""
        delta = leaf_change(doc_id, old, new)
        if not delta:
            return
        bucket = _U32.unpack_from(bkey)[0]
        self._dirty_leaves.add(bucket)
        if txn is self._scope:
            leaves = self._leaf_xor
            leaves[bucket] = leaves.get(bucket, 0) ^ delta
            return
        self._xor_leaf(txn, bucket, delta)

    def _xor_leaf(self, txn: Txn, bucket: int, delta: int) -> None:
        with txn.cursor(db=self.dbs["merkle"]) as cur:
            xor_leaves(cur, self.shape, {bucket: delta})

    def _drop_tail(self, txn: Txn, key: bytes) -> None:
        prefix = key + _SEP
        with txn.cursor(db=self._reading(txn, "tail")) as cur:
            found = cur.set_range(prefix)
            while found and cur.key().startswith(prefix):
                # delete() moves the cursor to the next entry; past the end it reports no key.
                cur.delete()
                found = bool(cur.key())

    def _feed_key(self, doc_id: str, seq: int) -> bytes:
        return check_doc_id(doc_id) + _SEP + _U64.pack(seq)

    def _log_key(self, origin: str, seq: int) -> bytes:
        return _log_key(_check_origin(origin), seq)

    def _put_log(self, txn: Txn, entry: LogEntry) -> None:
        self._put(txn, "log", self._log_key(entry.origin, entry.seq), _encode_log_value(entry))

    def _set_seq(self, txn: Txn, origin: str, seq: int) -> None:
        self._meta_put(txn, _META_VV + _check_origin(origin), _U64.pack(seq))

    def _meta_get(self, txn: Txn, key: bytes) -> bytes | None:
        if txn is not self._scope:
            return txn.get(key, db=self.dbs["meta"])
        try:
            return self._meta[key]
        except KeyError:
            value = self._meta[key] = txn.get(key, db=self.dbs["meta"])
            return value

    def _meta_put(self, txn: Txn, key: bytes, value: bytes) -> None:
        if txn is not self._scope:
            txn.put(key, value, db=self.dbs["meta"])
            return
        self._meta[key] = value
        self._meta_dirty.add(key)

    def _spill(self, txn: Txn) -> None:
        """Write the counters and leaf changes kept in memory into ``txn``, if they are its own."""
        if txn is not self._scope:
            return
        for name in sorted(self._pending):
            self._reading(txn, name)
        if self._leaf_xor:
            leaves, self._leaf_xor = self._leaf_xor, {}
            with txn.cursor(db=self.dbs["merkle"]) as cur:
                xor_leaves(cur, self.shape, leaves)
        if not self._meta_dirty:
            return
        db = self.dbs["meta"]
        for key in sorted(self._meta_dirty):
            value = self._meta[key]
            assert value is not None  # only puts mark a key dirty
            txn.put(key, value, db=db)
        self._meta_dirty = set()

    def _reading(self, txn: Txn, name: str) -> Any:
        """The handle of ``log``, ``tail``, ``buckets`` or ``feed`` for a read or delete: the puts kept
        in memory are written first, so ``txn`` sees every one of them."""
        db = self.dbs[name]
        if txn is self._scope and name in self._pending:
            with txn.cursor(db=db) as cur:
                cur.putmulti(sorted(self._pending.pop(name).items()))
        return db

    def _put(self, txn: Txn, name: str, key: bytes, value: bytes) -> None:
        """A put to ``log``, ``tail``, ``buckets`` or ``feed``: kept for the flush in the batch's own
        transaction (whose readers of those databases call :meth:`_spill` first), else put now."""
        if txn is self._scope:
            pending = self._pending.get(name)
            if pending is None:
                pending = self._pending[name] = {}
            pending[key] = value
        else:
            txn.put(key, value, db=self.dbs[name])

    def _scan_u64(self, txn: Txn, prefix: bytes) -> dict[str, int]:
        self._spill(txn)  # a cursor reads the transaction, not the memory
        out: dict[str, int] = {}
        with txn.cursor(db=self.dbs["meta"]) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out[key[len(prefix) :].decode()] = _U64.unpack(value)[0]
        return out
