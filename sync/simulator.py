"""A seeded, deterministic network simulator: replicas, links and faults in virtual time.

Theory of operation
-------------------

Each replica is a :class:`~sync.memstore.MemStore` (its durable state) plus
one :class:`~sync.protocol.PeerProtocol` per live connection (volatile).
:meth:`Simulator._handle` is the adapter: the same event handling the
websocket transport does against the node, with the ``await`` taken out.

Links connect pairs of replicas (any topology: a line A-B-C tests relaying).
A link delivers each message after ``delay`` plus a jitter in
``[0, reorder]`` (so later messages may overtake earlier ones), drops it
with probability ``drop`` and delivers it twice with probability
``duplicate``. Every message after the handshake is sealed with a
per-direction counter (``sync.channel``), so a dropped, duplicated or
overtaken message fails its connection (``FRAME_AUTH_FAILED``), as an
attacker's would on a real link; the link reconnects on the next tick, so
these faults now test reconnection and catch-up. ``cut`` partitions a link
(its connection dies, nothing crosses until ``heal``). ``crash`` loses every connection and message of a
replica but keeps its store (everything committed is durable);
``restart`` brings it back under a new epoch. ``restore`` replaces a store
with an old copy, as an operator restoring a backup would.

Time is virtual: :meth:`Simulator.run` processes deliveries in time order
(ties broken by a sequence number) and ticks every protocol once per unit
of time; connections are (re)opened on ticks for every healthy link. All
randomness (link faults, nonces) comes from one ``random.Random(seed)``, and
the traces record every step, so the same seed and the same schedule
replay exactly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crdtstore.merkle import MerkleShape

from . import events as ev
from .memstore import MemStore
from .messages import Entry
from .protocol import PeerProtocol, SyncConfig, truncation_vector

__all__ = ["LinkFaults", "SimReplica", "Simulator", "dispatch"]


@dataclass(slots=True)
class LinkFaults:
    """Per-link behaviour (times in virtual seconds, probabilities in [0, 1])."""

    delay: float = 0.05
    reorder: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0


@dataclass(slots=True)
class SimReplica:
    """A replica in the simulation: its store and its live connections by peer name."""

    name: str
    store: MemStore
    up: bool = True
    protocols: dict[str, tuple[int, PeerProtocol]] = field(default_factory=dict)


class Simulator:
    """N replicas, links between them, and a schedule of faults (see the module docstring).

    Args:
        names: Replica names (stable replica ids), with their regions.
        links: Pairs of names that connect (default: every pair).
        seed: Seeds every random choice.
        config: The protocol configuration for every connection.
        secret: The cluster secret (replicas in ``wrong_secret`` use another one).
        truncate: Whether replicas truncate their logs to what every peer acknowledged.
    """

    def __init__(
        self,
        names: dict[str, str],
        *,
        links: Iterable[tuple[str, str]] | None = None,
        seed: int = 0,
        config: SyncConfig | None = None,
        secret: bytes = b"cluster-secret",
        truncate: bool = False,
        shape: MerkleShape | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.shape = shape if shape is not None else MerkleShape(fanout=4, depth=3)
        self.config = (
            config
            if config is not None
            else SyncConfig(
                shape=self.shape,
                handshake_timeout=5.0,
                idle_timeout=10.0,
                ack_interval=1.0,
                retransmit_timeout=3.0,
                anti_entropy_interval=5.0,
                anti_entropy_timeout=10.0,
            )
        )
        self.secret = secret
        self.secrets: dict[str, bytes] = {}
        self.truncate = truncate
        self.now = 0.0
        self.replicas = {
            n: SimReplica(n, MemStore(n, region=r, nonce=self._nonce_str(), shape=self.shape)) for n, r in names.items()
        }
        pairs = links if links is not None else [(a, b) for a in names for b in names if a < b]
        self.links: dict[frozenset[str], LinkFaults] = {frozenset(p): LinkFaults() for p in pairs}
        self.cut_links: set[frozenset[str]] = set()
        self.trace: list[str] = []
        self.events: list[tuple[str, str, ev.Event]] = []
        self.acknowledged: list[tuple[str, Entry]] = []
        self._queue: list[tuple[float, int, int, str, str, bytes]] = []
        self._seq = 0
        self._conn_ids = 0
        self._next_tick = 0.0

    # Public methods for the schedule.

    def write(self, name: str, doc_id: str, ops: list[dict[str, Any]]) -> Entry | None:
        """A client write at ``name`` (None if the replica is down); acknowledged once it returns."""
        rep = self.replicas[name]
        if not rep.up:
            return None
        entry = rep.store.apply(doc_id, ops)
        self.acknowledged.append((name, entry))
        self.trace.append(f"{self.now:.3f} write {name} {entry.origin}:{entry.seq} {doc_id}")
        self._notify(rep, entry)
        return entry

    def set_faults(self, a: str, b: str, faults: LinkFaults) -> None:
        self.links[frozenset((a, b))] = faults

    def cut(self, a: str, b: str) -> None:
        key = frozenset((a, b))
        self.cut_links.add(key)
        self.trace.append(f"{self.now:.3f} cut {a}-{b}")
        self._close(a, b)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Heal one link, or every link and every fault when called without arguments."""
        if a is None or b is None:
            self.cut_links.clear()
            for key in self.links:
                self.links[key] = LinkFaults()
        else:
            self.cut_links.discard(frozenset((a, b)))
        self.trace.append(f"{self.now:.3f} heal {a}-{b}")

    def crash(self, name: str) -> None:
        rep = self.replicas[name]
        if not rep.up:
            return
        self.trace.append(f"{self.now:.3f} crash {name}")
        for peer in list(rep.protocols):
            self._close(name, peer)
        rep.up = False

    def restart(self, name: str) -> None:
        rep = self.replicas[name]
        if rep.up:
            return
        rep.store.restart(self._nonce_str())
        rep.up = True
        self.trace.append(f"{self.now:.3f} restart {name} as {rep.store.origin}")

    def restore(self, name: str, backup: MemStore) -> None:
        """Replace ``name``'s store with an old copy (the replica restarts)."""
        self.crash(name)
        rep = self.replicas[name]
        rep.store = backup.copy()
        self.restart(name)

    def add_replica(self, name: str, region: str, links: Iterable[str]) -> None:
        """A new, empty replica joining the cluster, linked to ``links``."""
        self.replicas[name] = SimReplica(name, MemStore(name, region=region, nonce=self._nonce_str(), shape=self.shape))
        for other in links:
            self.links[frozenset((name, other))] = LinkFaults()

    # Public methods for running.

    def run(self, duration: float) -> None:
        """Advance virtual time by ``duration``: deliver messages and tick, in time order."""
        end = self.now + duration
        while True:
            next_msg = self._queue[0][0] if self._queue else None
            if next_msg is not None and next_msg < self._next_tick and next_msg <= end:
                self._deliver(*heapq.heappop(self._queue))
            elif self._next_tick <= end:
                self.now = self._next_tick
                self._next_tick += 1.0
                self._tick()
            else:
                break
        self.now = end

    def run_until_converged(self, max_ticks: int) -> int | None:
        """Run tick by tick until every up replica holds the same documents; the ticks it took."""
        for n in range(max_ticks + 1):
            if self.converged():
                return n
            self.run(1.0)
        return None

    def converged(self) -> bool:
        """Every replica up, identical document bytes and Merkle roots."""
        reps = list(self.replicas.values())
        if not all(r.up for r in reps):
            return False
        first = reps[0].store
        return all(r.store.encoded() == first.encoded() and r.store.merkle_root() == first.merkle_root() for r in reps)

    # Private methods: the network.

    def _nonce_str(self) -> str:
        return f"{self.rng.getrandbits(32):08x}"

    def _tick(self) -> None:
        self.trace.append(f"{self.now:.3f} tick")
        for name in sorted(self.replicas):
            rep = self.replicas[name]
            if not rep.up:
                continue
            for peer in sorted(rep.protocols):
                _, proto = rep.protocols[peer]
                proto.receive_tick(self.now)
                self._pump(rep)
        self._connect_all()
        if self.truncate:
            self._truncate_all()

    def _connect_all(self) -> None:
        for key in sorted(self.links, key=sorted):
            a, b = sorted(key)
            ra, rb = self.replicas[a], self.replicas[b]
            if key in self.cut_links or not ra.up or not rb.up:
                continue
            if b in ra.protocols or a in rb.protocols:
                continue
            self._conn_ids += 1
            cid = self._conn_ids
            ra.protocols[b] = (cid, self._protocol(ra))
            rb.protocols[a] = (cid, self._protocol(rb))
            self.trace.append(f"{self.now:.3f} connect {a}-{b} #{cid}")
            self._pump(ra)
            self._pump(rb)

    def _protocol(self, rep: SimReplica) -> PeerProtocol:
        store = rep.store
        return PeerProtocol(
            our=ev.PeerInfo(store.replica_id, store.origin, store.region, store.epoch),
            secret=self.secrets.get(rep.name, self.secret),
            nonce=self.rng.getrandbits(128).to_bytes(16, "big"),
            now=self.now,
            our_vector=store.version_vector(),
            config=self.config,
        )

    def _close(self, a: str, b: str) -> None:
        """Tear down the connection between ``a`` and ``b``; in-flight messages are lost."""
        for x, y in ((a, b), (b, a)):
            conn = self.replicas[x].protocols.pop(y, None)
            if conn is not None:
                conn[1].receive_eof()
                self.trace.append(f"{self.now:.3f} close {x}->{y} #{conn[0]}")

    def _send(self, src: str, dst: str, cid: int, data: bytes) -> None:
        faults = self.links[frozenset((src, dst))]
        if self.rng.random() < faults.drop:
            self.trace.append(f"{self.now:.3f} drop {src}->{dst} #{cid} {data[0]:02x}")
            return
        copies = 2 if self.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            at = self.now + faults.delay + self.rng.random() * faults.reorder
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, cid, src, dst, data))

    def _deliver(self, at: float, _seq: int, cid: int, src: str, dst: str, data: bytes) -> None:
        self.now = at
        rep = self.replicas[dst]
        conn = rep.protocols.get(src)
        if not rep.up or conn is None or conn[0] != cid:
            return  # the connection it was sent on is gone
        self.trace.append(f"{at:.3f} deliver {src}->{dst} #{cid} {data[0]:02x} {len(data)}")
        conn[1].receive_message(data)
        self._pump(rep)

    # Private methods: the adapter (what the transport does against the node).

    def _pump(self, rep: SimReplica) -> None:
        """Drain every protocol of ``rep`` until no event is left; send what they queued."""
        busy = True
        while busy:
            busy = False
            for peer in sorted(rep.protocols):
                conn = rep.protocols.get(peer)
                if conn is None:
                    continue
                cid, proto = conn
                events = proto.events_received()
                for event in events:
                    busy = True
                    self._handle(rep, peer, proto, event)
                for data in proto.messages_to_send():
                    busy = True
                    self._send(rep.name, peer, cid, data)

    def _notify(self, rep: SimReplica, entry: Entry) -> None:
        for _, proto in list(rep.protocols.values()):
            proto.local_update(*entry)
        self._pump(rep)

    def _handle(self, rep: SimReplica, peer: str, proto: PeerProtocol, event: ev.Event) -> None:
        self.events.append((rep.name, peer, event))
        if isinstance(event, ev.Failed):
            self.trace.append(f"{self.now:.3f} failed {rep.name}->{peer} {event.close_code} {event.reason}")
            self._close(rep.name, peer)
        elif not dispatch(rep.store, proto, event, [p for _, p in rep.protocols.values()]):
            self.trace.append(f"{self.now:.3f} event {rep.name}->{peer} {type(event).__name__}")

    def _truncate_all(self) -> None:
        for name in sorted(self.replicas):
            rep = self.replicas[name]
            if not rep.up:
                continue
            peers = [p for p in self.replicas if p != name and frozenset((p, name)) in self.links]
            store = rep.store
            upto = truncation_vector(store.version_vector(), store.acked_by, peers)
            for origin, seq in sorted(upto.items()):
                if store.truncate_log(origin, seq):
                    self.trace.append(f"{self.now:.3f} truncate {name} {origin} <= {seq}")


