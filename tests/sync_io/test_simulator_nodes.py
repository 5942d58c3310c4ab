"""The simulator's fault schedules against Node-backed replicas (LMDB in a scratch directory).

The same schedules, strategies and checks as ``tests/sync/test_simulator.py``,
with every replica a real :class:`crdtstore.node.Node`: the handlers of
``sync.dispatch`` then run against the store production runs. Fewer examples
than over memory: each step hops to LMDB threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.merkle import MerkleShape
from crdtstore.node import Node
from crdtstore.testing.nodes import NodeBackend
from sync import events as ev
from sync.memstore import MemStore
from sync.simulator import MemBackend, Simulator
from tests.sync.test_simulator import HEAL_TICKS, NAMES, assert_no_write_lost, check_converged, op, play, schedules

EXAMPLES = max(5, settings.default.max_examples // 10)


@contextlib.contextmanager
def on_nodes() -> Iterator[dict[str, Any]]:
    """Simulator arguments for Node-backed replicas: a scratch directory, an event loop to run steps in."""
    loop = asyncio.new_event_loop()
    try:
        with tempfile.TemporaryDirectory(prefix="crdtstore-sim-") as tmp:
            backend = NodeBackend(Path(tmp))
            try:
                yield {"backend": backend, "runner": loop.run_until_complete}
            finally:
                loop.run_until_complete(backend.close())
    finally:
        loop.close()


@settings(max_examples=EXAMPLES)
@given(schedules, st.integers(0, 2**32 - 1))
def test_faults_then_heal_converges_on_nodes(schedule: list[tuple], seed: int) -> None:
    with on_nodes() as kwargs:
        check_converged(play(schedule, seed, **kwargs))


@settings(max_examples=EXAMPLES)
@given(schedules, st.integers(0, 2**32 - 1))
def test_line_topology_converges_on_nodes(schedule: list[tuple], seed: int) -> None:
    with on_nodes() as kwargs:
        check_converged(play(schedule, seed, line=True, **kwargs))


def test_nodes_restart_truncate_and_a_new_replica_is_repaired_by_anti_entropy() -> None:
    with on_nodes() as kwargs:
        sim = Simulator(NAMES, seed=3, truncate=True, **kwargs)
        assert all(isinstance(r.store, Node) for r in sim.replicas.values())
        before = sim.replicas["a"].store.info
        for i in range(6):
            sim.write("abc"[i % 3], f"doc{i % 2}", op("add", i))
        sim.run(2)
        sim.crash("a")
        sim.write("b", "doc0", op("inc", 0))
        sim.restart("a")
        after = sim.replicas["a"].store.info
        assert after.replica_id == before.replica_id == "eu-a" and after.epoch == before.epoch + 1
        assert after.origin != before.origin
        assert sim.run_until_converged(HEAL_TICKS) is not None
        assert_no_write_lost(sim)
        # The nodes truncated their logs to what every peer acknowledged (acks stored by the truncation pass).
        sim.run(5)
        for rep in sim.replicas.values():
            vector = sim.drive(rep.store.version_vector())
            assert all(sim.drive(rep.store.log_range(origin, 0, 10)) == [] for origin in vector), rep.name
        # A new, empty replica linked to c only: the logs cannot help it, anti-entropy must.
        sim.add_replica("d", "eu", ["c"])
        sim.write("a", "doc0", op("inc", 0))
        assert sim.run_until_converged(HEAL_TICKS) is not None
        assert_no_write_lost(sim)
        kinds = {type(e) for name, _, e in sim.events if name == "d"}
        assert {ev.MergeStates, ev.SkipLog} <= kinds
        sim.run(10)
        vectors = [sim.drive(r.store.version_vector()) for r in sim.replicas.values()]
        assert all(v == vectors[0] for v in vectors)


class _MemLikeNodes(MemBackend):
    """In-memory replicas named as NodeBackend names them (``f"{region}-{name}"``)."""

    async def open(self, name: str, region: str, nonce: str, shape: MerkleShape) -> MemStore:
        return MemStore(f"{region}-{name}", region=region, nonce=nonce, shape=shape)


@settings(max_examples=EXAMPLES)
@given(schedules, st.integers(0, 2**32 - 1))
def test_a_schedule_runs_the_same_over_nodes_as_over_memory(schedule: list[tuple], seed: int) -> None:
    # Same seed, same schedule: every message, event and truncation in the same order, the same bytes at the end.
    memory = play(schedule, seed, backend=_MemLikeNodes())
    memory.run(10)
    with on_nodes() as kwargs:
        nodes = play(schedule, seed, **kwargs)
        nodes.run(10)
        assert nodes.trace == memory.trace
        assert {n: nodes.drive(nodes.snapshot(n)) for n in nodes.replicas} == {
            n: memory.drive(memory.snapshot(n)) for n in memory.replicas
        }
