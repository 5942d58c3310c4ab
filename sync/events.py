"""Events: what :class:`sync.protocol.PeerProtocol` asks its adapter to do.

Each event is a frozen, slotted dataclass. Events come out of
``PeerProtocol.events_received()`` in the order they must be handled;
``sync.protocol``'s docstring has the table of what the adapter does with
each one. ``Need*`` events carry a ``request_id`` that the matching
``answer_*`` call must repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtstore.merkle import NodeId

from .types import LogEntry

__all__ = [
    "AntiEntropyDone",
    "ApplyDeltas",
    "Authenticated",
    "Event",
    "Failed",
    "MergeStates",
    "NeedBucketItems",
    "NeedLog",
    "NeedMerkleChildren",
    "NeedMerkleRoot",
    "NeedStates",
    "PeerAcked",
    "PeerInfo",
    "PresenceReceived",
    "ReadResponded",
    "SkipLog",
    "WriteAcked",
]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who a replica is, as its Hello says.

    Attributes:
        replica_id: Stable across restarts (acks and quorum membership key on it).
        origin: The id of this incarnation, under which it logs its own deltas.
        region: Its region.
        epoch: Bumped on each start.
    """

    replica_id: str
    origin: str
    region: str
    epoch: int


class Event:
    """Base class of the events (don't subclass outside this module)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """The peer proved it holds the cluster secret; deltas flow from now on."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class ApplyDeltas(Event):
    """Apply these deltas durably, in order; then call ``local_update`` for each on every protocol."""

    entries: tuple[LogEntry, ...]


@dataclass(frozen=True, slots=True)
class MergeStates(Event):
    """Merge these full document states (anti-entropy repair)."""

    states: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class NeedLog(Event):
    """Answer with ``send_log(origin, after, log_range(origin, after, limit))``."""

    origin: str
    after: int
    limit: int


@dataclass(frozen=True, slots=True)
class PeerAcked(Event):
    """The peer durably holds ``vector`` (truncation may advance; persist with ``set_acked`` before relying on it)."""

    peer_id: str
    vector: dict[str, int]


@dataclass(frozen=True, slots=True)
class SkipLog(Event):
    """Our documents now include every delta of ``origin`` up to ``upto``: raise the contiguous mark.

    Then call ``raise_vector({origin: upto})`` on every protocol of the node.
    """

    origin: str
    upto: int


@dataclass(frozen=True, slots=True)
class NeedMerkleRoot(Event):
    request_id: int


@dataclass(frozen=True, slots=True)
class NeedMerkleChildren(Event):
    request_id: int
    nodes: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class NeedBucketItems(Event):
    request_id: int
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NeedStates(Event):
    """Read the encoded states of ``doc_ids`` (None for an absent document)."""

    request_id: int
    doc_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadResponded(Event):
    """The peer's answer to ``request_read``."""

    peer_id: str
    request_id: int
    doc_id: str
    state: bytes | None


@dataclass(frozen=True, slots=True)
class WriteAcked(Event):
    """The peer durably holds the write asked about with ``request_write_ack``."""

    peer_id: str
    request_id: int
    doc_id: str


@dataclass(frozen=True, slots=True)
class AntiEntropyDone(Event):
    """A session we initiated finished (round trips, bytes, documents repaired)."""

    round_trips: int
    bytes_sent: int
    bytes_received: int
    docs_pulled: int
    docs_pushed: int
    docs_deferred: int = 0  # differing, but deltas touched them lately: left to the deltas (periodic sessions)


@dataclass(frozen=True, slots=True)
class Failed(Event):
    """The connection failed: close it with ``close_code``. Emitted once."""

    close_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class PresenceReceived(Event):
    """A peer relayed an editor's presence (``state`` empty: gone); hand it to the live channel, store nothing."""

    peer_id: str
    doc_id: str
    client: str
    state: bytes
