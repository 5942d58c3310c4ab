"""Load driver for the pycrdt-websocket peer: E pycrdt editors typing into one shared text.

Usage::

    python bench/collab/pycrdt_driver.py --url ws://127.0.0.1:PORT/doc --editors 50 --rate 5 --seconds 60

Each editor is a ``pycrdt.Doc`` on its own websocket (the ``websockets``
library), speaking the y-websocket sync protocol as pycrdt's ``Provider``
does: sync step 1 on connect, then one update message per local
transaction, every received update applied to the editor's document. It
types one ASCII character per transaction at ``--rate`` per second (open
loop: keystroke k is scheduled at phase + k / rate whatever happened
before),
at a cursor that follows its own typing (a pycrdt sticky index) and jumps
to a random spot every few characters.

What is measured, per keystroke, from the moment it is typed and sent
(editors never wait for acks, so a server stall cannot hold sends back and
hide itself; how late the driver types against the schedule is reported
apart, as ``send_lag_ms_p99``: when it grows, the driver's own process is
short of CPU and every latency it reports is inflated by as much):

- ack: pycrdt-websocket has no acknowledgement message. A room applies an
  update, then sends it to every client of the room, the sender included,
  and starts the store write in the background. The closest thing to an
  ack is that echo: the moment the sender's own keystroke comes back from
  the server (the server holds it in memory; it is not yet on disk).
- remote-visible: the moment another editor has applied it to its document.

Keystrokes are keyed by (client id, clock): a fresh document that only
inserts one ASCII character per transaction gives its k-th keystroke clock
k, and ``yupdate.clock_ranges`` reads the clocks an update carries.

Standard output: ``{"event": "start"}`` when typing starts and
``{"event": "end"}`` when it stops (the harness reads the server's CPU time
at both), then one JSON line with the results. Every loop is bounded: the
typing by ``--seconds``, the wait for stragglers by ``--drain``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import time
from pathlib import Path
from typing import Any

from pycrdt import (
    Assoc,
    Doc,
    StickyIndex,
    Text,
    TransactionEvent,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
import drivers  # noqa: E402
from drivers import emit, p50_p99, percentile_ms, run_summary  # noqa: E402
from yupdate import UpdateFormatError, clock_ranges  # noqa: E402

__all__ = ["main"]


class Shared:
    """What all editors of this driver share: keystroke times, and the latencies measured."""

    def __init__(self) -> None:
        self.sent_at: dict[int, list[float]] = {}  # client id -> when its k-th keystroke was typed and sent
        self.ack_latency: list[float] = []
        self.visible_latency: list[float] = []
        self.send_lag: list[float] = []
        self.acked_in_window = 0
        self.window_end = float("inf")
        self.unreadable_updates = 0


class Editor:
    """One editor: a pycrdt document on its own websocket."""

    def __init__(self, index: int, url: str, shared: Shared, rng: random.Random) -> None:
        self.index = index
        self.url = url
        self.shared = shared
        self.rng = rng
        self.doc = Doc()
        self.text = self.doc.get("text", type=Text)
        self.client_id = self.doc.client_id
        self.char = chr(ord("a") + index % 26)
        self.sent = 0
        self.acked = 0
        self.seen: dict[int, int] = {}  # other client id -> how many of its keystrokes this editor shows
        self.synced = asyncio.Event()
        self._outgoing: bytes | None = None
        self._local = False
        self._cursor: StickyIndex | None = None
        self._run_left = 0
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        shared.sent_at[self.client_id] = []
        self.doc.observe(self._on_transaction)

    def _on_transaction(self, event: TransactionEvent) -> None:
        # What a provider sends: the update of a local transaction (remote ones came from the server).
        if self._local:
            self._outgoing = event.update

    async def open(self) -> None:
        # Limits as a pycrdt client gets them from websockets; no deflate, as on the server.
        self._ws = await connect(self.url, compression=None, open_timeout=30)
        self._reader = asyncio.create_task(self._read())
        await self._ws.send(create_sync_message(self.doc))

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if isinstance(message, bytes) and message[0] == YMessageType.SYNC:
                    await self._on_sync(message)
        except Exception:  # the connection closed; what was not seen is counted at the end
            return

    async def _on_sync(self, message: bytes) -> None:
        kind = message[1]
        if kind == YSyncMessageType.SYNC_UPDATE:
            update = read_message(message[2:])
            self.doc.apply_update(update)
            self._measure(update, time.perf_counter())
            return
        reply = handle_sync_message(message[1:], self.doc)
        if kind == YSyncMessageType.SYNC_STEP2:
            self.synced.set()
        if reply is not None and self._ws is not None:
            await self._ws.send(reply)

    def _measure(self, update: bytes, now: float) -> None:
        shared = self.shared
        try:
            ranges = clock_ranges(update)
        except UpdateFormatError:
            shared.unreadable_updates += 1
            return
        for client, (_, end) in ranges.items():
            times = shared.sent_at.get(client)
            if times is None:
                continue
            if client == self.client_id:
                end = min(end, self.sent)
                for k in range(self.acked, end):
                    shared.ack_latency.append(now - times[k])
                if now <= shared.window_end and end > self.acked:
                    shared.acked_in_window += end - self.acked
                self.acked = max(self.acked, end)
            else:
                seen = self.seen.get(client, 0)
                end = min(end, len(times))
                for k in range(seen, end):
                    shared.visible_latency.append(now - times[k])
                self.seen[client] = max(seen, end)

    def _next_index(self) -> int:
        if self._cursor is None or self._run_left <= 0:
            self._run_left = self.rng.randint(3, 30)
            return self.rng.randint(0, len(self.text))
        return self._cursor.get_index()

    async def type_until(self, t0: float, t_end: float, rate: float) -> None:
        """Type one character at a time on schedule until ``t_end``."""
        assert self._ws is not None
        phase = self.rng.random() / rate
        times = self.shared.sent_at[self.client_id]
        k = 0
        while (due := t0 + phase + k / rate) < t_end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            index = self._next_index()
            self._local = True
            try:
                self.text.insert(index, self.char)
            finally:
                self._local = False
            self._cursor = self.text.sticky_index(index + 1, Assoc.BEFORE)
            self._run_left -= 1
            update, self._outgoing = self._outgoing, None
            assert update is not None
            typed = time.perf_counter()
            times.append(typed)
            self.shared.send_lag.append(typed - due)
            self.sent += 1
            k += 1
            try:
                await self._ws.send(create_update_message(update))
            except Exception:  # the server went away: the unacknowledged rest is counted at the end
                return

    def caught_up(self, sent_by: dict[int, int]) -> bool:
        if self.acked < self.sent:
            return False
        return all(self.seen.get(c, 0) >= n for c, n in sent_by.items() if c != self.client_id and n)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    shared = Shared()
    editors = [Editor(i, args.url, shared, random.Random(rng.getrandbits(64))) for i in range(args.editors)]
    # The first editor opens the room alone: with pycrdt-websocket 0.16.5, twenty clients opening a new
    # room at once mostly get no sync reply at all (and the server then ignores SIGTERM). Once the room
    # runs, any number may join together.
    await drivers.open_editors(editors, first_alone=True)

    t0 = time.perf_counter() + 0.2
    t_end = t0 + args.seconds
    shared.window_end = t_end

    async def mark(event: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        emit({"event": event})

    await asyncio.gather(mark("start", t0), mark("end", t_end), *(e.type_until(t0, t_end, args.rate) for e in editors))

    # Stragglers: wait (bounded) until every keystroke is acknowledged and visible everywhere.
    sent_by = {e.client_id: e.sent for e in editors}
    drain_deadline = time.perf_counter() + args.drain
    while time.perf_counter() < drain_deadline and not all(e.caught_up(sent_by) for e in editors):
        await asyncio.sleep(0.05)
    texts = [str(e.text) for e in editors]
    await asyncio.gather(*(e.close() for e in editors))

    sent = sum(sent_by.values())
    expected_visible = sent * (len(editors) - 1)
    summary = run_summary(
        "pycrdt-websocket",
        args,
        sent=sent,
        acked=sum(e.acked for e in editors),
        acked_in_window=shared.acked_in_window,
        ack_latency=shared.ack_latency,
    )
    return summary | {
        "visible_ms": p50_p99(shared.visible_latency),
        "visible_missing": expected_visible - len(shared.visible_latency),
        "send_lag_ms_p99": percentile_ms(shared.send_lag, 0.99),
        "unreadable_updates": shared.unreadable_updates,
        "texts_identical": len(set(texts)) == 1,
        "text_length": len(texts[0]) if texts else 0,
        "text_sha256": hashlib.sha256(texts[0].encode()).hexdigest() if texts else None,
        "acked_by_client": {str(e.client_id): e.acked for e in editors},
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    return drivers.parse_args(argv, description=__doc__, url_help="ws://127.0.0.1:PORT/ROOM")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    emit({"event": "result", **drivers.run_loop(run(args))})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
