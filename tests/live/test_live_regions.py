"""The live channel across regions: edits made in one region are pushed in another, and so is presence,
which expires there when the link between the regions drops."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from crdtstore.client import AsyncClient
from crdtstore.live_client import LiveDoc
from tests.server_helpers import RW
from tests.test_cluster import running_cluster


async def _next(doc: LiveDoc, kind: str, match: Any = None) -> dict[str, Any]:
    async def scan() -> dict[str, Any]:
        async for event in doc:
            if event["type"] == kind and (match is None or match(event)):
                return event
        raise AssertionError("the live document ended")

    return await asyncio.wait_for(scan(), 20)


def test_edits_and_presence_cross_regions_and_presence_expires_with_the_link(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_cluster(tmp_path) as (cluster, _):
            eu = AsyncClient(cluster.url("eu"), RW)
            us = AsyncClient(cluster.url("us"), RW)
            async with eu, us, eu.live("shared") as alice, us.live("shared") as bob:
                await alice.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hi"}])
                change = await _next(bob, "change")
                assert change["origin"] == "remote" and bob.value == {"t": "hi"}
                await alice.presence({"name": "alice", "caret": 2})
                seen = await _next(bob, "presence", lambda e: e["state"] is not None)
                assert seen["state"] == {"name": "alice", "caret": 2}
                cluster.wan.partition("eu", "us")
                gone = await _next(bob, "presence", lambda e: e["client"] == seen["client"] and e["state"] is None)
                assert gone["state"] is None

    asyncio.run(asyncio.wait_for(scenario(), 120))


async def _batch(ws: Any, batch_id: str, w: str) -> dict[str, Any]:
    """Send one increment under ``w`` and return its answer (ack or error); changes in between are skipped."""
    await ws.send(orjson.dumps({"type": "batch", "id": batch_id, "ops": [{"op": "increment", "path": ["n"]}], "w": w}))
    while True:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
        if message["type"] in ("ack", "error") and message.get("id") == batch_id:
            return dict(message)


def test_the_ack_says_how_many_replicas_hold_the_batch_of_those_its_w_needs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_cluster(tmp_path) as (cluster, _):
            live = cluster.url("eu").replace("http://", "ws://", 1) + "/v1/docs/counted/live"
            async with connect(live, additional_headers={"Authorization": f"Bearer {RW}"}) as ws:
                assert orjson.loads(await ws.recv())["type"] == "snapshot"
                one = await _batch(ws, "one", "one")
                assert (one["type"], one["reached"], one["needed"]) == ("ack", 1, 1)
                # Every region holds it when w=all is acknowledged: the three replicas, counted as POST counts.
                every = await _batch(ws, "all", "all")
                assert (every["type"], every["reached"], every["needed"]) == ("ack", 3, 3)
                quorum = await _batch(ws, "quorum", "quorum")
                assert quorum["type"] == "ack" and quorum["needed"] == 2 and 2 <= quorum["reached"] <= 3
                # Abuse: w=all while a region is cut off is not acknowledged; the error says how far it got,
                # and the batch is durable here (a resend of its id is acknowledged again, not applied twice).
                cluster.wan.partition("eu", "us")
                short = await _batch(ws, "cut", "all")
                assert (short["type"], short["error"]) == ("error", "quorum_timeout")
                assert short["detail"]["reached"] == 2 and short["detail"]["needed"] == 3
                again = await _batch(ws, "cut", "one")
                assert (again["type"], again.get("again"), again["reached"], again["needed"]) == ("ack", True, 1, 1)

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_a_batch_against_a_version_from_a_region_ahead_waits_for_it_then_edits_the_spot_meant(tmp_path: Path) -> None:
    """A client that read in us (or whose region lost unflushed changes in a crash) sends an index edit to eu
    before eu holds what it read: eu waits for those changes instead of reading the index against less."""

    async def scenario() -> None:
        async with running_cluster(tmp_path) as (cluster, client):
            us, eu = cluster.url("us") + "/v1/docs/late", cluster.url("eu") + "/v1/docs/late"
            await client.post(us, json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "ad"}]})
            for _ in range(400):  # bounded: 20 s
                if (await client.get(eu)).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            cluster.wan.isolate("eu")
            ahead = await client.post(us, json={"ops": [{"op": "insert", "path": ["t"], "index": 1, "text": "bc"}]})
            seen = ahead.json()["version"]  # the client reads "abcd" in us and means "abc|d"
            live = eu.replace("http://", "ws://", 1) + "/live"
            async with connect(live, additional_headers={"Authorization": f"Bearer {RW}"}) as ws:
                assert orjson.loads(await ws.recv())["value"] == {"t": "ad"}
                edit = {"op": "insert", "path": ["t"], "index": 3, "text": "X"}
                await ws.send(orjson.dumps({"type": "batch", "id": "b", "ops": [edit], "version": seen}))
                with contextlib.suppress(TimeoutError):  # nothing answers while eu lacks "bc"
                    early = orjson.loads(await asyncio.wait_for(ws.recv(), 1.0))
                    raise AssertionError(f"answered before eu held the version: {early}")
                cluster.wan.heal_all()
                while True:
                    message = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
                    if message["type"] in ("ack", "error"):
                        break
                assert message["type"] == "ack", message
            value = (await client.get(eu)).json()["value"]
            assert value == {"t": "abcXd"}

    asyncio.run(asyncio.wait_for(scenario(), 120))
