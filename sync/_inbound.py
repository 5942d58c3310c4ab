"""The receiving half of one peer link: what the node holds, what waits, and what we owe the peer.

Theory of operation
-------------------

**Receiving.** Per origin we apply ``seq n`` only after ``n - 1``: an entry
at or below what we hold is a duplicate (re-acked, so a lost ack heals), the
next one is handed to the node (``ApplyDeltas``), a later one waits in a
bounded buffer (overflow fails the connection: a correct peer never opens a
gap that large). *Held* is the larger of what the node reported durable
(:attr:`Inbound.vector`, raised by ``local_update``) and what we handed it to
apply (``delivered``), so a delta in the middle of its commit is neither
applied twice nor waited for.

**Acks we owe.** Once every entry handed to the node from this peer is
durable, the protocol sends ``Ack(our vector)``: at once, or, when one went
out less than ``ack_delay`` ago, with the next tick, one for every commit
since (and also every ``ack_interval``). A peer may also ask to be told when we hold one write
(``WriteAck``, for its quorum writes): the request waits here until our
vector covers it.

**Truncated logs.** When the peer's log no longer holds what we lack, it
says ``LogTruncated(origin, first)``: the gap below ``first`` is noted here
and repaired by an anti-entropy session, after which the protocol raises our
vector over it (``SkipLog``).

The object holds state and answers questions; it emits nothing. The
protocol (:class:`sync.protocol.PeerProtocol`) turns its answers into
events and messages, in the order the protocol has always sent them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .exceptions import LimitExceeded
from .types import LogEntry

__all__ = ["Inbound"]


class Inbound:
    """Per-origin receive state of one link.

    Args:
        our_vector: The node's contiguous version vector when the link opened.
        max_buffered: Most out-of-order entries held; more raises :class:`LimitExceeded`.
        max_write_waits: Most pending ``WriteAck`` requests; more raises :class:`LimitExceeded`.
    """

    __slots__ = (
        "awaiting",
        "buffer",
        "buffered",
        "delivered",
        "gaps",
        "max_buffered",
        "max_write_waits",
        "vector",
        "write_waits",
    )

    def __init__(self, our_vector: Mapping[str, int], *, max_buffered: int, max_write_waits: int) -> None:
        self.max_buffered = max_buffered
        self.max_write_waits = max_write_waits
        # What the node durably holds (contiguous, per origin), as local_update and raise_vector report it.
        self.vector = {o: s for o, s in our_vector.items() if s > 0}
        # The highest seq per origin handed to the node to apply, durable or not yet.
        self.delivered: dict[str, int] = {}
        # Entries that came before their predecessor, per origin by seq.
        self.buffer: dict[str, dict[int, LogEntry]] = {}
        self.buffered = 0
        # Per origin, the highest seq handed over and not yet durable: an ack waits for it.
        self.awaiting: dict[str, int] = {}
        # The peer's WriteAck requests we answer once we hold the write: request id -> (doc, origin, seq).
        self.write_waits: dict[int, tuple[str, str, int]] = {}
        # Per origin, the seq up to which the peer's truncated log left us a gap (anti-entropy repairs it).
        self.gaps: dict[str, int] = {}

    def held(self, origin: str) -> int:
        """The highest seq of ``origin`` we hold or handed to the node."""
        return max(self.vector.get(origin, 0), self.delivered.get(origin, 0))

    def receive(self, entry: LogEntry) -> list[LogEntry] | None:
        """Take one entry from the peer: None if we hold it already, else what is ready to apply now, in order.

        The next entry comes back together with any buffered ones it unblocks;
        a later one is buffered (an empty list).

        Raises:
            LimitExceeded: The buffer is full.
        """
        origin, seq = entry.origin, entry.seq
        held = self.held(origin)
        if seq <= held:
            return None
        if seq == held + 1:
            self.delivered[origin] = seq
            return [entry, *self.take_buffered(origin)]
        pending = self.buffer.setdefault(origin, {})
        if seq not in pending:
            if self.buffered >= self.max_buffered:
                raise LimitExceeded(f"more than {self.max_buffered} out-of-order deltas")
            pending[seq] = entry
            self.buffered += 1
        return []

    def take_buffered(self, origin: str) -> list[LogEntry]:
        """The buffered entries of ``origin`` that follow what we hold, now handed over (dropping stale ones)."""
        pending = self.buffer.get(origin)
        out: list[LogEntry] = []
        if not pending:
            return out
        for seq in sorted(pending):
            if seq <= self.held(origin):
                del pending[seq]
                self.buffered -= 1
            elif seq == self.held(origin) + 1:
                out.append(pending.pop(seq))
                self.delivered[origin] = seq
                self.buffered -= 1
            else:
                break
        if not pending:
            del self.buffer[origin]
        return out

    def await_durable(self, entries: Iterable[LogEntry]) -> None:
        """``entries`` were handed to the node: the next ack waits until they are durable."""
        awaiting = self.awaiting
        for e in entries:
            awaiting[e.origin] = max(awaiting.get(e.origin, 0), e.seq)

    def committed(self, origin: str, seq: int) -> bool:
        """The node durably holds ``(origin, seq)``; True if that raised our contiguous vector."""
        if self.vector.get(origin, 0) + 1 == seq:
            self.vector[origin] = seq
            return True
        return False

    def raise_to(self, origin: str, seq: int) -> bool:
        """The node holds ``origin`` up to ``seq`` at least; True if that raised our vector."""
        if seq > self.vector.get(origin, 0):
            self.vector[origin] = seq
            return True
        return False

    def settle(self, origin: str) -> bool:
        """Our vector of ``origin`` rose: True if that made everything handed over durable (time to ack)."""
        waiting = self.awaiting.get(origin)
        if waiting is not None and self.vector.get(origin, 0) >= waiting:
            del self.awaiting[origin]
            return not self.awaiting
        return False

    def wait_for_write(self, request_id: int, doc_id: str, origin: str, seq: int) -> bool:
        """The peer asks to hear once we hold ``(origin, seq)``: True if we do already, else it waits.

        Raises:
            LimitExceeded: Too many requests wait already.
        """
        if self.vector.get(origin, 0) >= seq:
            return True
        if len(self.write_waits) >= self.max_write_waits:
            raise LimitExceeded("too many pending write acknowledgements")
        self.write_waits[request_id] = (doc_id, origin, seq)
        return False

    def writes_reached(self, origin: str) -> list[tuple[int, str, str, int]]:
        """The waiting write requests of ``origin`` our vector now covers (forgotten here), in request order."""
        seq = self.vector.get(origin, 0)
        reached = []
        for rid, (doc_id, o, s) in list(self.write_waits.items()):
            if o == origin and s <= seq:
                del self.write_waits[rid]
                reached.append((rid, doc_id, o, s))
        return reached

    def note_gap(self, origin: str, upto: int) -> bool:
        """The peer's log lacks ``origin`` up to ``upto``: True if we lack it too (anti-entropy must repair it)."""
        if self.held(origin) >= upto:
            return False
        self.gaps[origin] = max(self.gaps.get(origin, 0), upto)
        return True

    def skip_gaps(self, repaired: Mapping[str, int]) -> list[tuple[str, int]]:
        """A session repaired the gaps ``repaired`` (as they were when it started): raise our vector over them.

        Returns:
            ``(origin, upto)`` for each origin whose vector rose, in origin order (the ``SkipLog`` events).
        """
        skipped = []
        for origin, upto in sorted(repaired.items()):
            if upto > self.vector.get(origin, 0):
                skipped.append((origin, upto))
                self.vector[origin] = upto
            if self.gaps.get(origin, 0) <= upto:
                self.gaps.pop(origin, None)
        return skipped
