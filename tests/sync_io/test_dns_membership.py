"""Replicas that find each other by name: linked without dialing themselves, scaled without restarts,
and a removed replica that stops holding back log truncation after the grace (a down one does not).

Every replica resolves one name through a hosts file (:class:`crdtstore.membership.HostsFileResolver`)
that lists all of them, itself included, as a headless Service's A records do. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.membership import HostsFileResolver, Membership, PeerName
from crdtstore.node import Node, NodeConfig
from crdtstore.replicator import Replicator, ReplicatorSettings
from sync import messages as m
from sync.io.transport import TransportSettings

pytestmark = pytest.mark.slow

SECRET = b"dns-membership-test-secret-012345"
NAME = PeerName("crdtstore-peer.crdtstore-us.svc.cluster.local", 9443)


@dataclass
class Replica:
    node: Node
    replicator: Replicator
    port: int
    server: uvicorn.Server
    task: asyncio.Task[Any]
    sock: socket.socket

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 20)
        self.sock.close()


@dataclass
class Cluster:
    root: Path
    hosts: Path
    settings: ReplicatorSettings
    replicas: dict[str, Replica] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)

    def write_hosts(self) -> None:
        lines = [f"{NAME.name} 127.0.0.1:{self.replicas[n].port}\n" for n in self.listed]
        tmp = self.hosts.with_suffix(".new")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(self.hosts)  # atomic, as a DNS answer is

    async def start(self, name: str) -> Replica:
        sock = socket.create_server(("127.0.0.1", 0))
        node = Node(NodeConfig(region="us", data_dir=self.root / name, sync=False))
        membership = Membership([NAME], resolver=HostsFileResolver(self.hosts), interval=0.1)
        replicator = Replicator(
            node,
            secret=SECRET,
            region="us",
            region_replicas=3,
            membership=membership,
            transport=TransportSettings(backoff_max=0.3, close_timeout=1.0),
            settings=self.settings,
        )
        app = build_app(node, auth=AuthPolicy(tokens=TokenStore({"t" * 32: Scope.READWRITE})), replicator=replicator)
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        replica = Replica(node, replicator, sock.getsockname()[1], server, task, sock)
        self.replicas[name] = replica
        self.listed.append(name)
        self.write_hosts()
        assert await until(lambda: server.started), f"{name} did not start"
        return replica

    async def remove(self, name: str) -> None:
        self.listed.remove(name)
        self.write_hosts()


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, settings: ReplicatorSettings) -> AsyncIterator[Cluster]:
    hosts = tmp_path / "hosts"
    hosts.write_text("", encoding="utf-8")
    c = Cluster(tmp_path, hosts, settings)
    try:
        yield c
    finally:
        for replica in c.replicas.values():
            if not replica.task.done():
                await replica.stop()


REMOVED_GRACE = 4.0
"""Seconds a removed replica still counts, in the scaling test (short, so that the test sees it end)."""


async def until(predicate: Callable[[], Any], *, seconds: float = 20.0) -> bool:
    """Poll a sync or async predicate until true; False after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.05)
    return False


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=90))


def ids(c: Cluster, *names: str) -> list[str]:
    return sorted(c.replicas[n].node.storage.identity.base for n in names)


