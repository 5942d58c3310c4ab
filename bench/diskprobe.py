"""How long the data directory's disk takes to make a small write durable, sampled beside a benchmark.

A side that acknowledges after fsync cannot acknowledge faster than its disk
syncs. On a virtual disk, ``fdatasync`` of one 4 KiB page usually takes well
under a millisecond, but now and then the disk stops for 100 ms to a second
(seen here with nothing else running), and every durable write in that window
waits. A benchmark's latency tail then measures the disk as much as the
server. :class:`DiskProbe` measures the disk on its own, in the same
filesystem and the same seconds as the run, so the two can be told apart.

It costs the disk one 4 KiB write and one ``fdatasync`` every ``interval``
(50 ms): a twentieth of what one region's group commit issues at 250 writes/s.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["STALL_MS", "DiskProbe"]

STALL_MS = 50.0
"""An fsync longer than this is a stall: it alone takes a live keystroke's whole latency budget."""

_PAGES = 64  # the probe's file: 64 pages written in turn, so the file never grows (no metadata to journal)


class DiskProbe:
    """A thread that times ``fdatasync`` of a one-page write in ``directory``, every ``interval`` seconds.

    Use as a context manager around the measured window; :meth:`summary` then
    gives the latencies' percentiles and how long the disk was stalled.

    Args:
        directory: A directory on the filesystem the benchmark's data lives on.
        interval: Seconds between probes (each waits for the previous one: a stall delays the next).
        max_samples: Probes at most (the loop is bounded in count as well as in time).
    """

    def __init__(self, directory: Path, *, interval: float = 0.05, max_samples: int = 100_000) -> None:
        self.directory = directory
        self.interval = interval
        self.max_samples = max_samples
        self.latencies: list[float] = []
        # (start, end) of each fsync past STALL_MS, in time.perf_counter seconds: CLOCK_MONOTONIC on
        # Linux, the same clock in every process, so a driver's timestamps can be set against them.
        self.stalls: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start probing (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="disk-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop probing and wait for the probe in flight (idempotent; harmless before :meth:`start`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DiskProbe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        fd, name = tempfile.mkstemp(prefix=".diskprobe-", dir=self.directory)
        try:
            page = os.urandom(4096)
            os.pwrite(fd, page * _PAGES, 0)
            os.fsync(fd)
            i = 0
            while not self._stop.is_set() and i < self.max_samples:
                os.pwrite(fd, page, (i % _PAGES) * 4096)
                start = time.perf_counter()
                os.fdatasync(fd)
                end = time.perf_counter()
                self.latencies.append(end - start)
                if (end - start) * 1e3 > STALL_MS:
                    self.stalls.append((start, end))
                i += 1
                self._stop.wait(self.interval)
        finally:
            os.close(fd)
            os.unlink(name)

    def during_stall(self, at: float, *, before: float, after: float) -> bool:
        """Whether ``at`` (perf_counter) falls from ``before`` seconds ahead of a stall to ``after`` past its end.

        A probe starts every ``interval``, so a stall may have begun up to an
        interval before the probe that saw it: ``before`` should cover that
        and the path of a write already under way when it began.
        """
        return any(start - before <= at <= end + after for start, end in self.stalls)

    def summary(self) -> dict[str, Any]:
        """Probes, fsync p50/p99/max in ms, stalls (fsyncs over :data:`STALL_MS`) and the seconds they took."""
        ordered = sorted(self.latencies)
        if not ordered:
            return {"probes": 0}

        def ms(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)

        stalls = [x for x in ordered if x * 1e3 > STALL_MS]
        return {
            "probes": len(ordered),
            "fsync_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": round(ordered[-1] * 1e3, 1)},
            "stalls": len(stalls),
            "stalled_s": round(sum(stalls), 3),
        }
