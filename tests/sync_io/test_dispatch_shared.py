"""The production replicator and the simulator run one event table: patch it, and both paths change."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtstore.node import Node, NodeConfig
from crdtstore.replicator import Replicator, ReplicatorSettings, _Link
from sync import dispatch as sd
from sync import events as ev
from sync.memstore import MemStore
from sync.simulator import Simulator
from sync.store import run_sync
from tests.sync_io.test_replicator import SECRET, TOKEN, _ScriptedProto, _StubConn, linked_pair

INC = [{"op": "increment", "path": ["n"]}]


def spy_on_table(monkeypatch: pytest.MonkeyPatch, seen: list[tuple[str, type[ev.Event]]], *, drop: tuple = ()) -> None:
    """Wrap every handler: record (adapter, event type); skip the real handler for types in ``drop``."""

    def spy(kind: type[ev.Event], real: sd.Handler) -> sd.Handler:
        async def handler(ctx: Any, event: ev.Event) -> None:
            seen.append((type(ctx).__name__, kind))
            if kind not in drop:
                await real(ctx, event)

        return handler

    for kind, real in list(sd.HANDLERS.items()):
        monkeypatch.setitem(sd.HANDLERS, kind, spy(kind, real))


def test_the_replicator_and_the_simulator_both_dispatch_through_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, type[ev.Event]]] = []
    spy_on_table(monkeypatch, seen)

    # The simulator.
    sim = Simulator({"a": "eu", "b": "us"}, seed=2)
    sim.run(2)
    sim.write("a", "doc", INC)
    sim.run(2)
    assert sim.converged()

    # The production replicator: two nodes over websockets on loopback.
    async def scenario() -> None:
        async with linked_pair(tmp_path, ReplicatorSettings(truncate_interval=None)) as pair:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
                for _ in range(300):  # bounded wait for both lifespans
                    if all([(await client.get(u + "/readyz")).status_code == 200 for u in pair.urls]):
                        break
                    await asyncio.sleep(0.02)
                response = await client.post(f"{pair.urls[0]}/v1/docs/d?w=all", json={"ops": INC})
                assert response.status_code == 200, response.text

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    by_adapter = {adapter for adapter, _ in seen}
    assert by_adapter == {"_SimContext", "_LinkContext"}
    for adapter in by_adapter:
        kinds = {kind for a, kind in seen if a == adapter}
        assert {ev.Authenticated, ev.ApplyDeltas, ev.PeerAcked} <= kinds, adapter


def test_with_the_delta_handler_dropped_neither_adapter_applies_deltas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, type[ev.Event]]] = []
    spy_on_table(monkeypatch, seen, drop=(ev.ApplyDeltas,))
    src = MemStore("src", region="eu", nonce="1")
    entries = tuple(src.apply("doc", INC) for _ in range(2))

    sim = Simulator({"a": "eu", "b": "us"}, seed=2)
    sim.run(2)
    sim.write("a", "doc", INC)
    sim.run(2)
    assert run_sync(sim.replicas["b"].store.read_states(["doc"])) == [None]

    async def scenario() -> None:
        node = Node(NodeConfig(region="r0", data_dir=tmp_path / "r0", sync=False))
        await node.start()
        try:
            replicator = Replicator(node, secret=SECRET, region="r0")
            link = _Link(proto=_ScriptedProto([]), conn=_StubConn())
            await replicator._process(link, ev.ApplyDeltas(entries))
            assert await node.read_states(["doc"]) == [None] and await node.version_vector() == {}
            monkeypatch.undo()  # the real table again: the same call applies them
            await replicator._process(link, ev.ApplyDeltas(entries))
            assert await node.read_states(["doc"]) == [src.read_state("doc")]
        finally:
            await node.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert ("_SimContext", ev.ApplyDeltas) in seen and ("_LinkContext", ev.ApplyDeltas) in seen


def test_a_bad_state_from_a_peer_is_counted_by_the_replicator_over_a_real_node(tmp_path: Path) -> None:
    # Node's merge_states reports a state it quarantined as Rejected, so the link counts and logs
    # it (states_rejected) and merges the others; the link is not failed.
    src = MemStore("src", region="eu", nonce="1")
    src.apply("x", INC)

    async def scenario() -> None:
        node = Node(NodeConfig(region="r0", data_dir=tmp_path / "r0", sync=False))
        await node.start()
        try:
            replicator = Replicator(node, secret=SECRET, region="r0")
            proto = _ScriptedProto([])
            link = _Link(proto=proto, conn=_StubConn())
            states = (("x", src.read_state("x")), ("y", b"junk"), ("a/b", src.read_state("x")))
            await replicator._process(link, ev.MergeStates(states))  # type: ignore[arg-type]
            assert replicator.stats["states_merged"] == 1 and replicator.stats["states_rejected"] == 2
            assert replicator.stats["protocol_errors"] == 0 and proto.failures == []
            assert [q.doc_id for q in node.quarantined()] == ["y"]
            assert await node.read_states(["x", "y"]) == [src.read_state("x"), None]
        finally:
            await node.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
