"""What several replicas per region cost: links, messages and CPU per write, R = 1 against R = 3 and 5.

Usage::

    python bench/replicas.py                         # 3 regions, R = 1, 3, 5, 400 writes each
    python bench/replicas.py --replicas 1 5 --writes 1000

For each R it runs ``crdtstore up --regions N --replicas R --port 0`` in a
temporary directory (every replica its own process on 127.0.0.1, the
emulated WAN in ``up``'s, no added latency), waits until every replica is
linked to every other, then measures:

* **links**: replica pairs, websocket connections (every replica dials every
  peer, so each pair holds two; deltas cross on one of them) and WAN proxy links;
* **idle**: CPU seconds per second of every process (replicas + ``up``) and
  peer messages per second, over ``--idle-seconds`` with no writes (keepalive
  ticks and acks on every link);
* **per write**: ``--writes`` writes to ``us-0`` (``w=one``, ``--concurrency`` at a time, 8 by default),
  then until every replica's Merkle root is equal (bounded); CPU seconds and
  peer messages sent, summed over every process, minus the idle rate over
  the same time, divided by the writes.

The R = 1 run is the peer figure (a region as one process, as before). The
machine may be shared: CPU is each process's own (``/proc``), not wall time.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import cpu_seconds, stop  # noqa: E402

WAIT = 180.0


def _wait(what: str, check: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def _links(client: httpx.Client, url: str) -> dict[str, Any]:
    return dict(client.get(f"{url}/v1/admin/links", timeout=10).json())


def _roots(client: httpx.Client, urls: list[str]) -> set[str]:
    return {client.get(f"{url}/v1/admin/merkle", timeout=10).json()["root"] for url in urls}


def _sample(client: httpx.Client, pids: list[int], urls: list[str]) -> tuple[float, int, float]:
    cpu = sum(cpu_seconds(pid) or 0.0 for pid in pids)
    messages = sum(int(_links(client, url)["stats"].get("messages_out", 0)) for url in urls)
    return cpu, messages, time.monotonic()


async def _write(urls: str, headers: dict[str, str], writes: int, concurrency: int) -> None:
    body = {"ops": [{"op": "increment", "path": ["n"]}]}
    queue = iter(range(writes))
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:

        async def worker() -> None:
            for i in queue:
                response = await client.post(f"{urls}/v1/docs/d{i % 50}", json=body)
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def run(regions: int, replicas: int, writes: int, idle_seconds: float, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crdtstore-replicas-") as tmp:
        cwd = Path(tmp)
        out = (cwd / "console.log").open("wb")
        argv = [sys.executable, "-m", "crdtstore.cli", "up", "--port", "0"]
        argv += ["--regions", str(regions), "--replicas", str(replicas)]
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait("up to print its tokens", lambda: "token (admin" in (cwd / "console.log").read_text())
            plan = json.loads((cwd / "data" / "up.json").read_text())
            members = plan["replicas"]
            urls = [entry["url"] for entry in members.values()]
            pids = [proc.pid, *(entry["pid"] for entry in members.values())]
            token = next(
                line.split()[0] for line in (cwd / "data" / "tokens").read_text().splitlines() if "readwrite" in line
            )
            headers = {"Authorization": f"Bearer {token}"}
            n = len(urls)
            with httpx.Client(headers=headers) as client:
                _wait("every replica linked to every other", lambda: all(
                    len(_links(client, url)["peers"]) == n - 1 for url in urls
                ))  # fmt: skip
                time.sleep(1.0)  # let the handshakes' anti-entropy rounds settle
                cpu0, msg0, t0 = _sample(client, pids, urls)
                time.sleep(idle_seconds)
                cpu1, msg1, t1 = _sample(client, pids, urls)
                idle_cpu = (cpu1 - cpu0) / (t1 - t0)
                idle_msgs = (msg1 - msg0) / (t1 - t0)
                asyncio.run(_write(members[next(iter(members))]["url"], headers, writes, concurrency))
                _wait("every replica to converge", lambda: len(_roots(client, urls)) == 1)
                cpu2, msg2, t2 = _sample(client, pids, urls)
            elapsed = t2 - t1
            return {
                "regions": regions,
                "replicas_per_region": replicas,
                "replicas": n,
                "pairs": n * (n - 1) // 2,
                "connections": n * (n - 1),
                "wan_links": sum(1 for a in members.values() for b in members.values() if a["region"] != b["region"]),
                "idle_cpu_per_s": round(idle_cpu, 3),
                "idle_messages_per_s": round(idle_msgs, 1),
                "writes": writes,
                "concurrency": concurrency,
                "seconds": round(elapsed, 2),
                "cpu_ms_per_write": round(1000 * max(cpu2 - cpu1 - idle_cpu * elapsed, 0.0) / writes, 3),
                "messages_per_write": round(max(msg2 - msg1 - idle_msgs * elapsed, 0.0) / writes, 2),
            }
        finally:
            stop(proc, timeout=60)
            out.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", type=int, default=3)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8, help="writes in flight (1: no group commit sharing)")
    args = parser.parse_args()
    results = []
    for replicas in args.replicas:
        result = run(args.regions, replicas, args.writes, args.idle_seconds, args.concurrency)
        results.append(result)
        print(
            f"R={replicas}: {result['replicas']} replicas, {result['pairs']} pairs, {result['connections']} "
            f"connections, {result['wan_links']} WAN links; idle {result['idle_cpu_per_s']} CPU s/s, "
            f"{result['idle_messages_per_s']} msgs/s; per write {result['cpu_ms_per_write']} CPU ms, "
            f"{result['messages_per_write']} msgs",
            flush=True,
        )
    base = results[0]
    ratios = {
        f"R={r['replicas_per_region']}/R={base['replicas_per_region']}": {
            "cpu_per_write": round(r["cpu_ms_per_write"] / base["cpu_ms_per_write"], 2)
            if base["cpu_ms_per_write"]
            else None,
            "messages_per_write": round(r["messages_per_write"] / base["messages_per_write"], 2)
            if base["messages_per_write"]
            else None,
        }
        for r in results[1:]
    }
    print(json.dumps({"results": results, "ratios": ratios}), flush=True)


if __name__ == "__main__":
    main()
