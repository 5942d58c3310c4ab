"""Group commit: one writer thread owns every LMDB write transaction.

Theory of operation
-------------------

LMDB allows one write transaction at a time, and with ``sync=True`` each
commit costs an fsync. A region node serving many clients therefore funnels
every write through :class:`GroupCommitWriter`:

1. Asyncio code calls ``await writer.submit(fn)``. The request joins a
   bounded queue (:class:`Overloaded` when full, so the HTTP layer can answer
   503 instead of queueing without bound). The writer thread is woken once
   per event loop iteration that submitted, not once per request.
2. The writer thread takes *every* request waiting when it starts a commit
   (up to ``max_batch``) and opens one write transaction for all of them.
3. Every ``fn(ctx)`` of the batch runs directly in that transaction. If one
   raises, the whole transaction is aborted (every ``on_abort`` hook runs)
   and the batch runs again with each ``fn`` in its own nested child
   transaction (``env.begin(write=True, parent=txn)``): then only the failed
   request's child is aborted and only its future gets the exception; its
   batch-mates go on. Nested transactions are kept for that second run
   because they cost: LMDB copies every page a child touches, about a
   seventh of a small write's time, and almost every batch succeeds whole.
4. Right before the commit, the writer rehashes the Merkle tree's inner
   nodes above the leaves the batch changed (``Storage.flush_merkle``), once
   per batch instead of once per write.
5. One commit covers the batch. Only once it is durable are the futures
   resolved, so an acknowledged write is durable. With the storage's meta
   page flush deferred (``Storage.meta_sync_deferred``, the default with
   fsync on), ``commit()`` fsyncs the data pages and a second thread, the
   syncer, flushes the meta page (``Storage.sync_meta``) and then resolves
   the batch's futures, while the writer already runs the next batch: the
   second synchronous write of a commit no longer holds up the next one. One
   flush covers every batch committed before it, so under load the syncer
   flushes once for several batches, and hands the event loop every batch
   it covered in one wakeup. Results keep their commit order: every
   committed batch goes through the syncer, in order.

A request can attach callbacks to its :class:`WriteContext`:

* ``on_abort`` runs on the writer thread whenever the request's writes are
  rolled back: its own ``fn`` raised, or the whole batch was aborted (to
  grow the map, or because the commit failed). The node uses it to drop a
  cached document that ``fn`` mutated in memory.
* ``on_commit`` runs on the submitting event loop after the commit and
  before the request's future is resolved, in commit order. The node uses
  it to publish change-feed records, so a subscriber sees a write no later
  than its writer does and never sees one that did not commit.
* ``on_applied`` runs on the submitting event loop once every request of
  the batch ran, while the writer commits and flushes: the earliest moment
  a write is known to be accepted, not yet that it is durable (the commit
  may still fail, a crash may still undo it). The live channel uses it to
  show a peer's change without waiting for this region's fsyncs: that change
  is in its origin's log already, and comes back by anti-entropy if this
  region loses it. A rolled-back batch that runs again runs these hooks
  again, so they must be idempotent.

The map is full (``lmdb.MapFullError``): the batch is aborted, the map is
grown (doubling up to ``max_map_size``) and the batch runs again from
scratch. So, for this and for the failed first run above, ``fn`` must be
safe to re-run after its ``on_abort`` hooks ran (it must re-read its inputs
from the transaction). At the cap, each request
is retried alone, and those that still do not fit fail with
:class:`~crdtstore.storage.StorageFull`; nothing of theirs was committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import lmdb

from crdtstore.storage import Storage, StorageError, StorageFull

if TYPE_CHECKING:
    from crdtstore.storage import Txn

__all__ = ["GroupCommitWriter", "Overloaded", "WriteContext", "WriterClosed", "WriterError"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


class WriterError(Exception):
    """Root of the group-commit writer's errors."""

    code = "writer_error"


class Overloaded(WriterError):
    """The write queue is full; retry later (HTTP 503)."""

    code = "overloaded"


class WriterClosed(WriterError):
    """The writer is closed (or its thread died); no new writes are accepted."""

    code = "writer_closed"


