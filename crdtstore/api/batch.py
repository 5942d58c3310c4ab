"""``POST /v1/batch``: op batches for many documents in one request, answered document by document.

Theory of operation
-------------------

The body is ``{"docs": [{"id": ID, "ops": [...]}, ...]}``: for each
document, what ``POST /v1/docs/{id}`` takes as ``{"ops": [...]}``. Each
document's ops apply atomically, exactly as one single write would (same
checks, same limits, the same ``Node.apply``); documents do not apply
atomically with each other.

1. **The envelope** (:func:`parse_batch`, on the event loop) is checked
   whole: an object with ``docs`` alone, a list of 1 to ``max_batch_docs``
   entries, each an object whose ``id`` is a string, no id twice. Anything
   else is a client bug in the request itself, so the request answers 400
   and nothing applies.
2. **Each document** is then checked on its own, as a single write's body
   would be: the id rule, the shape of ``ops``, value limits, version
   tokens. A document that fails gets its error as its result; it never
   reaches the node, and the others go on.
3. **Every remaining document goes to the node at once**, once the
   admission gate below lets the batch in: one ``Node.apply_many``, one
   request of the group-commit writer (:mod:`crdtstore.commit`), so the
   documents share its transaction and fsync and cost one queue slot and
   one future between them. Each document applies exactly as
   ``Node.apply`` would apply it: one the node refuses (a
   ``type_mismatch``, an index out of range, a document over its size
   limit) is refused before anything of it is written; its batch-mates commit. If the writer
   refuses the submission whole (its queue is full), every document
   answers 503 ``overloaded``.
4. **With** ``?w=`` past ``one``, each committed document then waits for its
   own write's acknowledgements, all documents together; a document whose
   wait times out answers 504 ``quorum_timeout`` (it is durable here and
   keeps replicating), the others as they are.

The answer is 200 whenever the request itself was sound, with one result
per document in request order (HTTP 207's idea without WebDAV's XML):
``{"id", "status": 200, "version", "created"}``, or ``{"id", "status",
"error", "message", "detail"}`` with the status and error body the same
document would have got from ``POST /v1/docs/{id}``.

Why a repeated id refuses the whole request: a document's entry is its unit
of atomicity. Two entries for one document would apply as two writes, the
second possibly failing after the first committed, which is rarely what a
client that listed both meant; it can put the ops in one entry and get them
atomically. Refusing is also the answer that can be loosened later without
breaking a client, unlike a chosen order.

Why ``max_batch_docs`` (100 by default), and an admission gate: a batch
takes one slot of the writer's queue, but its documents are the writer's
work, and they are what the queue (``max_queue``, 1,024) bounds: the
writer's backlog of documents, and so every writer's wait. Sixteen bulk
writers sending 100 documents each would put 1,600 documents ahead of the
single writers and peers behind them. So batch documents enter the writer
through a :class:`DocumentGate`: at most half the queue's worth (or one
whole batch, if larger) at once; a batch waits its turn, first come first
served, and only when the documents already waiting pass eight times that
does a request answer 503 ``overloaded`` whole, with nothing applied. A
batch the writer still refuses (single writers filled its queue) answers
503 ``overloaded`` for each of its documents, and nothing of it applies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crdtstore.api import limits as checks
from crdtstore.api import versions
from crdtstore.api.context import ApiContext
from crdtstore.api.errors import ApiError, status_and_body
from crdtstore.version import seal_version
from sync.quorum import Level

__all__ = ["DocBatch", "DocumentGate", "WaitForWrite", "apply_batches", "gate_of", "parse_batch"]

logger = logging.getLogger("crdtstore.api")

WaitForWrite = Callable[..., Awaitable[object]]
"""``routes.wait_for_write``: ``(ctx, doc_id, level, result, version, *, timeout)``, raising 504 on timeout."""

_ENTRY_FIELDS = frozenset({"id", "ops"})
_DEFAULT_WRITE_QUEUE = 1024  # NodeConfig.max_queue's default, for a node that does not say
_BACKLOG_FACTOR = 8


@dataclass(slots=True)
class DocBatch:
    """One document's entry of a batch request.

    Attributes:
        id: The document id, as sent.
        ops: Its checked ops (version tokens opened), or None when ``error`` is set.
        error: Why the document was refused before reaching the node, or None.
    """

    id: str
    ops: list[dict[str, Any]] | None
    error: ApiError | None = None


class DocumentGate:
    """Admits batches' documents to the write queue, ``capacity`` at once, in arrival order.

    Args:
        capacity: Documents admitted at once, at most (a batch larger than that is admitted alone).
        backlog: Documents allowed to wait; a batch that would pass it is refused (503 ``overloaded``).
    """

    def __init__(self, *, capacity: int, backlog: int) -> None:
        if capacity < 1 or backlog < 0:
            raise ValueError("capacity must be at least 1 and backlog at least 0")
        self.capacity = capacity
        self.backlog = backlog
        self.admitted = 0
        self.waiting = 0
        self._queue: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def admit(self, documents: int) -> AsyncIterator[None]:
        """Hold ``documents`` slots for the ``async with`` body, waiting behind earlier batches.

        Raises:
            ApiError: 503 ``overloaded``: the backlog is full; nothing was admitted.
        """
        if not self._queue and self._fits(documents):
            self.admitted += documents
        else:
            if self.waiting + documents > self.backlog:
                detail = {"waiting_documents": self.waiting}
                message = "too many batch documents are waiting for the writer"
                raise ApiError(503, "overloaded", message, detail, headers={"Retry-After": "1"})
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.append((documents, turn))
            self.waiting += documents
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release(documents)  # admitted just as it was cancelled: hand the slots on
                else:
                    self._drop(documents, turn)
                raise
        try:
            yield
        finally:
            self._release(documents)

    def _fits(self, documents: int) -> bool:
        # A batch larger than the capacity would never fit: it goes in alone.
        return self.admitted + documents <= self.capacity or self.admitted == 0

    def _release(self, documents: int) -> None:
        self.admitted -= documents
        while self._queue and self._fits(self._queue[0][0]):
            waiting, turn = self._queue.popleft()
            self.waiting -= waiting
            if turn.done():  # its request was cancelled while waiting: it takes no slots
                continue
            self.admitted += waiting
            turn.set_result(None)

    def _drop(self, documents: int, turn: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # already skipped by _release
            self._queue.remove((documents, turn))
            self.waiting -= documents
        self._release(0)  # it may have held back the next in line


_gates: weakref.WeakKeyDictionary[ApiContext, DocumentGate] = weakref.WeakKeyDictionary()


def gate_of(ctx: ApiContext) -> DocumentGate:
    """The gate of ``ctx``'s node: half its write queue at once (module docstring)."""
    gate = _gates.get(ctx)
    if gate is None:
        config = getattr(ctx.node, "config", None)
        queue = getattr(config, "max_queue", _DEFAULT_WRITE_QUEUE)
        capacity = max(1, queue // 2)
        gate = _gates[ctx] = DocumentGate(capacity=capacity, backlog=_BACKLOG_FACTOR * capacity)
    return gate


# Public functions.


def parse_batch(body: Any, limits: checks.Limits, version_key: bytes) -> list[DocBatch]:
    """Check a batch body: the envelope whole, then each document on its own (module docstring).

    Args:
        body: The parsed body (:func:`crdtstore.api.limits.parse_json` with ``refuse_big_ints=False``,
            so an integer past int64 is one document's ``invalid_value``, not the request's).
        limits: The request limits.
        version_key: The key of version tokens, to open each op's ``version``.

    Returns:
        One entry per document, in request order; a refused document carries its error.

    Raises:
        ApiError: 400 ``invalid_request`` when the envelope is wrong; nothing may apply.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", 'the body must be an object {"docs": [{"id": ..., "ops": [...]}]}')
    extra = sorted(set(body) - {"docs"})
    if extra:
        raise ApiError(400, "invalid_request", "unknown fields in the body", {"fields": [f[:40] for f in extra[:10]]})
    docs = body.get("docs")
    if not isinstance(docs, list):
        raise ApiError(400, "invalid_request", '"docs" must be a list of {"id": ..., "ops": [...]} objects')
    if not 1 <= len(docs) <= limits.max_batch_docs:
        detail = {"documents": len(docs), "limit": limits.max_batch_docs}
        raise ApiError(400, "invalid_request", f'"docs" holds 1 to {limits.max_batch_docs} documents', detail)
    first_index: dict[str, int] = {}
    for index, entry in enumerate(docs):
        if not isinstance(entry, dict) or type(entry.get("id")) is not str:
            message = 'every entry of "docs" is an object with a string "id"'
            raise ApiError(400, "invalid_request", message, {"index": index})
        doc_id = entry["id"]
        if doc_id in first_index:
            repeated: dict[str, Any] = {"id": doc_id[:300], "indexes": [first_index[doc_id], index]}
            raise ApiError(400, "invalid_request", "a document appears twice: put its ops in one entry", repeated)
        first_index[doc_id] = index
    return [_check_entry(entry, limits, version_key) for entry in docs]


async def apply_batches(
    ctx: ApiContext, docs: list[DocBatch], *, level: Level, timeout: float | None, wait: WaitForWrite
) -> list[dict[str, Any]]:
    """Apply every checked document's ops together, wait for ``level``, and answer per document.

    Args:
        ctx: The API context (node, version key, replicator).
        docs: What :func:`parse_batch` returned.
        level: The write consistency level (``?w=``).
        timeout: The request's quorum timeout, or None for the node's.
        wait: ``routes.wait_for_write``.

    Returns:
        One result object per document, in request order (module docstring).
    """
    results: list[dict[str, Any] | None] = [None] * len(docs)
    ready: list[int] = []
    for index, doc in enumerate(docs):
        if doc.error is not None:
            results[index] = _failure(doc.id, doc.error)
        else:
            ready.append(index)
    applied: Sequence[Any] = []
    if ready:
        async with gate_of(ctx).admit(len(ready)):
            # One writer submission for them all: one queue slot, one future, one transaction.
            try:
                applied = await ctx.node.apply_many([(docs[i].id, docs[i].ops or []) for i in ready])
            except Exception as exc:  # refused whole (overloaded, writer closed): every document says so
                applied = [exc] * len(ready)
    committed: list[tuple[int, Any, str]] = []
    for index, outcome in zip(ready, applied, strict=True):
        if isinstance(outcome, BaseException):
            results[index] = _failure(docs[index].id, outcome)
        else:
            version = seal_version(outcome.version, docs[index].id, ctx.version_key)
            committed.append((index, outcome, version))
    waited: list[Any] = [None] * len(committed)
    if level is not Level.ONE:  # at one, this replica's commit is the answer: no task per document to wait on
        waited = await asyncio.gather(
            *(wait(ctx, docs[i].id, level, result, version, timeout=timeout) for i, result, version in committed),
            return_exceptions=True,
        )
    for (index, result, version), outcome in zip(committed, waited, strict=True):
        if isinstance(outcome, BaseException):
            results[index] = _failure(docs[index].id, outcome)
        else:
            results[index] = {"id": docs[index].id, "status": 200, "version": version, "created": result.created}
    return [r for r in results if r is not None]


# Private functions.


def _check_entry(entry: dict[str, Any], limits: checks.Limits, version_key: bytes) -> DocBatch:
    """One document's checks, those of a single write's body; an error is kept as the document's result."""
    doc_id: str = entry["id"]
    try:
        checks.check_doc_id(doc_id, limits)
        extra = sorted(set(entry) - _ENTRY_FIELDS)
        if extra:
            detail = {"fields": [f[:40] for f in extra[:10]]}
            raise ApiError(400, "invalid_request", "unknown fields in the document's entry", detail)
        # No raw bytes: the batch body is far over the size below which check_batch may skip its value walk.
        ops = checks.check_batch({"ops": entry.get("ops")}, limits)
        versions.open_op_versions(ops, doc_id, version_key)
    except ApiError as exc:
        return DocBatch(doc_id, None, exc)
    return DocBatch(doc_id, ops)


def _failure(doc_id: str, exc: BaseException) -> dict[str, Any]:
    if not isinstance(exc, Exception):  # cancellation and exits are not a document's outcome
        raise exc
    status, body, _ = status_and_body(exc)
    if status >= 500 and status not in (503, 504):
        logger.error("batch write failed", exc_info=exc, extra={"doc_id": doc_id[:300]})
    return {"id": doc_id, "status": status, **body}
