"""schemathesis against the served ``/v1/openapi.json``: every check on, zero failures.

The API runs on a real uvicorn server on 127.0.0.1 (with the guarded
protocol of ``serve``), so what is checked is what clients get over the
wire. Examples per operation follow the hypothesis profile (``ci``: quick).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import given, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.connections import ConnectionLimits, guarded_protocol
from crdtstore.api.openapi import openapi_document
from crdtstore.node import Node, NodeConfig
from tests.api.helpers import RW_TOKEN, auth_headers

load_all_checks()
ALL_CHECKS = CHECKS.get_all()
HEADERS = auth_headers(RW_TOKEN)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = Path(tmp_path_factory.mktemp("schemathesis"))
    node = Node(NodeConfig(region="st", data_dir=data, sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})))
    config = uvicorn.Config(
        app, http=guarded_protocol(ConnectionLimits()), lifespan="on", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json", headers=HEADERS, config=CONFIG)


# What JSON Schema cannot say, the checks are told: data that fits the document may still be refused
# for what only the server knows (an id over 256 bytes of UTF-8 in fewer characters, an id '.' or '..',
# an index past the end of a text, a path holding another type, a value nested deeper than 32).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422"]},
            # schemathesis's own list, and 413: a negative body past the server's size limit is refused as too
            # large before its content is read (a generated list of ops can reach megabytes).
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429")
                ]
            },
        },
        # Through the schema's own security scheme, so negative cases that leave the token out really do.
        "auth": {"openapi": {"bearer": {"bearer": RW_TOKEN}}},
    }
)


# Every HTTP operation the document describes (the websocket routes are described, not fuzzed).
_PATHS = openapi_document()["paths"]
OPERATIONS = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode}")
    for path, item in _PATHS.items()
    for method, operation in item.items()
    if method in ("get", "post", "delete") and path not in ("/v1/peer", "/v1/docs/{id}/changes", "/v1/docs/{id}/live")
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Negative data needs something to get wrong: a parameter or a body.
    if mode is GenerationMode.POSITIVE
    or "parameters" in item
    or "parameters" in operation
    or "requestBody" in operation
]


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_the_api_does_what_its_openapi_document_says(
    api_schema: Any, base_url: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    statuses: set[int] = set()

    # A third of the profile's examples: 18 operations of HTTP round trips stay within a minute under ci.
    @settings(max_examples=max(1, settings.default.max_examples // 3))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        statuses.add(case.call_and_validate(base_url=base_url, checks=ALL_CHECKS).status_code)

    check()
    if mode is GenerationMode.POSITIVE and operation.definition.raw.get("security") != []:
        assert statuses - {401}, "every request was refused: the token never reached the server"
