"""HTTP view of the document limits and of counters past int64."""

from __future__ import annotations

from collections.abc import Callable

from crdtstore.limits import INT64_MAX
from tests.api.helpers import TestClient


def test_an_oversized_write_answers_413_document_too_large_and_changes_nothing(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_document_bytes=4096, max_sequence_length=2000)
    ok = client.post("/v1/docs/d", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "a" * 1000}]})
    assert ok.status_code == 200
    before = client.get("/v1/docs/d").json()
    r = client.post("/v1/docs/d", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "b" * 1001}]})
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "document_too_large"
    assert body["detail"]["limit"] == 2000 and body["detail"]["path"] == ["t"]
    r = client.post(
        "/v1/docs/d", json={"ops": [{"op": "set", "path": [f"k{i}"], "value": "v" * 200} for i in range(20)]}
    )
    assert r.status_code == 413 and r.json()["detail"]["limit"] == 4096
    assert client.get("/v1/docs/d").json() == before


def test_a_counter_past_int64_cannot_be_made_by_one_region(client: TestClient) -> None:
    inc = {"ops": [{"op": "increment", "path": ["c"], "by": INT64_MAX}]}
    assert client.post("/v1/docs/d", json=inc).status_code == 200
    r = client.post("/v1/docs/d", json=inc)
    assert r.status_code == 422 and r.json()["error"] == "invalid_value"
    assert r.json()["detail"] == {"op_index": 0, "path": ["c"], "reason": r.json()["detail"]["reason"]}
    assert client.get("/v1/docs/d").json()["value"] == {"c": INT64_MAX}
