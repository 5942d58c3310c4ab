"""One document's layout in LMDB: snapshot plus tail, the cache, views, tombstones, Merkle leaves.

Theory of operation
-------------------

:class:`DocStore` is the one place that decides how a document is stored;
:mod:`crdtstore.storage` holds the LMDB primitives it uses and decides
nothing. Its write methods run on the group-commit writer thread inside the
batch's transaction, its read methods in any LMDB read transaction. A
write's path only goes down: the node calls :meth:`DocStore.load`, changes
the document, then :meth:`DocStore.settle`, which writes the snapshot or
tail, the Merkle leaf, the view and (through :class:`~crdtstore.feed.ChangeFeed`)
the feed record, all in the caller's transaction.

**Snapshot plus tail.** A document is stored as a snapshot (its full
encoding) and a tail of encoded deltas joined after it in order. A write
already has its delta encoded for the log, so appending it costs O(delta)
where re-encoding the document cost O(document). :meth:`DocStore.store`
compacts (re-encodes the snapshot and drops the tail, in the write's own
transaction) when the tail holds more bytes than the snapshot (or than
``tail_min_bytes``, whichever is more) or too many deltas: more than
``tail_max_deltas``, or for a big snapshot of ``S`` bytes, more than
``S / tail_bytes_per_delta``. So encoding a document of ``S`` bytes happens
at most once per ``S`` bytes or ``S / tail_bytes_per_delta`` deltas, a
write's amortized encoding cost stays O(its delta) however large the
document, and a load decodes at most twice the snapshot's bytes (or
``tail_min_bytes``) plus a number of joins bounded the same way. A fixed
count alone made a 100k-character text pay a full encoding (about 20 ms)
every 32 one-character writes, about 0.7 ms a write; joining one such
tail delta costs what decoding about 100 bytes of its snapshot does, so at
256 bytes per delta a load costs at most about 1.4 times the snapshot's
decode. The byte floor keeps a small document, whose delta is about its
own size, from being re-encoded by nearly every write. Every commit leaves
a loadable document: snapshot and tail change in one transaction.

**The Merkle digest** of a document is ``Document.version_digest()``, the
hash of its causal context, not the hash of its full encoding. That is
valid because every op mints a dot, so two replicas whose contexts are equal
have joined the same ops and hold equal states (an invariant the core
guarantees and the replica state machine checks); conversely different
contexts mean different states, so equal digests still mean equal states,
which is all anti-entropy needs. It costs O(replicas) per write.

**Views.** A read view is ``[version, value]`` as JSON, stored in ``views``:
a plain read that finds it is one LMDB lookup plus ``orjson.loads`` and
never decodes the document (the node serves it on the event loop: cheaper
than a thread hop). Views are rendered for the documents that are read, not
for every document written: rendering and storing one cost about a
fourteenth of a small write, paid by every write of documents nobody reads
(bulk loads, counters, the write-heavy half of most workloads). A read that
finds no view decodes the document, marks it wanted (:meth:`DocStore.want_view`,
a bounded set) and hands the writer the view it rendered, which stores it
only if the document is still at that version (:meth:`DocStore.store_view`;
equal digests mean equal states); from then on every write of a wanted
document renders its view in the same transaction as the change. A write of
a document that is not wanted deletes any view it may have (a stale view
must never be served). Only documents stored in at most ``view_max_bytes``
get one: rendering is O(value), and a large, frequently written document
would otherwise pay it on every write; bigger ones are decoded by each read.

**The cache.** Decoding a large document per write would dominate the
write path, so the store keeps a bounded LRU of decoded documents (by count
and by stored bytes, snapshot plus tail: memory stays flat however many
documents LMDB holds), each with the bookkeeping of its tail. Only the
writer thread touches it, and ``Document.apply`` mutates in place, so the
cache may briefly hold state that is not yet committed; every writer of a
document first calls :meth:`DocStore.evict_on_abort`, so any rollback (a
rejected batch, a batch retried after growing the map, a failed commit)
evicts it and the next use decodes it again from the transaction. Reads
never use the cache: they decode from a read transaction, so they only
ever see committed state.

**Tombstones.** A document with no visible field is deleted: it leaves
``docs`` (with its tail and view), and its state goes to ``tombstones``,
because dots are minted per document, so a document re-created from
nothing would mint dots it already minted and peers would silently drop the
new writes. A re-created document starts from its tombstone. The tombstone
stays in the Merkle tree under its version digest and ``state`` returns it,
so anti-entropy carries a delete to a peer whose log no longer holds the
delete delta.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from crdtstore import codec
from crdtstore.commit import WriterError
from crdtstore.crdt.ormap import ORMap
from crdtstore.crdt.sequence import SeqDelta
from crdtstore.crdt.tags import Tag
from crdtstore.doc_errors import DocumentNotFound, DocumentTooLarge, NodeNotRunning
from crdtstore.doccache import DocCache
from crdtstore.document import Delta, Document
from crdtstore.storage import UNKNOWN, Unknown

if TYPE_CHECKING:
    from crdtstore.commit import WriteContext
    from crdtstore.feed import ChangeFeed
    from crdtstore.storage import Storage, Txn

__all__ = [
    "DocCache",
    "DocStore",
    "DocumentNotFound",
    "DocumentTooLarge",
    "Loaded",
    "NodeNotRunning",
    "Plan",
    "ReadResult",
    "State",
    "check_lengths",
    "is_empty",
    "join_tail",
    "only_removals",
    "split_view",
    "version_digest",
]

State = Literal["live", "tombstone", "new"]
"""Where a loaded document came from: ``docs``, ``tombstones``, or nowhere."""


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


@dataclass(eq=False, slots=True)
class Loaded:
    """A decoded live document on the writer, with what it knows of its stored tail.

    Attributes:
        doc: The document (mutated in place by writes; see :meth:`DocStore.evict_on_abort`).
        snapshot: Bytes of the stored snapshot.
        tail: Deltas in the stored tail.
        tail_bytes: Their bytes.
        next_seq: The tail seq the next appended delta gets.
        view: Whether a view of it is stored (None: not known, as after a load).
        digest: The digest its Merkle leaf holds, once a write of it stored one
            (``UNKNOWN`` until then: the storage reads it).
    """

    doc: Document
    snapshot: int = 0
    tail: int = 0
    tail_bytes: int = 0
    next_seq: int = 1
    view: bool | None = False
    digest: bytes | None | Unknown = UNKNOWN

    @property
    def size(self) -> int:
        return self.snapshot + self.tail_bytes


class Plan:
    """How :meth:`DocStore.write` stores a change, decided (and encoded) by :meth:`DocStore.plan`.

    Attributes:
        version: The document's version token.
        digest: Its Merkle digest.
        data: The new snapshot (or tombstone) encoding; None: append the delta to the tail.
        bury: No field is left: store ``data`` as the tombstone.

    Immutable (``Final``); a plain class, not a frozen dataclass, whose generated
    ``__init__`` stays Python code when compiled: one is built per write.
    """

    __slots__ = ("bury", "data", "digest", "version")

    def __init__(self, version: str, digest: bytes, data: bytes | None, bury: bool = False) -> None:
        self.version: Final = version
        self.digest: Final = digest
        self.data: Final = data
        self.bury: Final = bury


class DocStore:
    """The documents of one replica as LMDB holds them.

    Args:
        storage: The open storage.
        feed: Where a stored change is recorded, in the same transaction.
        cache_docs: Decoded documents the cache keeps, at most.
        cache_bytes: Stored bytes of the cached documents, at most.
        tail_max_deltas: Deltas a tail may hold before compaction.
        tail_min_bytes: The tail may always hold this many bytes.
        tail_bytes_per_delta: A snapshot of S bytes lets a tail hold S / this deltas (0: no scaling).
        view_max_bytes: Documents stored in at most this many bytes get a read view.
        submit: Queues a function for the writer (``GroupCommitWriter.submit``), for views reads rendered.
    """

    def __init__(
        self,
        storage: Storage,
        feed: ChangeFeed,
        *,
        cache_docs: int,
        cache_bytes: int,
        tail_max_deltas: int,
        tail_min_bytes: int,
        tail_bytes_per_delta: int = 0,
        view_max_bytes: int,
        submit: Callable[[Callable[[WriteContext], bool]], asyncio.Future[bool]] | None = None,
    ) -> None:
        self.storage = storage
        self.feed = feed
        self.cache: DocCache[Loaded] = DocCache(cache_docs, cache_bytes)
        self.tail_max_deltas = tail_max_deltas
        self.tail_min_bytes = tail_min_bytes
        self.tail_bytes_per_delta = tail_bytes_per_delta
        # Ids of documents reads want a view of, oldest first; the event loop adds, the
        # writer only tests membership (single dict operations, atomic under the GIL).
        self.wanted: dict[str, None] = {}
        self.wanted_max = WANTED_VIEWS
        self._submit = submit
        self.view_max_bytes = view_max_bytes

    # Public methods for the writer thread.

    def evict_on_abort(self, ctx: WriteContext, doc_id: str) -> None:
        """Whatever fails after this, the cached document (possibly mutated) must not outlive the rollback."""
        cache = self.cache
        ctx.on_abort(lambda: cache.discard(doc_id))

    def load(self, txn: Txn, doc_id: str) -> tuple[Loaded, State]:
        """The document to change: cached, decoded from snapshot plus tail, its tombstone, or new."""
        entry = self.cache.get(doc_id)
        if entry is not None:
            return entry, "live"
        storage = self.storage
        raw = storage.get_doc(txn, doc_id)
        if raw is not None:
            tail = storage.get_tail(txn, doc_id)
            entry = Loaded(
                join_tail(codec.decode_document(raw), tail),
                snapshot=len(raw),
                tail=len(tail),
                tail_bytes=sum(len(delta) for _, delta in tail),
                next_seq=tail[-1][0] + 1 if tail else 1,
                view=None,
            )
            self.cache.put(doc_id, entry, entry.size)
            return entry, "live"
        raw = storage.get_tombstone(txn, doc_id)
        if raw is not None:
            return Loaded(codec.decode_document(raw)), "tombstone"
        return Loaded(Document()), "new"

    def settle(
        self,
        ctx: WriteContext,
        doc_id: str,
        entry: Loaded,
        state: State,
        origin: str | None,
        origin_seq: int | None,
        delta: bytes | None,
        *,
        limit: int,
        live: bool = False,
    ) -> str:
        """Store a changed document: buried if no field is left, else as a live change; return its version.

        :meth:`plan` then :meth:`write`, for a caller with nothing to write between them.

        Args:
            live: The caller knows a field is visible (its last op set one), so no need to look.
        """
        plan = self.plan(doc_id, entry, state, delta, limit=limit, live=live)
        return self.write(ctx, doc_id, entry, state, plan, origin, origin_seq, delta)

    def plan(
        self, doc_id: str, entry: Loaded, state: State, delta: bytes | None, *, limit: int, live: bool = False
    ) -> Plan:
        """Decide how a changed document is stored and do every encoding it needs, writing nothing.

        Everything that can refuse the change (``DocumentTooLarge``) happens
        here, so a caller that plans before its first put needs no savepoint
        to refuse a write cleanly (``LocalWrites.apply_many``).

        Args:
            limit: The stored bytes (snapshot plus tail) the change may leave:
                ``max_document_bytes`` for a local write, the decoder's bound
                for a remote join (past it the document could never be loaded
                again: the join is refused and quarantined instead). Past it the
                document is compacted first, and refused (``DocumentTooLarge``)
                if its encoding alone is still too large.
            live: The caller knows a field is visible (its last op set one), so no need to look.
        """
        doc = entry.doc
        version = doc.version()
        if not live and is_empty(doc):
            return Plan(version, version_digest(version), _tombstone(doc_id, doc), bury=True)
        if (
            state == "live"
            and delta is not None
            and entry.tail < self.max_tail_deltas(entry.snapshot)
            and entry.tail_bytes + len(delta) <= max(entry.snapshot, self.tail_min_bytes)
            and entry.size + len(delta) <= limit
        ):
            return Plan(version, version_digest(version), None)
        # Compaction (or a first write): one encoding of the whole document.
        data = codec.encode_document(doc)
        if len(data) > limit:
            raise DocumentTooLarge(doc_id, f"its encoding would take {len(data)} bytes", limit=limit, size=len(data))
        return Plan(version, version_digest(version), data)

    def write(
        self,
        ctx: WriteContext,
        doc_id: str,
        entry: Loaded,
        state: State,
        plan: Plan,
        origin: str | None,
        origin_seq: int | None,
        delta: bytes | None,
    ) -> str:
        """Write what :meth:`plan` decided (document, digest, view, feed record); return the version.

        Raises nothing of its own: only LMDB's errors (``MapFullError`` grows the map).
        """
        if plan.bury:
            assert plan.data is not None
            return self._bury(ctx, doc_id, state, plan.version, plan.digest, plan.data, origin, origin_seq, delta)
        storage = self.storage
        txn = ctx.txn
        version = plan.version
        if plan.data is None:
            assert delta is not None
            storage.append_tail(txn, doc_id, entry.next_seq, delta, plan.digest, entry.digest)
            entry.tail += 1
            entry.tail_bytes += len(delta)
            entry.next_seq += 1
        else:
            storage.put_doc(txn, doc_id, plan.data, plan.digest, entry.digest)
            entry.snapshot, entry.tail, entry.tail_bytes, entry.next_seq = len(plan.data), 0, 0, 1
            if state == "tombstone":
                storage.delete_tombstone(txn, doc_id)
        # The cached entry rolls back with the transaction (evict_on_abort), so it may know the digest.
        entry.digest = plan.digest
        if doc_id in self.wanted and entry.size <= self.view_max_bytes:
            storage.put_view(txn, doc_id, orjson.dumps([version, entry.doc.value()]))
            entry.view = True
        elif entry.view is not False:
            storage.delete_view(txn, doc_id)  # a stale view must never be served
            entry.view = False
        self.cache.put(doc_id, entry, entry.size)
        self.feed.append(ctx, doc_id, "change", origin, origin_seq, version, delta)
        return version

    def bury(
        self,
        ctx: WriteContext,
        doc_id: str,
        doc: Document,
        state: State,
        origin: str | None,
        origin_seq: int | None,
        delta: bytes | None,
    ) -> str:
        """Store a document with no field left as deleted (a tombstone); record the delete if it was live.

        "Deleted" is not a flag of its own but read off the state: a document
        whose every field is removed does not exist. So every replica that
        joined the same changes agrees, whether the delete reached it as a
        delta, as a state, or as the removal of the last field by an op.
        """
        version = doc.version()
        data = _tombstone(doc_id, doc)
        return self._bury(ctx, doc_id, state, version, version_digest(version), data, origin, origin_seq, delta)

    def max_tail_deltas(self, snapshot: int) -> int:
        """Deltas a tail may hold over a snapshot of ``snapshot`` bytes (see the module docstring)."""
        if self.tail_bytes_per_delta <= 0:
            return self.tail_max_deltas
        return max(self.tail_max_deltas, snapshot // self.tail_bytes_per_delta)

    def store_view(self, ctx: WriteContext, doc_id: str, version: str, view: bytes) -> bool:
        """Store a view a reader rendered at ``version``, if the live document is still at it.

        Returns:
            False (nothing stored) if the document changed or went since.
        """
        storage = self.storage
        txn = ctx.txn
        if storage.get_digest(txn, doc_id) != version_digest(version) or storage.get_doc(txn, doc_id) is None:
            return False
        storage.put_view(txn, doc_id, view)
        entry = self.cache.peek(doc_id)
        if entry is not None:
            entry.view = True  # were this rolled back, the next write only deletes a view that is not there
        return True

    # Public methods for the event loop.

    async def read_decoded(self, read: Callable[..., Awaitable[Any]], doc_id: str) -> ReadResult:
        """A plain read that found no view: decode it (``read`` runs a function in a read transaction)
        and, for a small document, want its view and hand the writer the one just rendered."""
        decoded: tuple[ReadResult, bytes | None] = await read(self.read_for_view, doc_id)
        result, view = decoded
        if view is not None:
            self.want_view(doc_id)
            if self._submit is not None:
                try:
                    future = self._submit(lambda ctx: self.store_view(ctx, doc_id, result.version, view))
                except WriterError:
                    pass  # busy or closing: the next read or write of it renders one
                else:
                    future.add_done_callback(_quiet)
        return result

    def want_view(self, doc_id: str) -> None:
        """Reads want this document's view: writes render it from now on (the oldest wish goes past the bound)."""
        wanted = self.wanted
        if doc_id in wanted:
            return
        wanted[doc_id] = None
        if len(wanted) > self.wanted_max:
            del wanted[next(iter(wanted))]

    # Public methods for readers (any read transaction).

    def decode(self, txn: Txn, doc_id: str) -> Document | None:
        """The live document decoded from its snapshot and tail, or None."""
        storage = self.storage
        raw = storage.get_doc(txn, doc_id)
        if raw is None:
            return None
        return join_tail(codec.decode_document(raw), storage.get_tail(txn, doc_id))

    def read_for_view(self, txn: Txn, doc_id: str) -> tuple[ReadResult, bytes | None]:
        """A plain read by decoding (no view was found), and the view to store if the document may have one."""
        storage = self.storage
        raw = storage.get_doc(txn, doc_id)
        if raw is None:
            raise DocumentNotFound(doc_id)
        tail = storage.get_tail(txn, doc_id)
        doc = join_tail(codec.decode_document(raw), tail)
        result = ReadResult(value=doc.value(), version=doc.version(), siblings=None)
        small = len(raw) + sum(len(delta) for _, delta in tail) <= self.view_max_bytes
        return result, orjson.dumps([result.version, result.value]) if small else None

    def state(self, txn: Txn, doc_id: str) -> bytes | None:
        """The encoded state, live or tombstone (what anti-entropy ships), or None."""
        raw = self.storage.get_doc(txn, doc_id)
        if raw is None:
            return self.storage.get_tombstone(txn, doc_id)
        tail = self.storage.get_tail(txn, doc_id)
        if not tail:
            return raw  # the snapshot is the whole state: ship it as stored
        return codec.encode_document(join_tail(codec.decode_document(raw), tail))

    def read(self, txn: Txn, doc_id: str, siblings: bool) -> ReadResult:
        """The live document from its view, or decoded (always decoded for ``siblings``)."""
        if not siblings:
            view = self.storage.get_view(txn, doc_id)
            if view is not None:
                version, value = orjson.loads(view)
                return ReadResult(value=value, version=version, siblings=None)
        doc = self.decode(txn, doc_id)
        if doc is None:
            raise DocumentNotFound(doc_id)
        return ReadResult(value=doc.value(), version=doc.version(), siblings=doc.siblings() if siblings else None)

    # Private methods.

    def _bury(
        self,
        ctx: WriteContext,
        doc_id: str,
        state: State,
        version: str,
        digest: bytes,
        data: bytes,
        origin: str | None,
        origin_seq: int | None,
        delta: bytes | None,
    ) -> str:
        """Store a deleted document's state and keep it in the Merkle tree under its version digest.

        Anti-entropy compares digests: were a deleted document absent from the
        tree, a peer still holding it live (its delete delta truncated away
        from the log, or a region restored from a backup) would differ forever
        and could never be repaired. With the tombstone present, the two
        states are exchanged and joined, which removes what the delete saw.
        """
        self.cache.discard(doc_id)  # the cache holds live documents only
        if state == "live":
            self.storage.delete_doc(ctx.txn, doc_id)
        self.storage.put_tombstone(ctx.txn, doc_id, data)
        self.storage.put_digest(ctx.txn, doc_id, digest)
        if state == "live":
            self.feed.append(ctx, doc_id, "delete", origin, origin_seq, version, delta)
        return version


