"""The replicator: drives one :class:`sync.protocol.PeerProtocol` per peer link of one node.

Theory of operation
-------------------

The protocol objects are sans-I/O; this adapter owns everything else: the
websocket links (:mod:`sync.io.transport`), the timer, and the thread hops into
the node, a :class:`sync.store.ReplicaStore`. What each event does is not
here: :func:`sync.dispatch.dispatch` runs the one table of handlers that the
simulator runs too; this module supplies the link's
:class:`sync.dispatch.Context` (:class:`_LinkContext`: inputs with a flush,
acks kept in memory, quorum waiters, the pushing link, closing).

**Links.** The node dials every configured peer URL (a
:class:`~sync.io.transport.Dialer` each, reconnecting with backoff) and
accepts peers on ``/v1/peer``. Both kinds of link run the same
:meth:`Replicator._session`, since the protocol has no client or server
role. Two regions that both list each other hold two links, but only one
of them pushes our deltas to that peer: the first to authenticate; a later
one is switched off (``set_pushing(False)``) and takes over when the
pushing link closes, so each delta crosses once. Either link answers the
peer's requests and carries acks; a quorum read or write asks one live
link per peer. A handover may resend some deltas, which the receive side
drops by ``(origin, seq)``.

**One session** is four tasks around one protocol object, all on the event
loop, so the object has a single writer as the protocol requires:

* the *reader*: ``recv`` → ``receive_message`` → flush;
* the *ticker*: ``receive_tick(now)`` every ``tick_interval`` → flush;
* the *effects worker*: applies events in order (``ApplyDeltas`` and
  ``MergeStates`` must be applied in event order);
* the *reads worker*: answers the ``Need*`` events (log, tree and state
  reads); each answer is another input, so it flushes too. Answers may
  come in any order, so reads need not wait behind commits, nor commits
  behind reads: an anti-entropy session's hundreds of tree reads would
  otherwise hold up every delta queued on its link.

*Flush* drains ``messages_to_send`` into a per-link outbox and
``events_received`` into the two queues, with no ``await`` in between,
so nothing interleaves with another input. A sender task writes the outbox
to the socket; the socket's ``write_limit`` is the backpressure, and the
outbox is bounded by the protocol's own window (a link whose outbox
exceeds :attr:`ReplicatorSettings.max_outbox` messages is failed rather
than allowed to grow memory).

**Local updates.** Every durable commit of the node, whether a local write
or a delta applied from a peer, is announced to every protocol object with
``local_update`` (that is how deltas are relayed and acknowledged). Remote
deltas are announced by the session that applied them. Local writes are
found by tailing the node's own origin in the delta log: a commit observer
on the writer thread wakes the tailer, which reads
``log_range(replica_id, after=last, ...)``. This needs no hook in the
write path and cannot miss a write (the log is the source of truth). A
page read is announced to each link as one input (:meth:`Replicator._announce`),
so a group commit's writes cross as one ``Deltas`` message; a remote batch
applied in one commit is announced the same way.

**Quorum.** :meth:`Replicator.read` and :meth:`Replicator.wait_for_acks`
implement the consistency levels of the HTTP API (:class:`sync.quorum.Level`)
over the live links; :class:`crdtstore.quorum.Quorum` holds the reads and
writes waiting for peers' answers.

**Log truncation.** Every ``truncate_interval`` the replicator truncates the
delta log up to :func:`sync.truncation.truncation_vector` over *every
configured peer*, connected or not, using the acknowledgements the node
persisted. A configured peer is known by the replica id it authenticated
with on the link dialed to its URL; until every configured URL has been
identified in this run, nothing is truncated (a peer that never
acknowledged holds every origin at 0). Our own origin is never truncated
past what the tailer announced, so no live protocol object sees a gap in it.
A peer that lacks truncated entries is repaired by anti-entropy
(``LogTruncated``, then ``SkipLog``, which the replicator turns into
``node.skip_log`` and ``raise_vector`` on every link).

**Bad peer data.** One document never blocks a link. The node skips a
delta it cannot decode or join and quarantines its document (see
``crdtstore/remote.py`` and ``sync/quarantine.py``): the batch's other deltas commit, the origin's
sequence advances, the acknowledgement goes out as usual, and anti-entropy
repairs the document later; a state that does not merge quarantines its
document the same way. Only what the log cannot hold at all (a malformed
origin or seq: no honest peer sends one) still fails the link with
``PROTOCOL_ERROR``, dropping the events that link had queued.

**Closing** is idempotent at every level: a ``Failed`` event closes the
link with its close code (logged), EOF is ``receive_eof`` (idempotent in
the protocol), and :meth:`Replicator.close` stops the dialers and ends
every session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random as _random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crdtstore.linkcut import LINK_CUT, LinkCuts
from crdtstore.membership import Membership, Target
from crdtstore.peermetrics import ReplicationMeter, Traffic
from crdtstore.quorum import Quorum
from sync import messages as m
from sync import protocol as sp
from sync._state import OPEN
from sync.config import SyncConfig
from sync.dispatch import READS, dispatch
from sync.events import ApplyDeltas, Failed, PeerInfo, ReadResponded, WriteAcked
from sync.exceptions import CloseCode
from sync.io.transport import Dialer, PeerConnection, TransportSettings, dial
from sync.quorum import Level, QuorumOutcome
from sync.store import ReplicaStore
from sync.truncation import pinning_peers, truncation_vector

__all__ = [
    "ReplicatedNode",
    "Replicator",
    "ReplicatorSettings",
]

logger = logging.getLogger("crdtstore.replicator")

# Events that only read the node: the reads worker answers them (see "One session").
_READS = READS


@dataclass(frozen=True, slots=True)
class ReplicatorSettings:
    """Knobs of the adapter (the protocol's own are in ``sync.config.SyncConfig``).

    Attributes:
        tick_interval: Seconds between ``receive_tick`` calls.
        max_outbox: Messages queued for one link before it is failed.
        max_events: Events queued for one link's effects worker before it is failed.
        log_page: Entries read per ``log_range`` call when tailing our origin.
        quorum_timeout: Default seconds a quorum read or write waits.
        truncate_interval: Seconds between log truncation passes (None: never truncate).
        removed_peer_grace: Seconds a peer that left membership still holds back log truncation
            (:func:`sync.truncation.pinning_peers`).
        announce_interval: Seconds per announcement of our own writes to the links, sustained (a token
            bucket refilled at one per interval, holding ``announce_burst``): a commit that finds the
            bucket empty waits for the next token, so under a high write rate the commits of that time
            cross as one ``Deltas`` message per peer (and one remote commit there) instead of one each.
            0: every commit at once.
        announce_burst: Announcements that go at once after a quiet spell. At a moderate commit rate
            (a live document's keystrokes, some 80 a second) nearly every commit then goes the moment it
            lands, instead of waiting out the interval whenever it follows another within it: that wait
            was on the path of every change seen in another region.
    """

    tick_interval: float = 0.1
    max_outbox: int = 10_000
    max_events: int = 10_000
    log_page: int = 256
    quorum_timeout: float = 5.0
    truncate_interval: float | None = 1.0
    removed_peer_grace: float = 3600.0
    announce_interval: float = 0.01
    announce_burst: int = 16


class ReplicatedNode(ReplicaStore, Protocol):
    """What the replicator needs of its node: the store, and what it tails and says in its Hello."""

    replica_id: str  # this start's origin: the replicator tails the node's own writes under it

    async def read_state(self, doc_id: str) -> bytes | None: ...  # a quorum read's joined state

    @property
    def storage(self) -> Any: ...  # its identity (stable id, epoch) goes into each link's Hello


@dataclass(eq=False)
class _Link:
    """One live session: the protocol object, its connection and its queues."""

    proto: Any
    conn: PeerConnection
    outbox: collections.deque[bytes] = field(default_factory=collections.deque)
    outbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    events: collections.deque[Any] = field(default_factory=collections.deque)
    events_ready: asyncio.Event = field(default_factory=asyncio.Event)
    reads: collections.deque[Any] = field(default_factory=collections.deque)
    reads_ready: asyncio.Event = field(default_factory=asyncio.Event)
    peer_id: str | None = None
    peer: Any = None
    closed: bool = False
    url: str | None = None  # the configured URL we dialed, None for a link a peer opened
    lifted: bool = False  # the transport's pre-handshake message limit was lifted
    traffic: Traffic = field(default_factory=Traffic)


class Replicator:
    """Replication for one node.

    Args:
        node: The region node (started before :meth:`start`).
        secret: The cluster secret (every member shares it).
        peers: Peer websocket URLs to dial.
        region: This node's region name.
        region_replicas: Replicas in our region as configured, this one included (``local_quorum`` is a
            majority of them); the others are among ``peers``, or found by ``membership``.
        membership: Peers found by name (:mod:`crdtstore.membership`), dialed as they come and go.
        peer_path: The path of the peer endpoint on the replicas ``membership`` finds.
        transport: Link settings.
        settings: Adapter settings.
        sync_config: The protocol's config (None: its defaults).
        random: Jitter source for backoff.
        nonce: Fresh per-connection nonces for the handshake.
        accepted_secrets: Further cluster secrets peers may prove themselves with (a rotation).
    """

    def __init__(
        self,
        node: ReplicatedNode,
        *,
        secret: bytes,
        peers: Sequence[str] = (),
        region: str,
        region_replicas: int = 1,
        membership: Membership | None = None,
        peer_path: str = "/v1/peer",
        transport: TransportSettings | None = None,
        settings: ReplicatorSettings | None = None,
        sync_config: SyncConfig | None = None,
        random: Callable[[], float] | None = None,
        nonce: Callable[[], bytes] = lambda: secrets.token_bytes(16),
        accepted_secrets: Sequence[bytes] = (),
    ) -> None:
        self.node = node
        self.region = region
        self.peer_urls = list(peers)
        self.membership = membership
        self.peer_path = peer_path
        # With membership from DNS the region's other replicas are found at run time: no count to check.
        if region_replicas < 1 or (membership is None and region_replicas > 1 + len(self.peer_urls)):
            raise ValueError(f"{region_replicas} replicas in our region, but {1 + len(self.peer_urls)} in the cluster")
        self.region_replicas = region_replicas
        self._peer_regions: dict[str, str] = {}  # peer replica id -> the region its Hello named
        self.transport = transport or TransportSettings()
        self.settings = settings or ReplicatorSettings()
        self._secret = secret
        self._accepted_secrets = tuple(accepted_secrets)
        self._sync_config = sync_config
        self._random = random or _random.Random().random
        self._nonce = nonce
        self._links: set[_Link] = set()
        self._dialer_by_key: dict[str, Dialer] = {}  # link key (a URL, or a Target's key) -> its dialer
        self._targets: dict[str, Target] = {}  # key -> a peer membership found, dialed while it is there
        self._self_keys: set[str] = set()  # targets that turned out to be this replica
        self._dial_nonces: dict[bytes, str] = {}  # Hello nonce of a link we dialed -> its key
        self._departed: dict[str, float] = {}  # peer replica id -> loop time it left membership
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tail_wake = asyncio.Event()
        self._tail_after = 0  # our origin's log read up to here (the meter counts it committed)
        self._announced = 0  # and handed to every link up to here (truncation stops at it)
        self._acks: dict[str, dict[str, int]] = {}  # peer replica id -> vector it acknowledged
        self._acks_stored: dict[str, dict[str, int]] = {}  # what truncate_once last persisted of _acks
        self._peer_ids: dict[str, str] = {}  # link key (configured URL, target) -> replica id it authenticated as
        self._truncated: dict[str, int] = {}  # origin -> highest seq truncated in this run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self.stats: dict[str, int] = collections.Counter()
        self.meter = ReplicationMeter()  # per-peer numbers for /metrics (crdtstore/peermetrics.py)
        self.cuts = LinkCuts()  # links an operator cut (crdtstore/linkcut.py)
        # The live channel's (crdtstore.api.live): a peer's editor presence, and a peer whose last link closed.
        self.presence_sink: Callable[[Any], None] | None = None
        self.presence_link_lost: Callable[[str], None] | None = None
        self._quorum = Quorum(
            node=node,
            cluster_size=lambda: self.cluster_size,
            region=region,
            region_size=lambda: self.region_replicas,
            region_of=self._peer_regions.get,
            timeout=self.settings.quorum_timeout,
            acks=self._acks,
            stats=self.stats,
            live_links=self._live_links,
            input=self._input,
            link_of=self._link_of,
            reject=self._reject,
        )

    # Public methods for the lifecycle.

    @property
    def cluster_size(self) -> int:
        """Replicas in the cluster: this node, its members, and those that left less than the grace ago.

        A member not yet identified counts once. A replica that left membership keeps counting for
        ``removed_peer_grace`` seconds, as it keeps pinning the log: a name that answers nothing for a
        while (a remote region's DNS down) must not shrink ``quorum`` below what writes were acked at.
        """
        keys = self._member_keys()
        known = {self._peer_ids[key] for key in keys if key in self._peer_ids}
        now, grace = self.now(), self.settings.removed_peer_grace
        departed = {peer for peer, left in self._departed.items() if now - left < grace}
        return 1 + len(known | departed) + sum(key not in self._peer_ids for key in keys)

    @property
    def _dialers(self) -> list[Dialer]:
        return list(self._dialer_by_key.values())

    def _member_keys(self) -> list[str]:
        """Configured peer URLs and the targets membership found now, ourselves left out."""
        return [key for key in (*self.peer_urls, *self._targets) if key not in self._self_keys]

    async def start(self) -> None:
        """Start tailing our log, dialing peers and accepting them."""
        if self._running:
            return
        self._running = True
        self._loop = asyncio.get_running_loop()
        vector = await self.node.version_vector()
        self._tail_after = self._announced = int(vector.get(self.node.replica_id, 0))
        writer = getattr(self.node, "writer", None)
        if writer is not None:
            writer.observers.append(self._on_commit)
        self._spawn(self._tail(), "tail")
        if self.settings.truncate_interval is not None:
            self._spawn(self._truncate_loop(self.settings.truncate_interval), "truncate")
        for url in self.peer_urls:
            self._dial(url, url)
        if self.membership is not None:
            # The first answers before start returns: `quorum` must not count a cluster of one meanwhile.
            await self.membership.start(self._target_added, self._target_removed)
        logger.info("replicator started", extra={"peers": len(self.peer_urls), "region": self.region})

    def _dial(self, key: str, url: str, address: tuple[str, int] | None = None) -> None:
        session = functools.partial(self._session, url=key)
        dial_fn = None if address is None else functools.partial(dial, settings=self.transport, address=address)
        dialer = Dialer(url, session, settings=self.transport, random=self._random, dial_fn=dial_fn)
        dialer.start()
        self._dialer_by_key[key] = dialer

    # Private methods: membership.

    async def _target_added(self, target: Target) -> None:
        if not self._running or target.key in self._targets:
            return
        self._targets[target.key] = target
        scheme = "wss" if self.transport.ssl_context is not None else "ws"
        self._dial(target.key, target.url(scheme=scheme, path=self.peer_path), (target.host, target.port))

    async def _target_removed(self, target: Target) -> None:
        key = target.key
        self._targets.pop(key, None)
        self._self_keys.discard(key)
        dialer = self._dialer_by_key.pop(key, None)
        if dialer is not None:
            await dialer.close()
        peer_id = self._peer_ids.pop(key, None)
        if peer_id is None or any(self._peer_ids.get(k) == peer_id for k in self._member_keys()):
            return  # never identified, or still a member under another address (a pod that moved)
        self._departed[peer_id] = asyncio.get_running_loop().time()
        for link in list(self._links):
            if link.peer_id == peer_id:
                await self._close_link(link, 1001, "left membership")

    def _own_dialed_link(self, data: bytes) -> str | None:
        """The key of the link we dialed whose Hello ``data`` is: a link we accepted from ourselves."""
        try:
            msg = m.decode(data, max_size=len(data))
        except Exception:  # the protocol rejects it on its own
            return None
        return self._dial_nonces.get(msg.nonce) if isinstance(msg, m.Hello) else None

    async def _dialed_ourselves(self, key: str) -> None:
        # Our own address is among the answers for our region's name: stop dialing it while it stays there.
        logger.info("a peer address is this replica: not dialing it", extra={"peer": key})
        self._self_keys.add(key)
        dialer = self._dialer_by_key.pop(key, None)
        if dialer is not None:
            await dialer.close()

    async def close(self) -> None:
        """Stop dialing, end every session, fail pending quorum waits (idempotent)."""
        if not self._running:
            return
        self._running = False
        writer = getattr(self.node, "writer", None)
        if writer is not None:
            with contextlib.suppress(ValueError):
                writer.observers.remove(self._on_commit)
        if self.membership is not None:
            await self.membership.close()
        for dialer in list(self._dialer_by_key.values()):
            await dialer.close()
        self._dialer_by_key.clear()
        for link in list(self._links):
            await self._close_link(link, 1001, "going away")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._quorum.cancel()

    async def accept(self, conn: PeerConnection) -> None:
        """Run a session on a link a peer opened (the ``/v1/peer`` endpoint calls this)."""
        if not self._running:
            await conn.close(1013, "not ready")
            return
        await self._session(conn)

    # Public methods for quorum reads and writes.

    def peers(self) -> list[str]:
        """Replica ids of the peers authenticated right now."""
        return sorted({link.peer_id for link in self._links if link.peer_id is not None and not link.closed})

    async def read(self, doc_id: str, level: Level, *, timeout: float | None = None) -> QuorumOutcome:
        """Gather peers' states of ``doc_id``, join them here, repair stale peers (:meth:`Quorum.read`)."""
        outcome = await self._quorum.read(doc_id, level, timeout=timeout)
        self.meter.quorum_outcome("read", Level(level).value, outcome.ok)
        return outcome

    async def wait_for_acks(
        self,
        doc_id: str,
        level: Level,
        *,
        origin: str | None = None,
        seq: int | None = None,
        timeout: float | None = None,
    ) -> QuorumOutcome:
        """Wait until enough peers durably hold the write ``(origin, seq)`` (:meth:`Quorum.wait_for_acks`)."""
        outcome = await self._quorum.wait_for_acks(doc_id, level, origin=origin, seq=seq, timeout=timeout)
        self.meter.quorum_outcome("write", Level(level).value, outcome.ok)
        return outcome

    # Public methods for operators: link cuts (crdtstore/linkcut.py) and what /metrics reads.

    async def cut(self, *, peer: str | None = None, region: str | None = None) -> None:
        """Cut the links to ``peer`` or ``region`` until healed: close them, refuse them, stop dialing them.

        Raises:
            crdtstore.linkcut.UnknownPeer: Not a peer or region linked with since the start (nothing changes).
        """
        self.cuts.cut(peer=peer, region=region)
        for link in list(self._links):
            if link.peer is not None and self.cuts.blocks(link.peer.replica_id, link.peer.region):
                await self._close_link(link, LINK_CUT, "link cut by an operator")
        for key, dialer in list(self._dialer_by_key.items()):
            if self._is_cut(key):
                del self._dialer_by_key[key]
                await dialer.close()

    def heal(self, *, peer: str | None = None, region: str | None = None) -> None:
        """Heal the cut of ``peer`` or ``region`` (neither: every cut) and dial the configured peers again."""
        self.cuts.heal(peer=peer, region=region)
        if not self._running:
            return
        for url in self.peer_urls:
            if url not in self._dialer_by_key and not self._is_cut(url):
                self._dial(url, url)
        scheme = "wss" if self.transport.ssl_context is not None else "ws"
        for key, target in self._targets.items():
            if key not in self._dialer_by_key and key not in self._self_keys and not self._is_cut(key):
                self._dial(key, target.url(scheme=scheme, path=self.peer_path), (target.host, target.port))

    def _is_cut(self, key: str) -> bool:
        """Whether the peer last met on the link of ``key`` (a peer URL or a membership target) is cut."""
        peer_id = self._peer_ids.get(key)
        return peer_id is not None and self.cuts.blocks(peer_id, self.cuts.known.get(peer_id, ""))

    @property
    def truncated(self) -> dict[str, int]:
        """Per origin, how far this run truncated the log."""
        return self._truncated

    def now(self) -> float:
        """The clock the replicator's numbers use: its event loop's."""
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()  # asyncio's own loop clock

    def link_states(self) -> list[tuple[str, bool, int, Traffic]]:
        """Each authenticated link now: its peer, whether it is open, its outbox length and traffic."""
        return [
            (link.peer_id, link.proto.state is OPEN, len(link.outbox), link.traffic)
            for link in list(self._links)
            if link.peer_id is not None and not link.closed
        ]

    # Private methods: sessions.

    async def _session(self, conn: PeerConnection, *, url: str | None = None) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        nonce = self._nonce()
        if url is not None:
            self._dial_nonces[nonce] = url  # so that a link from ourselves is recognised (_own_dialed_link)
        proto = sp.PeerProtocol(
            our=PeerInfo(
                # Stable across restarts: acks and quorum membership key on it.
                replica_id=node.storage.identity.base,
                origin=node.replica_id,
                region=self.region,
                epoch=node.storage.identity.epoch,
            ),
            secret=self._secret,
            nonce=nonce,
            now=loop.time(),
            our_vector=await node.version_vector(),
            config=self._sync_config,
            accepted_secrets=self._accepted_secrets,
        )
        link = _Link(proto=proto, conn=conn, url=url)
        self._links.add(link)
        self._flush(link)
        tasks = [
            asyncio.create_task(self._send_loop(link), name="peer send"),
            asyncio.create_task(self._tick_loop(link), name="peer tick"),
            asyncio.create_task(self._effects_loop(link, link.events, link.events_ready), name="peer effects"),
            asyncio.create_task(self._effects_loop(link, link.reads, link.reads_ready), name="peer reads"),
        ]
        first = url is None
        try:
            while not link.closed:
                data = await conn.recv()
                if data is None:
                    break
                if first:
                    first = False
                    own = self._own_dialed_link(data)
                    if own is not None:
                        self._spawn(self._dialed_ourselves(own), "self")
                        break
                self.stats["messages_in"] += 1
                self.stats["bytes_in"] += len(data)
                link.traffic.messages_in += 1
                link.traffic.bytes_in += len(data)
                self._input(link, functools.partial(sp.PeerProtocol.receive_message, data=data))
        finally:
            self._dial_nonces.pop(nonce, None)
            if not link.closed:
                self._input(link, lambda p: p.receive_eof())
            await self._close_link(link, getattr(conn, "close_code", None) or 1000, "closed")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _input(self, link: _Link, call: Callable[[Any], Any]) -> None:
        """Feed one input to the link's protocol and flush its outputs (no await in between)."""
        if link.closed:
            return
        try:
            call(link.proto)
        except Exception as exc:  # our misuse (LocalProtocolError) or a bug: fail this link, not the node
            logger.exception("protocol input failed", extra={"peer": link.peer_id})
            link.events.append(("local_error", exc))
        self._flush(link)

    def _flush(self, link: _Link) -> None:
        messages = link.proto.messages_to_send()
        events = link.proto.events_received()
        if not link.lifted and link.proto.peer_verified:
            # Now, before our Ready goes out (it is in ``messages``): the peer sends nothing larger than
            # the pre-handshake limit until it has our Ready, so no message of its can meet the old limit.
            link.lifted = True
            link.conn.lift_limit()
        if messages:
            link.outbox.extend(messages)
            link.outbox_ready.set()
        for event in events:
            if isinstance(event, _READS):
                link.reads.append(event)
                link.reads_ready.set()
            else:
                link.events.append(event)
                link.events_ready.set()
        if (
            len(link.outbox) > self.settings.max_outbox
            or max(len(link.events), len(link.reads)) > self.settings.max_events
        ):
            logger.warning("peer link over its queue bounds", extra={"peer": link.peer_id})
            self._spawn(self._close_link(link, 1011, "queue overflow"), "close")

    async def _send_loop(self, link: _Link) -> None:
        while not link.closed:
            while link.outbox:
                data = link.outbox.popleft()
                try:
                    await link.conn.send(data)
                except ConnectionError:
                    return
                self.stats["messages_out"] += 1
                self.stats["bytes_out"] += len(data)
                link.traffic.messages_out += 1
                link.traffic.bytes_out += len(data)
            link.outbox_ready.clear()
            await link.outbox_ready.wait()

    async def _tick_loop(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        while not link.closed:
            await asyncio.sleep(self.settings.tick_interval)
            self._input(link, lambda p: p.receive_tick(loop.time()))

    async def _effects_loop(self, link: _Link, queue: collections.deque[Any], ready: asyncio.Event) -> None:
        while not link.closed:
            while queue:
                event = _coalesce_deltas(queue)
                try:
                    await self._process(link, event)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A node hook failed (storage full, a bad delta): this link cannot go on.
                    logger.exception("applying a peer event failed", extra={"peer": link.peer_id})
                    await self._close_link(link, 1011, type(exc).__name__)
                    return
            ready.clear()
            await ready.wait()

    async def _process(self, link: _Link, event: Any) -> None:
        if isinstance(event, tuple) and event and event[0] == "local_error":
            await self._close_link(link, 1011, "internal error")
        else:
            await dispatch(_LinkContext(self, link), event)

    def _reject(self, link: _Link | None, what: str, exc: Exception) -> None:
        """A peer sent what the node cannot take at all (a malformed origin or seq; bad document data is
        quarantined by the node instead): log, fail the link, drop what it queued."""
        self.stats["protocol_errors"] += 1
        logger.warning(
            "rejected bad data from a peer",
            extra={"peer": None if link is None else link.peer_id, "what": what, "error": repr(exc)[:200]},
        )
        if link is None:
            return
        self._input(link, lambda p: p.fail(CloseCode.PROTOCOL_ERROR, f"undecodable {what}"[:120]))
        # Events flushed before the failure must not be applied either; Failed closes the link.
        kept = [e for e in link.events if type(e).__name__ == "Failed"]
        link.events.clear()
        link.events.extend(kept)

    async def _truncate_loop(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            await asyncio.sleep(interval)
            try:
                # Entries up to this vector were logged by now: the age of the oldest one left (peermetrics).
                now, vector = loop.time(), await self.node.version_vector()
                await self.truncate_once()
                self.meter.checkpoint(now, vector, self._truncated)
            except asyncio.CancelledError:
                raise
            except Exception:  # the node is closing, storage full...: try again next time
                logger.exception("log truncation failed")

    async def truncate_once(self) -> int:
        """Truncate the node's log to what every member acknowledged; return entries removed.

        The members are the configured peers and those membership finds now; a peer that left
        membership still counts for ``removed_peer_grace`` seconds (:func:`sync.truncation.pinning_peers`).
        """
        keys = self._member_keys()
        if any(key not in self._peer_ids for key in keys):
            return 0  # a member we cannot name yet holds every origin at 0
        now = asyncio.get_running_loop().time()
        grace = self.settings.removed_peer_grace
        self._departed = {p: t for p, t in self._departed.items() if now - t < grace}
        peers = pinning_peers({self._peer_ids[key] for key in keys}, self._departed, now=now, grace=grace)
        if not peers:
            return 0  # nobody to replicate to: keep the log for whoever comes
        for peer in peers:
            latest = self._acks.get(peer)
            if latest is not None and self._acks_stored.get(peer) != latest:
                await self.node.set_acked(peer, latest)  # never lowers what is stored
                self._acks_stored[peer] = latest
        acked = {peer: await self.node.acked(peer) for peer in peers}
        vector = await self.node.version_vector()
        upto = truncation_vector(vector, acked, peers)
        own = self.node.replica_id
        if own in upto:
            upto[own] = min(upto[own], self._announced)
        todo = {o: s for o, s in upto.items() if s > self._truncated.get(o, 0)}
        if not todo:
            return 0
        removed = int(await self.node.truncate_log(todo))
        self._truncated.update(todo)
        self.stats["log_truncated"] += removed
        return removed

    def relay_presence(self, doc_id: str, client: str, state: bytes) -> None:
        """Send an editor's presence (empty: gone) to every peer linked now; best effort, never stored."""
        for link in self._live_links():
            self._input(link, lambda p: p.send_presence(doc_id, client, state))

    async def _close_link(self, link: _Link, code: int, reason: str) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        self.meter.link_closed(link.peer_id, link.traffic)
        if link.peer_id is not None and self.presence_link_lost and not self._links_to(link.peer_id, besides=link):
            self.presence_link_lost(link.peer_id)  # its editors' presence goes with the link
        if link.proto.pushing and link.peer_id is not None:
            # Hand the deltas over to another link to the same peer, if one is open.
            for other in self._links_to(link.peer_id, besides=link):
                self._input(other, lambda p: p.set_pushing(True))
                break
        with contextlib.suppress(Exception):
            link.proto.receive_eof()
        link.outbox_ready.set()
        link.events_ready.set()
        link.reads_ready.set()
        await link.conn.close(code, reason)

    def _links_to(self, peer_id: str | None, *, besides: _Link) -> list[_Link]:
        return [
            other for other in self._links if other is not besides and not other.closed and other.peer_id == peer_id
        ]

    # Private methods: local writes and helpers.

    def _on_commit(self, size: int, seconds: float) -> None:
        # Writer thread: only hand over to the loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._tail_wake.set)

    async def _tail(self) -> None:
        """Announce our own new log entries (local writes) to every link."""
        origin = self.node.replica_id
        loop = asyncio.get_running_loop()
        interval = self.settings.announce_interval
        burst = max(1, self.settings.announce_burst)
        tokens, refilled = float(burst), loop.time()
        pending: list[Any] = []  # read, not yet announced (bounded: one interval of our commits)
        while self._running:
            self._tail_wake.clear()
            for _ in range(10_000):  # bounded per wake-up; the next wake-up continues
                entries = await self.node.log_range(origin, self._tail_after, self.settings.log_page)
                if entries:
                    pending += entries
                    self._tail_after = entries[-1].seq
                    self.meter.committed(entries[0].seq, entries[-1].seq, self.now())
                if len(entries) < self.settings.log_page:
                    break
            if pending:
                if interval > 0:
                    now = loop.time()
                    tokens, refilled = min(burst, tokens + (now - refilled) / interval), now
                    if tokens < 1:
                        await asyncio.sleep((1 - tokens) * interval)
                        continue  # read what committed meanwhile: it goes out with these
                    tokens -= 1
                self._announce(pending)
                self._announced = pending[-1].seq
                pending = []
            await self._tail_wake.wait()

    def _announce(self, entries: Sequence[Any]) -> None:
        """``local_update`` for each of ``entries`` (durable, in seq order) on every link.

        One input per link for the whole run, hence one flush: a group commit's
        writes leave as one ``Deltas`` message (up to the batch size), not one
        message each. Each message costs a frame and a send here, a receive, a
        decode and an ``ApplyDeltas`` event at the peer, and a chunk in every
        proxy between; one a write made a region taking 1,000 writes/s send
        2,000 messages a second.
        """

        def update(p: Any) -> None:
            for e in entries:
                p.local_update(e.origin, e.seq, e.doc_id, e.delta)

        for link in list(self._links):
            self._input(link, update)

    def _live_links(self) -> list[_Link]:
        # One link per peer: two links to one peer would count it twice.
        by_peer: dict[str, _Link] = {}
        for link in self._links:
            if link.peer_id is not None and not link.closed:
                by_peer.setdefault(link.peer_id, link)
        return list(by_peer.values())

    def _link_of(self, peer_id: str) -> _Link | None:
        for link in self._links:
            if link.peer_id == peer_id and not link.closed:
                return link
        return None

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _LinkContext:
    """The :class:`sync.dispatch.Context` of one link: what the shared event handlers may use here."""

    __slots__ = ("link", "replicator")

    def __init__(self, replicator: Replicator, link: _Link) -> None:
        self.replicator = replicator
        self.link = link

    @property
    def store(self) -> ReplicaStore:
        return self.replicator.node

    @property
    def stats(self) -> dict[str, int]:
        return self.replicator.stats

    def input(self, call: Callable[[Any], object]) -> None:
        self.replicator._input(self.link, call)

    def input_all(self, call: Callable[[Any], object]) -> None:
        for other in list(self.replicator._links):
            self.replicator._input(other, call)

    def authenticated(self, peer: PeerInfo) -> None:
        rep, link = self.replicator, self.link
        link.peer_id = peer.replica_id
        link.peer = peer
        rep._peer_regions[peer.replica_id] = peer.region
        if sum(region == rep.region for region in rep._peer_regions.values()) >= rep.region_replicas:
            # More of our region than configured: local_quorum is then a majority of too few (or an old id).
            logger.warning("more replicas of our region than region_replicas says", extra={"peer": peer.replica_id})
        if link.url is not None:
            rep._peer_ids[link.url] = peer.replica_id
            rep._departed.pop(peer.replica_id, None)  # back in membership
        rep.meter.peer_seen(peer.replica_id, peer.region)
        rep.cuts.seen(peer.replica_id, peer.region)
        if rep.cuts.blocks(peer.replica_id, peer.region):
            self._refuse_cut()
            return
        if any(other.proto.pushing for other in rep._links_to(link.peer_id, besides=link)):
            # Both sides dial, so a peer is often reached twice: deltas go on one link only.
            rep._input(link, lambda p: p.set_pushing(False))
        logger.info("peer authenticated", extra={"peer": link.peer_id, "remote": link.conn.remote})

    def peer_acked(self, peer_id: str, vector: dict[str, int]) -> None:
        # truncate_once persists it before relying on it.
        rep = self.replicator
        rep._acks[peer_id] = vector
        rep._quorum.acks_changed()
        rep.meter.acked(peer_id, vector.get(rep.node.replica_id, 0), rep.now())

    def _refuse_cut(self) -> None:
        """The link's peer is cut: fail the link before anything it queued is applied, and stop dialing it."""
        rep, link = self.replicator, self.link
        rep.stats["links_refused_cut"] += 1
        rep._input(link, lambda p: p.fail(LINK_CUT, "link cut by an operator"))
        kept = [e for e in link.events if isinstance(e, Failed)]
        link.events.clear()
        link.events.extend(kept)
        link.reads.clear()
        dialer = rep._dialer_by_key.pop(link.url, None) if link.url is not None else None
        if dialer is not None:

            async def stop() -> None:
                # Close first (idempotent), so that stopping the dialer, which ends this session, cannot cut
                # the closing handshake short: the peer learns why (LINK_CUT).
                await link.conn.close(LINK_CUT, "link cut by an operator")
                await dialer.close()

            rep._spawn(stop(), "stop dialing a cut peer")

    def read_responded(self, event: ReadResponded) -> None:
        self.replicator._quorum.read_responded(event)

    def presence_received(self, event: Any) -> None:
        sink = self.replicator.presence_sink
        if sink is not None:
            sink(event)

    def write_acked(self, event: WriteAcked) -> None:
        self.replicator._quorum.write_acked(event)

    def reject(self, what: str, exc: Exception) -> None:
        self.replicator._reject(self.link, what, exc)

    async def close(self, code: int, reason: str) -> None:
        logger.warning("peer link failed", extra={"peer": self.link.peer_id, "code": code, "reason": reason})
        await self.replicator._close_link(self.link, code, reason)


def _coalesce_deltas(events: collections.deque[Any]) -> Any:
    """Pop the next event; consecutive ``ApplyDeltas`` become one, in order.

    Deltas that arrived while the previous batch was committing then share
    the next commit: the link keeps up with the peer's rate whatever the
    fsync latency, instead of committing each small message on its own.
    """
    event = events.popleft()
    if not isinstance(event, ApplyDeltas):
        return event
    entries = list(event.entries)
    while events and isinstance(events[0], ApplyDeltas):
        entries += events.popleft().entries
    return ApplyDeltas(tuple(entries)) if len(entries) > len(event.entries) else event
