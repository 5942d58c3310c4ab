"""A seeded, deterministic network simulator: replicas, links and faults in virtual time.

Theory of operation
-------------------

Each replica is a :class:`~sync.store.ReplicaStore` (its durable state: a
:class:`~sync.memstore.MemStore` by default, or a ``Node`` on LMDB through
another :class:`Backend`) plus one :class:`~sync.protocol.PeerProtocol` per
live connection (volatile). Events go through :func:`sync.dispatch.dispatch`,
the table the production replicator uses too: the simulator supplies only
what an adapter supplies (links, virtual time, the hooks of
:class:`sync.dispatch.Context`).

The simulator's steps are coroutines, awaited one after another: a handler
runs to completion before the next delivery or tick, whatever it awaits.
Over memory nothing ever suspends, so the public methods run their step with
:func:`sync.store.run_sync` (no event loop); over LMDB, pass the loop's
``run_until_complete`` as ``runner``. Virtual time is the simulator's own in
both cases, independent of the loop's clock.

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
with an old copy, as an operator restoring a backup would. ``inject`` hands
a replica peer data from outside the cluster (a buggy or hostile peer: bytes
that do not decode, placeholders, ids the API cannot address), as a link's
``ApplyDeltas`` would: the store quarantines what it cannot join
(:mod:`sync.quarantine`), and the schedule checks that placeholders neither
stop relays nor anti-entropy.

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
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from crdtstore.merkle import MerkleShape

from . import events as ev
from .config import SyncConfig
from .dispatch import dispatch
from .exceptions import CloseCode
from .memstore import MemStore
from .protocol import PeerProtocol
from .store import ReplicaStore, run_sync
from .truncation import truncation_vector
from .types import LogEntry

__all__ = ["Backend", "LinkFaults", "MemBackend", "SimReplica", "Simulator", "all_states", "default_config"]

T = TypeVar("T")


class Backend(Protocol):
    """How the simulator makes, writes to and restarts the stores of its replicas."""

    async def open(self, name: str, region: str, nonce: str, shape: MerkleShape) -> ReplicaStore:
        """A new, empty replica's store; ``name`` is its stable replica id or part of it."""
        ...

    async def write(self, store: ReplicaStore, doc_id: str, ops: list[dict[str, Any]]) -> LogEntry:
        """A local write, durable when it returns; the logged entry (a rejected batch raises OpError)."""
        ...

    async def restart(self, store: ReplicaStore, nonce: str) -> ReplicaStore:
        """The store of the same directory after a restart (new epoch and nonce, same data)."""
        ...


class MemBackend:
    """Replicas in memory (:class:`~sync.memstore.MemStore`): nothing suspends."""

    async def open(self, name: str, region: str, nonce: str, shape: MerkleShape) -> MemStore:
        return MemStore(name, region=region, nonce=nonce, shape=shape)

    async def write(self, store: ReplicaStore, doc_id: str, ops: list[dict[str, Any]]) -> LogEntry:
        assert isinstance(store, MemStore)
        return store.apply(doc_id, ops)

    async def restart(self, store: ReplicaStore, nonce: str) -> ReplicaStore:
        assert isinstance(store, MemStore)
        store.restart(nonce)
        return store


async def all_states(store: ReplicaStore, shape: MerkleShape) -> dict[str, bytes | None]:
    """Every document's encoded state (deleted ones included), found through the Merkle buckets."""
    buckets = await store.bucket_items_many(range(shape.leaves))
    doc_ids = sorted(d for items in buckets for d, _ in items)
    return dict(zip(doc_ids, await store.read_states(doc_ids), strict=True))


@dataclass(slots=True)
class LinkFaults:
    """Per-link behaviour (times in virtual seconds, probabilities in [0, 1])."""

    delay: float = 0.05
    reorder: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0


@dataclass(slots=True)
class SimReplica:
    """A replica in the simulation: its store, its live connections by peer name, acks kept in memory."""

    name: str
    store: ReplicaStore
    up: bool = True
    protocols: dict[str, tuple[int, PeerProtocol]] = field(default_factory=dict)
    acks: dict[str, dict[str, int]] = field(default_factory=dict)  # lost on a crash, as in the replicator
    acks_stored: dict[str, dict[str, int]] = field(default_factory=dict)


