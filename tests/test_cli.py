"""The crdtstore command: settings precedence, token handling, and `up` as a real process."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crdtstore.api.auth import Scope, parse_token_file
from crdtstore.cli import (
    UP_REGIONS,
    ensure_admin_token,
    ensure_token,
    main,
    parse_duration,
    plan_up,
)
from crdtstore.client import Client
from crdtstore.config import SETTINGS, ConfigError, ServeConfig, cluster_secret, resolve
from crdtstore.server import _freeze_once_started, build_server_app
from sync.io.wanproxy import WanController
from tests.server_helpers import child_env

NO_FLAGS = {s.name: None for s in SETTINGS}


def test_defaults_are_loopback_and_durable() -> None:
    config = resolve(NO_FLAGS, env={})
    assert config == ServeConfig()
    assert config.host == "127.0.0.1" and config.no_sync is False


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('region = "file"\nport = 1111\nhost = "127.0.0.2"\nno-sync = true\ndata = "fromfile"\n')
    env = {"CRDTSTORE_PORT": "2222", "CRDTSTORE_HOST": "127.0.0.3", "CRDTSTORE_CONFIG": str(toml)}
    flags = NO_FLAGS | {"port": "3333"}
    config = resolve(flags, env=env)
    assert config.port == 3333  # flag
    assert config.host == "127.0.0.3"  # env over file
    assert config.region == "file" and config.no_sync is True  # file over defaults
    assert config.data == Path("fromfile")
    assert config.timeout_keep_alive == ServeConfig().timeout_keep_alive  # default
    # An explicit --config wins over CRDTSTORE_CONFIG.
    other = tmp_path / "o.toml"
    other.write_text('region = "other"\n')
    assert resolve(NO_FLAGS, env=env, config_file=other).region == "other"


def test_every_setting_has_flag_env_and_file_spellings(tmp_path: Path) -> None:
    names = {s.name for s in SETTINGS}
    assert names == {f for f in ServeConfig.__dataclass_fields__}
    assert {s.env for s in SETTINGS} >= {"CRDTSTORE_REGION", "CRDTSTORE_NO_SYNC", "CRDTSTORE_TOKENS_FILE"}
    # CRDTSTORE_TOKENS is the inline token list, never a setting's variable.
    assert "CRDTSTORE_TOKENS" not in {s.env for s in SETTINGS}


@pytest.mark.parametrize(
    ("env", "toml"),
    [
        ({"CRDTSTORE_PORT": "eighty"}, None),
        ({"CRDTSTORE_NO_SYNC": "maybe"}, None),
        ({"CRDTSTORE_REGION": "bad region!"}, None),
        ({"CRDTSTORE_ANONYMOUS": "admin"}, None),
        ({"CRDTSTORE_CERTFILE": "c.pem"}, None),  # without a key
        ({}, "prot = 1\n"),  # a typo is an error, not a silent default
        ({}, "port = \n"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, env: dict[str, str], toml: str | None) -> None:
    path = None
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError):
        resolve(NO_FLAGS, env=env, config_file=path)


def test_main_reports_config_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["serve", "--port", "x", "--data", str(tmp_path)])
    assert code == 2
    assert "--port" in capsys.readouterr().err
    code = main(["serve", "--tokens", str(tmp_path / "missing"), "--data", str(tmp_path)])
    assert code == 2


def test_up_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    token = ensure_token(tmp_path / "data")
    path = tmp_path / "data" / "tokens"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_token_file(path.read_text()) == {token: Scope.READWRITE}
    assert ensure_token(tmp_path / "data") == token


def test_up_admin_token_is_added_to_an_older_token_file(tmp_path: Path) -> None:
    # A token file written before the admin scope keeps its tokens; the admin token is appended once.
    root = tmp_path / "data"
    token = ensure_token(root)
    admin = ensure_admin_token(root)
    path = root / "tokens"
    assert parse_token_file(path.read_text()) == {token: Scope.READWRITE, admin: Scope.ADMIN}
    assert ensure_admin_token(root) == admin and ensure_token(root) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_up_plan_one_directory_and_port_per_region(tmp_path: Path) -> None:
    plans = plan_up(tmp_path, host="127.0.0.1", base_port=9000)
    assert [p.region for p in plans] == list(UP_REGIONS[:3])  # three regions by default
    assert [p.port for p in plans] == list(range(9000, 9003))
    assert len({p.data for p in plans}) == len(plans)
    assert all(p.host == "127.0.0.1" and p.tokens == tmp_path / "tokens" for p in plans)
    assert all(p.peers == () for p in plans)  # no WAN given: unclustered


def test_up_plan_wires_every_region_to_every_other_through_the_wan(tmp_path: Path) -> None:
    wan = WanController(UP_REGIONS[:4])
    wan.bind()
    try:
        plans = plan_up(tmp_path, host="127.0.0.1", base_port=0, regions=4, wan=wan)
        ports = {link.port for link in wan.links.values()}
        for plan in plans:
            assert len(plan.peers) == 3
            assert all(url.endswith("/v1/peer") for url in plan.peers)
            assert {int(url.rsplit(":", 1)[1].split("/")[0]) for url in plan.peers} <= ports
            assert plan.cluster_secret_file == tmp_path / "cluster-secret"
        with pytest.raises(ConfigError):
            plan_up(tmp_path, host="127.0.0.1", base_port=0, regions=len(UP_REGIONS) + 1)
    finally:
        for link in wan.links.values():
            if link._sock is not None:
                link._sock.close()


@pytest.mark.parametrize(("text", "seconds"), [("80ms", 0.08), ("0.5s", 0.5), ("0", 0.0), ("1.5", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "-1ms", "90s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_peers_settings_and_cluster_secret(tmp_path: Path) -> None:
    flags = NO_FLAGS | {"peers": ["ws://127.0.0.1:1/v1/peer", "ws://127.0.0.1:2/v1/peer"]}
    config = resolve(flags, env={})
    assert config.peers == ("ws://127.0.0.1:1/v1/peer", "ws://127.0.0.1:2/v1/peer")
    config = resolve(NO_FLAGS, env={"CRDTSTORE_PEERS": "ws://a:1/v1/peer, wss://b:2/v1/peer,"})
    assert config.peers == ("ws://a:1/v1/peer", "wss://b:2/v1/peer")
    with pytest.raises(ConfigError):
        resolve(NO_FLAGS, env={"CRDTSTORE_PEERS": "http://a:1"})
    assert cluster_secret(config, env={}) is None
    assert cluster_secret(config, env={"CRDTSTORE_CLUSTER_SECRET": "s" * 20}) == b"s" * 20
    with pytest.raises(ConfigError):
        cluster_secret(config, env={"CRDTSTORE_CLUSTER_SECRET": "short"})
    secret = tmp_path / "secret"
    secret.write_text("f" * 32 + "\n")
    config = resolve(NO_FLAGS | {"cluster_secret_file": str(secret)}, env={})
    assert cluster_secret(config, env={"CRDTSTORE_CLUSTER_SECRET": "e" * 20}) == b"f" * 32  # the file wins
    # --peer without a secret is refused before anything starts.
    assert main(["serve", "--peer", "ws://127.0.0.1:1/v1/peer", "--data", str(tmp_path / "d")]) == 2


def test_anti_entropy_interval_reaches_the_replicator(tmp_path: Path) -> None:
    config = resolve(NO_FLAGS | {"data": str(tmp_path / "d"), "anti_entropy_interval": "2.5"}, env={})
    app = build_server_app(config, env={"CRDTSTORE_CLUSTER_SECRET": "s" * 20})
    assert app.state.api.replicator._sync_config.anti_entropy_interval == 2.5
    with pytest.raises(ConfigError):
        resolve(NO_FLAGS | {"anti_entropy_interval": "0"}, env={})


@pytest.mark.slow
def test_up_runs_a_node_and_prints_url_and_token(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crdtstore.cli", "up", "--port", "0", "--regions", "1"],
            cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        token, url = None, None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (token is None or url is None):
            assert proc.poll() is None, out.read_text()
            for line in out.read_text().splitlines():
                if line.startswith("token (readwrite"):
                    token = line.rsplit(" ", 1)[1]
                if line.startswith(f"{UP_REGIONS[0]} "):  # the table's row of the region
                    url = line.split()[1]
            time.sleep(0.05)
        assert token and url, out.read_text()
        assert (tmp_path / "data" / "tokens").exists()
        with Client(url, token) as client:
            for _ in range(200):  # bounded wait for the lifespan
                if client.ready():
                    break
                time.sleep(0.05)
            assert client.apply("hello", [{"op": "set", "path": ["from"], "value": "up"}]).created
            assert client.read("hello").value == {"from": "up"}
        assert (tmp_path / "data" / UP_REGIONS[0]).is_dir()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait(timeout=30)
    assert proc.returncode == 0


def test_region_servers_freeze_start_up_objects_once_every_server_started() -> None:
    # A region process's full collections then skip modules, app and node (see _freeze_once_started).
    class Starting:
        started = False

    servers = [Starting(), Starting()]
    before = gc.get_freeze_count()

    async def scenario() -> None:
        task = asyncio.create_task(_freeze_once_started(servers))  # type: ignore[arg-type]
        servers[0].started = True
        await asyncio.sleep(0.2)
        assert not task.done() and gc.get_freeze_count() == before  # one server is still starting
        servers[1].started = True
        await asyncio.wait_for(task, 5)
        assert gc.get_freeze_count() > before

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        gc.unfreeze()
