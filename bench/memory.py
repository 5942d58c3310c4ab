"""Memory benchmark: a node's resident memory as it fills with 10k, 100k (and 1M) small documents.

Usage::

    python bench/memory.py                 # 10,000 and 100,000 documents
    python bench/memory.py --million       # and 1,000,000 (several minutes)

The node runs in this process (no HTTP: the HTTP layer holds no per-document
state) on a fresh temporary directory. The fill uses ``sync=False``: fsync
per commit would make the run take much longer and says nothing about
memory; durability is what bench/api.py measures. Writes go through
``Node.apply`` with ``--concurrency`` writers, so group commit, the document
cache, the Merkle flush and the feed all run as in production.

At each step the script prints the process's ``VmRSS`` split into
``RssAnon`` (heap: what must stay flat) and ``RssFile`` (LMDB's memory map:
page cache the kernel may reclaim at any time, which grows with the pages
touched, not with anything the process holds), plus the document cache's
size. Every step is bounded by ``--step-seconds``; a step that runs out of
time is reported with the count it reached. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["main", "rss_kb"]


def rss_kb() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process in KiB (Linux /proc)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


async def fill(node: Any, start: int, stop: int, *, concurrency: int, deadline: float) -> int:
    """Insert documents ``doc-{start}`` .. ``doc-{stop - 1}``; return how many were inserted before the deadline."""
    next_id = [start]

    async def writer() -> None:
        while next_id[0] < stop and time.monotonic() < deadline:
            i = next_id[0]
            next_id[0] += 1
            ops = [
                {"op": "set", "path": ["title"], "value": f"document {i}"},
                {"op": "increment", "path": ["n"], "by": i % 100},
            ]
            await node.apply(f"doc-{i:08d}", ops)

    await asyncio.gather(*(writer() for _ in range(concurrency)))
    return next_id[0] - start


async def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from crdtstore.node import Node, NodeConfig

    node = Node(NodeConfig(region="bench", data_dir=data, sync=False, metasync=False, max_map_size=32 << 30))
    await node.start()
    steps: list[dict[str, Any]] = []
    try:
        targets = [10_000, 100_000] + ([1_000_000] if args.million else [])
        done = 0
        baseline = rss_kb()
        print(f"{'start':>10}  rss {baseline['VmRSS']:>8} KiB  anon {baseline['RssAnon']:>8} KiB", flush=True)
        for target in targets:
            started = time.monotonic()
            done += await fill(node, done, target, concurrency=args.concurrency, deadline=started + args.step_seconds)
            elapsed = time.monotonic() - started
            # Reads too: the read path must not hold per-document state either.
            for k in range(2000):
                await node.read(f"doc-{(k * 7919) % done:08d}")
            gc.collect()
            mem = rss_kb()
            stats = node.stats()
            step = {
                "target": target,
                "docs": stats["documents"],
                "seconds": round(elapsed, 1),
                "rss_kb": mem["VmRSS"],
                "anon_kb": mem["RssAnon"],
                "file_kb": mem["RssFile"],
                "cache_docs": stats["cache"]["docs"],
                "cache_bytes": stats["cache"]["bytes"],
                "lmdb_used_mb": round(stats["lmdb"]["used_bytes"] / 2**20, 1),
            }
            steps.append(step)
            print(
                f"{step['docs']:>10}  rss {step['rss_kb']:>8} KiB  anon {step['anon_kb']:>8} KiB  "
                f"file {step['file_kb']:>8} KiB  cache {step['cache_docs']} docs  "
                f"lmdb {step['lmdb_used_mb']} MiB  {elapsed:.1f} s",
                flush=True,
            )
            if done < target:
                print(f"step stopped at {done} documents after {args.step_seconds:g} s", flush=True)
                break
    finally:
        await node.close()
    first, last = steps[0], steps[-1]
    return {
        "sync": False,
        "steps": steps,
        "anon_growth_kb": last["anon_kb"] - first["anon_kb"],
        "anon_ratio_last_over_first": round(last["anon_kb"] / first["anon_kb"], 3),
        "docs_ratio_last_over_first": round(last["docs"] / max(1, first["docs"]), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--million", action="store_true", help="also fill up to 1,000,000 documents")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--step-seconds", type=float, default=600.0, help="time bound of each step")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crdtstore-membench-") as tmp:
        summary = asyncio.run(run(args, Path(tmp) / "data"))
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    # Run as a script: make the repository importable without installing it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
