"""Geo-replication benchmark: lag, wire bytes, anti-entropy cost, convergence after heal.

Usage::

    python bench/replication.py                          # defaults: 60 s at 1,000 writes/s, 50 ms one-way
    python bench/replication.py --seconds 10 --docs 20000 --rounds 3

Setup. Three regions (``us``, ``eu``, ``ap``), each a real node (its own
process, uvicorn server, LMDB data directory under a temporary directory,
fsync on), on 127.0.0.1 only. Every region dials the two others through
the in-repository WAN proxy (:class:`sync.io.wanproxy.WanController`), which
runs in a process of its own and adds ``--latency-ms`` one way to every
chunk. The load generator (raw HTTP/1.1 keep-alive connections, as in
``bench/api.py``) runs in this process, and the visibility observer in
another one, so neither starves the other nor the nodes of the event loop
(the machine may still be short of cores: the report prints their count).

1. **Replication lag.** Writes go to ``us`` at a fixed rate (open loop,
   scheduled at ``start + i / rate``), one small op each (a counter
   increment or a set add) over ``--lag-docs`` documents that only ``us``
   writes. Each acknowledged write has a version token; its last dot is
   the counter ``us`` minted for it. The observer follows the change-feed
   websocket of every lag document on ``eu`` and ``ap`` and records, per
   record, the time and the contiguous prefix of ``us`` dots the
   document's version covers. A write is visible in a region at the first
   record whose prefix reaches its dot. Why the change feed and not
   polling: a record is published on commit, so it timestamps visibility
   exactly, costs the node one small push per change (what a real
   subscriber costs), and needs no extra reads; polling would add load
   and quantize lag by its period. Both processes read ``time.monotonic``
   (one system-wide clock on Linux), so ack and visibility times compare.
   Lag includes the feed push to the observer over loopback (sub-ms when
   idle). After the last write the bench waits (at most
   ``--drain-seconds``) until both replicas hold every lag document's last
   version, and then until the WAN carries no more than its idle byte
   rate (duplicate and relayed copies still in flight are this load's
   bytes too, and the heal rounds want a quiet cluster); a write never
   seen by then counts as infinite. Percentiles are
   reported overall and per 10-second window of ack time; the lag counts
   as growing when the last full window's p99 exceeds 1.5 times the
   first's plus 10 ms.
2. **Wire bytes per replicated op.** Bytes through every WAN link, both
   directions, from the first write until the links are quiet again (pings,
   acks, relays and the periodic anti-entropy included), divided by
   acknowledged writes times the other regions (2 deliveries per write);
   next to the mean encoded delta of those writes, as the feed records
   carry it. The idle byte rate, measured before the load, is printed
   beside it. Only a run that caught up and went quiet can meet the target.
3. **Anti-entropy cost.** Two in-memory replicas (:mod:`sync.memstore`)
   of ``--docs`` documents, ``--differ`` of them different, compared with
   :func:`sync.antientropy.run_local` under the node's Merkle shape: round
   trips, bytes (the encoded wire messages), seconds in process, and those
   seconds plus one WAN round trip per protocol round trip; next to the
   bytes of shipping the full state (every encoded document and its id).
4. **Convergence after heal.** For each of ``--rounds`` rounds, writes go
   to all three regions while one region is isolated (even rounds) or one
   link is cut (odd rounds, so deltas must be relayed through the third
   region); then writing stops, the cut heals, and the time until every
   region reports the same version (causal context: equal contexts mean
   equal states) for every convergence document, and the same Merkle root
   over all documents where the node serves ``/v1/admin/merkle``, is
   measured by polling every 50 ms (at most 30 s per round). The rounds
   start once the lag phase has drained, so they measure a quiet cluster.

Anti-entropy runs as the nodes run it: ``--anti-entropy-interval`` is
``crdtstore serve``'s default unless given (at 60 s the first periodic
session falls near the end of the lag phase, so its cost under load is in
the last window). The helper processes (WAN, observer, load generator)
freeze their start-up objects out of the garbage collector, as
``crdtstore.server.run_servers`` does for the nodes: a 50 ms full collection
in the observer would otherwise show as 50 ms of lag in both regions.

Diagnostics: ``--no-sync`` runs the nodes without fsync (the figures are
for durable commits; comparing both shows what commit latency costs),
``--keep`` keeps the temporary directory with every process's log,
``--trace`` (with ``--keep``) has every process write ``NAME.trace``
there: JSON lines of event-loop stalls, collections of 5 ms or more,
commits of 20 ms or more, slow replicator events and counter changes, on
the ``time.monotonic`` clock; and ``--dump FILE`` writes every write's ack
time, write latency and lag per region, to line them up against the
traces.

The last line printed is one JSON object with every figure, and the issue's
targets each marked ``met`` true or false.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import gc
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadgen
import orjson
import procs
from loadgen import Connection

__all__ = ["main"]

TOKEN = "bench-token-" + "0123456789abcdef" * 2
REGIONS = ("us", "eu", "ap")
WINDOW = 10.0  # seconds per lag window in the report
START_TIMEOUT = 60.0
POOL = 64  # keep-alive connections of the writer (more than in flight at 1,000/s and a few ms per write)
TRACE_MAX_SECONDS = 3600.0  # --trace samples a process's stalls for at most this long
MAX_IN_FLIGHT = 4096  # writes outstanding before the generator stops scheduling (a stalled server)


# Small helpers shared by every role.


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def version_ranges(token: str) -> dict[str, list[int]]:
    """The ``{replica: [lo, hi, ...]}`` half-open dot ranges of a version token (``crdtstore.version``)."""
    body = token.split(".")[1]  # v1.BODY inside a node, v2.BODY.TAG as the API gives it
    return dict(orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def last_dot(token: str) -> int:
    """The highest dot counter of a single-writer document's version (the write's own dot at its ack)."""
    return max((flat[-1] - 1 for flat in version_ranges(token).values()), default=0)


def prefix_dot(token: str) -> int:
    """The contiguous prefix of dots a single-writer document's version covers (1..n with no gap)."""
    return max((flat[1] - 1 for flat in version_ranges(token).values() if flat[0] == 1), default=0)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile; inf when empty (nothing measured is not a pass)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _finite(seconds: float) -> float | None:
    """Seconds for the JSON line: None stands for never (JSON has no infinity)."""
    return round(seconds, 3) if math.isfinite(seconds) else None


