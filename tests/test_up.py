"""``crdtstore up`` as a supervisor of one process per region, and the operator commands against it.

The slow test runs a real ``up`` of three regions on loopback: it kills one
region's process with SIGKILL (by the pid ``up`` recorded) and checks that the
others keep serving and that ``up`` reports the death; it cuts and heals links
with ``crdtstore partition``/``isolate``/``heal`` and reads ``crdtstore status``,
all as separate processes. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtstore.api.auth import Scope, parse_token_file
from crdtstore.cli import build_parser, main, plan_up
from crdtstore.clusterctl import NodeStatus, render_status
from crdtstore.config import SETTINGS, ConfigError, resolve
from crdtstore.supervisor import Child, Supervisor, format_table, replica_names, serve_argv
from sync.io.wanproxy import WanController
from tests.server_helpers import child_env

__all__: list[str] = []

WAIT = 60.0


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy (bounded); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crdtstore.cli", *args],
        cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_serve_argv_gives_back_the_plan(tmp_path: Path) -> None:
    # Each child of `up` is started from serve_argv(plan): parsing those flags must give the plan back.
    wan = WanController(["us", "eu", "ap"])
    wan.bind()
    try:
        for plan in plan_up(tmp_path, host="127.0.0.1", base_port=9000, regions=3, wan=wan):
            argv = serve_argv(plan)
            args = build_parser().parse_args(["serve", *argv])
            flags = {s.name: getattr(args, s.name) for s in SETTINGS}
            assert resolve(flags, env={}) == plan
            assert "--cluster-secret-file" in argv and argv.count("--peer") == 2
    finally:
        asyncio.run(wan.close())


def test_wan_links_take_consecutive_ports_when_asked() -> None:
    wan = WanController(["us", "eu", "ap"], base_port=42100)
    assert [link._listen[1] for link in wan.links.values()] == list(range(42100, 42106))
    assert WanController(["us", "eu"]).links[("us", "eu")]._listen[1] == 0  # default: a free port
    with pytest.raises(ValueError):
        WanController(["us", "eu", "ap"], base_port=65533)  # six ports do not fit
    with pytest.raises(ValueError):
        WanController(["us", "eu"], base_port=80)  # no privileged ports


@pytest.mark.parametrize("replicas", ["0", "6", "-1"])
def test_up_refuses_a_replica_count_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], replicas: str
) -> None:
    code = main(["up", "--data", str(tmp_path / "d"), "--replicas", replicas, "--port", "0"])
    assert code == 2
    assert "--replicas is 1 to 5" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_up_plan_of_several_replicas_per_region(tmp_path: Path) -> None:
    members = {name: region for region in ("us", "eu", "ap") for name in replica_names(region, 3)}
    wan = WanController(["us", "eu", "ap"], members=members)
    wan.bind()
    try:
        ports = list(range(9000, 9009))
        plans = plan_up(tmp_path, host="127.0.0.1", base_port=0, regions=3, replicas=3, wan=wan, ports=ports)
        assert [p.data.name for p in plans] == list(members)  # us-0, us-1, us-2, eu-0, ...
        assert [p.region for p in plans] == list(members.values())
        assert [p.port for p in plans] == ports
        wan_ports = {link.port for link in wan.links.values()}
        for plan in plans:
            assert plan.region_replicas == 3 and plan.cluster_secret_file == tmp_path / "cluster-secret"
            dialed = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in plan.peers]
            # Its region's two others directly (no WAN inside a region), the six others through the WAN.
            same = {p.port for p in plans if p.region == plan.region and p is not plan}
            assert set(dialed[:2]) == same and set(dialed[2:]) <= wan_ports and len(dialed) == 8
            args = build_parser().parse_args(["serve", *serve_argv(plan)])
            assert resolve({s.name: getattr(args, s.name) for s in SETTINGS}, env={}) == plan
        # One region of three replicas: no WAN, linked directly, clustered all the same.
        alone = plan_up(tmp_path, host="127.0.0.1", base_port=9100, regions=1, replicas=3)
        assert [len(p.peers) for p in alone] == [2, 2, 2] and all(p.cluster_secret_file for p in alone)
        with pytest.raises(ConfigError, match="ports must be known"):
            plan_up(tmp_path, host="127.0.0.1", base_port=0, regions=1, replicas=2)
    finally:
        asyncio.run(wan.close())


def test_the_plan_lists_every_replica_and_keeps_one_entry_per_region(tmp_path: Path) -> None:
    plans = plan_up(tmp_path, host="127.0.0.1", base_port=9000, regions=2, replicas=2)
    supervisor = Supervisor([Child(p, name=p.data.name, log=tmp_path / f"{p.data.name}.log") for p in plans])
    plan = supervisor.plan(wan_admin=None)
    assert list(plan["replicas"]) == ["us-0", "us-1", "eu-0", "eu-1"]
    assert [e["region"] for e in plan["replicas"].values()] == ["us", "us", "eu", "eu"]
    # What readers of the one-replica plan read: each region's URL, pid, log, argv (its first replica).
    assert plan["regions"] == {
        r: {k: v for k, v in plan["replicas"][f"{r}-0"].items() if k != "region"} for r in ("us", "eu")
    }
    lines = supervisor.table().splitlines()
    assert lines[0].split() == ["replica", "url", "pid", "region", "log"]
    assert [line.split()[0] for line in lines[1:]] == ["us-0", "us-1", "eu-0", "eu-1"]
    # One replica per region: names, directories and the plan are those of before.
    single = plan_up(tmp_path, host="127.0.0.1", base_port=9000, regions=2)
    assert [p.data.name for p in single] == ["us", "eu"] and all(p.region_replicas == 1 for p in single)


def test_link_commands_without_a_cluster_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["partition", "us", "eu", "--data", str(tmp_path)]) == 2
    assert "no token" in capsys.readouterr().err
    (tmp_path / "tokens").write_text("r" * 20 + " read\n")
    # A read token is not enough to cut links: refused before any request.
    assert main(["isolate", "us", "--data", str(tmp_path)]) == 2
    assert "holds no admin token" in capsys.readouterr().err
    assert main(["heal", "us", "--data", str(tmp_path), "--token", "t" * 20]) == 2
    assert "no `crdtstore up` plan" in capsys.readouterr().err


def test_table_lines_up_columns() -> None:
    assert format_table([("a", "bb"), ("ccc", "d")]).splitlines() == ["a    bb", "ccc  d"]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    out = tmp_path / "console.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crdtstore.cli", "up", "--port", "0", "--regions", "3"],
            cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc, tmp_path
    finally:
        pids = []
        plan_path = tmp_path / "data" / "up.json"
        if plan_path.exists():
            pids = [entry["pid"] for entry in json.loads(plan_path.read_text())["regions"].values()]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        for pid in pids:  # stopping `up` stops every region: none is left behind
            wait_for(f"region pid {pid} to exit", lambda pid=pid: not _alive(pid), timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by `up`) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_up_runs_each_region_as_a_process_that_can_die_alone(up: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, cwd = up
    console = cwd / "console.log"
    wait_for("the admin token line", lambda: proc.poll() is None and "token (admin" in console.read_text())
    root = cwd / "data"
    plan = json.loads((root / "up.json").read_text())
    urls = {region: entry["url"] for region, entry in plan["regions"].items()}
    pids = {region: entry["pid"] for region, entry in plan["regions"].items()}
    assert sorted(urls) == ["ap", "eu", "us"] and len(set(pids.values()) | {proc.pid}) == 4
    text = console.read_text()
    for region, url in urls.items():
        assert any(line.split()[:3] == [region, url, str(pids[region])] for line in text.splitlines()), text
        assert (root / "logs" / f"{region}.log").exists()
    tokens = parse_token_file((root / "tokens").read_text())
    rw = next(t for t, s in tokens.items() if s is Scope.READWRITE)
    headers = {"Authorization": f"Bearer {rw}"}

    def write(region: str, doc: str, value: int) -> None:
        body = {"ops": [{"op": "set", "path": ["v"], "value": value}]}
        response = httpx.post(f"{urls[region]}/v1/docs/{doc}", json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text

    def value_at(region: str, doc: str) -> Any:
        response = httpx.get(f"{urls[region]}/v1/docs/{doc}", headers=headers, timeout=10)
        return response.json()["value"].get("v") if response.status_code == 200 else None

    write("us", "a", 1)
    wait_for("a to reach eu and ap", lambda: value_at("eu", "a") == 1 and value_at("ap", "a") == 1)

    # Status through the CLI, from the plan: every region up, and (once replicated) equal Merkle roots.
    def converged() -> str | None:
        result = cli("status", cwd=cwd)
        return result.stdout if result.returncode == 0 and "merkle roots: equal" in result.stdout else None

    status = wait_for("status to show converged regions", converged)
    assert "cut links: none" in status and all(url in status for url in urls.values())

    # Partition us-ap through the WAN admin API: the link drops, writes stay local, heal brings them over.
    rw_cut = cli("partition", "us", "ap", "--token", rw, cwd=cwd)
    assert rw_cut.returncode == 1 and '"forbidden"' in rw_cut.stderr  # a readwrite token cannot cut links
    result = cli("partition", "us", "ap", cwd=cwd)
    assert result.returncode == 0 and result.stdout.strip() == "cut links: ap-us", result.stderr

    def us_peers() -> list[str]:
        links = httpx.get(f"{urls['us']}/v1/admin/links", headers=headers, timeout=10).json()
        return [peer.rsplit("-", 1)[0] for peer in links["peers"]]

    wait_for("us to lose its link to ap", lambda: us_peers() == ["eu"])
    result = cli("isolate", "eu", "--mode", "close", cwd=cwd)
    assert result.stdout.strip() == "cut links: ap-eu, ap-us, eu-us"
    assert "cut links: ap-eu, ap-us, eu-us" in cli("status", cwd=cwd).stdout
    write("us", "b", 2)
    assert cli("heal", "us", "ap", cwd=cwd).stdout.strip() == "cut links: ap-eu, eu-us"
    wait_for("b to reach ap after heal", lambda: value_at("ap", "b") == 2)
    assert cli("heal", cwd=cwd).stdout.strip() == "cut links: none"
    wait_for("b to reach eu after heal", lambda: value_at("eu", "b") == 2)

    # kill -9 one region: up reports it, the others keep serving and replicating.
    os.kill(pids["eu"], signal.SIGKILL)
    wait_for("up to report eu's death", lambda: f"region eu (pid {pids['eu']}) exited" in console.read_text())
    assert proc.poll() is None
    write("us", "c", 3)
    wait_for("c to reach ap with eu down", lambda: value_at("ap", "c") == 3)
    result = cli("status", urls["us"], urls["eu"], "--token", rw, cwd=cwd)  # given URLs, not the plan
    assert result.returncode == 1  # a node is unreachable
    lines = result.stdout.splitlines()
    assert any(line.startswith("us ") and " up " in line for line in lines), result.stdout
    assert any(urls["eu"] in line and "unreachable" in line for line in lines), result.stdout

    # SIGTERM to up stops every region by its pid (checked by the fixture) and exits cleanly.
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_regions_stop_when_up_is_killed(tmp_path: Path) -> None:
    # kill -9 of `up` leaves no orphaned region holding its port and data directory.
    out = tmp_path / "console.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crdtstore.cli", "up", "--port", "0", "--regions", "2"],
            cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    pids: list[int] = []
    try:
        wait_for("the admin token line", lambda: proc.poll() is None and "token (admin" in out.read_text())
        plan = json.loads((tmp_path / "data" / "up.json").read_text())
        pids = [entry["pid"] for entry in plan["regions"].values()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    try:
        for pid in pids:
            wait_for(f"region pid {pid} to exit after up died", lambda pid=pid: not _alive(pid), timeout=40)
    finally:
        for pid in pids:  # on failure, no region outlives the test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_up_runs_several_replicas_per_region_each_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "console.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crdtstore.cli", "up", "--port", "0", "--regions", "2", "--replicas", "2"],
            cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    pids: dict[str, int] = {}
    try:
        wait_for("the admin token line", lambda: proc.poll() is None and "token (admin" in out.read_text())
        plan = json.loads((tmp_path / "data" / "up.json").read_text())
        replicas = plan["replicas"]
        assert list(replicas) == ["us-0", "us-1", "eu-0", "eu-1"]
        pids = {name: entry["pid"] for name, entry in replicas.items()}
        assert len(set(pids.values()) | {proc.pid}) == 5
        text = out.read_text()
        for name, entry in replicas.items():
            row = [name, entry["url"], str(entry["pid"]), entry["region"]]
            assert any(line.split()[:4] == row for line in text.splitlines()), text
        assert plan["regions"]["us"]["url"] == replicas["us-0"]["url"]  # the one-replica shape still reads
        tokens = parse_token_file((tmp_path / "data" / "tokens").read_text())
        headers = {"Authorization": f"Bearer {next(t for t, s in tokens.items() if s is Scope.READWRITE)}"}
        us0 = replicas["us-0"]["url"]

        def write(level: str, timeout: float = 30) -> httpx.Response:
            body = {"ops": [{"op": "increment", "path": ["n"]}]}
            return httpx.post(f"{us0}/v1/docs/d?w={level}&timeout={timeout}", json=body, headers=headers, timeout=60)

        def linked(name: str, count: int) -> bool:
            links = httpx.get(f"{replicas[name]['url']}/v1/admin/links", headers=headers, timeout=10).json()
            return len(links["peers"]) == count

        wait_for("us-0 to link to the three others", lambda: linked("us-0", 3))
        assert write("all").status_code == 200
        # A region cut cuts every replica pair between them: us-0 keeps its region's other replica only.
        result = cli("partition", "us", "eu", cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.strip() == "cut links: eu-us", result.stderr
        wait_for("us-0 to lose both eu replicas", lambda: linked("us-0", 1))
        assert write("local_quorum").status_code == 200  # 2 of us's 2
        cut_off = write("quorum", timeout=1)
        assert cut_off.status_code == 504 and cut_off.json()["detail"]["needed"] == 3
        assert cut_off.json()["detail"]["reached"] == 2
        # kill -9 one replica: up reports it, and us alone no longer makes a local quorum.
        os.kill(pids["us-1"], signal.SIGKILL)
        wait_for("up to report us-1", lambda: f"replica us-1 (pid {pids['us-1']}) exited" in out.read_text())
        wait_for("us-0 to lose us-1", lambda: linked("us-0", 0))
        alone = write("local_quorum", timeout=1)
        assert alone.status_code == 504 and alone.json()["detail"]["needed"] == 2
        assert alone.json()["detail"]["reached"] == 1
        assert cli("heal", cwd=tmp_path).stdout.strip() == "cut links: none"
        wait_for("us-0 to link to eu again", lambda: linked("us-0", 2))
        status = cli("status", cwd=tmp_path)
        assert status.returncode == 1 and "us-1" in status.stdout and "unreachable" in status.stdout
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for pid in pids.values():
            wait_for(f"replica pid {pid} to exit", lambda pid=pid: not _alive(pid), timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in pids.values():  # on failure, no replica outlives the test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_status_counts_linked_replicas_per_region() -> None:
    ok = NodeStatus(name="us-0", url="http://a", replica_id="us-1a.1.x", root="ab" * 16)
    ok.peers = ["us-2b", "eu-3c", "eu-4d", "ap-5e"]
    one = NodeStatus(name="eu", url="http://b", replica_id="eu-3c.1.y", peers=["us-1a"], root="ab" * 16)
    down = NodeStatus(name="us-1", url="http://c", error="unreachable (refused)")
    lines = render_status([ok, one, down], cut=[["eu", "us"]]).splitlines()
    assert lines[1].split()[4] == "us,eux2,ap"  # several replicas of a region: counted
    assert lines[2].split()[4] == "us"  # one: its region's name, as before
    assert "unreachable" in lines[3] and lines[-1] == "cut links: eu-us"
