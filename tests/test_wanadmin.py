"""The emulated WAN's admin API: cut, isolate and heal by region, admin tokens only, bad input changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.wanadmin import build_wan_admin_app
from sync.io.wanproxy import WanController
from tests.api.helpers import TestClient

ADMIN = "admin-token-0123456789abcdef"
RW = "rw-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def wan() -> WanController:
    return WanController(["us", "eu", "ap"])  # never started: the admin API only flips link states


@pytest.fixture
def client(wan: WanController) -> Iterator[TestClient]:
    tokens = TokenStore({ADMIN: Scope.ADMIN, RW: Scope.READWRITE, READ: Scope.READ})
    with TestClient(build_wan_admin_app(wan, auth=AuthPolicy(tokens=tokens)), headers=bearer(ADMIN)) as client:
        yield client


def test_partition_isolate_heal(client: TestClient, wan: WanController) -> None:
    assert client.post("/v1/admin/partition", json={"a": "us", "b": "eu"}).json() == {"cut": [["eu", "us"]]}
    assert wan.links[("us", "eu")].is_cut and wan.links[("eu", "us")].is_cut
    assert not wan.links[("us", "ap")].is_cut
    answer = client.post("/v1/admin/isolate", json={"region": "ap", "mode": "hold"}).json()
    assert answer == {"cut": [["ap", "eu"], ["ap", "us"], ["eu", "us"]]}
    assert client.post("/v1/admin/heal", json={"a": "eu", "b": "us"}).json() == {"cut": [["ap", "eu"], ["ap", "us"]]}
    assert client.post("/v1/admin/heal").json() == {"cut": []}  # no body: every link
    shown = client.get("/v1/admin/wan", headers=bearer(READ)).json()
    assert shown["regions"] == ["us", "eu", "ap"] and shown["cut"] == [] and len(shown["links"]) == 6


@pytest.mark.parametrize("token", [RW, READ])
def test_only_admin_tokens_change_links(client: TestClient, wan: WanController, token: str) -> None:
    for path, body in (
        ("/v1/admin/partition", {"a": "us", "b": "eu"}),
        ("/v1/admin/isolate", {"region": "us"}),
        ("/v1/admin/heal", {}),
    ):
        response = client.post(path, json=body, headers=bearer(token))
        assert response.status_code == 403 and response.json()["detail"] == {"needed": "admin"}
    assert client.post("/v1/admin/isolate", json={"region": "us"}, headers={"Authorization": ""}).status_code == 401
    assert wan.cut_pairs() == []


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/admin/partition", {"a": "us", "b": "us"}, 400),
        ("/v1/admin/partition", {"a": "us", "b": "mars"}, 404),
        ("/v1/admin/partition", {"a": "us"}, 400),
        ("/v1/admin/partition", {"a": "us", "b": "eu", "mode": "drop"}, 400),
        ("/v1/admin/partition", ["us", "eu"], 400),
        ("/v1/admin/isolate", {"region": 7}, 400),
        ("/v1/admin/isolate", {}, 400),
        ("/v1/admin/heal", {"a": "us"}, 400),
    ],
)
def test_bad_requests_change_nothing(
    client: TestClient, wan: WanController, path: str, body: object, status: int
) -> None:
    wan.partition("ap", "eu")
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert wan.cut_pairs() == [("ap", "eu")]


def test_malformed_and_oversized_bodies(client: TestClient, wan: WanController) -> None:
    headers = {"Content-Type": "application/json"}
    assert client.post("/v1/admin/partition", content=b"{not json", headers=headers).status_code == 400
    assert client.post("/v1/admin/partition", content=b"x" * 5000, headers=headers).status_code == 413
    text = {"Content-Type": "text/plain"}
    assert client.post("/v1/admin/isolate", content=b'{"region": "us"}', headers=text).status_code == 415
    assert wan.cut_pairs() == []


def test_a_partition_cuts_every_replica_pair_between_the_regions() -> None:
    members = {"us-0": "us", "us-1": "us", "eu-0": "eu", "eu-1": "eu", "ap-0": "ap"}
    wan = WanController(["us", "eu", "ap"], members=members)
    tokens = TokenStore({ADMIN: Scope.ADMIN, READ: Scope.READ})
    with TestClient(build_wan_admin_app(wan, auth=AuthPolicy(tokens=tokens)), headers=bearer(ADMIN)) as client:
        assert client.post("/v1/admin/partition", json={"a": "us", "b": "eu"}).json() == {"cut": [["eu", "us"]]}
        cut = sorted(pair for pair, link in wan.links.items() if link.is_cut)
        assert cut == sorted((x, y) for x in ("us-0", "us-1", "eu-0", "eu-1") for y in ("us-0", "us-1", "eu-0", "eu-1")
                             if x[:2] != y[:2])  # fmt: skip
        shown = client.get("/v1/admin/wan", headers=bearer(READ)).json()
        assert shown["members"] == members and len(shown["links"]) == len(wan.links)
        # A replica's name is not a region: 404, and nothing changes.
        response = client.post("/v1/admin/partition", json={"a": "us-0", "b": "ap"})
        assert response.status_code == 404 and wan.cut_pairs() == [("eu", "us")]