def dispatch(store: MemStore, proto: PeerProtocol, event: ev.Event, protocols: list[PeerProtocol]) -> bool:
    """Do what one event asks of a replica's adapter (see ``sync.protocol``).

    ``protocols`` are all of the replica's links: applied deltas go on to
    every one of them (relay), and a raised vector too. The websocket
    replicator does the same against the LMDB node, with awaits in between.
    Returns False for an event that asks nothing of the store.
    """
    if isinstance(event, ev.ApplyDeltas):
        for e in event.entries:
            store.apply_remote(*e)
        for e in event.entries:
            for p in protocols:
                p.local_update(*e)
    elif isinstance(event, ev.MergeStates):
        for doc_id, state in event.states:
            store.merge_state(doc_id, state)
    elif isinstance(event, ev.NeedLog):
        proto.send_log(event.origin, event.after, store.log_range(event.origin, event.after, event.limit))
    elif isinstance(event, ev.PeerAcked):
        store.set_acked(event.peer_id, event.vector)
    elif isinstance(event, ev.SkipLog):
        store.skip_log(event.origin, event.upto)
        for p in protocols:
            p.raise_vector(store.version_vector())
    elif isinstance(event, ev.NeedMerkleRoot):
        proto.answer_merkle_root(event.request_id, store.merkle_root())
    elif isinstance(event, ev.NeedMerkleChildren):
        proto.answer_merkle_children(event.request_id, [store.merkle_children(*n) for n in event.nodes])
    elif isinstance(event, ev.NeedBucketItems):
        proto.answer_bucket_items(event.request_id, [store.bucket_items(b) for b in event.buckets])
    elif isinstance(event, ev.NeedStates):
        proto.answer_states(event.request_id, [store.read_state(d) for d in event.doc_ids])
    else:
        return False
    return True
