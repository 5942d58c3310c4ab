"""Replication-facing routes on a node without peers: consistency params, the peer endpoint, admin."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.api.helpers import ADMIN_TOKEN, TestClient, auth_headers


@pytest.mark.parametrize("level", ["one", "local_quorum", "quorum", "all"])
def test_every_level_is_met_by_a_single_node(client: TestClient, level: str) -> None:
    # Without peers this replica is the whole cluster, so every level is reached locally.
    response = client.post(f"/v1/docs/d?w={level}", json={"ops": [{"op": "increment", "path": ["n"]}]})
    assert response.status_code == 200, response.text
    response = client.get(f"/v1/docs/d?r={level}")
    assert response.status_code == 200
    assert response.json()["value"] == {"n": 1}


def test_unknown_levels_are_400(client: TestClient) -> None:
    assert client.get("/v1/docs/d?r=most").json()["error"] == "invalid_request"
    response = client.post("/v1/docs/d?w=2", json={"ops": [{"op": "increment", "path": ["n"]}]})
    assert response.status_code == 400
    assert client.get("/v1/docs/d").status_code == 404  # the rejected write wrote nothing


def test_peer_endpoint_refuses_without_a_replicator(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/v1/peer"):
        pass
    assert info.value.code == 4404


def test_admin_routes_need_the_emulated_wan(client: TestClient) -> None:
    admin = auth_headers(ADMIN_TOKEN)
    response = client.post("/v1/admin/partition", json={"a": "us", "b": "eu"}, headers=admin)
    assert response.status_code == 404
    links = client.get("/v1/admin/links").json()
    assert links["peers"] == [] and links["cut"] is None
