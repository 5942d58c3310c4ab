"""The admin scope, and the quorum timeout as a setting and per request (``?timeout=``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore, parse_token_file
from crdtstore.config import SETTINGS, ConfigError, resolve
from crdtstore.node import Node, NodeConfig
from crdtstore.server import build_server_app
from sync.quorum import Level, QuorumOutcome, required
from tests.api.helpers import ADMIN_TOKEN, READ_TOKEN, RW_TOKEN, TestClient, auth_headers

NO_FLAGS = {s.name: None for s in SETTINGS}
OPS = {"ops": [{"op": "increment", "path": ["n"]}]}
PAIR = {"a": "us", "b": "eu"}


def test_admin_includes_readwrite_and_read(make_client: Callable[..., TestClient]) -> None:
    client = make_client(token=ADMIN_TOKEN)
    assert client.post("/v1/docs/d", json=OPS).status_code == 200
    assert client.get("/v1/docs/d").json()["value"] == {"n": 1}
    assert client.get("/v1/admin/links").status_code == 200
    # Past the scope check: this node has no emulated WAN, so 404, not 403.
    assert client.post("/v1/admin/partition", json=PAIR).status_code == 404


@pytest.mark.parametrize("path", ["/v1/admin/partition", "/v1/admin/heal"])
def test_readwrite_and_read_tokens_cannot_change_links(make_client: Callable[..., TestClient], path: str) -> None:
    client = make_client(token=None)
    for token in (RW_TOKEN, READ_TOKEN):
        response = client.post(path, json=PAIR, headers=auth_headers(token))
        assert response.status_code == 403
        assert response.json()["detail"] == {"needed": "admin"}
    assert client.post(path, json=PAIR).status_code == 401


def test_read_token_cannot_write(make_client: Callable[..., TestClient]) -> None:
    client = make_client(token=READ_TOKEN)
    assert client.post("/v1/docs/d", json=OPS).status_code == 403
    assert client.get("/v1/docs/d").status_code == 404  # nothing was written


def test_anonymous_access_is_never_admin() -> None:
    with pytest.raises(ValueError):
        AuthPolicy(anonymous=Scope.ADMIN)
    with pytest.raises(ConfigError):
        resolve(NO_FLAGS | {"anonymous": "admin"}, env={})


def test_token_files_of_two_scopes_keep_their_meaning() -> None:
    a, b, c = "a" * 20, "b" * 20, "c" * 20
    assert parse_token_file(f"{a} read\n{b} readwrite\n{c} ADMIN\n") == {
        a: Scope.READ,
        b: Scope.READWRITE,
        c: Scope.ADMIN,
    }


# The quorum timeout.


def test_quorum_timeout_setting_spellings_and_bounds(tmp_path: Path) -> None:
    assert resolve(NO_FLAGS, env={}).quorum_timeout == 5.0
    assert resolve(NO_FLAGS | {"quorum_timeout": "2.5"}, env={}).quorum_timeout == 2.5
    assert resolve(NO_FLAGS, env={"CRDTSTORE_QUORUM_TIMEOUT": "7"}).quorum_timeout == 7.0
    toml = tmp_path / "c.toml"
    toml.write_text("quorum_timeout = 60\n")
    assert resolve(NO_FLAGS, env={}, config_file=toml).quorum_timeout == 60.0
    for bad in ("0", "-1", "60.5", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match="quorum-timeout"):
            resolve(NO_FLAGS | {"quorum_timeout": bad}, env={})


def test_quorum_timeout_reaches_the_replicator(tmp_path: Path) -> None:
    config = resolve(NO_FLAGS | {"data": str(tmp_path / "d"), "quorum_timeout": "1.5"}, env={})
    app = build_server_app(config, env={"CRDTSTORE_CLUSTER_SECRET": "s" * 20})
    assert app.state.api.replicator.settings.quorum_timeout == 1.5


class RecordingReplicator:
    """A replicator of a 3-replica cluster whose peers never answer; it records the timeouts it is given."""

    cluster_size = 3

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def _outcome(self, level: Level) -> QuorumOutcome:
        needed = required(level, replicas=self.cluster_size, local_replicas=1).total
        return QuorumOutcome(needed=needed, reached=1, replicas=("me",))

    async def read(self, doc_id: str, level: Level, *, timeout: float | None = None) -> QuorumOutcome:
        self.timeouts.append(timeout)
        return self._outcome(level)

    async def wait_for_acks(self, doc_id: str, level: Level, **kwargs: Any) -> QuorumOutcome:
        self.timeouts.append(kwargs.get("timeout"))
        return self._outcome(level)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture
def quorum_client(tmp_path: Path) -> Any:
    node = Node(NodeConfig(region="test", data_dir=tmp_path / "n", sync=False))
    replicator = RecordingReplicator()
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})), replicator=replicator)
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as client:
        yield client, replicator


def test_timeout_per_request_reaches_the_quorum_wait(quorum_client: Any) -> None:
    client, replicator = quorum_client
    response = client.post("/v1/docs/d?w=quorum&timeout=0.25", json=OPS)
    assert response.status_code == 504 and response.json()["detail"]["durable_locally"] is True
    assert client.get("/v1/docs/d?r=all&timeout=60").status_code == 504
    assert client.get("/v1/docs/d?r=quorum").status_code == 504
    assert replicator.timeouts == [0.25, 60.0, None]  # None: the node's quorum_timeout


@pytest.mark.parametrize("bad", ["0", "-1", "60.01", "nan", "inf", "1e999", "", "1s", "0x10"])
def test_bad_timeouts_are_400_and_write_nothing(quorum_client: Any, bad: str) -> None:
    client, replicator = quorum_client
    response = client.post(f"/v1/docs/d?w=quorum&timeout={bad}", json=OPS)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request" and response.json()["detail"]["max"] == 60.0
    assert client.get(f"/v1/docs/d?r=quorum&timeout={bad}").status_code == 400
    assert client.get("/v1/docs/d").status_code == 404  # the refused write changed nothing
    assert replicator.timeouts == []  # no quorum wait started
    repeated = client.post("/v1/docs/d?w=quorum&timeout=1&timeout=2", json=OPS)
    assert repeated.status_code == 400 and client.get("/v1/docs/d").status_code == 404
