"""Connection flood benchmark: read latency and peer links while idle and trickling sockets hold the listener.

Usage::

    python bench/connections.py                          # 2,000 idle + 200 trickling, 20 s under attack
    python bench/connections.py --idle 500 --seconds 5   # smaller

Two ``crdtstore serve`` processes on 127.0.0.1: region ``a`` (attacked)
and region ``b``, which dials ``a`` as its peer on ``a``'s API port (no
``--peer-port``: peers share the attacked listener). This process then:

1. reads one document from ``a`` at ``--rate`` requests per second over one
   keep-alive connection for ``--seconds`` (the baseline);
2. opens ``--idle`` sockets that never send a byte and ``--trickle`` sockets
   that send a request's headers one byte a second, reopening each one the
   server closes, so the attack stays at full strength;
3. reads again for ``--seconds`` under the attack, and meanwhile writes at
   ``b`` and waits for the write to be readable at ``a`` (the peers still
   replicate), and asks both regions which peers they have linked.

Latency counts from each read's scheduled time (open loop), so a stall
shows in p99 instead of hiding in fewer sends. The last line printed is one
JSON object: p50/p99 of both phases, errors, sockets the server closed, and
whether the peers stayed linked. :func:`run` is also what
``tests/api/test_connections_load.py`` drives, smaller, asserting only what
holds on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FloodResult", "main", "run"]

REPO = Path(__file__).resolve().parents[1]
TOKEN = "flood-bench-token-0123456789"
SECRET = "flood-bench-cluster-secret-0123456789abcdef"
DOC = "flood-doc"
START_TIMEOUT = 60.0
SOCKET_TIMEOUT = 10.0


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)  # each read's scheduled time, from the phase's start
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def q(p: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2) if ordered else None

        return {
            "reads": len(ordered),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "statuses": self.statuses,
            "errors": self.errors,
            "worst_ms_at_s": [
                [round(lat * 1000, 1), round(at, 2)]
                for lat, at in sorted(zip(self.latencies, self.offsets, strict=True), reverse=True)[:8]
            ],
        }


@dataclass
class FloodResult:
    baseline: Phase
    attacked: Phase
    idle_closed_by_server: int
    trickle_closed_by_server: int
    attack_sockets_open_at_end: int
    peers_before: dict[str, list[str]]
    peers_after: dict[str, list[str]]
    replicated_under_attack: bool

    def summary(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.figures(),
            "attacked": self.attacked.figures(),
            "idle_closed_by_server": self.idle_closed_by_server,
            "trickle_closed_by_server": self.trickle_closed_by_server,
            "attack_sockets_open_at_end": self.attack_sockets_open_at_end,
            "peers_before": self.peers_before,
            "peers_after": self.peers_after,
            "replicated_under_attack": self.replicated_under_attack,
        }


# Servers.


class Server:
    """One ``crdtstore serve`` child on 127.0.0.1, port 0; stopped by its own pid."""

    def __init__(self, workdir: Path, region: str, args: Sequence[str]) -> None:
        self.log = workdir / f"{region}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTORE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["CRDTSTORE_CLUSTER_SECRET"] = SECRET
        env["CRDTSTORE_TOKENS"] = f"{TOKEN}:readwrite"
        cmd = [
            sys.executable, "-m", "crdtstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
            "--region", region, "--data", str(workdir / region), "--no-sync", *args,
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            for line in self.log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("msg") == "listening":
                        return int(record["port"])
            time.sleep(0.05)
        raise RuntimeError("server did not report its port")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


# A minimal HTTP/1.1 client (httpx costs more per request than the server does).


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SOCKET_TIMEOUT)
    lines = raw.split(b"\r\n")
    length = next((int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"content-length"), 0)
    payload = await asyncio.wait_for(reader.readexactly(length), SOCKET_TIMEOUT)
    return int(lines[0].split(b" ")[1]), payload


async def one_request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), SOCKET_TIMEOUT)
    try:
        return await request(reader, writer, method, path, body)
    finally:
        writer.close()


async def wait_ready(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            if (await one_request(port, "GET", "/readyz"))[0] == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("server not ready")


async def linked_peers(ports: dict[str, int]) -> dict[str, list[str]]:
    peers = {}
    for region, port in ports.items():
        status, body = await one_request(port, "GET", "/v1/admin/links")
        peers[region] = json.loads(body)["peers"] if status == 200 else []
    return peers


async def wait_linked(ports: dict[str, int]) -> dict[str, list[str]]:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        peers = await linked_peers(ports)
        if all(peers.values()) or time.monotonic() > deadline:
            return peers
        await asyncio.sleep(0.2)


# The load.


async def reads(port: int, *, rate: float, seconds: float) -> Phase:
    """Open-loop reads of one document over one keep-alive connection (reconnecting if it drops)."""
    phase = Phase()
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    t0 = time.monotonic()
    for i in range(int(rate * seconds)):
        scheduled = t0 + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), SOCKET_TIMEOUT)
            status, _ = await request(*conn, "GET", f"/v1/docs/{DOC}")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            phase.errors += 1
            if conn is not None:
                conn[1].close()
            conn = None
            continue
        phase.latencies.append(time.monotonic() - scheduled)
        phase.offsets.append(scheduled - t0)
        phase.statuses[status] = phase.statuses.get(status, 0) + 1
    if conn is not None:
        conn[1].close()
    return phase


class Attack:
    """``idle`` sockets that never send a byte and ``trickle`` ones that send a header byte a second.

    Each socket the server closes is counted and reopened until :meth:`stop`.
    """

    def __init__(self, port: int, *, idle: int, trickle: int) -> None:
        self.port = port
        self.idle = idle
        self.trickle = trickle
        self.closed = {"idle": 0, "trickle": 0}
        self.open = 0
        self.connects = 0
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.opened = asyncio.Event()

    async def start(self) -> None:
        gate = asyncio.Semaphore(100)  # connect in waves, not 2,200 SYNs at once into one backlog
        kinds = ["idle"] * self.idle + ["trickle"] * self.trickle
        self.tasks = [asyncio.create_task(self._socket(kind, gate)) for kind in kinds]
        deadline = time.monotonic() + START_TIMEOUT
        # Connected once each, not all open at once: under the cap, newcomers push the oldest out.
        while self.connects < len(kinds) * 0.95 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def stop(self) -> int:
        self.stopping = True
        still_open = self.open
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return still_open

    async def _socket(self, kind: str, gate: asyncio.Semaphore) -> None:
        while not self.stopping:
            try:
                async with gate:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), SOCKET_TIMEOUT
                    )
            except (TimeoutError, OSError):
                await asyncio.sleep(0.5)
                continue
            self.open += 1
            self.connects += 1
            try:
                if kind == "idle":
                    await reader.read()  # returns at EOF: the server closed it
                else:
                    await self._trickle(reader, writer)
                self.closed[kind] += 1
            except (OSError, asyncio.IncompleteReadError):
                self.closed[kind] += 1
            finally:
                self.open -= 1
                writer.close()

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Pad: " + b"a" * 100_000
        read = asyncio.ensure_future(reader.read())
        try:
            for byte in request:
                writer.write(bytes([byte]))
                done, _ = await asyncio.wait({read}, timeout=1.0)
                if done:
                    return  # answered (a 408) or closed
        finally:
            read.cancel()


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


class Attacker:
    """The :class:`Attack` in a child process of its own, so its thousands of sockets share no event loop
    (nor CPU time slice) with the client whose latency is measured.

    The child prints ``ready`` once its sockets are open, and its counts as JSON once its stdin closes.
    """

    def __init__(self, port: int, *, idle: int, trickle: int) -> None:
        cmd = [sys.executable, __file__, "--attack", str(port), "--idle", str(idle), "--trickle", str(trickle)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), START_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"attacker failed: {line!r}")

    async def stop(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.read), START_TIMEOUT)
        await asyncio.to_thread(self.proc.wait, START_TIMEOUT)
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


async def attack_main(port: int, idle: int, trickle: int) -> None:
    """The child's side of :class:`Attacker`."""
    raise_fd_limit(idle + trickle + 256)
    # The attack stands for clients on other machines: on this one, it yields the CPU to the server under test.
    os.nice(19)
    attack = Attack(port, idle=idle, trickle=trickle)
    await attack.start()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    still_open = await attack.stop()
    print(json.dumps(attack.closed | {"open_at_end": still_open}), flush=True)


