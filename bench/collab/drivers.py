"""What the Python load drivers share: their command line, their percentiles and their JSON line.

``crdtstore_driver.py`` and ``pycrdt_driver.py`` type the same workload into
two different servers; only how they connect, send and recognise a keystroke
differs, so the options, the arithmetic of the report and its output are here
once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = ["emit", "open_editors", "parse_args", "percentile_ms", "run_loop", "write_samples"]

CONNECT_CONCURRENCY = 16  # handshakes in flight at once: a server is not measured on a connection storm


class Editor(Protocol):
    synced: asyncio.Event

    async def open(self) -> None: ...


async def open_editors(editors: Sequence[Editor], *, first_alone: bool = False) -> None:
    """Connect every editor and wait (bounded) until each has synced the document.

    ``first_alone``: the first editor opens the document before the others join
    (a server that mishandles many clients opening one room at once).
    """
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(editor: Editor) -> None:
        async with gate:
            await editor.open()
            await asyncio.wait_for(editor.synced.wait(), timeout=30)

    if first_alone and editors:
        await open_one(editors[0])
        editors = editors[1:]
    await asyncio.gather(*(open_one(e) for e in editors))


def run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run a driver on uvloop where it is installed (uvicorn's standard extra brings it).

    Every Python driver runs on the same loop, so neither side's numbers carry
    more of the driver's own overhead: on asyncio's default loop, our driver
    took 49% of a core at 50 editors against 34% on uvloop, CPU it took from
    the servers it measures on a 2-core machine.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def percentile_ms(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (seconds) in milliseconds, or None for no value."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def p50_p99(values: list[float]) -> dict[str, float | None]:
    """The median and the 99th percentile of ``values`` (seconds), in milliseconds."""
    return {"p50": percentile_ms(values, 0.5), "p99": percentile_ms(values, 0.99)}


def run_summary(
    peer: str, args: argparse.Namespace, *, sent: int, acked: int, acked_in_window: int, ack_latency: list[float]
) -> dict[str, Any]:
    """The fields every driver reports first, measured the same way for every side."""
    return {
        "peer": peer,
        "editors": args.editors,
        "rate": args.rate,
        "seconds": args.seconds,
        "offered_ops": round(args.editors * args.rate * args.seconds),
        "sent_ops": sent,
        "acked_ops": acked,
        "acked_in_window": acked_in_window,
        "ops_per_s": round(acked_in_window / args.seconds, 1),
        "ack_ms": p50_p99(ack_latency),
    }


def write_samples(path: Path | None, **kinds: tuple[list[float], list[float]]) -> None:
    """``path``: for each kind, ``[[typed_at, seconds], ...]`` (what bench/collab.py sets against disk stalls)."""
    if path is not None:
        path.write_bytes(orjson.dumps({kind: list(zip(at, lat, strict=True)) for kind, (at, lat) in kinds.items()}))


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout (what bench/collab.py reads)."""
    sys.stdout.buffer.write(orjson.dumps(record) + b"\n")
    sys.stdout.flush()


def parse_args(
    argv: list[str], *, description: str | None, url_help: str, max_editors: int | None = None, many_urls: bool = False
) -> argparse.Namespace:
    """The driver's options, checked: loopback servers only, positive rates and counts.

    ``many_urls``: ``--url`` may repeat (one server per region) and ``args.url`` is a list.
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    url_action = "append" if many_urls else "store"
    p.add_argument("--url", required=True, action=url_action, help=f"{url_help} (loopback only)")
    p.add_argument("--editors", type=int, default=50)
    p.add_argument("--rate", type=float, default=5.0, help="keystrokes per second per editor")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--drain", type=float, default=15.0, help="most seconds to wait for stragglers after typing")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="write every latency sample with the time.perf_counter() its keystroke was typed at to this JSON file",
    )
    args = p.parse_args(argv)
    urls = args.url if many_urls else [args.url]
    if not all(url.startswith(("ws://127.", "ws://localhost")) for url in urls):
        p.error("the driver only targets loopback servers")
    if args.editors < 1 or args.rate <= 0 or args.seconds <= 0:
        p.error("--editors, --rate and --seconds must be positive")
    if max_editors is not None and args.editors > max_editors:
        p.error(f"--editors is at most {max_editors}")
    return args
