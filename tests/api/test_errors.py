"""Every error answers with its status and the JSON shape {error, message, detail}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from crdtstore.api.limits import Limits
from crdtstore.commit import Overloaded
from tests.api.helpers import READ_TOKEN, TestClient, auth_headers


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message", "detail"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def post_ops(client: TestClient, ops: Any, doc_id: str = "d") -> httpx.Response:
    return client.post(f"/v1/docs/{doc_id}", json={"ops": ops})


@pytest.fixture
def seeded(client: TestClient) -> TestClient:
    post_ops(
        client,
        [
            {"op": "set", "path": ["reg"], "value": 1},
            {"op": "insert", "path": ["text"], "index": 0, "text": "hello"},
            {"op": "increment", "path": ["count"]},
        ],
    )
    return client


# 400


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[1,", b"NaN", b'{"ops": [}', b"\xff\xfe", b'"\\ud800"', b"1e999"],
)
def test_malformed_json_is_400(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/docs/d", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize("body", [[], 1, "ops", None, {"op": []}, {"ops": {}}, {"ops": [], "extra": 1}])
def test_wrong_envelope_is_400(client: TestClient, body: Any) -> None:
    response = client.post("/v1/docs/d", content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request")


def test_invalid_op_names_its_index(client: TestClient) -> None:
    body = assert_error(
        post_ops(client, [{"op": "set", "path": ["a"], "value": 1}, {"op": "explode"}]), 400, "invalid_op"
    )
    assert body["detail"]["op_index"] == 1
    assert_error(post_ops(client, [1]), 400, "invalid_op")


def test_index_out_of_range_is_400(seeded: TestClient) -> None:
    response = post_ops(seeded, [{"op": "insert", "path": ["text"], "index": 99, "text": "x"}])
    assert_error(response, 400, "index_out_of_range")


@pytest.mark.parametrize("raw_id", ["%01", "a%00b", "a%5Cb", "%7F", "%C2%85", "x" * 257])
def test_invalid_ids_are_400(client: TestClient, raw_id: str) -> None:
    assert_error(client.get(f"/v1/docs/{raw_id}"), 400, "invalid_id")
    assert_error(client.post(f"/v1/docs/{raw_id}", json={"ops": []}), 400, "invalid_id")


def test_bad_query_parameters_are_400(client: TestClient) -> None:
    for limit in ("0", "-1", "abc", "1001", "1.5"):
        assert_error(client.get("/v1/docs", params={"limit": limit}), 400, "invalid_request")
    assert_error(client.get("/v1/docs", params={"prefix": "a\x01"}), 400, "invalid_id")
    assert_error(client.get("/v1/docs", params={"cursor": "a\x00"}), 400, "invalid_cursor")
    assert_error(client.get("/v1/docs/d", params={"siblings": "maybe"}), 400, "invalid_request")


# 401 / 403


def test_missing_or_unknown_token_is_401(make_client: Callable[..., TestClient]) -> None:
    anon = make_client(token=None)
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}, auth_headers("nope" * 5)):
        response = anon.get("/v1/docs/d", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_read_token_cannot_write(make_client: Callable[..., TestClient]) -> None:
    reader = make_client(token=READ_TOKEN)
    body = assert_error(post_ops(reader, [{"op": "enable", "path": ["f"]}]), 403, "forbidden")
    assert body["detail"] == {"needed": "readwrite"}
    assert_error(reader.delete("/v1/docs/d"), 403, "forbidden")
    assert_error(reader.get("/v1/docs/d"), 404, "not_found")  # reading is allowed


def test_auth_is_checked_before_the_body(make_client: Callable[..., TestClient]) -> None:
    anon = make_client(token=None)
    response = anon.post("/v1/docs/d", content=b"{", headers={"content-type": "text/plain"})
    assert_error(response, 401, "unauthorized")


# 404 / 405 / 409


def test_unknown_document_is_404(client: TestClient) -> None:
    assert_error(client.get("/v1/docs/nope"), 404, "not_found")
    assert_error(client.delete("/v1/docs/nope"), 404, "not_found")


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v2/whatever"), 404, "not_found")
    assert_error(client.get("/v1/docs/a/b"), 400, "invalid_id")
    assert_error(client.post("/v1/docs/a%2Fb", json={"ops": []}), 400, "invalid_id")
    assert_error(client.put("/v1/docs/d", json={}), 405, "method_not_allowed")


def test_type_mismatch_is_409(seeded: TestClient) -> None:
    body = assert_error(post_ops(seeded, [{"op": "increment", "path": ["reg"]}]), 409, "type_mismatch")
    assert body["detail"]["op_index"] == 0


# 413 / 415 / 422


def test_body_over_the_limit_is_413(make_client: Callable[..., TestClient]) -> None:
    small = make_client(limits=Limits(max_body_bytes=1000))
    body = b'{"ops": [{"op": "set", "path": ["a"], "value": "' + b"x" * 2000 + b'"}]}'
    response = small.post("/v1/docs/d", content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large")
    # A chunked body (no Content-Length) is counted while it streams.
    chunks = (body[i : i + 100] for i in range(0, len(body), 100))
    response = small.post("/v1/docs/d", content=chunks, headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large")
    assert_error(small.get("/v1/docs/d"), 404, "not_found")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "json"])
def test_wrong_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/docs/d", content=b'{"ops": []}', headers=headers)
    assert_error(response, 415, "unsupported_media_type")


def test_json_content_type_parameters_are_accepted(client: TestClient) -> None:
    body = b'{"ops": [{"op": "enable", "path": ["f"]}]}'
    response = client.post("/v1/docs/d", content=body, headers={"content-type": "Application/JSON; charset=utf-8"})
    assert response.status_code == 200


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "raw_value",
    [
        b"9223372036854775808",  # int64 max + 1 (orjson still reads it as an int)
        b"-9223372036854775809",  # below int64 min (orjson would read a float)
        b"123456789012345678901234567890",  # beyond 64 bits
        b'{"' + b"k" * 257 + b'": 1}',
        b'"' + b"s" * 1001 + b'"',
    ],
)
def test_values_over_the_limits_are_422(make_client: Callable[..., TestClient], raw_value: bytes) -> None:
    client = make_client(limits=Limits(max_string_bytes=1000))
    body = b'{"ops": [{"op": "set", "path": ["a"], "value": ' + raw_value + b"}]}"
    response = client.post("/v1/docs/d", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_value")


def test_depth_limit_is_422(client: TestClient) -> None:
    assert post_ops(client, [{"op": "set", "path": ["ok"], "value": nested(32)}]).status_code == 200
    assert_error(post_ops(client, [{"op": "set", "path": ["a"], "value": nested(33)}]), 422, "invalid_value")
    deep = b'{"ops": [{"op": "set", "path": ["a"], "value": ' + b"[" * 1000 + b"]" * 1000 + b"}]}"
    response = client.post("/v1/docs/d", content=deep, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_value")


def test_big_ints_inside_strings_are_fine(client: TestClient) -> None:
    value = "123456789012345678901234567890"
    assert post_ops(client, [{"op": "set", "path": ["s"], "value": value}]).status_code == 200
    assert client.get("/v1/docs/d").json()["value"] == {"s": value}


# 503


def test_storage_full_is_503(make_client: Callable[..., TestClient]) -> None:
    client = make_client(map_size=1 << 20, max_map_size=1 << 20)
    chunk = "x" * 200_000
    responses = [post_ops(client, [{"op": "set", "path": [f"k{i}"], "value": chunk}]) for i in range(8)]
    full = [r for r in responses if r.status_code == 503]
    assert full, "a 1 MiB map cannot hold 1.6 MB"
    assert_error(full[0], 503, "storage_full")
    assert full[0].headers["retry-after"] == "1"
    assert all(r.status_code in (200, 503) for r in responses)
    assert client.get("/readyz").status_code == 200


def test_overloaded_is_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def overloaded(doc_id: str, ops: Any) -> None:
        raise Overloaded("write queue full")

    monkeypatch.setattr(client.app.state.api.node, "apply", overloaded)  # type: ignore[attr-defined]
    assert_error(post_ops(client, [{"op": "enable", "path": ["f"]}]), 503, "overloaded")
