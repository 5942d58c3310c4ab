"""One event dispatch: what a replica does for each event its :class:`~sync.protocol.PeerProtocol` emits.

Theory of operation
-------------------

:data:`HANDLERS` maps every :class:`sync.events.Event` type to one
coroutine. Both adapters call :func:`dispatch` with it: the production
replicator (``crdtstore/replicator.py``, websockets and LMDB) and the
deterministic simulator (:mod:`sync.simulator`, virtual links, memory or
LMDB). So what the fault schedules of the simulator test is the code that
production runs, as websockets' asyncio connection and its tests drive one
sans-I/O protocol.

A handler sees the replica through a :class:`Context`, a protocol each
adapter implements:

* ``store``: the replica's :class:`~sync.store.ReplicaStore`;
* ``input(call)``: feed one input to the link's own protocol (an answer),
  ``input_all(call)``: to every protocol of the replica (relay, raise_vector);
  each is one input, so an adapter flushes once per call;
* hooks for what lives in the adapter: the peer of a link, acks kept in
  memory, quorum waiters, counters, rejecting bad peer data, closing the link.

Handlers hold no state of their own and read nothing but the event and the
context. A store method that raises propagates out of :func:`dispatch`
(storage full, a closing node): the adapter fails the link. Nothing one
document's data does may stop the others: a store quarantines a delta or
state it cannot join (the link goes on, anti-entropy repairs the document;
the rules are :mod:`sync.quarantine`'s), and a state it did not merge
(``Rejected``, or a ``CrdtError`` or ``ValueError`` in its place) is counted
as ``states_rejected`` and logged. Only a batch the log cannot hold at all
(a malformed origin or seq) goes to ``ctx.reject``, which fails the link.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol

from crdtstore.errors import CrdtError

from . import events as ev
from .protocol import PeerProtocol
from .store import ReplicaStore
from .types import LogEntry

__all__ = ["HANDLERS", "READS", "Context", "Handler", "announce", "dispatch"]

logger = logging.getLogger("sync.dispatch")


class Context(Protocol):
    """What a handler may use of the adapter around one link (see the module docstring)."""

    @property
    def store(self) -> ReplicaStore: ...

    @property
    def stats(self) -> MutableMapping[str, int]: ...

    def input(self, call: Callable[[PeerProtocol], object]) -> None:
        """Feed one input to this link's protocol, then flush it (nothing if the link is closed)."""
        ...

    def input_all(self, call: Callable[[PeerProtocol], object]) -> None:
        """Feed one input to every live protocol of the replica, this link's included."""
        ...

    def authenticated(self, peer: ev.PeerInfo) -> None:
        """The link's peer is known: note it (which link pushes deltas is the adapter's choice)."""
        ...

    def peer_acked(self, peer_id: str, vector: dict[str, int]) -> None:
        """Keep the peer's ack in memory; the truncation pass stores it before relying on it."""
        ...

    def read_responded(self, event: ev.ReadResponded) -> None: ...

    def presence_received(self, event: ev.PresenceReceived) -> None:
        """An editor's presence from the peer: for the live channel, if any; never stored."""
        ...

    def write_acked(self, event: ev.WriteAcked) -> None: ...

    def reject(self, what: str, exc: Exception) -> None:
        """The peer sent bytes the store cannot decode: fail the link, drop what it queued."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the link with this close code."""
        ...


Handler = Callable[[Context, Any], Awaitable[None]]


async def dispatch(ctx: Context, event: ev.Event) -> None:
    """Do what ``event`` asks of the replica (:data:`HANDLERS` has one handler per event type).

    Raises:
        KeyError: not an event of :mod:`sync.events`.
    """
    await HANDLERS[type(event)](ctx, event)


# Events that change the store or a link's protocol.


async def _authenticated(ctx: Context, event: ev.Authenticated) -> None:
    ctx.authenticated(event.peer)


async def _apply_deltas(ctx: Context, event: ev.ApplyDeltas) -> None:
    try:
        # One commit for the whole batch: a commit a delta would make
        # remote deltas wait on one fsync each, and lag grow with rate.
        await ctx.store.apply_remote_many(event.entries)
    except (CrdtError, ValueError) as exc:
        # An origin or seq the log cannot hold: the store wrote nothing of the batch.
        # (Bad delta bytes do not raise: the store quarantines their documents.)
        first = event.entries[0]
        ctx.reject(f"deltas from ({first.origin}, {first.seq})", exc)
        return
    ctx.stats["deltas_applied"] += len(event.entries)
    # Durable now: tell every link (relay to the others, ack on this one).
    announce(ctx, event.entries)


def announce(ctx: Context, entries: Sequence[LogEntry]) -> None:
    """``local_update`` for each of ``entries`` (durable, in seq order) on every link, as one input each.

    One input per link for the whole run, hence one flush: a batch applied
    in one commit leaves as one ``Deltas`` message, not one message each.
    """

    def update(p: PeerProtocol) -> None:
        for e in entries:
            p.local_update(e.origin, e.seq, e.doc_id, e.delta)

    ctx.input_all(update)


