"""Two region nodes in one process, linked by websockets: deltas replicate, quorum levels are met."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import uvicorn

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.node import Node, NodeConfig
from crdtstore.replicator import Replicator
from sync.transport import TransportSettings

TOKEN = "replicator-test-token-0123456789"
SECRET = b"replicator-test-secret-0123456789"


def test_writes_replicate_both_ways_and_quorum_levels_are_met(tmp_path: Path) -> None:
    async def scenario() -> None:
        socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
        ports = [s.getsockname()[1] for s in socks]
        servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        for i in range(2):
            node = Node(NodeConfig(region=f"r{i}", data_dir=tmp_path / f"r{i}", sync=False))
            replicator = Replicator(
                node,
                secret=SECRET,
                peers=[f"ws://127.0.0.1:{ports[1 - i]}/v1/peer"],
                region=f"r{i}",
                transport=TransportSettings(backoff_max=0.5, close_timeout=1.0),
            )
            auth = AuthPolicy(tokens=TokenStore({TOKEN: Scope.READWRITE}))
            server = uvicorn.Server(
                uvicorn.Config(build_app(node, auth=auth, replicator=replicator), log_config=None, lifespan="on")
            )
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
            servers.append((server, asyncio.create_task(server.serve(sockets=[socks[i]]))))
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        try:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
                for _ in range(300):  # bounded wait for both lifespans
                    if all([(await client.get(u + "/readyz")).status_code == 200 for u in urls]):
                        break
                    await asyncio.sleep(0.02)
                # w=all waits for the peer: the write is then readable there at r=one.
                for i in range(5):
                    for url in urls:
                        ops = [{"op": "increment", "path": ["n"]}, {"op": "add", "path": ["s"], "value": f"{url}-{i}"}]
                        response = await client.post(f"{url}/v1/docs/d?w=all", json={"ops": ops})
                        assert response.status_code == 200, response.text
                values = [(await client.get(f"{u}/v1/docs/d?r=all")).json()["value"] for u in urls]
                assert values[0] == values[1]
                assert values[0]["n"] == 10
                assert sorted(values[0]["s"]) == sorted(f"{u}-{i}" for u in urls for i in range(5))
        finally:
            for server, _ in servers:
                server.should_exit = True
            await asyncio.wait_for(asyncio.gather(*(task for _, task in servers)), 20)
            for sock in socks:
                sock.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
