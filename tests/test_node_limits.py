"""Document size limits on local writes, and what a peer may make this node store or skip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore import codec
from crdtstore.config import SETTINGS, ConfigError, resolve
from crdtstore.document import Document
from crdtstore.errors import InvalidValue
from crdtstore.limits import INT64_MAX
from crdtstore.node import DocumentNotFound, DocumentTooLarge, Node, NodeConfig
from crdtstore.server import build_server_app
from sync.types import LogEntry

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())


async def started(path: Path, **kw: Any) -> Node:
    node = Node(NodeConfig(region="eu", data_dir=path, sync=False, merkle_depth=2, **kw))
    await node.start()
    return node


def insert(text: str, index: int = 0, path: str = "t") -> dict[str, Any]:
    return {"op": "insert", "path": [path], "index": index, "text": text}


async def snapshot(node: Node, doc_id: str) -> tuple[bytes | None, dict[str, int], int]:
    """What a refused write must leave unchanged: the state, the vector and the log."""
    state = await node.read_state(doc_id)
    return state, await node.version_vector(), len(await node.log_range(node.replica_id, 0, 1000))


def test_a_write_past_the_byte_limit_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", max_document_bytes=4000)
        try:
            await node.apply("doc", [insert("a" * 1000)])
            before = await snapshot(node, "doc")
            with pytest.raises(DocumentTooLarge) as info:
                await node.apply("doc", [{"op": "set", "path": ["k"], "value": 1}, insert("b" * 3000, 1000)])
            assert info.value.code == "document_too_large" and info.value.limit == 4000
            assert info.value.size > 4000
            assert await snapshot(node, "doc") == before
            assert (await node.read("doc")).value == {"t": "a" * 1000}
            # A new document that would start past the limit is refused too, and does not appear.
            with pytest.raises(DocumentTooLarge):
                await node.apply("big", [insert("c" * 5000)])
            with pytest.raises(DocumentNotFound):
                await node.read("big")
        finally:
            await node.close()

    run(main)


def test_small_writes_fill_a_document_up_to_the_limit_then_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        limit = 6000
        node = await started(tmp_path / "n", max_document_bytes=limit)
        try:
            accepted = 0
            for _ in range(200):  # bounded
                try:
                    await node.apply("doc", [insert("x" * 50, accepted * 50)])
                except DocumentTooLarge:
                    break
                accepted += 1
            else:
                pytest.fail("the limit never applied")
            # The writer compacted before refusing: the document really is near the limit.
            state = await node.read_state("doc")
            assert state is not None and limit - 200 < len(state) <= limit
            assert (await node.read("doc")).value == {"t": "x" * 50 * accepted}
            # Removals are always allowed, so an oversized document can be cut down.
            await node.apply("doc", [{"op": "delete", "path": ["t"], "index": 0, "count": 2000}])
            await node.apply("doc", [insert("y" * 50)])
        finally:
            await node.close()

    run(main)


def test_an_insert_past_the_sequence_length_limit_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n", max_sequence_length=100)
        try:
            await node.apply("doc", [insert("a" * 60), {"op": "insert", "path": ["m", "l"], "index": 0, "values": [1]}])
            before = await snapshot(node, "doc")
            with pytest.raises(DocumentTooLarge) as info:
                await node.apply("doc", [insert("b" * 41, 60)])
            assert info.value.path == ["t"] and info.value.size == 101 and info.value.limit == 100
            with pytest.raises(DocumentTooLarge) as info:
                await node.apply("doc", [{"op": "insert", "path": ["m", "l"], "index": 1, "values": list(range(100))}])
            assert info.value.path == ["m", "l"]
            assert await snapshot(node, "doc") == before
            await node.apply("doc", [insert("b" * 40, 60)])  # exactly at the limit
            assert len((await node.read("doc")).value["t"]) == 100
        finally:
            await node.close()

    run(main)


def test_remote_merges_may_pass_the_write_limits_and_still_load(tmp_path: Path) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a", max_document_bytes=3000, max_sequence_length=1500)
        b = await started(tmp_path / "b", max_document_bytes=3000, max_sequence_length=1500)
        try:
            # Concurrent writes, each inside the limits, together past both of them.
            await a.apply("doc", [insert("a" * 1400)])
            await b.apply("doc", [insert("b" * 1400)])
            for src, dst in ((a, b), (b, a)):
                for e in await src.log_range(src.replica_id, 0, 10):
                    assert await dst.apply_remote(e.origin, e.seq, e.doc_id, e.delta)
            for node in (a, b):
                assert len((await node.read("doc")).value["t"]) == 2800
                assert node.quarantined() == []
                with pytest.raises(DocumentTooLarge):
                    await node.apply("doc", [insert("z")])
            assert await a.read_state("doc") == await b.read_state("doc")
        finally:
            await a.close()
            await b.close()

    run(main)


def test_a_placeholder_from_a_relay_quarantines_the_document_and_advances_the_mark(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            assert await node.apply_remote("o.1.x", 1, "doc", b"")
            assert await node.version_vector() == {"o.1.x": 1}
            assert [q.reason for q in node.quarantined()] == ["skipped by the peer that relayed it"]
            assert await node.apply_remote("o.1.x", 1, "doc", b"") is False  # a duplicate stays one
            assert node.stats()["quarantine"]["deltas_skipped"] == 1
        finally:
            await node.close()

    run(main)


@pytest.mark.parametrize("bad_id", ["a/b", "..", ".", "a\\b", "tab\there", "nul\x00", "c1\x85", "x" * 257])
def test_unaddressable_remote_ids_are_never_stored(tmp_path: Path, bad_id: str) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            delta = codec.encode_delta(Document().apply([{"op": "set", "path": ["k"], "value": 1}], replica="o.1.x"))
            state = codec.encode_document(Document())
            assert await node.apply_remote("o.1.x", 1, bad_id, delta)
            assert await node.merge_state(bad_id, state) is False
            assert await node.version_vector() == {"o.1.x": 1}  # counted as received: never re-sent
            assert await node.list("", None, 10) == ([], None)
            assert node.quarantined() == []
            assert node.stats()["quarantine"]["ids_rejected"] == 2
            [entry] = await node.log_range("o.1.x", 0, 10)
            assert entry.delta == b"" and entry.doc_id == "."  # not relayed either
            # A good id next to it still joins.
            assert await node.apply_remote("o.1.x", 2, "fine", delta)
            assert (await node.read("fine")).value == {"k": 1}
        finally:
            await node.close()

    run(main)


def test_a_batch_with_a_bad_origin_is_refused_whole(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            delta = codec.encode_delta(Document().apply([{"op": "set", "path": ["k"], "value": 1}], replica="o.1.x"))
            with pytest.raises(ValueError):
                await node.apply_remote_many([LogEntry("o.1.x", 1, "a", delta), LogEntry("bad\x00", 1, "b", delta)])
            assert await node.version_vector() == {}
        finally:
            await node.close()

    run(main)


def test_a_merge_that_fails_quarantines_and_changes_nothing_then_a_good_one_repairs(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("doc", [{"op": "set", "path": ["k"], "value": 1}])
            before = await node.read_state("doc")
            assert await node.merge_state("doc", b'["D",1,[],{},{"x":[99,1]}]') is False
            assert await node.read_state("doc") == before
            [record] = node.quarantined()
            assert record.doc_id == "doc" and record.origin is None and "DecodeError" in record.reason
            other = Document()
            other.apply([{"op": "set", "path": ["j"], "value": 2}], replica="o.1.x")
            assert await node.merge_state("doc", codec.encode_document(other))
            assert node.quarantined() == []
            assert (await node.read("doc")).value == {"k": 1, "j": 2}
        finally:
            await node.close()

    run(main)


def test_overflowing_counter_writes_are_refused_by_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("doc", [{"op": "increment", "path": ["c"], "by": INT64_MAX}])
            before = await snapshot(node, "doc")
            with pytest.raises(InvalidValue) as info:
                await node.apply("doc", [{"op": "increment", "path": ["c"]}])
            assert info.value.op_index == 0
            assert await snapshot(node, "doc") == before
        finally:
            await node.close()

    run(main)


def test_a_remote_join_the_decoder_could_not_load_again_is_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        a = await started(tmp_path / "a")
        b = await started(tmp_path / "b")
        try:
            await a.apply("doc", [insert("a" * 3000)])
            await b.apply("doc", [insert("b" * 1000)])
            await b.apply("small", [insert("s")])
            before = await a.read_state("doc")
            # Each delta decodes; the join would not (a stand-in for the decoder's hard bound).
            monkeypatch.setattr(codec, "MAX_ENCODED_BYTES", 3500)
            entries = await b.log_range(b.replica_id, 0, 10)
            assert await a.apply_remote_many(entries) == [True, True]
            assert await a.read_state("doc") == before
            assert [q.doc_id for q in a.quarantined()] == ["doc"]
            assert (await a.read("small")).value == {"t": "s"}
            monkeypatch.setattr(codec, "MAX_ENCODED_BYTES", 256 << 20)
            state = await b.read_state("doc")
            assert state is not None and await a.merge_state("doc", state)
            assert a.quarantined() == [] and len((await a.read("doc")).value["t"]) == 4000
        finally:
            await a.close()
            await b.close()

    run(main)


def test_the_document_limits_are_settings_that_reach_the_node(tmp_path: Path) -> None:
    no_flags = {s.name: None for s in SETTINGS}
    toml = tmp_path / "c.toml"
    toml.write_text("max-sequence-length = 5000\n")
    env = {"CRDTSTORE_MAX_DOCUMENT_BYTES": "123456", "CRDTSTORE_CONFIG": str(toml)}
    config = resolve(no_flags | {"data": str(tmp_path / "d")}, env=env)
    assert (config.max_document_bytes, config.max_sequence_length) == (123456, 5000)
    node = build_server_app(config, env={}).state.api.node
    assert (node.config.max_document_bytes, node.config.max_sequence_length) == (123456, 5000)
    assert resolve(no_flags | {"max_document_bytes": "99"}, env=env).max_document_bytes == 99
    for bad in ("0", "-1", "lots"):
        with pytest.raises(ConfigError):
            resolve(no_flags | {"max_document_bytes": bad}, env={})
        with pytest.raises(ConfigError):
            resolve(no_flags, env={"CRDTSTORE_MAX_SEQUENCE_LENGTH": bad})


_SAMPLE_OPS = [
    {"op": "set", "path": ["k"], "value": 1},
    {"op": "increment", "path": ["c"], "by": 5},
    {"op": "add", "path": ["s"], "value": 1},
    {"op": "insert", "path": ["t"], "index": 0, "text": "hello"},
    {"op": "set", "path": ["m", "k"], "value": {"x": [1]}},
]


@settings(max_examples=30)
@given(st.data())
def test_whatever_a_peer_sends_every_document_stays_readable_and_the_origin_advances(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    good = codec.encode_delta(Document().apply(_SAMPLE_OPS, replica="o.1.x"))
    entries = []
    for seq in range(1, 5):
        raw = good
        if data.draw(st.booleans()):  # a corrupted copy: flip, cut or splice bytes
            at = data.draw(st.integers(0, len(raw) - 1))
            raw = raw[:at] + data.draw(st.binary(max_size=6)) + raw[at + data.draw(st.integers(0, 3)) :]
        entries.append(LogEntry("o.1.x", seq, data.draw(st.sampled_from(["d1", "d2", "a/b"])), raw))

    async def main() -> None:
        node = await started(tmp_path_factory.mktemp("n"))
        try:
            assert await node.apply_remote_many(entries) == [True] * 4
            assert await node.version_vector() == {"o.1.x": 4}
            for doc_id in ("d1", "d2"):
                state = await node.read_state(doc_id)
                if state is not None:
                    codec.decode_document(state)
                    await node.read(doc_id, siblings=True)
            # A local write still works on every document.
            await node.apply("d1", [{"op": "increment", "path": ["n"]}])
        finally:
            await node.close()

    run(main)


def test_peer_data_claiming_dots_this_replica_never_minted_is_quarantined(tmp_path: Path) -> None:
    async def main() -> None:
        node = await started(tmp_path / "n")
        try:
            await node.apply("doc", [{"op": "set", "path": ["k"], "value": 1}])
            before = await node.read_state("doc")
            me = node.replica_id.encode()
            # A state whose context holds this replica's counters up to 2**64 - 1: merged, it would
            # make the next local write mint a dot no encoding can hold (every write a 500).
            forged = b'["D",1,["' + me + b'"],{"0":[1,18446744073709551615]},[]]'
            assert await node.merge_state("doc", forged) is False
            # The same as a delta: one fresh dot of ours, beyond what we minted.
            forger = Document()
            for _ in range(5):
                forger.apply([{"op": "set", "path": ["j"], "value": 1}], replica="x")
            fake = codec.encode_delta(forger.apply([{"op": "set", "path": ["j"], "value": 2}], replica="x"))
            fake = fake.replace(b'["x"]', b'["' + me + b'"]')
            assert await node.apply_remote("o.1.x", 1, "doc", fake)
            assert await node.read_state("doc") == before
            [record] = node.quarantined()
            assert record.failures == 2 and "ForgedDots" in record.reason
            await node.apply("doc", [{"op": "set", "path": ["k"], "value": 3}])  # local writes go on
            # Our own delta relayed back to us claims nothing beyond what we minted.
            await node.apply("doc2", [{"op": "set", "path": ["k"], "value": 1}])
            [own] = await node.log_range(node.replica_id, 2, 1)
            assert own.doc_id == "doc2" and await node.apply_remote("o.1.x", 2, "doc2", own.delta)
            assert [q.doc_id for q in node.quarantined()] == ["doc"]
        finally:
            await node.close()

    run(main)
