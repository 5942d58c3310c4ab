"""A consistency oracle, as Cassandra's dtests have: for each level, topology and set of replicas down,
the expected answer (200 or 504) is written out by hand below, and checked against real linked nodes.

The coordinator is always ``us-0`` (up); ``down`` counts the stopped replicas
of its region (``local``) and of the other regions (``remote``). Each
topology is one cluster whose replicas are stopped one step at a time, so
no case restarts anything; within a step every level's read and write run
at once. A stopped replica never answers, so a case expected to fail may
use a short timeout without changing its outcome; a case expected to
succeed gets a long one. The hand-written table is checked against a
separate four-line formula (:func:`formula`), and neither looks at the code
under test (:mod:`sync.quorum`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from tests.sync_io.regions import TOKEN
from tests.sync_io.replica_cluster import ReplicaCluster, replica_cluster

__all__: list[str] = []

LEVELS = ("one", "local_quorum", "quorum", "all")
OK_TIMEOUT = 15.0  # a case that must succeed: long, so a loaded machine does not turn it into a 504
FAIL_TIMEOUT = 1.0  # a case that must fail: its missing replicas are stopped, so waiting longer changes nothing

# (regions, replicas per region) -> steps: (replicas stopped before this step, expected (one, lq, quorum, all)).
# Counts: N = regions x replicas, L = replicas per region; the coordinator us-0 is never stopped.
# lq = L//2+1 of the region's L, quorum = N//2+1 of N, all = N (worked out by hand, row by row).
TABLE: dict[tuple[int, int], list[tuple[tuple[str, ...], tuple[str, str, str, str]]]] = {
    # N=3, L=3: lq 2 of 3, quorum 2 of 3, all 3.
    (1, 3): [
        ((), ("ok", "ok", "ok", "ok")),
        (("us-1",), ("ok", "ok", "ok", "504")),  # down 1 local: 2 of 3 up
        (("us-2",), ("ok", "504", "504", "504")),  # down 2 local: only the coordinator
    ],
    # N=3, L=1: lq 1 of 1 (the coordinator alone), quorum 2 of 3, all 3.
    (3, 1): [
        ((), ("ok", "ok", "ok", "ok")),
        (("eu-0",), ("ok", "ok", "ok", "504")),  # down 1 remote: 2 of 3 up
        (("ap-0",), ("ok", "ok", "504", "504")),  # down 2 remote: lq still met by us-0 itself
    ],
    # N=4, L=2: lq 2 of 2, quorum 3 of 4, all 4.
    (2, 2): [
        ((), ("ok", "ok", "ok", "ok")),
        (("us-1",), ("ok", "504", "ok", "504")),  # down 1 local: 3 of 4 up, but 1 of 2 here
        (("eu-0",), ("ok", "504", "504", "504")),  # down 1 local + 1 remote: 2 of 4 up
    ],
    # N=6, L=3: lq 2 of 3, quorum 4 of 6, all 6.
    (2, 3): [
        (("eu-0", "eu-1", "eu-2"), ("ok", "ok", "504", "504")),  # down 0 + 3: the other region gone, 3 of 6
        (("us-2",), ("ok", "ok", "504", "504")),  # 1 + 3: 2 of 3 here still
    ],
    # N=9, L=3: lq 2 of 3, quorum 5 of 9, all 9.
    (3, 3): [
        ((), ("ok", "ok", "ok", "ok")),
        (("eu-0",), ("ok", "ok", "ok", "504")),  # down 0 local + 1 remote: 8 of 9
        (("us-1",), ("ok", "ok", "ok", "504")),  # 1 + 1: 7 of 9, 2 of 3 here
        (("ap-0", "ap-1"), ("ok", "ok", "ok", "504")),  # 1 + 3: 5 of 9, just a quorum
        (("ap-2",), ("ok", "ok", "504", "504")),  # 1 + 4: 4 of 9; us still has 2 of 3 (a region lost)
        (("eu-1", "eu-2"), ("ok", "ok", "504", "504")),  # 1 + 6: us-0 and us-2 only
        (("us-2",), ("ok", "504", "504", "504")),  # 2 + 6: the coordinator alone
    ],
}


def formula(level: str, regions: int, per_region: int, down_local: int, down_remote: int) -> tuple[bool, int, int]:
    """(succeeds, needed, replicas that count and are up), from the definitions of the levels alone."""
    n, here = regions * per_region, per_region
    needed = {"one": 1, "local_quorum": here // 2 + 1, "quorum": n // 2 + 1, "all": n}[level]
    up = here - down_local if level == "local_quorum" else n - down_local - down_remote
    return (True, 1, 1) if level == "one" else (up >= needed, needed, up)


def _down(stopped: list[str]) -> tuple[int, int]:
    local = sum(name.startswith("us-") for name in stopped)
    return local, len(stopped) - local


def test_the_table_agrees_with_the_formula() -> None:
    # Two independent statements of the same rules: a slip in either shows here.
    cells = 0
    for (regions, per_region), steps in TABLE.items():
        stopped: list[str] = []
        for stop, expected in steps:
            stopped += stop
            for level, want in zip(LEVELS, expected, strict=True):
                ok, _, _ = formula(level, regions, per_region, *_down(stopped))
                assert ok == (want == "ok"), (regions, per_region, stopped, level)
                cells += 1
    assert cells == 4 * sum(len(steps) for steps in TABLE.values())


async def _check(
    client: httpx.AsyncClient, cluster: ReplicaCluster, topology: tuple[int, int], stopped: list[str], step: int
) -> list[str]:
    """Every level's write then read at the coordinator, concurrently; the mismatches."""
    coordinator = cluster.replicas["us-0"]
    base = coordinator.url + "/v1/docs/"
    ops = {"ops": [{"op": "increment", "path": ["n"]}]}
    down = _down(stopped)

    async def case(level: str, want: str) -> list[str]:
        ok, needed, up = formula(level, *topology, *down)
        timeout = OK_TIMEOUT if want == "ok" else FAIL_TIMEOUT
        doc = f"step{step}-{level}"
        wrote = await client.post(f"{base}{doc}?w={level}&timeout={timeout}", json=ops)
        read = await client.get(f"{base}{doc}?r={level}&timeout={timeout}")
        bad = []
        for what, response in (("write", wrote), ("read", read)):
            status = 200 if want == "ok" else 504
            where = f"{topology} down={stopped} {level} {what}"
            if response.status_code != status:
                bad.append(f"{where}: {response.status_code} {response.text[:200]}, expected {status}")
            elif status == 504:
                detail = response.json()["detail"]
                # Needed comes from the configured membership, whatever is down; reached counts only live
                # replicas of the right scope (our region for local_quorum).
                if detail["needed"] != needed or not 1 <= detail["reached"] <= up < needed:
                    bad.append(f"{where}: needed/reached {detail['needed']}/{detail['reached']}, want {needed}/<={up}")
        return bad

    results = await asyncio.gather(*(case(level, want) for level, want in _row(topology, step)))
    return [message for messages in results for message in messages]


