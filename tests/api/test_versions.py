"""Version tokens are sealed to their document: a token of another document, forged or garbage is invalid_version."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.versions import KEY_FILE, version_key
from crdtstore.causal import CausalContext
from crdtstore.errors import InvalidVersion
from crdtstore.node import Node, NodeConfig
from crdtstore.version import encode_version, open_version, seal_version
from tests.api.helpers import RW_TOKEN, TestClient, WebSocketDenialResponse, auth_headers

KEY = bytes(range(32))


def assert_invalid_version(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_version", body
    return body


_NONE: Any = object()


def write_text(client: TestClient, doc_id: str, text: str, version: Any = _NONE) -> httpx.Response:
    op: dict[str, Any] = {"op": "insert", "path": ["t"], "index": 0, "text": text}
    if version is not _NONE:
        op["version"] = version
    return client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "increment", "path": ["n"]}, op]})


def snapshot(client: TestClient, doc_id: str) -> Any:
    return client.get(f"/v1/docs/{doc_id}").json()


# Use.


def test_a_token_of_the_same_document_is_accepted(client: TestClient) -> None:
    first = write_text(client, "a", "world").json()["version"]
    write_text(client, "a", "X")  # an edit the holder of `first` has not seen
    assert write_text(client, "a", "hello ", version=first).status_code == 200
    assert client.get("/v1/docs/a").json()["value"]["t"] == "hello Xworld"


def test_tokens_are_sealed_and_deterministic(client: TestClient) -> None:
    version = write_text(client, "a", "x").json()["version"]
    assert version.startswith("v2.")
    assert client.get("/v1/docs/a").json()["version"] == version
    assert client.get("/v1/docs/a?siblings=true").json()["version"] == version


# Abuse.


def test_a_token_of_another_document_is_refused(client: TestClient) -> None:
    write_text(client, "a", "x")
    write_text(client, "b", "y")
    token_of_a = client.get("/v1/docs/a").json()["version"]
    before = snapshot(client, "b")
    body = assert_invalid_version(write_text(client, "b", "z", version=token_of_a))
    assert body["detail"] == {"op_index": 1}
    assert snapshot(client, "b") == before


def test_the_same_context_on_two_documents_gives_two_tokens() -> None:
    internal = encode_version(CausalContext({"r1": [1, 3]}))
    assert seal_version(internal, "a", KEY) != seal_version(internal, "b", KEY)


@pytest.mark.parametrize(
    "forge",
    [
        # The node's internal form, made by hand.
        lambda token: encode_version(CausalContext({"r-made-up": [1, 100]})),
        # Another context under a real token's tag.
        lambda token: "v2." + encode_version(CausalContext({"r-made-up": [1, 100]}))[3:] + "." + token.rsplit(".")[-1],
        # A real token, one character of its context changed.
        lambda token: token[:5] + ("A" if token[5] != "A" else "B") + token[6:],
        # A real token without its tag, or with a truncated one.
        lambda token: token.rsplit(".", 1)[0],
        lambda token: token[:-1],
        # Garbage.
        lambda token: "not-a-version",
        lambda token: "",
        lambda token: 42,
        lambda token: None,
        lambda token: ["v2."],
        lambda token: "v2." + "A" * (64 * 1024),
    ],
)
def test_forged_and_garbage_tokens_are_invalid_version(client: TestClient, forge: Callable[[str], Any]) -> None:
    """The bug: forged tokens were accepted, garbage ones answered invalid_op (the README says invalid_version)."""
    token = write_text(client, "a", "x").json()["version"]
    before = snapshot(client, "a")
    assert_invalid_version(write_text(client, "a", "y", version=forge(token)))
    assert snapshot(client, "a") == before


def test_a_token_from_a_node_with_another_key_is_refused(make_client: Callable[..., TestClient]) -> None:
    one, other = make_client(), make_client()
    token = write_text(one, "a", "x").json()["version"]
    write_text(other, "a", "x")
    assert_invalid_version(write_text(other, "a", "y", version=token))


def test_a_token_outlives_a_restart_under_the_same_key(tmp_path: Path) -> None:
    def app() -> Any:
        node = Node(NodeConfig(region="k", data_dir=tmp_path / "node", sync=False))
        tokens = TokenStore({RW_TOKEN: Scope.READWRITE})
        return build_app(node, auth=AuthPolicy(tokens=tokens), version_key=version_key(secret=None, data_dir=tmp_path))

    with TestClient(app(), headers=auth_headers(RW_TOKEN)) as client:
        token = write_text(client, "a", "x").json()["version"]
    with TestClient(app(), headers=auth_headers(RW_TOKEN)) as client:
        assert write_text(client, "a", "y", version=token).status_code == 200
        assert client.get("/v1/docs/a").json()["value"]["t"] in ("yx", "xy")


def test_an_edit_against_a_version_this_replica_has_not_received_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """Two regions share the key; a token from the one ahead names text the other lacks: 409, not a wrong spot."""

    def app(name: str) -> Any:
        node = Node(NodeConfig(region=name, data_dir=tmp_path / name, sync=False))
        return build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})), version_key=KEY)

    with (
        TestClient(app("us"), headers=auth_headers(RW_TOKEN)) as us,
        TestClient(app("eu"), headers=auth_headers(RW_TOKEN)) as eu,
    ):
        token = write_text(us, "a", "abc").json()["version"]
        write_text(eu, "a", "z")
        before = snapshot(eu, "a")
        refused = write_text(eu, "a", "y", version=token)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "version_ahead" and refused.json()["detail"]["op_index"] == 1
        assert snapshot(eu, "a") == before
        # A token of its own is read as before.
        assert write_text(eu, "a", "y", version=before["version"]).status_code == 200


# The change feed's since.


def test_feed_since_a_token_of_another_document_is_refused(client: TestClient) -> None:
    write_text(client, "a", "x")
    token_of_a = client.get("/v1/docs/a").json()["version"]
    for since in (token_of_a, encode_version(CausalContext({"r": [1, 2]})), "v2.e30.AAAAAAAAAAAAAAAA"):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect(f"/v1/docs/b/changes?since={since}"):
                pass
        assert denied.value.status_code == 400
        assert denied.value.json()["error"] == "invalid_version"


def test_feed_records_carry_sealed_tokens_that_resume_the_feed(client: TestClient) -> None:
    versions = [write_text(client, "a", str(i)).json()["version"] for i in range(3)]
    with client.websocket_connect("/v1/docs/a/changes") as ws:
        assert [ws.receive_json()["version"] for _ in range(3)] == versions
    with client.websocket_connect(f"/v1/docs/a/changes?since={versions[0]}") as ws:
        assert [ws.receive_json()["version"] for _ in range(2)] == versions[1:]


# Sealing and the key.


@given(
    st.text(min_size=1, max_size=20),
    st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 1000), max_size=3),
    st.data(),
)
def test_seal_opens_only_for_its_document_and_resists_any_one_character_edit(
    doc_id: str, counters: dict[str, int], data: st.DataObject
) -> None:
    internal = encode_version(CausalContext({r: [1, n + 1] for r, n in counters.items()}))
    sealed = seal_version(internal, doc_id, KEY)
    assert open_version(sealed, doc_id, KEY) == internal
    with pytest.raises(InvalidVersion):
        open_version(sealed, doc_id + "x", KEY)
    with pytest.raises(InvalidVersion):
        open_version(sealed, doc_id, bytes(32))
    at = data.draw(st.integers(3, len(sealed) - 1))
    replacement = data.draw(st.sampled_from("AB-_.0z").filter(lambda c: c != sealed[at]))
    with pytest.raises(InvalidVersion):
        open_version(sealed[:at] + replacement + sealed[at + 1 :], doc_id, KEY)


@pytest.mark.parametrize(
    ("token", "doc_id", "key", "sealed"),
    [
        ("v1.e30", "doc", b"k" * 32, "v2.e30.DY_WzivkiHyhPDdm"),
        ("v1.eyJyIjpbMSwyXX0", "\u00e9 \ud800/x", b"\xff" * 32, "v2.eyJyIjpbMSwyXX0.74BXMd1hDMoSlqIV"),
    ],
)
def test_seals_are_pinned(token: str, doc_id: str, key: bytes, sealed: str) -> None:
    """Tokens already handed out stay valid across versions of the code: the tag's bytes are fixed
    (a keyed BLAKE2b-96 over the id's length, the id and the body, computed here by the first
    implementation), however it is computed."""
    assert seal_version(token, doc_id, key) == sealed
    assert open_version(sealed, doc_id, key) == token


def test_key_without_a_secret_is_kept_private_in_the_data_dir(tmp_path: Path) -> None:
    key = version_key(secret=None, data_dir=tmp_path / "new")
    assert len(key) == 32
    assert version_key(secret=None, data_dir=tmp_path / "new") == key
    assert stat.S_IMODE((tmp_path / "new" / KEY_FILE).stat().st_mode) == 0o600
    assert version_key(secret=None, data_dir=tmp_path / "other") != key


def test_key_with_a_secret_is_the_clusters(tmp_path: Path) -> None:
    secret = b"s" * 32
    key = version_key(secret=secret, data_dir=tmp_path / "a")
    assert version_key(secret=secret, data_dir=tmp_path / "b") == key
    assert version_key(secret=b"t" * 32, data_dir=tmp_path / "a") != key
    assert not (tmp_path / "a" / KEY_FILE).exists()


def test_a_damaged_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(ValueError):
        version_key(secret=None, data_dir=tmp_path)
