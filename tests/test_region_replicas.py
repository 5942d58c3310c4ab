"""``--region-replicas``: how a replica knows its region's size, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtstore.config import SETTINGS, ConfigError, resolve
from crdtstore.node import Node, NodeConfig
from crdtstore.replicator import Replicator
from crdtstore.server import build_server_app

__all__: list[str] = []

NO_FLAGS = {s.name: None for s in SETTINGS}
PEERS = ["ws://127.0.0.1:9001/v1/peer", "ws://127.0.0.1:9002/v1/peer"]


def test_region_size_comes_from_every_source_and_defaults_to_one(tmp_path: Path) -> None:
    assert resolve(NO_FLAGS, env={}).region_replicas == 1
    assert resolve(NO_FLAGS | {"region_replicas": "3", "peers": PEERS}, env={}).region_replicas == 3
    env = {"CRDTSTORE_REGION_REPLICAS": "2", "CRDTSTORE_PEERS": ",".join(PEERS)}
    assert resolve(NO_FLAGS, env=env).region_replicas == 2
    toml = tmp_path / "c.toml"
    toml.write_text(f"region_replicas = 3\npeers = {PEERS!r}\n".replace("'", '"'))
    assert resolve(NO_FLAGS, env={}, config_file=toml).region_replicas == 3


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", "4"])
def test_a_region_size_that_cannot_be_is_refused(bad: str) -> None:
    # 4 replicas in our region with 2 peers: the others cannot all be peers, so it is a typo.
    with pytest.raises(ConfigError, match="region-replicas"):
        resolve(NO_FLAGS | {"region_replicas": bad, "peers": PEERS}, env={})


def test_the_region_size_reaches_the_replicator(tmp_path: Path) -> None:
    config = resolve(NO_FLAGS | {"data": str(tmp_path / "d"), "region_replicas": "3", "peers": PEERS}, env={})
    app = build_server_app(config, env={"CRDTSTORE_CLUSTER_SECRET": "s" * 20})
    assert app.state.api.replicator.region_replicas == 3


@pytest.mark.parametrize("size", [0, 4])
def test_the_replicator_refuses_a_region_larger_than_the_cluster(tmp_path: Path, size: int) -> None:
    node = Node(NodeConfig(region="us", data_dir=tmp_path / "n", sync=False))
    with pytest.raises(ValueError, match="replicas in our region"):
        Replicator(node, secret=b"s" * 20, peers=PEERS, region="us", region_replicas=size)
