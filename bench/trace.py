"""Replay a real editing trace on our core, then on pycrdt, and compare.

Usage: ``python bench/trace.py FILE [--window 10000]`` (FILE: a gzipped JSON trace, for example
``tests/data/traces/sveltecomponent.json.gz`` or ``../shared/traces/automerge-paper.json.gz``).

Each patch is one batch (ours) or one transaction (pycrdt) and its delta / update is encoded, as an
editor shipping every keystroke would. Human-readable lines come first, with the time of each
window of ``--window`` patches for our core so one can see whether the cost per op stays flat as the
document grows; the last line is one JSON object for scripts.

Exit status: 0 when both replays end with the trace's ``endContent``; 1 when ours does not;
2 when only pycrdt does not (a harness problem, since the peer is assumed correct).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pycrdt

from crdtstore import codec
from crdtstore.document import Document
from crdtstore.testing.traces import TEXT_KEY, Trace, load_trace, patch_ops, replay_ours, replay_pycrdt

__all__ = ["main"]

# Decoding is quick and noisy; the best of a few runs is the figure that repeats.
LOAD_RUNS = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="gzipped JSON editing trace")
    parser.add_argument("--window", type=int, default=10_000, help="patches per timing window (default 10000)")
    args = parser.parse_args(argv)
    if args.window <= 0:
        parser.error("--window must be positive")

    started = time.perf_counter()
    trace = load_trace(args.file)
    print(
        f"trace {args.file.name}: {trace.kind}, {trace.num_agents} agent(s), {len(trace.txns):,} txns, "
        f"{trace.ops:,} ops, {len(trace.end_content):,} final chars (parsed in {time.perf_counter() - started:.2f} s)"
    )

    ours = _run_ours(trace, args.window)
    if ours is None:
        return 1
    peer, peer_ok = _run_pycrdt(trace)
    ours["one_char_delta_bytes"] = _our_one_char_delta()
    peer["one_char_delta_bytes"] = _peer_one_char_update()
    print(
        f"one-char insert delta on a fresh doc: ours {ours['one_char_delta_bytes']} bytes, "
        f"pycrdt {peer['one_char_delta_bytes']} bytes"
    )
    ratio = round(ours["seconds"] / peer["seconds"], 3)
    print(f"time ours/pycrdt: {ratio:.2f}x")
    print(json.dumps({"trace": args.file.name, "ops": trace.ops, "ours": ours, "pycrdt": peer, "ratio_seconds": ratio}))
    return 0 if peer_ok else 2


def _run_ours(trace: Trace, window: int) -> dict[str, Any] | None:
    marks: list[tuple[int, float]] = []

    def on_window(done: int) -> None:
        now = time.perf_counter()
        last_done, last_time = marks[-1]
        marks.append((done, now))
        seconds = now - last_time
        per_op = seconds / (done - last_done) * 1e6
        print(f"  ours ops {last_done:>9,}-{done:<9,} {seconds:8.3f} s  {per_op:8.1f} us/op", flush=True)

    print(f"ours: replaying, {window:,} ops per window", flush=True)
    marks.append((0, time.perf_counter()))
    replay = replay_ours(trace, on_window=on_window, window=window)
    seconds = time.perf_counter() - marks[0][1]
    for replica, text in enumerate(replay.texts):
        if text != trace.end_content:
            print(f"FAIL ours: replica a{replica} {_difference(text, trace.end_content)}", file=sys.stderr)
            return None
    print(f"ours: final text matches endContent on all {len(replay.texts)} replica(s)")

    encoded = codec.encode_document(replay.replicas[0])
    load_ms = _best_ms(lambda: codec.decode_document(encoded))
    if codec.decode_document(encoded).value().get(TEXT_KEY) != trace.end_content:
        print("FAIL ours: the decoded final document does not hold endContent", file=sys.stderr)
        return None
    return _summary("ours", trace, seconds, replay.delta_bytes, len(encoded), load_ms)


def _run_pycrdt(trace: Trace) -> tuple[dict[str, Any], bool]:
    started = time.perf_counter()
    replay = replay_pycrdt(trace)
    seconds = time.perf_counter() - started
    ok = replay.matches(trace.end_content)
    for replica, text in enumerate(replay.texts):
        if text != trace.end_content:
            print(f"WARNING pycrdt: replica {replica} {_difference(text, trace.end_content)}", file=sys.stderr)

    full = replay.replicas[0].get_update()

    def load() -> None:
        pycrdt.Doc().apply_update(full)

    load_ms = _best_ms(load)
    fresh = pycrdt.Doc()
    fresh.apply_update(full)
    if str(fresh.get(TEXT_KEY, type=pycrdt.Text)) != trace.end_content:
        print("WARNING pycrdt: its full update, loaded into a fresh Doc, does not hold endContent", file=sys.stderr)
        ok = False
    if ok:
        print(f"pycrdt: final text matches endContent on all {len(replay.texts)} replica(s)")
    return _summary("pycrdt", trace, seconds, replay.delta_bytes, len(full), load_ms), ok


def _summary(
    name: str, trace: Trace, seconds: float, delta_bytes: int, doc_bytes: int, load_ms: float
) -> dict[str, Any]:
    ops = max(trace.ops, 1)
    figures: dict[str, Any] = {
        "seconds": round(seconds, 4),
        "us_per_op": round(seconds / ops * 1e6, 2),
        "delta_bytes_per_op": round(delta_bytes / ops, 2),
        "doc_bytes": doc_bytes,
        "load_ms": round(load_ms, 3),
    }
    print(
        f"{name}: {figures['seconds']:.3f} s, {figures['us_per_op']:.1f} us/op, "
        f"{figures['delta_bytes_per_op']:.1f} delta bytes/op, doc {doc_bytes:,} bytes (encoded), "
        f"load {figures['load_ms']:.2f} ms (best of {LOAD_RUNS})"
    )
    return figures


def _our_one_char_delta() -> int:
    delta = Document().apply(patch_ops((0, 0, "a")), replica="a0", now=1)
    return len(codec.encode_delta(delta))


def _peer_one_char_update() -> int:
    doc = pycrdt.Doc(client_id=1)
    text = doc.get(TEXT_KEY, type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text.insert(0, "a")
    return sum(len(update) for update in updates)


def _best_ms(action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(LOAD_RUNS):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def _difference(got: str, want: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return (
        f"differs from endContent at char {at:,} (lengths {len(got):,} vs {len(want):,}): "
        f"got {got[at : at + 30]!r}, want {want[at : at + 30]!r}"
    )


if __name__ == "__main__":
    sys.exit(main())
