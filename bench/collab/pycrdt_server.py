"""The pycrdt-websocket peer: a ``WebsocketServer`` whose rooms persist to pycrdt-store's ``SQLiteYStore``.

Usage::

    python bench/collab/pycrdt_server.py PORT DB_PATH

Listens on 127.0.0.1:PORT; the websocket path names the room (the document),
as in pycrdt-websocket. Prints ``listening PORT`` once it accepts connections,
and stops on SIGTERM or SIGINT.

Every room gets its own ``SQLiteYStore`` on the one database file (the
store's ``path`` is the room name). A room applies a client's update to its
document, then sends the update to every client of the room, the sender
included, and starts the store write in the background: the write neither
holds back the broadcast nor answers anything to the client.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from pycrdt.store import SQLiteYStore
from pycrdt.websocket import WebsocketServer, YRoom, exception_logger
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["main"]


class WebsocketsChannel:
    """A pycrdt ``Channel`` over one connection of the ``websockets`` library (its path is the room name)."""

    def __init__(self, websocket: ServerConnection) -> None:
        self._websocket = websocket
        self._path = websocket.request.path if websocket.request is not None else "/"

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except Exception as exc:  # the connection closed: the room stops serving this client
            raise StopAsyncIteration from exc

    async def send(self, message: bytes) -> None:
        # A room broadcasts from tasks of its own task group: a send to a client that just left would
        # fail the group and stop the room for everyone (then the server, as the room's stop path raises
        # "Awareness not started"). A client that left needs nothing more.
        try:
            await self._websocket.send(message)
        except ConnectionClosed:
            pass

    async def recv(self) -> bytes:
        message = await self._websocket.recv()
        return message if isinstance(message, bytes) else message.encode()


class StoredWebsocketServer(WebsocketServer):
    """pycrdt-websocket's server, each room with a SQLite store (the library's rooms have none by default)."""

    def __init__(self, db_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store_class = type("BenchSQLiteYStore", (SQLiteYStore,), {"db_path": db_path})

    async def get_room(self, name: str) -> YRoom:
        if name not in self.rooms:
            self.rooms[name] = YRoom(
                ready=self.rooms_ready,
                ystore=self._store_class(path=name, log=self.log),
                exception_handler=self.exception_handler,
                log=self.log,
            )
        room = self.rooms[name]
        await self.start_room(room)
        return room


async def run(port: int, db_path: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The library's exception_logger: a failing client or room is logged instead of stopping the server.
    async with StoredWebsocketServer(db_path, exception_handler=exception_logger) as ws_server:

        async def handler(websocket: ServerConnection) -> None:
            await ws_server.serve(WebsocketsChannel(websocket))

        # No permessage-deflate, as on the Hocuspocus side (ws servers leave it off by default): the
        # comparison is of the CRDT servers, not of zlib. The other limits are the library's defaults.
        async with serve(handler, "127.0.0.1", port, compression=None) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            print(f"listening {bound}", flush=True)
            await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(int(argv[0]), argv[1]))
    else:
        uvloop.run(run(int(argv[0]), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
