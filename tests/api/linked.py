"""Linked region nodes on loopback for the metrics and link-cut tests: each dials every other one.

Each region is a real :class:`~crdtstore.node.Node` and
:class:`~crdtstore.replicator.Replicator` behind the listener that
``crdtstore serve`` builds, bound to 127.0.0.1 before any of them starts (so
every peer list is known up front). Regions can be stopped one at a time.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.config import ServeConfig
from crdtstore.node import Node, NodeConfig
from crdtstore.replicator import Replicator, ReplicatorSettings
from crdtstore.server import server_configs
from sync.config import SyncConfig
from sync.io.transport import TransportSettings
from tests.api.helpers import ADMIN_TOKEN, READ_TOKEN, RW_TOKEN

__all__ = ["Linked", "linked_regions", "scrape", "wait_for"]

SECRET = b"linked-regions-test-secret-0123456789"


async def wait_for(predicate: Any, *, seconds: float = 20.0, delay: float = 0.05) -> bool:
    """Poll ``predicate`` (sync or async) until true; False after ``seconds``."""
    for _ in range(int(seconds / delay)):
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(delay)
    return False


@dataclass
class _Running:
    node: Node
    replicator: Replicator
    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str


@dataclass
class Linked:
    """The running regions, by name."""

    regions: dict[str, _Running] = field(default_factory=dict)
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=10))

    def url(self, name: str) -> str:
        return self.regions[name].url

    def replicator(self, name: str) -> Replicator:
        return self.regions[name].replicator

    def peer_id(self, name: str) -> str:
        """The stable replica id the other regions know ``name`` by."""
        return self.regions[name].node.storage.identity.base

    async def call(self, name: str, method: str, path: str, *, token: str = RW_TOKEN, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return await self.client.request(method, self.url(name) + path, headers=headers, **kw)

    async def write(self, name: str, doc_id: str, *, level: str = "one", timeout: float | None = None) -> int:
        query = f"?w={level}" + (f"&timeout={timeout}" if timeout else "")
        ops = {"ops": [{"op": "increment", "path": ["n"]}]}
        return (await self.call(name, "POST", f"/v1/docs/{doc_id}{query}", json=ops)).status_code

    async def stop(self, name: str) -> None:
        running = self.regions.pop(name)
        running.server.should_exit = True
        await asyncio.wait_for(running.task, 20)


async def scrape(linked: Linked, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` of ``name`` as ``(sample name, sorted labels) -> value``."""
    from prometheus_client.parser import text_string_to_metric_families

    response = await linked.call(name, "GET", "/metrics", token=READ_TOKEN)
    assert response.status_code == 200, response.text
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@contextlib.asynccontextmanager
async def linked_regions(
    tmp_path: Path,
    names: Sequence[str] = ("us", "eu"),
    *,
    truncate_interval: float | None = 0.2,
    sync_config: SyncConfig | None = None,
    quorum_timeout: float = 5.0,
    secrets: Mapping[str, tuple[bytes, tuple[bytes, ...]]] | None = None,
) -> AsyncIterator[Linked]:
    """Every region of ``names`` serving on loopback and dialing the others, until the block ends.

    ``secrets``: per region, the cluster secret it proves itself with and those it also accepts
    (default: one shared secret).
    """
    socks = {name: socket.create_server(("127.0.0.1", 0)) for name in names}
    ports = {name: s.getsockname()[1] for name, s in socks.items()}
    tokens = TokenStore({RW_TOKEN: Scope.READWRITE, READ_TOKEN: Scope.READ, ADMIN_TOKEN: Scope.ADMIN})
    linked = Linked()
    try:
        for name in names:
            node = Node(NodeConfig(region=name, data_dir=tmp_path / name, sync=False))
            secret, accepted = (secrets or {}).get(name, (SECRET, ()))
            replicator = Replicator(
                node,
                secret=secret,
                accepted_secrets=accepted,
                peers=[f"ws://127.0.0.1:{ports[other]}/v1/peer" for other in names if other != name],
                region=name,
                transport=TransportSettings(backoff_max=0.3, close_timeout=1.0),
                settings=ReplicatorSettings(truncate_interval=truncate_interval, quorum_timeout=quorum_timeout),
                sync_config=sync_config,
            )
            app = build_app(node, auth=AuthPolicy(tokens=tokens), replicator=replicator)
            config = ServeConfig(region=name, port=ports[name], access_log=False, log_level="warning")
            (server_config,) = server_configs(app, config)
            server = uvicorn.Server(server_config)
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
            task = asyncio.create_task(server.serve(sockets=[socks[name]]))
            linked.regions[name] = _Running(node, replicator, server, task, f"http://127.0.0.1:{ports[name]}")

        async def ready() -> bool:
            for running in linked.regions.values():
                if not running.server.started:
                    return False
                if (await linked.client.get(running.url + "/readyz")).status_code != 200:
                    return False
            return True

        assert await wait_for(ready), "regions did not start"
        yield linked
    finally:
        for name in list(linked.regions):
            await linked.stop(name)
        await linked.client.aclose()
        for sock in socks.values():
            sock.close()
