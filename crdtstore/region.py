"""One running region node: its :class:`~crdtstore.node.Node`, its replicator, and its servers.

Theory of operation
-------------------

Start-up and shutdown have one owner and one order:

1. ``start``: the node opens its storage and starts its writer thread, the
   ``on_start`` hooks run (the API's commit metrics attach to the writer),
   then the replicator starts (its sessions call into the node) and the
   region turns ready (``/readyz`` answers 200).
2. ``serve``: the region's uvicorn servers serve on their already-bound
   sockets until they are told to exit; each drains its connections first.
   Sockets bound before the start keep a client that connects early in the
   listen backlog until the node is open.
3. ``close``: the region turns unready, the replicator closes (before the
   node: its sessions call into it), then the node commits what is queued,
   ends its change feeds and closes its storage.

:func:`crdtstore.server.run_servers` runs one ``serve`` per region (``crdtstore
up`` runs several in one process, under one set of signal handlers). An app
built by :func:`crdtstore.api.app.build_app` takes its node and replicator from
its region; its lifespan starts the region only when nothing else did (a
test that serves one app alone), and then closes it too: whoever starts a
region closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from crdtstore.api.context import NodeLike

__all__ = ["Region"]

logger = logging.getLogger("crdtstore.region")


class Region:
    """A node and its replicator, started and closed together, in order.

    Args:
        node: The region's node (not started).
        replicator: Its :class:`crdtstore.replicator.Replicator`, or None for a node without peers.
    """

    def __init__(self, node: NodeLike, *, replicator: Any = None) -> None:
        self.node = node
        self.replicator = replicator
        self.on_start: list[Callable[[], None]] = []
        self._ready = False
        self._started = False

    @property
    def ready(self) -> bool:
        """True between the end of :meth:`start` and the beginning of :meth:`close`."""
        return self._ready

    # Public methods for the lifecycle.

    async def start(self) -> None:
        """Start the node, run the ``on_start`` hooks, start the replicator; then the region is ready.

        Raises:
            IncompatibleStorage: The node's directory belongs to another region or shape
                (or whatever else the node or replicator raise while starting; a node
                that started is closed again).
        """
        if self._started:
            raise RuntimeError("a region starts once")
        self._started = True
        await self.node.start()
        try:
            for hook in self.on_start:
                hook()
            if self.replicator is not None:
                await self.replicator.start()
        except BaseException:
            await self.node.close()  # nothing else will: the region never started, so it is never closed
            raise
        self._ready = True
        logger.info("node ready", extra={"replica_id": self.node.replica_id})

    async def close(self) -> None:
        """Turn unready, close the replicator, then the node (idempotent)."""
        self._ready = False
        if self.replicator is not None:
            await self.replicator.close()  # before the node: sessions call into it
        await self.node.close()
        logger.info("node closed", extra={"replica_id": self.node.replica_id})

    async def serve(self, servers: Sequence[uvicorn.Server], sockets: Sequence[socket.socket]) -> None:
        """Start, serve ``servers`` (each on its socket) until they all stopped, then close.

        Raises:
            Whatever :meth:`start` raises; the servers then never start.
        """
        await self.start()
        try:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets, strict=True)))
        finally:
            await self.close()

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """An app's lifespan: start and close the region, unless something else started it."""
        if self._started:
            yield  # its owner (Region.serve) closes it
            return
        await self.start()
        try:
            yield
        finally:
            await self.close()