def _tombstone(doc_id: str, doc: Document) -> bytes:
    """A deleted document's stored state; refused past the decoder's bound (it must load again)."""
    data = codec.encode_document(doc)
    if len(data) > codec.MAX_ENCODED_BYTES:
        bound = codec.MAX_ENCODED_BYTES
        raise DocumentTooLarge(doc_id, "the decoder's bound on encodings", limit=bound, size=len(data))
    return data


def _quiet(future: asyncio.Future[bool]) -> None:
    """Nobody awaits a view's store: take its outcome so a failure is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


WANTED_VIEWS = 65536
"""Documents whose views reads asked for, at most (the oldest wish is dropped past it)."""


def join_tail(doc: Document, tail: list[tuple[int, bytes]]) -> Document:
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


def version_digest(version: str) -> bytes:
    """``Document.version_digest()`` from an already encoded version token (saves a second encoding).

    The two must agree byte for byte: ``tests/test_node.py`` checks it.
    """
    return hashlib.blake2b(version.encode(), digest_size=16).digest()


def is_empty(doc: Document) -> bool:
    """No visible field: the document reads as deleted (cheaper than ``not doc.value()``)."""
    root = doc.root
    return all(root.visible_tag(name) is None for name in root.fields)


def check_lengths(doc_id: str, doc: Document, batch: Delta, limit: int) -> None:
    """Refuse a local batch that leaves a text or list it inserted into longer than ``limit``.

    Raises:
        DocumentTooLarge: Naming the path of the first such sequence; nothing was written.
    """
    for path, length in _grown_sequences(doc.root, batch.root):
        if length > limit:
            raise DocumentTooLarge(
                doc_id, f"a text or list would hold {length} elements", limit=limit, size=length, path=path
            )


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


def only_removals(ops: Any) -> bool:
    """A batch that can only shrink a document: allowed even past the size limit, so it can be cut down."""
    return isinstance(ops, list) and all(
        isinstance(op, dict) and op.get("op") in ("delete", "remove", "disable") for op in ops
    )
