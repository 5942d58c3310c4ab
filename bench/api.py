"""HTTP API benchmark: a bare Starlette endpoint vs the durable write and the read endpoints.

Usage::

    python bench/api.py                      # all: bare, write, read, then 1,000 writes/s fixed rate
    python bench/api.py --mode throughput    # only the closed-loop comparison
    python bench/api.py --mode fixed-rate --rate 1000 --seconds 10

Each server runs in a process of its own with the same uvicorn settings
(``crdtstore.server.uvicorn_config`` over one ``ServeConfig``, access log off),
and the load generator runs in this process: raw asyncio HTTP/1.1 keep-alive
connections (uvloop when available), so the client costs a few microseconds
per request rather than httpx's tens. The generator reports its own CPU use;
near 100% would mean it, not the server, was the bottleneck.

Closed loop (throughput): ``--concurrency`` connections each send a request
as soon as the previous answer arrived, for ``--seconds`` or ``--requests``,
whichever comes first; ``--rounds`` rounds run every phase in turn, and the
median round of each phase is reported. Open loop (fixed rate): requests are scheduled at
``--rate`` per second whatever happens; a request's latency counts from its
scheduled time, so a stall shows up in p99 instead of hiding in fewer sends
(no coordinated omission).

Two more servers bound the write figure from both sides. One runs the real
app over a node that stores nothing (``write-http``): the same write
requests then measure what the HTTP layer alone allows, the ceiling of
write/bare for any node behind it. The other is the real server committing
without fsync (``write-nosync``, ``--no-sync``): write/write-nosync is what
durability costs once group commit shares one fsync among a batch.

The last line printed is one JSON object (ratios write/bare, read/bare,
write-http/bare, write-nosync/bare, write/write-nosync and write/write-http,
and the fixed-rate p99 when measured). Each ratio comes twice more:
``*_cpu``, the same comparison in server CPU per request (the phase with
less CPU per request over the one with more: what the ratio of rates would
be if both were bound by the server's CPU, and much steadier than rates on
a loaded machine), and ``*_spread``, the ratio of rates in each round
(rounds pair phases run seconds apart: min, median, max), so a figure comes
with the noise around it. write/write-http is the node's share: at 0.5 the
node's part of a durable write costs what the HTTP layer's does.

Then each pair runs once more at one fixed rate, 0.9 of its slower phase's
closed-loop rate (``*_same_rate_cpu``: the faster phase's server CPU per
request over the slower one's, both at that rate). A server's CPU per
request falls as its rate rises (at saturation the event loop serves many
sockets per wakeup, and group commit fills its batches), so the closed-loop
ratios also charge the slower phase for the faster one's batching at a rate
it never reaches; at the slower one's own operating point,
``write_over_write_http_same_rate_cpu`` is the node's part of a durable
write against the HTTP layer's part at the rate durable writes run at.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import loadgen
import orjson
import procs
from diskprobe import DiskProbe
from loadgen import Connection

__all__ = ["main"]

TOKEN = "bench-token-0123456789abcdef"
READ_DOCS = 256
# The same-rate runs' rate, of a pair's slower closed-loop rate: that phase at its own operating point (a
# little below its maximum, so the rate holds in every round), the faster one below its own.
SAME_RATE_FRACTION = 0.9


# Servers (each in its own process).


def serve_bare(port_file: Path) -> int:
    """The baseline: one Starlette route answering a small JSON body, under the same uvicorn settings."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from crdtstore.api.errors import JSONResponse
    from crdtstore.config import ServeConfig
    from crdtstore.server import run_servers, uvicorn_config

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"version": "v1.bench", "created": False})

    app = Starlette(routes=[Route("/bare", hello, methods=["GET", "POST"])])
    config = _server_settings(port=0)
    assert isinstance(config, ServeConfig)
    return run_servers([uvicorn_config(app, config)], announce=lambda urls: port_file.write_text(urls[0]))


def serve_real(port_file: Path, data: Path, *, no_sync: bool = False) -> int:
    """The real server; ``no_sync``: the same, committing without fsync (the ``write-nosync`` phase)."""
    from crdtstore.server import build_server_app, run_servers, uvicorn_config

    config = _server_settings(port=0, data=data, no_sync=no_sync)
    app = build_server_app(config, env={"CRDTSTORE_TOKENS": f"{TOKEN}:readwrite"})
    return run_servers([uvicorn_config(app, config)], announce=lambda urls: port_file.write_text(urls[0]))


