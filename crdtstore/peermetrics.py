"""What the replicator measures of its peers, kept as plain numbers until a scrape reads them.

Theory of operation
-------------------

Everything here runs on the replicator's event loop, and ``/metrics`` is
rendered on that loop too, so nothing needs a lock, and a delta costs an
addition or two rather than a prometheus-client ``observe`` (a lock and a
loop over the buckets) per delta per peer. :mod:`crdtstore.api.metrics`
turns the numbers into series at scrape time. No clock is read here: every
method that needs the time takes ``now`` (the loop's monotonic clock).

**Labels are bounded.** Series are labelled by a peer's stable replica id
(``PeerInfo.replica_id``, the one ``/v1/admin/links`` lists), never by a
document id, and only for peers that completed the handshake, i.e. hold the
cluster secret. At most ``max_peers`` are tracked per run (a StatefulSet
that scales up and down a thousand times mints new ids each time); a peer
beyond that is counted in nothing per peer, and ``crdtstore_peers_untracked``
says how many there were.

**Replication lag** is the time from our commit of a write to the peer's
acknowledgement that it durably holds it. The replicator reports each run
of our own origin's entries its tailer reads from the log (:meth:`ReplicationMeter.committed`,
right after the group commit that made them durable) and each ack
(:meth:`ReplicationMeter.acked`); an ack that moves a peer from ``a`` to
``b`` observes one lag per write in ``(a, b]``. Runs are stored, not
writes: one per group commit. While a peer is down its runs wait; past
``max_runs`` the two oldest are merged, keeping the older time, so a
long outage costs bounded memory and its lags read high (never low).
Runs every seen peer acknowledged are dropped. A peer first seen after
some runs were dropped is observed from the oldest run still held.

**Unacknowledged deltas** of a peer are our writes it has not acknowledged:
``last committed seq - its ack``, for our origin of this start. Each region
pushes its own writes to every peer (relays wait for acks: see
``sync/protocol.py``), so this is the backlog a cut or slow peer builds up.

**The oldest un-truncated log entry.** The log keeps no times, so every
truncation pass records a checkpoint: the time and the node's version
vector then. Entries up to that vector were logged by that time. The age is
``now - t`` of the oldest checkpoint not yet wholly truncated: a lower bound
(the entry is at least that old), off by at most one truncation interval.
Entries found in the log at start count from the first checkpoint of this
run. Fully truncated checkpoints are dropped, and past ``max_checkpoints``
every other one is, which keeps the bound a lower bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["LAG_BUCKETS", "QUORUM_OPERATIONS", "Histogram", "ReplicationMeter", "Traffic"]

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds; from a fast loopback ack up to a five-minute outage (anything longer lands in +Inf)."""

QUORUM_OPERATIONS = ("read", "write")
QUORUM_OUTCOMES = ("ok", "timeout")


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (the last one is +Inf, not cumulative), their sum and total."""

    bounds: tuple[float, ...]
    buckets: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.buckets:
            self.buckets = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        """Observe ``value`` ``times`` times ("le": the first bound >= value)."""
        self.buckets[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times
        self.count += times


@dataclass(slots=True)
class Traffic:
    """Bytes and messages one way or the other (counters: they only grow)."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0

    def add(self, other: Traffic) -> None:
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.messages_in += other.messages_in
        self.messages_out += other.messages_out


