"""A connection's checked Authorization header is remembered, and nothing but that exact header is let through by it.

Unit tests of :meth:`AuthPolicy.remember` / :meth:`AuthPolicy.recall`, then
the same over real sockets (a uvicorn server with the guarded protocol in a
thread), where the per-connection state exists.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.connections import ConnectionLimits, guarded_protocol
from crdtstore.api.errors import ApiError
from crdtstore.node import Node, NodeConfig
from tests.api.helpers import READ_TOKEN, RW_TOKEN
from tests.api.test_connections import WAIT, read_response

RW_HEADER = f"Bearer {RW_TOKEN}".encode()
READ_HEADER = f"Bearer {READ_TOKEN}".encode()


class CountingStore(TokenStore):
    """A token store that counts its (hashing) lookups."""

    def __init__(self) -> None:
        super().__init__({RW_TOKEN: Scope.READWRITE, READ_TOKEN: Scope.READ})
        self.lookups = 0

    def scope_of(self, token: str) -> Scope | None:
        self.lookups += 1
        return super().scope_of(token)


def checked(policy: AuthPolicy, memo: dict[object, object], header: bytes, needed: Scope) -> Scope:
    """What the routes do: recall, else check in full and remember."""
    if policy.recall(memo, header, needed):
        return needed
    granted = policy.authorize(header.decode("latin-1"), None, needed)
    policy.remember(memo, header, granted)
    return granted


def test_a_remembered_header_is_not_looked_up_again() -> None:
    store = CountingStore()
    policy = AuthPolicy(tokens=store)
    memo: dict[object, object] = {}
    assert not policy.recall(memo, RW_HEADER, Scope.READ)  # nothing remembered yet
    checked(policy, memo, RW_HEADER, Scope.READ)
    assert store.lookups == 1
    for needed in (Scope.READ, Scope.READWRITE, Scope.READ):
        assert policy.recall(memo, RW_HEADER, needed)
    assert store.lookups == 1


def test_a_remembered_scope_is_still_checked_against_each_route() -> None:
    policy = AuthPolicy(tokens=CountingStore())
    memo: dict[object, object] = {}
    checked(policy, memo, READ_HEADER, Scope.READ)
    with pytest.raises(ApiError) as info:
        policy.recall(memo, READ_HEADER, Scope.READWRITE)
    assert info.value.status == 403
    with pytest.raises(ApiError) as info:
        policy.recall(memo, READ_HEADER, Scope.ADMIN)
    assert info.value.status == 403


@given(other=st.binary(max_size=80))
def test_no_other_header_is_recalled(other: bytes) -> None:
    """Abuse: whatever else a connection sends after a good header (a prefix, one byte more, the scheme in
    another case, junk) is not let through by the memo, and is checked in full."""
    policy = AuthPolicy(tokens=CountingStore())
    memo: dict[object, object] = {}
    checked(policy, memo, RW_HEADER, Scope.READ)
    if other != RW_HEADER:
        assert not policy.recall(memo, other, Scope.READ)


@pytest.mark.parametrize(
    "other",
    [
        RW_HEADER[:-1],
        RW_HEADER + b"x",
        RW_HEADER.replace(b"Bearer", b"bearer"),
        b"Bearer wrong-token-0123456789ab",
        b"",
    ],
)
def test_near_misses_of_a_remembered_header_are_refused_in_full(other: bytes) -> None:
    policy = AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE}))
    memo: dict[object, object] = {}
    checked(policy, memo, RW_HEADER, Scope.READ)
    assert not policy.recall(memo, other, Scope.READ)
    if other.lower() != RW_HEADER.lower():  # "bearer" is the same scheme: that one is valid in full
        with pytest.raises(ApiError) as info:
            checked(policy, memo, other, Scope.READ)
        assert info.value.status == 401
    assert policy.recall(memo, RW_HEADER, Scope.READ)  # a refused header does not evict the good one


def test_a_memo_of_another_policy_is_not_trusted() -> None:
    """A header another policy checked (another app, other tokens) is checked again under this one."""
    theirs = AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE}))
    ours = AuthPolicy(tokens=TokenStore({READ_TOKEN: Scope.READ}))
    memo: dict[object, object] = {}
    checked(theirs, memo, RW_HEADER, Scope.READWRITE)
    assert not ours.recall(memo, RW_HEADER, Scope.READ)
    with pytest.raises(ApiError) as info:
        checked(ours, memo, RW_HEADER, Scope.READ)
    assert info.value.status == 401


def test_junk_under_the_memo_key_is_not_trusted() -> None:
    policy = AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE}))
    memo: dict[object, object] = {"crdtstore.auth.checked": (policy, RW_HEADER, Scope.ADMIN)}
    assert not policy.recall(memo, RW_HEADER, Scope.READ)


# Over real sockets: the listener's per-connection state.


class Served:
    def __init__(self, port: int, store: CountingStore) -> None:
        self.port = port
        self.store = store

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)

    def status(self, sock: socket.socket, method: str, path: str, token: str | None) -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: t\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        body = b'{"ops":[{"op":"set","path":["a"],"value":1}]}' if method == "POST" else b""
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        return int(read_response(sock).split(b" ")[1])


@contextmanager
def serving(tmp_path: Path) -> Iterator[Served]:
    store = CountingStore()
    node = Node(NodeConfig(region="memo", data_dir=tmp_path / "node", sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=store))
    limits = ConnectionLimits(max_connections=16, reserve=2, header_timeout=60, body_timeout=60)
    config = uvicorn.Config(app, http=guarded_protocol(limits), lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(int(WAIT / 0.02)):
            if server.started:
                break
            threading.Event().wait(0.02)
        assert server.started
        yield Served(sock.getsockname()[1], store)
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive()


def test_a_connection_hashes_its_token_once(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        first, second = served.connect(), served.connect()
        try:
            assert served.status(first, "POST", "/v1/docs/d", RW_TOKEN) == 200
            for _ in range(5):
                assert served.status(first, "GET", "/v1/docs/d", RW_TOKEN) == 200
            assert served.store.lookups == 1
            assert served.status(second, "GET", "/v1/docs/d", RW_TOKEN) == 200
            assert served.store.lookups == 2  # the memo is the connection's, not the app's
        finally:
            first.close()
            second.close()


def test_a_connection_cannot_ride_on_a_token_it_sent_before(tmp_path: Path) -> None:
    """Abuse: after a good token, the same connection's requests with a wrong token, none, or a read token
    on a write route are refused as they would be on a fresh connection; the good token still works after."""
    with serving(tmp_path) as served:
        sock = served.connect()
        try:
            assert served.status(sock, "POST", "/v1/docs/d", RW_TOKEN) == 200
            assert served.status(sock, "GET", "/v1/docs/d", "wrong-token-0123456789abcdef") == 401
            assert served.status(sock, "GET", "/v1/docs/d", RW_TOKEN + "x") == 401
            assert served.status(sock, "GET", "/v1/docs/d", None) == 401
            assert served.status(sock, "GET", "/v1/docs/d", READ_TOKEN) == 200
            assert served.status(sock, "POST", "/v1/docs/d", READ_TOKEN) == 403
            assert served.status(sock, "POST", "/v1/docs/d", RW_TOKEN) == 200
        finally:
            sock.close()
