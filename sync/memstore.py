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
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.document import Document
from crdtstore.merkle import MerkleShape, MerkleTree, NodeId

from .events import PeerInfo
from .messages import Entry
from .store import LogRecord

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
        self.log: dict[str, dict[int, Entry]] = {}
        self.vector: dict[str, int] = {}
        self.acked_by: dict[str, dict[str, int]] = {}
        self.digests: dict[str, bytes] = {}
        self.buckets: dict[int, dict[str, bytes]] = {}
        self.nodes: dict[bytes, bytes] = {}
        self.tree = MerkleTree(self.nodes, shape=self.shape)
        self.now = 0

    @property
    def origin(self) -> str:
        """The id this incarnation mints dots and logs deltas under."""
        return f"{self.replica_id}.{self.epoch}.{self.nonce}"

    def restart(self, nonce: str) -> None:
        """A new start of the same directory: new epoch and nonce, same documents and log."""
        self.epoch += 1
        self.nonce = nonce

    def copy(self) -> MemStore:
        """A deep copy (a backup to restore later)."""
        return copy.deepcopy(self)

    # Public methods for local writes.

    def apply(self, doc_id: str, ops: list[dict[str, Any]]) -> Entry:
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
        entry = Entry(self.origin, seq, doc_id, delta)
        self.log.setdefault(self.origin, {})[seq] = entry
        self.vector[self.origin] = seq
        self._reindex(doc_id)
        return entry

    # Public methods for tests that drive the store by hand (synchronous).

    def apply_remote(self, origin: str, seq: int, doc_id: str, delta: bytes) -> bool:
        """Join a peer's delta and log it; False if ``(origin, seq)`` was already received."""
        if seq <= self.vector.get(origin, 0) or seq in self.log.get(origin, {}):
            return False
        return self._join_logged(Entry(origin, seq, doc_id, delta), decode_delta(delta))

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

    async def apply_remote_many(self, entries: Sequence[LogRecord]) -> list[bool]:
        """Join a peer's deltas in order; nothing of the batch changes if one does not decode (as on Node)."""
        parsed = [decode_delta(e.delta) for e in entries]  # before any change: bad bytes write nothing
        joins = zip(entries, parsed, strict=True)
        return [self._join_logged(Entry(e.origin, e.seq, e.doc_id, e.delta), p) for e, p in joins]

    async def merge_state(self, doc_id: str, state: bytes) -> bool:
        """Join a peer's full state (anti-entropy); True if ours changed. Not logged."""
        return self._merge_state(doc_id, state)

    async def merge_states(self, states: Sequence[tuple[str, bytes]]) -> list[bool | BaseException]:
        results: list[bool | BaseException] = []
        for doc_id, state in states:
            try:
                results.append(self._merge_state(doc_id, state))
            except Exception as exc:  # per state, as Node's gather(return_exceptions=True)
                results.append(exc)
        return results

    async def read_states(self, doc_ids: Sequence[str]) -> list[bytes | None]:
        return [self.read_state(d) for d in doc_ids]

    async def log_range(self, origin: str, after: int, limit: int) -> list[Entry]:
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

    # Private methods.

    def _join_logged(self, entry: Entry, parsed: Any) -> bool:
        """Join a decoded delta and log it; False if ``(origin, seq)`` was already received."""
        if entry.seq <= self.vector.get(entry.origin, 0) or entry.seq in self.log.get(entry.origin, {}):
            return False
        self.docs.setdefault(entry.doc_id, Document()).join(parsed)
        self.log.setdefault(entry.origin, {})[entry.seq] = entry
        self._advance(entry.origin)
        self._reindex(entry.doc_id)
        return True

    def _merge_state(self, doc_id: str, state: bytes) -> bool:
        other = decode_document(state)
        doc = self.docs.get(doc_id)
        if doc is None:
            self.docs[doc_id] = other
            self._reindex(doc_id)
            return True
        before = doc.version_digest()
        doc.merge(other)
        self._reindex(doc_id)
        return doc.version_digest() != before

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
