"""``Node.apply_many``: many documents' op batches in one writer submission, each atomic on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crdtstore.errors import InvalidOp, TypeMismatch
from crdtstore.node import DocumentNotFound, DocumentTooLarge, InvalidDocumentId, Node, NodeConfig, WriteResult

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())


async def started(path: Path, **kw: Any) -> Node:
    node = Node(NodeConfig(region="eu", data_dir=path, sync=False, merkle_depth=2, **kw))
    await node.start()
    return node


def set_op(key: str, value: Any) -> dict[str, Any]:
    return {"op": "set", "path": [key], "value": value}


INC = {"op": "increment", "path": ["n"]}


# Use.


def test_every_document_applies_in_one_submission_and_one_commit(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("old", [set_op("a", 1)])
            before = node.writer.stats()
            items = [(f"d{i}", [set_op("i", i), INC]) for i in range(50)] + [("old", [set_op("a", 2)])]
            results = await node.apply_many(items)
            after = node.writer.stats()
            # One request, one commit, for 51 documents.
            assert after["requests"] - before["requests"] == 1
            assert after["commits"] - before["commits"] == 1
            assert all(isinstance(r, WriteResult) for r in results)
            for (doc_id, _), result in zip(items, results, strict=True):
                assert isinstance(result, WriteResult)
                read = await node.read(doc_id)
                assert read.version == result.version
                assert result.created == (doc_id != "old")
            assert (await node.read("d7")).value == {"i": 7, "n": 1}
            assert (await node.read("old")).value == {"a": 2}
            # Each document's delta is logged under its own seq, in order.
            seqs = [r.seq for r in results if isinstance(r, WriteResult)]
            assert seqs == list(range(seqs[0], seqs[0] + 51))
        finally:
            await node.close()

    run(main)


def test_a_document_named_twice_applies_twice_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            results = await node.apply_many([("d", [set_op("a", 1), INC]), ("d", [set_op("a", 2), INC])])
            assert [isinstance(r, WriteResult) and r.created for r in results] == [True, False]
            assert (await node.read("d")).value == {"a": 2, "n": 2}
        finally:
            await node.close()

    run(main)


def test_the_feed_publishes_the_committed_documents_only(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("good", [set_op("a", 0)])
            await node.apply("bad", [set_op("a", 0)])
            good, bad = node.changes("good", None), node.changes("bad", None)
            assert (await anext(good))["type"] == "change" and (await anext(bad))["type"] == "change"
            results = await node.apply_many(
                [("bad", [set_op("a", 1), {"op": "increment", "path": ["a"]}]), ("good", [set_op("a", 1)])]
            )
            assert isinstance(results[0], TypeMismatch) and isinstance(results[1], WriteResult)
            record = await asyncio.wait_for(anext(good), 5)
            assert record["version"] == results[1].version
            await node.apply("bad", [set_op("a", 3)])  # the next record of "bad" is this write's, not the refused one's
            assert (await asyncio.wait_for(anext(bad), 5))["version"] == (await node.read("bad")).version
        finally:
            await node.close()

    run(main)


# Abuse: a bad document is refused alone and leaves no trace; its batch-mates commit.


def test_a_bad_document_is_refused_alone_and_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", max_document_bytes=4000)
        try:
            await node.apply("big", [set_op("a", 1)])  # cached from here on
            before_state = await node.read_state("big")
            before_vector = await node.version_vector()
            results = await node.apply_many(
                [
                    ("ok1", [set_op("a", 1)]),
                    ("", [set_op("a", 1)]),  # a bad id
                    ("typo", [{"op": "frobnicate", "path": ["a"]}]),  # a bad op
                    # Applies to the cached document in memory, then fails its size check: rolled back.
                    ("big", [set_op("b", 2), {"op": "insert", "path": ["t"], "index": 0, "text": "x" * 5000}]),
                    ("ok2", [set_op("a", 2)]),
                ]
            )
            assert [type(r) for r in results] == [
                WriteResult,
                InvalidDocumentId,
                InvalidOp,
                DocumentTooLarge,
                WriteResult,
            ]
            for doc_id in ("typo",):
                with pytest.raises(DocumentNotFound):
                    await node.read(doc_id)
            # The refused document is as it was, in storage and in the writer's cache (the next write
            # builds on the stored state, not on the rolled-back one).
            assert await node.read_state("big") == before_state
            assert (await node.read("big")).value == {"a": 1}
            await node.apply("big", [INC])
            assert (await node.read("big")).value == {"a": 1, "n": 1}
            # Two deltas were logged for the batch (ok1, ok2), then one for the increment: none for the refused.
            assert (await node.version_vector())[node.replica_id] == before_vector[node.replica_id] + 3
            assert (await node.read("ok2")).value == {"a": 2}
        finally:
            await node.close()

    run(main)


def test_a_submission_that_outgrows_the_map_runs_again_whole(tmp_path: Path) -> None:
    """The map grows mid-submission: every document is applied once, none twice (cached ones included)."""

    async def main() -> None:
        node = await started(tmp_path / "n", map_size=256 << 10, max_map_size=64 << 20)
        try:
            await node.apply("counter", [INC])  # cached
            results = await node.apply_many(
                [("counter", [INC]), ("blob", [set_op("b", "x" * (600 << 10))]), ("after", [INC])]
            )
            assert all(isinstance(r, WriteResult) for r in results)
            assert node.writer.stats()["retried_batches"] >= 1
            assert (await node.read("counter")).value == {"n": 2}
            assert (await node.read("after")).value == {"n": 1}
            assert await node.version_vector() == {node.replica_id: 4}
        finally:
            await node.close()

    run(main)


def test_an_empty_submission_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            before = node.writer.stats()["requests"]
            assert await node.apply_many([]) == []
            assert [type(r) for r in await node.apply_many([("", [INC])])] == [InvalidDocumentId]
            assert node.writer.stats()["requests"] == before  # nothing reached the writer
        finally:
            await node.close()

    run(main)


def test_documents_apply_without_a_child_transaction_each(tmp_path: Path) -> None:
    """A child transaction per document cost LMDB a copy of every page it touched and turned the storage's
    in-memory counters off for the rest of the commit: refusals come before any write instead, so a
    submission with refused documents in it opens no child transaction at all."""

    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            storage = node.storage
            children = []
            begin = storage.begin_write

            def counting(parent: Any = None) -> Any:
                if parent is not None:
                    children.append(parent)
                return begin(parent)

            storage.begin_write = counting  # type: ignore[method-assign]
            items = [(f"d{i}", [set_op("i", i)]) for i in range(20)]
            items.insert(5, ("typo", [{"op": "frobnicate", "path": ["a"]}]))
            results = await node.apply_many(items)
            assert [type(r) for r in results].count(InvalidOp) == 1
            assert children == []
            assert (await node.read("d19")).value == {"i": 19}
        finally:
            await node.close()

    run(main)
