"""Quorum arithmetic: the levels, what each needs, what an outcome reports."""

from __future__ import annotations

import pytest

from sync.quorum import Level, QuorumOutcome, Requirement, required


@pytest.mark.parametrize(
    ("level", "replicas", "local", "want"),
    [
        ("one", 3, 1, Requirement(1, 0)),
        ("quorum", 3, 1, Requirement(2, 0)),
        ("all", 3, 1, Requirement(3, 0)),
        ("local_quorum", 3, 1, Requirement(1, 1)),
        ("local_quorum", 5, 3, Requirement(2, 2)),
        ("quorum", 5, 2, Requirement(3, 0)),
        ("quorum", 1, 1, Requirement(1, 0)),
        ("all", 1, 1, Requirement(1, 0)),
    ],
)
def test_required(level: str, replicas: int, local: int, want: Requirement) -> None:
    assert required(level, replicas=replicas, local_replicas=local) == want


def test_quorum_reads_and_writes_intersect() -> None:
    for n in range(1, 8):
        q = required(Level.QUORUM, replicas=n, local_replicas=1).total
        assert 2 * q > n


def test_levels_keep_their_http_names() -> None:
    # ?r= and ?w= take these strings; the API lists them in this order in its error.
    assert [level.value for level in Level] == ["one", "local_quorum", "quorum", "all"]


@pytest.mark.parametrize(
    ("level", "replicas", "local"),
    [("most", 3, 1), ("QUORUM", 3, 1), ("quorum", 0, 0), ("local_quorum", 3, 0), ("local_quorum", 3, 4)],
)
def test_bad_levels_and_clusters(level: str, replicas: int, local: int) -> None:
    with pytest.raises(ValueError):
        required(level, replicas=replicas, local_replicas=local)


def test_outcome_ok_only_when_reached() -> None:
    assert QuorumOutcome(needed=2, reached=2, replicas=("a", "b")).ok
    assert not QuorumOutcome(needed=3, reached=2, replicas=("a", "b")).ok


@pytest.mark.parametrize(
    ("level", "replicas", "local", "needed", "local_only"),
    [
        ("one", 9, 3, 1, False),
        ("local_quorum", 9, 3, 2, True),
        ("local_quorum", 10, 5, 3, True),
        ("local_quorum", 3, 1, 1, True),  # one replica per region: the coordinator alone
        ("quorum", 9, 3, 5, False),
        ("all", 9, 3, 9, False),
    ],
)
def test_what_counts_toward_a_level(level: str, replicas: int, local: int, needed: int, local_only: bool) -> None:
    requirement = required(level, replicas=replicas, local_replicas=local)
    assert (requirement.needed, requirement.local_only) == (needed, local_only)


def test_local_quorums_of_one_region_intersect() -> None:
    # local_quorum writes and reads in one region meet, whatever the other regions hold.
    for region in range(1, 8):
        q = required(Level.LOCAL_QUORUM, replicas=3 * region, local_replicas=region).needed
        assert 2 * q > region
