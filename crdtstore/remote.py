"""Joining what peers send: logged deltas and anti-entropy states, under quarantine.

Theory of operation
-------------------

Nothing a peer sends about one document may stop the others (the rules,
which the simulator's in-memory store follows too, are
:mod:`sync.quarantine`'s). A remote delta that does not decode, join or
store, claims dots of this incarnation it never minted (forged: joined, it
would make our next write mint past them), or names an id the API could not
address is *skipped*: inside the batch's commit, a savepoint (child
transaction) rolls back just that entry, and a placeholder without a delta is
logged under its ``(origin, seq)``, so the origin's contiguous mark advances,
the peer's acks and truncation move on, and nothing re-sends it. The
placeholder, not the delta, is what a peer pulling our log gets: a bad delta
is never relayed, and the next replica skips it the same way. Savepoints cost
page copies, so a batch runs without them first and again with them only if
an entry failed.

The document is then *quarantined*: logged, counted in ``stats()`` (exported
as metrics) and listed by :meth:`RemoteJoin.quarantined` (shown by
``/v1/admin/links``). Later remote deltas of that document are skipped the
same way: joined without the skipped one, out of causal order, they could
show wrong values (a counter replica's replaced sum would stay), so the
document stays as it was, consistent if stale; local writes to it go on. Its
digest now differs from the peer's, so the next anti-entropy round ships the
peer's full state; when a state merges the document leaves quarantine, and a
state that does not merge keeps it there and changes nothing. Ids the API
cannot address are never stored, only counted. The quarantine lives in
memory: after a restart it starts empty (later deltas join again) and the
repair does not depend on it (the digests still differ).

Remote deltas and states are not held to the local size limits: concurrent
writes in several regions may together pass them, and the merge must load
everywhere; only the decoder's own bound applies.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import lmdb

from crdtstore import codec
from crdtstore.commit import WriteContext, WriterError
from crdtstore.docstore import DocStore, NodeNotRunning
from crdtstore.limits import doc_id_problem
from crdtstore.storage import StorageError
from sync.quarantine import (
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

__all__ = ["RemoteJoin"]

T = TypeVar("T")

logger = logging.getLogger("crdtstore.node")


class _Poisoned(Exception):
    """A peer's entry failed inside a batch run without savepoints: run the batch again with them."""


# Failures that are not the peer data's fault: the write path must see them
# (the map grows on MapFullError; a full or closed store fails the request).
_NOT_POISON: tuple[type[BaseException], ...] = (lmdb.Error, StorageError, WriterError, NodeNotRunning, _Poisoned)

Submit = Callable[[Callable[[WriteContext], Any]], Awaitable[Any]]


