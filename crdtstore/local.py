"""Local writes, on the writer thread: one document's op batch, many documents' batches, a delete.

What :class:`crdtstore.node.Node` submits to the group-commit writer for its
own writes (``apply``, ``apply_many``, ``delete``; the node's module docstring
tells the write path); peers' writes are :mod:`crdtstore.remote`'s. Every
method runs inside the writer's transaction and raises, with nothing of the
document written, when its batch is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from crdtstore import codec
from crdtstore.commit import WriteContext
from crdtstore.docstore import DocStore, DocumentNotFound, Loaded, Plan, State, check_lengths
from crdtstore.hlc import HybridClock
from crdtstore.limits import MAX_BATCH_OPS

__all__ = ["LocalWrites", "WriteResult"]

# The op kinds that can only shrink a document (docstore.only_removals): such a
# batch is allowed past the size limit, so an oversized document can be cut down.
_REMOVALS: Final = frozenset({"delete", "remove", "disable"})


class WriteResult:
    """The outcome of an acknowledged (committed) write.

    Attributes:
        version: The document's version token after the write.
        created: True if the document did not exist (or was deleted) before.
        origin: The origin the write's delta was logged under (this incarnation's replica id).
        seq: Its sequence number in that origin's log: a quorum write waits for
            peers to hold exactly ``(origin, seq)``, not whatever is newest.

    A value (``==``, hash and repr by its fields), immutable: the attributes are
    ``Final``, read-only once compiled. Not a frozen dataclass: compiled, its
    generated ``__init__`` stays Python code, a tenth of a small write's own work
    for the three of them a write built.
    """

    __slots__ = ("created", "origin", "seq", "version")

    def __init__(self, version: str, created: bool, origin: str = "", seq: int = 0) -> None:
        self.version: Final = version
        self.created: Final = created
        self.origin: Final = origin
        self.seq: Final = seq

    def _key(self) -> tuple[str, bool, str, int]:
        return (self.version, self.created, self.origin, self.seq)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WriteResult) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = f"version={self.version!r}, created={self.created!r}, origin={self.origin!r}, seq={self.seq!r}"
        return f"WriteResult({fields})"


class _Prepared:
    """A local batch applied in memory and planned, not yet written."""

    __slots__ = ("delta", "doc_id", "entry", "plan", "state")

    def __init__(self, doc_id: str, entry: Loaded, state: State, delta: bytes, plan: Plan) -> None:
        self.doc_id: Final = doc_id
        self.entry: Final = entry
        self.state: Final = state
        self.delta: Final = delta
        self.plan: Final = plan


class LocalWrites:
    """The writer-thread side of a node's own writes.

    Args:
        docs: The document store.
        replica_id: This incarnation's replica id: it mints the dots and logs the deltas.
        hlc: The node's hybrid logical clock (persisted with every write).
        clock: Wall time in seconds.
        max_document_bytes: Bytes a local write may leave a document stored in.
        max_sequence_length: Elements a local insert may leave a text or list holding.
    """

    def __init__(
        self,
        docs: DocStore,
        replica_id: str,
        hlc: HybridClock,
        clock: Callable[[], float],
        *,
        max_document_bytes: int,
        max_sequence_length: int,
    ) -> None:
        self.docs = docs
        self.replica_id = replica_id
        self.hlc = hlc
        self.clock = clock
        # Never past the decoder's own bound, whatever the configuration: the document must load again.
        self.limit = min(max_document_bytes, codec.MAX_ENCODED_BYTES)
        self.max_sequence_length = max_sequence_length

    def apply(self, ctx: WriteContext, doc_id: str, ops: list[dict[str, Any]]) -> WriteResult:
        """Apply one document's op batch (``Node.apply``)."""
        # Registered first: whatever fails from here on, the cached document
        # (possibly mutated) must not outlive the rollback.
        self.docs.evict_on_abort(ctx, doc_id)
        return self._write(ctx, self._prepare(ctx, doc_id, ops))

    def apply_many(
        self, ctx: WriteContext, batches: Sequence[tuple[str, list[dict[str, Any]]]]
    ) -> list[WriteResult | Exception]:
        """Apply each document's batch on its own (``Node.apply_many``): its result or its error.

        Every refusal (a bad op, a type mismatch, a document too large)
        happens in :meth:`_prepare`, before the document's first put, so a
        refused document leaves nothing in the transaction and needs no
        savepoint: a child transaction per document cost LMDB a copy of every
        page it touched, and turned off the storage's in-memory counters for
        the rest of the group commit. A failure while writing (LMDB's own)
        fails the whole submission, nothing of it committed.
        """
        docs = self.docs
        out: list[WriteResult | Exception] = []
        for doc_id, ops in batches:
            docs.evict_on_abort(ctx, doc_id)
            try:
                prepared = self._prepare(ctx, doc_id, ops)
            except Exception as exc:
                docs.cache.discard(doc_id)  # a refused batch may have changed it in memory
                out.append(exc)
                continue
            out.append(self._write(ctx, prepared))
        return out

    def _prepare(self, ctx: WriteContext, doc_id: str, ops: list[dict[str, Any]]) -> _Prepared:
        """Apply the ops to the (cached) document, encode and plan its storage; nothing is written yet.

        Raises:
            OpError, DocumentTooLarge: The batch is refused.
        """
        docs = self.docs
        entry, state = docs.load(ctx.txn, doc_id)
        now = self.hlc.now(self.clock())
        batch = entry.doc.apply(ops, replica=self.replica_id, now=now)
        delta = codec.encode_delta(batch)
        # The batch applied, so ops is a list of op objects with known kinds.
        kinds = {op["op"] for op in ops}
        if "insert" in kinds:  # only inserts lengthen a sequence
            check_lengths(doc_id, entry.doc, batch, self.max_sequence_length)
        limit = codec.MAX_ENCODED_BYTES if kinds <= _REMOVALS else self.limit
        # A batch whose last op is no removal leaves that op's field visible: the document is live.
        live = ops[-1]["op"] not in _REMOVALS
        plan = docs.plan(doc_id, entry, state, delta, limit=limit, live=live)
        return _Prepared(doc_id, entry, state, delta, plan)

    def _write(self, ctx: WriteContext, p: _Prepared) -> WriteResult:
        """Log the delta and store the document as planned: only LMDB itself can fail here."""
        storage = ctx.storage
        seq = storage.append_local(ctx.txn, self.replica_id, p.doc_id, p.delta)
        storage.set_hlc(ctx.txn, self.hlc.last)
        version = self.docs.write(ctx, p.doc_id, p.entry, p.state, p.plan, self.replica_id, seq, p.delta)
        return WriteResult(version=version, created=p.state != "live", origin=self.replica_id, seq=seq)

    def delete(self, ctx: WriteContext, doc_id: str) -> None:
        """Remove every visible field of a live document and bury it (``Node.delete``)."""
        docs = self.docs
        docs.evict_on_abort(ctx, doc_id)
        entry, state = docs.load(ctx.txn, doc_id)
        if state != "live":
            raise DocumentNotFound(doc_id)
        doc = entry.doc
        keys = [{"op": "delete", "path": [key]} for key in doc.value()]
        delta_bytes = None
        origin_seq = None
        if keys:
            now = self.hlc.now(self.clock())
            delta = doc.apply(keys[:MAX_BATCH_OPS], replica=self.replica_id, now=now)
            for start in range(MAX_BATCH_OPS, len(keys), MAX_BATCH_OPS):
                delta.join(doc.apply(keys[start : start + MAX_BATCH_OPS], replica=self.replica_id, now=now))
            delta_bytes = codec.encode_delta(delta)
            origin_seq = ctx.storage.append_local(ctx.txn, self.replica_id, doc_id, delta_bytes)
            ctx.storage.set_hlc(ctx.txn, self.hlc.last)
        docs.bury(ctx, doc_id, doc, "live", self.replica_id, origin_seq, delta_bytes)
