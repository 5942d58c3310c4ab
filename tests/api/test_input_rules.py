"""Input rules of issue #9 (5): ids that are not UTF-8, repeated JSON keys, and ``-0.0``.

Each use sits next to its abuse: the valid spelling is accepted, the invalid
one is refused with its typed error and changes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crdtstore.api.errors import ApiError
from crdtstore.api.limits import parse_json
from tests.api.helpers import TestClient

JSON = {"content-type": "application/json"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "detail"} and body["error"] == code
    return body


def ids(client: TestClient) -> list[str]:
    return client.get("/v1/docs", params={"limit": "1000"}).json()["ids"]


# Ids that are not UTF-8 once percent-decoded.

BAD_UTF8 = ["%FF", "%C0%AF", "a%FFb", "%ED%A0%80", "%E2%82", "%F8%88%80%80%80"]


@pytest.mark.parametrize("raw", BAD_UTF8)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_percent_encoded_invalid_utf8_ids_are_invalid_id(client: TestClient, raw: str, method: str) -> None:
    body = orjson.dumps({"ops": [{"op": "set", "path": ["a"], "value": 1}]}) if method == "POST" else None
    response = client.request(method, f"/v1/docs/{raw}", content=body, headers=JSON)
    assert_error(response, 400, "invalid_id")
    assert ids(client) == []


def test_invalid_ids_no_longer_collapse_into_one_document(client: TestClient) -> None:
    """The bug: %FF and %C0%AF both decoded to U+FFFD and wrote the same document."""
    for raw in ("%FF", "%C0%AF"):
        response = client.post(f"/v1/docs/{raw}", json={"ops": [{"op": "increment", "path": ["n"]}]})
        assert_error(response, 400, "invalid_id")
    assert client.get("/v1/docs/%EF%BF%BD").status_code == 404


def test_a_real_replacement_character_is_a_valid_id(client: TestClient) -> None:
    response = client.post("/v1/docs/%EF%BF%BDx", json={"ops": [{"op": "set", "path": ["a"], "value": 1}]})
    assert response.status_code == 200, response.text
    assert client.get("/v1/docs/%EF%BF%BDx").json()["id"] == "\ufffdx"
    assert ids(client) == ["\ufffdx"]


@pytest.mark.parametrize("raw", BAD_UTF8)
def test_invalid_utf8_prefix_and_cursor(client: TestClient, raw: str) -> None:
    assert_error(client.get(f"/v1/docs?prefix={raw}"), 400, "invalid_id")
    assert_error(client.get(f"/v1/docs?cursor={raw}"), 400, "invalid_cursor")


def test_replacement_character_prefix_is_fine(client: TestClient) -> None:
    assert client.get("/v1/docs?prefix=%EF%BF%BD").json() == {"ids": [], "cursor": None}


def test_invalid_utf8_id_on_the_change_feed(client: TestClient) -> None:
    from tests.api.helpers import WebSocketDenialResponse

    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/docs/%FF/changes"):
            pass
    assert denied.value.status_code == 400
    assert denied.value.json()["error"] == "invalid_id"


# Repeated keys.

SET = '{"op": "set", "path": ["a"], "value": 1}'
REPEATS = [
    '{"ops": [], "ops": [' + SET + "]}",
    '{"ops": [{"op": "set", "op": "increment", "path": ["a"]}]}',
    '{"ops": [{"op": "set", "path": ["a"], "value": {"k": 1, "k": 2}}]}',
    # Escapes spell the same key differently in the text.
    '{"ops": [' + SET + '], "\\u006fps": []}',
    # A ':' inside a string makes the colon count match the key count of a body with a repeat.
    '{"ops": [{"op": "set", "path": ["a"], "value": {"k": 1, "k": "x:y"}}]}',
]


@pytest.mark.parametrize("body", REPEATS)
def test_repeated_keys_are_malformed_json(client: TestClient, body: str) -> None:
    assert_error(client.post("/v1/docs/d", content=body, headers=JSON), 400, "malformed_json")
    assert ids(client) == []


def test_colons_and_escapes_in_strings_are_not_repeats(client: TestClient) -> None:
    body = '{"ops": [{"op": "set", "path": ["u:r\\u003al"], "value": {"a:b": "c:d", "\\u0061": ":"}}]}'
    response = client.post("/v1/docs/d", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert client.get("/v1/docs/d").json()["value"] == {"u:r:l": {"a:b": "c:d", "a": ":"}}


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.sampled_from('ab:"\\{}[],é'), max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(alphabet="ab:", max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


def _no_negative_zero(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_negative_zero(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_negative_zero(v) for v in value]
    return 0.0 if type(value) is float and value == 0.0 else value


@given(json_values)
def test_parse_json_agrees_with_orjson_on_bodies_without_repeats(value: Any) -> None:
    raw = orjson.dumps(value)
    assert orjson.dumps(parse_json(raw)) == orjson.dumps(_no_negative_zero(orjson.loads(raw)))


@given(st.dictionaries(st.text(alphabet="ab:", max_size=3), json_values, min_size=1, max_size=4), st.data())
@example({"a": 1}, None)
def test_parse_json_refuses_any_repeated_key(value: dict[str, Any], data: st.DataObject | None) -> None:
    key = next(iter(value)) if data is None else data.draw(st.sampled_from(sorted(value)))
    raw = orjson.dumps(value)[:-1] + b"," + orjson.dumps(key) + b":0}"
    with pytest.raises(ApiError) as refused:
        parse_json(raw)
    assert refused.value.code == "malformed_json"


# -0.0


@pytest.mark.parametrize("spelling", ["-0.0", "-0e0", "-0.000E+3", "-0.0e-7"])
def test_negative_zero_reads_as_zero(client: TestClient, spelling: str) -> None:
    value = f'[{spelling}, {{"z": {spelling}}}]'
    body = '{"ops": [{"op": "set", "path": ["r"], "value": ' + value + "}]}"
    assert client.post("/v1/docs/d", content=body, headers=JSON).status_code == 200
    raw = client.get("/v1/docs/d").content
    # The bytes themselves (not the whole body: a version token may hold "-0" in its base64).
    assert b'"value":{"r":[0.0,{"z":0.0}]}' in raw
    assert orjson.loads(raw)["value"] == {"r": [0.0, {"z": 0.0}]}


def test_negative_zero_and_zero_are_one_set_member(client: TestClient) -> None:
    body = '{"ops": [{"op": "add", "path": ["s"], "value": -0.0}, {"op": "add", "path": ["s"], "value": 0.0}]}'
    assert client.post("/v1/docs/d", content=body, headers=JSON).status_code == 200
    assert client.get("/v1/docs/d").json()["value"] == {"s": [0.0]}


def test_negative_numbers_other_than_zero_keep_their_sign(client: TestClient) -> None:
    body = '{"ops": [{"op": "set", "path": ["r"], "value": [-0.5, -0, -1e-300]}]}'
    assert client.post("/v1/docs/d", content=body, headers=JSON).status_code == 200
    assert client.get("/v1/docs/d").json()["value"] == {"r": [-0.5, 0, -1e-300]}


# Query parameters: unknown, repeated or empty ones are refused (schemathesis found each).


@pytest.mark.parametrize(
    "url",
    [
        "/v1/docs?limt=5",
        "/v1/docs?prefix=a&prefix=b",
        "/v1/docs/d?siblings=true&siblings=false",
        "/v1/docs/d?x=1",
    ],
)
def test_unknown_or_repeated_query_parameters_are_400(client: TestClient, url: str) -> None:
    assert_error(client.get(url), 400, "invalid_request")


def test_unknown_query_parameters_on_a_write_change_nothing(client: TestClient) -> None:
    response = client.post("/v1/docs/d?ww=all", json={"ops": [{"op": "set", "path": ["a"], "value": 1}]})
    assert_error(response, 400, "invalid_request")
    assert ids(client) == []


def test_known_query_parameters_still_work(client: TestClient) -> None:
    client.post("/v1/docs/d?w=one", json={"ops": [{"op": "set", "path": ["a"], "value": 1}]})
    assert client.get("/v1/docs/d?siblings=true&r=one").status_code == 200
    assert client.get("/v1/docs?prefix=&limit=5").json() == {"ids": ["d"], "cursor": None}


def test_an_empty_cursor_is_not_a_cursor(client: TestClient) -> None:
    assert_error(client.get("/v1/docs?cursor="), 400, "invalid_cursor")
