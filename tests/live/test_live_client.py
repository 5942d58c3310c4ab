"""``AsyncClient.live``: edits from two clients meet, and a dropped connection neither loses nor doubles a batch."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtstore.client import ApiError, AsyncClient
from tests.server_helpers import READ, RW, ServerProcess, write_tokens

_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = Path(tmp_path_factory.mktemp("live-client"))
    tokens = write_tokens(tmp / "tokens")
    proc = ServerProcess(tmp, ["--region", "lc", "--data", str(tmp / "d"), "--tokens", str(tokens), "--no-sync"])
    yield proc.start()
    proc.kill()


def fresh() -> str:
    return f"lc-{next(_ids)}"


async def _until(predicate: object, what: str) -> None:
    for _ in range(500):  # bounded: 10 s
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_editors_see_each_other(server: ServerProcess) -> None:
    doc_id = fresh()

    async def scenario() -> None:
        async with AsyncClient(server.url, RW) as client:
            async with client.live(doc_id) as alice, client.live(doc_id) as bob:
                await alice.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hello"}])
                await _until(lambda: bob.value == {"t": "hello"}, "bob to see hello")
                # Concurrent: both type without waiting for the other.
                done = await asyncio.gather(
                    alice.apply([{"op": "insert", "path": ["t"], "index": 5, "text": "!"}]),
                    bob.apply([{"op": "insert", "path": ["t"], "index": 0, "text": ">"}]),
                )
                assert all(isinstance(v, str) for v in done)
                await _until(lambda: alice.value == bob.value == {"t": ">hello!"}, "both to converge")
                assert (await client.read(doc_id)).value == {"t": ">hello!"}
                with pytest.raises(ApiError) as info:
                    await bob.apply([{"op": "insert", "path": ["t"], "index": 99, "text": "x"}])
                assert info.value.code == "index_out_of_range"
                assert bob.value == {"t": ">hello!"}  # the refused edit is gone from the screen too

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_dropped_connection_resends_and_applies_once(server: ServerProcess) -> None:
    doc_id = fresh()

    async def scenario() -> None:
        async with AsyncClient(server.url, RW) as client, client.live(doc_id) as doc:
            for i in range(5):
                await _until(lambda: doc._ws is not None, "a connection")
                task = asyncio.create_task(doc.apply([{"op": "increment", "path": ["n"]}]))
                await asyncio.sleep(0.001 * i)  # cut at different points: before, around and after the commit
                if doc._ws is not None:
                    doc._ws.transport.abort()
                await asyncio.wait_for(task, 20)
            assert doc.reconnects >= 1
            assert (await client.read(doc_id)).value == {"n": 5}
            await _until(lambda: doc.value == {"n": 5}, "the client to hold n=5")

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_read_token_cannot_write_and_a_bad_token_cannot_connect(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, READ) as reader, reader.live(fresh()) as doc:
            with pytest.raises(ApiError) as info:
                await doc.apply([{"op": "increment", "path": ["n"]}])
            assert info.value.status == 403
        async with AsyncClient(server.url, "forged") as forged:
            with pytest.raises(ApiError) as info:
                async with forged.live(fresh()):
                    pass
            assert info.value.status == 401

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_presence_reaches_the_other_editor(server: ServerProcess) -> None:
    doc_id = fresh()

    async def scenario() -> None:
        async with AsyncClient(server.url, RW) as client:
            async with client.live(doc_id) as alice, client.live(doc_id) as bob:
                await alice.presence({"name": "alice", "caret": 2})
                async for event in bob:
                    if event["type"] == "presence":
                        assert event["state"] == {"name": "alice", "caret": 2}
                        break

    asyncio.run(asyncio.wait_for(scenario(), 60))
