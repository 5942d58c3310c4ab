"""Tests of the region node facade (crdtstore.node) against the real CRDT core."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore import codec
from crdtstore.commit import WriteContext
from crdtstore.docstore import DocCache
from crdtstore.document import Document
from crdtstore.errors import InvalidOp, InvalidVersion, TypeMismatch
from crdtstore.merkle import EMPTY, MerkleTree, diff
from crdtstore.node import (
    DocumentNotFound,
    InvalidCursor,
    InvalidDocumentId,
    Node,
    NodeConfig,
    NodeNotRunning,
    Overloaded,
    ReadResult,
    StorageFull,
    WriteResult,
    split_view,
)
from crdtstore.testing.strategies import json_values
from crdtstore.version import decode_version
from sync.types import LogEntry

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


_ids = itertools.count(1)


def random_id() -> str:
    return f"r{next(_ids)}"


def make_node(path: Path, clock: Callable[[], float] | None = None, **kw: Any) -> Node:
    kw.setdefault("merkle_depth", 2)  # small trees keep the tests quick; behaviour is shape-independent
    return Node(NodeConfig(region="eu", data_dir=path, **kw), clock=clock or (lambda: 1000.0), random_id=random_id)


async def started(path: Path, **kw: Any) -> Node:
    node = make_node(path, **kw)
    await node.start()
    return node


def set_op(path: str, value: Any) -> dict[str, Any]:
    return {"op": "set", "path": [path], "value": value}


async def take(it: AsyncIterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [await anext(it) for _ in range(n)]


def block_writer(node: Node) -> tuple[asyncio.Future[None], threading.Event, threading.Event]:
    """Park the node's writer thread so that the next requests queue up behind it."""
    parked, gate = threading.Event(), threading.Event()

    def fn(ctx: WriteContext) -> None:
        parked.set()
        gate.wait()

    return node.writer.submit(fn), parked, gate


# Writes and reads.


