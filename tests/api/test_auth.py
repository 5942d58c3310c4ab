"""Tokens: file and environment formats, scopes, anonymous access, the websocket query token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crdtstore.api.auth import (
    AuthPolicy,
    Scope,
    TokenFileError,
    TokenStore,
    generate_token,
    parse_env_tokens,
    parse_token_file,
)
from crdtstore.api.errors import ApiError
from tests.api.helpers import READ_TOKEN, RW_TOKEN, TestClient, WebSocketDenialResponse, auth_headers

A = "a" * 16
B = "b-_.~+/=" * 2


def test_token_file_format() -> None:
    text = f"# comment\n\n  {A}   read\n{B}\treadwrite  \n"
    assert parse_token_file(text) == {A: Scope.READ, B: Scope.READWRITE}


@pytest.mark.parametrize(
    "text",
    [f"{A}", f"{A} read extra", f"{A} superuser", "short read", f"{A}! read", f"{'x' * 257} read"],
)
def test_bad_token_file_lines_fail_at_load(text: str) -> None:
    with pytest.raises(TokenFileError) as info:
        parse_token_file(text)
    assert A not in str(info.value)  # a token is never echoed


def test_env_format() -> None:
    assert parse_env_tokens(f"{A}:read, {B}:READWRITE,") == {A: Scope.READ, B: Scope.READWRITE}
    with pytest.raises(TokenFileError):
        parse_env_tokens(A)


def test_store_loads_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{A} read\n")
    store = TokenStore.load(path, env={"CRDTSTORE_TOKENS": f"{B}:readwrite"})
    assert store.scope_of(A) is Scope.READ
    assert store.scope_of(B) is Scope.READWRITE
    assert store.scope_of(A + "x") is None
    assert store.scope_of("") is None
    assert len(TokenStore.load(None, env={})) == 0


def test_generated_tokens_are_valid_and_distinct() -> None:
    tokens = {generate_token() for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert parse_token_file(f"{token} read") == {token: Scope.READ}


def test_generated_tokens_can_follow_a_command_line_flag() -> None:
    # Regression: a url-safe base64 token began with "-" once in 64, and
    # `crdtstore status --token TOKEN` then read it as an option.
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    for _ in range(200):
        token = generate_token()
        assert len(bytes.fromhex(token)) == 32  # still 256 bits
        assert parser.parse_args(["--token", token]).token == token


def test_policy_scopes() -> None:
    policy = AuthPolicy(tokens=TokenStore({A: Scope.READ, B: Scope.READWRITE}))
    assert policy.authorize(f"Bearer {B}", None, Scope.READWRITE) is Scope.READWRITE
    assert policy.authorize(f"bearer   {A} ", None, Scope.READ) is Scope.READ
    with pytest.raises(ApiError) as info:
        policy.authorize(f"Bearer {A}", None, Scope.READWRITE)
    assert info.value.status == 403
    for header in (None, "", "Bearer", f"Token {B}", f"Bearer {B}x"):
        with pytest.raises(ApiError) as info:
            policy.authorize(header, None, Scope.READ)
        assert info.value.status == 401
    # The header wins over a query token: a bad header is not rescued by ?token=.
    with pytest.raises(ApiError):
        policy.authorize("Bearer wrong-token-xxxxxxxx", B, Scope.READ)
    assert policy.authorize(None, B, Scope.READ) is Scope.READWRITE


def test_anonymous_scope(make_client: Callable[..., TestClient]) -> None:
    anon = make_client(token=None, anonymous=Scope.READ)
    assert anon.get("/v1/docs").status_code == 200
    # Anonymous callers may authenticate to get more: 401, not 403.
    assert anon.post("/v1/docs/d", json={"ops": []}).status_code == 401
    # A wrong token is still refused even where anonymous access is on.
    assert anon.get("/v1/docs", headers=auth_headers("w" * 20)).status_code == 401


def test_anonymous_is_off_by_default(make_client: Callable[..., TestClient]) -> None:
    anon = make_client(token=None)
    for path in ("/v1/docs", "/v1/docs/d", "/v1/openapi.json", "/metrics"):
        assert anon.get(path).status_code == 401, path
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/readyz").status_code == 200


def test_query_token_only_for_websockets(make_client: Callable[..., TestClient]) -> None:
    anon = make_client(token=None)
    assert anon.get("/v1/docs", params={"token": RW_TOKEN}).status_code == 401
    assert anon.post("/v1/docs/d", json={"ops": [{"op": "enable", "path": ["f"]}]}, headers=auth_headers(RW_TOKEN))
    with anon.websocket_connect(f"/v1/docs/d/changes?token={READ_TOKEN}") as ws:
        assert ws.receive_json()["type"] == "change"


def test_websocket_without_token_is_denied_with_the_json_error(make_client: Callable[..., TestClient]) -> None:
    anon = make_client(token=None)
    with pytest.raises(WebSocketDenialResponse) as info:
        with anon.websocket_connect("/v1/docs/d/changes"):
            pass
    assert info.value.status_code == 401
    assert info.value.json()["error"] == "unauthorized"
    with pytest.raises(WebSocketDenialResponse) as info:
        with anon.websocket_connect("/v1/docs/d/changes?token=" + "z" * 20):
            pass
    assert info.value.status_code == 401


def test_websocket_bad_id_is_denied_before_the_upgrade(make_client: Callable[..., TestClient]) -> None:
    reader = make_client(token=READ_TOKEN)
    with pytest.raises(WebSocketDenialResponse) as info:
        with reader.websocket_connect("/v1/docs/%01/changes"):
            pass
    assert info.value.status_code == 400
    assert info.value.json()["error"] == "invalid_id"
