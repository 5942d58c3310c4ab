"""Our side of the collaboration benchmark: one crdtstore node serving ``/v1/docs/{id}/live``.

Usage::

    python bench/collab/crdtstore_server.py PORT DATA_DIR

Listens on 127.0.0.1:PORT (0: any free port) with the node's defaults
(LMDB, fsync'd group commit: an ack means durable), no token needed (the
benchmark is loopback only). Prints ``listening PORT`` once it accepts
connections; stops on SIGTERM or SIGINT (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import uvicorn

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope
from crdtstore.api.peerlink import GatedWebSocketProtocol
from crdtstore.node import Node, NodeConfig

__all__ = ["main"]


class _Announcing(uvicorn.Server):
    """Says ``listening PORT`` once startup (the node's start) is complete."""

    port = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        sys.stdout.write(f"listening {self.port}\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    port, data = int(argv[0]), Path(argv[1])
    node = Node(NodeConfig(region="bench", data_dir=data))
    app = build_app(node, auth=AuthPolicy(anonymous=Scope.READWRITE))
    sock = socket.create_server(("127.0.0.1", port))
    # The node's own websocket protocol, as `crdtstore serve` runs it: its synchronous write serves the live fan-out.
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws_per_message_deflate=False, ws=GatedWebSocketProtocol
    )
    server = _Announcing(config)
    server.port = sock.getsockname()[1]
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