def test_apply_then_read(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            first = await node.apply("doc", [set_op("a", 1), {"op": "increment", "path": ["n"], "by": 5}])
            assert isinstance(first, WriteResult) and first.created
            second = await node.apply("doc", [set_op("b", [1, 2])])
            assert not second.created
            got = await node.read("doc", siblings=True)
            assert got == ReadResult(
                value={"a": 1, "b": [1, 2], "n": 5}, version=second.version, siblings={"a": [1], "b": [[1, 2]], "n": 5}
            )
            plain = await node.read("doc")
            assert plain == ReadResult(value=got.value, version=got.version, siblings=None)
            assert decode_version(got.version).contains_context(decode_version(first.version))
        finally:
            await node.close()

    run(main)


def test_rejected_batch_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            ok = await node.apply("doc", [set_op("a", 1)])
            before = node.stats()
            with pytest.raises(TypeMismatch) as info:
                await node.apply("doc", [set_op("b", 2), {"op": "increment", "path": ["a"]}])
            assert info.value.op_index == 1  # the core's error, unchanged
            with pytest.raises(InvalidOp):
                await node.apply("fresh", [])
            after = node.stats()
            assert (await node.read("doc")).version == ok.version
            assert (await node.read("doc")).value == {"a": 1}
            with pytest.raises(DocumentNotFound):
                await node.read("fresh")
            assert await node.version_vector() == {node.replica_id: 1}
            assert after["documents"] == before["documents"] == 1
            # The next write sees the committed state, not a half-applied cached one.
            await node.apply("doc", [set_op("c", 3)])
            assert (await node.read("doc")).value == {"a": 1, "c": 3}
        finally:
            await node.close()

    run(main)


@pytest.mark.parametrize("bad", ["", "x" * 257, "a\x00b"])
def test_refuses_bad_ids(tmp_path: Path, bad: str) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            with pytest.raises(InvalidDocumentId):
                await node.apply(bad, [set_op("a", 1)])
            with pytest.raises(InvalidDocumentId):
                await node.read(bad)
        finally:
            await node.close()

    run(main)


def test_acknowledged_writes_survive_reopen_and_epoch_bumps(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        first_id = node.replica_id
        base, epoch, _ = first_id.rsplit(".", 2)
        assert base.startswith("eu-") and epoch == "1"
        results = await asyncio.gather(*(node.apply(f"d{i}", [set_op("i", i)]) for i in range(20)))
        await node.close()

        node = await started(tmp_path / "n")
        try:
            assert node.replica_id.startswith(f"{base}.2.")
            for i, result in enumerate(results):
                assert await node.read(f"d{i}", siblings=True) == ReadResult({"i": i}, result.version, {"i": [i]})
            # Writing again mints under the new id: no dot of the first run is reused.
            after = await node.apply("d0", [set_op("i", 100)])
            ctx = decode_version(after.version)
            assert ctx.max_counter(first_id) == 1 and ctx.max_counter(node.replica_id) == 1
            assert await node.version_vector() == {first_id: 20, node.replica_id: 1}
        finally:
            await node.close()

    run(main)


def test_lww_stays_monotonic_when_the_wall_clock_goes_back(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", clock=lambda: 2_000_000.0)
        await node.apply("doc", [{"op": "set", "path": ["x"], "value": "early", "lww": True}])
        await node.close()
        node = await started(tmp_path / "n", clock=lambda: 1_000.0)  # clock far behind now
        try:
            await node.apply("doc", [{"op": "set", "path": ["x"], "value": "late", "lww": True}])
            assert (await node.read("doc")).value == {"x": "late"}
        finally:
            await node.close()

    run(main)


def test_list_pages(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            for name in ["a/1", "a/2", "a/3", "b/1"]:
                await node.apply(name, [set_op("x", 1)])
            assert await node.list("a/", None, 2) == (["a/1", "a/2"], "a/2")
            assert await node.list("a/", "a/2", 2) == (["a/3"], None)
            assert await node.list("", None, 10) == (["a/1", "a/2", "a/3", "b/1"], None)
            with pytest.raises(ValueError):
                await node.list("", None, 0)
        finally:
            await node.close()

    run(main)


# Group commit through the node.


def test_concurrent_applies_share_commits_and_failures_stay_alone(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("typed", [{"op": "increment", "path": ["n"]}])
            blocker, parked, gate = block_writer(node)
            await asyncio.to_thread(parked.wait)
            commits_before = node.writer.stats()["commits"]
            increment = [{"op": "increment", "path": ["n"]}]
            before = [asyncio.ensure_future(node.apply("typed", increment)) for _ in range(3)]
            good = [asyncio.ensure_future(node.apply(f"d{i}", [set_op("i", i)])) for i in range(30)]
            bad = asyncio.ensure_future(node.apply("typed", [set_op("n", "not a counter")]))
            after = [asyncio.ensure_future(node.apply("typed", increment)) for _ in range(2)]
            await asyncio.sleep(0)  # let every apply reach the queue
            assert node.writer.pending == 36
            gate.set()
            await blocker
            assert all(result.created for result in await asyncio.gather(*good))
            with pytest.raises(TypeMismatch):
                await bad
            await asyncio.gather(*before, *after)
            # 36 requests behind the blocker went into one commit; the failure made the
            # batch run twice (once whole, once with a child transaction each).
            assert node.writer.stats()["commits"] - commits_before == 2
            assert node.writer.stats()["rerun_batches"] == 1
            assert (await node.read("d29")).value == {"i": 29}
            # The first run's changes to the cached document were dropped with it: each increment counts once.
            assert (await node.read("typed")).value == {"n": 6}
            assert load_stored(node, "typed").value() == {"n": 6}
        finally:
            await node.close()

    run(main)


def test_storage_full_is_never_acknowledged(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", map_size=256 << 10, max_map_size=1 << 20)
        try:
            await node.apply("small", [set_op("a", 1)])
            before = node.stats()
            with pytest.raises(StorageFull):
                await node.apply("huge", [set_op("blob", ["x" * (1 << 19)] * 4)])  # 2 MiB > the cap
            with pytest.raises(DocumentNotFound):
                await node.read("huge")
            assert await node.version_vector() == {node.replica_id: 1}
            assert node.stats()["documents"] == before["documents"]
            assert (await node.read("small")).value == {"a": 1}
        finally:
            await node.close()

    run(main)


def test_growth_retry_does_not_apply_a_cached_document_twice(tmp_path: Path) -> None:
    """A batch retried after MapFull re-runs every request; a cached doc mutated by the first run is dropped."""

    async def main() -> None:
        node = await started(tmp_path / "n", map_size=256 << 10, max_map_size=64 << 20)
        try:
            await node.apply("counter", [{"op": "increment", "path": ["n"]}])  # now cached
            blocker, parked, gate = block_writer(node)
            await asyncio.to_thread(parked.wait)
            inc = asyncio.ensure_future(node.apply("counter", [{"op": "increment", "path": ["n"]}]))
            big = asyncio.ensure_future(node.apply("big", [set_op("blob", "x" * (600 << 10))]))
            await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(blocker, inc, big)
            assert node.writer.stats()["retried_batches"] >= 1
            assert (await node.read("counter")).value == {"n": 2}
            assert await node.version_vector() == {node.replica_id: 3}
        finally:
            await node.close()

    run(main)


def test_document_cache_stays_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", cache_docs=4, cache_bytes=4096)
        try:
            for i in range(40):
                await node.apply(f"d{i % 13}", [{"op": "increment", "path": ["n"]}])
                cache = node.stats()["cache"]
                assert cache["docs"] <= 4 and cache["bytes"] <= 4096
            await node.apply("large", [set_op("blob", "x" * 8000)])  # bigger than the byte budget: not cached
            cache = node.stats()["cache"]
            assert cache["docs"] <= 4 and cache["bytes"] <= 4096
            assert cache["hits"] == 0  # 13 documents in rotation never fit a cache of 4
            for _ in range(3):
                await node.apply("hot", [{"op": "increment", "path": ["n"]}])
            assert node.stats()["cache"]["hits"] == 2  # a hot document is decoded once
            assert node.stats()["documents"] == 15
            assert (await node.read("d0")).value == {"n": 4}
        finally:
            await node.close()

    run(main)


# Deletion.


def test_delete_and_recreate_never_reuses_dots(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            created = await node.apply("doc", [set_op("a", 1), set_op("b", 2)])
            root_with_doc = await node.merkle_root()
            await node.delete("doc")
            with pytest.raises(DocumentNotFound):
                await node.read("doc")
            with pytest.raises(DocumentNotFound):
                await node.delete("doc")
            with pytest.raises(DocumentNotFound):
                await node.delete("never")
            assert await node.list("", None, 10) == ([], None)
            # The tombstone stays in the Merkle tree (anti-entropy ships deletes), under its own digest.
            assert await node.merkle_root() not in (EMPTY, root_with_doc)
            tombstone = await node.read_state("doc")
            assert tombstone is not None and codec.decode_document(tombstone).value() == {}
            again = await node.apply("doc", [set_op("c", 3)])
            assert again.created
            assert (await node.read("doc")).value == {"c": 3}  # nothing of before the delete comes back
            old, new = decode_version(created.version), decode_version(again.version)
            assert new.contains_context(old)  # history continued ...
            assert new.max_counter(node.replica_id) > old.max_counter(node.replica_id)  # ... with fresh dots
            # The clearing delta was logged for the replicator: three local deltas in all.
            assert await node.version_vector() == {node.replica_id: 3}
        finally:
            await node.close()

    run(main)


# The change feed.


def test_feed_replays_history_then_follows_live_commits(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            v1 = await node.apply("doc", [set_op("a", 1)])
            await node.apply("other", [set_op("z", 0)])
            v2 = await node.apply("doc", [set_op("a", 2)])
            feed = node.changes("doc", None)
            history = await take(feed, 2)
            assert [r["version"] for r in history] == [v1.version, v2.version]
            assert all(r["type"] == "change" and r["origin"] == node.replica_id for r in history)
            # The record carries the logged delta as JSON.
            logged = (await node.log_range(node.replica_id, 0, 1))[0]
            assert logged.doc_id == "doc"
            assert codec.decode_delta(orjson.dumps(history[0]["delta"])) == codec.decode_delta(logged.delta)
            assert history[0]["seq"] < history[1]["seq"]
            pending = asyncio.ensure_future(anext(feed))
            await asyncio.sleep(0)
            v3 = await node.apply("doc", [{"op": "increment", "path": ["n"]}])
            live = await pending
            assert live["version"] == v3.version and live["seq"] > history[1]["seq"]
            await feed.aclose()
            assert node.stats()["subscribers"] == 0
        finally:
            await node.close()

    run(main)


def test_feed_resumes_from_a_cursor_without_gaps_or_repeats(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", feed_page=3)
        try:
            versions = [(await node.apply("doc", [set_op("a", i)])).version for i in range(10)]
            feed = node.changes("doc", None)
            head = await take(feed, 4)
            await feed.aclose()
            rest_feed = node.changes("doc", head[-1]["cursor"])
            rest = await take(rest_feed, 6)  # spans several history pages
            assert [r["version"] for r in head + rest] == versions
            pending = asyncio.ensure_future(anext(rest_feed))
            await asyncio.sleep(0)
            last = await node.apply("doc", [set_op("a", "live")])
            assert (await pending)["version"] == last.version
            await rest_feed.aclose()
        finally:
            await node.close()

    run(main)


def test_feed_resumes_from_a_read_version(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            for i in range(5):
                await node.apply("doc", [set_op("a", i)])
            seen = await node.read("doc")
            later = await node.apply("doc", [set_op("a", "after the read")])
            feed = node.changes("doc", seen.version)
            assert (await anext(feed))["version"] == later.version
            await feed.aclose()
            # A token from the start sees everything; an empty doc's token likewise.
            feed = node.changes("doc", "v1.e30")
            assert len(await take(feed, 6)) == 6
            await feed.aclose()
        finally:
            await node.close()

    run(main)


def test_feed_survives_reopen_and_detects_a_foreign_timeline(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        await node.apply("doc", [set_op("a", 1)])
        feed = node.changes("doc", None)
        cursor = (await anext(feed))["cursor"]
        await feed.aclose()
        await node.apply("doc", [set_op("a", 2)])
        await node.close()

        node = await started(tmp_path / "n")
        try:
            feed = node.changes("doc", cursor)  # a cursor from before the restart stays valid
            assert (await anext(feed))["delta"] is not None
            await feed.aclose()
            forged = cursor.split(".")
            forged[-1] = "someoneelse"
            feed = node.changes("doc", ".".join(forged))
            resync = await anext(feed)
            assert resync["type"] == "resync" and resync["value"] == {"a": 2} and resync["exists"]
            live = asyncio.ensure_future(anext(feed))
            await asyncio.sleep(0)
            await node.apply("doc", [set_op("a", 3)])
            assert (await live)["seq"] > resync["seq"]
            await feed.aclose()
            # Bad tokens fail on the call, before any streaming starts.
            for bad in ["nonsense", "f1.x.y", "f1.12", "f1.12."]:
                with pytest.raises(InvalidCursor):
                    node.changes("doc", bad)
            with pytest.raises(InvalidVersion):
                node.changes("doc", "v1.!!!")
            with pytest.raises(InvalidDocumentId):
                node.changes("", None)
        finally:
            await node.close()

    run(main)


def test_slow_subscriber_gets_a_resync_not_unbounded_memory(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", feed_queue=3)
        try:
            await node.apply("doc", [{"op": "increment", "path": ["n"]}])
            feed = node.changes("doc", None)
            await anext(feed)  # history done; the subscriber now reads live records
            pending = asyncio.ensure_future(anext(feed))
            await asyncio.sleep(0)
            await node.apply("doc", [{"op": "increment", "path": ["n"]}])
            assert (await pending)["type"] == "change"
            # Fall behind: ten commits while not reading.
            for _ in range(10):
                await node.apply("doc", [{"op": "increment", "path": ["n"]}])
            resync = await anext(feed)
            assert resync["type"] == "resync" and resync["value"] == {"n": 12}
            pending = asyncio.ensure_future(anext(feed))
            await asyncio.sleep(0)
            final = await node.apply("doc", [{"op": "increment", "path": ["n"]}])
            record = await pending
            assert record["type"] == "change" and record["version"] == final.version
            await feed.aclose()
        finally:
            await node.close()

    run(main)


def test_feed_records_deletes_and_ends_on_close(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        await node.apply("doc", [set_op("a", 1)])
        feed = node.changes("doc", None)
        await anext(feed)
        pending = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)
        await node.delete("doc")
        deleted = await pending
        assert deleted["type"] == "delete" and deleted["version"]
        pending = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)
        await node.close()
        with pytest.raises(StopAsyncIteration):
            await pending

    run(main)


# Replicator hooks.


def test_a_watcher_sees_a_peers_change_before_it_is_durable_here_and_never_a_local_one(tmp_path: Path) -> None:
    gate = threading.Event()

    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            await a.apply("doc", [set_op("x", 1)])
            await a.apply("other", [set_op("x", 1)])
            await a.apply("doc", [set_op("x", 2)])
            first, other, last = await a.log_range(a.replica_id, 0, 100)
            seen: list[tuple[tuple[str, int | None], bytes]] = []
            stop = b.watch_remote("doc", lambda s, d: seen.append((s, d)))
            flush = b.storage.sync_meta

            def held_flush() -> None:
                gate.wait()
                flush()

            b.storage.sync_meta = held_flush  # type: ignore[method-assign]
            applying = asyncio.ensure_future(b.apply_remote_many([first, other]))
            for _ in range(2000):
                if seen:
                    break
                await asyncio.sleep(0.001)
            # Shown while this node's flush is held: not durable here, so not acknowledged.
            assert seen == [((a.replica_id, 1), first.delta)]
            await asyncio.sleep(0.02)
            assert not applying.done()
            gate.set()
            assert await applying == [True, True]
            # Our own writes are not watched: they are shown once durable, through the feed.
            await b.apply("doc", [set_op("y", 3)])
            assert len(seen) == 1
            stop()
            await b.apply_remote(last.origin, last.seq, last.doc_id, last.delta)
            assert len(seen) == 1 and (await b.read("doc")).value == {"x": 2, "y": 3}
        finally:
            gate.set()
            await a.close()
            await b.close()

    run(main)


def test_remote_deltas_converge_two_nodes(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            await a.apply("doc", [set_op("x", 1)])
            await a.apply("doc", [{"op": "add", "path": ["tags"], "value": "red"}])
            await a.apply("doc", [{"op": "increment", "path": ["n"], "by": 3}])
            await b.apply("doc", [{"op": "increment", "path": ["n"], "by": 4}])
            entries = await a.log_range(a.replica_id, 0, 100)
            assert [e.seq for e in entries] == [1, 2, 3]
            feed = b.changes("doc", None)
            await anext(feed)
            # Out of order and duplicated: joins commute, the log keeps each delta once.
            for entry in [entries[2], entries[0], entries[2], entries[1]]:
                await b.apply_remote(entry.origin, entry.seq, entry.doc_id, entry.delta)
            assert await b.apply_remote(entries[0].origin, 1, "doc", entries[0].delta) is False
            assert (await b.read("doc")).value == {"x": 1, "tags": ["red"], "n": 7}
            assert (await b.version_vector())[a.replica_id] == 3
            remote = await anext(feed)
            assert remote["origin"] == a.replica_id and remote["origin_seq"] == 3
            await feed.aclose()
            # Garbage is skipped, not joined: the origin's mark advances and the document is quarantined.
            assert await b.apply_remote(a.replica_id, 4, "doc", b"garbage")
            assert (await b.version_vector())[a.replica_id] == 4
            assert [q.doc_id for q in b.quarantined()] == ["doc"]
            assert (await b.read("doc")).value == {"x": 1, "tags": ["red"], "n": 7}
            # And back: A gets B's delta; then both hold the same state and the same Merkle tree.
            for entry in await b.log_range(b.replica_id, 0, 100):
                assert await a.apply_remote(entry.origin, entry.seq, entry.doc_id, entry.delta)
            assert await a.read_state("doc") == await b.read_state("doc")
            assert await a.merkle_root() == await b.merkle_root()
        finally:
            await a.close()
            await b.close()

    run(main)


def test_merkle_repair_with_full_states(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            for i in range(10):
                await a.apply(f"d{i}", [set_op("i", i)])
            for i in range(5):
                state = await a.read_state(f"d{i}")
                assert state is not None and await b.merge_state(f"d{i}", state)
            assert await b.merge_state("d0", await a.read_state("d0") or b"") is False  # already there

            class Remote:
                """Reads one node's tree synchronously, as a replicator's proxy would."""

                def __init__(self, node: Node) -> None:
                    self.node = node
                    self.shape = node.storage.shape

                def root(self) -> bytes:
                    with self.node.storage.read() as txn:
                        return self.node.storage.merkle(txn).root()

                def children(self, level: int, index: int) -> list[bytes]:
                    with self.node.storage.read() as txn:
                        return self.node.storage.merkle(txn).children(level, index)

            buckets = diff(Remote(a), Remote(b))
            assert sorted(buckets) == sorted({a.storage.shape.bucket(f"d{i}") for i in range(5, 10)})
            for bucket in buckets:
                for doc_id, _ in await a.bucket_items(bucket):
                    await b.merge_state(doc_id, await a.read_state(doc_id) or b"")
            assert await a.merkle_root() == await b.merkle_root()
            assert await a.merkle_children(0, 0) == await b.merkle_children(0, 0)
            assert (await b.read("d7")).value == {"i": 7}
        finally:
            await a.close()
            await b.close()

    run(main)


def test_batched_anti_entropy_reads_match_one_read_per_item(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "a")
        try:
            for i in range(12):
                await node.apply(f"d{i}", [set_op("i", i)])
            await node.apply("d3", [set_op("j", 3)])  # a tail on top of the snapshot
            await node.delete("d5")  # a tombstone: its state ships too
            ids = ["d3", "missing", "d5", "d0", "d3"]
            assert await node.read_states(ids) == [await node.read_state(doc_id) for doc_id in ids]
            states = await node.read_states(ids)
            assert states[1] is None and all(state is not None for k, state in enumerate(states) if k != 1)
            shape = node.storage.shape
            nodes = [(level, index) for level in range(shape.depth) for index in sorted({0, shape.fanout**level - 1})]
            assert await node.merkle_children_many(nodes) == [await node.merkle_children(*n) for n in nodes]
            buckets = sorted({shape.bucket(f"d{i}") for i in range(12)}) + [shape.bucket("missing")]
            items = await node.bucket_items_many(buckets)
            assert items == [await node.bucket_items(b) for b in buckets]
            assert sorted(doc_id for bucket in items[:-1] for doc_id, _ in bucket) == sorted(f"d{i}" for i in range(12))
            assert await node.read_states([]) == [] and await node.merkle_children_many([]) == []
            with pytest.raises(InvalidDocumentId):
                await node.read_states(["fine", ""])
        finally:
            await node.close()

    run(main)


def test_remote_delta_on_a_deleted_document(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            await a.apply("doc", [set_op("x", 1)])
            old = (await a.log_range(a.replica_id, 0, 10))[0]
            await b.apply_remote(old.origin, old.seq, old.doc_id, old.delta)
            await b.delete("doc")
            # A delta B already covered by its delete keeps the document deleted ...
            await a.apply("other", [set_op("y", 1)])
            await a.apply("doc", [set_op("x", 1)])
            entries = await a.log_range(a.replica_id, 1, 10)
            await b.apply_remote(entries[0].origin, entries[0].seq, entries[0].doc_id, entries[0].delta)
            with pytest.raises(DocumentNotFound):
                await b.read("doc")
            # ... a new write it has not seen brings it back (add-wins).
            await b.apply_remote(entries[1].origin, entries[1].seq, entries[1].doc_id, entries[1].delta)
            assert (await b.read("doc")).value == {"x": 1}
        finally:
            await a.close()
            await b.close()

    run(main)


def test_acked_vectors_and_stats(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.set_acked("peer-1", {"x": 4})
            await node.set_acked("peer-1", {"x": 2, "y": 1})
            assert await node.acked("peer-1") == {"x": 4, "y": 1}
            stats = node.stats()
            assert stats["replica_id"] == node.replica_id and stats["epoch"] == 1
            assert stats["lmdb"]["used_bytes"] <= stats["lmdb"]["map_size"]
            assert stats["commit"]["commits"] == 2
        finally:
            await node.close()
        with pytest.raises(NodeNotRunning):
            await node.read("doc")
        with pytest.raises(NodeNotRunning):
            await node.start()
        await node.close()  # idempotent

    run(main)


def test_overloaded_when_the_queue_is_full(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", max_queue=2)
        try:
            blocker, parked, gate = block_writer(node)
            await asyncio.to_thread(parked.wait)
            queued = [asyncio.ensure_future(node.apply(f"d{i}", [set_op("i", i)])) for i in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await node.apply("one-too-many", [set_op("i", 0)])
            gate.set()
            await asyncio.gather(blocker, *queued)
            with pytest.raises(DocumentNotFound):
                await node.read("one-too-many")
        finally:
            await node.close()

    run(main)


cache_steps = st.lists(
    st.tuples(st.sampled_from(["put", "get", "discard"]), st.integers(0, 9), st.integers(0, 300)), max_size=60
)


@given(cache_steps, st.integers(0, 5), st.integers(0, 600))
def test_document_cache_never_exceeds_its_caps(
    steps: list[tuple[str, int, int]], max_docs: int, max_bytes: int
) -> None:
    cache = DocCache(max_docs, max_bytes)
    for kind, key, size in steps:
        if kind == "put":
            doc = Document()
            cache.put(f"d{key}", doc, size)
            # The newest entry is kept unless it alone breaks a cap.
            assert (cache.get(f"d{key}") is doc) == (size <= max_bytes and max_docs >= 1)
        elif kind == "get":
            cache.get(f"d{key}")
        else:
            cache.discard(f"d{key}")
        assert len(cache) <= max_docs
        assert 0 <= cache.bytes <= max_bytes


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 300), st.booleans()), max_size=60), st.integers(1, 4))
def test_a_write_that_puts_its_cached_document_back_keeps_the_byte_count_exact(
    steps: list[tuple[int, int, bool]], max_docs: int
) -> None:
    """Every write puts the document it changed back with its new stored size (refreshed in place, the usual
    case); the cache's byte count stays the sum of its entries' sizes, within its caps."""
    cache: DocCache[Document] = DocCache(max_docs, 600)
    docs = {k: Document() for k in range(6)}
    for key, size, same in steps:
        doc = docs[key] if same else Document()
        docs[key] = doc
        cache.put(f"d{key}", doc, size)
        assert cache.peek(f"d{key}") is doc
        kept = cache._docs.values()
        assert cache.bytes == sum(s for _, s in kept) <= 600
        assert len(cache) <= max_docs


# Snapshot plus tail, digests and read views.


def stored_state(node: Node, doc_id: str) -> tuple[bytes, list[tuple[int, bytes]], bytes | None]:
    """What LMDB holds for a document: snapshot, tail and view, from one read transaction."""
    storage = node.storage
    with storage.read() as txn:
        return storage.get_doc(txn, doc_id) or b"", storage.get_tail(txn, doc_id), storage.get_view(txn, doc_id)


def load_stored(node: Node, doc_id: str) -> Document:
    """Decode snapshot plus tail exactly as a fresh process would."""
    snapshot, tail, _ = stored_state(node, doc_id)
    doc = codec.decode_document(snapshot)
    for _, delta in tail:
        doc.join(codec.decode_delta(delta))
    return doc


EDITS: list[list[dict[str, Any]]] = [
    [{"op": "insert", "path": ["text"], "index": 0, "text": "hello world " * 20}],
    [{"op": "insert", "path": ["text"], "index": 5, "text": ","}],
    [{"op": "delete", "path": ["text"], "index": 0, "count": 3}],
    [{"op": "increment", "path": ["n"], "by": 3}, set_op("title", "x")],
    [{"op": "add", "path": ["tags"], "value": "a"}, {"op": "add", "path": ["tags"], "value": {"k": 1}}],
    [{"op": "remove", "path": ["tags"], "value": "a"}],
    [{"op": "set", "path": ["lww"], "value": 1, "lww": True}],
    [{"op": "insert", "path": ["list"], "index": 0, "values": [1, 2, 3]}],
    [{"op": "delete", "path": ["title"]}, {"op": "enable", "path": ["flag"]}],
    [{"op": "set", "path": ["nested", "deep"], "value": [1]}],
    [{"op": "delete", "path": ["list"], "index": 1}],
    [{"op": "delete", "path": ["nested"]}],
]


@pytest.mark.parametrize("tail_min_bytes", [0, 256])
def test_tail_compaction_and_reload_are_byte_identical(tmp_path: Path, tail_min_bytes: int) -> None:
    """At every step the stored snapshot + tail decode to the in-memory document, byte for byte, and
    the tail stays within its bounds; after a reopen the document is the same, byte for byte."""

    async def main() -> None:
        node = await started(tmp_path / "n", tail_max_deltas=4, tail_min_bytes=tail_min_bytes, tail_bytes_per_delta=0)
        tails: list[int] = []
        try:
            for step in range(62):
                await node.apply("doc", EDITS[step % len(EDITS)])
                entry = node.docs.cache.get("doc")
                assert entry is not None
                in_memory = codec.encode_document(entry.doc)
                snapshot, tail, view = stored_state(node, "doc")
                assert codec.encode_document(load_stored(node, "doc")) == in_memory
                assert len(tail) <= 4 and sum(len(d) for _, d in tail) <= max(len(snapshot), tail_min_bytes)
                assert [seq for seq, _ in tail] == list(range(1, len(tail) + 1))
                # From the first read on, writes keep a view: what a decode would render, and what a
                # siblings read (a decode) reports.
                assert (view is None) == (step == 0)
                if view is not None:
                    assert orjson.loads(view) == [entry.doc.version(), entry.doc.value()]
                plain, decoded = await node.read("doc"), await node.read("doc", siblings=True)
                assert (plain.value, plain.version) == (decoded.value, decoded.version)
                # What anti-entropy ships is the full state, whatever the tail holds.
                assert await node.read_state("doc") == in_memory
                tails.append(len(tail))
            assert max(tails) == 4 and 0 in tails[1:]  # the tail filled up and was compacted
            assert tails[-1] > 0  # the reopen below really has a tail to join
        finally:
            await node.close()
        node = await started(tmp_path / "n", tail_max_deltas=4)
        try:
            assert await node.read_state("doc") == in_memory
            await node.apply("doc", [{"op": "increment", "path": ["n"]}])  # the writer loads snapshot + tail
            entry = node.docs.cache.get("doc")
            assert entry is not None
            assert codec.encode_document(load_stored(node, "doc")) == codec.encode_document(entry.doc)
        finally:
            await node.close()

    run(main)


def test_a_big_document_compacts_once_per_its_size_in_deltas_not_every_32(tmp_path: Path) -> None:
    """A large text's tail holds snapshot / tail_bytes_per_delta deltas before compacting, so a write does not
    pay a full encoding every tail_max_deltas writes; the stored state still reloads byte for byte."""

    async def main() -> None:
        node = await started(tmp_path / "n", tail_max_deltas=4, tail_bytes_per_delta=512)
        try:
            await node.apply("big", [{"op": "insert", "path": ["t"], "index": 0, "text": "x" * 10_000}])
            snapshot = len(stored_state(node, "big")[0])
            allowed = snapshot // 512
            assert allowed > 4 and node.docs.max_tail_deltas(snapshot) == allowed
            for i in range(allowed):
                await node.apply("big", [{"op": "insert", "path": ["t"], "index": 7 * i, "text": "y"}])
            assert len(stored_state(node, "big")[1]) == allowed  # the old fixed count would have compacted at 4
            await node.apply("big", [{"op": "insert", "path": ["t"], "index": 1, "text": "z"}])
            assert stored_state(node, "big")[1] == []  # past the scaled bound: compacted
            entry = node.docs.cache.get("big")
            assert entry is not None
            assert codec.encode_document(load_stored(node, "big")) == codec.encode_document(entry.doc)
            # A small document keeps the fixed count: many tiny writes cannot build a long tail.
            for _ in range(12):
                await node.apply("small", [{"op": "increment", "path": ["n"]}])
                assert len(stored_state(node, "small")[1]) <= 4
        finally:
            await node.close()

    run(main)


def test_remote_deltas_go_to_the_tail_and_reload_identically(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            await a.apply("doc", [{"op": "insert", "path": ["t"], "index": 0, "text": "x" * 500}])
            for i in range(6):
                await a.apply("doc", [{"op": "insert", "path": ["t"], "index": i, "text": str(i)}])
            for entry in await a.log_range(a.replica_id, 0, 100):
                assert await b.apply_remote(entry.origin, entry.seq, entry.doc_id, entry.delta)
            _, tail, _ = stored_state(b, "doc")
            assert tail  # small remote deltas were appended, not re-encoded
            assert await b.read_state("doc") == await a.read_state("doc")
            assert codec.encode_document(load_stored(b, "doc")) == await a.read_state("doc")
            assert await a.merkle_root() == await b.merkle_root()
        finally:
            await a.close()
            await b.close()

    run(main)


def test_merkle_digest_is_the_version_digest(tmp_path: Path) -> None:
    """The leaf digest is Document.version_digest(): O(replicas), and equal exactly when states are equal."""

    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("doc", [set_op("a", 1)])
            await node.apply("doc", [{"op": "increment", "path": ["n"]}])
            doc = load_stored(node, "doc")
            with node.storage.read() as txn:
                assert node.storage.get_digest(txn, "doc") == doc.version_digest()
            bucket = node.storage.shape.bucket("doc")
            assert await node.bucket_items(bucket) == [("doc", doc.version_digest())]
        finally:
            await node.close()

    run(main)


def test_documents_above_the_view_limit_are_decoded_by_reads(tmp_path: Path) -> None:
    """A document that outgrows view_max_bytes loses its view (never a stale one) and still reads right."""

    async def main() -> None:
        # tail_max_deltas=0 (not scaled): every write compacts, so the stored size follows the value at once.
        node = await started(tmp_path / "n", view_max_bytes=2048, tail_max_deltas=0, tail_bytes_per_delta=0)
        try:
            await node.apply("doc", [set_op("a", "small")])
            await node.read("doc")  # read once: its writes keep a view from now on
            await node.writer.submit(lambda ctx: None)  # the view that read handed over is stored
            assert stored_state(node, "doc")[2] is not None
            result = await node.apply("doc", [set_op("a", "x" * 4096)])
            assert stored_state(node, "doc")[2] is None
            got = await node.read("doc")
            assert got == ReadResult({"a": "x" * 4096}, result.version, None)
            result = await node.apply("doc", [set_op("a", "small again")])  # back under the limit
            assert stored_state(node, "doc")[2] is not None
            assert await node.read("doc") == ReadResult({"a": "small again"}, result.version, None)
            await node.delete("doc")
            assert stored_state(node, "doc") == (b"", [], None)
            with pytest.raises(DocumentNotFound):
                await node.read("doc")
        finally:
            await node.close()

    run(main)


def test_views_are_kept_for_the_documents_that_are_read(tmp_path: Path) -> None:
    """Writes of a document nobody reads render no view; its first read decodes, and from then on it has one."""

    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            for i in range(5):
                await node.apply("write-only", [set_op("a", i)])
            await node.apply("doc", [set_op("a", 1)])
            assert stored_state(node, "write-only")[2] is None and stored_state(node, "doc")[2] is None
            first = await node.read("doc")
            assert first.value == {"a": 1}
            await node.writer.submit(lambda ctx: None)  # the view the read rendered is stored
            assert stored_state(node, "doc")[2] == orjson.dumps([first.version, {"a": 1}])
            result = await node.apply("doc", [set_op("a", 2)])
            assert stored_state(node, "doc")[2] == orjson.dumps([result.version, {"a": 2}])
            assert split_view(await node.read_view("doc")) == (result.version, b'{"a":2}')
            assert stored_state(node, "write-only")[2] is None
        finally:
            await node.close()

    run(main)


def test_a_view_rendered_before_a_write_is_never_stored_after_it(tmp_path: Path) -> None:
    """Abuse: a read renders the view of version 1 while a write of version 2 is queued ahead of its store.
    The writer must drop the old view (the document moved on), and serve version 2."""

    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("doc", [set_op("a", 1)])
            blocker, parked, gate = block_writer(node)
            await asyncio.to_thread(parked.wait)
            write = node.writer.submit(lambda ctx: node._local_writes().apply(ctx, "doc", [set_op("a", 2)]))
            assert (await node.read("doc")).value == {"a": 1}  # decoded from what is committed
            gate.set()
            await blocker
            result = await write
            await node.writer.submit(lambda ctx: None)
            assert stored_state(node, "doc")[2] == orjson.dumps([result.version, {"a": 2}])
            assert await node.read("doc") == ReadResult({"a": 2}, result.version, None)
        finally:
            await node.close()

    run(main)


def test_a_document_no_longer_wanted_loses_its_view_at_its_next_write(tmp_path: Path) -> None:
    """Abuse: the set of wanted views is bounded. A document pushed out of it must not keep a view its
    next write makes stale: that write deletes it, and reads decode (and want it again)."""

    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            node.docs.wanted_max = 1
            await node.apply("a", [set_op("k", 1)])
            await node.apply("b", [set_op("k", 1)])
            await node.read("a")
            await node.writer.submit(lambda ctx: None)
            assert stored_state(node, "a")[2] is not None
            await node.read("b")  # pushes "a" out of the wanted set
            await node.writer.submit(lambda ctx: None)
            assert "a" not in node.docs.wanted
            result = await node.apply("a", [set_op("k", 2)])
            assert stored_state(node, "a")[2] is None
            assert await node.read("a") == ReadResult({"k": 2}, result.version, None)
        finally:
            await node.close()

    run(main)


# Replication hooks: write identity, skipping and truncating the log, deletes under anti-entropy.


def test_write_result_names_its_log_entry(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            first = await node.apply("doc", [set_op("a", 1)])
            second = await node.apply("other", [set_op("b", 2)])
            assert (first.origin, first.seq) == (node.replica_id, 1)
            assert (second.origin, second.seq) == (node.replica_id, 2)
            (entry,) = await node.log_range(node.replica_id, 0, 1)
            assert (entry.seq, entry.doc_id) == (first.seq, "doc")
        finally:
            await node.close()

    run(main)


def test_skip_log_and_truncate_log(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            for i in range(5):
                await a.apply(f"d{i}", [set_op("i", i)])
            entries = await a.log_range(a.replica_id, 0, 10)
            # b receives 1 and 4..5 only: its contiguous mark stays at 1.
            for e in (entries[0], entries[3], entries[4]):
                await b.apply_remote(e.origin, e.seq, e.doc_id, e.delta)
            assert (await b.version_vector())[a.replica_id] == 1
            # Anti-entropy merged what 2..3 carried: the mark jumps to 3, then runs on over 4 and 5.
            assert await b.skip_log(a.replica_id, 3) == 5
            assert (await b.version_vector())[a.replica_id] == 5
            assert await b.skip_log(a.replica_id, 2) == 5  # never lowered
            # A skipped entry counts as received: re-delivering it writes nothing.
            assert await b.apply_remote(entries[1].origin, 2, entries[1].doc_id, entries[1].delta) is False
            assert await a.truncate_log({a.replica_id: 3}) == 3
            assert [e.seq for e in await a.log_range(a.replica_id, 0, 10)] == [4, 5]
            assert await a.truncate_log({a.replica_id: 3, "unknown-origin": 2}) == 0
        finally:
            await a.close()
            await b.close()

    run(main)


def test_a_delete_travels_by_anti_entropy_when_its_delta_is_gone(tmp_path: Path) -> None:
    async def exchange(x: Node, y: Node, doc_id: str) -> None:
        # What one anti-entropy session does for one differing document: pull and push states.
        sx, sy = await x.read_state(doc_id), await y.read_state(doc_id)
        if sy is not None:
            await x.merge_state(doc_id, sy)
        if sx is not None:
            await y.merge_state(doc_id, sx)

    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        c = await started(tmp_path / "c")
        try:
            await a.apply("doc", [set_op("x", 1), set_op("y", 2)])
            for e in await a.log_range(a.replica_id, 0, 10):
                await b.apply_remote(e.origin, e.seq, e.doc_id, e.delta)
            await a.delete("doc")
            await a.truncate_log({a.replica_id: 2})  # the delete delta is gone: b can only learn it by state
            root = await a.merkle_root()
            assert root != await b.merkle_root()
            await exchange(a, b, "doc")
            with pytest.raises(DocumentNotFound):
                await a.read("doc")  # b's older live state did not undo the delete ...
            with pytest.raises(DocumentNotFound):
                await b.read("doc")  # ... and b, having dropped every field the delete saw, has it deleted too
            assert await a.read_state("doc") == await b.read_state("doc")
            assert await a.merkle_root() == await b.merkle_root() == root
            # A region that never held the document learns the tombstone and keeps it deleted.
            await exchange(a, c, "doc")
            with pytest.raises(DocumentNotFound):
                await c.read("doc")
            assert await c.merkle_root() == root
            # A write the delete never saw brings the document back there too (add-wins), by state alone.
            await b.apply("doc", [set_op("z", 3)])
            await exchange(b, a, "doc")
            assert (await a.read("doc")).value == {"z": 3}
            assert await a.merkle_root() == await b.merkle_root()
        finally:
            for node in (a, b, c):
                await node.close()

    run(main)


def test_a_peer_batch_is_one_commit_and_a_bad_delta_skips_only_itself(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        c = await started(tmp_path / "c")
        try:
            for i in range(5):
                await a.apply("doc", [{"op": "increment", "path": ["n"], "by": 1}, set_op(f"k{i}", i)])
            entries = await a.log_range(a.replica_id, 0, 100)
            # A bad delta in the batch: only it is skipped (logged as a placeholder), the rest joins.
            bad = [entries[0], LogEntry(a.replica_id, entries[1].seq, "doc", b"garbage"), *entries[2:]]
            assert await c.apply_remote_many(bad) == [True] * 5
            assert (await c.version_vector())[a.replica_id] == 5
            # Later deltas of the document are held back too: joined without their cause, the
            # counter would keep replica a's replaced first sum (1 + 5). It stays consistent, if stale.
            assert (await c.read("doc")).value == {"n": 1, "k0": 0}
            assert [(e.seq, e.delta) for e in await c.log_range(a.replica_id, 0, 5)][1:] == [
                (s, b"") for s in range(2, 6)
            ]
            assert [(q.doc_id, q.origin, q.seq, q.failures) for q in c.quarantined()] == [("doc", a.replica_id, 2, 4)]
            assert c.stats()["quarantine"]["deltas_skipped"] == 4
            # Anti-entropy's full state repairs it and clears the quarantine.
            state = await a.read_state("doc")
            assert state is not None and await c.merge_state("doc", state)
            assert (await c.read("doc")).value == (await a.read("doc")).value
            assert c.quarantined() == [] and c.stats()["quarantine"]["repaired"] == 1
            # Out of quarantine: deltas join again.
            await a.apply("doc", [set_op("after", 1)])
            [last] = await a.log_range(a.replica_id, 5, 10)
            assert await c.apply_remote(last.origin, last.seq, last.doc_id, last.delta)
            assert (await c.read("doc")).value == (await a.read("doc")).value
            commits = b.writer.stats()["commits"]
            assert await b.apply_remote_many(entries) == [True] * 5
            assert b.writer.stats()["commits"] == commits + 1  # one fsync for the whole batch
            assert (await b.read("doc")).value == {"n": 5, **{f"k{i}": i for i in range(5)}}
            assert await b.apply_remote_many(entries) == [False] * 5  # already held
        finally:
            await a.close()
            await b.close()
            await c.close()

    run(main)


def test_a_delete_reads_the_same_on_every_replica(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            await a.apply("doc", [set_op("x", 1)])
            await a.apply("keep", [set_op("y", 1)])
            await a.delete("doc")
            for e in await a.log_range(a.replica_id, 0, 100):
                await b.apply_remote(e.origin, e.seq, e.doc_id, e.delta)
            for node in (a, b):
                with pytest.raises(DocumentNotFound):
                    await node.read("doc")
                assert await node.list("", None, 10) == (["keep"], None)
            assert await a.merkle_root() == await b.merkle_root()
            # Removing the last field by an op is the same thing: nothing is left, so nothing is there.
            await a.apply("keep", [{"op": "delete", "path": ["y"]}])
            with pytest.raises(DocumentNotFound):
                await a.read("keep")
            # And a later write brings a document back everywhere.
            await a.apply("doc", [set_op("x", 2)])
            for e in await a.log_range(a.replica_id, 0, 100):
                await b.apply_remote(e.origin, e.seq, e.doc_id, e.delta)
            assert (await b.read("doc")).value == (await a.read("doc")).value == {"x": 2}
        finally:
            await a.close()
            await b.close()

    run(main)


@given(value=json_values, doc=st.builds(Document))
def test_split_view_cuts_a_stored_view_where_a_parse_would(value: Any, doc: Document) -> None:
    """Quotes, backslashes and non-ASCII in the value never confuse the cut after the version token."""
    doc.apply([{"op": "set", "path": ["v"], "value": value}], replica="r1")
    view = orjson.dumps([doc.version(), doc.value()])
    version, raw = split_view(view)
    assert [version, orjson.loads(raw)] == orjson.loads(view)


@pytest.mark.parametrize("view_max_bytes", [0, 64 << 10])
def test_read_view_is_read_without_the_parse(tmp_path: Path, view_max_bytes: int) -> None:
    """With a stored view and without one (a document too big for views), read_view answers what read does."""

    async def main() -> None:
        node = await started(tmp_path / "n", view_max_bytes=view_max_bytes)
        try:
            await node.apply("d", [set_op("title", 'a "quoted" \\ title ü'), {"op": "increment", "path": ["n"]}])
            version, raw = split_view(await node.read_view("d"))
            plain = await node.read("d")
            assert (version, orjson.loads(raw)) == (plain.version, plain.value)
            with pytest.raises(DocumentNotFound):
                await node.read_view("missing")
        finally:
            await node.close()

    asyncio.run(main())


def test_the_tree_matches_the_stored_documents_after_refusals_rollbacks_and_deletes(tmp_path: Path) -> None:
    """The writer's cached documents remember their stored digest (the storage then skips reading it) and
    leaf changes wait in memory for the flush; after writes, refused batch-mates, a map growth (the whole
    batch rolled back and run again), deletes and re-creations, every bucket holds each document's version
    digest and the tree is the one those digests make."""

    async def main() -> None:
        node = await started(tmp_path / "n", map_size=256 << 10, max_map_size=64 << 20)
        try:
            for i in range(3):
                await asyncio.gather(*(node.apply(f"d{k}", [set_op("i", i)]) for k in range(12)))
            await node.apply_many(
                [("d1", [set_op("x", 1)]), ("d2", [{"op": "increment", "path": ["i"]}]), ("d3", [set_op("y", 2)])]
            )
            await node.delete("d4")
            await node.apply("d5", [set_op("big", "x" * (600 << 10))])  # outgrows the map: rolled back, run again
            await asyncio.gather(node.apply("d4", [set_op("back", True)]), node.apply("d6", [set_op("i", 9)]))
            storage = node.storage
            pure = MerkleTree({}, shape=storage.shape)
            with storage.read() as txn:
                for bucket in range(storage.shape.leaves):
                    for doc_id, digest in storage.bucket_items(txn, bucket):
                        stored = node.docs.decode(txn, doc_id)
                        assert stored is not None and digest == stored.version_digest(), doc_id
                        pure.update(doc_id, None, digest)
                assert dict(txn.cursor(db=storage.dbs["merkle"])) == pure.store
            assert node.writer.stats()["retried_batches"] >= 1
        finally:
            await node.close()

    run(main)