def _row(topology: tuple[int, int], step: int) -> list[tuple[str, str]]:
    return list(zip(LEVELS, TABLE[topology][step][1], strict=True))


REGION_NAMES = ("us", "eu", "ap")


@pytest.mark.parametrize("topology", list(TABLE), ids=lambda t: f"{t[0]}x{t[1]}")
def test_consistency_levels_against_live_replicas(tmp_path: Path, topology: tuple[int, int]) -> None:
    regions, per_region = topology
    failures: list[str] = []

    async def scenario() -> None:
        async with replica_cluster(tmp_path, REGION_NAMES[:regions], per_region) as cluster:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(headers=headers, timeout=60) as client:
                stopped: list[str] = []
                for step, (stop, _) in enumerate(TABLE[topology]):
                    for name in stop:
                        await cluster.stop(name)
                    stopped += stop
                    await cluster.wait_linked("us-0")  # links to stopped replicas gone, to the others up
                    failures.extend(await _check(client, cluster, topology, stopped, step))

    asyncio.run(asyncio.wait_for(scenario(), timeout=240))
    assert not failures, "\n".join(failures)


def test_more_replicas_of_a_region_than_configured_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Three replicas of us, each told its region has two: local_quorum would be a majority of too few.
    async def scenario() -> None:
        async with replica_cluster(tmp_path, ("us",), 3, region_replicas=2):
            pass

    with caplog.at_level(logging.WARNING, logger="crdtstore.replicator"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert any("more replicas of our region" in r.getMessage() for r in caplog.records)


def test_a_true_region_size_logs_nothing_of_the_kind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with replica_cluster(tmp_path, ("us", "eu"), 2):
            pass

    with caplog.at_level(logging.WARNING, logger="crdtstore.replicator"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert not any("more replicas of our region" in r.getMessage() for r in caplog.records)
