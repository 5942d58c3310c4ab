"""The live channel across regions: edits made in one region are pushed in another, and so is presence,
which expires there when the link between the regions drops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

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