def test_replicas_found_by_name_link_to_each_other_never_to_themselves_and_scale_without_restarts(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        settings = ReplicatorSettings(truncate_interval=None, removed_peer_grace=REMOVED_GRACE)
        async with cluster(tmp_path, settings) as c:
            for name in ("a", "b", "c"):
                await c.start(name)
            for name in ("a", "b", "c"):
                rep = c.replicas[name].replicator
                others = [n for n in ("a", "b", "c") if n != name]
                assert await until(lambda rep=rep, o=others: rep.peers() == ids(c, *o)), (name, rep.peers())
                # Its own address was dialed once, recognised, and is dialed no more.
                assert await until(lambda rep=rep: len(rep._self_keys) == 1)
                (own,) = rep._self_keys
                assert own.endswith(f":{c.replicas[name].port}") and own not in rep._dialer_by_key
                assert await until(lambda rep=rep: rep.cluster_size == 3)  # membership, not links, counts
            await c.replicas["a"].node.apply("doc", [{"op": "increment", "path": ["n"]}])
            for name in ("b", "c"):
                node = c.replicas[name].node
                assert await until(lambda node=node: node.read_state("doc")), name

            # Scale up: "d" is listed, the others dial it, nobody restarts.
            before = {n: c.replicas[n].replicator for n in ("a", "b", "c")}
            await c.start("d")
            for name in ("a", "b", "c"):
                rep = c.replicas[name].replicator
                # Identified on the link it dialed to d's address (what membership knows d by).
                d = c.replicas["d"].node.storage.identity.base
                assert await until(lambda rep=rep, d=d: d in rep.peers() and d in rep._peer_ids.values())
                assert await until(lambda rep=rep: rep.cluster_size == 4)
            await c.replicas["d"].node.apply("from-d", [{"op": "increment", "path": ["n"]}])
            for name in ("a", "b", "c"):
                node = c.replicas[name].node
                assert await until(lambda node=node: node.read_state("from-d")), name
            assert await until(lambda: c.replicas["d"].node.read_state("doc"))

            # Scale down: "d" stops (the pod is deleted), then leaves the name; it no longer counts.
            d_id = c.replicas["d"].node.storage.identity.base
            await c.replicas["d"].stop()
            for name in ("a", "b", "c"):
                rep = c.replicas[name].replicator
                assert await until(lambda rep=rep: d_id not in rep.peers()), name
                assert rep.cluster_size == 4  # down, but still a member
            await c.remove("d")
            for name in ("a", "b", "c"):
                rep = c.replicas[name].replicator
                assert await until(lambda rep=rep: d_id in rep._departed), name
                assert len(rep._dialer_by_key) == 2
                if rep.now() - rep._departed[d_id] < REMOVED_GRACE * 0.8:  # always, unless the machine stalls
                    assert rep.cluster_size == 4  # quorums count a removed replica for the grace
            for name in ("a", "b", "c"):
                rep = c.replicas[name].replicator
                assert await until(lambda rep=rep: rep.cluster_size == 3), name  # then no longer
            assert {c.replicas[n].replicator for n in ("a", "b", "c")} == set(before.values())
            for name in ("a", "b", "c"):
                assert not c.replicas[name].task.done()  # none of them restarted or stopped

    run(main())


def test_a_link_claiming_a_nonce_we_did_not_send_is_not_taken_for_ourselves(tmp_path: Path) -> None:
    # The abuse of the self check: an accepted link whose Hello is garbage, or a Hello with a fresh nonce,
    # must not make a replica stop dialing anyone.
    async def main() -> None:
        async with cluster(tmp_path, ReplicatorSettings(truncate_interval=None)) as c:
            a = await c.start("a")
            await c.start("b")
            rep = a.replicator
            assert await until(lambda: len(rep._dialer_by_key) == 1 and len(rep._self_keys) == 1)
            assert rep._own_dialed_link(b"\x00garbage") is None
            hello = m.Hello(
                replica_id="x", origin="x.1.n", region="us", epoch=1, version=m.PROTOCOL_VERSION, nonce=b"n" * 16
            )
            assert rep._own_dialed_link(hello.encode()) is None
            assert len(rep._dialer_by_key) == 1 and len(rep._self_keys) == 1

    run(main())


async def _acked_by(rep: Replicator, peers: list[str], origin: str, seq: int) -> bool:
    return all(rep._acks.get(p, {}).get(origin, 0) >= seq for p in peers)


def test_a_removed_replica_stops_pinning_truncation_after_the_grace_and_a_down_member_keeps_pinning(
    tmp_path: Path,
) -> None:
    grace = 1.0

    async def main() -> None:
        settings = ReplicatorSettings(truncate_interval=None, removed_peer_grace=grace)
        async with cluster(tmp_path, settings) as c:
            a, _, cc = [await c.start(n) for n in ("a", "b", "c")]
            rep, origin = a.replicator, a.node.replica_id
            assert await until(lambda: rep.peers() == ids(c, "b", "c"))
            # Until every member is identified on the link dialed to it, nothing is truncated.
            assert await until(lambda: sorted(set(rep._peer_ids.values())) == ids(c, "b", "c"))
            for i in range(3):
                await a.node.apply(f"first-{i}", [{"op": "increment", "path": ["n"]}])
            assert await until(lambda: _acked_by(rep, ids(c, "b", "c"), origin, 3))
            assert await rep.truncate_once() == 3  # every member holds them

            # "c" goes down but stays listed: a member that is down.
            await cc.stop()
            assert await until(lambda: rep.peers() == ids(c, "b"))
            for i in range(2):
                await a.node.apply(f"second-{i}", [{"op": "increment", "path": ["n"]}])
            assert await until(lambda: _acked_by(rep, ids(c, "b"), origin, 5))
            assert await rep.truncate_once() == 0
            await asyncio.sleep(grace * 1.5)
            assert await rep.truncate_once() == 0  # still a member: it pins past the grace
            assert len(await a.node.log_range(origin, 0, 100)) == 2

            # "c" is removed from the name: it pins for the grace, then no longer.
            await c.remove("c")
            c_id = cc.node.storage.identity.base
            assert await until(lambda: c_id in rep._departed)
            assert await rep.truncate_once() == 0
            # Quorums keep counting it for the grace too: a name that answers nothing must not shrink them.
            assert rep.cluster_size == 3
            await asyncio.sleep(grace * 1.2)
            assert rep.cluster_size == 2
            assert await rep.truncate_once() == 2
            assert await a.node.log_range(origin, 0, 100) == []

    run(main())