class ReplicationMeter:
    """The replicator's peer numbers (see the module docstring).

    Args:
        max_peers: Peers tracked per run.
        max_runs: Runs of our writes held for lag observations.
        max_checkpoints: Log checkpoints held for the age of the oldest entry.
    """

    def __init__(self, *, max_peers: int = 256, max_runs: int = 20_000, max_checkpoints: int = 4096) -> None:
        self.max_peers = max_peers
        self.max_runs = max_runs
        self.max_checkpoints = max_checkpoints
        self.peers: dict[str, str] = {}  # peer replica id -> its region, in the order first seen
        self.untracked: set[str] = set()  # beyond max_peers (ids only, bounded by the same cap)
        self.traffic: dict[str, Traffic] = {}  # of links that closed; live links add their own
        self.lag: dict[str, Histogram] = {}
        self.acked_seq: dict[str, int] = {}  # peer -> highest seq of our origin it acknowledged
        self.last_seq = 0  # highest seq of our origin committed (read by the tailer)
        self.quorum: dict[tuple[str, str, str], int] = {}
        # Runs of our origin's writes: seqs firsts[i]..lasts[i] committed at times[i]; live from _head on.
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._times: list[float] = []
        self._head = 0
        self._checkpoints: list[tuple[float, dict[str, int]]] = []
        self._checkpointed = False  # a truncation pass ran (no checkpoint left then means: all truncated)

    # Public methods for the replicator.

    def peer_seen(self, peer_id: str, region: str) -> bool:
        """A peer completed the handshake; False if it is beyond ``max_peers`` (not tracked)."""
        if peer_id in self.peers:
            return True
        if len(self.peers) >= self.max_peers:
            if len(self.untracked) < self.max_peers:
                self.untracked.add(peer_id)
            return False
        self.peers[peer_id] = region
        self.traffic[peer_id] = Traffic()
        self.lag[peer_id] = Histogram(LAG_BUCKETS)
        return True

    def link_closed(self, peer_id: str | None, traffic: Traffic) -> None:
        """Keep a closed link's traffic in its peer's counters (a link that never authenticated: nowhere)."""
        if peer_id is not None and peer_id in self.traffic:
            self.traffic[peer_id].add(traffic)

    def committed(self, first: int, last: int, now: float) -> None:
        """Our origin's writes ``first..last`` are durable (read from the log by the replicator's tailer,
        which hands them to the links within ``announce_interval``)."""
        if last < first or last <= self.last_seq:
            return
        first = max(first, self.last_seq + 1)
        self.last_seq = last
        self._firsts.append(first)
        self._lasts.append(last)
        self._times.append(now)
        if len(self._lasts) - self._head > self.max_runs:
            # Merge the two oldest: their writes then read as committed at the older time.
            h = self._head
            self._firsts[h + 1] = self._firsts[h]
            self._times[h + 1] = self._times[h]
            self._head += 1
        self._compact()

    def acked(self, peer_id: str, seq: int, now: float) -> None:
        """``peer_id`` acknowledged our origin up to ``seq``: one lag observation per write it newly holds."""
        histogram = self.lag.get(peer_id)
        if histogram is None:
            return
        before = self.acked_seq.get(peer_id, 0)
        if seq <= before:
            return  # acks only grow; an older link's late ack says nothing new
        self.acked_seq[peer_id] = seq
        i = bisect.bisect_left(self._lasts, before + 1, lo=self._head)
        while i < len(self._lasts) and self._firsts[i] <= seq:
            n = min(self._lasts[i], seq) - max(self._firsts[i], before + 1) + 1
            if n > 0:
                histogram.observe(max(0.0, now - self._times[i]), n)
            i += 1
        self._trim_runs()

    def unacked(self, peer_id: str) -> int:
        """Our writes of this start that ``peer_id`` has not acknowledged."""
        return max(0, self.last_seq - self.acked_seq.get(peer_id, 0))

    def quorum_outcome(self, operation: str, level: str, ok: bool) -> None:
        key = (operation, level, "ok" if ok else "timeout")
        self.quorum[key] = self.quorum.get(key, 0) + 1

    def checkpoint(self, now: float, vector: Mapping[str, int], truncated: Mapping[str, int]) -> None:
        """A truncation pass: the node's vector at ``now``, and how far each origin is truncated."""
        self._checkpointed = True
        cps = self._checkpoints
        if not cps or cps[-1][1] != vector:
            cps.append((now, dict(vector)))
        self._trim_checkpoints(truncated)
        if len(cps) > self.max_checkpoints:
            # Every other one, the newest kept: the age stays a lower bound, at a coarser grain.
            self._checkpoints = cps[-1::-2][::-1]

    def log_age(self, now: float, truncated: Mapping[str, int]) -> float | None:
        """Seconds since the oldest un-truncated entry was logged (at least); None before the first checkpoint."""
        if not self._checkpointed:
            return None
        for t, vector in self._checkpoints:
            if not _covered(vector, truncated):
                return max(0.0, now - t)
        return 0.0

    # Private methods.

    def _trim_runs(self) -> None:
        if not self.peers:
            return
        floor = min(self.acked_seq.get(p, 0) for p in self.peers)
        while self._head < len(self._lasts) and self._lasts[self._head] <= floor:
            self._head += 1
        self._compact()

    def _compact(self) -> None:
        if self._head > 1024 and self._head * 2 > len(self._lasts):
            h = self._head
            del self._firsts[:h], self._lasts[:h], self._times[:h]
            self._head = 0

    def _trim_checkpoints(self, truncated: Mapping[str, int]) -> None:
        cps = self._checkpoints
        drop = 0
        while drop < len(cps) and _covered(cps[drop][1], truncated):
            drop += 1
        if drop:
            del cps[:drop]

    def runs_held(self) -> int:
        """Runs of writes held for lag observations (for tests of the bounds)."""
        return len(self._lasts) - self._head


def _covered(vector: Mapping[str, int], truncated: Mapping[str, int]) -> bool:
    """Whether every entry up to ``vector`` is truncated."""
    return all(seq <= truncated.get(origin, 0) for origin, seq in vector.items())