async def flood(
    workdir: Path,
    *,
    idle: int,
    trickle: int,
    rate: float,
    seconds: float,
    serve_args: Sequence[str] = (),
) -> FloodResult:
    """Run the scenario of the module docstring; ``serve_args`` go to region ``a`` (the attacked one)."""
    a = Server(workdir, "a", serve_args)
    b: Server | None = None
    attacker: Attacker | None = None
    try:
        await wait_ready(a.port)
        b = Server(workdir, "b", ["--peer", f"ws://127.0.0.1:{a.port}/v1/peer"])
        await wait_ready(b.port)
        ports = {"a": a.port, "b": b.port}
        peers_before = await wait_linked(ports)
        body = json.dumps({"ops": [{"op": "set", "path": ["n"], "value": 0}]}).encode()
        await one_request(a.port, "POST", f"/v1/docs/{DOC}", body)
        baseline = await reads(a.port, rate=rate, seconds=seconds)
        attacker = Attacker(a.port, idle=idle, trickle=trickle)
        await attacker.ready()
        attacked_task = asyncio.create_task(reads(a.port, rate=rate, seconds=seconds))
        replicated = await _replicate(b.port, a.port, timeout=seconds + 10)
        attacked = await attacked_task
        peers_after = await linked_peers(ports)
        counts = await attacker.stop()
        return FloodResult(
            baseline=baseline,
            attacked=attacked,
            idle_closed_by_server=counts["idle"],
            trickle_closed_by_server=counts["trickle"],
            attack_sockets_open_at_end=counts["open_at_end"],
            peers_before=peers_before,
            peers_after=peers_after,
            replicated_under_attack=replicated,
        )
    finally:
        if attacker is not None:
            attacker.kill()
        if b is not None:
            b.stop()
        a.stop()


