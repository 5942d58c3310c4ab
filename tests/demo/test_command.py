"""``crdtstore demo``'s own parts, without a browser: its read token and its wait for ``up``'s plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crdtstore.api.auth import Scope, parse_token_file
from crdtstore.cli import build_parser, ensure_admin_token, ensure_token
from crdtstore.config import ConfigError
from crdtstore.demo import ensure_read_token, wait_for_plan


def test_the_read_token_is_added_once_next_to_the_others(tmp_path: Path) -> None:
    rw, admin = ensure_token(tmp_path), ensure_admin_token(tmp_path)
    read = ensure_read_token(tmp_path)
    assert ensure_read_token(tmp_path) == read
    tokens = parse_token_file((tmp_path / "tokens").read_text(), source="tokens")
    assert tokens == {rw: Scope.READWRITE, admin: Scope.ADMIN, read: Scope.READ}


def test_the_demo_command_takes_up_s_wan_options() -> None:
    args = build_parser().parse_args(["demo", "--latency", "80ms", "--jitter", "5ms", "--port", "0"])
    assert (args.latency, args.jitter, args.port, args.regions_port) == (0.08, 0.005, 0, 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--latency", "fast"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--port", "70000"])


def test_a_failed_up_is_reported_not_waited_for(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(30)
    with pytest.raises(ConfigError, match="exited with code 3"):
        wait_for_plan(tmp_path, proc, timeout=30)


def test_the_plan_of_an_earlier_run_is_not_taken(tmp_path: Path) -> None:
    # A plan left by another supervisor names regions that are not ours (and not running).
    (tmp_path / "up.json").write_text(json.dumps({"supervisor": 1, "regions": {"us": {"url": "http://127.0.0.1:9"}}}))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ConfigError, match="no plan"):
            wait_for_plan(tmp_path, proc, timeout=1.0)
    finally:
        proc.kill()
        proc.wait(30)
