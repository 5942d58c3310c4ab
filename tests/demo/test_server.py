"""The demo server without a browser or a cluster: what it hands the page, and what it refuses to forward."""

from __future__ import annotations

import base64
import json
import re

import pytest

from demo_app.server import DemoSettings, build_demo_app, static_dir, vector_of
from tests.api.helpers import TestClient

SETTINGS = DemoSettings(
    regions={"us": "http://127.0.0.1:9", "eu": "http://127.0.0.1:9"},  # port 9: nothing answers
    token="rw-token",
    read_token="read-token",
    admin_token="admin-token",
    wan="http://127.0.0.1:9",
    latency=0.05,
)


@pytest.fixture
def client() -> TestClient:
    return TestClient(build_demo_app(SETTINGS))


def test_config_hands_the_page_regions_and_tokens_but_not_the_admin_token(client: TestClient) -> None:
    answer = client.get("/demo/config.json")
    assert answer.status_code == 200
    body = answer.json()
    assert body["regions"] == {"us": "http://127.0.0.1:9", "eu": "http://127.0.0.1:9"}
    assert body["tokens"] == {"readwrite": "rw-token", "read": "read-token"}
    assert "admin-token" not in answer.text


def test_the_page_is_served_with_a_query_kept(client: TestClient) -> None:
    answer = client.get("/?region=eu&board=x", follow_redirects=False)
    assert answer.status_code in (302, 307)
    assert answer.headers["location"] == "/static/index.html?region=eu&board=x"
    page = client.get("/static/index.html")
    assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text


@pytest.mark.parametrize("auth", [None, "Bearer read-token", "Bearer admin-token", "Bearer rw-token2", "rw-token"])
def test_wan_actions_need_the_read_write_token(client: TestClient, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    answer = client.post("/demo/wan/isolate", json={"region": "us"}, headers=headers)
    assert answer.status_code == 403


def test_wan_forwards_only_its_three_actions(client: TestClient) -> None:
    headers = {"Authorization": "Bearer rw-token"}
    assert client.post("/demo/wan/wan", json={}, headers=headers).status_code == 404
    assert client.post("/demo/wan/..%2Fv1%2Fdocs%2Fx", json={}, headers=headers).status_code == 404
    assert client.post("/demo/wan/heal", content=b"x" * 5000, headers=headers).status_code == 413
    # A real action is forwarded; nothing listens on port 9, which shows as 502, not as a crash.
    assert client.post("/demo/wan/heal", json={}, headers=headers).status_code == 502


@pytest.mark.parametrize("doc", ["", "a/b", "../v1/admin/links", "x?siblings=1", "a b", "x" * 201, "a..b"])
def test_document_ids_that_could_change_the_forwarded_path_are_refused(client: TestClient, doc: str) -> None:
    assert client.get("/demo/siblings", params={"region": "us", "doc": doc}).status_code == 400
    assert client.get("/demo/cluster", params={"doc": doc}).status_code == 400


def test_siblings_of_an_unknown_region_are_refused(client: TestClient) -> None:
    assert client.get("/demo/siblings", params={"region": "mars", "doc": "board"}).status_code == 400


def test_cluster_reports_regions_that_do_not_answer_as_down(client: TestClient) -> None:
    body = client.get("/demo/cluster", params={"doc": "board-1"}).json()
    assert set(body["regions"]) == {"us", "eu"}
    assert all(state["up"] is False and state["error"] for state in body["regions"].values())


def _token(ranges: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(ranges).encode()).rstrip(b"=").decode()
    return f"v2.{body}.tag"


def test_vector_of_a_version_token() -> None:
    assert vector_of(_token({"us-1": [1, 7], "eu-1": [1, 3, 5, 6]})) == {"us-1": 7, "eu-1": 3}
    assert vector_of(_token({"ap-1": [3, 4]})) == {}  # nothing held from the start: no contiguous prefix


@pytest.mark.parametrize("garbage", ["", "v2", "v2.!!!.x", "v2." + "A" * 7 + ".x", _token([1, 2]), _token({"a": "b"})])
def test_vector_of_garbage_is_empty_not_an_error(garbage: str) -> None:
    assert vector_of(garbage) == {}


def test_static_files_ship_with_the_package_and_import_only_each_other() -> None:
    root = static_dir()
    names = {path.name for path in root.iterdir()}
    assert {"index.html", "style.css", "app.js", "live.js", "rebase.js", "panel.js"} <= names
    for script in root.glob("*.js"):
        for target in re.findall(r'^import .* from "\./([\w.]+)";$', script.read_text(), flags=re.M):
            assert target in names, f"{script.name} imports {target}, which is not shipped"
        # No build step and no network: every import is a sibling module.
        assert not re.search(r'from "(?!\./)', script.read_text())


def test_an_unreachable_region_read_is_a_502(client: TestClient) -> None:
    answer = client.get("/demo/siblings", params={"region": "us", "doc": "board"})
    assert answer.status_code == 502 and answer.json()["error"] == "unreachable"
