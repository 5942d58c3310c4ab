"""``crdtstore up`` as a supervisor: one ``crdtstore serve`` process per replica, the WAN in between.

Each replica is a child process of its own (``python -m crdtstore.cli
serve``), so one replica, or a region, can be killed (``kill -9 PID``) or
restarted alone while the others keep serving. A replica is named after its
region (``us``) when the region has one, else region and ordinal (``us-0``,
``us-1``: :func:`replica_names`). The children listen on 127.0.0.1, each with
its data directory ``ROOT/NAME`` and its log file ``ROOT/logs/NAME.log``
(or, with ``--log-console``, the supervisor's console). The emulated WAN
(:mod:`sync.io.wanproxy`) stays in the supervisor, since it emulates the network
between them, and so does its admin API (:mod:`crdtstore.wanadmin`), which
``crdtstore partition``/``isolate``/``heal`` call.

The children run in sessions of their own, so a Ctrl-C in the terminal
reaches the supervisor alone, which then stops each child once, by its pid
(SIGTERM: a graceful drain; SIGKILL past :data:`STOP_TIMEOUT`). On Linux a
child also gets SIGTERM when the supervisor dies without stopping it
(``PR_SET_PDEATHSIG``). A child that exits on its own is reported on the
console and left down; the others keep running.

The plan (``ROOT/up.json``) names every replica's region, URL, pid, log and
command line (``replicas``), and the WAN admin URL: ``crdtstore status`` and
the link commands read it, and a replica's command line restarts it by hand.
``regions`` maps each region to its first replica's entry, as the plan did
when a region was one process, so readers of that shape keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from crdtstore.config import SETTINGS, ServeConfig

__all__ = ["STOP_TIMEOUT", "Child", "Supervisor", "format_table", "replica_names", "serve_argv", "write_plan"]

logger = logging.getLogger("crdtstore.up")

STOP_TIMEOUT = 30.0  # seconds a child has to drain after SIGTERM before SIGKILL
READY_TIMEOUT = 60.0  # seconds a child has to answer /readyz after it started
_POLL = 0.2
_PR_SET_PDEATHSIG = 1


def replica_names(region: str, replicas: int) -> list[str]:
    """The names of a region's replicas: the region's own for one (as before regions had several), else
    ``region-0`` to ``region-(replicas-1)``."""
    return [region] if replicas == 1 else [f"{region}-{i}" for i in range(replicas)]


def serve_argv(config: ServeConfig) -> list[str]:
    """The ``serve`` flags that give ``config`` (those that differ from the defaults)."""
    defaults = ServeConfig()
    argv: list[str] = []
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if value == getattr(defaults, setting.name) or value is None:
            continue
        if setting.flag == "switch":
            if value:
                argv.append(setting.option)
        elif setting.flag == "list":
            for item in value:
                argv += [setting.option, str(item)]
        elif isinstance(value, bool):
            argv += [setting.option, "true" if value else "false"]
        else:
            argv += [setting.option, str(value)]
    return argv


def _child_env() -> dict[str, str]:
    # Only the flags count: not CRDTSTORE_TOKENS or a secret of the caller's shell.
    return {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTORE_")}


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass(eq=False)
class Child:
    """One replica process.

    Attributes:
        config: Its settings (``serve_argv`` turns them into its flags).
        log: Its log file, or None for the console.
        name: The replica's name (:func:`replica_names`); empty: its region's.
        proc: The process once started.
        reported: Its exit was reported.
    """

    config: ServeConfig
    log: Path | None
    name: str = ""
    proc: subprocess.Popen[bytes] | None = None
    reported: bool = False

    def __post_init__(self) -> None:
        self.name = self.name or self.config.region

    @property
    def region(self) -> str:
        return self.config.region

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "crdtstore.cli", "serve", *serve_argv(self.config)]

    def start(self) -> None:
        out: IO[bytes] | int | None = None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        finally:
            if out is not None and not isinstance(out, int):
                out.close()  # the child holds its own descriptor

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts, watches and stops the replica processes of ``up``.

    Args:
        children: One per replica.
        console: Where the table and reports go.
    """

    def __init__(self, children: Sequence[Child], *, console: IO[str] | None = None) -> None:
        self.children = list(children)
        self.console = console or sys.stdout
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start every child (in the event loop's thread, so PR_SET_PDEATHSIG follows this thread's life)."""
        for child in self.children:
            child.start()
            assert child.proc is not None
            logger.info(
                "replica started",
                extra={"replica": child.name, "region": child.region, "pid": child.proc.pid, "url": child.url},
            )
        self._watch = asyncio.create_task(self._watch_loop())

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> list[str]:
        """Wait (bounded) until every child answers ``/readyz``; returns the replicas that did not."""
        pending = {child.name: child for child in self.children}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for name, child in list(pending.items()):
                if not child.alive() or await asyncio.to_thread(_ready, child.url):
                    del pending[name]
            await asyncio.sleep(_POLL)
        return sorted(pending) + [c.name for c in self.children if not c.alive()]

    async def stop(self) -> None:
        """SIGTERM every live child by its pid, then wait; SIGKILL one that outlives :data:`STOP_TIMEOUT`."""
        if self._watch is not None:
            self._watch.cancel()
        for child in self.children:
            if child.alive():
                assert child.proc is not None
                os.kill(child.proc.pid, signal.SIGTERM)
        for child in self.children:
            if child.proc is None:
                continue
            try:
                await asyncio.to_thread(child.proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(child.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(child.proc.wait, STOP_TIMEOUT)

    def plan(self, *, wan_admin: str | None) -> dict[str, Any]:
        """What ``up.json`` records (see the module docstring)."""
        replicas = {
            c.name: {
                "region": c.region,
                "url": c.url,
                "pid": c.proc.pid if c.proc is not None else None,
                "log": str(c.log) if c.log is not None else None,
                "argv": c.argv,
            }
            for c in self.children
        }
        regions: dict[str, Any] = {}
        for c in self.children:
            if c.region not in regions:
                regions[c.region] = {k: v for k, v in replicas[c.name].items() if k != "region"}
        return {"supervisor": os.getpid(), "wan": wan_admin, "regions": regions, "replicas": replicas}

    def table(self) -> str:
        """The replicas, their URLs, pids, regions and logs, as a small text table."""
        rows = [("replica", "url", "pid", "region", "log")]
        for c in self.children:
            pid = str(c.proc.pid) if c.proc is not None else "-"
            rows.append((c.name, c.url, pid, c.region, str(c.log) if c.log is not None else "(console)"))
        return format_table(rows)

    async def _watch_loop(self) -> None:
        while True:
            for child in self.children:
                if child.proc is not None and not child.reported and child.proc.poll() is not None:
                    child.reported = True
                    where = f"; see {child.log}" if child.log is not None else ""
                    what = f"region {child.name}" if child.name == child.region else f"replica {child.name}"
                    message = (
                        f"crdtstore up: {what} (pid {child.proc.pid}) exited with code "
                        f"{child.proc.returncode}{where}; the others keep running"
                    )
                    print(message, file=self.console, flush=True)
                    logger.warning(
                        "replica exited",
                        extra={
                            "replica": child.name,
                            "region": child.region,
                            "pid": child.proc.pid,
                            "code": child.proc.returncode,
                        },
                    )
            await asyncio.sleep(_POLL)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2.0) as response:  # noqa: S310 (loopback URL we built)
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart (the header is the first row)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def write_plan(path: Path, plan: dict[str, Any]) -> None:
    """Write ``up.json`` whole (a reader never sees half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