def serve_nonode(port_file: Path, data: Path) -> int:
    """The real app whose node answers writes without applying or storing anything.

    Everything else of the write path runs as in the real server (auth,
    body and op checks, metrics, the JSON answer), so its rate is the most
    any node could reach behind this HTTP layer: the ceiling of write/bare.
    """
    import crdtstore.server
    from crdtstore.node import Node, WriteResult, check_doc_id
    from crdtstore.server import build_server_app, run_servers, uvicorn_config

    class NoCommitNode(Node):
        async def apply(self, doc_id: str, ops: list[dict[str, Any]]) -> WriteResult:
            check_doc_id(doc_id)
            return WriteResult(version="v1.e30", created=False, origin=self.replica_id, seq=0)

    crdtstore.server.Node = NoCommitNode  # type: ignore[misc]
    config = _server_settings(port=0, data=data)
    app = build_server_app(config, env={"CRDTSTORE_TOKENS": f"{TOKEN}:readwrite"})
    return run_servers([uvicorn_config(app, config)], announce=lambda urls: port_file.write_text(urls[0]))


def _server_settings(**overrides: Any) -> Any:
    """One ServeConfig for both servers: what differs between them is only the app."""
    from crdtstore.config import ServeConfig

    base = ServeConfig(region="bench", host="127.0.0.1", access_log=False, log_level="warning")
    return ServeConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **overrides})


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        procs.stop(self.proc)


def start_server(kind: str, workdir: Path) -> ServerProc:
    port_file = workdir / f"{kind}.url"
    cmd = [sys.executable, __file__, "--serve", kind, "--workdir", str(workdir)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}")
        if port_file.exists() and port_file.read_text():
            url = port_file.read_text()
            try:
                if httpx.get(url + "/bare" if kind == "bare" else url + "/readyz", timeout=2).status_code == 200:
                    return ServerProc(proc, url)
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


# The load generator.


def http_request(method: str, path: str, body: bytes = b"") -> bytes:
    return loadgen.http_request(method, path, TOKEN, body)


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    server_cpu: float | None = None  # the server process's CPU seconds during the phase (Linux)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def server_cpu_per_request_us(self) -> float | None:
        done = len(self.latencies) + self.errors
        return None if self.server_cpu is None or not done else self.server_cpu / done * 1e6

    def line(self) -> str:
        per_request = self.server_cpu_per_request_us
        return (
            f"{self.name:<12} {len(self.latencies):>8} req {self.rps:>9.0f} req/s  "
            f"p50 {self.quantile(0.5) * 1e3:7.2f} ms  p99 {self.quantile(0.99) * 1e3:7.2f} ms  "
            f"errors {self.errors}  loadgen cpu {self.cpu:.0%}"
            + (f"  server cpu {per_request:.0f} us/req" if per_request is not None else "")
        )


RequestFactory = Callable[[int, int], bytes]


async def closed_loop(
    name: str, server: ServerProc, make: RequestFactory, *, concurrency: int, seconds: float, requests: int
) -> Result:
    result = Result(name)
    port = server.port
    conns = [await Connection.open(port) for _ in range(concurrency)]
    budget = [requests]
    deadline = time.perf_counter() + seconds

    async def worker(index: int, conn: Connection) -> None:
        i = 0
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            start = time.perf_counter()
            status, _ = await conn.exchange(make(index, i))
            if status == 200:
                result.latencies.append(time.perf_counter() - start)
            else:
                result.errors += 1
            i += 1

    cpu0, server0, start = _cpu(), procs.cpu_seconds(server.proc.pid), time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    result.elapsed = time.perf_counter() - start
    result.cpu = (_cpu() - cpu0) / result.elapsed
    server1 = procs.cpu_seconds(server.proc.pid)
    if server0 is not None and server1 is not None:
        result.server_cpu = server1 - server0
    for conn in conns:
        conn.close()
    return result


async def fixed_rate(
    name: str, port: int, make: RequestFactory, *, rate: float, seconds: float, pool: int, pid: int | None = None
) -> Result:
    """``rate`` requests a second for ``seconds`` over ``pool`` connections; ``pid``: the server's, for its CPU."""
    result = Result(name)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(pool):
        idle.put_nowait(await Connection.open(port))
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    tasks = []

    async def one(i: int, scheduled: float) -> None:
        conn = await idle.get()  # waiting for a free connection counts in the latency
        try:
            status, _ = await conn.exchange(make(i % pool, i))
        finally:
            idle.put_nowait(conn)
        if status == 200:
            result.latencies.append(time.perf_counter() - scheduled)
        else:
            result.errors += 1

    cpu0, server0 = _cpu(), procs.cpu_seconds(pid) if pid is not None else None
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    result.elapsed = time.perf_counter() - start
    result.cpu = (_cpu() - cpu0) / result.elapsed
    server1 = procs.cpu_seconds(pid) if pid is not None else None
    if server0 is not None and server1 is not None:
        result.server_cpu = server1 - server0
    while not idle.empty():
        idle.get_nowait().close()
    return result


