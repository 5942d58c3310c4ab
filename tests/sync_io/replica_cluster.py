"""Several replicas per region as real in-process nodes on loopback, every pair of them linked directly.

Each replica is a :class:`~crdtstore.node.Node` with its
:class:`~crdtstore.replicator.Replicator`, served by uvicorn as ``serve``
serves it (:func:`crdtstore.server.server_configs`), on a socket bound to
127.0.0.1. Replica ``us-1`` is ordinal 1 of region ``us``; every replica lists
every other one as a peer and is told its region's size
(``region_replicas``), as ``crdtstore up --replicas`` configures them.
:meth:`ReplicaCluster.stop` stops one replica for good (its server drains,
its links close). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.config import ServeConfig
from crdtstore.node import Node, NodeConfig
from crdtstore.replicator import Replicator, ReplicatorSettings
from crdtstore.server import server_configs
from sync.io.transport import TransportSettings
from tests.sync_io.regions import SECRET, TOKEN, wait_for

__all__ = ["Replica", "ReplicaCluster", "replica_cluster"]


@dataclass(eq=False)
class Replica:
    name: str
    region: str
    node: Node
    replicator: Replicator
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]
    sock: socket.socket
    up: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def replica_id(self) -> str:
        return str(self.node.storage.identity.base)


@dataclass(eq=False)
class ReplicaCluster:
    replicas: dict[str, Replica] = field(default_factory=dict)

    def up(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.up]

    async def stop(self, name: str) -> None:
        """Stop replica ``name`` (its server drains, its region closes: its links go down)."""
        replica = self.replicas[name]
        replica.up = False
        await _stop(replica)

    async def wait_linked(self, name: str) -> None:
        """Until ``name`` holds an authenticated link to exactly the replicas that are up (bounded)."""
        replica = self.replicas[name]
        want = sorted(r.replica_id for r in self.up() if r is not replica)
        assert await wait_for(lambda: replica.replicator.peers() == want, tries=1000), (
            f"{name} linked to {replica.replicator.peers()}, not {want}"
        )


def names(regions: Sequence[str], per_region: int) -> list[tuple[str, str]]:
    """``(replica name, region)`` in order: ``us-0, us-1, ..., eu-0, ...``."""
    return [(f"{region}-{i}", region) for region in regions for i in range(per_region)]


async def _stop(replica: Replica) -> None:
    replica.server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(replica.task), 20)
    except TimeoutError:
        replica.server.force_exit = True
        await asyncio.wait_for(replica.task, 10)
    replica.sock.close()


@contextlib.asynccontextmanager
async def replica_cluster(
    tmp_path: Path,
    regions: Sequence[str],
    per_region: int,
    *,
    quorum_timeout: float = 10.0,
    region_replicas: int | None = None,
) -> AsyncIterator[ReplicaCluster]:
    """``per_region`` replicas in each of ``regions``, all linked, until the block ends.

    ``region_replicas`` is what each is told its region's size is (default: ``per_region``, the truth).
    """
    members = names(regions, per_region)
    socks = {name: socket.create_server(("127.0.0.1", 0)) for name, _ in members}
    ports = {name: sock.getsockname()[1] for name, sock in socks.items()}
    cluster = ReplicaCluster()
    auth = AuthPolicy(tokens=TokenStore({TOKEN: Scope.READWRITE}))
    try:
        for name, region in members:
            node = Node(NodeConfig(region=region, data_dir=tmp_path / name, sync=False))
            replicator = Replicator(
                node,
                secret=SECRET,
                peers=[f"ws://127.0.0.1:{ports[other]}/v1/peer" for other, _ in members if other != name],
                region=region,
                region_replicas=per_region if region_replicas is None else region_replicas,
                transport=TransportSettings(backoff_max=0.3, close_timeout=1.0),
                settings=ReplicatorSettings(truncate_interval=None, quorum_timeout=quorum_timeout),
            )
            app = build_app(node, auth=auth, replicator=replicator)
            config = ServeConfig(region=region, port=ports[name], access_log=False, log_level="warning")
            (server_config,) = server_configs(app, config)
            server = uvicorn.Server(server_config)
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
            task = asyncio.create_task(server.serve(sockets=[socks[name]]))
            cluster.replicas[name] = Replica(name, region, node, replicator, ports[name], server, task, socks[name])
        for replica in cluster.replicas.values():
            started = replica.server
            assert await wait_for(lambda s=started: s.started, tries=1500), f"{replica.name} did not start"
        for name in cluster.replicas:
            await cluster.wait_linked(name)
        yield cluster
    finally:
        await asyncio.gather(*(_stop(r) for r in cluster.replicas.values() if r.up), return_exceptions=True)
        for sock in socks.values():
            sock.close()