def ms(seconds: float) -> float | None:
    return None if math.isinf(seconds) or math.isnan(seconds) else round(seconds * 1e3, 2)


# Role: one region node (a process of its own).


def run_region(args: argparse.Namespace) -> int:
    from crdtstore.config import ServeConfig
    from crdtstore.logs import configure_logging
    from crdtstore.server import build_server_app, run_servers, uvicorn_config

    configure_logging("warning")  # JSON lines to the region's log file: link failures show there
    config = ServeConfig(
        region=args.region,
        data=Path(args.data),
        host="127.0.0.1",
        port=args.port,
        access_log=False,
        log_level="warning",
        peers=tuple(args.peer or ()),
        # As `crdtstore up` does for loopback links: notice a cut quickly, reconnect quickly.
        peer_ping_interval=2.0,
        peer_ping_timeout=4.0,
        peer_backoff_max=2.0,
        no_sync=args.no_sync,
        anti_entropy_interval=args.anti_entropy_interval,
    )
    env = {"CRDTSTORE_TOKENS": f"{TOKEN}:readwrite", "CRDTSTORE_CLUSTER_SECRET": os.environ["BENCH_CLUSTER_SECRET"]}
    app = build_server_app(config, env=env)

    def orphan_guard() -> None:
        # stdin is the orchestrator's pipe: EOF means it is gone, so leave too rather than linger.
        sys.stdin.buffer.read()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphan_guard, daemon=True).start()
    on_start = None
    if args.trace:
        trace = _Tracer(app.state.api, Path(args.data).with_suffix(".trace"))
        on_start = trace.start
    return run_servers([uvicorn_config(app, config)], on_start=on_start)


class _Tracer:
    """Diagnosis (``--trace``): what may stall a process, as JSON lines of ``time.monotonic`` times.

    Every process: event-loop stalls (a 5 ms sleep that overshoots by 20 ms or
    more) and garbage collections of 5 ms or more. A region also: commits of
    20 ms or more (writer thread), replicator events that took 5 ms or more
    (and every anti-entropy read), truncation passes of 10 ms or more, and
    each change of the replicator's counters, when it was seen. It wraps
    private methods of the replicator: a diagnostic, not an interface.
    """

    def __init__(self, api: Any, path: Path) -> None:
        self.api = api  # None: a helper process (the WAN, the observer): stalls and collections only
        self.out = path.open("a", buffering=1)
        self._gc_start = 0.0

    async def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        asyncio.get_running_loop().create_task(self._watch())

    def _write(self, kind: str, **fields: Any) -> None:
        self.out.write(orjson.dumps({"t": round(time.monotonic(), 4), "kind": kind, **fields}).decode() + "\n")

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_start
        if took >= 0.005:
            tracked = len(gc.get_objects()) if info["generation"] == 2 else None
            self._write("gc", gen=info["generation"], ms=round(took * 1e3, 1), tracked=tracked)

    def _on_commit(self, size: int, seconds: float) -> None:
        if seconds >= 0.02:
            self._write("commit", size=size, ms=round(seconds * 1e3, 1))

    def _timed(self, kind: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        async def timed() -> Any:
            started = time.perf_counter()
            result = await fn()
            took = time.perf_counter() - started
            if took >= 0.01:
                self._write(kind, ms=round(took * 1e3, 1), result=result)
            return result

        return timed

    async def _watch(self) -> None:
        node = None if self.api is None else self.api.node
        replicator = None if self.api is None else self.api.replicator
        while node is not None and getattr(node, "_writer", None) is None:  # the lifespan starts it after on_start
            await asyncio.sleep(0.05)
        if node is not None:
            node.writer.observers.append(self._on_commit)
        if replicator is not None:
            replicator.truncate_once = self._timed("truncate", replicator.truncate_once)
            process = replicator._process

            async def timed_process(link: Any, event: Any) -> None:
                started = time.perf_counter()
                await process(link, event)
                took = time.perf_counter() - started
                if took >= 0.005 or type(event).__name__.startswith(("NeedM", "NeedB", "NeedS", "AntiE")):
                    size = len(getattr(event, "nodes", getattr(event, "buckets", getattr(event, "doc_ids", ()))))
                    self._write("event", name=type(event).__name__, ms=round(took * 1e3, 1), size=size)

            replicator._process = timed_process
        last: dict[str, int] = {}
        keys = ("anti_entropy_sessions", "states_merged", "log_truncated", "read_repairs")
        for tick in range(1, int(TRACE_MAX_SECONDS / 0.005) + 1):  # bounded, like every loop of the bench
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            late = time.perf_counter() - before - 0.005
            if late >= 0.02:
                self._write("stall", ms=round(late * 1e3, 1))
            if replicator is not None and tick % 20 == 0:
                now = {k: int(replicator.stats.get(k, 0)) for k in keys}
                changed = {k: v - last.get(k, 0) for k, v in now.items() if v != last.get(k, 0)}
                if changed and last:
                    self._write("stats", **changed)
                last = now


# Role: the emulated WAN (a process of its own), driven by lines on stdin.


def run_wan(args: argparse.Namespace) -> int:
    from sync.io.wanproxy import WanController

    targets = dict(item.split("=", 1) for item in args.target)
    wan = WanController(list(targets), latency=args.latency_ms / 1e3)
    wan.bind()
    for region, port in targets.items():
        wan.set_target(region, "127.0.0.1", int(port))
    ports = {f"{a}->{b}": link.port for (a, b), link in wan.links.items()}

    async def serve() -> None:
        if args.trace:
            await _Tracer(None, Path(args.data)).start()
        await wan.start()
        _freeze_gc()
        print(orjson.dumps({"links": ports}).decode(), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while True:
                line = (await reader.readline()).decode().split()
                if not line or line[0] == "quit":
                    return
                if line[0] == "partition":
                    wan.partition(line[1], line[2])
                elif line[0] == "isolate":
                    wan.isolate(line[1])
                elif line[0] == "heal_all":
                    wan.heal_all()
                # Every command answers with the byte counters, so each is also a "stats" request.
                stats = {name: [s.bytes_forward, s.bytes_backward, s.connections] for name, s in wan.stats().items()}
                print(orjson.dumps({"stats": stats, "cut": wan.cut_pairs()}).decode(), flush=True)
        finally:
            await wan.close()

    _run(serve())
    return 0


# Role: the visibility observer (a process of its own).


def run_observer(args: argparse.Namespace) -> int:
    from websockets.asyncio.client import connect

    urls: list[str] = args.url
    docs = [f"lag-{k}" for k in range(args.lag_docs)]
    # (region index, doc index) -> [(monotonic time, covered dot prefix, delta bytes)]
    seen: dict[tuple[int, int], list[tuple[float, int, int]]] = {}
    ready = 0
    stop = asyncio.Event()

    async def follow(r: int, d: int) -> None:
        nonlocal ready
        url = urls[r].replace("http://", "ws://") + f"/v1/docs/{docs[d]}/changes"
        out = seen.setdefault((r, d), [])
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, max_size=None) as ws:
            ready += 1
            async for message in ws:
                now = time.monotonic()
                record = orjson.loads(message)
                version = record.get("version")
                if isinstance(version, str):
                    delta = record.get("delta")
                    size = len(orjson.dumps(delta)) if delta is not None else 0
                    out.append((now, prefix_dot(version), size))

    async def watch_stdin() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.readline()  # any line, or EOF: stop
        stop.set()

    async def observe() -> None:
        if args.trace:
            await _Tracer(None, Path(args.out).with_name("observer.trace")).start()
        tasks = [asyncio.create_task(follow(r, d)) for r in range(len(urls)) for d in range(len(docs))]
        stdin = asyncio.create_task(watch_stdin())
        for _ in range(int(START_TIMEOUT * 20)):
            if ready == len(tasks) or any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.05)
        failed = [t for t in tasks if t.done()]
        _freeze_gc()
        print("ready" if not failed else f"failed {failed[0].exception()!r}", flush=True)
        cpu0 = _cpu()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
        cpu = _cpu() - cpu0
        for t in (*tasks, stdin):
            t.cancel()
        await asyncio.gather(*tasks, stdin, return_exceptions=True)
        rows = {f"{r},{d}": rows for (r, d), rows in seen.items()}
        Path(args.out).write_bytes(orjson.dumps({"seen": rows, "cpu": cpu}))

    _run(observe())
    return 0


