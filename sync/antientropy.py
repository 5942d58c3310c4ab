"""Merkle anti-entropy as a pure session: compare two trees, repair only what differs.

Theory of operation
-------------------

Both replicas keep a :class:`crdtstore.merkle.MerkleTree` of the same
:class:`~crdtstore.merkle.MerkleShape` over ``(doc_id, digest)`` pairs, so
equal subtrees have equal node values and the comparison can prune them.
An :class:`AntiEntropySession` runs on the initiating side and needs
answers from *both* trees; it never reads either itself. It emits
:class:`Query` objects tagged ``LOCAL`` (the caller reads its own store) or
``REMOTE`` (the caller asks the peer), and is fed the answers with the
``receive_*`` methods. Local reads are as asynchronous as remote ones (the
node's hooks are ``async``), so the two sides are symmetric here.

1. **Roots.** Equal roots: done after one round trip.
2. **Descend.** For each level, ask both sides for the children of the
   frontier (the differing nodes of the level above) and keep only the
   children that differ (:func:`crdtstore.merkle.diff_children`). ``k``
   differing documents cost about ``k * depth`` node values, not the tree.
3. **Buckets.** At the leaves, ask both sides for the ``(doc_id, digest)``
   pairs of the differing buckets.
4. **States.** A document the peer has with another digest, or that we
   lack, is *pulled* (``REMOTE`` states, which the caller merges); one we
   have with another digest, or the peer lacks, is *pushed* (``LOCAL``
   states, which the caller sends). Merging is a join, so after the pull
   and the push both sides hold the join of the two states: equal states,
   equal digests, equal roots (writes concurrent with the session aside;
   the next session picks those up).
5. **Deferring.** A caller may pass ``defer``, a predicate over document
   ids: a differing document it holds back is neither pulled nor pushed
   (:attr:`AntiEntropySession.deferred` lists them). The protocol's
   periodic sessions defer documents that deltas touched moments ago: under
   a steady stream of writes the trees always differ in those, because of
   deltas still in flight that will make them equal anyway, and shipping
   their whole states then costs both nodes a burst of work that delays
   the very deltas it duplicates. A session that must leave both sides
   equal (a truncated log's repair) defers nothing.

Each step's requests are chunked (at most ``chunk`` nodes or buckets and
``states_chunk`` documents per query) to respect the message limits; all
chunks of one step are issued together, so a step is one round trip. The
session counts round trips and, if the caller reports them with
:meth:`AntiEntropySession.count_bytes`, bytes each way (for the bench).

:func:`run_local` drives a session between two in-process stores, encoding
the equivalent wire messages to count bytes: the tests and the bench use it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crdtstore.merkle import MerkleShape, NodeId, diff_children

from .exceptions import InvalidState

if TYPE_CHECKING:
    from .store import ReplicaStore

__all__ = [
    "AntiEntropySession",
    "AntiEntropyStats",
    "Kind",
    "Query",
    "Side",
    "run_local",
]


class Side(enum.Enum):
    """Which tree a query is for."""

    LOCAL = "local"
    REMOTE = "remote"


class Kind(enum.Enum):
    """What a query asks for."""

    ROOT = "root"
    CHILDREN = "children"
    BUCKETS = "buckets"
    STATES = "states"


@dataclass(frozen=True, slots=True)
class Query:
    """One read the caller must perform and feed back.

    Attributes:
        side: ``LOCAL`` (read our store) or ``REMOTE`` (ask the peer).
        kind: What to read.
        items: ``()`` for ROOT, ``NodeId`` parents for CHILDREN, bucket numbers for BUCKETS,
            document ids for STATES.
    """

    side: Side
    kind: Kind
    # Their type follows ``kind`` (NodeId, int or str), which every reader switches on first.
    items: tuple[Any, ...] = ()


@dataclass(slots=True)
class AntiEntropyStats:
    """What one session cost and did (for metrics and the bench)."""

    round_trips: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    nodes_compared: int = 0
    buckets_compared: int = 0
    docs_pulled: int = 0
    docs_pushed: int = 0
    docs_deferred: int = 0


class _Step(enum.IntEnum):
    ROOT = 0
    DESCEND = 1
    BUCKETS = 2
    STATES = 3
    DONE = 4


@dataclass(slots=True)
class _Wave:
    """The answers awaited for one step, per side."""

    local: set[object] = field(default_factory=set)
    remote: set[object] = field(default_factory=set)

    def empty(self) -> bool:
        return not self.local and not self.remote


class AntiEntropySession:
    """One Merkle comparison between our tree and a peer's (see the module docstring).

    Args:
        shape: The tree shape; both sides must use it.
        chunk: Most nodes or buckets per query.
        states_chunk: Most documents per STATES query.
        defer: Differing documents for which it returns True are left alone (see "Deferring").
    """

    def __init__(
        self,
        shape: MerkleShape,
        *,
        chunk: int = 1024,
        states_chunk: int = 64,
        defer: Callable[[str], bool] | None = None,
    ) -> None:
        if chunk < 1 or states_chunk < 1:
            raise ValueError("chunks must be positive")
        self.shape = shape
        self.chunk = chunk
        self.states_chunk = states_chunk
        self.stats = AntiEntropyStats()
        self._defer = defer
        self._step = _Step.ROOT
        self._queries: list[Query] = []
        self._wave = _Wave()
        self._roots: dict[Side, bytes] = {}
        self._level = 0
        self._frontier: list[NodeId] = []
        self._children: dict[Side, dict[NodeId, Sequence[bytes]]] = {Side.LOCAL: {}, Side.REMOTE: {}}
        self._items: dict[Side, dict[str, bytes]] = {Side.LOCAL: {}, Side.REMOTE: {}}
        self.pulled: list[str] = []
        self.pushed: list[str] = []
        self.deferred: list[str] = []
        self._issue(Kind.ROOT, [()])

    # Public methods for driving the session.

    @property
    def done(self) -> bool:
        """True once both sides have been read and every repair was handed out."""
        return self._step is _Step.DONE

    def queries_to_send(self) -> list[Query]:
        """The reads to perform now (drained). Answer each with the matching ``receive_*``."""
        queries, self._queries = self._queries, []
        return queries

    def count_bytes(self, *, sent: int = 0, received: int = 0) -> None:
        """Add wire bytes the caller spent on this session (the session never sees messages)."""
        self.stats.bytes_sent += sent
        self.stats.bytes_received += received

    def receive_root(self, side: Side, root: bytes) -> None:
        self._expect(_Step.ROOT, side, ())
        self._roots[side] = root
        self._advance()

    def receive_children(self, side: Side, nodes: Sequence[NodeId], children: Sequence[Sequence[bytes]]) -> None:
        """Feed the children values of ``nodes`` (same order), as asked by a CHILDREN query.

        Raises:
            InvalidState: ``nodes`` was not asked, or a node has not ``fanout`` children
                (a peer with another shape: the caller treats this as a protocol error).
        """
        if len(nodes) != len(children):
            raise InvalidState("one list of children per node")
        for node, values in zip(nodes, children, strict=True):
            if len(values) != self.shape.fanout:
                raise InvalidState(f"node {node} has {len(values)} children, expected {self.shape.fanout}")
            self._expect(_Step.DESCEND, side, tuple(node))
            self._children[side][(node[0], node[1])] = list(values)
        self._advance()

    def receive_bucket_items(
        self, side: Side, buckets: Sequence[int], items: Sequence[Sequence[tuple[str, bytes]]]
    ) -> None:
        """Feed the ``(doc_id, digest)`` pairs of ``buckets`` (same order)."""
        if len(buckets) != len(items):
            raise InvalidState("one list of items per bucket")
        for bucket, pairs in zip(buckets, items, strict=True):
            self._expect(_Step.BUCKETS, side, bucket)
            for doc_id, digest in pairs:
                self._items[side][doc_id] = digest
        self._advance()

    def receive_states(self, side: Side, doc_ids: Sequence[str]) -> None:
        """Record that the states of ``doc_ids`` were read (LOCAL: to push; REMOTE: pulled)."""
        for doc_id in doc_ids:
            self._expect(_Step.STATES, side, doc_id)
        self._advance()

    # Private methods.

    def _expect(self, step: _Step, side: Side, key: object) -> None:
        pending = self._wave.local if side is Side.LOCAL else self._wave.remote
        if self._step is not step or key not in pending:
            raise InvalidState(f"no {step.name.lower()} answer {key!r} expected from {side.value}")
        pending.discard(key)

    def _issue(self, kind: Kind, keys: Sequence[Any], *, sides: tuple[Side, ...] = (Side.LOCAL, Side.REMOTE)) -> None:
        """Queue chunked queries for ``keys`` on ``sides`` and await their answers."""
        size = self.states_chunk if kind is Kind.STATES else self.chunk
        for side in sides:
            pending = self._wave.local if side is Side.LOCAL else self._wave.remote
            pending.update(keys)
            if kind is Kind.ROOT:
                self._queries.append(Query(side, kind))
                continue
            for start in range(0, len(keys), size):
                self._queries.append(Query(side, kind, tuple(keys[start : start + size])))
        if Side.REMOTE in sides and keys:
            self.stats.round_trips += 1

    def _advance(self) -> None:
        # Steps that need no answer fall through at once (a loop, not recursion).
        while self._wave.empty() and self._step is not _Step.DONE:
            if self._step is _Step.ROOT:
                if self._roots[Side.LOCAL] == self._roots[Side.REMOTE]:
                    self._step = _Step.DONE
                    return
                self._step = _Step.DESCEND
                self._frontier = [(0, 0)]
                self._issue(Kind.CHILDREN, list(self._frontier))
            elif self._step is _Step.DESCEND:
                nxt: list[NodeId] = []
                for node in self._frontier:
                    ours = self._children[Side.LOCAL].pop(node)
                    theirs = self._children[Side.REMOTE].pop(node)
                    self.stats.nodes_compared += len(ours)
                    nxt.extend(diff_children(node, ours, theirs, self.shape))
                self._frontier = nxt
                self._level += 1
                if not nxt:
                    # Roots differed but no child does: a torn read (a write landed mid-session).
                    self._step = _Step.DONE
                elif self._level < self.shape.depth:
                    self._issue(Kind.CHILDREN, list(nxt))
                else:
                    self._step = _Step.BUCKETS
                    buckets = [index for _, index in nxt]
                    self.stats.buckets_compared += len(buckets)
                    self._issue(Kind.BUCKETS, buckets)
            elif self._step is _Step.BUCKETS:
                our_items, their_items = self._items[Side.LOCAL], self._items[Side.REMOTE]
                self.pulled = sorted(d for d, digest in their_items.items() if our_items.get(d) != digest)
                self.pushed = sorted(d for d, digest in our_items.items() if their_items.get(d) != digest)
                if self._defer is not None:
                    self.deferred = [d for d in sorted({*self.pulled, *self.pushed}) if self._defer(d)]
                    if self.deferred:
                        held = set(self.deferred)
                        self.pulled = [d for d in self.pulled if d not in held]
                        self.pushed = [d for d in self.pushed if d not in held]
                self.stats.docs_deferred = len(self.deferred)
                self.stats.docs_pulled = len(self.pulled)
                self.stats.docs_pushed = len(self.pushed)
                self._step = _Step.STATES
                if self.pulled:
                    self._issue(Kind.STATES, self.pulled, sides=(Side.REMOTE,))
                if self.pushed:
                    self._issue(Kind.STATES, self.pushed, sides=(Side.LOCAL,))
            else:
                self._step = _Step.DONE


async def run_local(
    ours: ReplicaStore,
    theirs: ReplicaStore,
    shape: MerkleShape,
    *,
    defer: Callable[[str], bool] | None = None,
    **kwargs: int,
) -> AntiEntropyStats:
    """Run a whole session between two in-process stores; both end with equal documents (deferred ones aside).

    Bytes are those of the wire messages the protocol would exchange for the
    remote reads (requests sent, responses received, and the state push).
    Over MemStores nothing suspends: ``sync.store.run_sync(run_local(...))``.
    """
    from . import messages as m

    session = AntiEntropySession(shape, defer=defer, **kwargs)
    while not session.done:
        queries = session.queries_to_send()
        if not queries:
            raise InvalidState("session stalled")  # pragma: no cover - a session bug
        for q in queries:
            source = ours if q.side is Side.LOCAL else theirs
            remote = q.side is Side.REMOTE
            if q.kind is Kind.ROOT:
                root = await source.merkle_root()
                if remote:
                    req = m.MerkleRootRequest(0).encode()
                    resp = m.MerkleRootResponse(0, shape.fanout, shape.depth, root).encode()
                    session.count_bytes(sent=len(req), received=len(resp))
                session.receive_root(q.side, root)
            elif q.kind is Kind.CHILDREN:
                children = await source.merkle_children_many(q.items)
                if remote:
                    req = m.MerkleChildrenRequest(0, q.items).encode()
                    resp = m.MerkleChildrenResponse(0, tuple(tuple(c) for c in children)).encode()
                    session.count_bytes(sent=len(req), received=len(resp))
                session.receive_children(q.side, q.items, children)
            elif q.kind is Kind.BUCKETS:
                items = await source.bucket_items_many(q.items)
                if remote:
                    req = m.BucketItemsRequest(0, q.items).encode()
                    resp = m.BucketItemsResponse(0, tuple(tuple(i) for i in items)).encode()
                    session.count_bytes(sent=len(req), received=len(resp))
                session.receive_bucket_items(q.side, q.items, items)
            else:
                states = list(zip(q.items, await source.read_states(q.items), strict=True))
                if remote:
                    req = m.StateRequest(0, q.items).encode()
                    resp = m.StateResponse(0, tuple(states)).encode()
                    session.count_bytes(sent=len(req), received=len(resp))
                    await _merge_all(ours, [(d, s) for d, s in states if s is not None])
                else:
                    present = tuple((d, s) for d, s in states if s is not None)
                    if present:
                        session.count_bytes(sent=len(m.StatePush(present).encode()))
                    await _merge_all(theirs, present)
                session.receive_states(q.side, q.items)
    return session.stats


async def _merge_all(store: ReplicaStore, states: Sequence[tuple[str, bytes]]) -> None:
    for result in await store.merge_states(states):
        if isinstance(result, BaseException):
            raise result
