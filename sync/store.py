"""What replication asks of a replica's durable state: the :class:`ReplicaStore` protocol.

Two classes implement it: :class:`crdtstore.node.Node` (LMDB, a writer
thread, reads in an executor) and :class:`sync.memstore.MemStore` (memory,
for the simulator and the protocol tests). The event handlers of
:mod:`sync.dispatch` are written against this protocol only, so the
production replicator and the deterministic simulator run the same code
against either store.

Every method is a coroutine. MemStore's never suspend, so a simulation over
memory runs with :func:`run_sync` and no event loop at all; a simulation over
Node runs in an event loop and awaits each handler to completion before its
next step, which keeps it deterministic too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from crdtstore.merkle import NodeId

from .events import PeerInfo
from .types import LogEntry

__all__ = ["ReplicaStore", "Suspended", "run_sync"]

T = TypeVar("T")


@runtime_checkable
class ReplicaStore(Protocol):
    """One replica's durable state, as replication reads and changes it.

    A method that returns has made its change durable (Node: committed with
    the configured fsync; MemStore: at once). Peer data a store cannot join
    does not raise: it is skipped and its document quarantined, by the rules
    of :mod:`sync.quarantine`, which both stores follow. Only a batch whose
    origin or seq the log cannot hold raises ``ValueError`` (nothing changed).
    """

    @property
    def info(self) -> PeerInfo:
        """Who this replica is (stable id, this start's origin, region, epoch), as its Hello says."""
        ...

    # Writes from peers.

    async def apply_remote_many(self, entries: Sequence[LogEntry]) -> list[bool]:
        """Join a peer's deltas in order and log them, all in one commit; per entry, False if already held.

        An entry that cannot be joined is skipped (a placeholder logged, its
        document quarantined) and still counts as received (True).
        """
        ...

    async def merge_state(self, doc_id: str, state: bytes) -> bool:
        """Join a peer's full state of a document (not logged); True if ours changed.

        A state that merges releases the document from quarantine; one that
        does not quarantines it, changes nothing and returns False.
        """
        ...

    async def merge_states(self, states: Sequence[tuple[str, bytes]]) -> list[bool | BaseException]:
        """:meth:`merge_state` of each, sharing commits; per state its result, or
        :class:`sync.quarantine.Rejected` for one it did not merge, or the error a store failure raised."""
        ...

    async def skip_log(self, origin: str, upto: int) -> int:
        """Raise the contiguous mark of ``origin`` to at least ``upto``; return the new mark."""
        ...

    async def set_acked(self, peer: str, vector: dict[str, int]) -> None:
        """Raise what ``peer`` acknowledged (never lowers an entry)."""
        ...

    async def truncate_log(self, vector: dict[str, int]) -> int:
        """Drop log entries with seq at or below ``vector[origin]``; return how many."""
        ...

    # Reads.

    async def read_states(self, doc_ids: Sequence[str]) -> list[bytes | None]:
        """The encoded states (deleted documents included), None for an unknown id, in one snapshot."""
        ...

    async def log_range(self, origin: str, after: int, limit: int) -> Sequence[LogEntry]:
        """Up to ``limit`` logged deltas of ``origin`` with seq > ``after``, in seq order."""
        ...

    async def version_vector(self) -> dict[str, int]:
        """Per origin, the highest seq held with no gap below it."""
        ...

    async def acked(self, peer: str) -> dict[str, int]:
        """The vector ``peer`` acknowledged (as stored)."""
        ...

    async def merkle_root(self) -> bytes: ...

    async def merkle_children_many(self, nodes: Sequence[NodeId]) -> list[list[bytes]]:
        """The children of each ``(level, index)`` node, in one snapshot."""
        ...

    async def bucket_items_many(self, buckets: Sequence[int]) -> list[list[tuple[str, bytes]]]:
        """The ``(doc_id, digest)`` pairs of each leaf bucket, in one snapshot."""
        ...


class Suspended(RuntimeError):
    """:func:`run_sync` was given a coroutine that waits for something (it needs an event loop)."""


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine that never suspends (MemStore's methods, handlers over a MemStore) to its result.

    This is what keeps a simulation over memory synchronous: no event loop,
    no scheduling order to think about.

    Raises:
        Suspended: the coroutine awaited a future (a thread hop, a sleep);
            it is closed first.
    """
    it: Coroutine[Any, Any, T] = coro.__await__()  # type: ignore[assignment]
    try:
        it.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    it.close()
    raise Suspended("run_sync: the coroutine suspended; run it in an event loop")