def _freeze_gc() -> None:
    """Keep this helper's full collections short: they would time its own pauses, not the nodes'.

    A full collection walks every tracked object; at start-up that is some
    45,000 (modules, the observer's 200 websockets), which took about 50 ms
    each time, every few tens of seconds. The observer stamps a record when
    its loop gets to it, so such a pause showed as 50 ms of lag in both
    regions at once; in the WAN it would delay every link; in the load
    generator it would stamp acks late (lag too short). The region
    processes get the same treatment from ``crdtstore.server.run_servers``.
    """
    gc.collect()
    gc.freeze()


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        asyncio.run(coro)


# The orchestrator's side: processes.


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU of this process so far (NaN where /proc cannot tell): who the bottleneck was."""
        seconds = procs.cpu_seconds(self.proc.pid)
        return math.nan if seconds is None else seconds

    def stop(self) -> None:
        procs.stop(self.proc, timeout=20)


def spawn(
    name: str, role_args: list[str], workdir: Path, *, env: dict[str, str] | None = None, talks: bool = True
) -> Proc:
    """Start a helper role of this script; ``talks``: it answers on stdout (an unread pipe would fill and block)."""
    log = (workdir / f"{name}.log").open("wb")
    cmd = [sys.executable, __file__, *role_args]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if talks else subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, **(env or {})},
    )
    log.close()
    return Proc(name, proc)


def read_line(proc: Proc, timeout: float) -> str:
    """One stdout line of a helper process, or RuntimeError (it died, or said nothing in time)."""
    assert proc.proc.stdout is not None
    box: list[bytes] = []

    def read() -> None:
        assert proc.proc.stdout is not None
        box.append(proc.proc.stdout.readline())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout)
    if not box or not box[0]:
        raise RuntimeError(f"{proc.name}: no answer (exit code {proc.proc.poll()})")
    return box[0].decode().strip()


class Wan:
    """The WAN helper process: commands on stdin, one JSON answer line each."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc

    def command(self, line: str) -> dict[str, Any]:
        assert self.proc.proc.stdin is not None
        self.proc.proc.stdin.write(line.encode() + b"\n")
        self.proc.proc.stdin.flush()
        return dict(orjson.loads(read_line(self.proc, 10.0)))

    def total_bytes(self) -> int:
        return sum(fwd + bwd for fwd, bwd, _ in self.command("stats")["stats"].values())


# The orchestrator's side: HTTP.


