"""A cluster secret rotation across real linked regions, and the setting that feeds it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crdtstore.config import SETTINGS, ConfigError, accepted_secrets, resolve
from tests.api.linked import linked_regions, wait_for

NO_FLAGS = {s.name: None for s in SETTINGS}
OLD = b"the-old-cluster-secret-0123456789"
NEW = b"the-new-cluster-secret-9876543210"


def test_regions_mid_rotation_link_and_replicate(tmp_path: Path) -> None:
    # us has rolled once (proves with OLD, accepts NEW), eu twice (proves with NEW, accepts OLD).
    secrets = {"us": (OLD, (NEW,)), "eu": (NEW, (OLD,))}

    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu"), secrets=secrets) as cluster:
            assert await wait_for(lambda: cluster.replicator("us").peers() == [cluster.peer_id("eu")])
            assert await cluster.write("us", "rotating", level="all") == 200
            assert await cluster.write("eu", "rotating", level="all") == 200
            got = await cluster.call("eu", "GET", "/v1/docs/rotating")
            assert got.json()["value"] == {"n": 2}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_regions_two_steps_apart_do_not_link(tmp_path: Path) -> None:
    secrets = {"us": (OLD, ()), "eu": (NEW, (OLD,))}

    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu"), secrets=secrets) as cluster:
            dialers = [d for name in ("us", "eu") for d in cluster.replicator(name)._dialers]
            # Several handshakes each way, every one refused (4001): neither side ever has a peer.
            assert await wait_for(lambda: all(d.sessions >= 3 for d in dialers))
            assert cluster.replicator("us").peers() == [] and cluster.replicator("eu").peers() == []
            assert await cluster.write("us", "alone", level="all", timeout=0.3) == 504

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_accept_file_holds_one_secret_a_line(tmp_path: Path) -> None:
    path = tmp_path / "accept"
    path.write_bytes(b"# the next secret\n" + NEW + b"\n\n" + OLD + b"\n")
    config = resolve(NO_FLAGS | {"cluster_secret_accept_file": str(path)}, env={})
    assert accepted_secrets(config) == (NEW, OLD)
    env = resolve(NO_FLAGS, env={"CRDTSTORE_CLUSTER_SECRET_ACCEPT_FILE": str(path)})
    assert accepted_secrets(env) == (NEW, OLD)
    assert accepted_secrets(resolve(NO_FLAGS, env={})) == ()


@pytest.mark.parametrize("content", [b"short\n", None])
def test_a_short_or_missing_accept_file_is_a_config_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "accept"
    if content is not None:
        path.write_bytes(content)
    config = resolve(NO_FLAGS | {"cluster_secret_accept_file": str(path)}, env={})
    with pytest.raises(ConfigError):
        accepted_secrets(config)
