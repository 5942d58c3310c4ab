"""Tunable consistency: how many replicas must answer, and coordinators that count them.

Theory of operation
-------------------

A cluster has ``N`` replicas spread over regions. A level says which
answers make a read or a write *done*:

=================  ===============================================  ================
level              needs                                            when N=3x1, 2+1
=================  ===============================================  ================
``one``            1 replica (the local one)                        1
``local_quorum``   a majority of the coordinator's region            1; 2 of 2
``quorum``         a majority of all replicas, ``N // 2 + 1``       2
``all``            every replica                                    3
=================  ===============================================  ================

The coordinator's own replica counts (a write coordinator is created after
the local commit; a read coordinator is fed the local state first). With
``quorum`` for both reads and writes, ``R + W > N``: every read quorum
meets every write quorum, so a read joins at least one state holding the
write (read-your-writes across regions).

:class:`ReadCoordinator` collects states, joins them (CRDT states join
without conflicts) and names the *stale* replicas, whose state is below the
join, for read repair. :class:`WriteCoordinator` counts acknowledgements.
Both are pure: time comes in through ``receive_tick(now)``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from crdtstore.codec import decode_document, encode_document
from crdtstore.document import Document

__all__ = ["Level", "ReadCoordinator", "Requirement", "WriteCoordinator", "required"]


class Level(enum.StrEnum):
    ONE = "one"
    LOCAL_QUORUM = "local_quorum"
    QUORUM = "quorum"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Requirement:
    """How many answers a level needs: ``total`` from anywhere and ``local`` from our region."""

    total: int
    local: int

    def met(self, answered: Mapping[str, str], local_region: str) -> bool:
        """Whether ``answered`` (replica id -> region) satisfies this requirement."""
        local = sum(1 for region in answered.values() if region == local_region)
        return len(answered) >= self.total and local >= self.local


def required(level: Level | str, replicas: Mapping[str, str], local_region: str) -> Requirement:
    """The answers ``level`` needs, given ``replicas`` (replica id -> region, ours included).

    Raises:
        ValueError: An unknown level, or no replica in ``local_region`` for ``local_quorum``.
    """
    level = Level(level)
    n = len(replicas)
    if n < 1:
        raise ValueError("a cluster has at least one replica")
    if level is Level.ONE:
        return Requirement(1, 0)
    if level is Level.ALL:
        return Requirement(n, 0)
    if level is Level.QUORUM:
        return Requirement(n // 2 + 1, 0)
    n_local = sum(1 for region in replicas.values() if region == local_region)
    if n_local < 1:
        raise ValueError(f"no replica in region {local_region!r}")
    q = n_local // 2 + 1
    return Requirement(q, q)


class _Coordinator:
    def __init__(
        self, level: Level | str, replicas: Mapping[str, str], *, local_region: str, now: float, timeout: float
    ) -> None:
        self.replicas = dict(replicas)
        self.local_region = local_region
        self.requirement = required(level, self.replicas, local_region)
        self.deadline = now + timeout
        self.timed_out = False
        self._answered: dict[str, str] = {}

    @property
    def done(self) -> bool:
        """Enough answers arrived (done wins over a timeout that comes later)."""
        return self.requirement.met(self._answered, self.local_region)

    @property
    def finished(self) -> bool:
        """Done or timed out: the caller can answer its client."""
        return self.done or self.timed_out

    @property
    def answered(self) -> list[str]:
        return sorted(self._answered)

    def receive_tick(self, now: float) -> None:
        if not self.done and now >= self.deadline:
            self.timed_out = True

    def _answer(self, replica_id: str) -> bool:
        if replica_id not in self.replicas or self.timed_out:
            return False
        self._answered[replica_id] = self.replicas[replica_id]
        return True


class ReadCoordinator(_Coordinator):
    """Collects the states of one document from replicas until the level is met.

    Args:
        level: The consistency level.
        replicas: Replica id -> region, for every replica of the cluster.
        local_region: The coordinator's region.
        now: The clock now; ``timeout`` seconds later the read times out.
    """

    def __init__(
        self, level: Level | str, replicas: Mapping[str, str], *, local_region: str, now: float, timeout: float
    ) -> None:
        super().__init__(level, replicas, local_region=local_region, now=now, timeout=timeout)
        self._states: dict[str, bytes | None] = {}

    def receive_response(self, replica_id: str, state: bytes | None) -> None:
        """Record a replica's state (None: it does not have the document). Unknown replicas are ignored.

        Raises:
            DecodeError: ``state`` is not a valid encoded document (nothing recorded).
        """
        if state is not None:
            decode_document(state)
        if self._answer(replica_id):
            self._states[replica_id] = state

    def merged(self) -> bytes | None:
        """The join of every state received (None if no replica has the document)."""
        doc: Document | None = None
        for replica_id in sorted(self._states):
            state = self._states[replica_id]
            if state is None:
                continue
            if doc is None:
                doc = decode_document(state)
            else:
                doc.merge(decode_document(state))
        return None if doc is None else encode_document(doc)

    def stale(self) -> list[str]:
        """Replicas that answered with less than the join: send them the merged state (read repair)."""
        merged = self.merged()
        if merged is None:
            return []
        return sorted(r for r, s in self._states.items() if s != merged)


class WriteCoordinator(_Coordinator):
    """Counts which replicas durably hold a write until the level is met.

    The coordinator's own replica counts once it is created (after the local
    commit). Acks come from ``WriteAcked`` events or from ``PeerAcked``
    vectors (:meth:`receive_vector`).
    """

    def __init__(
        self,
        level: Level | str,
        replicas: Mapping[str, str],
        *,
        self_id: str,
        origin: str,
        seq: int,
        local_region: str,
        now: float,
        timeout: float,
    ) -> None:
        super().__init__(level, replicas, local_region=local_region, now=now, timeout=timeout)
        self.origin = origin
        self.seq = seq
        self._answer(self_id)

    def receive_ack(self, replica_id: str) -> None:
        self._answer(replica_id)

    def receive_vector(self, replica_id: str, vector: Mapping[str, int]) -> None:
        """A peer's acknowledged vector: it counts if it covers the write."""
        if vector.get(self.origin, 0) >= self.seq:
            self._answer(replica_id)
