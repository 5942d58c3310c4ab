"""The change feed over the websocket: live, resumable, nothing missed or repeated.

Every write's version (from its POST response) must show up exactly once,
in order, across any pattern of disconnects and resumes. The tests only
ever receive records whose writes were already acknowledged, so no receive
can block.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.websockets import WebSocketDisconnect

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.node import Node, NodeConfig
from tests.api.helpers import RW_TOKEN, TestClient, WebSocketDenialResponse, auth_headers

_ids = itertools.count()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One node for the module: hypothesis examples use fresh document ids instead of fresh nodes."""
    node = Node(NodeConfig(region="feed", data_dir=Path(tmp_path_factory.mktemp("feed")), sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})))
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as client:
        yield client


def write(client: TestClient, doc_id: str, n: int) -> str:
    response = client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "increment", "path": ["n"], "by": n}]})
    assert response.status_code == 200
    return response.json()["version"]


def feed_url(doc_id: str, since: str | None = None) -> str:
    return f"/v1/docs/{doc_id}/changes" + (f"?since={since}" if since else "")


def test_history_then_live(shared: TestClient) -> None:
    doc_id = f"live-{next(_ids)}"
    versions = [write(shared, doc_id, i) for i in range(3)]
    with shared.websocket_connect(feed_url(doc_id)) as ws:
        history = [ws.receive_json() for _ in range(3)]
        versions += [write(shared, doc_id, 10 + i) for i in range(2)]
        live = [ws.receive_json() for _ in range(2)]
    records = history + live
    assert [r["version"] for r in records] == versions
    assert all(r["type"] == "change" for r in records)
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_feed_of_a_document_created_later(shared: TestClient) -> None:
    doc_id = f"later-{next(_ids)}"
    with shared.websocket_connect(feed_url(doc_id)) as ws:
        version = write(shared, doc_id, 1)
        assert ws.receive_json()["version"] == version


def test_resume_from_a_read_version(shared: TestClient) -> None:
    doc_id = f"read-{next(_ids)}"
    for i in range(3):
        write(shared, doc_id, i)
    read_version = shared.get(f"/v1/docs/{doc_id}").json()["version"]
    later = [write(shared, doc_id, 5), write(shared, doc_id, 6)]
    with shared.websocket_connect(feed_url(doc_id, read_version)) as ws:
        got = [ws.receive_json()["version"] for _ in range(2)]
        marker = write(shared, doc_id, 7)
        assert ws.receive_json()["version"] == marker  # nothing extra came before it
    assert got == later


def test_deletes_are_in_the_feed(shared: TestClient) -> None:
    doc_id = f"del-{next(_ids)}"
    write(shared, doc_id, 1)
    with shared.websocket_connect(feed_url(doc_id)) as ws:
        assert ws.receive_json()["type"] == "change"
        assert shared.delete(f"/v1/docs/{doc_id}").status_code == 204
        assert ws.receive_json()["type"] == "delete"


@pytest.mark.parametrize("since", ["garbage", "f1.x.y", "v1.!!!", "f1." + "9" * 300])
def test_bad_since_is_refused_before_the_upgrade(shared: TestClient, since: str) -> None:
    doc_id = f"bad-{next(_ids)}"
    with pytest.raises(WebSocketDenialResponse) as info:
        with shared.websocket_connect(feed_url(doc_id, since)):
            pass
    assert info.value.status_code == 400
    assert info.value.json()["error"] in ("invalid_cursor", "invalid_version")


def test_feed_ends_with_a_normal_close_when_the_node_closes(tmp_path: Path) -> None:
    node = Node(NodeConfig(region="feed", data_dir=tmp_path / "n", sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})))
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as client:
        version = write(client, "d", 1)
        with client.websocket_connect(feed_url("d")) as ws:
            assert ws.receive_json()["version"] == version
            client.portal.call(node.close)  # type: ignore[union-attr]
            with pytest.raises(WebSocketDisconnect) as info:
                ws.receive_json()
    assert info.value.code == 1001


# A session is a list of steps: write k times, or reconnect (resuming from the last cursor seen).
_steps = st.lists(st.one_of(st.integers(min_value=1, max_value=4), st.just("reconnect")), min_size=1, max_size=12)


@given(steps=_steps, initial=st.integers(min_value=0, max_value=3))
def test_resume_misses_and_repeats_nothing(shared: TestClient, steps: list[Any], initial: int) -> None:
    doc_id = f"resume-{next(_ids)}"
    written = [write(shared, doc_id, 100 + i) for i in range(initial)]
    received: list[dict[str, Any]] = []
    cursor: str | None = None
    pending = initial  # acknowledged writes the current connection has not delivered yet
    for step in [*steps, "reconnect"]:
        with shared.websocket_connect(feed_url(doc_id, cursor)) as ws:
            for _ in range(pending):
                received.append(ws.receive_json())
            pending = 0
            if step != "reconnect":
                for i in range(step):
                    written.append(write(shared, doc_id, i + 1))
                # Half the time read them on this connection; otherwise they wait for the resume.
                if step % 2:
                    for _ in range(step):
                        received.append(ws.receive_json())
                else:
                    pending = step
        if received:
            cursor = received[-1]["cursor"]
    assert pending == 0
    assert [r["version"] for r in received] == written
    assert len({r["seq"] for r in received}) == len(received)
