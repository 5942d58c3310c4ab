"""An emulated WAN on loopback: TCP proxies that add latency and can be cut.

Theory of operation
-------------------

A :class:`WanLink` listens on 127.0.0.1 and forwards every accepted
connection to one target (a region node). Each direction of each connection
is two tasks joined by a bounded queue:

* the *reader* reads a chunk, stamps it with a due time
  ``max(now + latency + jitter * random(), previous due time)`` and queues it;
* the *writer* waits until the due time, then writes the chunk and drains.

Taking the max with the previous due time keeps bytes in order within a
connection (TCP never reorders), so jitter only stretches gaps. Jitter is
one-sided, in ``[0, jitter]``: the configured latency is a floor, which is
what the tests can assert without an upper bound on timing. The bounded
queue gives backpressure: a slow receiver stops the reader, and TCP flow
control stops the sender, as on a real link.

**Cutting a link.** Two modes, chosen per cut:

* ``"close"`` (the default): every connection through the link is aborted
  at once and new connections are accepted and closed right away. Both
  sides see the link die immediately and start reconnecting with backoff;
  this is fast and deterministic, which the tests want.
* ``"hold"``: nothing is forwarded any more but connections stay open;
  bytes already read wait in the proxy and the kernel buffers. This is a
  silent partition, which only keepalive pings detect (the websocket
  ``ping_timeout``). New connections are accepted and held too. On heal,
  held connections resume where they stopped (what TCP retransmission would
  do), unless an endpoint gave up on them meanwhile.

A :class:`WanController` holds the links of N regions: for every ordered
pair ``(a, b)`` one link that ``a`` dials to reach ``b``. A region may have
several replicas (*members*, e.g. ``us-0``, ``us-1``); then every ordered
pair of members in different regions has its own link, and members of one
region reach each other directly, not through the WAN (there is no WAN
inside a region). ``partition(a, b)`` cuts both directions of every link
between the two regions, ``heal(a, b)`` restores them. A member's target may be
unknown or change (a restarted process binds a new port): connections
arriving for an unknown target are closed, so the dialer backs off and tries
again.

Nothing here imports the sync protocol: the proxy moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random as _random
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CutMode", "LinkStats", "WanController", "WanLink"]

logger = logging.getLogger("sync.io.wanproxy")

CutMode = Literal["close", "hold"]

_CHUNK = 1 << 16
_QUEUE = 64  # chunks in flight per direction before the reader stops (backpressure)


@dataclass
class LinkStats:
    """Counters of one link, summed over its connections.

    Attributes:
        connections: Connections accepted (including those closed because the link was cut).
        bytes_forward: Bytes delivered from the dialer to the target.
        bytes_backward: Bytes delivered from the target to the dialer.
    """

    connections: int = 0
    bytes_forward: int = 0
    bytes_backward: int = 0


@dataclass(eq=False)
class _Pipe:
    """One proxied connection: both streams and the four pump tasks."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        # abort(), not close(): a cut link must not deliver a graceful FIN after the fact.
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class WanLink:
    """One direction of emulated WAN in front of one target.

    Args:
        latency: One-way delay added to every chunk, seconds (a floor).
        jitter: Extra random delay per chunk in ``[0, jitter]`` seconds.
        random: Uniform source in ``[0, 1)`` for the jitter (seeded in tests).
        target: ``(host, port)`` to forward to, or None until known.
        listen_host: Address to listen on; loopback by default.
        listen_port: Port to listen on (0: any free port; see :attr:`port`).
        name: For logs.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        random: Callable[[], float],
        target: tuple[str, int] | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "link",
    ) -> None:
        if latency < 0 or jitter < 0:
            raise ValueError("latency and jitter are >= 0")
        self.latency = latency
        self.jitter = jitter
        self.target = target
        self.name = name
        self.stats = LinkStats()
        self._random = random
        self._listen = (listen_host, listen_port)
        self._server: asyncio.Server | None = None
        self._sock: socket.socket | None = None
        self._pipes: set[_Pipe] = set()
        self._cut: CutMode | None = None
        self._flowing = asyncio.Event()  # set while forwarding (not held)
        self._flowing.set()
        self._closed = False

    # Public methods for the lifecycle.

    def bind(self) -> int:
        """Bind the listening socket now (no event loop needed), so its port is known early; returns it."""
        if self._sock is None:
            self._sock = socket.create_server(self._listen)
        return int(self._sock.getsockname()[1])

    async def start(self) -> int:
        """Start listening (binding first if :meth:`bind` was not called); returns the port."""
        self.bind()
        self._server = await asyncio.start_server(self._accept, sock=self._sock)
        return self.port

    @property
    def port(self) -> int:
        assert self._sock is not None, "link not bound"
        return int(self._sock.getsockname()[1])

    async def close(self) -> None:
        """Stop listening and abort every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        elif self._sock is not None:
            self._sock.close()
        tasks = [t for pipe in self._pipes for t in pipe.tasks]
        for pipe in list(self._pipes):
            pipe.abort()
        self._pipes.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # Public methods for controlling the link.

    @property
    def is_cut(self) -> bool:
        return self._cut is not None

    def cut(self, mode: CutMode = "close") -> None:
        """Stop forwarding (see the module docstring for the two modes)."""
        if mode not in ("close", "hold"):
            raise ValueError(f"unknown cut mode {mode!r}")
        self._cut = mode
        self._flowing.clear()
        if mode == "close":
            for pipe in list(self._pipes):
                pipe.abort()
            self._pipes.clear()
        logger.info("link cut", extra={"link": self.name, "mode": mode})

    def heal(self) -> None:
        """Forward again; held connections resume (idempotent)."""
        self._cut = None
        self._flowing.set()
        logger.info("link healed", extra={"link": self.name})

    def set_target(self, target: tuple[str, int] | None) -> None:
        """Forward new connections to ``target``; existing ones keep theirs."""
        self.target = target

    def delay(self) -> float:
        """One chunk's delay: the latency plus a jitter sample."""
        return self.latency + self.jitter * min(max(self._random(), 0.0), 1.0)

    # Private methods: connections.

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self._cut == "close" or self._closed:
            writer.transport.abort()
            return
        pipe = _Pipe(client=writer)
        self._pipes.add(pipe)
        try:
            # A held link holds new connections too: no upstream until it heals.
            await self._flowing.wait()
            target = self.target
            if target is None:
                raise ConnectionRefusedError("target unknown")
            up_reader, up_writer = await asyncio.open_connection(*target)
        except (OSError, asyncio.CancelledError):
            pipe.abort()
            self._pipes.discard(pipe)
            return
        pipe.upstream = up_writer
        if pipe not in self._pipes:  # cut while connecting
            pipe.abort()
            return
        forward: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE)
        backward: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE)
        pipe.tasks = [
            asyncio.create_task(self._read(reader, forward)),
            asyncio.create_task(self._write(up_writer, forward, forward=True)),
            asyncio.create_task(self._read(up_reader, backward)),
            asyncio.create_task(self._write(writer, backward, forward=False)),
        ]
        try:
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        finally:
            self._pipes.discard(pipe)
            pipe.abort()

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        last_due = 0.0
        while True:
            await self._flowing.wait()
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                data = b""
            # In order: never due before the previous chunk of this direction.
            due = max(loop.time() + self.delay(), last_due)
            last_due = due
            await queue.put((due, data))
            if not data:
                return

    async def _write(
        self, writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]], *, forward: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            # The event loop may run a timer up to its clock resolution early: re-check (bounded).
            for _ in range(1000):
                await self._flowing.wait()
                wait = due - loop.time()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return
            if forward:
                self.stats.bytes_forward += len(data)
            else:
                self.stats.bytes_backward += len(data)


