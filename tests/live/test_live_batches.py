"""The live channel's durable batch ids (``crdtstore.api.live_batches``): recorded with the write, bounded."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from crdtstore.api.live_batches import _K, NodeLedger, batch_key, ledger_for
from crdtstore.errors import OpError
from crdtstore.node import Node, NodeConfig

INC = [{"op": "increment", "path": ["n"]}]


def _kept(node: Node) -> int:
    with node.storage.read() as txn, txn.cursor(db=node.storage.dbs["meta"]) as cur:
        n = 0
        if cur.set_range(_K):
            for key, _ in cur:
                if not key.startswith(_K):
                    break
                n += 1
        return n


def test_a_known_id_applies_nothing_and_returns_the_first_result(tmp_path: Path) -> None:
    async def run() -> None:
        node = Node(NodeConfig(region="l", data_dir=tmp_path, sync=False))
        await node.start()
        try:
            ledger = NodeLedger(node, keep=10)
            key = batch_key("p", "d", "b")
            first, applied = await ledger.apply_once("d", INC, key)
            again, applied_again = await ledger.apply_once("d", INC, key)
            assert applied and not applied_again and again == first
            assert (await node.read("d")).value == {"n": 1}
        finally:
            await node.close()

    anyio.run(run)


def test_a_refused_batch_records_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        node = Node(NodeConfig(region="l", data_dir=tmp_path, sync=False))
        await node.start()
        try:
            ledger = NodeLedger(node, keep=10)
            key = batch_key("p", "d", "bad")
            with pytest.raises(OpError):
                await ledger.apply_once("d", [{"op": "insert", "path": ["t"], "index": 5, "text": "x"}], key)
            assert _kept(node) == 0
            # The id is free again: a corrected batch under it applies.
            _, applied = await ledger.apply_once("d", [{"op": "insert", "path": ["t"], "index": 0, "text": "x"}], key)
            assert applied
        finally:
            await node.close()

    anyio.run(run)


def test_ids_past_the_bound_are_forgotten_oldest_first(tmp_path: Path) -> None:
    async def run() -> None:
        node = Node(NodeConfig(region="l", data_dir=tmp_path, sync=False))
        await node.start()
        try:
            ledger = NodeLedger(node, keep=3)
            for k in range(8):
                await ledger.apply_once("d", INC, batch_key("p", "d", str(k)))
            assert _kept(node) == 3
            # The newest are known, the oldest applies again (as an id older than the bound would).
            assert not (await ledger.apply_once("d", INC, batch_key("p", "d", "7")))[1]
            assert (await ledger.apply_once("d", INC, batch_key("p", "d", "0")))[1]
        finally:
            await node.close()

    anyio.run(run)


def test_keys_are_fixed_size_and_do_not_collide_across_fields() -> None:
    # Long ids stay under LMDB's key limit; ("ab", "c") and ("a", "bc") are different batches.
    assert len(batch_key("p" * 300, "d" * 300, "b" * 128)) == 20
    assert batch_key("p", "ab", "c") != batch_key("p", "a", "bc")
    assert batch_key("pa", "b", "c") != batch_key("p", "ab", "c")


def test_a_node_with_its_own_ledger_is_used_as_is() -> None:
    class WithHook:
        async def apply_once(self, doc_id: str, ops: list[dict[str, object]], key: bytes) -> object:
            raise NotImplementedError

    hooked = WithHook()
    assert ledger_for(hooked, keep=5) is hooked
    assert isinstance(ledger_for(object(), keep=5), NodeLedger)
    with pytest.raises(ValueError):
        NodeLedger(object(), keep=0)
