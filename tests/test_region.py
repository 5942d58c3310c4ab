"""Region: one owner and one order for a node's, replicator's and servers' start-up and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import pytest
import uvicorn

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, TokenStore
from crdtstore.region import Region
from crdtstore.server import run_servers
from crdtstore.storage import IncompatibleStorage
from tests.api.helpers import TestClient


class FakeNode:
    """Records its lifecycle calls in a shared log."""

    def __init__(self, log: list[str], *, fail: bool = False) -> None:
        self.log = log
        self.fail = fail
        self.replica_id = "r.1.x"

    async def start(self) -> None:
        self.log.append("node.start")
        if self.fail:
            raise IncompatibleStorage("the directory belongs to another region")

    async def close(self) -> None:
        self.log.append("node.close")

    def stats(self) -> dict[str, Any]:
        return {}


class FakeReplicator:
    def __init__(self, log: list[str], region: list[Region], *, fail: bool = False) -> None:
        self.log = log
        self.region = region
        self.fail = fail

    async def start(self) -> None:
        # Its sessions may call into the node already, but no one is told it is ready yet.
        self.log.append(f"replicator.start ready={self.region[0].ready}")
        if self.fail:
            raise OSError("cannot listen")

    async def close(self) -> None:
        self.log.append(f"replicator.close ready={self.region[0].ready}")


def make_region(log: list[str], *, fail: bool = False) -> Region:
    holder: list[Region] = []
    region = Region(FakeNode(log, fail=fail), replicator=FakeReplicator(log, holder))
    holder.append(region)
    region.on_start.append(lambda: log.append("hook"))
    return region


def test_start_and_close_run_in_order() -> None:
    log: list[str] = []
    region = make_region(log)

    async def main() -> None:
        assert not region.ready
        await region.start()
        assert region.ready
        await region.close()
        assert not region.ready

    asyncio.run(main())
    assert log == [
        "node.start",
        "hook",  # the writer exists: commit metrics attach before any peer writes
        "replicator.start ready=False",
        "replicator.close ready=False",  # unready first: /readyz turns 503 before anything closes
        "node.close",
    ]


def test_a_region_starts_once() -> None:
    """Abuse: a second start (a second owner) is refused and starts nothing."""
    log: list[str] = []
    region = make_region(log)

    async def main() -> None:
        await region.start()
        with pytest.raises(RuntimeError, match="starts once"):
            await region.start()
        await region.close()

    asyncio.run(main())
    assert log.count("node.start") == 1


def test_a_region_whose_replicator_fails_to_start_closes_its_node() -> None:
    """Abuse: the storage must not stay open (its LMDB lock held) behind a failed start."""
    log: list[str] = []
    holder: list[Region] = []
    region = Region(FakeNode(log), replicator=FakeReplicator(log, holder, fail=True))
    holder.append(region)
    with pytest.raises(OSError, match="cannot listen"):
        asyncio.run(region.start())
    assert log == ["node.start", "replicator.start ready=False", "node.close"]
    assert not region.ready


def test_an_app_lifespan_starts_a_region_only_if_no_one_else_did() -> None:
    log: list[str] = []
    region = make_region(log)
    app = build_app(region, auth=AuthPolicy(tokens=TokenStore()))
    with TestClient(app) as client:  # served alone: the lifespan starts and closes it
        assert client.get("/readyz").status_code == 200
    assert log[0] == "node.start" and log[-1] == "node.close"

    log.clear()
    owned = make_region(log)
    app = build_app(owned, auth=AuthPolicy(tokens=TokenStore()))

    async def main() -> None:
        await owned.start()
        async with app.router.lifespan_context(app):
            pass  # the lifespan found it started: its owner closes it, not the app
        assert owned.ready and "node.close" not in log
        await owned.close()

    asyncio.run(main())
    assert log.count("node.start") == 1 and log.count("node.close") == 1


def test_a_bare_node_gets_a_region_of_its_own() -> None:
    log: list[str] = []
    app = build_app(FakeNode(log), auth=AuthPolicy(tokens=TokenStore()))
    assert isinstance(app.state.api.region, Region) and app.state.api.region.node is app.state.api.node
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert log == ["node.start", "node.close"]


def _config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")


def test_run_servers_stops_every_region_when_one_fails_to_start() -> None:
    """Abuse: a region whose node refuses its directory: exit code 3, and the healthy region does
    not keep serving alone (its servers stop, and the region is closed)."""
    log: list[str] = []
    good = make_region(log)
    bad_log: list[str] = []
    bad = make_region(bad_log, fail=True)
    auth = AuthPolicy(tokens=TokenStore())
    # A watchdog ends a process that would serve on alone; that it had to is the failure.
    watchdog = threading.Timer(30, lambda: os.kill(os.getpid(), signal.SIGTERM))
    watchdog.start()
    try:
        code = run_servers([_config(build_app(good, auth=auth)), _config(build_app(bad, auth=auth))])
    finally:
        fired = not watchdog.is_alive()
        watchdog.cancel()
    assert not fired, "the healthy region kept serving after the other failed to start"
    assert code == 3
    assert bad_log == ["node.start"]  # nothing else of it started
    assert log[-1] == "node.close"  # the good one closed after its server stopped


def test_run_servers_serves_a_region_and_closes_it_after_its_servers() -> None:
    log: list[str] = []
    region = make_region(log)
    app = build_app(region, auth=AuthPolicy(tokens=TokenStore()))
    served: list[str] = []

    async def on_start() -> None:
        async def stop_when_started() -> None:
            for _ in range(200):  # bounded wait for the server to start
                if region.ready and log[-1].startswith("replicator.start"):
                    break
                await asyncio.sleep(0.02)
            served.append(f"ready={region.ready}")
            os.kill(os.getpid(), signal.SIGTERM)  # run_servers' own handler: a graceful stop

        asyncio.get_running_loop().create_task(stop_when_started())

    assert run_servers([_config(app)], on_start=on_start) == 0
    assert served == ["ready=True"]
    assert log == ["node.start", "hook", "replicator.start ready=False", "replicator.close ready=False", "node.close"]
