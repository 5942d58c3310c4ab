"""The Python clients: in-process over ASGI (async) and against a real server (sync and async, with the feed)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.client import ApiError, AsyncClient, Client
from crdtstore.node import Node, NodeConfig
from tests.server_helpers import READ, RW, ServerProcess, write_tokens

_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = Path(tmp_path_factory.mktemp("client"))
    tokens = write_tokens(tmp / "tokens")
    proc = ServerProcess(tmp, ["--region", "cli", "--data", str(tmp / "d"), "--tokens", str(tokens), "--no-sync"])
    yield proc.start()
    proc.kill()


def fresh(name: str) -> str:
    return f"{name}-{next(_ids)}"


def test_async_client_in_process(tmp_path: Path) -> None:
    node = Node(NodeConfig(region="inproc", data_dir=tmp_path / "n", sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW: Scope.READWRITE})))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://in-process", RW, transport=transport) as client:
                assert await client.health() and await client.ready()
                written = await client.apply("a b:c", [{"op": "set", "path": ["k"], "value": [1, "x"]}])
                assert written.created
                doc = await client.read("a b:c", siblings=True)
                assert doc.value == {"k": [1, "x"]} and doc.siblings == {"k": [[1, "x"]]}
                assert doc.version == written.version
                for i in range(5):
                    await client.apply(f"p{i}", [{"op": "enable", "path": ["f"]}])
                assert [i async for i in client.iter_ids("p", page_size=2)] == [f"p{i}" for i in range(5)]
                page = await client.list("p", limit=2)
                assert page.ids == ["p0", "p1"] and page.cursor is not None
                await client.delete("p0")
                with pytest.raises(ApiError) as info:
                    await client.read("p0")
                assert (info.value.status, info.value.code) == (404, "not_found")
                with pytest.raises(ApiError) as info:
                    await client.apply("a b:c", [{"op": "increment", "path": ["k"]}])
                assert info.value.code == "type_mismatch" and info.value.detail["op_index"] == 0
                with pytest.raises(ApiError) as info:
                    await client.read("no/slash")
                assert (info.value.status, info.value.code) == (400, "invalid_id")
            async with AsyncClient("http://in-process", None, transport=transport) as anon:
                with pytest.raises(ApiError) as info:
                    await anon.list()
                assert info.value.status == 401

    asyncio.run(scenario())


def test_non_json_errors_still_raise_api_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503, text="Service Unavailable"))
    with Client("http://mock", RW, transport=transport) as client:
        with pytest.raises(ApiError) as info:
            client.read("x")
    assert (info.value.status, info.value.code) == (503, "http_error")
    assert "Service Unavailable" in info.value.message


def test_sync_client_against_a_server(server: ServerProcess) -> None:
    doc_id = fresh("sync é?#")
    with Client(server.url, RW) as client:
        assert client.health() and client.ready()
        first = client.apply(doc_id, [{"op": "insert", "path": ["t"], "index": 0, "text": "hi"}])
        assert first.created
        assert client.read(doc_id).value == {"t": "hi"}
        assert doc_id in list(client.iter_ids("sync"))
        client.delete(doc_id)
        with pytest.raises(ApiError) as info:
            client.delete(doc_id)
        assert info.value.status == 404


def test_sync_feed_resumes_from_a_cursor(server: ServerProcess) -> None:
    doc_id = fresh("feed")
    with Client(server.url, RW) as client:
        versions = [client.apply(doc_id, [{"op": "increment", "path": ["n"]}]).version for _ in range(4)]
        feed = client.changes(doc_id)
        first_two = [next(feed), next(feed)]
        feed.close()
        versions.append(client.apply(doc_id, [{"op": "increment", "path": ["n"]}]).version)
        feed = client.changes(doc_id, since=first_two[-1]["cursor"])
        rest = [next(feed) for _ in range(3)]
        feed.close()
    assert [r["version"] for r in first_two + rest] == versions


def test_feed_errors_are_api_errors(server: ServerProcess) -> None:
    with Client(server.url, None) as anon:
        with pytest.raises(ApiError) as info:
            next(anon.changes("x"))
        assert (info.value.status, info.value.code) == (401, "unauthorized")
    with Client(server.url, READ) as reader:
        with pytest.raises(ApiError) as info:
            next(reader.changes("x", since="nonsense"))
        assert info.value.status == 400


def test_async_feed_against_a_server(server: ServerProcess) -> None:
    doc_id = fresh("afeed")

    async def scenario() -> list[Any]:
        async with AsyncClient(server.url, RW) as client:
            feed = client.changes(doc_id)
            received: list[Any] = []
            expected = [
                (await client.apply(doc_id, [{"op": "add", "path": ["s"], "value": i}])).version for i in range(3)
            ]
            async for record in feed:
                received.append(record["version"])
                if len(received) == len(expected):
                    break
            await feed.aclose()
            return [received, expected]

    received, expected = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert received == expected
