"""In-process uvicorn servers on 127.0.0.1 for the transport tests (bounded waits only)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve_app"]


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp, *, ping_interval: float = 20.0, ping_timeout: float = 20.0) -> AsyncIterator[int]:
    """Serve ``app`` on a free loopback port until the block ends; yields the port."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        lifespan="off",
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_timeout,
        ws_max_size=1 << 20,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "server did not start"
        yield port
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            server.force_exit = True
            await asyncio.wait_for(task, 5)
        sock.close()
