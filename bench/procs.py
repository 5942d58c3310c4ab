"""The benchmarks' own child processes: their CPU time, and stopping them (by pid, ours only)."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["cpu_seconds", "steal_seconds", "stop"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process used so far, from Linux ``/proc``; None elsewhere or once it is gone.

    Per request, it tells what a server spends whatever rate the shared
    machine let it reach, and across processes, which one was the bottleneck.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float | None:
    """CPU seconds the hypervisor gave other guests while this machine wanted them, summed over cores, since boot.

    From Linux ``/proc/stat`` (None elsewhere). On a virtual machine whose host
    is busy, every process here runs late by as much, whatever it is: a
    benchmark's tail then measures the host's neighbours.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> None:
    """SIGTERM a child we started, then SIGKILL if it has not left within ``timeout``; reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
