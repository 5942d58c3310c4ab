"""Three regions as real ``crdtstore serve`` processes behind an emulated WAN run by this test process.

Each region has its own data directory and port on 127.0.0.1 and dials the
other two through :class:`sync.io.wanproxy.WanController` links; the cluster
secret comes from the environment. The tests write concurrently to every
region while links are cut (closed or silently held) and healed and one
region at a time is killed with SIGKILL (by its own pid) and restarted on
the same port; afterwards every region must hold identical documents
(values and version tokens: equal tokens mean equal causal contexts, hence
equal states and equal bytes), every acknowledged write must be there, and
the Merkle roots must be equal. A second test checks read-your-writes across
regions with ``w=quorum`` + ``r=quorum`` (R + W > N), also while a minority
region is partitioned, and the ``w=all`` 504 path.

Every wait is bounded in count and time; no assertion is about timing.
``CRDTSTORE_DEEP=1`` runs more fault cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sync.io.wanproxy import WanController
from tests.server_helpers import RW, ServerProcess, write_tokens

__all__: list[str] = []

pytestmark = pytest.mark.slow

DEEP = os.environ.get("CRDTSTORE_DEEP") == "1" or os.environ.get("HYPOTHESIS_PROFILE") == "deep"
CYCLES = 8 if DEEP else 2
REGIONS = ("eu", "us", "ap")
SECRET = "cluster-test-secret-0123456789abcdef"
DOCS = 4
HEADERS = {"Authorization": f"Bearer {RW}"}


def free_port() -> int:
    """A free port below the kernel's ephemeral range, so no outgoing connection can take it meanwhile.

    A region keeps its port across kill -9 and restart (the WAN proxy targets
    it), so the port is chosen before the process binds it. A port the kernel
    handed out for ``bind(0)`` is an ephemeral one, which the dialers' own
    outgoing connections may be given in between (seen as EADDRINUSE in CI).
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):  # bounded: almost every port down there is free on a test machine
        port = random.SystemRandom().randrange(10_000, low)
        with contextlib.suppress(OSError), socket.create_server(("127.0.0.1", port)):
            return port
    raise RuntimeError(f"no free port between 10000 and {low}")


