"""Batch ids the live channel remembers across a restart, committed with the write they name.

A live batch carries an id its client chose; a resend of a known id is
acknowledged again and never applied twice (issue #12). An id remembered in
memory only is forgotten by a restart, so a batch committed just before the
node stopped, and resent after it started again, would apply twice. So the
id is recorded in the *same* LMDB transaction as the batch's write: after a
crash either both are on disk or neither is, and "applied" never differs
from "remembered".

The live channel asks a :class:`BatchLedger` for that. A node may provide
it itself (``apply_once``, the hook proposed to the node's owners: the
smallest one that keeps the write and the id in one transaction); until
then :class:`NodeLedger` does the same through the node's group-commit
writer, in the node's ``meta`` database under the ``live\\x00`` prefix:

=====================  ==========================================
key                    value
=====================  ==========================================
``live\\x00k`` + id     JSON ``[version, created, origin, seq]``
``live\\x00n`` + n      id (n: u64 BE, the order ids were recorded)
``live\\x00next``       u64 BE: the next n
``live\\x00first``      u64 BE: the oldest n still kept
=====================  ==========================================

At most ``keep`` ids are kept; the oldest go first, two per write at most,
so pruning never makes one write slow.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from crdtstore.node import WriteResult

__all__ = ["BatchLedger", "NodeLedger", "batch_key", "ledger_for"]

_PREFIX = b"live\x00"
_K = _PREFIX + b"k"
_N = _PREFIX + b"n"
_NEXT = _PREFIX + b"next"
_FIRST = _PREFIX + b"first"
_U64 = struct.Struct(">Q")
_PRUNE_PER_WRITE = 2


def batch_key(principal: str, doc_id: str, batch_id: str) -> bytes:
    """A fixed-size key for a batch id of one token on one document (LMDB keys are short)."""
    raw = orjson.dumps([principal, doc_id, batch_id])
    return hashlib.blake2b(raw, digest_size=20).digest()


class BatchLedger(Protocol):
    """Applies a batch unless its id was recorded, and records it in the write's own transaction."""

    async def apply_once(
        self,
        doc_id: str,
        ops: list[dict[str, Any]],
        key: bytes,
        *,
        on_commit: Callable[[WriteResult], None] | None = None,
    ) -> tuple[WriteResult, bool]:
        """The batch's write result, and True when this call applied it (False: a known id, nothing applied).

        Args:
            on_commit: Called on the event loop once the write committed, in the same step as the
                change feed's own hook (so before any follower sees the change); not for a known id.

        Raises:
            What ``Node.apply`` raises; a refused batch records nothing.
        """
        ...


class NodeLedger:
    """:class:`BatchLedger` over a :class:`~crdtstore.node.Node` that has no ``apply_once`` of its own.

    It records the id next to the write, in one transaction, through
    :meth:`Node.run_local <crdtstore.node.Node.run_local>` (the node's local-write step on its writer).
    A node that keeps batch ids itself (``apply_once``) is picked by :func:`ledger_for` instead.
    """

    def __init__(self, node: Any, *, keep: int) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.node = node
        self.keep = keep

    async def apply_once(
        self,
        doc_id: str,
        ops: list[dict[str, Any]],
        key: bytes,
        *,
        on_commit: Callable[[WriteResult], None] | None = None,
    ) -> tuple[WriteResult, bool]:
        return await self.node.run_local(  # type: ignore[no-any-return]
            lambda ctx, local: self._txn(ctx, local, doc_id, ops, key, on_commit)
        )

    def _txn(
        self,
        ctx: Any,
        local: Any,
        doc_id: str,
        ops: list[dict[str, Any]],
        key: bytes,
        on_commit: Callable[[WriteResult], None] | None,
    ) -> tuple[WriteResult, bool]:
        txn = ctx.txn
        meta = ctx.storage.dbs["meta"]
        known = txn.get(_K + key, db=meta)
        if known is not None:
            version, created, origin, seq = orjson.loads(known)
            return WriteResult(version=version, created=created, origin=origin, seq=seq), False
        result: WriteResult = local.apply(ctx, doc_id, ops)
        if on_commit is not None:
            ctx.on_commit(lambda: on_commit(result))
        raw_next = txn.get(_NEXT, db=meta)
        n = _U64.unpack(raw_next)[0] if raw_next is not None else 0
        raw_first = txn.get(_FIRST, db=meta)
        first = _U64.unpack(raw_first)[0] if raw_first is not None else 0
        txn.put(_K + key, orjson.dumps([result.version, result.created, result.origin, result.seq]), db=meta)
        txn.put(_N + _U64.pack(n), key, db=meta)
        n += 1
        txn.put(_NEXT, _U64.pack(n), db=meta)
        pruned = 0
        while n - first > self.keep and pruned < _PRUNE_PER_WRITE:
            old = txn.pop(_N + _U64.pack(first), db=meta)
            if old is not None:
                txn.delete(_K + old, db=meta)
            first += 1
            pruned += 1
        if pruned:
            txn.put(_FIRST, _U64.pack(first), db=meta)
        return result, True


def ledger_for(node: Any, *, keep: int) -> BatchLedger:
    """The node's own ledger if it has one (``apply_once``), else :class:`NodeLedger` over it."""
    if callable(getattr(node, "apply_once", None)):
        return node  # type: ignore[no-any-return]
    return NodeLedger(node, keep=keep)
