"""Quorum reads and writes over a replicator's live links: the consistency levels of the HTTP API.

A read (:meth:`Quorum.read`) asks every authenticated peer for its state of
the document, joins what it gets into the local replica (``merge_state``,
which repairs the local copy) and pushes the joined state back to every
peer whose state was stale (read repair). A write (:meth:`Quorum.wait_for_acks`)
waits until enough peers acknowledged our origin up to the write's sequence
number, by a ``WriteAck`` answer or by an ``Ack`` vector that covers it.
Both stop at a deadline and report what they reached
(:class:`sync.quorum.QuorumOutcome`); the level's arithmetic is
:func:`sync.quorum.required`'s, over the configured membership: the
cluster's size and our region's (never the peers linked now, or a partition
would shrink the quorum). This node counts as one replica. A
``local_quorum`` asks, and counts, only the peers whose authenticated
``Hello`` named our region; a peer not yet linked in this run has no known
region and counts for no local quorum.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from crdtstore.errors import CrdtError
from sync.events import ReadResponded, WriteAcked
from sync.protocol import PeerProtocol
from sync.quorum import Level, QuorumOutcome, Requirement, required

__all__ = ["Quorum"]


class Quorum:
    """The quorum reads and writes of one replicator, and the answers they wait for.

    Args:
        node: The replicator's node (``replica_id``, ``merge_state``, ``read_state``, ``version_vector``).
        cluster_size: Replicas in the cluster as configured now, this one included.
        region: Our region's name.
        region_size: Replicas in our region as configured, this one included.
        region_of: A peer's region as it authenticated, or None if unknown.
        timeout: Default seconds a read or write waits.
        acks: Per peer, the vector it acknowledged (kept up to date by the replicator; read here).
        stats: The replicator's counters.
        live_links: The links to wait on, one per authenticated peer.
        input: Feeds one input to a link's protocol (and flushes it).
        link_of: The live link to a peer, or None.
        reject: Fails a link whose peer sent what the node cannot take.
    """

    def __init__(
        self,
        *,
        node: Any,
        cluster_size: Callable[[], int],
        region: str,
        region_size: Callable[[], int],
        region_of: Callable[[str], str | None],
        timeout: float,
        acks: Mapping[str, Mapping[str, int]],
        stats: MutableMapping[str, int],
        live_links: Callable[[], list[Any]],
        input: Callable[[Any, Callable[[Any], Any]], None],
        link_of: Callable[[str], Any],
        reject: Callable[[Any, str, Exception], None],
    ) -> None:
        self._node = node
        self._cluster_size = cluster_size
        self._region = region
        self._region_size = region_size
        self._region_of = region_of
        self._timeout = timeout
        self._acks = acks
        self._stats = stats
        self._live_links = live_links
        self._input = input
        self._link_of = link_of
        self._reject = reject
        self._request_ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Any]] = {}  # read request id -> (peer id, state)
        self._write_waits: dict[int, set[str]] = {}  # write request id -> peers that acked that write
        self._acks_changed = asyncio.Event()

    def requirement(self, level: Level) -> Requirement:
        """What ``level`` needs in the configured cluster."""
        return required(level, replicas=self._cluster_size(), local_replicas=self._region_size())

    def needed(self, level: Level) -> int:
        """Replicas ``level`` needs, this one included (for ``local_quorum``: of our region)."""
        return self.requirement(level).needed

    def _counts(self, requirement: Requirement) -> Callable[[str], bool]:
        """Whether a peer's answer counts toward ``requirement``."""
        if requirement.local_only:
            return lambda peer: self._region_of(peer) == self._region
        return lambda peer: True

    # Public methods for the answers (the link's event handlers call them).

    def read_responded(self, event: ReadResponded) -> None:
        fut = self._waiters.pop(event.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result((event.peer_id, event.state))

    def write_acked(self, event: WriteAcked) -> None:
        waiting = self._write_waits.get(event.request_id)
        if waiting is not None:
            waiting.add(event.peer_id)
            self._acks_changed.set()

    def acks_changed(self) -> None:
        """A peer's acknowledged vector moved: waiting writes look again."""
        self._acks_changed.set()

    def cancel(self) -> None:
        """Fail every pending read (the replicator is closing)."""
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()

    # Public methods for the API.

    async def read(self, doc_id: str, level: Level, *, timeout: float | None = None) -> QuorumOutcome:
        """Gather peers' states of ``doc_id``, join them here, repair stale peers.

        Returns once ``level`` is reached or at the deadline, whichever first;
        the caller then reads the (joined) local document.
        """
        requirement = self.requirement(level)
        needed = requirement.needed
        if needed <= 1:
            return QuorumOutcome(needed=needed, reached=1, replicas=(self._node.replica_id,))
        timeout = self._timeout if timeout is None else timeout
        counts = self._counts(requirement)
        # A local_quorum asks our region only: it neither waits on nor loads the WAN.
        links = [link for link in self._live_links() if counts(link.peer_id)]
        futures: dict[asyncio.Future[Any], Any] = {}
        for link in links:
            rid = next(self._request_ids)
            fut = self._expect(rid)
            futures[fut] = link
            self._input(link, functools.partial(PeerProtocol.request_read, request_id=rid, doc_id=doc_id))
        answered: dict[str, bytes | None] = {}
        pending = set(futures)
        deadline = asyncio.get_running_loop().time() + timeout
        while pending and 1 + len(answered) < needed:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if not fut.cancelled() and fut.exception() is None:
                    peer_id, state = fut.result()
                    if counts(peer_id):
                        answered[peer_id] = state
        for fut in pending:
            fut.cancel()
        # Join what we got into our replica (repairs us), then push the join to stale peers.
        for peer_id, state in sorted(answered.items()):
            if state is None:
                continue
            try:
                await self._node.merge_state(doc_id, state)
            except (CrdtError, ValueError) as exc:
                self._reject(self._link_of(peer_id), "a quorum read answer", exc)
                answered[peer_id] = None  # merged nothing from it; it still answered
        repaired: list[str] = []
        joined = await self._node.read_state(doc_id)
        if joined is not None:
            for peer_id, state in sorted(answered.items()):
                link = self._link_of(peer_id)
                if state != joined and link is not None:
                    self._input(link, lambda p: p.push_states(((doc_id, joined),)))
                    repaired.append(peer_id)
        self._stats["read_repairs"] += len(repaired)
        return QuorumOutcome(
            needed=needed,
            reached=1 + len(answered),
            replicas=(self._node.replica_id, *sorted(answered)),
            repaired=tuple(sorted(repaired)),
        )

    async def wait_for_acks(
        self,
        doc_id: str,
        level: Level,
        *,
        origin: str | None = None,
        seq: int | None = None,
        timeout: float | None = None,
    ) -> QuorumOutcome:
        """Wait until enough peers durably hold the write ``(origin, seq)`` (``WriteResult`` has both).

        Without them, it waits for our origin's current mark, which is at
        least the write's own (it committed before this call): correct, but it
        may also wait for later writes of other clients.
        """
        requirement = self.requirement(level)
        needed = requirement.needed
        if needed <= 1:
            return QuorumOutcome(needed=needed, reached=1, replicas=(self._node.replica_id,))
        timeout = self._timeout if timeout is None else timeout
        counts = self._counts(requirement)
        if origin is None or seq is None or seq < 1:
            origin = self._node.replica_id
            seq = int((await self._node.version_vector()).get(origin, 0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        acked: set[str] = set()
        rids = []
        for link in self._live_links():
            if not counts(link.peer_id):
                continue
            rid = next(self._request_ids)
            rids.append(rid)
            self._write_waits[rid] = acked
            ask = functools.partial(
                PeerProtocol.request_write_ack, request_id=rid, doc_id=doc_id, origin=origin, seq=seq
            )
            self._input(link, ask)
        try:
            holders = await self._until_acked(acked, origin, seq, needed, deadline, counts)
        finally:
            for rid in rids:
                self._write_waits.pop(rid, None)
        return QuorumOutcome(needed=needed, reached=1 + len(holders), replicas=(self._node.replica_id, *holders))

    async def _until_acked(
        self, acked: set[str], origin: str, seq: int, needed: int, deadline: float, counts: Callable[[str], bool]
    ) -> list[str]:
        loop = asyncio.get_running_loop()
        while True:
            # A WriteAcked answer, or a periodic Ack vector that covers the write, both count.
            covered = {peer for peer, vector in self._acks.items() if vector.get(origin, 0) >= seq}
            holders = sorted(peer for peer in acked | covered if counts(peer))
            if 1 + len(holders) >= needed:
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            self._acks_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks_changed.wait(), min(left, 0.5))
        return holders

    def _expect(self, request_id: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = fut
        return fut
