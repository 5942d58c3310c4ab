"""``crdtstore demo``: a local 3-region cluster (``crdtstore up``) and the notes demo in front of it.

The cluster is ``crdtstore up`` itself, run as a child process (its own
session, so Ctrl-C here stops it once, by its pid): the same regions, WAN,
plan file and region commands as ``up``, with no second copy of that code.
This process waits for ``up``'s plan and every region's ``/readyz``, then
serves the page (:mod:`demo_app.server`) on 127.0.0.1 and prints its URL.

Tokens: ``up``'s token file gets a read-only token next to the read-write
and admin ones (the page hands a read token to a ``?role=read`` window).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import uvicorn

from crdtstore.api.auth import Scope, ensure_token_of_scope
from crdtstore.config import ConfigError
from crdtstore.supervisor import _die_with_parent

__all__ = ["DEMO_REGIONS", "READY_TIMEOUT", "ensure_read_token", "run_demo", "wait_for_plan"]

DEMO_REGIONS = 3
READY_TIMEOUT = 90.0  # seconds for up's plan and every region's /readyz
STOP_TIMEOUT = 40.0  # up gives its regions 30 s after SIGTERM
_POLL = 0.2
_TOKEN_FILE = "tokens"
_PLAN_FILE = "up.json"


def ensure_read_token(root: Path) -> str:
    """A read-only token in ``up``'s token file (appended when there is none)."""
    return ensure_token_of_scope(root / _TOKEN_FILE, Scope.READ)


def wait_for_plan(root: Path, proc: subprocess.Popen[bytes], *, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """``up``'s plan, once it names ``proc`` as its supervisor and every region answers ``/readyz``.

    Raises:
        ConfigError: ``up`` exited, or the cluster was not ready in time.
    """
    deadline = time.monotonic() + timeout
    plan: dict[str, Any] | None = None
    pending: set[str] = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"crdtstore up exited with code {proc.returncode} (see {root / 'logs'})")
        if plan is None:
            with contextlib.suppress(OSError, ValueError):
                candidate = json.loads((root / _PLAN_FILE).read_text(encoding="utf-8"))
                if candidate.get("supervisor") == proc.pid:  # not the plan of an earlier run
                    plan = candidate
                    pending = set(candidate["regions"])
        if plan is not None:
            for region in list(pending):
                if _ready(plan["regions"][region]["url"]):
                    pending.discard(region)
            if not pending:
                return plan
        time.sleep(_POLL)
    raise ConfigError(f"the cluster was not ready within {timeout:g} s: {sorted(pending) or 'no plan'}")


def run_demo(args: argparse.Namespace, *, token: str, admin_token: str) -> int:
    """Run ``up`` (3 regions), wait for it, serve the demo until SIGINT/SIGTERM, then stop ``up`` by its pid.

    Args:
        args: The ``demo`` command's flags.
        token: The read-write token of ``up``'s token file (the CLI makes it, as for ``up``).
        admin_token: Its admin token.
    """
    from crdtstore.server import run_servers
    from demo_app.server import DemoSettings, build_demo_app

    root = Path(args.data).absolute()
    read = ensure_read_token(root)
    argv = [
        sys.executable, "-m", "crdtstore.cli", "up",
        "--data", str(root),
        "--regions", str(DEMO_REGIONS),
        "--port", str(args.regions_port),
        "--latency", repr(args.latency),
        "--jitter", repr(args.jitter),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # up (and with it every region) goes when this process dies without stopping it.
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )
    try:
        plan = wait_for_plan(root, proc)
    except BaseException:
        _stop(proc)
        raise
    settings = DemoSettings(
        regions={name: entry["url"] for name, entry in plan["regions"].items()},
        token=token,
        read_token=read,
        admin_token=admin_token,
        wan=plan.get("wan"),
        latency=args.latency,
    )
    config = uvicorn.Config(
        build_demo_app(settings), host="127.0.0.1", port=args.port, log_config=None, access_log=False, lifespan="on"
    )

    def announce(urls: list[str]) -> None:
        first, second = list(settings.regions)[:2]
        print(f"crdtstore demo: open {urls[0]}/?region={first} and, beside it, {urls[0]}/?region={second}", flush=True)

    async def on_stop() -> None:
        _stop(proc)

    try:
        return run_servers([config], announce=announce, on_stop=on_stop)
    except OSError as exc:  # the page's port: taken, or not ours to bind
        raise ConfigError(f"--port {args.port}: {exc}") from None
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)  # up stops its regions, each by its pid
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1.0) as response:  # noqa: S310 (a loopback URL of up's plan)
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
