"""Node-level link cuts (POST /v1/admin/links/cut and /heal): their use on linked regions, and their abuse."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crdtstore import cli
from crdtstore.linkcut import LINK_CUT
from tests.api.helpers import ADMIN_TOKEN, READ_TOKEN, RW_TOKEN, TestClient, auth_headers
from tests.api.linked import Linked, linked_regions, wait_for


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=90))


async def linked(linked: Linked, name: str, *others: str) -> bool:
    want = sorted(linked.peer_id(o) for o in others)
    return await wait_for(lambda: linked.replicator(name).peers() == want)


async def cut(linked: Linked, name: str, body: Any, *, route: str = "cut", token: str = ADMIN_TOKEN) -> Any:
    return await linked.call(name, "POST", f"/v1/admin/links/{route}", token=token, json=body)


def test_a_cut_peer_is_dropped_refused_and_not_dialed_until_healed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as cluster:
            assert await linked(cluster, "us", "eu") and await linked(cluster, "eu", "us")
            us = cluster.replicator("us")
            response = await cut(cluster, "us", {"peer": cluster.peer_id("eu")})
            assert response.status_code == 200, response.text
            assert response.json()["cut"] == {"peers": [cluster.peer_id("eu")], "regions": []}
            # Both directions: us closed its links, stopped dialing, and refuses eu's dials.
            assert await linked(cluster, "us") and await linked(cluster, "eu")
            assert us._dialers == []
            assert await wait_for(lambda: us.stats["links_refused_cut"] >= 2)  # eu keeps dialing, refused each time
            assert cluster.replicator("us").peers() == []
            assert await cluster.write("us", "while-cut", level="all", timeout=0.3) == 504
            assert (await cluster.call("eu", "GET", "/v1/docs/while-cut")).status_code == 404
            shown = await cluster.call("us", "GET", "/v1/admin/links/cut", token=READ_TOKEN)
            assert shown.json()["cut"]["peers"] == [cluster.peer_id("eu")]
            assert shown.json()["known"] == {cluster.peer_id("eu"): "eu"}
            heal = await cut(cluster, "us", {"peer": cluster.peer_id("eu")}, route="heal")
            assert heal.status_code == 200 and heal.json()["cut"] == {"peers": [], "regions": []}
            assert await linked(cluster, "us", "eu")

            async def arrived() -> bool:
                return (await cluster.call("eu", "GET", "/v1/docs/while-cut")).status_code == 200

            assert await wait_for(arrived)  # the write made during the cut catches up
            assert await cluster.write("us", "healed", level="all") == 200

    run(scenario())


def test_a_cut_peer_that_dials_in_is_closed_with_the_cut_code_once_it_authenticates(tmp_path: Path) -> None:
    from tests.api.linked import SECRET
    from tests.sync_io.regions import Member

    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as cluster:
            url = cluster.url("us").replace("http", "ws") + "/v1/peer"
            first = Member("member-1", secret=SECRET)
            await first.handshake(url)  # now us knows member-1
            assert await wait_for(lambda: "member-1" in cluster.replicator("us").cuts.known)
            response = await cut(cluster, "us", {"peer": "member-1"})
            assert response.status_code == 200, response.text
            assert await first.recv_until_closed() == LINK_CUT  # its live link is dropped
            again = Member("member-1", secret=SECRET)
            await again.handshake(url)
            assert await again.recv_until_closed() == LINK_CUT  # and a new one refused
            await again.close()
            assert cluster.replicator("us").peers() == [cluster.peer_id("eu")]  # eu is not cut

    run(scenario())


def test_isolate_and_heal_from_the_cli_against_node_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu", "ap")) as cluster:
            for name in ("us", "eu", "ap"):
                assert await linked(cluster, name, *({"us", "eu", "ap"} - {name}))
            nodes = [a for name in ("us", "eu", "ap") for a in ("--node", cluster.url(name))]
            common = ["--token", ADMIN_TOKEN, "--data", str(tmp_path / "none")]

            def main(*argv: str) -> int:
                return cli.main([*argv, *common, *nodes])

            assert await asyncio.to_thread(main, "isolate", "ap") == 0
            assert await linked(cluster, "ap")
            assert await linked(cluster, "us", "eu") and await linked(cluster, "eu", "us")
            # `status` shows each node's cuts (read scope is enough to see them).
            capsys.readouterr()
            urls = [cluster.url(name) for name in ("us", "eu", "ap")]
            assert await asyncio.to_thread(cli.main, ["status", *urls, "--token", ADMIN_TOKEN]) == 0
            rows = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:4]}
            assert rows == {"us": "region:ap", "eu": "region:ap", "ap": "region:eu,region:us"}, rows
            assert await asyncio.to_thread(main, "heal") == 0
            assert await linked(cluster, "ap", "us", "eu")
            assert await asyncio.to_thread(main, "partition", "us", "eu") == 0
            assert await linked(cluster, "us", "ap") and await linked(cluster, "eu", "ap")
            assert cluster.replicator("ap").peers() == sorted([cluster.peer_id("us"), cluster.peer_id("eu")])
            assert await asyncio.to_thread(main, "heal", "us", "eu") == 0
            assert await linked(cluster, "us", "eu", "ap")
            # A region no node serves: refused before any node changes.
            assert await asyncio.to_thread(main, "partition", "us", "mars") == 2
            assert all(cluster.replicator(n).cuts.as_json() == {"peers": [], "regions": []} for n in ("us", "eu", "ap"))

    run(scenario())
    out = capsys.readouterr()
    assert "ap http://127.0.0.1" in out.out and "no node given serves region 'mars'" in out.err


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"peer": "nobody-123"}, 400, "unknown_peer"),
        ({"region": "mars"}, 400, "unknown_peer"),
        ({"peer": "x", "region": "eu"}, 400, "invalid_request"),
        ({"node": "eu"}, 400, "invalid_request"),
        ({"peer": 7}, 400, "invalid_request"),
        ({"region": ""}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        (["eu"], 400, "invalid_request"),
    ],
)
def test_bad_cut_requests_are_400_and_change_nothing(tmp_path: Path, body: Any, status: int, error: str) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as cluster:
            assert await linked(cluster, "us", "eu")
            response = await cut(cluster, "us", body)
            assert (response.status_code, response.json()["error"]) == (status, error), response.text
            if body != {}:  # {} heals every cut: valid for heal
                healed = await cut(cluster, "us", body, route="heal")
                assert (healed.status_code, healed.json()["error"]) == (status, error)
            assert cluster.replicator("us").cuts.as_json() == {"peers": [], "regions": []}
            assert cluster.replicator("us").peers() == [cluster.peer_id("eu")]

    run(scenario())


def test_only_admin_tokens_cut_or_heal_links(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as cluster:
            assert await linked(cluster, "us", "eu")
            target = {"region": "eu"}
            for route in ("cut", "heal"):
                for token in (READ_TOKEN, RW_TOKEN):
                    response = await cut(cluster, "us", target, route=route, token=token)
                    assert response.status_code == 403 and response.json()["detail"] == {"needed": "admin"}
                response = await cluster.client.post(f"{cluster.url('us')}/v1/admin/links/{route}", json=target)
                assert response.status_code == 401
            assert (await cluster.call("us", "GET", "/v1/admin/links/cut")).status_code == 200  # read may look
            assert cluster.replicator("us").cuts.as_json() == {"peers": [], "regions": []}
            assert cluster.replicator("us").peers() == [cluster.peer_id("eu")]

    run(scenario())


def test_a_node_without_peer_links_has_nothing_to_cut(make_client: Callable[..., TestClient]) -> None:
    client = make_client(token=ADMIN_TOKEN)
    assert client.post("/v1/admin/links/cut", json={"region": "eu"}).status_code == 404
    assert client.get("/v1/admin/links/cut").status_code == 404
    assert client.post("/v1/admin/links/cut", json={"region": "eu"}, headers=auth_headers(RW_TOKEN)).status_code == 403


def test_the_cut_close_code_is_its_own() -> None:
    from sync.exceptions import CloseCode

    assert LINK_CUT not in {int(c) for c in CloseCode}