@dataclass(eq=False)
class Cluster:
    """Three region processes and the WAN between them (all on loopback)."""

    root: Path
    wan: WanController = field(default_factory=lambda: WanController(REGIONS, latency=0.005, jitter=0.002, seed=1))
    procs: dict[str, ServerProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, region: str) -> str:
        # The fixed port, not the process's: a writer asks for it while the region restarts.
        return f"http://127.0.0.1:{self.ports[region]}"

    def _process(self, region: str, port: int) -> ServerProcess:
        tokens = write_tokens(self.root / "tokens")
        args = ["--region", region, "--data", str(self.root / region / "data"), "--tokens", str(tokens)]
        args += ["--port", str(port), "--access-log", "false"]
        # Loopback links: notice a cut quickly, reconnect quickly (backoff cap at most 2 s in tests).
        args += ["--peer-ping-interval", "0.5", "--peer-ping-timeout", "1", "--peer-backoff-max", "0.5"]
        for peer in self.wan.peers_of(region, path="/v1/peer"):
            args += ["--peer", peer]
        workdir = self.root / region
        workdir.mkdir(parents=True, exist_ok=True)
        return ServerProcess(workdir, args, env={"CRDTSTORE_CLUSTER_SECRET": SECRET})

    async def start(self) -> None:
        self.wan.bind()
        await self.wan.start()
        self.ports = {region: free_port() for region in REGIONS}
        for region in REGIONS:
            self.wan.set_target(region, "127.0.0.1", self.ports[region])
            self.procs[region] = self._process(region, self.ports[region])
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in self.procs.values()))

    async def kill9(self, region: str) -> None:
        await asyncio.to_thread(self.procs[region].kill)

    async def restart(self, region: str) -> None:
        """Start the region again on its directory, on the same port (WAN target unchanged)."""
        await asyncio.to_thread(self.procs[region].start)

    async def close(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(p.stop, timeout=10.0) for p in self.procs.values()))
        await self.wan.close()

    async def wait_linked(self, client: httpx.AsyncClient, *, timeout: float = 30.0) -> None:
        """Until every region has authenticated links to both others (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            peers = []
            for region in REGIONS:
                with contextlib.suppress(httpx.HTTPError):
                    peers.append(len((await client.get(self.url(region) + "/v1/admin/links")).json()["peers"]))
            if peers == [2, 2, 2]:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"regions not linked after {timeout}s: {peers}")

    async def wait_truncated(self, client: httpx.AsyncClient, *, timeout: float = 20.0) -> None:
        """Until every region reports log entries truncated since its last start (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        counts: list[int] = []
        while loop.time() < deadline:
            counts = []
            for region in REGIONS:
                stats = (await client.get(self.url(region) + "/v1/admin/links")).json().get("stats", {})
                counts.append(int(stats.get("log_truncated", 0)))
            if all(counts):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"logs not truncated within {timeout}s: {counts}")

    async def snapshot(self, client: httpx.AsyncClient, doc_ids: list[str]) -> dict[str, Any]:
        """Per region: each document's (value, version) and the Merkle root."""
        out: dict[str, Any] = {}
        for region in REGIONS:
            base = self.url(region)
            docs = {}
            for doc_id in doc_ids:
                response = await client.get(f"{base}/v1/docs/{doc_id}")
                body = response.json()
                docs[doc_id] = (response.status_code, body.get("value"), body.get("version"))
            root = (await client.get(base + "/v1/admin/merkle")).json()["root"]
            out[region] = {"docs": docs, "root": root}
        return out

    async def converged(
        self, client: httpx.AsyncClient, doc_ids: list[str], *, timeout: float = 40.0
    ) -> dict[str, Any]:
        """Wait (bounded) until every region returns the same documents and root; return that state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: dict[str, Any] = {}
        while loop.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                last = await self.snapshot(client, doc_ids)
                states = [last[r] for r in REGIONS]
                if all(s == states[0] for s in states):
                    return states[0]
            await asyncio.sleep(0.2)
        raise AssertionError(f"no convergence within {timeout}s: {last}")


@contextlib.asynccontextmanager
async def running_cluster(root: Path) -> AsyncIterator[tuple[Cluster, httpx.AsyncClient]]:
    cluster = Cluster(root)
    try:
        await cluster.start()
        async with httpx.AsyncClient(headers=HEADERS, timeout=10.0) as client:
            await cluster.wait_linked(client)
            yield cluster, client
    finally:
        await cluster.close()


@dataclass
class Writes:
    """What one region's writer attempted and what was acknowledged (a value names one batch)."""

    attempted: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)


async def writer(cluster: Cluster, client: httpx.AsyncClient, region: str, stop: asyncio.Event, log: Writes) -> None:
    """Write batches (increment + add, atomic) to ``region`` until ``stop``; failures are retried later."""
    for i in range(100_000):  # bounded; ``stop`` ends it long before
        if stop.is_set():
            return
        value = f"{region}-{i}"
        ops = [{"op": "increment", "path": ["n"]}, {"op": "add", "path": ["s"], "value": value}]
        log.attempted.add(value)
        try:
            response = await client.post(f"{cluster.url(region)}/v1/docs/d{i % DOCS}", json={"ops": ops}, timeout=5.0)
        except httpx.HTTPError:
            await asyncio.sleep(0.05)  # the region is down or its socket was cut: the write may or may not be in
            continue
        if response.status_code == 200:
            log.acked.add(value)
        else:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.005)


async def faults(cluster: Cluster, cycles: int) -> None:
    """Per cycle: cut a pair (close), silently isolate a region (hold), kill -9 and restart another."""
    wan = cluster.wan
    for cycle in range(cycles):
        a, b, c = (REGIONS[(cycle + k) % 3] for k in range(3))
        await asyncio.sleep(0.5)
        wan.partition(a, b)
        await asyncio.sleep(1.0)
        wan.heal(a, b)
        wan.isolate(c, mode="hold")
        await asyncio.sleep(1.5)  # longer than the ping timeout: the held links are detected dead
        wan.heal_all()
        await asyncio.sleep(0.5)
        await cluster.kill9(b)
        await asyncio.sleep(0.5)  # writes to the other regions go on meanwhile
        await cluster.restart(b)
        await asyncio.sleep(0.5)