async def same_rate(
    args: argparse.Namespace,
    pairs: dict[str, tuple[str, str]],
    phases: dict[str, tuple[ServerProc, RequestFactory]],
    by_name: dict[str, Result],
) -> dict[str, Any]:
    """Each pair's two phases at the slower one's operating point (:data:`SAME_RATE_FRACTION`): server CPU per request.

    A server's CPU per request falls as its rate rises: at saturation its event
    loop serves many sockets per wakeup. The HTTP layer alone (``write-http``)
    answered 10,000 writes/s at 96 µs of CPU each in one run, and 2,500 a
    second at 169 µs each. So the closed-loop ratio of two phases that saturate
    at different rates also charges the slower one for the faster one's
    batching at a rate it never reaches. At one rate, the slower phase's own
    (and below it, its group commits batch less and each write costs more),
    ``den CPU / num CPU`` compares what each request costs: the node's part
    of a durable write against the HTTP layer's, at the rate durable writes
    run at.
    """
    out: dict[str, Any] = {}
    for key, (num, den) in pairs.items():
        rate = round(SAME_RATE_FRACTION * min(by_name[num].rps, by_name[den].rps), -1)
        cpu: dict[str, list[float]] = {num: [], den: []}
        for _ in range(args.rounds):
            for name in (num, den):
                server, make = phases[name]
                r = await fixed_rate(
                    f"{name}@{rate:g}", server.port, make, rate=rate, seconds=args.seconds, pool=args.concurrency,
                    pid=server.proc.pid,
                )  # fmt: skip
                if r.server_cpu_per_request_us is not None:
                    cpu[name].append(r.server_cpu_per_request_us)
                print(f"same rate: {r.line()}", flush=True)
        if cpu[num] and cpu[den]:
            num_us, den_us = sorted(cpu[num])[len(cpu[num]) // 2], sorted(cpu[den])[len(cpu[den]) // 2]
            out[f"{key}_same_rate"] = {
                "rate": rate,
                f"{num}_cpu_us": round(num_us, 1),
                f"{den}_cpu_us": round(den_us, 1),
            }
            out[f"{key}_same_rate_cpu"] = round(den_us / num_us, 4)
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_request(conn: int, i: int) -> bytes:
    body = orjson.dumps({"ops": [{"op": "increment", "path": ["n"]}, {"op": "set", "path": ["last"], "value": i}]})
    return http_request("POST", f"/v1/docs/bench-{conn}-{i % 8}", body)


def read_request(conn: int, i: int) -> bytes:
    return http_request("GET", f"/v1/docs/read-{(conn * 7919 + i) % READ_DOCS}")


BARE = http_request("GET", "/bare")


async def populate(port: int) -> None:
    conn = await Connection.open(port)
    for k in range(READ_DOCS):
        body = orjson.dumps(
            {
                "ops": [
                    {"op": "set", "path": ["title"], "value": f"doc {k}"},
                    {"op": "increment", "path": ["n"], "by": k},
                ]
            }
        )
        assert (await conn.exchange(http_request("POST", f"/v1/docs/read-{k}", body)))[0] == 200
    conn.close()


async def run(args: argparse.Namespace, servers: dict[str, ServerProc], workdir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds}
    real = servers["real"]
    if args.mode in ("all", "throughput"):
        await populate(real.port)
        opts = {"concurrency": args.concurrency, "seconds": args.seconds, "requests": args.requests}
        phases: list[tuple[str, ServerProc, RequestFactory]] = [
            ("bare", servers["bare"], lambda c, i: BARE),
            ("write", real, write_request),
            ("read", real, read_request),
            ("write-http", servers["nonode"], write_request),
            ("write-nosync", servers["nosync"], write_request),
        ]
        # Rounds of every phase in turn: on a shared machine the background load
        # drifts, and each ratio then compares phases run seconds apart; the
        # median round of each phase is reported.
        rounds: dict[str, list[Result]] = {name: [] for name, _, _ in phases}
        disk: list[dict[str, Any]] = []
        for n in range(args.rounds):
            for name, server, make in phases:
                if name == "write":
                    # A durable write waits for its fsync: the disk, timed on its own in the same seconds,
                    # tells a stalled disk from a slow server (bench/diskprobe.py).
                    with DiskProbe(workdir) as probe:
                        result = await closed_loop(name, server, make, **opts)
                    disk.append(probe.summary())
                    fsync = disk[-1].get("fsync_ms", {})
                    note = f"  disk: fsync p99 {fsync.get('p99')} ms, stalled {disk[-1].get('stalled_s')} s"
                else:
                    result = await closed_loop(name, server, make, **opts)
                    note = ""
                rounds[name].append(result)
                print(f"round {n + 1}: {result.line()}{note}", flush=True)
        summary["write_disk"] = disk
        by_name = {name: sorted(results, key=lambda r: r.rps)[len(results) // 2] for name, results in rounds.items()}
        print("median round of each phase:")
        for r in by_name.values():
            print(r.line(), flush=True)
            summary[f"{r.name}_rps"] = round(r.rps, 1)
            summary[f"{r.name}_p50_ms"] = round(r.quantile(0.5) * 1e3, 3)
            summary[f"{r.name}_p99_ms"] = round(r.quantile(0.99) * 1e3, 3)
            summary[f"{r.name}_errors"] = sum(x.errors for x in rounds[r.name])
            per_request = [x.server_cpu_per_request_us for x in rounds[r.name]]
            if None not in per_request:
                summary[f"{r.name}_server_cpu_us"] = round(sorted(per_request)[len(per_request) // 2], 1)  # type: ignore[type-var]
        summary["write_over_bare"] = round(by_name["write"].rps / by_name["bare"].rps, 4)
        summary["read_over_bare"] = round(by_name["read"].rps / by_name["bare"].rps, 4)
        # The same write requests against a node that stores nothing: the HTTP layer's own ceiling.
        summary["write_http_over_bare"] = round(by_name["write-http"].rps / by_name["bare"].rps, 4)
        # The same server without fsync: what durability costs once group commit shares the fsync.
        summary["write_nosync_over_bare"] = round(by_name["write-nosync"].rps / by_name["bare"].rps, 4)
        summary["write_over_write_nosync"] = round(by_name["write"].rps / by_name["write-nosync"].rps, 4)
        summary["write_over_write_http"] = round(by_name["write"].rps / by_name["write-http"].rps, 4)
        pairs = {
            "write_over_bare": ("write", "bare"),
            "read_over_bare": ("read", "bare"),
            "write_over_write_http": ("write", "write-http"),
            "write_over_write_nosync": ("write", "write-nosync"),
        }
        for key, (num, den) in pairs.items():
            per_round = sorted(a.rps / b.rps for a, b in zip(rounds[num], rounds[den], strict=True) if b.rps)
            if per_round:
                summary[f"{key}_spread"] = [
                    round(per_round[0], 4),
                    round(per_round[len(per_round) // 2], 4),
                    round(per_round[-1], 4),
                ]
            num_cpu, den_cpu = summary.get(f"{num}_server_cpu_us"), summary.get(f"{den}_server_cpu_us")
            if num_cpu and den_cpu:
                summary[f"{key}_cpu"] = round(den_cpu / num_cpu, 4)
        summary["loadgen_cpu_max"] = round(max(r.cpu for results in rounds.values() for r in results), 2)
        summary |= await same_rate(args, pairs, {name: (server, make) for name, server, make in phases}, by_name)
    if args.mode in ("all", "fixed-rate"):
        r = await fixed_rate(
            f"write@{args.rate:g}/s",
            real.port,
            write_request,
            rate=args.rate,
            seconds=args.rate_seconds,
            pool=args.concurrency,
        )
        print(r.line() + f"  max {max(r.latencies, default=0) * 1e3:.2f} ms", flush=True)
        summary["fixed_rate"] = args.rate
        summary["fixed_rate_achieved"] = round(r.rps, 1)
        summary["fixed_rate_write_p50_ms"] = round(r.quantile(0.5) * 1e3, 3)
        summary["fixed_rate_write_p99_ms"] = round(r.quantile(0.99) * 1e3, 3)
        summary["fixed_rate_errors"] = r.errors
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["all", "throughput", "fixed-rate"], default="all")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="per closed-loop phase and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the closed-loop phases (median reported)")
    parser.add_argument("--requests", type=int, default=200_000, help="per closed-loop phase, at most")
    parser.add_argument("--rate", type=float, default=1000.0, help="writes per second in fixed-rate mode")
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--serve", choices=["bare", "real", "nonode", "nosync"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve == "bare":
        return serve_bare(args.workdir / "bare.url")
    if args.serve == "real":
        return serve_real(args.workdir / "real.url", args.workdir / "data")
    if args.serve == "nonode":
        return serve_nonode(args.workdir / "nonode.url", args.workdir / "nonode-data")
    if args.serve == "nosync":
        return serve_real(args.workdir / "nosync.url", args.workdir / "nosync-data", no_sync=True)

    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        workdir = Path(tmp)
        servers: dict[str, ServerProc] = {}
        kinds = ["real"] if args.mode == "fixed-rate" else ["bare", "real", "nonode", "nosync"]
        try:
            for kind in kinds:
                servers[kind] = start_server(kind, workdir)
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            with runner:
                summary = runner.run(run(args, servers, workdir))
        finally:
            for server in servers.values():
                server.stop()
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    # Run as a script: make the repository importable without installing it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
