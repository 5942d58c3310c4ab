"""The request traffic of one peer link: anti-entropy sessions, and the peer's requests we answer.

Theory of operation
-------------------

**Anti-entropy.** Every ``anti_entropy_interval`` the side with the smaller
replica id (or either side, on demand) runs a
:class:`sync.antientropy.AntiEntropySession`: local tree reads become
``Need*`` events, remote ones become requests; differing documents are
pulled (``MergeStates``) and pushed (``StatePush``), so both sides end
equal. See :mod:`sync.antientropy`. Two refinements keep the periodic
sessions cheap under load:

* Only a pushing connection starts them: an adapter holding two links to
  one peer would otherwise compare (and repair) everything twice.
* They defer documents a delta touched (committed here, or received) less
  than ``anti_entropy_settle`` ago. While writes stream, every such
  document differs between the trees only because of deltas in flight,
  which will make it equal anyway; repairing it would ship whole states
  and make both nodes merge them, a burst of work that delays the very
  deltas it duplicates. A document deferred by
  ``anti_entropy_max_deferrals`` periodic sessions in a row is repaired by
  the next one all the same, so a real divergence in a document written
  without pause is still repaired. Sessions started on demand, or to
  repair a truncated log, defer nothing.

**Requests.** Both the peer's requests (its session's tree reads, a quorum
read) and our session's local reads become ``Need*`` events under request
ids minted here; the node's answers come back through ``answer_*`` with
those ids, in any order. The peer may keep at most
``max_pending_requests`` of its requests unanswered. An answer for a
session that was abandoned (timed out) or has ended is dropped.

:class:`Requests` emits through the callables its protocol
(:class:`sync.protocol.PeerProtocol`) gives it, so its events and messages
take their places in the protocol's single ordered output.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import messages as m
from .antientropy import AntiEntropySession, Kind, Query, Side
from .channel import TAG_SIZE
from .config import SyncConfig
from .events import (
    AntiEntropyDone,
    Event,
    MergeStates,
    NeedBucketItems,
    NeedMerkleChildren,
    NeedMerkleRoot,
    NeedStates,
)
from .exceptions import InvalidState, LimitExceeded, UnexpectedMessage

__all__ = ["Requests"]

_MAX_TOUCHED = 1 << 16  # documents remembered as touched lately (a bound on memory, not a setting)


class Requests:
    """Anti-entropy and request bookkeeping of one link.

    Args:
        config: The link's limits and intervals.
        now: The caller's clock when the link opened.
        emit: Appends an event to the protocol's output.
        send: Seals and queues a message (``count=True``: count its bytes to the session).
        is_open: Whether the link is open.
        on_finish: Called when a session ends, with the gaps it covered (origin -> seq).
    """

    def __init__(
        self,
        config: SyncConfig,
        *,
        now: float,
        emit: Callable[[Event], None],
        send: Callable[..., None],
        is_open: Callable[[], bool],
        on_finish: Callable[[dict[str, int]], None],
    ) -> None:
        self._config = config
        self._emit = emit
        self._send = send
        self._is_open = is_open
        self._on_finish = on_finish
        self.now = now  # the protocol's clock, as of its last tick
        # Requests: ids we minted -> what the answer is for.
        self._next_id = 1
        self._local: dict[int, tuple[str, int, tuple[Any, ...]]] = {}
        self._remote: dict[int, Query] = {}
        self._peer_requests = 0
        # The running session, when it started, the gaps it covers, whether another is due right after it,
        # its generation (answers of an abandoned session carry an older one), and when the last one started.
        self.session: AntiEntropySession | None = None
        self._started = now
        self._gaps: dict[str, int] = {}
        self.again = False
        self._gen = 0
        self.last = now
        # Documents deltas touched lately, oldest first (periodic sessions defer them), and how many
        # periodic sessions in a row deferred each document.
        self._touched: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._deferrals: dict[str, int] = {}

    # Public methods for the protocol's clock.

    def expire(self, now: float) -> None:
        """Abandon a session past ``anti_entropy_timeout``; forget touches older than ``anti_entropy_settle``."""
        self.now = now
        if self.session is not None and now - self._started >= self._config.anti_entropy_timeout:
            self.session = None  # answers still in flight are ignored (unknown request ids)
            self._remote.clear()
        touched, settle = self._touched, self._config.anti_entropy_settle
        while touched and now - next(iter(touched.values())) >= settle:
            touched.popitem(last=False)

    def due(self, now: float) -> bool:
        """Whether a session should start now: one was asked for, or the interval passed (no session running)."""
        interval = self._config.anti_entropy_interval
        return self.session is None and (self.again or (interval is not None and now - self.last >= interval))

    # Public methods for the node's answers.

    def answer_merkle_root(self, request_id: int, root: bytes) -> None:
        purpose, peer_rid, _ = self._take(request_id)
        if purpose == "peer":
            shape = self._config.shape
            self._peer_answered(m.MerkleRootResponse(peer_rid, shape.fanout, shape.depth, root))
        elif self._for_session(peer_rid):
            assert self.session is not None
            self.session.receive_root(Side.LOCAL, root)
            self._drive()

    def answer_merkle_children(self, request_id: int, children: Sequence[Sequence[bytes]]) -> None:
        purpose, peer_rid, nodes = self._take(request_id)
        if len(children) != len(nodes):
            raise InvalidState("one list of children per requested node")
        if purpose == "peer":
            self._peer_answered(m.MerkleChildrenResponse(peer_rid, tuple(tuple(c) for c in children)))
        elif self._for_session(peer_rid):
            assert self.session is not None
            self.session.receive_children(Side.LOCAL, nodes, children)
            self._drive()

    def answer_bucket_items(self, request_id: int, items: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        purpose, peer_rid, buckets = self._take(request_id)
        if len(items) != len(buckets):
            raise InvalidState("one list of items per requested bucket")
        if purpose == "peer":
            self._peer_answered(m.BucketItemsResponse(peer_rid, tuple(tuple(i) for i in items)))
        elif self._for_session(peer_rid):
            assert self.session is not None
            self.session.receive_bucket_items(Side.LOCAL, buckets, items)
            self._drive()

    def answer_states(self, request_id: int, states: Sequence[bytes | None]) -> None:
        """Answer a ``NeedStates``: one state (or None) per requested document, in order."""
        purpose, peer_rid, doc_ids = self._take(request_id)
        if len(states) != len(doc_ids):
            raise InvalidState("one state per requested document")
        pairs = tuple(zip(doc_ids, states, strict=True))
        if purpose == "peer":
            self._peer_answered(m.StateResponse(peer_rid, pairs))
        elif purpose == "read":
            self._peer_answered(m.ReadResponse(peer_rid, doc_ids[0], states[0]))
        elif self._for_session(peer_rid):
            assert self.session is not None
            present = tuple((d, s) for d, s in pairs if s is not None)
            if present:
                self._send(m.StatePush(present), count=True)
            self.session.receive_states(Side.LOCAL, doc_ids)
            self._drive()

    def receive_request(self, msg: m.Message) -> None:
        """One of the peer's requests: a ``Need*`` event asks the node (its answer comes to ``answer_*``).

        Raises:
            LimitExceeded: Too many of the peer's requests are unanswered.
            UnexpectedMessage: The request names what our tree does not have.
        """
        if self._peer_requests >= self._config.max_pending_requests:
            raise LimitExceeded(f"more than {self._config.max_pending_requests} unanswered requests")
        self._peer_requests += 1
        rid = self._mint_id()
        if isinstance(msg, m.MerkleRootRequest):
            self._local[rid] = ("peer", msg.request_id, ())
            self._emit(NeedMerkleRoot(rid))
        elif isinstance(msg, m.MerkleChildrenRequest):
            shape = self._config.shape
            for level, index in msg.nodes:
                if not (level < shape.depth and index < shape.width(level)):
                    raise UnexpectedMessage(f"no inner node ({level}, {index}) in {shape}")
            self._local[rid] = ("peer", msg.request_id, msg.nodes)
            self._emit(NeedMerkleChildren(rid, msg.nodes))
        elif isinstance(msg, m.BucketItemsRequest):
            if any(b >= self._config.shape.leaves for b in msg.buckets):
                raise UnexpectedMessage("bucket out of range")
            self._local[rid] = ("peer", msg.request_id, msg.buckets)
            self._emit(NeedBucketItems(rid, msg.buckets))
        elif isinstance(msg, m.StateRequest):
            self._local[rid] = ("peer", msg.request_id, msg.doc_ids)
            self._emit(NeedStates(rid, msg.doc_ids))
        else:
            assert isinstance(msg, m.ReadRequest)
            self._local[rid] = ("read", msg.request_id, (msg.doc_id,))
            self._emit(NeedStates(rid, (msg.doc_id,)))

    def receive_response(self, msg: Any) -> None:
        """The peer's answer to one of our session's queries (a late or unknown one is ignored).

        Raises:
            UnexpectedMessage: An answer that does not fit the query or the session.
        """
        query = self._remote.pop(msg.request_id, None)
        if query is None or self.session is None:
            return  # an abandoned session's late answer, or a duplicate
        self.session.count_bytes(received=len(msg.encode()) + TAG_SIZE)
        session = self.session
        if isinstance(msg, m.MerkleRootResponse):
            shape = self._config.shape
            if (msg.fanout, msg.depth) != (shape.fanout, shape.depth):
                raise UnexpectedMessage(f"peer tree is {msg.fanout}x{msg.depth}, ours {shape.fanout}x{shape.depth}")
            self._call(session.receive_root, Side.REMOTE, msg.root)
        elif isinstance(msg, m.MerkleChildrenResponse):
            self._call(session.receive_children, Side.REMOTE, query.items, msg.children)
        elif isinstance(msg, m.BucketItemsResponse):
            self._call(session.receive_bucket_items, Side.REMOTE, query.items, msg.items)
        else:
            assert isinstance(msg, m.StateResponse)
            if tuple(d for d, _ in msg.states) != query.items:
                raise UnexpectedMessage("state response does not match the request")
            present = tuple((d, s) for d, s in msg.states if s is not None)
            if present:
                self._emit(MergeStates(present))
            self._call(session.receive_states, Side.REMOTE, query.items)

    # Public methods for the protocol.

    def start(self, *, periodic: bool, gaps: Mapping[str, int]) -> None:
        """Start a session (the caller checked the link is open), or another right after the running one.

        Args:
            periodic: A periodic session, which defers documents deltas touched lately.
            gaps: The gaps the peer's truncated logs left us (a session started now covers them).
        """
        if self.session is not None:
            self.again = True
            return
        self.again = False
        self._gen += 1
        # Gaps announced before the session starts are covered by it.
        self._gaps = dict(gaps)
        # A session repairing a gap must leave both sides equal: the SkipLog after it says so.
        defer = self._settling if periodic and not self._gaps and self._config.anti_entropy_settle > 0 else None
        self.session = AntiEntropySession(self._config.shape, states_chunk=self._config.states_chunk, defer=defer)
        self._started = self.now
        self.last = self.now
        self._drive()

    def touch(self, doc_id: str) -> None:
        """A delta touched ``doc_id`` now (committed here, or received): periodic sessions defer it a while."""
        touched = self._touched
        touched[doc_id] = self.now
        touched.move_to_end(doc_id)
        if len(touched) > _MAX_TOUCHED:
            touched.popitem(last=False)  # forgetting one only means repairing it if it differs

    # Private methods: the session.

    def _settling(self, doc_id: str) -> bool:
        """Whether a periodic session leaves ``doc_id`` alone (see "Anti-entropy" in the module docstring)."""
        touched = self._touched.get(doc_id)
        return (
            touched is not None
            and self.now - touched < self._config.anti_entropy_settle
            and self._deferrals.get(doc_id, 0) < self._config.anti_entropy_max_deferrals
        )

    def _drive(self) -> None:
        session = self.session
        if session is None:
            return
        for q in session.queries_to_send():
            rid = self._mint_id()
            if q.side is Side.LOCAL:
                self._local[rid] = ("ae", self._gen, q.items)
                if q.kind is Kind.ROOT:
                    self._emit(NeedMerkleRoot(rid))
                elif q.kind is Kind.CHILDREN:
                    self._emit(NeedMerkleChildren(rid, q.items))
                elif q.kind is Kind.BUCKETS:
                    self._emit(NeedBucketItems(rid, q.items))
                else:
                    self._emit(NeedStates(rid, q.items))
                continue
            self._remote[rid] = q
            if q.kind is Kind.ROOT:
                msg: m.Message = m.MerkleRootRequest(rid)
            elif q.kind is Kind.CHILDREN:
                msg = m.MerkleChildrenRequest(rid, q.items)
            elif q.kind is Kind.BUCKETS:
                msg = m.BucketItemsRequest(rid, q.items)
            else:
                msg = m.StateRequest(rid, q.items)
            self._send(msg, count=True)
        if session.done:
            self._finish(session)

    def _call(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except InvalidState as exc:
            # A remote answer that does not fit the session (wrong node count...): the peer's fault.
            # Local answers are checked by the adapter's own code; they cannot reach here wrongly.
            raise UnexpectedMessage(str(exc)) from exc
        self._drive()

    def _finish(self, session: AntiEntropySession) -> None:
        self.session = None
        self._remote.clear()
        s = session.stats
        done = AntiEntropyDone(
            s.round_trips, s.bytes_sent, s.bytes_received, s.docs_pulled, s.docs_pushed, s.docs_deferred
        )
        self._emit(done)
        # Deferred in a row: a document this session repaired, or found equal, starts over.
        previous = self._deferrals
        self._deferrals = {d: previous.get(d, 0) + 1 for d in session.deferred}
        # Every MergeStates of the session precedes this point in the event list, so the
        # node has merged the peer's states, which include each delta of the gaps it covered.
        gaps, self._gaps = self._gaps, {}
        self._on_finish(gaps)

    # Private methods: request ids.

    def _mint_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _take(self, request_id: int) -> tuple[str, int, tuple[Any, ...]]:
        """Forget a pending local read: its purpose, the peer's request id, and what was asked."""
        try:
            purpose, peer_rid, items = self._local.pop(request_id)
        except KeyError:
            raise InvalidState(f"no pending request {request_id}") from None
        if purpose != "ae":
            self._peer_requests -= 1
        return purpose, peer_rid, items

    def _for_session(self, generation: int) -> bool:
        """Whether a local answer belongs to the running session (not an abandoned one) and can be used."""
        return self.session is not None and generation == self._gen and self._is_open()

    def _peer_answered(self, msg: m.Message) -> None:
        if self._is_open():
            self._send(msg)
