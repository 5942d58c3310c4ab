"""The sending half of one peer link: what the peer holds, what we sent, and what may go next.

Theory of operation
-------------------

**Delta push.** We track per origin ``acked`` (the peer's acknowledged
contiguous vector, ``their_vector``), ``known`` (the highest seq the peer is
known to hold: acked, or sent to us by the peer itself) and ``sent`` (the
highest seq sent on this connection). An entry goes out only if it is
exactly ``floor + 1`` (the floor being the larger of ``sent`` and ``known``)
and the unacknowledged window has room, so the peer sees each origin in
order on a healthy link. Anything we could not push live (window full, a
gap, a reconnect) is pulled from the node's log through ``NeedLog``, one
request per origin at a time (``log_pending``). On authentication each side
sends ``Ack(our_vector)``, which makes the other side pull from its log
exactly what we lack (catch-up).

**Relays.** Another origin's entries go to the peer from our log when the
peer's ack shows it lacks them (a line A - B - C, or a cut link in a mesh).
In a mesh the peer almost always has them from their origin already, and
its ack is a round trip old: relaying on every ack sent most entries twice.
So an entry we committed less than ``relay_grace`` ago (``fresh``) does not
start a relay; one the peer still lacks after that does, and the relay then
sends whatever the peer lacks.

**Loss.** A message lost, duplicated or reordered on a link fails its tag
and the link; the next link catches up from the acknowledged vectors.
Within a link, if the peer's ack has not moved for ``retransmit_timeout``
while entries are unacked, we rewind ``sent`` to their vector and pull from
the log again.

**Truncated logs.** If the log no longer holds what the peer lacks, we send
``LogTruncated(origin, first)`` instead and stop pushing that origin
(``blocked``) until the peer's ack shows it reached ``first - 1`` (by
anti-entropy); the push then resumes from ``first``.

The object holds state and answers questions; it emits nothing. The
protocol (:class:`sync.protocol.PeerProtocol`) turns its answers into
``Deltas``, ``LogTruncated`` and ``NeedLog``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

from .types import LogEntry

__all__ = ["Outbound"]


class Outbound:
    """Per-origin send state of one link.

    Args:
        window: Most entries sent and not yet acknowledged.
        now: The caller's clock when the link opened (for the retransmit timer).
    """

    __slots__ = (
        "acked",
        "blocked",
        "fresh",
        "known",
        "last_progress",
        "log_pending",
        "outbox",
        "sent",
        "their_known",
        "window",
    )

    def __init__(self, *, window: int, now: float) -> None:
        self.window = window
        # Whether the peer's first Ack arrived: nothing is pushed before we know what it holds.
        self.their_known = False
        self.acked: dict[str, int] = {}
        self.known: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        # Origins with a NeedLog out (its answer is send_log).
        self.log_pending: set[str] = set()
        # Origins whose log was truncated past what the peer lacks: origin -> first seq the log holds.
        self.blocked: dict[str, int] = {}
        # When the peer's ack last moved (or we last rewound).
        self.last_progress = now
        # Entries to send, batched into Deltas messages at the next flush.
        self.outbox: list[LogEntry] = []
        # Other origins' entries committed here lately: origin -> (seq, when), oldest first (see Relays).
        self.fresh: dict[str, collections.deque[tuple[int, float]]] = {}

    def floor(self, origin: str) -> int:
        """The highest seq of ``origin`` the peer is known to hold or was sent."""
        return max(self.sent.get(origin, 0), self.known.get(origin, 0))

    def in_flight(self) -> int:
        return sum(max(0, s - self.acked.get(o, 0)) for o, s in self.sent.items())

    def room(self) -> int:
        return self.window - self.in_flight()

    def saw(self, origin: str, seq: int) -> None:
        """The peer sent us ``(origin, seq)``: it holds it, so we need not send it."""
        self.known[origin] = max(self.known.get(origin, 0), seq)

    def can_push(self, origin: str, seq: int) -> bool:
        """Whether ``(origin, seq)`` may go out live now (the next in order, and the window has room)."""
        return (
            seq == self.floor(origin) + 1
            and origin not in self.log_pending
            and origin not in self.blocked
            and self.room() > 0
        )

    def push(self, entry: LogEntry) -> None:
        self.outbox.append(entry)
        self.sent[entry.origin] = entry.seq

    def committed_elsewhere(self, origin: str, seq: int, now: float, grace: float) -> None:
        """We committed ``(origin, seq)`` of another origin at ``now``: fresh for ``grace`` (see Relays)."""
        if grace <= 0:
            return
        fresh = self.fresh.setdefault(origin, collections.deque())
        if fresh and seq <= fresh[-1][0]:
            return
        fresh.append((seq, now))
        while len(fresh) > self.window:  # bounded whatever the rate: the oldest count as old
            fresh.popleft()

    def relay_due(self, origin: str, held: int, now: float, grace: float) -> bool:
        """Whether the peer lacks an entry of ``origin`` (another origin) that we have held ``grace`` or longer."""
        fresh = self.fresh.get(origin)
        while fresh and (fresh[0][1] <= now - grace or fresh[0][0] <= self.floor(origin)):
            fresh.popleft()
        settled = fresh[0][0] - 1 if fresh else held
        if not fresh:
            self.fresh.pop(origin, None)
        return min(settled, held) > self.floor(origin)

    def log_request(self, origin: str, held: int, log_fetch: int) -> int | None:
        """How many entries of ``origin`` to ask the node's log for (marked pending), or None for no request.

        Args:
            held: What the node holds of ``origin``.
            log_fetch: Most entries one request asks for.
        """
        if held > self.floor(origin) and origin not in self.log_pending and origin not in self.blocked:
            room = self.room()
            if room > 0:
                self.log_pending.add(origin)
                return min(log_fetch, room)
        return None

    def truncated_at(self, origin: str, after: int, fresh: Sequence[LogEntry], held: int) -> int | None:
        """The first seq the log holds, if it no longer holds what the peer lacks of ``origin``; else None.

        Args:
            after: The request's start (only an answer to the current floor counts).
            fresh: The answer's entries above the floor, in seq order.
            held: What the node holds of ``origin``.
        """
        floor = self.floor(origin)
        if after == floor and held > floor and (not fresh or fresh[0].seq > floor + 1):
            return fresh[0].seq if fresh else held + 1
        return None

    def block(self, origin: str, first: int) -> bool:
        """Stop pushing ``origin`` until the peer reaches ``first - 1``; True if that is news (say so)."""
        if self.blocked.get(origin) == first:
            return False
        self.blocked[origin] = first
        return True

    def push_run(self, origin: str, fresh: Iterable[LogEntry]) -> None:
        """Queue the consecutive run of ``fresh`` that follows the floor, as far as the window allows."""
        room = self.room()
        for e in fresh:
            if room <= 0 or e.seq != self.floor(origin) + 1:
                break
            self.push(e)
            room -= 1

    def receive_ack(self, vector: Iterable[tuple[str, int]], now: float) -> bool:
        """The peer's ``Ack``: raise what it acknowledged; True if that changed ``acked``."""
        first = not self.their_known
        self.their_known = True
        changed = False
        for origin, seq in vector:
            if seq > self.acked.get(origin, 0):
                self.acked[origin] = seq
                changed = True
            self.known[origin] = max(self.known.get(origin, 0), seq)
            if origin in self.blocked and seq >= self.blocked[origin] - 1:
                del self.blocked[origin]
        if changed or first:
            self.last_progress = now
        return changed

    def rewind(self, now: float) -> None:
        """Acks stalled: forget what was sent beyond the acknowledged vector, to send it again."""
        self.sent = dict(self.acked)
        self.last_progress = now
        self.outbox.clear()

    def take_batches(self, size: int) -> list[tuple[LogEntry, ...]]:
        """The queued entries, in order, as batches of at most ``size`` (drained)."""
        outbox, self.outbox = self.outbox, []
        return [tuple(outbox[i : i + size]) for i in range(0, len(outbox), size)]
