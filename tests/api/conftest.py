"""Fixtures for API tests: a real Node on tmp_path behind the Starlette app, called in-process."""

from __future__ import annotations

import faulthandler
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.limits import Limits
from crdtstore.node import Node, NodeConfig
from tests.api.helpers import ADMIN_TOKEN, READ_TOKEN, RW_TOKEN, TestClient, auth_headers


@pytest.fixture(autouse=True)
def time_bound() -> Iterator[None]:
    """No API test may hang the suite: dump every stack and exit if one runs for minutes."""
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Build apps over real nodes (one data dir each); every client is closed (and its node) at teardown."""
    opened: list[TestClient] = []

    def make(
        *,
        token: str | None = RW_TOKEN,
        public_metrics: bool = False,
        anonymous: Scope | None = None,
        limits: Limits | None = None,
        **node_options: Any,
    ) -> TestClient:
        data = tmp_path / f"node{len(opened)}"
        node = Node(NodeConfig(region="test", data_dir=data, sync=False, **node_options))
        tokens = TokenStore({RW_TOKEN: Scope.READWRITE, READ_TOKEN: Scope.READ, ADMIN_TOKEN: Scope.ADMIN})
        app = build_app(
            node, auth=AuthPolicy(tokens=tokens, public_metrics=public_metrics, anonymous=anonymous), limits=limits
        )
        client = TestClient(app, headers=auth_headers(token) if token else {})
        client.__enter__()  # runs the lifespan: the node starts here
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """A read-write client of a fresh node."""
    return make_client()
