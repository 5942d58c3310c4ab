"""Region nodes on LMDB in a scratch directory, for the simulator and the differential state machine.

:class:`NodeBackend` is a :class:`sync.simulator.Backend`: every simulated
replica is a real :class:`~crdtstore.node.Node` (writer thread, group
commit, LMDB), so fault schedules run against the store production runs.
Identity is passed in rather than drawn: the replica id is the simulator's
name and each start's nonce comes from the simulator's seeded random, so a
schedule replays exactly. Durability is ``sync=False`` (no fsync: a crash
here loses no committed transaction, and tests stay quick).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..merkle import MerkleShape
from ..node import Node, NodeConfig

__all__ = ["NodeBackend", "open_node"]


def _ids(*values: str) -> Callable[[], str]:
    """``random_id`` for Storage.open that hands out ``values`` in order (base id first on a new directory)."""
    it: Iterator[str] = iter(values)
    return lambda: next(it)


async def open_node(data_dir: Path, *, region: str, shape: MerkleShape, ids: tuple[str, ...], **config: Any) -> Node:
    """Start a node on ``data_dir``; ``ids`` are what it draws: ``(base_suffix, nonce)`` when new, ``(nonce,)`` after.

    The base id of a new directory is ``f"{region}-{ids[0]}"`` (see :mod:`crdtstore.storage`).
    """
    node = Node(
        NodeConfig(
            region=region,
            data_dir=data_dir,
            sync=False,
            metasync=False,
            merkle_fanout=shape.fanout,
            merkle_depth=shape.depth,
            **config,
        ),
        clock=lambda: 0.0,  # HLC timestamps then depend on the ops alone (LWW writes stay replayable)
        random_id=_ids(*ids),
    )
    await node.start()
    return node


class NodeBackend:
    """Simulated replicas as nodes on LMDB under ``root`` (one directory each).

    Call :meth:`close` (in the loop) when the simulation is over.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Node] = []

    async def open(self, name: str, region: str, nonce: str, shape: MerkleShape) -> Node:
        node = await open_node(self.root / name, region=region, shape=shape, ids=(name, nonce))
        self.nodes.append(node)
        return node

    async def write(self, store: Any, doc_id: str, ops: list[dict[str, Any]]) -> Any:
        node: Node = store
        result = await node.apply(doc_id, ops)
        (entry,) = await node.log_range(result.origin, result.seq - 1, 1)
        return entry

    async def restart(self, store: Any, nonce: str) -> Node:
        old: Node = store
        await old.close()
        cfg = old.config
        shape = MerkleShape(cfg.merkle_fanout, cfg.merkle_depth)
        node = await open_node(cfg.data_dir, region=cfg.region, shape=shape, ids=(nonce,))
        self.nodes.append(node)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()