class RemoteJoin:
    """Joins peers' deltas and states into a :class:`~crdtstore.docstore.DocStore`.

    Args:
        docs: The document store (writer thread side).
        replica_id: This incarnation's origin (dots a peer may not claim).
        submit: Runs a function in a group commit on the writer thread and awaits its result.
        clock: Wall time in seconds, for quarantine records.
    """

    def __init__(self, docs: DocStore, replica_id: str, *, submit: Submit, clock: Callable[[], float]) -> None:
        self.docs = docs
        self.replica_id = replica_id
        self._submit = submit
        self._clock = clock
        # Writer thread only: documents whose remote deltas are held back (skipped) until a state merges.
        self._held: set[str] = set()
        # Event loop only (updated by on_commit hooks and after merges): doc id -> record.
        self.quarantine = Quarantine()

    # Public methods for the event loop.

    async def apply_many(self, entries: Sequence[LogEntry]) -> list[bool]:
        """See :meth:`crdtstore.node.Node.apply_remote_many`."""
        logged = [e if isinstance(e, LogEntry) else LogEntry(e.origin, e.seq, e.doc_id, e.delta) for e in entries]
        for entry in logged:
            check_entry(entry)
        try:
            result: list[bool] = await self._submit(lambda ctx: self._many_txn(ctx, logged, savepoints=False))
        except _Poisoned:
            # Rare: run the batch again with a savepoint per entry, so that only the bad ones are skipped.
            result = await self._submit(lambda ctx: self._many_txn(ctx, logged, savepoints=True))
        return result

    async def merge_one(self, doc_id: str, state: bytes) -> bool | Rejected:
        """Merge one state: whether it changed anything, or why it was not merged."""
        problem = doc_id_problem(doc_id)
        if problem is not None:
            self._reject_id(doc_id, problem, "state")
            return Rejected(f"state of an unaddressable id: {problem}")
        outcome: bool | Exception = await self._submit(
            lambda ctx: self._guarded(ctx, lambda sub: self._repair_txn(sub, doc_id, state))
        )
        if isinstance(outcome, BaseException):
            self._quarantine_add(doc_id, outcome, None, None, "states_rejected")
            rejected = Rejected(f"state of {doc_id!r:.80}: {describe(outcome)}")
            rejected.__cause__ = outcome
            return rejected
        if self.quarantine.release(doc_id):
            logger.info("document left quarantine: a peer's state merged", extra={"doc_id": doc_id})
        return outcome

    def quarantined(self) -> list[Quarantined]:
        return self.quarantine.listed()

    # Private methods: the writer thread.

    def _many_txn(self, ctx: WriteContext, entries: list[LogEntry], *, savepoints: bool) -> list[bool]:
        out = []
        for entry in entries:
            if savepoints:
                result = self._guarded(ctx, functools.partial(self._delta_txn, entry=entry))
                out.append(self._skip_txn(ctx, entry, result) if isinstance(result, Exception) else result)
                continue
            try:
                out.append(self._delta_txn(ctx, entry))
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
        ctx.adopt(sub)  # kept: the hooks now belong to the enclosing request
        return result

    def _delta_txn(self, ctx: WriteContext, entry: LogEntry) -> bool:
        storage = ctx.storage
        if storage.has_log(ctx.txn, entry.origin, entry.seq):
            return False
        why = screen(entry.doc_id, entry.delta, self._held)
        if why is not None:
            return self._skip_txn(ctx, entry, why)
        delta = codec.decode_delta(entry.delta)  # before any change: bad bytes write nothing
        docs = self.docs
        docs.evict_on_abort(ctx, entry.doc_id)
        loaded, state = docs.load(ctx.txn, entry.doc_id)
        check_own_dots(self.replica_id, loaded.doc.ctx, delta.ctx)
        loaded.doc.join(delta)
        storage.append_remote(ctx.txn, entry)
        # Still deleted, deleted now (by a peer's delete), or a change: as on the peer.
        docs.settle(
            ctx, entry.doc_id, loaded, state, entry.origin, entry.seq, entry.delta, limit=codec.MAX_ENCODED_BYTES
        )
        return True

    def _skip_txn(self, ctx: WriteContext, entry: LogEntry, reason: BaseException | str) -> bool:
        """Count ``entry`` as received without joining it: log a placeholder, quarantine its document."""
        storage = ctx.storage
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

    def _repair_txn(self, ctx: WriteContext, doc_id: str, state_bytes: bytes) -> bool:
        """:meth:`_merge_txn`, then deltas of the document are no longer held back."""
        changed = self._merge_txn(ctx, doc_id, state_bytes)
        if doc_id in self._held:
            self._held.discard(doc_id)
            ctx.on_abort(lambda: self._held.add(doc_id))
        return changed

    def _merge_txn(self, ctx: WriteContext, doc_id: str, state_bytes: bytes) -> bool:
        other = codec.decode_document(state_bytes)
        docs = self.docs
        docs.evict_on_abort(ctx, doc_id)
        entry, state = docs.load(ctx.txn, doc_id)
        doc = entry.doc
        before = codec.encode_document(doc)
        check_own_dots(self.replica_id, doc.ctx, other.ctx)
        doc.merge(other)
        if codec.encode_document(doc) == before:
            return False
        # A state that leaves no field (a peer's tombstone, or one that stays deleted
        # here) is buried, kept in the Merkle tree so both sides compare equal; a live
        # one has no delta to append, so the full state goes in as a new snapshot.
        docs.settle(ctx, doc_id, entry, state, None, None, None, limit=codec.MAX_ENCODED_BYTES)
        return True

    # Private methods: quarantine bookkeeping, event loop only (on_commit hooks, merge_one).

    def _quarantine_add(
        self, doc_id: str, error: BaseException | str, origin: str | None, seq: int | None, counter: str
    ) -> None:
        record = self.quarantine.add(doc_id, error, origin, seq, counter, now=self._clock())
        if record is None:
            return  # logged when it entered quarantine
        logger.warning(
            "peer data quarantined a document",
            extra={"doc_id": doc_id[:300], "origin": origin, "seq": seq, "reason": record.reason},
        )

    def _reject_id(self, doc_id: str, problem: str, what: str) -> None:
        self.quarantine.reject_id()
        logger.warning(
            "ignored peer data for an unaddressable id",
            extra={"doc_id": repr(doc_id)[:300], "what": what, "reason": problem},
        )