def http_request(method: str, path: str, body: bytes = b"") -> bytes:
    return loadgen.http_request(method, path, TOKEN, body)


class Pool:
    def __init__(self, conns: list[Connection]) -> None:
        self.idle: asyncio.Queue[Connection] = asyncio.Queue()
        for conn in conns:
            self.idle.put_nowait(conn)
        self.conns = conns

    @classmethod
    async def open(cls, port: int, size: int) -> Pool:
        return cls([await Connection.open(port) for _ in range(size)])

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Status 0 when the connection broke: counted as an error (a node died), never raised into a task."""
        conn = await self.idle.get()
        try:
            return await conn.exchange(request)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return 0, b""
        finally:
            self.idle.put_nowait(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def op_for(i: int) -> list[dict[str, Any]]:
    """A small op: counter increments and set adds alternate."""
    if i % 2:
        return [{"op": "add", "path": ["tags"], "value": f"t{i % 64}"}]
    return [{"op": "increment", "path": ["n"]}]


async def get_json(port: int, path: str) -> tuple[int, Any]:
    conn = await Connection.open(port)
    try:
        status, body = await conn.exchange(http_request("GET", path))
    finally:
        conn.close()
    return status, orjson.loads(body) if body else None


# Phases.


@dataclass(slots=True)  # 60,000 of them: no per-instance dict for the collector to walk
class Write:
    doc: int
    dot: int
    scheduled: float
    acked: float


@dataclass
class LoadResult:
    writes: list[Write] = field(default_factory=list)
    errors: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    final: dict[int, str] = field(default_factory=dict)  # doc -> the version after its last acked write


async def fixed_rate_writes(port: int, *, rate: float, seconds: float, docs: int) -> LoadResult:
    """Open-loop writes to one region; bounded by count (rate * seconds) and time (seconds + 60)."""
    result = LoadResult()
    pool = await Pool.open(port, POOL)
    total = int(rate * seconds)
    in_flight = 0
    start = time.monotonic() + 0.05
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int, scheduled: float) -> None:
        nonlocal in_flight
        doc = i % docs
        try:
            status, body = await pool.exchange(
                http_request("POST", f"/v1/docs/lag-{doc}", orjson.dumps({"ops": op_for(i)}))
            )
        finally:
            in_flight -= 1
        acked = time.monotonic()
        if status != 200:
            result.errors += 1
            return
        version = orjson.loads(body)["version"]
        dot = last_dot(version)
        result.writes.append(Write(doc, dot, scheduled, acked))
        if dot > last_dot(result.final.get(doc, "v1.e30")):
            result.final[doc] = version

    cpu0 = _cpu()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= MAX_IN_FLIGHT:
            result.skipped += 1  # the server stalled: reported, not hidden
            continue
        in_flight += 1
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=seconds + 60)
    result.elapsed = time.monotonic() - start
    result.cpu = (_cpu() - cpu0) / result.elapsed
    pool.close()
    return result


async def wait_versions(ports: Sequence[int], expected: dict[str, str], timeout: float) -> bool:
    """Poll until every region's version of each document contains the expected one's dots (or time runs out)."""
    deadline = time.monotonic() + timeout
    pending = {(p, d) for p in ports for d in expected}
    while pending and time.monotonic() < deadline:
        for port, doc in sorted(pending):
            status, body = await get_json(port, f"/v1/docs/{doc}")
            if status == 200 and prefix_dot(body["version"]) >= last_dot(expected[doc]):
                pending.discard((port, doc))
        if pending:
            await asyncio.sleep(0.2)
    return not pending


def lag_figures(load: LoadResult, seen: dict[str, list[list[float]]], regions: int, t0: float) -> dict[str, Any]:
    """Per write and observing region: first record covering the write's dot, minus its ack."""
    index: dict[tuple[int, int], tuple[list[float], list[int]]] = {}
    delta_sizes: list[int] = []
    for key, rows in seen.items():
        r, d = (int(x) for x in key.split(","))
        times, prefixes, best = [], [], 0
        for t, prefix, size in rows:
            best = max(best, int(prefix))  # a resync record may lag behind a later one: keep the running max
            times.append(float(t))
            prefixes.append(best)
            if size:
                delta_sizes.append(int(size))
        index[(r, d)] = (times, prefixes)
    lags: list[float] = []
    windows: dict[int, list[float]] = {}
    missing = 0
    for w in load.writes:
        for r in range(regions):
            times, prefixes = index.get((r, w.doc), ([], []))
            k = bisect.bisect_left(prefixes, w.dot)
            lag = times[k] - w.acked if k < len(times) else math.inf
            missing += math.isinf(lag)
            lags.append(lag)
            windows.setdefault(int((w.acked - t0) // WINDOW), []).append(lag)
    return {
        "lags": lags,
        "missing": missing,
        "windows": [
            {
                "window": k,
                "from_s": k * WINDOW,
                "n": len(v),
                "p50_ms": ms(quantile(v, 0.5)),
                "p99_ms": ms(quantile(v, 0.99)),
            }
            for k, v in sorted(windows.items())
        ],
        "delta_bytes_mean": statistics.fmean(delta_sizes) if delta_sizes else math.nan,
        "delta_records": len(delta_sizes),
    }


async def convergence_round(
    k: int, wan: Wan, ports: dict[str, int], *, cut_seconds: float, rate: float, docs: int, merkle: bool
) -> dict[str, Any]:
    """Write to every region while cut, stop, heal, and time until all regions report equal versions."""
    names = list(ports)
    if k % 2 == 0:
        victim = names[(k // 2) % len(names)]
        wan.command(f"isolate {victim}")
        what = f"isolate {victim}"
    else:
        a, b = names[(k // 2) % len(names)], names[(k // 2 + 1) % len(names)]
        wan.command(f"partition {a} {b}")
        what = f"cut {a}-{b}"
    pools = {name: await Pool.open(port, 8) for name, port in ports.items()}
    total = int(rate * cut_seconds)
    start = time.monotonic()
    tasks = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        name = names[i % len(names)]
        doc = f"conv-{(i // len(names)) % docs}"
        status, _ = await pools[name].exchange(
            http_request("POST", f"/v1/docs/{doc}", orjson.dumps({"ops": op_for(i)}))
        )
        errors += status != 200

    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=cut_seconds + 60)
    for pool in pools.values():
        pool.close()
    healed = time.monotonic()
    wan.command("heal_all")
    # Poll every region's version of every convergence document until all agree (bounded by time).
    conns = {name: await Connection.open(port) for name, port in ports.items()}
    converged = math.inf
    polls = 0
    diverged: dict[str, Any] | None = None
    try:
        while time.monotonic() - healed < 30.0:
            polls += 1
            equal = True
            for d in range(docs):
                versions = set()
                for conn in conns.values():
                    status, body = await conn.exchange(http_request("GET", f"/v1/docs/conv-{d}"))
                    versions.add(orjson.loads(body)["version"] if status == 200 else None)
                if len(versions) != 1:
                    equal = False
                    break
            if equal and merkle:
                # Every document, not only this round's: the Merkle roots (when the node serves them) agree.
                roots = set()
                for conn in conns.values():
                    status, body = await conn.exchange(http_request("GET", "/v1/admin/merkle"))
                    roots.add(orjson.loads(body).get("root") if status == 200 else None)
                equal = len(roots) == 1
            if equal:
                converged = time.monotonic() - healed
                break
            await asyncio.sleep(0.05)
        if math.isinf(converged):
            # Show one document that stayed different: its dot ranges per region, for the report.
            for d in range(docs):
                found = {}
                for name, conn in conns.items():
                    status, body = await conn.exchange(http_request("GET", f"/v1/docs/conv-{d}"))
                    found[name] = version_ranges(orjson.loads(body)["version"]) if status == 200 else None
                if len({orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in found.values()}) > 1:
                    diverged = {"doc": f"conv-{d}", "ranges": found}
                    break
    finally:
        for conn in conns.values():
            conn.close()
    return {
        "round": k,
        "cut": what,
        "writes": total,
        "errors": errors,
        "seconds": converged,
        "polls": polls,
        "diverged": diverged,
    }


def anti_entropy(docs: int, differ: int, latency: float) -> dict[str, Any]:
    """Two MemStore replicas of ``docs`` documents differing in ``differ``; one run_local session."""
    from crdtstore.codec import encode_document
    from crdtstore.merkle import MerkleShape
    from sync.antientropy import run_local
    from sync.memstore import MemStore
    from sync.store import run_sync

    shape = MerkleShape()  # the node's default shape (NodeConfig merkle_fanout/merkle_depth)
    a = MemStore("us-bench", region="us", nonce="a1", shape=shape)
    b = MemStore("eu-bench", region="eu", nonce="b1", shape=shape)
    built = time.perf_counter()
    for i in range(docs):
        entry = a.apply(
            f"doc-{i:06d}",
            [{"op": "increment", "path": ["n"], "by": i % 97}, {"op": "add", "path": ["tags"], "value": f"t{i % 13}"}],
        )
        b.apply_remote(entry.origin, entry.seq, entry.doc_id, entry.delta)
    # Differences: half updated on each side (so the session both pulls and pushes), and ids spread out.
    step = max(1, docs // max(1, differ))
    for j in range(differ):
        store = a if j % 2 == 0 else b
        store.apply(f"doc-{(j * step + step // 2) % docs:06d}", [{"op": "increment", "path": ["n"]}])
    built = time.perf_counter() - built
    full = sum(len(doc_id.encode()) + len(encode_document(doc)) for doc_id, doc in a.docs.items())
    start = time.perf_counter()
    stats = run_sync(run_local(a, b, shape))
    seconds = time.perf_counter() - start
    equal = run_sync(a.merkle_root()) == run_sync(b.merkle_root())
    wire = stats.bytes_sent + stats.bytes_received
    return {
        "docs": docs,
        "differ": differ,
        "shape": [shape.fanout, shape.depth],
        "round_trips": stats.round_trips,
        "bytes": wire,
        "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_received,
        "docs_pulled": stats.docs_pulled,
        "docs_pushed": stats.docs_pushed,
        "seconds_in_process": round(seconds, 4),
        # The in-process run has no network: add one WAN round trip per protocol round trip.
        "seconds_with_wan": round(seconds + stats.round_trips * 2 * latency, 4),
        "full_state_bytes": full,
        "ratio": wire / full if full else math.nan,
        "roots_equal_after": equal,
        "build_seconds": round(built, 1),
    }


# The orchestration.


async def cluster_phases(args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict[str, Any]:
    # Inside the loop a Python-level signal handler may never get to raise: cancel the phases instead,
    # so orchestrate's cleanup runs.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    secret = secrets.token_hex(24)
    ports = {name: free_port() for name in REGIONS}
    wan = Wan(
        spawn(
            "wan",
            [
                "--role",
                "wan",
                "--latency-ms",
                str(args.latency_ms),
                *(f"--target={r}={p}" for r, p in ports.items()),
                *(["--trace", f"--data={workdir / 'wan.trace'}"] if args.trace else []),
            ],
            workdir,
        )
    )
    procs.append(wan.proc)
    links = orjson.loads(read_line(wan.proc, START_TIMEOUT))["links"]
    for name, port in ports.items():
        peers = [f"--peer=ws://127.0.0.1:{links[f'{name}->{other}']}/v1/peer" for other in REGIONS if other != name]
        role = ["--role", "region", "--region", name, "--port", str(port), "--data", str(workdir / name), *peers]
        role += ["--no-sync"] if args.no_sync else []
        role += [f"--anti-entropy-interval={args.anti_entropy_interval}"]
        role += ["--trace"] if args.trace else []
        procs.append(spawn(name, role, workdir, env={"BENCH_CLUSTER_SECRET": secret}, talks=False))
    # Ready, and every region authenticated with both others (bounded wait).
    deadline = time.monotonic() + START_TIMEOUT
    for name, port in ports.items():
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"region {name} did not get ready with its peers (see {name}.log)")
            with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
                status, body = await get_json(port, "/v1/admin/links")
                if status == 200 and len(body["peers"]) == len(REGIONS) - 1:
                    break
            await asyncio.sleep(0.1)
    print(f"cluster up: {', '.join(f'{n}:{p}' for n, p in ports.items())}, {args.latency_ms} ms one way", flush=True)

    # Idle wire bytes (pings, periodic acks and anti-entropy), to read the per-op figure against.
    idle0, t_idle = wan.total_bytes(), time.monotonic()
    await asyncio.sleep(3.0)
    idle_rate = (wan.total_bytes() - idle0) / (time.monotonic() - t_idle)

    # Lag phase.
    observed = [f"http://127.0.0.1:{ports[r]}" for r in REGIONS[1:]]
    out = workdir / "seen.json"
    observer = spawn(
        "observer",
        [
            "--role",
            "observer",
            "--lag-docs",
            str(args.lag_docs),
            "--out",
            str(out),
            "--max-seconds",
            str(args.seconds + args.drain_seconds + 120),
            *(f"--url={u}" for u in observed),
            *(["--trace"] if args.trace else []),
        ],
        workdir,
    )
    procs.append(observer)
    answer = read_line(observer, START_TIMEOUT + 10)
    if answer != "ready":
        raise RuntimeError(f"observer: {answer}")
    stats0 = await _replicator_stats(ports)
    _freeze_gc()
    cpu0 = {p.name: p.cpu_seconds() for p in procs}
    bytes0 = wan.total_bytes()
    t0 = time.monotonic()
    print(
        f"lag phase: {args.rate:.0f} writes/s to us for {args.seconds:.0f} s over {args.lag_docs} documents", flush=True
    )
    load = await fixed_rate_writes(ports["us"], rate=args.rate, seconds=args.seconds, docs=args.lag_docs)
    expected = {f"lag-{d}": v for d, v in load.final.items()}
    t_last = time.monotonic()
    # The wire figure needs every delivery done, and the heal rounds need a quiet cluster: wait (bounded).
    drained = await wait_versions([ports[r] for r in REGIONS[1:]], expected, args.drain_seconds)
    t_caught_up = time.monotonic()
    # Caught up is not quiet: duplicate and relayed copies may still be on the wire. They are this load's
    # bytes too, and the heal rounds want a quiet cluster, so wait for the idle byte rate (bounded).
    quiet = False
    last = wan.total_bytes()
    while time.monotonic() - t_last < args.drain_seconds:
        await asyncio.sleep(1.0)
        now_bytes = wan.total_bytes()
        if now_bytes - last <= max(4 * idle_rate, 4096):
            quiet = True
            break
        last = now_bytes
    t_end = time.monotonic()
    wire = wan.total_bytes() - bytes0
    stats1 = await _replicator_stats(ports)
    cpu = {p.name: round((p.cpu_seconds() - cpu0[p.name]) / (t_end - t0), 3) for p in procs}
    assert observer.proc.stdin is not None
    observer.proc.stdin.write(b"stop\n")
    observer.proc.stdin.flush()
    observer.proc.wait(timeout=60)
    data = orjson.loads(out.read_bytes())
    lag = lag_figures(load, data["seen"], len(observed), t0)
    if args.dump:
        # Diagnosis: per write, its ack time since the phase began, its write latency and its lag per region.
        n = len(observed)
        rows = [
            [
                round(w.acked - t0, 4),
                round(w.acked - w.scheduled, 4),
                *(_finite(x) for x in lag["lags"][i * n : (i + 1) * n]),
            ]
            for i, w in enumerate(load.writes)
        ]
        Path(args.dump).write_bytes(orjson.dumps({"t0_monotonic": t0, "rows": rows}))
    acked = len(load.writes)
    deliveries = acked * (len(REGIONS) - 1)

    # Convergence phase. Equal states: equal versions of the round's documents, and equal Merkle roots
    # over all documents where the node has the /v1/admin/merkle route (newer nodes).
    status, _ = await get_json(ports["us"], "/v1/admin/merkle")
    merkle = status == 200
    rounds = []
    for k in range(args.rounds):
        result = await convergence_round(
            k, wan, ports, cut_seconds=args.cut_seconds, rate=args.conv_rate, docs=args.conv_docs, merkle=merkle
        )
        print(
            f"convergence round {k}: {result['cut']}, {result['writes']} writes while cut, "
            f"converged {result['seconds']:.2f} s after heal",
            flush=True,
        )
        rounds.append(result)
        await asyncio.sleep(0.5)
    return {
        "load": load,
        "lag": lag,
        "drained": drained,
        "drain_seconds": t_caught_up - t_last,
        "quiet": quiet,
        "quiet_seconds": t_end - t_last,
        "acked": acked,
        "deliveries": deliveries,
        "wire": wire,
        "wire_seconds": t_end - t0,
        "idle_rate": idle_rate,
        "observer_cpu": data["cpu"],
        "replicator": {r: _diff(stats0[r], stats1[r]) for r in REGIONS},
        "cpu": cpu,
        # Per acknowledged write, each process's CPU over the phase (writes, relays, acks, anti-entropy):
        # steadier than wall-time figures on a loaded machine, and comparable across runs.
        "cpu_us_per_write": {n: round(c * (t_end - t0) / len(load.writes) * 1e6, 1) for n, c in cpu.items()}
        if load.writes
        else {},
        "rounds": rounds,
        "convergence_check": "versions+merkle_roots" if merkle else "versions",
    }


async def _replicator_stats(ports: dict[str, int]) -> dict[str, dict[str, int]]:
    out = {}
    for name, port in ports.items():
        _, body = await get_json(port, "/v1/admin/links")
        out[name] = dict(body.get("stats", {}))
    return out


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in sorted(after)}


def report(args: argparse.Namespace, phases: dict[str, Any] | None, ae: dict[str, Any], error: str | None) -> None:
    latency = args.latency_ms / 1e3
    summary: dict[str, Any] = {
        "bench": "replication",
        "regions": list(REGIONS),
        "latency_ms": args.latency_ms,
        "cores": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "error": error,
    }
    targets: dict[str, Any] = {}
    if phases is not None:
        load: LoadResult = phases["load"]
        lag = phases["lag"]
        p50, p99 = quantile(lag["lags"], 0.5), quantile(lag["lags"], 0.99)
        write_lat = [w.acked - w.scheduled for w in load.writes]
        rate = len(load.writes) / load.elapsed if load.elapsed else 0.0
        print(
            f"writes: {len(load.writes)} acked ({rate:.0f}/s of {args.rate:.0f}/s asked), {load.errors} errors, "
            f"{load.skipped} skipped; write latency p50 {quantile(write_lat, 0.5) * 1e3:.1f} ms "
            f"p99 {quantile(write_lat, 0.99) * 1e3:.1f} ms; loadgen cpu {load.cpu:.0%}",
            flush=True,
        )
        print(
            f"replication lag (ack in us -> visible in eu/ap): p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
            f"{lag['missing']} of {len(lag['lags'])} never seen",
            flush=True,
        )
        for w in lag["windows"]:
            print(f"  window {w['from_s']:>5.0f} s: n {w['n']:>6}  p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms")
        per_op = phases["wire"] / phases["deliveries"] if phases["deliveries"] else math.inf
        idle = phases["idle_rate"] * phases["wire_seconds"]
        net = (phases["wire"] - idle) / phases["deliveries"] if phases["deliveries"] else math.inf
        delta = lag["delta_bytes_mean"]
        print(
            f"wire: {phases['wire']} bytes for {phases['deliveries']} deliveries = {per_op:.1f} B per replicated op "
            f"({net:.1f} B without the idle rate of {phases['idle_rate']:.0f} B/s); encoded delta {delta:.1f} B; "
            f"replicas {'caught up' if phases['drained'] else 'NOT caught up'} "
            f"{phases['drain_seconds']:.1f} s after the last write, links "
            f"{'quiet' if phases['quiet'] else 'NOT quiet'} after {phases['quiet_seconds']:.1f} s",
            flush=True,
        )
        print(f"  cpu (cores used during the lag phase): {phases['cpu']}", flush=True)
        print(f"  cpu per acknowledged write (us): {phases['cpu_us_per_write']}", flush=True)
        for name, stats in phases["replicator"].items():
            print(f"  replicator {name}: {stats}")
        secs = [r["seconds"] for r in phases["rounds"]]
        median = statistics.median(secs) if secs else math.inf
        worst = max(secs) if secs else math.inf
        print(f"convergence after heal: median {median:.2f} s, worst {worst:.2f} s over {len(secs)} rounds", flush=True)
        windows_p99 = [w["p99_ms"] for w in lag["windows"] if w["p99_ms"] is not None]
        # "Not growing": the last full window's p99 is within 1.5x (+10 ms) of the first's.
        full_windows = [w for w in lag["windows"] if w["n"] >= 0.5 * args.rate * WINDOW * 2]
        growing = (
            len(full_windows) >= 2
            and (full_windows[-1]["p99_ms"] or math.inf) > 1.5 * (full_windows[0]["p99_ms"] or 0) + 10
        )
        summary |= {
            "seconds": args.seconds,
            "rate_asked": args.rate,
            "rate_acked": round(rate, 1),
            "writes_acked": len(load.writes),
            "write_errors": load.errors,
            "writes_skipped": load.skipped,
            "write_latency_ms": {"p50": ms(quantile(write_lat, 0.5)), "p99": ms(quantile(write_lat, 0.99))},
            "loadgen_cpu": round(load.cpu, 3),
            "observer_cpu_seconds": round(phases["observer_cpu"], 1),
            "lag_ms": {"p50": ms(p50), "p99": ms(p99), "samples": len(lag["lags"]), "never_seen": lag["missing"]},
            "lag_windows": lag["windows"],
            "drained": phases["drained"],
            "drain_seconds": round(phases["drain_seconds"], 1),
            "quiet": phases["quiet"],
            "quiet_seconds": round(phases["quiet_seconds"], 1),
            "fsync": not args.no_sync,
            "anti_entropy_interval_s": args.anti_entropy_interval,
            "wire": {
                "bytes": phases["wire"],
                "deliveries": phases["deliveries"],
                "bytes_per_replicated_op": round(per_op, 1),
                "bytes_per_replicated_op_net_of_idle": round(net, 1),
                "idle_bytes_per_s": round(phases["idle_rate"], 1),
                "encoded_delta_bytes": round(delta, 1),
            },
            "replicator_stats": phases["replicator"],
            "cpu_cores_used": phases["cpu"],
            "cpu_us_per_write": phases["cpu_us_per_write"],
            "convergence_s": {"rounds": [_finite(s) for s in secs], "median": _finite(median), "worst": _finite(worst)},
            "convergence_detail": phases["rounds"],
            "convergence_check": phases["convergence_check"],
        }
        targets |= {
            "lag_p99": {
                "target_ms": ms(latency + 0.05),
                "value_ms": ms(p99),
                "not_growing": not growing,
                "windows_p99_ms": windows_p99,
                "met": p99 <= latency + 0.05 and not growing and args.seconds >= 60 and args.rate >= 1000,
            },
            "wire_per_op": {
                "target_bytes": round(2 * delta + 40, 1),
                "value_bytes": round(per_op, 1),
                # Only a drained run counts every delivery's bytes.
                "met": per_op <= 2 * delta + 40 and phases["drained"] and phases["quiet"],
            },
            "convergence": {
                "target_median_s": 3.0,
                "target_worst_s": 10.0,
                "median_s": summary["convergence_s"]["median"],
                "worst_s": summary["convergence_s"]["worst"],
                "met": median <= 3.0 and worst <= 10.0 and len(secs) > 0,
            },
        }
    if ae:
        print(
            f"anti-entropy, {ae['docs']} docs differing in {ae['differ']}: {ae['round_trips']} round trips, "
            f"{ae['bytes']} bytes, {ae['seconds_in_process']:.3f} s in process "
            f"({ae['seconds_with_wan']:.3f} s with the WAN's round trips); full state {ae['full_state_bytes']} bytes "
            f"({ae['ratio']:.3%})",
            flush=True,
        )
        summary["anti_entropy"] = ae
        targets["anti_entropy"] = {
            "target_ratio": 0.01,
            "target_s": 2.0,
            "ratio": round(ae["ratio"], 6),
            "seconds": ae["seconds_with_wan"],
            "met": ae["ratio"] <= 0.01 and ae["seconds_with_wan"] <= 2.0 and ae["roots_equal_after"],
        }
    summary["targets"] = targets
    summary["all_met"] = bool(targets) and all(t["met"] for t in targets.values()) and error is None
    print(orjson.dumps(summary).decode(), flush=True)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so a SIGTERM still runs the cleanup (stop our processes, remove the directory)


def orchestrate(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupted)  # outside the event loop (the anti-entropy phase)
    workdir = Path(tempfile.mkdtemp(prefix="crdtstore-bench-repl-"))
    procs: list[Proc] = []
    phases: dict[str, Any] | None = None
    error: str | None = None
    interrupted = False
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (shared: figures are noisy)")
    try:
        if not args.skip_cluster:
            phases = _run_async(cluster_phases(args, workdir, procs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    except Exception as exc:  # report what was measured, with the failure, rather than nothing
        error = f"{type(exc).__name__}: {exc}"
        print(f"cluster phases failed: {error} (logs were in the temporary directory)", file=sys.stderr)
        for proc in procs:
            log = workdir / f"{proc.name}.log"
            if log.exists():
                tail = log.read_text(errors="replace")[-2000:]
                if tail.strip():
                    print(f"--- {proc.name}.log (tail)\n{tail}", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep:
            print(f"kept {workdir} (data directories and each process's log)", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        print("interrupted: stopped the processes this bench started", file=sys.stderr)
        return 130
    # After the cluster is gone, so the measurement has the machine to itself.
    print(f"anti-entropy: building two replicas of {args.docs} documents", flush=True)
    ae = anti_entropy(args.docs, args.differ, args.latency_ms / 1e3)
    report(args, phases, ae, error)
    return 0 if error is None else 1


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def build_parser() -> argparse.ArgumentParser:
    import dataclasses

    from crdtstore.config import ServeConfig

    serve_defaults = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="lag phase length (the issue asks >= 60)")
    parser.add_argument("--rate", type=float, default=1000.0, help="writes per second to region us")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="one-way WAN latency")
    parser.add_argument("--docs", type=int, default=100_000, help="documents per replica for anti-entropy")
    parser.add_argument("--differ", type=int, default=10, help="documents that differ for anti-entropy")
    parser.add_argument("--lag-docs", type=int, default=100, help="documents the lag phase writes")
    parser.add_argument("--rounds", type=int, default=5, help="cut/heal rounds")
    parser.add_argument("--cut-seconds", type=float, default=3.0, help="writing while cut, per round")
    parser.add_argument("--conv-rate", type=float, default=300.0, help="writes/s (all regions) while cut")
    parser.add_argument("--conv-docs", type=int, default=20, help="documents the convergence rounds write")
    parser.add_argument("--drain-seconds", type=float, default=180.0, help="bound on waiting for replicas to catch up")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    parser.add_argument("--dump", help="write per-write ack time, write latency and lags to this JSON file")
    parser.add_argument(
        "--trace", action="store_true", help="every process logs its stalls and slow steps (see --keep)"
    )
    parser.add_argument("--skip-cluster", action="store_true", help="only the anti-entropy measurement")
    # A diagnostic, off by default: the figures are for durable (fsync) commits.
    parser.add_argument("--no-sync", action="store_true", help="nodes skip fsync (diagnosis only)")
    # The nodes' own default (crdtstore serve --anti-entropy-interval), stated: the first periodic
    # session then falls inside the lag phase, so its cost under load is part of the figures.
    parser.add_argument(
        "--anti-entropy-interval",
        type=float,
        default=serve_defaults["anti_entropy_interval"],
        help="seconds between the nodes' periodic anti-entropy sessions (default: crdtstore serve's)",
    )
    # Roles of the helper processes this script starts (not for direct use).
    parser.add_argument("--role", choices=["region", "wan", "observer"], help=argparse.SUPPRESS)
    parser.add_argument("--region", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="append", help=argparse.SUPPRESS)
    parser.add_argument("--target", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--url", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    return parser


ROLES: dict[str, Callable[[argparse.Namespace], int]] = {"region": run_region, "wan": run_wan, "observer": run_observer}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role is not None:
        return ROLES[args.role](args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
