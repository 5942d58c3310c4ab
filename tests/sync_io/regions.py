"""Real region nodes on loopback for the peer-link security tests, served as ``crdtstore serve`` serves them.

Each region is a :class:`~crdtstore.node.Node` with its
:class:`~crdtstore.replicator.Replicator` behind the listeners that
:func:`crdtstore.server.server_configs` builds (the API one, and with
``peer_port`` a listener of its own for peer links), on sockets bound to
127.0.0.1. A :class:`Member` is a hand-driven :class:`~sync.protocol.PeerProtocol`
on a dialed link: it holds the secret (or not) and can say anything. Every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.config import ServeConfig
from crdtstore.node import Node, NodeConfig
from crdtstore.replicator import Replicator, ReplicatorSettings
from crdtstore.server import server_configs
from sync import messages as m
from sync._state import State
from sync.config import SyncConfig
from sync.events import PeerInfo
from sync.io.transport import ClientPeerConnection, TransportSettings, dial
from sync.protocol import PeerProtocol

__all__ = ["SECRET", "TOKEN", "Member", "Region", "run_region", "wait_for"]

TOKEN = "peer-auth-test-token-0123456789ab"
SECRET = b"peer-auth-test-secret-0123456789"


@dataclass
class Region:
    node: Node
    replicator: Replicator
    api_port: int
    peer_port: int

    @property
    def peer_url(self) -> str:
        return f"ws://127.0.0.1:{self.peer_port}/v1/peer"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def snapshot(self, doc_ids: Sequence[str]) -> tuple[bytes, dict[str, int], list[bytes | None]]:
        """Merkle root, version vector and the states of ``doc_ids``: what a bad frame must not change."""
        return (
            await self.node.merkle_root(),
            dict(await self.node.version_vector()),
            list(await self.node.read_states(list(doc_ids))),
        )

    async def healthy(self) -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(self.api_url + "/healthz")).status_code == 200


async def wait_for(predicate: object, *, tries: int = 500, delay: float = 0.02) -> bool:
    """Poll ``predicate`` (a sync or async callable) until true; False after ``tries`` polls."""
    for _ in range(tries):
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(delay)
    return False


@contextlib.asynccontextmanager
async def run_region(
    tmp_path: Path,
    name: str,
    *,
    peers: Sequence[str] = (),
    peer_port: bool = False,
    sync_config: SyncConfig | None = None,
) -> AsyncIterator[Region]:
    """One region node serving on loopback until the block ends."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2 if peer_port else 1)]
    ports = [s.getsockname()[1] for s in socks]
    node = Node(NodeConfig(region=name, data_dir=tmp_path / name, sync=False))
    replicator = Replicator(
        node,
        secret=SECRET,
        peers=list(peers),
        region=name,
        transport=TransportSettings(backoff_max=0.5, close_timeout=1.0),
        settings=ReplicatorSettings(truncate_interval=None),
        sync_config=sync_config,
    )
    auth = AuthPolicy(tokens=TokenStore({TOKEN: Scope.READWRITE}))
    app = build_app(node, auth=auth, replicator=replicator, peer_links=not peer_port)
    config = ServeConfig(
        region=name,
        port=ports[0],
        peer_port=ports[1] if peer_port else None,
        access_log=False,
        log_level="warning",
    )
    servers = [uvicorn.Server(c) for c in server_configs(app, config)]
    tasks = []
    for server, sock in zip(servers, socks, strict=True):
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
    region = Region(node, replicator, ports[0], ports[-1])
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def ready() -> bool:
                if not all(s.started for s in servers):
                    return False
                return (await client.get(region.api_url + "/readyz")).status_code == 200

            assert await wait_for(ready), "region did not start"
        yield region
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        for sock in socks:
            sock.close()


class Member:
    """A peer we drive by hand over a real link: a member if it holds ``secret``, a stranger otherwise."""

    def __init__(self, name: str = "member", *, secret: bytes = SECRET) -> None:
        self.proto = PeerProtocol(
            our=PeerInfo(name, f"{name}.1.{secrets.token_hex(4)}", "rx", 1),
            secret=secret,
            nonce=secrets.token_bytes(16),
            now=0.0,
            our_vector={},
        )
        self.conn: ClientPeerConnection | None = None
        self.received: list[m.Message] = []

    async def connect(self, url: str) -> None:
        self.conn = await dial(url, settings=TransportSettings(close_timeout=1.0))

    async def handshake(self, url: str) -> None:
        """Dial and complete the handshake (bounded)."""
        await self.connect(url)
        assert self.conn is not None
        for _ in range(20):
            await self.flush()
            if self.proto.state is State.OPEN:
                self.proto.events_received()
                return
            data = await asyncio.wait_for(self.conn.recv(), 5)
            assert data is not None, f"link closed during the handshake ({self.conn.close_code})"
            self.proto.receive_message(data)
            if self.proto.peer_verified:
                self.conn.lift_limit()
        raise AssertionError("no handshake")

    async def flush(self) -> None:
        assert self.conn is not None
        for data in self.proto.messages_to_send():
            await self.conn.send(data)

    async def send_raw(self, data: bytes) -> None:
        assert self.conn is not None
        await self.conn.send(data)

    async def recv_until_closed(self, *, limit: int = 1000) -> int | None:
        """Read (and decode what it can) until the node closes the link; its close code."""
        assert self.conn is not None
        for _ in range(limit):
            data = await asyncio.wait_for(self.conn.recv(), 10)
            if data is None:
                return self.conn.close_code
            self.proto.receive_message(data)
        raise AssertionError("the link stayed open")

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