def default_config(shape: MerkleShape) -> SyncConfig:
    """The simulator's protocol settings: timeouts in whole ticks of its clock (one tick is 1 s)."""
    return SyncConfig(
        shape=shape,
        handshake_timeout=5.0,
        idle_timeout=10.0,
        ack_interval=1.0,
        retransmit_timeout=3.0,
        anti_entropy_interval=5.0,
        anti_entropy_timeout=10.0,
    )


class Simulator:
    """N replicas, links between them, and a schedule of faults (see the module docstring).

    Args:
        names: Replica names (stable replica ids), with their regions.
        links: Pairs of names that connect (default: every pair).
        seed: Seeds every random choice.
        config: The protocol configuration for every connection.
        secret: The cluster secret (replicas in ``wrong_secret`` use another one).
        truncate: Whether replicas truncate their logs to what every peer acknowledged.
        backend: Makes the replicas' stores (default: in memory).
        runner: Runs one step to completion (default: :func:`sync.store.run_sync`;
            a loop's ``run_until_complete`` for stores that suspend).
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
        backend: Backend | None = None,
        runner: Callable[[Coroutine[Any, Any, Any]], Any] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.shape = shape if shape is not None else MerkleShape(fanout=4, depth=3)
        self.config = config if config is not None else default_config(self.shape)
        self.backend: Backend = backend if backend is not None else MemBackend()
        self._runner = runner if runner is not None else run_sync
        self.secret = secret
        self.secrets: dict[str, bytes] = {}
        self.truncate = truncate
        self.now = 0.0
        self.replicas: dict[str, SimReplica] = {}
        for n, r in names.items():
            self.replicas[n] = SimReplica(n, self.drive(self.backend.open(n, r, self._nonce_str(), self.shape)))
        pairs = links if links is not None else [(a, b) for a in names for b in names if a < b]
        self.links: dict[frozenset[str], LinkFaults] = {frozenset(p): LinkFaults() for p in pairs}
        self.cut_links: set[frozenset[str]] = set()
        self.trace: list[str] = []
        self.events: list[tuple[str, str, ev.Event]] = []
        self.acknowledged: list[tuple[str, LogEntry]] = []
        self.stats: Counter[str] = Counter()
        self._queue: list[tuple[float, int, int, str, str, bytes]] = []
        self._seq = 0
        self._conn_ids = 0
        self._next_tick = 0.0

    def drive(self, step: Awaitable[T]) -> T:
        return self._runner(step)  # type: ignore[arg-type, no-any-return]

    # Public methods for the schedule.

    def write(self, name: str, doc_id: str, ops: list[dict[str, Any]]) -> LogEntry | None:
        """A client write at ``name`` (None if the replica is down); acknowledged once it returns."""
        return self.drive(self.write_async(name, doc_id, ops))

    async def write_async(self, name: str, doc_id: str, ops: list[dict[str, Any]]) -> LogEntry | None:
        rep = self.replicas[name]
        if not rep.up:
            return None
        entry = await self.backend.write(rep.store, doc_id, ops)
        self.acknowledged.append((name, entry))
        self.trace.append(f"{self.now:.3f} write {name} {entry.origin}:{entry.seq} {doc_id}")
        await self._notify(rep, entry)
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
        """Lose every connection and in-memory state of ``name``; what its store committed stays."""
        rep = self.replicas[name]
        if not rep.up:
            return
        self.trace.append(f"{self.now:.3f} crash {name}")
        for peer in list(rep.protocols):
            self._close(name, peer)
        rep.up = False
        rep.acks.clear()
        rep.acks_stored.clear()

    def restart(self, name: str) -> None:
        rep = self.replicas[name]
        if rep.up:
            return
        rep.store = self.drive(self.backend.restart(rep.store, self._nonce_str()))
        rep.up = True
        self.trace.append(f"{self.now:.3f} restart {name} as {rep.store.info.origin}")

    def restore(self, name: str, backup: MemStore) -> None:
        """Replace ``name``'s store with an old copy (the replica restarts; in-memory stores only)."""
        self.crash(name)
        rep = self.replicas[name]
        rep.store = backup.copy()
        self.restart(name)

    def inject(self, name: str, entries: Sequence[LogEntry]) -> list[bool] | None:
        """Peer data from outside the cluster, applied at ``name`` and announced to its links (None if down)."""
        return self.drive(self.inject_async(name, entries))

    async def inject_async(self, name: str, entries: Sequence[LogEntry]) -> list[bool] | None:
        rep = self.replicas[name]
        if not rep.up:
            return None
        results = await rep.store.apply_remote_many(entries)
        got = [(e.origin, e.seq, r) for e, r in zip(entries, results, strict=True)]
        self.trace.append(f"{self.now:.3f} inject {name} {got}")
        # What sync.dispatch.announce does for an applied batch: durable, so every link hears of it.
        for _, proto in list(rep.protocols.values()):
            for e in entries:
                proto.local_update(e.origin, e.seq, e.doc_id, e.delta)
        await self._pump(rep)
        return results

    def add_replica(self, name: str, region: str, links: Iterable[str]) -> None:
        """A new, empty replica joining the cluster, linked to ``links``."""
        store = self.drive(self.backend.open(name, region, self._nonce_str(), self.shape))
        self.replicas[name] = SimReplica(name, store)
        for other in links:
            self.links[frozenset((name, other))] = LinkFaults()

    # Public methods for running.

    def run(self, duration: float) -> None:
        """Advance virtual time by ``duration``: deliver messages and tick, in time order."""
        self.drive(self.run_async(duration))

    async def run_async(self, duration: float) -> None:
        end = self.now + duration
        while True:
            next_msg = self._queue[0][0] if self._queue else None
            if next_msg is not None and next_msg < self._next_tick and next_msg <= end:
                await self._deliver(*heapq.heappop(self._queue))
            elif self._next_tick <= end:
                self.now = self._next_tick
                self._next_tick += 1.0
                await self._tick()
            else:
                break
        self.now = end

    def run_until_converged(self, max_ticks: int) -> int | None:
        """Run tick by tick until every up replica holds the same documents; the ticks it took."""
        return self.drive(self.run_until_converged_async(max_ticks))

    async def run_until_converged_async(self, max_ticks: int) -> int | None:
        for n in range(max_ticks + 1):
            if await self.converged_async():
                return n
            await self.run_async(1.0)
        return None

    def converged(self) -> bool:
        """Every replica up, identical document bytes and Merkle roots."""
        return self.drive(self.converged_async())

    async def converged_async(self) -> bool:
        reps = list(self.replicas.values())
        if not all(r.up for r in reps):
            return False
        first = await self.snapshot(reps[0].name)
        for r in reps[1:]:
            if await self.snapshot(r.name) != first:
                return False
        return True

    async def snapshot(self, name: str) -> tuple[bytes, dict[str, bytes | None]]:
        """A replica's Merkle root and every document's encoded state."""
        store = self.replicas[name].store
        return await store.merkle_root(), await all_states(store, self.shape)

    # Private methods: the network.

    def _nonce_str(self) -> str:
        return f"{self.rng.getrandbits(32):08x}"

    async def _tick(self) -> None:
        self.trace.append(f"{self.now:.3f} tick")
        for name in sorted(self.replicas):
            rep = self.replicas[name]
            if not rep.up:
                continue
            for peer in sorted(rep.protocols):
                conn = rep.protocols.get(peer)
                if conn is None:
                    continue  # closed by an event handled on an earlier peer's tick
                conn[1].receive_tick(self.now)
                await self._pump(rep)
        await self._connect_all()
        if self.truncate:
            await self._truncate_all()

    async def _connect_all(self) -> None:
        for key in sorted(self.links, key=sorted):
            a, b = sorted(key)
            ra, rb = self.replicas[a], self.replicas[b]
            if key in self.cut_links or not ra.up or not rb.up:
                continue
            if b in ra.protocols or a in rb.protocols:
                continue
            self._conn_ids += 1
            cid = self._conn_ids
            ra.protocols[b] = (cid, await self._protocol(ra))
            rb.protocols[a] = (cid, await self._protocol(rb))
            self.trace.append(f"{self.now:.3f} connect {a}-{b} #{cid}")
            await self._pump(ra)
            await self._pump(rb)

    async def _protocol(self, rep: SimReplica) -> PeerProtocol:
        store = rep.store
        return PeerProtocol(
            our=store.info,
            secret=self.secrets.get(rep.name, self.secret),
            nonce=self.rng.getrandbits(128).to_bytes(16, "big"),
            now=self.now,
            our_vector=await store.version_vector(),
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

    async def _deliver(self, at: float, _seq: int, cid: int, src: str, dst: str, data: bytes) -> None:
        self.now = at
        rep = self.replicas[dst]
        conn = rep.protocols.get(src)
        if not rep.up or conn is None or conn[0] != cid:
            return  # the connection it was sent on is gone
        self.trace.append(f"{at:.3f} deliver {src}->{dst} #{cid} {data[0]:02x} {len(data)}")
        conn[1].receive_message(data)
        await self._pump(rep)

    # Private methods: the adapter (links and hooks; the event handlers are sync.dispatch's).

    async def _pump(self, rep: SimReplica) -> None:
        """Drain every protocol of ``rep`` until no event is left; send what they queued."""
        busy = True
        while busy:
            busy = False
            for peer in sorted(rep.protocols):
                conn = rep.protocols.get(peer)
                if conn is None:
                    continue
                cid, proto = conn
                ctx = _SimContext(self, rep, peer, cid, proto)
                for event in proto.events_received():
                    busy = True
                    if ctx.rejected and not isinstance(event, ev.Failed):
                        continue  # queued behind bad peer data: dropped, as the replicator drops them
                    self.events.append((rep.name, peer, event))
                    self.trace.append(f"{self.now:.3f} event {rep.name}->{peer} {type(event).__name__}")
                    await dispatch(ctx, event)
                for data in proto.messages_to_send():
                    busy = True
                    self._send(rep.name, peer, cid, data)

    async def _notify(self, rep: SimReplica, entry: LogEntry) -> None:
        for _, proto in list(rep.protocols.values()):
            proto.local_update(entry.origin, entry.seq, entry.doc_id, entry.delta)
        await self._pump(rep)

    async def _truncate_all(self) -> None:
        """What the replicator's ``truncate_once`` does: store the acks kept in memory, truncate to them."""
        for name in sorted(self.replicas):
            rep = self.replicas[name]
            if not rep.up:
                continue
            peers = sorted(
                self.replicas[p].store.info.replica_id
                for p in self.replicas
                if p != name and frozenset((p, name)) in self.links
            )
            store = rep.store
            for peer in peers:
                latest = rep.acks.get(peer)
                if latest is not None and rep.acks_stored.get(peer) != latest:
                    await store.set_acked(peer, latest)
                    rep.acks_stored[peer] = latest
            acked = {peer: await store.acked(peer) for peer in peers}
            upto = truncation_vector(await store.version_vector(), acked, peers)
            for origin, seq in sorted(upto.items()):
                if await store.truncate_log({origin: seq}):
                    self.trace.append(f"{self.now:.3f} truncate {name} {origin} <= {seq}")


class _SimContext:
    """The :class:`sync.dispatch.Context` of one simulated link."""

    __slots__ = ("cid", "peer", "proto", "rejected", "rep", "sim")

    def __init__(self, sim: Simulator, rep: SimReplica, peer: str, cid: int, proto: PeerProtocol) -> None:
        self.sim = sim
        self.rep = rep
        self.peer = peer
        self.cid = cid
        self.proto = proto
        self.rejected = False

    @property
    def store(self) -> ReplicaStore:
        return self.rep.store

    @property
    def stats(self) -> MutableMapping[str, int]:
        return self.sim.stats

    def _live(self) -> bool:
        conn = self.rep.protocols.get(self.peer)
        return self.rep.up and conn is not None and conn[0] == self.cid

    def input(self, call: Callable[[PeerProtocol], object]) -> None:
        if self._live():
            call(self.proto)

    def input_all(self, call: Callable[[PeerProtocol], object]) -> None:
        for _, proto in list(self.rep.protocols.values()):
            call(proto)

    def authenticated(self, peer: ev.PeerInfo) -> None:
        pass  # one connection per pair of replicas: no second link to stop pushing on

    def peer_acked(self, peer_id: str, vector: dict[str, int]) -> None:
        self.rep.acks[peer_id] = vector

    def read_responded(self, event: ev.ReadResponded) -> None:
        pass  # the simulator asks for no quorum reads

    def write_acked(self, event: ev.WriteAcked) -> None:
        pass

    def presence_received(self, event: ev.PresenceReceived) -> None:
        pass  # no live channels in the simulator

    def reject(self, what: str, exc: Exception) -> None:
        self.sim.stats["protocol_errors"] += 1
        self.sim.trace.append(f"{self.sim.now:.3f} reject {self.rep.name}->{self.peer} {what}: {exc!r}"[:200])
        self.rejected = True
        self.input(lambda p: p.fail(CloseCode.PROTOCOL_ERROR, f"undecodable {what}"[:120]))

    async def close(self, code: int, reason: str) -> None:
        self.sim.trace.append(f"{self.sim.now:.3f} failed {self.rep.name}->{self.peer} {code} {reason}")
        self.sim._close(self.rep.name, self.peer)