class WanController:
    """Every link between members of different regions, cut and healed by region name.

    Args:
        regions: Region names.
        latency: One-way latency of every link, seconds.
        jitter: Jitter of every link, seconds.
        seed: Seeds each link's jitter source (links get distinct streams).
        base_port: The links listen on consecutive ports from this one, in the order of :meth:`pairs`
            (0: each on a free port of its own), so that firewall rules or a fixed plan can name them.
        members: Each member's region (``{"us-0": "us", ...}``), in order; None: one member per region,
            named as the region.
    """

    def __init__(
        self,
        regions: Iterable[str],
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
        base_port: int = 0,
        members: Mapping[str, str] | None = None,
    ) -> None:
        self.regions = list(regions)
        if len(set(self.regions)) != len(self.regions):
            raise ValueError("region names must be distinct")
        self.members: dict[str, str] = dict(members) if members is not None else {r: r for r in self.regions}
        strays = sorted(name for name, region in self.members.items() if region not in self.regions)
        if strays:
            raise ValueError(f"members of no listed region: {', '.join(strays)}")
        pairs = [(a, b) for a in self.members for b in self.members if self.members[a] != self.members[b]]
        if base_port and not 1024 <= base_port <= 65536 - len(pairs):
            raise ValueError(f"{len(pairs)} link ports from {base_port} do not fit in 1024-65535")
        counter = itertools.count()
        ports = itertools.count(base_port) if base_port else itertools.repeat(0)
        self.links: dict[tuple[str, str], WanLink] = {
            (a, b): WanLink(
                latency=latency,
                jitter=jitter,
                random=_random.Random(seed * 1_000_003 + next(counter)).random,
                listen_port=next(ports),
                name=f"{a}->{b}",
            )
            for a, b in pairs
        }

    def pairs(self) -> list[tuple[str, str]]:
        """The ordered ``(dialer, target)`` member pairs, in the order their ports are given."""
        return list(self.links)

    def bind(self) -> None:
        """Bind every link's socket (ports known before the event loop runs)."""
        for link in self.links.values():
            link.bind()

    async def start(self) -> None:
        for link in self.links.values():
            await link.start()

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()

    def set_target(self, member: str, host: str, port: int) -> None:
        """Where ``member`` listens now: every link towards it forwards there."""
        if member not in self.members:
            raise KeyError(f"unknown member {member!r}")
        for (_, b), link in self.links.items():
            if b == member:
                link.set_target((host, port))

    def url(self, src: str, dst: str, *, scheme: str = "ws", path: str = "") -> str:
        """The URL ``src`` dials to reach ``dst`` (a member of another region) through the emulated WAN."""
        return f"{scheme}://127.0.0.1:{self.links[(src, dst)].port}{path}"

    def peers_of(self, src: str, *, scheme: str = "ws", path: str = "") -> list[str]:
        """The URLs of every member of the other regions, as ``src`` reaches them."""
        return [self.url(src, dst, scheme=scheme, path=path) for (a, dst) in self.links if a == src]

    def partition(self, a: str, b: str, *, mode: CutMode = "close") -> None:
        """Cut both directions between every member of region ``a`` and every member of region ``b``."""
        for link in self._between(a, b):
            link.cut(mode)

    def heal(self, a: str, b: str) -> None:
        """Restore both directions between regions ``a`` and ``b``."""
        for link in self._between(a, b):
            link.heal()

    def isolate(self, region: str, *, mode: CutMode = "close") -> None:
        """Cut ``region`` off from every other region."""
        for other in self.regions:
            if other != region:
                self.partition(region, other, mode=mode)

    def heal_all(self) -> None:
        for link in self.links.values():
            link.heal()

    def cut_pairs(self) -> list[tuple[str, str]]:
        """The unordered region pairs with a link currently cut (either direction)."""
        cut = {tuple(sorted((self.members[a], self.members[b]))) for (a, b), link in self.links.items() if link.is_cut}
        return sorted(cut)  # type: ignore[arg-type]

    def stats(self) -> dict[str, LinkStats]:
        return {link.name: link.stats for link in self.links.values()}

    def _between(self, a: str, b: str) -> list[WanLink]:
        for region in (a, b):
            if region not in self.regions:
                raise KeyError(f"unknown region {region!r}")
        if a == b:
            raise ValueError("a region is not linked to itself")
        return [link for (x, y), link in self.links.items() if {self.members[x], self.members[y]} == {a, b}]
