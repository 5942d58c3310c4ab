"""The routes against a real node: documents, listing, probes, metrics, OpenAPI."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from starlette.routing import Route, WebSocketRoute

from crdtstore.api.openapi import openapi_document
from crdtstore.api.routes import routes
from tests.api.helpers import READ_TOKEN, TestClient, auth_headers


def doc_url(doc_id: str) -> str:
    return "/v1/docs/" + quote(doc_id, safe="")


def test_apply_creates_then_updates(client: TestClient) -> None:
    first = client.post(doc_url("d"), json={"ops": [{"op": "set", "path": ["title"], "value": "hello"}]})
    assert first.status_code == 200
    assert first.json()["created"] is True
    second = client.post(doc_url("d"), json={"ops": [{"op": "increment", "path": ["views"], "by": 3}]})
    assert second.json()["created"] is False
    assert second.json()["version"] != first.json()["version"]

    read = client.get(doc_url("d")).json()
    assert read == {"id": "d", "value": {"title": "hello", "views": 3}, "version": second.json()["version"]}


def test_read_with_siblings_adds_the_register_lists(client: TestClient) -> None:
    client.post(doc_url("d"), json={"ops": [{"op": "set", "path": ["a"], "value": 1}]})
    plain = client.get(doc_url("d")).json()
    assert "siblings" not in plain
    full = client.get(doc_url("d"), params={"siblings": "true"}).json()
    assert full["siblings"] == {"a": [1]}
    assert full["value"] == plain["value"]


def test_batch_is_atomic(client: TestClient) -> None:
    client.post(doc_url("d"), json={"ops": [{"op": "set", "path": ["a"], "value": 1}]})
    before = client.get(doc_url("d")).json()
    bad = [{"op": "set", "path": ["b"], "value": 2}, {"op": "increment", "path": ["a"]}]
    assert client.post(doc_url("d"), json={"ops": bad}).status_code == 409
    assert client.get(doc_url("d")).json() == before


def test_delete_then_recreate(client: TestClient) -> None:
    client.post(doc_url("d"), json={"ops": [{"op": "set", "path": ["a"], "value": 1}]})
    assert client.delete(doc_url("d")).status_code == 204
    assert client.get(doc_url("d")).status_code == 404
    assert client.delete(doc_url("d")).status_code == 404
    again = client.post(doc_url("d"), json={"ops": [{"op": "set", "path": ["b"], "value": 2}]})
    assert again.json()["created"] is True
    assert client.get(doc_url("d")).json()["value"] == {"b": 2}


def test_ids_with_reserved_url_characters_round_trip(client: TestClient) -> None:
    ids = ["a b", "q?x=1", "frag#1", "100%", "é", "😀", "x" * 256, ":colon;semi", "." + "x", "..."]
    for doc_id in ids:
        assert client.post(doc_url(doc_id), json={"ops": [{"op": "set", "path": ["id"], "value": doc_id}]}).is_success
    for doc_id in ids:
        body = client.get(doc_url(doc_id)).json()
        assert body["id"] == doc_id and body["value"] == {"id": doc_id}
    listed = client.get("/v1/docs", params={"limit": 1000}).json()["ids"]
    assert sorted(listed) == sorted(ids)


def test_listing_pages_cover_the_prefix_once_in_byte_order(client: TestClient) -> None:
    wanted = [f"user:{i:03d}" for i in range(23)] + ["user:é", "user:z"]
    for doc_id in [*wanted, "other:1", "use"]:
        client.post(doc_url(doc_id), json={"ops": [{"op": "enable", "path": ["on"]}]})
    seen: list[str] = []
    cursor = None
    for _ in range(20):  # bounded: 25 ids / 4 per page
        params = {"prefix": "user:", "limit": "4"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/docs", params=params).json()
        assert len(page["ids"]) <= 4
        seen += page["ids"]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == sorted(wanted, key=lambda s: s.encode())


def test_listing_defaults_and_empty(client: TestClient) -> None:
    assert client.get("/v1/docs").json() == {"ids": [], "cursor": None}
    assert client.get("/v1/docs", params={"prefix": "nothing"}).json() == {"ids": [], "cursor": None}


def test_probes_are_anonymous(make_client: Callable[..., TestClient]) -> None:
    anon = make_client(token=None)
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_is_503_until_the_node_started(tmp_path) -> None:
    from crdtstore.api.app import build_app
    from crdtstore.api.auth import AuthPolicy
    from crdtstore.node import Node, NodeConfig

    app = build_app(Node(NodeConfig(region="t", data_dir=tmp_path / "n")), auth=AuthPolicy())
    not_started = TestClient(app)  # no `with`: the lifespan does not run
    response = not_started.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "not_ready"
    assert not_started.get("/healthz").status_code == 200


def test_metrics_use_route_templates(client: TestClient) -> None:
    for doc_id in ("m1", "m2", "m3"):
        client.post(doc_url(doc_id), json={"ops": [{"op": "increment", "path": ["n"]}]})
    client.get(doc_url("missing"))
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'crdtstore_http_requests_total{method="POST",route="/v1/docs/{id}",status="200"} 3.0' in text
    assert 'crdtstore_http_requests_total{method="GET",route="/v1/docs/{id}",status="404"} 1.0' in text
    assert 'route="<unmatched>"' in text
    assert "m1" not in text and "/no/such/route" not in text
    assert "crdtstore_documents 3.0" in text
    assert "crdtstore_lmdb_map_bytes" in text and "crdtstore_lmdb_used_bytes" in text
    batches = _sample(text, "crdtstore_commit_batch_size_sum")
    assert batches >= 3  # every acknowledged write was in some observed commit
    assert _sample(text, "crdtstore_commit_duration_seconds_count") >= 1


def test_metrics_need_read_scope_unless_public(make_client: Callable[..., TestClient]) -> None:
    private = make_client(token=None)
    assert private.get("/metrics").status_code == 401
    assert private.get("/metrics", headers=auth_headers(READ_TOKEN)).status_code == 200
    public = make_client(token=None, public_metrics=True)
    assert public.get("/metrics").status_code == 200


def test_openapi_describes_exactly_the_routes(client: TestClient) -> None:
    served = client.get("/v1/openapi.json").json()
    assert served == openapi_document()
    assert served["openapi"].startswith("3.1")
    app_routes: set[tuple[str, str]] = set()
    for route in routes(client.app.state.api):
        if isinstance(route, Route) and not route.include_in_schema:
            continue
        if isinstance(route, WebSocketRoute):
            app_routes.add((route.path, "get"))  # a websocket is an upgraded GET
        elif isinstance(route, Route):
            app_routes |= {(route.path, m.lower()) for m in route.methods or () if m != "HEAD"}
    documented = {(path, method) for path, item in served["paths"].items() for method in item if method != "parameters"}
    assert documented == app_routes


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")