async def _replicate(source: int, target: int, *, timeout: float) -> bool:
    """Write at ``source``; True once ``target`` reads it (bounded by ``timeout``)."""
    body = json.dumps({"ops": [{"op": "set", "path": ["from_b"], "value": "under attack"}]}).encode()
    status, _ = await one_request(source, "POST", "/v1/docs/replicated", body)
    if status != 200:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            status, payload = await one_request(target, "GET", "/v1/docs/replicated")
            if status == 200 and json.loads(payload)["value"].get("from_b") == "under attack":
                return True
        await asyncio.sleep(0.2)
    return False


def run(workdir: Path, **options: Any) -> FloodResult:
    """:func:`flood` on a fresh event loop."""
    return asyncio.run(flood(workdir, **options))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--trickle", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0, help="reads per second of the normal client")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args(argv)
    if args.attack is not None:
        asyncio.run(attack_main(args.attack, args.idle, args.trickle))
        return 0
    with tempfile.TemporaryDirectory(prefix="crdtstore-flood-") as tmp:
        result = run(Path(tmp), idle=args.idle, trickle=args.trickle, rate=args.rate, seconds=args.seconds)
    summary = result.summary()
    base, hit = summary["baseline"], summary["attacked"]
    print(f"baseline       p50 {base['p50_ms']} ms  p99 {base['p99_ms']} ms  ({base['reads']} reads)")
    print(
        f"under attack   p50 {hit['p50_ms']} ms  p99 {hit['p99_ms']} ms  ({hit['reads']} reads, {hit['errors']} errors)"
    )
    print(
        f"attack: {args.idle} idle + {args.trickle} trickling; server closed {summary['idle_closed_by_server']} idle"
        f" and {summary['trickle_closed_by_server']} trickling; peers after: {summary['peers_after']}"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