def test_concurrent_writes_survive_cuts_and_kill9_and_converge(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_cluster(tmp_path) as (cluster, client):
            stop = asyncio.Event()
            logs = {region: Writes() for region in REGIONS}
            writers = [asyncio.create_task(writer(cluster, client, r, stop, logs[r])) for r in REGIONS]
            try:
                await faults(cluster, CYCLES)
            finally:
                stop.set()
                await asyncio.gather(*writers)
            cluster.wan.heal_all()
            doc_ids = [f"d{i}" for i in range(DOCS)]
            state = await cluster.converged(client, doc_ids)
            acked = set().union(*(log.acked for log in logs.values()))
            attempted = set().union(*(log.attempted for log in logs.values()))
            assert all(len(log.acked) > 0 for log in logs.values()), "every region acknowledged writes"
            present: set[str] = set()
            for doc_id in doc_ids:
                status, value, version = state["docs"][doc_id]
                assert status == 200 and version
                # A batch is atomic: one increment per added value, never one without the other.
                assert value["n"] == len(value["s"])
                present |= set(value["s"])
            assert acked <= present, f"lost acknowledged writes: {sorted(acked - present)[:10]}"
            assert present <= attempted  # nothing appears that was never sent
            assert state["root"] != "00" * 16
            # Equal version tokens mean equal causal contexts; the replicas' encoded states match too.
            for doc_id in doc_ids:
                states = {(await client.get(f"{cluster.url(r)}/v1/docs/{doc_id}?siblings=true")).text for r in REGIONS}
                assert len(states) == 1
            # Once every configured peer acknowledged, each region truncates its delta log.
            await cluster.wait_truncated(client)

    asyncio.run(asyncio.wait_for(scenario(), timeout=150))


def test_read_your_writes_across_regions_and_the_504_path(tmp_path: Path) -> None:
    async def add(client: httpx.AsyncClient, url: str, value: str, level: str) -> httpx.Response:
        ops = [{"op": "add", "path": ["s"], "value": value}]
        return await client.post(f"{url}/v1/docs/ryw?w={level}", json={"ops": ops})

    async def read(client: httpx.AsyncClient, url: str, level: str) -> list[str]:
        response = await client.get(f"{url}/v1/docs/ryw?r={level}")
        assert response.status_code == 200, response.text
        return response.json()["value"]["s"]

    async def scenario() -> None:
        async with running_cluster(tmp_path) as (cluster, client):
            # W = 2 and R = 2 of N = 3: every read quorum meets every write quorum.
            for k in range(6):
                a, b = REGIONS[k % 3], REGIONS[(k + 1) % 3]
                response = await add(client, cluster.url(a), f"v{k}", "quorum")
                assert response.status_code == 200, response.text
                assert f"v{k}" in await read(client, cluster.url(b), "quorum")
            # A minority region cut off: quorum writes and reads still meet in the majority.
            cluster.wan.isolate("ap")
            for k in range(4):
                a, b = ("eu", "us") if k % 2 == 0 else ("us", "eu")
                response = await add(client, cluster.url(a), f"p{k}", "quorum")
                assert response.status_code == 200, response.text
                assert f"p{k}" in await read(client, cluster.url(b), "quorum")
            # w=all cannot be met while ap is cut: 504 with what was reached, durable locally all the same.
            response = await add(client, cluster.url("eu"), "all-cut", "all")
            assert response.status_code == 504, response.text
            body = response.json()
            assert body["error"] == "quorum_timeout"
            assert body["detail"]["needed"] == 3 and body["detail"]["reached"] == 2
            assert body["detail"]["durable_locally"] is True
            assert "all-cut" in await read(client, cluster.url("eu"), "one")
            assert "all-cut" not in await read(client, cluster.url("ap"), "one")
            cluster.wan.heal_all()
            # After the heal every write replicates to ap by itself (bounded wait; no new write needed).
            # Wait for all of them: the eu and us writes come over different links, in either order.
            expected = {"all-cut"} | {f"v{k}" for k in range(6)} | {f"p{k}" for k in range(4)}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30.0
            seen: list[str] = []
            while loop.time() < deadline:
                seen = await read(client, cluster.url("ap"), "one")
                if expected <= set(seen):
                    break
                await asyncio.sleep(0.1)
            assert expected <= set(seen), sorted(expected - set(seen))
            response = await add(client, cluster.url("ap"), "all-healed", "all")
            assert response.status_code == 200, response.text

    asyncio.run(asyncio.wait_for(scenario(), timeout=120))
