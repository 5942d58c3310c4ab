"""Two linked regions: peer data that cannot be joined never wedges the link (issue #9, items 2 and 3)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from crdtstore import codec
from crdtstore.commit import WriteContext
from crdtstore.document import Document
from crdtstore.limits import INT64_MAX
from crdtstore.node import Node
from crdtstore.replicator import ReplicatorSettings
from tests.sync_io.test_replicator import TOKEN, linked_pair


async def until(check: Callable[[], Awaitable[bool]], what: str, tries: int = 500) -> None:
    """Poll ``check`` (bounded: ``tries`` times 20 ms, far above the usual lag)."""
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def ready(client: httpx.AsyncClient, urls: list[str]) -> None:
    async def up() -> bool:
        return all([(await client.get(u + "/readyz")).status_code == 200 for u in urls])

    await until(up, "both regions ready")


def test_concurrent_int64_max_increments_in_two_regions_then_unrelated_writes_replicate(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_pair(tmp_path, ReplicatorSettings(truncate_interval=None)) as pair:
            urls = pair.urls
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
                await ready(client, urls)
                inc = {"ops": [{"op": "increment", "path": ["c"], "by": INT64_MAX}]}
                answers = await asyncio.gather(*(client.post(f"{u}/v1/docs/counter", json=inc) for u in urls))
                assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
                expected = {"c": str(2 * INT64_MAX)}

                async def merged() -> bool:
                    reads = [await client.get(f"{u}/v1/docs/counter") for u in urls]
                    return all(r.status_code == 200 and r.json()["value"] == expected for r in reads)

                await until(merged, "the counter to merge in both regions")
                # Going further out of range is refused in either region, and changes nothing.
                for url in urls:
                    r = await client.post(f"{url}/v1/docs/counter", json={"ops": [{"op": "increment", "path": ["c"]}]})
                    assert r.status_code == 422 and r.json()["error"] == "invalid_value", r.text
                    assert r.json()["detail"]["op_index"] == 0
                # Unrelated writes still cross both ways.
                for i, url in enumerate(urls):
                    body = {"ops": [{"op": "set", "path": ["v"], "value": i}]}
                    r = await client.post(f"{url}/v1/docs/other{i}", json=body)
                    assert r.status_code == 200, r.text

                async def crossed() -> bool:
                    reads = [await client.get(f"{u}/v1/docs/other{i}") for u in urls for i in range(2)]
                    return all(r.status_code == 200 for r in reads)

                await until(crossed, "unrelated writes to replicate")
                assert all(not r.stats["protocol_errors"] for r in pair.replicators)
                assert all(node.quarantined() == [] for node in pair.nodes)
                assert await pair.nodes[0].merkle_root() == await pair.nodes[1].merkle_root()

    asyncio.run(asyncio.wait_for(scenario(), timeout=90))


def test_a_delta_that_cannot_apply_quarantines_one_document_until_anti_entropy_repairs_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_pair(tmp_path, ReplicatorSettings(truncate_interval=None)) as pair:
            a, b = pair.nodes
            urls = pair.urls
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
                await ready(client, urls)
                await a.apply("x", [{"op": "set", "path": ["k"], "value": 1}])
                await until(lambda: _has(b, "x"), "x to replicate")
                # Region a's copy of x gains a change that b will not get as a delta (a state merged
                # at a, not logged), and a's log gets an entry for x that b cannot decode (a corrupt
                # record): b must skip it, quarantine x, and keep the link for everything else.
                other = Document()
                other.apply([{"op": "set", "path": ["j"], "value": 2}], replica="elsewhere.1.n")
                assert await a.merge_state("x", codec.encode_document(other))

                def corrupt(ctx: WriteContext) -> int:
                    return ctx.storage.append_local(ctx.txn, a.replica_id, "x", b'["d",1,[],{},{"k":[250,0]}]')

                await a.writer.submit(corrupt)

                async def quarantined() -> bool:
                    return [q.doc_id for q in b.quarantined()] == ["x"]

                await until(quarantined, "b to quarantine x")
                links = (await client.get(f"{urls[1]}/v1/admin/links")).json()
                assert [q["id"] for q in links["quarantine"]] == ["x"]
                assert links["quarantine"][0]["origin"] == a.replica_id
                metrics = (await client.get(f"{urls[1]}/metrics")).text
                assert "crdtstore_quarantined_documents 1.0" in metrics
                # One document never blocks a link: a later write of another document crosses.
                await a.apply("y", [{"op": "set", "path": ["k"], "value": 3}])
                await until(lambda: _has(b, "y"), "y to replicate past the quarantined delta")
                assert (await b.version_vector())[a.replica_id] == (await a.version_vector())[a.replica_id]
                assert pair.replicators[1].stats["protocol_errors"] == 0
                # Anti-entropy ships a's full state of x: b merges it and x leaves quarantine.
                for link in list(pair.replicators[1]._links):
                    pair.replicators[1]._input(link, lambda p: p.start_anti_entropy())

                async def repaired() -> bool:
                    return b.quarantined() == [] and (await b.read("x")).value == {"k": 1, "j": 2}

                await until(repaired, "anti-entropy to repair x")
                links = (await client.get(f"{urls[1]}/v1/admin/links")).json()
                assert links["quarantine"] == []
                assert "crdtstore_quarantined_documents 0.0" in (await client.get(f"{urls[1]}/metrics")).text
                assert await a.merkle_root() == await b.merkle_root()

    asyncio.run(asyncio.wait_for(scenario(), timeout=90))


async def _has(node: Node, doc_id: str) -> bool:
    return await node.read_state(doc_id) is not None
