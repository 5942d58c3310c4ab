"""Load driver for our side: E thin editors typing into one shared text over ``/v1/docs/{id}/live``.

Usage::

    python bench/collab/crdtstore_driver.py --url ws://127.0.0.1:PORT/v1/docs/doc/live --editors 50 --rate 5
    python bench/collab/crdtstore_driver.py --url URL_US --url URL_EU --url URL_AP ...  # editor i -> region i mod 3

Each editor is what a browser without a CRDT library runs: a plain value
kept by the server's patches and :class:`crdtstore.rebase.LiveState` (one
batch in flight, later keystrokes queued and rebased), on its own
websocket. It types one character per keystroke at ``--rate`` per second
(open loop, as the peers' drivers) at a caret that follows its own typing,
moves with remote patches, and jumps to a random spot every few characters.
Editor i types only the character ``EDITOR_BASE + i``, so the stored text
tells how many keystrokes of each editor it holds.

Measured per keystroke, from the moment it is typed:

- ack: the server's ``ack`` of the batch carrying it, from the editor's own
  region (after the LMDB commit is fsync'd);
- remote-visible: the moment another editor receives the patch inserting it,
  split by whether that editor is in the typist's region or another. A
  keystroke is known by its character: editor i's k-th character to arrive
  anywhere is its k-th keystroke (it only inserts, one batch in flight, and
  a region applies one origin's deltas in order). Version tokens cannot
  match changes across regions: each region's mirror has its own versions.

The driver shares the machine's CPU with the servers it measures, so it
parses a frame once for all its editors: the server sends the editors of a
region the same frame (only the typist's own change and ack differ), and
an editor only reads what it parsed (a snapshot's value, which the editor
then edits in place, is copied). Each editor still applies every patch to
its own text and rebases its own edits, as a browser does.

Standard output: ``{"event": "start"}``, ``{"event": "end"}``, then one JSON
line of results in the peers' drivers' shape. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from crdtstore.rebase import LiveState

sys.path.insert(0, str(Path(__file__).resolve().parent))
import drivers  # noqa: E402
from drivers import emit, p50_p99, percentile_ms, run_summary  # noqa: E402

__all__ = ["EDITOR_BASE", "main"]

EDITOR_BASE = 0x4E00  # editor i types chr(EDITOR_BASE + i): one distinct character each
PATH = ["t"]
_PARSED_MAX = 512  # frames kept parsed: the editors of a region receive a frame within one loop pass


class FrameCache:
    """Each distinct frame parsed once for every editor that receives it (read only, except snapshots)."""

    def __init__(self) -> None:
        self._parsed: dict[str | bytes, list[dict[str, Any]]] = {}

    def messages(self, raw: str | bytes) -> list[dict[str, Any]]:
        parsed = self._parsed.get(raw)
        if parsed is None:
            data = orjson.loads(raw)
            parsed = data if isinstance(data, list) else [data]
            if len(self._parsed) >= _PARSED_MAX:
                self._parsed.clear()
            self._parsed[raw] = parsed
        return parsed


class Shared:
    def __init__(self) -> None:
        self.ack_latency: list[float] = []
        self.ack_typed: list[float] = []  # when each ack_latency's keystroke was typed (--samples)
        self.send_lag: list[float] = []
        self.acked_in_window = 0
        self.window_end = float("inf")
        self.sent_at: list[list[float]] = []  # per editor, when it typed each keystroke
        self.region_of: list[int] = []
        self.visible_within: list[float] = []
        self.visible_across: list[float] = []
        self.within_typed: list[float] = []
        self.across_typed: list[float] = []
        self.visible_unknown = 0  # characters that match no keystroke (would be a counting bug)
        self.frames_received = 0  # websocket messages the editors received (a frame may carry several changes)
        self.batches_sent = 0  # while typing; what is typed while a batch is in flight goes in the next one
        self.frames = FrameCache()


class Editor:
    def __init__(self, index: int, url: str, shared: Shared, rng: random.Random, region: int = 0) -> None:
        self.index = index
        self.url = url
        self.shared = shared
        self.rng = rng
        self.region = region
        self.state = LiveState(prefix=f"e{index}-{secrets.token_hex(4)}")
        self.char = chr(EDITOR_BASE + index)
        self.sent_at: list[float] = []
        self.seen: list[int] = []  # per editor, how many of its characters reached this one
        shared.sent_at.append(self.sent_at)
        shared.region_of.append(region)
        self.acked = 0
        self.batches: dict[str, tuple[int, int]] = {}  # batch id -> its keystrokes [first, end)
        self.queued_from = 0
        self.synced = asyncio.Event()
        self.errors = 0
        self._run_left = 0
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._ws = await connect(self.url, compression=None, open_timeout=30, max_size=None)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            frames = self.shared.frames
            async for raw in self._ws:
                self.shared.frames_received += 1
                now = time.perf_counter()
                for message in frames.messages(raw):
                    self._on(message, now)
                await self._flush()
        except Exception:  # the connection closed; what was not seen is counted at the end
            return

    def _on(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        shared = self.shared
        if kind == "change":
            if message.get("batch") is None:
                self._saw(message.get("patches") or (), now)
        elif kind == "snapshot":
            message = copy.deepcopy(message)  # the editor edits its value in place; the parse is shared
            text = (message.get("value") or {}).get("t", "")
            self.seen = [text.count(chr(EDITOR_BASE + i)) for i in range(len(shared.sent_at))]
        elif kind == "ack":
            first, end = self.batches.pop(message["id"], (0, 0))
            for k in range(first, end):
                shared.ack_latency.append(now - self.sent_at[k])
                shared.ack_typed.append(self.sent_at[k])
            if now <= shared.window_end:
                shared.acked_in_window += end - first
            self.acked += end - first
        elif kind == "error":
            self.errors += 1
            self.batches.pop(message.get("id"), None)  # type: ignore[arg-type]
        self.state.receive(message)
        if kind == "snapshot":
            self.synced.set()

    def _saw(self, patches: Any, now: float) -> None:
        shared = self.shared
        for patch in patches:
            if patch.get("path") == PATH and isinstance(patch.get("value"), str):
                # The text as a whole (the change that created the field): what it holds past the count is new.
                text = patch["value"]
                arrived = [
                    ch
                    for i in range(len(self.seen))
                    if i != self.index
                    for ch in chr(EDITOR_BASE + i) * (text.count(chr(EDITOR_BASE + i)) - self.seen[i])
                ]
            elif isinstance(patch.get("insert"), dict) and isinstance(patch["insert"].get("text"), str):
                arrived = list(patch["insert"]["text"])
            else:
                continue
            for ch in arrived:
                owner = ord(ch) - EDITOR_BASE
                if not 0 <= owner < len(self.seen) or owner == self.index:
                    shared.visible_unknown += 1
                    continue
                k = self.seen[owner]
                self.seen[owner] = k + 1
                typed = shared.sent_at[owner]
                if k >= len(typed):
                    shared.visible_unknown += 1
                    continue
                if shared.region_of[owner] == self.region:
                    shared.visible_within.append(now - typed[k])
                    shared.within_typed.append(typed[k])
                else:
                    shared.visible_across.append(now - typed[k])
                    shared.across_typed.append(typed[k])

    async def _flush(self) -> None:
        frame = self.state.next_batch()
        if frame is None or self._ws is None:
            return
        end = len(self.sent_at)
        self.batches[frame["id"]] = (self.queued_from, end)
        self.queued_from = end
        if time.perf_counter() <= self.shared.window_end:  # as the CPU is measured: while typing
            self.shared.batches_sent += 1
        try:
            await self._ws.send(orjson.dumps(frame).decode())
        except Exception:
            return

    def _caret(self) -> int:
        length = len(self.state.value().get("t", ""))
        caret = self.state.carets.get("me")
        if caret is None or self._run_left <= 0:
            self._run_left = self.rng.randint(3, 30)
            return self.rng.randint(0, length)
        return min(caret[1], length)

    async def type_until(self, t0: float, t_end: float, rate: float) -> None:
        phase = self.rng.random() / rate
        k = 0
        while (due := t0 + phase + k / rate) < t_end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            index = self._caret()
            self.state.edit([{"op": "insert", "path": PATH, "index": index, "text": self.char}])
            self.state.carets["me"] = (PATH, index + 1)
            self._run_left -= 1
            typed = time.perf_counter()
            self.sent_at.append(typed)
            self.shared.send_lag.append(typed - due)
            k += 1
            await self._flush()

    def caught_up(self) -> bool:
        return self.acked >= len(self.sent_at) and self.state.inflight is None and not self.state.queued

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    shared = Shared()
    urls: list[str] = args.url
    editors = [
        Editor(i, urls[i % len(urls)], shared, random.Random(rng.getrandbits(64)), region=i % len(urls))
        for i in range(args.editors)
    ]
    await drivers.open_editors(editors)
    t0 = time.perf_counter() + 0.2
    t_end = t0 + args.seconds
    shared.window_end = t_end

    async def mark(event: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        emit({"event": event})

    await asyncio.gather(mark("start", t0), mark("end", t_end), *(e.type_until(t0, t_end, args.rate) for e in editors))
    sent = sum(len(e.sent_at) for e in editors)
    drain_deadline = time.perf_counter() + args.drain
    while time.perf_counter() < drain_deadline:
        texts = [e.state.value().get("t", "") for e in editors]
        if all(e.caught_up() for e in editors) and len(set(texts)) == 1 and len(texts[0]) >= sent:
            break
        await asyncio.sleep(0.05)
    texts = [e.state.value().get("t", "") for e in editors]
    await asyncio.gather(*(e.close() for e in editors))

    visible = shared.visible_within + shared.visible_across
    drivers.write_samples(
        args.samples,
        ack=(shared.ack_typed, shared.ack_latency),
        within=(shared.within_typed, shared.visible_within),
        across=(shared.across_typed, shared.visible_across),
    )
    summary = run_summary(
        "crdtstore",
        args,
        sent=sent,
        acked=sum(e.acked for e in editors),
        acked_in_window=shared.acked_in_window,
        ack_latency=shared.ack_latency,
    )
    return summary | {
        "regions": len(urls),
        "visible_ms": p50_p99(visible),
        "visible_ms_within_region": p50_p99(shared.visible_within),
        "visible_ms_across_regions": p50_p99(shared.visible_across) if len(urls) > 1 else None,
        "visible_missing": sent * (len(editors) - 1) - len(visible),
        "visible_unknown": shared.visible_unknown,
        "send_lag_ms_p99": percentile_ms(shared.send_lag, 0.99),
        "batch_errors": sum(e.errors for e in editors),
        "frames_received": shared.frames_received,
        "batches_sent": shared.batches_sent,
        "texts_identical": len(set(texts)) == 1,
        "text_length": len(texts[0]) if texts else 0,
        "text_sha256": hashlib.sha256(texts[0].encode()).hexdigest() if texts else None,
        "acked_by_client": {str(e.index): e.acked for e in editors},
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    url_help = "ws://127.0.0.1:PORT/v1/docs/ID/live, once per region"
    return drivers.parse_args(argv, description=__doc__, url_help=url_help, max_editors=20000, many_urls=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    emit({"event": "result", **drivers.run_loop(run(args))})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
