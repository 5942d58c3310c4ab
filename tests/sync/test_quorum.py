"""Quorum arithmetic and the read/write coordinators."""

from __future__ import annotations

import pytest

from crdtstore.codec import encode_document
from crdtstore.document import Document
from sync.quorum import Level, ReadCoordinator, Requirement, WriteCoordinator, required

THREE = {"eu1": "eu", "us1": "us", "ap1": "ap"}
FIVE = {"eu1": "eu", "eu2": "eu", "eu3": "eu", "us1": "us", "us2": "us"}


@pytest.mark.parametrize(
    ("level", "replicas", "region", "want"),
    [
        ("one", THREE, "eu", Requirement(1, 0)),
        ("quorum", THREE, "eu", Requirement(2, 0)),
        ("all", THREE, "eu", Requirement(3, 0)),
        ("local_quorum", THREE, "eu", Requirement(1, 1)),
        ("local_quorum", FIVE, "eu", Requirement(2, 2)),
        ("quorum", FIVE, "us", Requirement(3, 0)),
    ],
)
def test_required(level: str, replicas: dict[str, str], region: str, want: Requirement) -> None:
    assert required(level, replicas, region) == want


def test_quorum_reads_and_writes_intersect() -> None:
    for n in range(1, 8):
        replicas = {f"r{i}": "x" for i in range(n)}
        q = required(Level.QUORUM, replicas, "x").total
        assert 2 * q > n


def test_bad_levels() -> None:
    with pytest.raises(ValueError):
        required("most", THREE, "eu")
    with pytest.raises(ValueError):
        required("local_quorum", THREE, "mars")


def _state(n: int) -> bytes:
    doc = Document()
    for _ in range(n):
        doc.apply([{"op": "increment", "path": ["n"]}], replica="w")
    return encode_document(doc)


def test_read_coordinator_joins_and_names_stale() -> None:
    rc = ReadCoordinator("quorum", THREE, local_region="eu", now=0.0, timeout=1.0)
    rc.receive_response("eu1", _state(1))
    assert not rc.done
    rc.receive_response("us1", _state(2))
    rc.receive_response("mallory", _state(5))  # not a member: ignored
    assert rc.done and rc.answered == ["eu1", "us1"]
    assert rc.merged() == _state(2) and rc.stale() == ["eu1"]


def test_read_coordinator_timeout() -> None:
    rc = ReadCoordinator("all", THREE, local_region="eu", now=0.0, timeout=1.0)
    rc.receive_response("eu1", None)
    rc.receive_tick(0.5)
    assert not rc.finished
    rc.receive_tick(1.0)
    assert rc.timed_out and not rc.done and rc.merged() is None and rc.stale() == []


def test_write_coordinator() -> None:
    wc = WriteCoordinator("quorum", THREE, self_id="eu1", origin="o", seq=3, local_region="eu", now=0, timeout=5)
    assert not wc.done
    wc.receive_vector("us1", {"o": 2})
    assert not wc.done
    wc.receive_vector("us1", {"o": 3})
    assert wc.done
    one = WriteCoordinator("one", THREE, self_id="eu1", origin="o", seq=1, local_region="eu", now=0, timeout=5)
    assert one.done
