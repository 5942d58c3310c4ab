"""An in-memory replica store for the simulator and tests: a :class:`sync.store.ReplicaStore`.

It implements the same protocol as :class:`crdtstore.node.Node`, with
coroutines that never suspend (so :func:`sync.store.run_sync` runs them
without an event loop), plus a few synchronous methods tests use to set a
scene by hand (``apply``, ``apply_remote``, ``read_state``, ``encoded``).
Everything here counts as durably committed the moment a method returns:
the simulator's crash keeps the store and loses only protocol state.

Identity follows the node: a stable ``replica_id`` plus an ``epoch`` bumped
on every start and a per-start ``nonce``, so each incarnation logs its own
writes under a fresh ``origin`` and never reuses a seq a peer already holds
(a store restored from an old copy restarts under a new origin too).

The Merkle tree covers ``Document.version_digest()``: every op mints a dot,
so equal causal contexts mean equal states, and the digest costs
O(replicas) instead of an encode of the whole document.

Peer data it cannot join is quarantined exactly as on the node, by the
rules of :mod:`sync.quarantine` (placeholders logged for skipped deltas,
held-back documents, merges that release them, unaddressable ids ignored),
so the simulator's fault schedules test what ships;
``crdtstore.testing.stores.StoreComparison`` checks the two agree step for
step. Like the node's, the quarantine is memory: :meth:`MemStore.restart`
empties it. One difference is left on purpose: the node also refuses a join
whose document would no longer load (past the decoder's bound on encodings,
256 MiB); checking that here would encode the whole document on every join.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.document import Document
from crdtstore.limits import doc_id_problem
from crdtstore.merkle import MerkleShape, MerkleTree, NodeId

from .events import PeerInfo
from .quarantine import Quarantine, Quarantined, Rejected, check_entry, check_own_dots, hold, placeholder, screen
from .types import LogEntry

__all__ = ["MemStore"]


class MemStore:
    """One replica's durable state, in memory.

    Args:
        replica_id: The stable id (kept across restarts).
        region: The replica's region.
        nonce: This start's nonce (passed in: the store draws no randomness).
        shape: The Merkle tree shape.
    """

    def __init__(self, replica_id: str, *, region: str, nonce: str, shape: MerkleShape | None = None) -> None:
        self.replica_id = replica_id
        self.region = region
        self.epoch = 1
        self.nonce = nonce
        self.shape = shape if shape is not None else MerkleShape(fanout=4, depth=3)
        self.docs: dict[str, Document] = {}
        self.log: dict[str, dict[int, LogEntry]] = {}
        self.vector: dict[str, int] = {}
        self.acked_by: dict[str, dict[str, int]] = {}
        self.digests: dict[str, bytes] = {}
        self.buckets: dict[int, dict[str, bytes]] = {}
        self.nodes: dict[bytes, bytes] = {}
        self.tree = MerkleTree(self.nodes, shape=self.shape)
        self.now = 0
        # Memory of this start, as on the node: documents whose remote deltas are held back, the records.
        self.held: set[str] = set()
        self.quarantine = Quarantine()

    @property
    def origin(self) -> str:
        """The id this incarnation mints dots and logs deltas under."""
        return f"{self.replica_id}.{self.epoch}.{self.nonce}"

    def restart(self, nonce: str) -> None:
        """A new start of the same directory: new epoch and nonce, same documents and log."""
        self.epoch += 1
        self.nonce = nonce
        self.held = set()
        self.quarantine = Quarantine()

    def copy(self) -> MemStore:
        """A deep copy (a backup to restore later)."""
        return copy.deepcopy(self)

    # Public methods for local writes.

    def apply(self, doc_id: str, ops: list[dict[str, Any]]) -> LogEntry:
        """Apply a local batch, log its delta under the next seq of our origin; return the entry.

        Raises:
            OpError: the batch was rejected; nothing changed.
        """
        doc = self.docs.get(doc_id) or Document()
        self.now += 1
        # Document.apply checks the whole batch before changing anything, so no copy is needed.
        delta = encode_delta(doc.apply(ops, replica=self.origin, now=self.now))
        self.docs[doc_id] = doc
        seq = self.vector.get(self.origin, 0) + 1
        entry = LogEntry(self.origin, seq, doc_id, delta)
        self.log.setdefault(self.origin, {})[seq] = entry
        self.vector[self.origin] = seq
        self._reindex(doc_id)
        return entry

    # Public methods for tests that drive the store by hand (synchronous).

    def apply_remote(self, origin: str, seq: int, doc_id: str, delta: bytes) -> bool:
        """Join a peer's delta (or skip it) and log it; False if ``(origin, seq)`` was already received.

        Raises:
            ValueError: An origin or seq the log cannot hold.
        """
        entry = LogEntry(origin, seq, doc_id, delta)
        check_entry(entry)
        return self._receive(entry)

    def read_state(self, doc_id: str) -> bytes | None:
        doc = self.docs.get(doc_id)
        return None if doc is None else encode_document(doc)

    def merkle_children(self, level: int, index: int) -> list[bytes]:
        return self.tree.children(level, index)

    def bucket_items(self, bucket: int) -> list[tuple[str, bytes]]:
        return sorted(self.buckets.get(bucket, {}).items())

    # Public methods of the ReplicaStore protocol (coroutines that never suspend).

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(self.replica_id, self.origin, self.region, self.epoch)

    async def apply_remote_many(self, entries: Sequence[LogEntry]) -> list[bool]:
        """Join a peer's deltas in order, skipping (and quarantining) the ones that cannot join, as Node.

        Returns:
            Per entry, False if it was already received.

        Raises:
            ValueError: An origin or seq the log cannot hold (nothing of the batch was written).
        """
        for e in entries:
            check_entry(e)
        return [self._receive(e) for e in entries]

    async def merge_state(self, doc_id: str, state: bytes) -> bool:
        """Join a peer's full state (anti-entropy); True if ours changed. Not logged.

        A state that merges releases the document from quarantine; one that
        does not quarantines it and changes nothing (False), as on Node.
        """
        outcome = self._merge_one(doc_id, state)
        return outcome if isinstance(outcome, bool) else False

    async def merge_states(self, states: Sequence[tuple[str, bytes]]) -> list[bool | BaseException]:
        """:meth:`merge_state` of each; :class:`~sync.quarantine.Rejected` for a state it did not merge."""
        return [self._merge_one(doc_id, state) for doc_id, state in states]

    async def read_states(self, doc_ids: Sequence[str]) -> list[bytes | None]:
        return [self.read_state(d) for d in doc_ids]

    async def log_range(self, origin: str, after: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` logged deltas of ``origin`` with seq > ``after``, in seq order."""
        entries = self.log.get(origin, {})
        return [entries[s] for s in sorted(s for s in entries if s > after)[:limit]]

    async def version_vector(self) -> dict[str, int]:
        return dict(self.vector)

    async def acked(self, peer: str) -> dict[str, int]:
        return dict(self.acked_by.get(peer, {}))

    async def set_acked(self, peer: str, vector: Mapping[str, int]) -> None:
        """Raise ``peer``'s acknowledged vector (never lowers an entry; an ack of 0 is stored, as on Node)."""
        mine = self.acked_by.setdefault(peer, {})
        for origin, seq in vector.items():
            if origin not in mine or seq > mine[origin]:
                mine[origin] = seq

    async def skip_log(self, origin: str, upto: int) -> int:
        """Raise the contiguous mark of ``origin`` (anti-entropy merged everything up to ``upto``)."""
        if upto > self.vector.get(origin, 0):
            self.vector[origin] = upto
            self._advance(origin)
        return self.vector.get(origin, 0)

    async def truncate_log(self, vector: Mapping[str, int]) -> int:
        """Delete each origin's entries with seq <= ``vector[origin]``; return the count."""
        removed = 0
        for origin, upto in sorted(vector.items()):
            entries = self.log.get(origin, {})
            gone = [s for s in entries if s <= upto]
            for s in gone:
                del entries[s]
            removed += len(gone)
        return removed

    async def merkle_root(self) -> bytes:
        return self.tree.root()

    async def merkle_children_many(self, nodes: Sequence[NodeId]) -> list[list[bytes]]:
        return [self.merkle_children(level, index) for level, index in nodes]

    async def bucket_items_many(self, buckets: Sequence[int]) -> list[list[tuple[str, bytes]]]:
        return [self.bucket_items(b) for b in buckets]

    # Public methods for checking.

    def encoded(self) -> dict[str, bytes]:
        """Every document's canonical encoding (what convergence compares)."""
        return {d: encode_document(doc) for d, doc in sorted(self.docs.items())}

    def quarantined(self) -> list[Quarantined]:
        """The documents in quarantine, oldest first (``Node.quarantined``)."""
        return self.quarantine.listed()

    # Private methods.

    def _has(self, origin: str, seq: int) -> bool:
        return seq <= self.vector.get(origin, 0) or seq in self.log.get(origin, {})

    def _receive(self, entry: LogEntry) -> bool:
        """Join one checked entry and log it, or skip it (see :mod:`sync.quarantine`); False if already held."""
        if self._has(entry.origin, entry.seq):
            return False
        why = screen(entry.doc_id, entry.delta, self.held)
        if why is not None:
            return self._skip(entry, why)
        try:
            delta = decode_delta(entry.delta)
            doc = self.docs.get(entry.doc_id)
            # A copy, as Node's savepoint: a join that fails halfway leaves the document as it was.
            work = doc.copy() if doc is not None else Document()
            check_own_dots(self.origin, work.ctx, delta.ctx)
            work.join(delta)
        except Exception as exc:  # the peer's data, whatever failed: Node's savepoint catches the same
            return self._skip(entry, exc)
        self.docs[entry.doc_id] = work
        self._log(entry)
        self._reindex(entry.doc_id)
        return True

    def _skip(self, entry: LogEntry, reason: BaseException | str) -> bool:
        """Count ``entry`` as received without joining it: log a placeholder, quarantine its document."""
        self._log(placeholder(entry))
        if doc_id_problem(entry.doc_id) is not None:
            self.quarantine.reject_id()
            return True
        hold(self.held, entry.doc_id)
        self.quarantine.add(entry.doc_id, reason, entry.origin, entry.seq, "deltas_skipped", now=self.now)
        return True

    def _log(self, entry: LogEntry) -> None:
        self.log.setdefault(entry.origin, {})[entry.seq] = entry
        self._advance(entry.origin)

    def _merge_one(self, doc_id: str, state: bytes) -> bool | Rejected:
        problem = doc_id_problem(doc_id)
        if problem is not None:
            self.quarantine.reject_id()
            return Rejected(f"state of an unaddressable id: {problem}")
        try:
            changed = self._merge(doc_id, state)
        except Exception as exc:  # the peer's state, whatever failed (as Node's savepoint)
            self.quarantine.add(doc_id, exc, None, None, "states_rejected", now=self.now)
            rejected = Rejected(f"state of {doc_id!r:.80}: {exc}"[:300])
            rejected.__cause__ = exc
            return rejected
        self.held.discard(doc_id)
        self.quarantine.release(doc_id)
        return changed

    def _merge(self, doc_id: str, state: bytes) -> bool:
        """Merge into a copy, kept only if it differs: a failure anywhere changes nothing."""
        other = decode_document(state)
        doc = self.docs.get(doc_id)
        before = encode_document(doc if doc is not None else Document())
        work = decode_document(before)
        check_own_dots(self.origin, work.ctx, other.ctx)
        work.merge(other)
        if encode_document(work) == before:
            return False  # as Node: equal bytes, nothing stored (not even an empty document)
        self.docs[doc_id] = work
        self._reindex(doc_id)
        return True

    def _advance(self, origin: str) -> None:
        seq = self.vector.get(origin, 0)
        entries = self.log.get(origin, {})
        while seq + 1 in entries:
            seq += 1
        if seq:
            self.vector[origin] = seq

    def _reindex(self, doc_id: str) -> None:
        new = self.docs[doc_id].version_digest()
        old = self.digests.get(doc_id)
        if old != new:
            self.tree.update(doc_id, old, new)
            self.digests[doc_id] = new
            self.buckets.setdefault(self.shape.bucket(doc_id), {})[doc_id] = new
