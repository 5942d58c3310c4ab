"""The limits and intervals of a peer link's protocol (:class:`sync.protocol.PeerProtocol`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtstore.merkle import MerkleShape

from . import messages as m

__all__ = ["SyncConfig"]


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Limits and intervals of a :class:`PeerProtocol` (times in seconds of the caller's clock).

    Attributes:
        shape: The Merkle tree shape (must match the peers').
        batch_size: Most entries per ``Deltas`` message.
        window: Most entries sent and not yet acknowledged (flow control).
        log_fetch: Most entries asked per ``NeedLog``.
        max_buffered: Most out-of-order entries held per connection; more fails it.
        max_pending_requests: Most unanswered peer requests; more fails the connection.
        max_message_bytes: Larger incoming messages fail the connection.
        max_handshake_bytes: Larger incoming messages before the peer's Auth checked out fail
            the connection (``MESSAGE_TOO_BIG``): a stranger costs no more memory than this.
        handshake_timeout: Fail if not authenticated by then.
        idle_timeout: Fail if nothing was received for this long (acks double as keepalives).
        ack_interval: Send our vector at least this often.
        ack_delay: After a commit of the peer's deltas, the ack goes out at once unless one went out less
            than this long ago (by the clock of the last tick); then it waits for the next tick, which
            acks every commit since with one message. Under a steady stream of small commits this sends
            at most two acks a tick instead of one a commit; 0 acks every commit at once.
        retransmit_timeout: Resend from the acknowledged vector if acks stall this long.
        relay_grace: Relay another origin's entry to the peer only once we have held it this long and
            the peer's ack still lacks it: in a mesh the peer gets it from its origin directly, and an
            ack is always about a round trip old, so relaying at once sent most deltas twice.
        anti_entropy_interval: Start a session this often (the side with the smaller
            replica id does, on a pushing connection); None disables periodic sessions.
        anti_entropy_timeout: Abandon a session after this long.
        anti_entropy_settle: Periodic sessions defer a document a delta touched less than this
            long ago (see "Anti-entropy" in :mod:`sync._requests`); 0 defers nothing.
        anti_entropy_max_deferrals: Periodic sessions in a row that may defer one document.
        states_chunk: Most documents per state request or push.
    """

    shape: MerkleShape = field(default_factory=MerkleShape)
    batch_size: int = 256
    window: int = 4096
    log_fetch: int = 1024
    max_buffered: int = 4096
    max_pending_requests: int = 256
    max_message_bytes: int = m.MAX_BLOB_BYTES + (1 << 20)
    max_handshake_bytes: int = m.MAX_HANDSHAKE_BYTES
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    ack_interval: float = 1.0
    ack_delay: float = 0.05
    retransmit_timeout: float = 5.0
    relay_grace: float = 1.0
    anti_entropy_interval: float | None = 60.0
    anti_entropy_timeout: float = 120.0
    anti_entropy_settle: float = 5.0
    anti_entropy_max_deferrals: int = 3
    states_chunk: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= m.MAX_BATCH:
            raise ValueError(f"batch_size must be in [1, {m.MAX_BATCH}]")
        if self.window < 1 or self.log_fetch < 1 or self.max_buffered < 1 or self.max_pending_requests < 1:
            raise ValueError("window, log_fetch, max_buffered and max_pending_requests must be positive")
        if not 1 <= self.states_chunk <= m.MAX_BATCH:
            raise ValueError(f"states_chunk must be in [1, {m.MAX_BATCH}]")
        if self.relay_grace < 0:
            raise ValueError("relay_grace must be >= 0")
        if not 0 <= self.ack_delay <= self.ack_interval:
            raise ValueError("ack_delay must be in [0, ack_interval]")
        if self.anti_entropy_settle < 0 or self.anti_entropy_max_deferrals < 0:
            raise ValueError("anti_entropy_settle and anti_entropy_max_deferrals must be >= 0")
