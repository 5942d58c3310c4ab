"""Bulk writes: ``POST /v1/batch`` of 100 one-op documents against single writes, in the same run.

Usage::

    python bench/batch.py                           # concurrency 1 and 16, 5 rounds of 3 s per phase
    python bench/batch.py --concurrency 1 --rounds 3 --seconds 2

One real server (``bench/api.py``'s ``real``: fsync'd LMDB, so an answer
means durable) in a process of its own; the load generator runs here on raw
keep-alive connections (``bench/loadgen.py``). For each concurrency, rounds
run the two phases in turn, and the median round of each is reported:

* ``single``: each connection sends ``POST /v1/docs/{id}`` with one
  ``increment`` op, to 100 documents of its own in turn;
* ``batch``: each connection sends ``POST /v1/batch`` with the same op for
  100 documents of its own (``--batch-docs``).

Connection n writes documents ``n * 100 ...`` modulo ``--docs`` (800), so
the documents a phase touches fit the node's cache of decoded documents
(1,024 by default): past it, every write decodes its document from LMDB
first, which costs both phases alike and is not what this compares.

Both phases count documents that answered 200 (a batch's documents by their
own status). Reported per phase: documents/s (wall) and the server's CPU
per document (``/proc``, Linux). The wall ratio is what a client sees; the
CPU ratio (documents per server CPU second) does not move with the load
other processes put on a shared machine. With one connection a single write
waits for its own commit and fsync; at higher concurrency group commit
already shares fsyncs among single writes, so the ratio there is the HTTP
and per-request cost a batch saves.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import api
import orjson
import procs
from loadgen import Connection

__all__ = ["main"]


@dataclass
class Phase:
    name: str
    docs: int = 0
    failed: int = 0
    requests: int = 0
    elapsed: float = 0.0
    server_cpu: float | None = None

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_us_per_doc(self) -> float | None:
        return None if self.server_cpu is None or not self.docs else self.server_cpu / self.docs * 1e6

    def line(self) -> str:
        cpu = self.cpu_us_per_doc
        return (
            f"{self.name:<8} {self.docs:>8} docs in {self.requests:>6} req  {self.docs_per_s:>9.0f} docs/s  "
            f"failed {self.failed}" + (f"  server cpu {cpu:.0f} us/doc" if cpu is not None else "")
        )


def single_request(conn: int, i: int, size: int, docs: int) -> bytes:
    body = orjson.dumps({"ops": [{"op": "increment", "path": ["n"]}]})
    return api.http_request("POST", f"/v1/docs/single-{(conn * size + i % size) % docs}", body)


def batch_request(conn: int, size: int, docs: int) -> bytes:
    op = {"op": "increment", "path": ["n"]}
    entries = [{"id": f"batch-{(conn * size + k) % docs}", "ops": [op]} for k in range(size)]
    return api.http_request("POST", "/v1/batch", orjson.dumps({"docs": entries}))


async def run_phase(
    name: str,
    server: api.ServerProc,
    *,
    concurrency: int,
    seconds: float,
    max_requests: int,
    batch_docs: int,
    docs: int,
) -> Phase:
    phase = Phase(name)
    conns = [await Connection.open(server.port) for _ in range(concurrency)]
    budget = [max_requests]
    deadline = time.perf_counter() + seconds

    async def worker(index: int, conn: Connection) -> None:
        i = 0
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            if name == "single":
                status, _ = await conn.exchange(single_request(index, i, batch_docs, docs))
                ok = 1 if status == 200 else 0
                phase.docs += ok
                phase.failed += 1 - ok
            else:
                status, body = await conn.exchange(batch_request(index, batch_docs, docs))
                results = orjson.loads(body)["results"] if status == 200 else []
                ok = sum(1 for r in results if r["status"] == 200)
                phase.docs += ok
                phase.failed += batch_docs - ok
            phase.requests += 1
            i += 1

    cpu0, start = procs.cpu_seconds(server.proc.pid), time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    phase.elapsed = time.perf_counter() - start
    cpu1 = procs.cpu_seconds(server.proc.pid)
    if cpu0 is not None and cpu1 is not None:
        phase.server_cpu = cpu1 - cpu0
    for conn in conns:
        conn.close()
    return phase


def _median(phases: list[Phase], key: Any) -> Phase:
    return sorted(phases, key=key)[len(phases) // 2]


async def run(args: argparse.Namespace, server: api.ServerProc) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "batch_docs": args.batch_docs,
        "docs": args.docs,
        "seconds": args.seconds,
        "rounds": args.rounds,
    }
    for concurrency in args.concurrency:
        opts = {
            "concurrency": concurrency,
            "seconds": args.seconds,
            "max_requests": args.max_requests,
            "batch_docs": args.batch_docs,
            "docs": args.docs,
        }
        rounds: dict[str, list[Phase]] = {"single": [], "batch": []}
        for n in range(args.rounds):
            # Phases in turn, so drifting background load falls on both.
            for name in rounds:
                phase = await run_phase(name, server, **opts)
                rounds[name].append(phase)
                print(f"c={concurrency} round {n + 1}: {phase.line()}", flush=True)
        wall = {name: _median(p, lambda x: x.docs_per_s) for name, p in rounds.items()}
        print(f"c={concurrency} median rounds:")
        for phase in wall.values():
            print("  " + phase.line(), flush=True)
        key = f"c{concurrency}"
        summary[f"{key}_single_docs_per_s"] = round(wall["single"].docs_per_s, 1)
        summary[f"{key}_batch_docs_per_s"] = round(wall["batch"].docs_per_s, 1)
        summary[f"{key}_failed"] = sum(p.failed for ps in rounds.values() for p in ps)
        ratio_wall = wall["batch"].docs_per_s / wall["single"].docs_per_s if wall["single"].docs_per_s else 0.0
        summary[f"{key}_ratio_wall"] = round(ratio_wall, 2)
        cpu = {name: [x.cpu_us_per_doc for x in p] for name, p in rounds.items()}
        if all(v is not None for vs in cpu.values() for v in vs):
            single_us = sorted(cpu["single"])[len(cpu["single"]) // 2]  # type: ignore[type-var]
            batch_us = sorted(cpu["batch"])[len(cpu["batch"]) // 2]  # type: ignore[type-var]
            assert single_us is not None and batch_us is not None
            summary[f"{key}_single_cpu_us_per_doc"] = round(single_us, 1)
            summary[f"{key}_batch_cpu_us_per_doc"] = round(batch_us, 1)
            summary[f"{key}_ratio_cpu"] = round(single_us / batch_us, 2) if batch_us else 0.0
        print(
            f"c={concurrency}: batch/single docs/s = {ratio_wall:.1f}x wall"
            + (f", {summary[f'{key}_ratio_cpu']:.1f}x per server CPU second" if f"{key}_ratio_cpu" in summary else ""),
            flush=True,
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="connections (one run each)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per phase and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both phases (median reported)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per phase and round, at most")
    parser.add_argument("--batch-docs", type=int, default=100, help="documents per batch (server allows 100)")
    parser.add_argument(
        "--docs",
        type=int,
        default=800,
        help="distinct documents each phase writes (default within the node's cache of 1,024 decoded documents)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batch_docs <= 100:
        parser.error("--batch-docs is 1 to 100 (the server's default max_batch_docs)")
    if args.docs < args.batch_docs:
        parser.error("--docs must be at least --batch-docs (a batch names a document once)")

    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-batch-") as tmp:
        server = api.start_server("real", Path(tmp))
        try:
            summary = asyncio.run(run(args, server))
        finally:
            server.stop()
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    # Run as a script: make the repository and the sibling bench modules importable without installing.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
