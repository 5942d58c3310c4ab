"""Tunable consistency: the levels, how many replicas each needs, and what a quorum reached.

Theory of operation
-------------------

A cluster has ``N`` replicas spread over regions, ``L`` of them in the
coordinator's region (both from configuration, never from who is connected
now: a partition must not shrink what a quorum is). A level says which
answers make a read or a write *done*:

================  ====================================  ===  ======  ======  ======
level             needs                                 3x1  3x3     2x5     1x3
================  ====================================  ===  ======  ======  ======
``one``           1 replica (the coordinator)           1    1       1       1
``local_quorum``  ``L // 2 + 1`` of our region's ``L``  1    2 of 3  3 of 5  2 of 3
``quorum``        ``N // 2 + 1`` of all ``N``           2    5       6       2
``all``           every replica, ``N``                  3    9       10      3
================  ====================================  ===  ======  ======  ======

(Columns: regions x replicas per region.) The coordinator's own replica
counts (a write is waited for after the local commit; a read joins into
the local replica). ``local_quorum`` counts only answers of replicas in
the coordinator's region, which peers announce in their authenticated
``Hello``; the other levels count any replica. With ``quorum`` for both
reads and writes, ``R + W > N``: every read quorum meets every write
quorum, so a read joins at least one state holding the write
(read-your-writes across regions); ``local_quorum`` for both gives the same
within one region.

This module is arithmetic only. The replicator
(:meth:`crdtstore.replicator.Replicator.read` and
:meth:`~crdtstore.replicator.Replicator.wait_for_acks`) gathers the answers
and reports a :class:`QuorumOutcome`; the HTTP API takes a :class:`Level`
from ``?r=`` and ``?w=``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Level", "QuorumOutcome", "Requirement", "required"]


class Level(enum.StrEnum):
    """How many replicas a read gathers or a write waits for (the coordinator's own counts as one)."""

    ONE = "one"
    LOCAL_QUORUM = "local_quorum"
    QUORUM = "quorum"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Requirement:
    """How many answers a level needs: ``total`` from anywhere, ``local`` of them from our region.

    A level with ``local`` answers (``local_quorum``) counts only our region's
    replicas: ``needed`` and ``reached`` of its outcome are counts of them.
    """

    total: int
    local: int

    @property
    def local_only(self) -> bool:
        """Only answers of our region's replicas count (and only they are asked)."""
        return self.local > 0

    @property
    def needed(self) -> int:
        """Answers to wait for, the coordinator's own included, among the replicas that count."""
        return self.local if self.local_only else self.total


def required(level: Level | str, *, replicas: int, local_replicas: int) -> Requirement:
    """The answers ``level`` needs in a cluster of ``replicas``, ``local_replicas`` of them in our region.

    Raises:
        ValueError: An unknown level, no replica at all, or no replica in our region for ``local_quorum``.
    """
    level = Level(level)
    if replicas < 1:
        raise ValueError("a cluster has at least one replica")
    if level is Level.ONE:
        return Requirement(1, 0)
    if level is Level.ALL:
        return Requirement(replicas, 0)
    if level is Level.QUORUM:
        return Requirement(replicas // 2 + 1, 0)
    if not 1 <= local_replicas <= replicas:
        raise ValueError(f"local_quorum needs 1 to {replicas} replicas in our region, not {local_replicas}")
    q = local_replicas // 2 + 1
    return Requirement(q, q)


@dataclass(frozen=True, slots=True)
class QuorumOutcome:
    """What a quorum read or write reached.

    Attributes:
        needed: Replicas the level asked for (the coordinator's own included; for ``local_quorum``,
            replicas of its region).
        reached: Replicas that answered in time, counted as ``needed`` is.
        replicas: Their replica ids.
        repaired: Peers sent a joined state because theirs was stale (reads).
    """

    needed: int
    reached: int
    replicas: tuple[str, ...]
    repaired: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reached >= self.needed
