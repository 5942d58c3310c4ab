"""Harnesses for the sans-I/O protocol: two replicas joined by an in-memory link.

:class:`Pair` holds two :class:`~sync.memstore.MemStore` replicas and one
:class:`~sync.protocol.PeerProtocol` each, and plays the adapter: it
answers every event from the store, as the websocket transport answers
from the node. ``sync_until_quiet`` moves messages until neither side has
anything to send, and fails after ``max_rounds``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from sync import events as ev
from sync import messages as m
from sync.config import SyncConfig
from sync.dispatch import dispatch
from sync.memstore import MemStore
from sync.protocol import PeerProtocol
from sync.store import run_sync
from sync.types import LogEntry

__all__ = ["Pair", "StoreContext", "handle", "make_protocol", "sealed"]

SECRET = b"test-secret"


def make_protocol(
    store: MemStore, *, secret: bytes = SECRET, nonce: int = 1, config: SyncConfig | None = None
) -> PeerProtocol:
    return PeerProtocol(
        our=ev.PeerInfo(store.replica_id, store.origin, store.region, store.epoch),
        secret=secret,
        nonce=nonce.to_bytes(16, "big"),
        now=0.0,
        our_vector=run_sync(store.version_vector()),
        config=config if config is not None else SyncConfig(shape=store.shape, anti_entropy_interval=None),
    )


def sealed(sender: PeerProtocol, msg: m.Message | bytes) -> bytes:
    """``msg`` as ``sender`` would put it on its open link: a member that holds the keys says anything.

    It takes the next counter of ``sender``'s direction, as a message the
    protocol sent itself would (so send it next, or the peer fails the link).
    """
    channel = sender._channel
    assert channel is not None, "no session keys before the peer's Hello"
    return channel.seal(msg if isinstance(msg, bytes) else msg.encode())


class StoreContext:
    """The :class:`sync.dispatch.Context` of a hand-driven link: inputs go straight to the protocols."""

    def __init__(self, store: MemStore, proto: PeerProtocol, others: list[PeerProtocol]) -> None:
        self.store = store
        self.proto = proto
        self.others = others
        self.stats: Counter[str] = Counter()
        self.acks: dict[str, dict[str, int]] = {}
        self.rejected: list[tuple[str, Exception]] = []
        self.closed: list[tuple[int, str]] = []
        self.presence: list[ev.PresenceReceived] = []

    def input(self, call: Callable[[PeerProtocol], object]) -> None:
        call(self.proto)

    def input_all(self, call: Callable[[PeerProtocol], object]) -> None:
        for p in [self.proto, *self.others]:
            call(p)

    def authenticated(self, peer: ev.PeerInfo) -> None:
        pass

    def peer_acked(self, peer_id: str, vector: dict[str, int]) -> None:
        self.acks[peer_id] = vector

    def read_responded(self, event: ev.ReadResponded) -> None:
        pass

    def write_acked(self, event: ev.WriteAcked) -> None:
        pass

    def presence_received(self, event: ev.PresenceReceived) -> None:
        self.presence.append(event)

    def reject(self, what: str, exc: Exception) -> None:
        self.rejected.append((what, exc))

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def handle(
    store: MemStore, proto: PeerProtocol, event: ev.Event, others: list[PeerProtocol] | None = None
) -> StoreContext:
    """The adapter's job for one event: the shared dispatch table, run without an event loop."""
    ctx = StoreContext(store, proto, others or [])
    run_sync(dispatch(ctx, event))
    return ctx


class Pair:
    """Replicas ``a`` and ``b`` with one protocol each, and a perfect link between them."""

    def __init__(
        self, *, secret_b: bytes = SECRET, config: SyncConfig | None = None, nonces: tuple[int, int] = (1, 2)
    ) -> None:
        self.a = MemStore("a", region="eu", nonce="n1")
        self.b = MemStore("b", region="us", nonce="n2")
        self.config = config
        self.nonces = nonces
        self.events: dict[str, list[ev.Event]] = {"a": [], "b": []}
        self.acks: dict[str, dict[str, dict[str, int]]] = {"a": {}, "b": {}}  # kept in memory, as the replicator
        # Every message a sent b, as it crossed the link (what an eavesdropper or a relay sees).
        self.wire_a_to_b: list[bytes] = []
        self.connect(secret_b=secret_b)

    def connect(self, *, secret_b: bytes = SECRET) -> None:
        self.pa = make_protocol(self.a, nonce=self.nonces[0], config=self.config)
        self.pb = make_protocol(self.b, nonce=self.nonces[1], secret=secret_b, config=self.config)

    def write(self, side: str, doc_id: str, ops: list[dict[str, Any]]) -> LogEntry:
        store, proto = (self.a, self.pa) if side == "a" else (self.b, self.pb)
        entry = store.apply(doc_id, ops)
        proto.local_update(*entry)
        return entry

    def _drain(self, side: str) -> list[bytes]:
        store, proto = (self.a, self.pa) if side == "a" else (self.b, self.pb)
        out: list[bytes] = []
        while True:
            events = proto.events_received()
            self.events[side] += events
            for event in events:
                self.acks[side].update(handle(store, proto, event).acks)
            msgs = proto.messages_to_send()
            out += msgs
            if not events and not msgs:
                return out

    def sync_until_quiet(self, max_rounds: int = 20) -> int:
        """Deliver messages both ways until neither side sends anything; return the rounds used."""
        for rounds in range(max_rounds):
            to_b, to_a = self._drain("a"), self._drain("b")
            if not to_a and not to_b:
                return rounds
            self.wire_a_to_b += to_b
            for data in to_b:
                self.pb.receive_message(data)
            for data in to_a:
                self.pa.receive_message(data)
        raise AssertionError(f"not quiet after {max_rounds} rounds")

    def tick(self, now: float) -> None:
        self.pa.receive_tick(now)
        self.pb.receive_tick(now)