@dataclass(eq=False)
class WriteContext:
    """What a submitted function gets: its child transaction and hooks.

    Attributes:
        txn: The request's nested write transaction; use it for every read
            and write so a failure rolls back exactly this request.
        storage: The storage the transaction belongs to.
    """

    txn: Txn
    storage: Storage
    _on_commit: list[Callable[[], None]] = field(default_factory=list)
    _on_abort: list[Callable[[], None]] = field(default_factory=list)
    _on_applied: list[Callable[[], None]] = field(default_factory=list)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop once the batch committed, before the future resolves."""
        self._on_commit.append(callback)

    def on_abort(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the writer thread if this request's writes are rolled back."""
        self._on_abort.append(callback)

    def on_applied(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop once the batch ran, before its commit (see the module docstring)."""
        self._on_applied.append(callback)

    def adopt(self, child: WriteContext) -> None:
        """Take the hooks of ``child``, a savepoint that succeeded: they go with this request now."""
        self._on_commit.extend(child._on_commit)
        self._on_abort.extend(child._on_abort)
        self._on_applied.extend(child._on_applied)

    def savepoint(self, fn: Callable[[WriteContext], T]) -> T | Exception:
        """Run ``fn`` in a child transaction: all of it lands in this one, or none of it.

        ``fn``'s hooks stay its own until it succeeded: if it raises, its
        writes are rolled back, its ``on_abort`` hooks run at once and its
        exception is returned (the caller answers it and goes on); if it
        returns, its hooks join this context's, since the batch may still
        be rolled back or committed as a whole.

        Raises:
            lmdb.MapFullError: From ``fn``, after its rollback: the writer grows
                the map and runs the whole request again.
        """
        child = WriteContext(self.storage.begin_write(parent=self.txn), self.storage)
        try:
            result = fn(child)
            child.txn.commit()
        except Exception as exc:
            child.txn.abort()
            _run_hooks(child._on_abort)
            if isinstance(exc, lmdb.MapFullError):
                raise
            return exc
        self.adopt(child)
        return result


@dataclass(eq=False)
class _Request(Generic[T]):
    fn: Callable[[WriteContext], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    ctx: WriteContext | None = None


# One request's fate after an attempt: (request, committed?, result or exception).
_Outcome = tuple[_Request[Any], bool, Any]


class GroupCommitWriter:
    """The single writer of one :class:`~crdtstore.storage.Storage`.

    Args:
        storage: The open storage.
        max_queue: Requests allowed to wait; beyond it :meth:`submit` raises :class:`Overloaded`.
        max_batch: Requests per transaction at most (bounds the transaction's size and latency).
    """

    def __init__(self, storage: Storage, *, max_queue: int = 1024, max_batch: int = 256) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self.storage = storage
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.observers: list[Callable[[int, float], None]] = []
        """Called on the writer thread after each commit with (batch size, commit seconds)."""
        self._queue: collections.deque[_Request[Any]] = collections.deque()
        self._cond = threading.Condition()
        self._kicks: set[asyncio.AbstractEventLoop] = set()  # loops with a wakeup of the writer scheduled
        self._closing = False
        self._died: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._syncer = _Syncer(storage, self) if storage.meta_sync_deferred else None
        self._stats_lock = threading.Lock()
        self._stats: dict[str, float] = {
            "commits": 0,
            "requests": 0,
            "failed_requests": 0,
            "retried_batches": 0,
            "rerun_batches": 0,
            "storage_full": 0,
            "last_batch_size": 0,
            "max_batch_size": 0,
            "commit_seconds_total": 0.0,
            "last_commit_seconds": 0.0,
            "syncs": 0,
            "sync_seconds_total": 0.0,
            "last_sync_seconds": 0.0,
        }

    # Public methods for the lifecycle.

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._thread is not None:
            raise RuntimeError("writer already started")
        self._thread = threading.Thread(target=self._main, name="crdtstore-writer", daemon=True)
        if self._syncer is not None:
            self._syncer.start()
        self._thread.start()

    async def close(self) -> None:
        """Stop accepting writes, commit everything already queued, stop the thread (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive():
            # The thread resolves futures through call_soon_threadsafe before it
            # ends, so those callbacks run before this await returns.
            await asyncio.to_thread(thread.join)
        if self._syncer is not None:
            # After the writer: it hands the syncer its last batches first.
            await asyncio.to_thread(self._syncer.close)

    # Public methods for writing.

    def submit(self, fn: Callable[[WriteContext], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for the next group commit; await the result.

        Must be called from a running event loop. ``fn(ctx)`` runs on the
        writer thread inside a child write transaction; its return value is
        the future's result once the batch committed, and its exception the
        future's exception (nothing of it committed).

        Raises:
            Overloaded: The queue holds ``max_queue`` requests.
            WriterClosed: :meth:`close` was called or the writer thread died.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._closing or self._died is not None or self._thread is None:
                raise WriterClosed("writer is not running") from self._died
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{len(self._queue)} writes already queued")
            self._queue.append(_Request(fn, future, loop))
            # Wake the writer once per loop iteration, not once per write: every
            # write submitted in the same iteration joins one batch, and the
            # wakeup (a futex call and a GIL handoff) is paid once for all.
            kick = loop not in self._kicks
            self._kicks.add(loop)
        if kick:
            loop.call_soon(self._kick, loop)
        return future

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._cond:
            self._kicks.discard(loop)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (not counting the batch being committed)."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> dict[str, float]:
        """A snapshot of counters for metrics (batch sizes, commit latency including fsync)."""
        with self._stats_lock:
            snapshot = dict(self._stats)
        snapshot["pending"] = self.pending
        commits = snapshot["commits"]
        snapshot["mean_batch_size"] = snapshot["requests"] / commits if commits else 0.0
        return snapshot

    # Private methods: the writer thread.

    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return  # closing and drained
                    batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                outcomes = self._run(batch)
                if self._syncer is not None and any(committed for _, committed, _ in outcomes):
                    self._syncer.put(outcomes)  # acknowledged once the meta page is on disk
                else:
                    self._deliver(outcomes)
        except BaseException as exc:  # pragma: no cover - a bug in this module; fail loudly, not silently
            logger.exception("writer thread died")
            with self._cond:
                self._died = exc
                stranded, self._queue = list(self._queue), collections.deque()
            self._deliver([(r, False, WriterClosed("writer thread died")) for r in stranded])
            raise

    def _run(self, batch: list[_Request[Any]]) -> list[_Outcome]:
        """Commit a batch, growing the map as needed; return every request's outcome."""
        while True:
            try:
                try:
                    return self._attempt(batch, nested=False)
                except _RequestFailed:
                    with self._stats_lock:
                        self._stats["rerun_batches"] += 1
                    return self._attempt(batch, nested=True)
            except lmdb.MapFullError:
                with self._stats_lock:
                    self._stats["retried_batches"] += 1
                if not self.storage.grow():
                    break
            except lmdb.Error as exc:
                # The commit itself failed (disk error, ...): nothing of the batch is durable.
                error = StorageError(f"commit failed: {exc}")
                error.__cause__ = exc
                return [(r, False, error) for r in batch]
        # At the cap: find out which requests fit on their own.
        outcomes: list[_Outcome] = []
        for request in batch:
            try:
                outcomes.extend(self._attempt([request], nested=True))
            except lmdb.MapFullError:
                with self._stats_lock:
                    self._stats["storage_full"] += 1
                outcomes.append(
                    (request, False, StorageFull(f"write does not fit in {self.storage.max_map_size} bytes"))
                )
            except lmdb.Error as exc:
                outcomes.append((request, False, StorageError(f"commit failed: {exc}")))
        return outcomes

    def _attempt(self, batch: list[_Request[Any]], *, nested: bool) -> list[_Outcome]:
        """Run every request in one transaction and commit it.

        Args:
            batch: The requests.
            nested: Run each request in a child transaction, so that a failing
                one is rolled back alone; else in the batch's transaction itself.

        Raises:
            _RequestFailed: Not nested, and a request raised; every hook ``on_abort`` ran.
            lmdb.MapFullError: The batch does not fit; every hook ``on_abort`` ran.
            lmdb.Error: The commit failed; every hook ``on_abort`` ran.
        """
        txn = self.storage.begin_write()
        outcomes: list[_Outcome] = []
        try:
            for request in batch:
                if not nested:
                    ctx = request.ctx = WriteContext(txn, self.storage)
                    outcomes.append((request, True, None))  # its writes are in txn: roll back with the rest
                    try:
                        outcomes[-1] = (request, True, request.fn(ctx))
                    except lmdb.MapFullError:
                        raise
                    except Exception as exc:
                        raise _RequestFailed from exc
                    continue
                child = self.storage.begin_write(parent=txn)
                ctx = request.ctx = WriteContext(child, self.storage)
                try:
                    value = request.fn(ctx)
                    child.commit()
                except lmdb.MapFullError:
                    child.abort()
                    _run_hooks(ctx._on_abort)
                    raise
                except Exception as exc:
                    child.abort()
                    _run_hooks(ctx._on_abort)
                    outcomes.append((request, False, exc))
                else:
                    outcomes.append((request, True, value))
            _show(outcomes)
            # The batch's document writes changed Merkle leaves only: rehash
            # the inner nodes once for the whole batch (shared upper levels).
            self.storage.flush_merkle(txn)
            started = time.perf_counter()
            txn.commit()
            elapsed = time.perf_counter() - started
        except BaseException:
            txn.abort()
            for request, committed, _ in outcomes:
                if committed and request.ctx is not None:
                    _run_hooks(request.ctx._on_abort)
            raise
        self._record(len(batch), sum(1 for _, ok, _ in outcomes if not ok), elapsed)
        return outcomes

    def _record(self, size: int, failed: int, elapsed: float) -> None:
        with self._stats_lock:
            s = self._stats
            s["commits"] += 1
            s["requests"] += size
            s["failed_requests"] += failed
            s["last_batch_size"] = size
            s["max_batch_size"] = max(s["max_batch_size"], size)
            s["commit_seconds_total"] += elapsed
            s["last_commit_seconds"] = elapsed
        for observer in self.observers:
            try:
                observer(size, elapsed)
            except Exception:  # a metrics bug must not fail writes
                logger.exception("commit observer failed")

    def _record_sync(self, elapsed: float) -> None:
        with self._stats_lock:
            s = self._stats
            s["syncs"] += 1
            s["sync_seconds_total"] += elapsed
            s["last_sync_seconds"] = elapsed

    def _deliver(self, outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, items in by_loop.items():
            # The loop may be gone (shut down without close()); the commit stands anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, items)


class _Syncer:
    """The second stage of a commit whose meta page flush is deferred: flush, then acknowledge.

    Its own thread, so the writer starts the next batch while the flush runs
    (``env.sync`` releases the GIL). Batches are acknowledged in the order
    the writer committed them.
    """

    def __init__(self, storage: Storage, writer: GroupCommitWriter) -> None:
        self._storage = storage
        self._writer = writer
        self._queue: list[list[_Outcome]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._main, name="crdtstore-syncer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, outcomes: list[_Outcome]) -> None:
        with self._cond:
            self._queue.append(outcomes)
            self._cond.notify()

    def close(self) -> None:
        """Flush and acknowledge what is queued, then stop (blocking; idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batches, self._queue = self._queue, []
            started = time.perf_counter()
            error: StorageError | None = None
            try:
                self._storage.sync_meta()
            except Exception as exc:  # the commits are in, but not known to be durable: never acknowledge them
                logger.exception("flushing committed batches failed")
                error = StorageError(f"flushing the commit failed: {exc}")
                error.__cause__ = exc
            self._writer._record_sync(time.perf_counter() - started)
            # One handoff per flush, not per batch: each call_soon_threadsafe
            # wakes the event loop through its self-pipe (a syscall on both
            # sides and a GIL switch). The batches keep their commit order.
            flushed = [outcome for outcomes in batches for outcome in outcomes]
            if error is not None:
                flushed = [(r, True, _NotDurable(error)) if ok else (r, ok, v) for r, ok, v in flushed]
            self._writer._deliver(flushed)


@dataclass(frozen=True, slots=True)
class _NotDurable:
    """A committed request whose flush failed: its hooks run (readers see it) but its caller gets ``error``."""

    error: StorageError


class _RequestFailed(Exception):
    """A request raised in a batch run without nested transactions: run the batch again, nested."""


def _run_hooks(hooks: list[Callable[[], None]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception:  # one broken hook must not keep the others from running
            logger.exception("write hook failed")


def _show(outcomes: list[_Outcome]) -> None:
    """Hand the ``on_applied`` hooks of the batch's accepted requests to their loops, one wakeup each."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}
    for request, ok, _ in outcomes:
        if ok and request.ctx is not None and request.ctx._on_applied:
            by_loop.setdefault(request.loop, []).extend(request.ctx._on_applied)
    for loop, hooks in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is gone; nothing waits on it
            loop.call_soon_threadsafe(_run_hooks, hooks)


def _resolve(outcomes: list[_Outcome]) -> None:
    """On the event loop: publish every committed request, then resolve the futures."""
    for request, committed, value in outcomes:
        if committed and request.ctx is not None:
            _run_hooks(request.ctx._on_commit)
        if request.future.done():  # the caller gave up (cancelled); the write stands
            continue
        if isinstance(value, _NotDurable):
            request.future.set_exception(value.error)
        elif committed:
            request.future.set_result(value)
        else:
            request.future.set_exception(value)