async def _merge_states(ctx: Context, event: ev.MergeStates) -> None:
    # Joins commute, so the states need no order among themselves: submitted together they
    # share one group commit, where one await each cost a commit each, and every delta
    # queued behind them on this link waited for all of those commits.
    results = await ctx.store.merge_states(event.states)
    failed = [(doc_id, r) for (doc_id, _), r in zip(event.states, results, strict=True) if isinstance(r, BaseException)]
    ctx.stats["states_merged"] += len(results) - len(failed)
    for _, error in failed:
        if not isinstance(error, CrdtError | ValueError):
            raise error  # a store hook failed (storage full...): the adapter fails the link
    for doc_id, error in failed:
        # The store keeps such a document in quarantine; the others were merged, the link goes on.
        ctx.stats["states_rejected"] += 1
        logger.warning(
            "a peer's state was not merged",
            extra={"doc_id": doc_id[:300], "error": repr(error)[:200]},
        )


async def _peer_acked(ctx: Context, event: ev.PeerAcked) -> None:
    # Kept in memory; the truncation pass persists it before relying on it. A
    # commit per ack (one per remote commit, dozens a second per link)
    # would cost the writer more than the acks are worth: after a restart
    # an older stored ack only truncates less until the peer acks again.
    ctx.peer_acked(event.peer_id, dict(event.vector))


async def _skip_log(ctx: Context, event: ev.SkipLog) -> None:
    await ctx.store.skip_log(event.origin, event.upto)
    # The store's whole vector: the raised mark may have run on over entries logged beyond it.
    vector = await ctx.store.version_vector()
    ctx.input_all(lambda p: p.raise_vector(vector))


# Events that only read the store: answers to the peer's requests.


async def _need_log(ctx: Context, event: ev.NeedLog) -> None:
    entries = await ctx.store.log_range(event.origin, event.after, event.limit)
    ctx.input(lambda p: p.send_log(event.origin, event.after, entries))


async def _need_merkle_root(ctx: Context, event: ev.NeedMerkleRoot) -> None:
    root = await ctx.store.merkle_root()
    ctx.input(lambda p: p.answer_merkle_root(event.request_id, root))


async def _need_merkle_children(ctx: Context, event: ev.NeedMerkleChildren) -> None:
    # One read transaction per request, not per item: a session asks for hundreds of
    # nodes and states, and each read is a hop to a thread and back.
    children = await ctx.store.merkle_children_many(event.nodes)
    ctx.input(lambda p: p.answer_merkle_children(event.request_id, children))


async def _need_bucket_items(ctx: Context, event: ev.NeedBucketItems) -> None:
    items = await ctx.store.bucket_items_many(event.buckets)
    ctx.input(lambda p: p.answer_bucket_items(event.request_id, items))


async def _need_states(ctx: Context, event: ev.NeedStates) -> None:
    states = await ctx.store.read_states(event.doc_ids)
    ctx.input(lambda p: p.answer_states(event.request_id, states))


# Events for the adapter alone.


async def _read_responded(ctx: Context, event: ev.ReadResponded) -> None:
    ctx.read_responded(event)


async def _write_acked(ctx: Context, event: ev.WriteAcked) -> None:
    ctx.write_acked(event)


async def _anti_entropy_done(ctx: Context, event: ev.AntiEntropyDone) -> None:
    ctx.stats["anti_entropy_sessions"] += 1
    ctx.stats["anti_entropy_deferred"] += event.docs_deferred
    # Only the initiator reports a session, so each repair is counted once across the cluster.
    ctx.stats["anti_entropy_repaired"] += event.docs_pulled + event.docs_pushed


async def _presence_received(ctx: Context, event: ev.PresenceReceived) -> None:
    ctx.presence_received(event)


async def _failed(ctx: Context, event: ev.Failed) -> None:
    await ctx.close(int(event.close_code), event.reason)


HANDLERS: dict[type[ev.Event], Handler] = {
    ev.Authenticated: _authenticated,
    ev.ApplyDeltas: _apply_deltas,
    ev.MergeStates: _merge_states,
    ev.PeerAcked: _peer_acked,
    ev.SkipLog: _skip_log,
    ev.NeedLog: _need_log,
    ev.NeedMerkleRoot: _need_merkle_root,
    ev.NeedMerkleChildren: _need_merkle_children,
    ev.NeedBucketItems: _need_bucket_items,
    ev.NeedStates: _need_states,
    ev.ReadResponded: _read_responded,
    ev.WriteAcked: _write_acked,
    ev.AntiEntropyDone: _anti_entropy_done,
    ev.PresenceReceived: _presence_received,
    ev.Failed: _failed,
}
"""Every event type of :mod:`sync.events` and its one handler (``tests/sync/test_dispatch.py`` checks both)."""

# The reads: an adapter may answer them on a worker of their own (they change nothing, and answers
# carry request ids), so they need not wait behind commits.
READS: tuple[type[ev.Event], ...] = (
    ev.NeedLog,
    ev.NeedMerkleRoot,
    ev.NeedMerkleChildren,
    ev.NeedBucketItems,
    ev.NeedStates,
)
