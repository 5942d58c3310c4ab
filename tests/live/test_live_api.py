"""``/v1/docs/{id}/live``: batches and acks, pushed patches, resume, presence; and their abuse."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from crdtstore import codec
from crdtstore.api import live
from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.live_batches import NodeLedger
from crdtstore.causal import CausalContext
from crdtstore.document import Document
from crdtstore.node import Node, NodeConfig
from crdtstore.patches import apply_patches
from crdtstore.version import decode_version, encode_version, open_version, seal_version
from tests.api.helpers import READ_TOKEN, RW_TOKEN, TestClient, WebSocketDenialResponse, auth_headers

_ids = itertools.count()
TOKENS = TokenStore({RW_TOKEN: Scope.READWRITE, READ_TOKEN: Scope.READ})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    node = Node(NodeConfig(region="live", data_dir=Path(tmp_path_factory.mktemp("live")), sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TOKENS))
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as c:
        yield c


@contextlib.contextmanager
def without_default_token(client: TestClient) -> Iterator[TestClient]:
    saved = client.headers.pop("authorization")
    try:
        yield client
    finally:
        client.headers["authorization"] = saved


def fresh() -> str:
    return f"live-{next(_ids)}"


def url(doc_id: str, **query: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"/v1/docs/{doc_id}/live" + (f"?{q}" if q else "")


def receive_until(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message = ws.receive_json()
        if message["type"] == kind:
            return message


def test_batch_is_acked_after_its_own_change(client: TestClient) -> None:
    doc_id = fresh()
    with client.websocket_connect(url(doc_id)) as ws:
        hello = ws.receive_json()
        assert hello == {"type": "snapshot", "version": hello["version"], "value": {}}
        ws.send_json({"type": "batch", "id": "b1", "ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "hi"}]})
        change = ws.receive_json()
        assert change["type"] == "change" and change["batch"] == "b1" and change["origin"] == "local"
        assert change["patches"] == [{"path": ["t"], "value": "hi"}]
        ack = ws.receive_json()
        assert ack == {"type": "ack", "id": "b1", "version": change["version"], "reached": 1, "needed": 1}
    assert client.get(f"/v1/docs/{doc_id}").json()["version"] == ack["version"]


def test_changes_made_elsewhere_are_pushed_as_patches(client: TestClient) -> None:
    doc_id = fresh()
    client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "abc"}]})
    with client.websocket_connect(url(doc_id)) as a, client.websocket_connect(url(doc_id)) as b:
        value = a.receive_json()["value"]
        assert b.receive_json()["value"] == {"t": "abc"}
        b.send_json({"type": "batch", "id": "x", "ops": [{"op": "delete", "path": ["t"], "index": 1, "count": 1}]})
        client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": ">"}]})
        for _ in range(2):
            change = receive_until(a, "change")
            assert "batch" not in change
            apply_patches(value, change["patches"])
        assert value == {"t": ">ac"} == client.get(f"/v1/docs/{doc_id}").json()["value"]


def test_batch_with_a_version_edits_the_spot_the_client_saw(client: TestClient) -> None:
    doc_id = fresh()
    first = client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "ab"}]})
    seen = first.json()["version"]
    client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "XYZ"}]})
    with client.websocket_connect(url(doc_id)) as ws:
        ws.receive_json()
        ops = [{"op": "insert", "path": ["t"], "index": 1, "text": "-"}]
        ws.send_json({"type": "batch", "id": "v", "ops": ops, "version": seen})
        receive_until(ws, "ack")
    assert client.get(f"/v1/docs/{doc_id}").json()["value"] == {"t": "XYZa-b"}


def test_a_rejected_batch_names_the_op_and_changes_nothing(client: TestClient) -> None:
    doc_id = fresh()
    with client.websocket_connect(url(doc_id)) as ws:
        ws.receive_json()
        ops = [{"op": "set", "path": ["a"], "value": 1}, {"op": "insert", "path": ["t"], "index": 5, "text": "x"}]
        ws.send_json({"type": "batch", "id": "bad", "ops": ops})
        error = ws.receive_json()
        assert error["type"] == "error" and error["id"] == "bad"
        assert error["error"] == "index_out_of_range" and error["detail"]["op_index"] == 1
    assert client.get(f"/v1/docs/{doc_id}").status_code == 404


def test_a_resent_batch_id_is_acked_again_and_applied_once(client: TestClient) -> None:
    doc_id = fresh()
    batch = {"type": "batch", "id": "same", "ops": [{"op": "increment", "path": ["n"]}]}
    with client.websocket_connect(url(doc_id)) as ws:
        ws.receive_json()
        ws.send_json(batch)
        first = receive_until(ws, "ack")
    with client.websocket_connect(url(doc_id, version=first["version"])) as ws:
        ws.send_json(batch)
        again = ws.receive_json()  # no snapshot: the client holds this version already
        assert again == {
            "type": "ack",
            "id": "same",
            "version": first["version"],
            "reached": 1,
            "needed": 1,
            "again": True,
        }
    assert client.get(f"/v1/docs/{doc_id}").json()["value"] == {"n": 1}


class _CutAfterCommit:
    """The node, except that a write, once committed, waits for the test to cut the connection."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.committed = threading.Event()
        self.cut = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    async def apply_once(self, doc_id: str, ops: list[dict[str, Any]], key: bytes, **hooks: Any) -> Any:
        import anyio

        outcome = await NodeLedger(self.node, keep=100).apply_once(doc_id, ops, key, **hooks)
        self.committed.set()
        await anyio.to_thread.run_sync(self.cut.wait)
        return outcome


def test_a_cut_between_commit_and_ack_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    proxy = _CutAfterCommit(Node(NodeConfig(region="cut", data_dir=tmp_path, sync=False)))
    app = build_app(proxy, auth=AuthPolicy(tokens=TOKENS))  # type: ignore[arg-type]
    batch = {"type": "batch", "id": "once", "ops": [{"op": "increment", "path": ["n"], "by": 5}]}
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as c:
        with c.websocket_connect(url("d")) as ws:
            ws.receive_json()
            ws.send_json(batch)
            assert proxy.committed.wait(10)
        # The connection is gone; the write is durable and its ack was never sent.
        assert c.get("/v1/docs/d").json()["value"] == {"n": 5}
        proxy.cut.set()
        with c.websocket_connect(url("d")) as ws:
            assert ws.receive_json()["value"] == {"n": 5}
            ws.send_json(batch)
            ack = receive_until(ws, "ack")
            assert ack["id"] == "once" and ack["again"] is True
        response = c.get("/v1/docs/d").json()
        assert response["value"] == {"n": 5}
        assert ack["version"] == response["version"]


class _HoldBeforeCommit:
    """The node, except that a live batch waits for the test before it is written."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    async def _hold(self) -> None:
        import anyio

        if self.entered.is_set():
            return  # only the first write is held
        self.entered.set()
        await anyio.to_thread.run_sync(self.release.wait, 30)

    async def apply(self, doc_id: str, ops: list[dict[str, Any]]) -> Any:
        await self._hold()
        return await self.node.apply(doc_id, ops)

    async def apply_once(self, doc_id: str, ops: list[dict[str, Any]], key: bytes, **hooks: Any) -> Any:
        await self._hold()
        return await NodeLedger(self.node, keep=100).apply_once(doc_id, ops, key, **hooks)


def test_a_write_from_elsewhere_is_pushed_while_a_live_batch_is_in_flight(tmp_path: Path) -> None:
    # Regression: the channel held every local commit until no live batch was in flight (it waited to
    # learn whether the commit was one of theirs), so a POST under steady typing was never pushed.
    proxy = _HoldBeforeCommit(Node(NodeConfig(region="hold", data_dir=tmp_path, sync=False)))
    app = build_app(proxy, auth=AuthPolicy(tokens=TOKENS))  # type: ignore[arg-type]
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as c:
        with c.websocket_connect(url("d")) as ws, c.websocket_connect(url("d")) as other:
            ws.receive_json()
            other.receive_json()
            ws.send_json({"type": "batch", "id": "held", "ops": [{"op": "increment", "path": ["n"]}]})
            assert proxy.entered.wait(10)
            assert c.post("/v1/docs/d", json={"ops": [{"op": "set", "path": ["k"], "value": 1}]}).status_code == 200
            other.send_json({"type": "presence", "state": {"name": "o"}})
            first = ws.receive_json()
            proxy.release.set()
            assert first["type"] == "change" and first["patches"] == [{"path": ["k"], "value": 1}]
            assert "batch" not in first
            assert ws.receive_json()["type"] == "presence"
            assert receive_until(ws, "ack")["id"] == "held"


def test_a_change_from_another_region_is_pushed_before_this_region_has_made_it_durable(tmp_path: Path) -> None:
    """It is durable at its origin already: waiting for this region's fsync would only add to its latency.
    Its feed record, once durable here, pushes nothing more."""
    node = Node(NodeConfig(region="here", data_dir=tmp_path))  # fsync on: the meta flush is the syncer's
    app = build_app(node, auth=AuthPolicy(tokens=TOKENS))
    gate = threading.Event()
    peer = Document()
    delta = codec.encode_delta(
        peer.apply([{"op": "insert", "path": ["t"], "index": 0, "text": "hi"}], replica="there-p.1.n")
    )
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as c, c.websocket_connect(url("d")) as ws:
        ws.receive_json()
        flush = node.storage.sync_meta

        def held_flush() -> None:
            gate.wait(10)
            flush()

        node.storage.sync_meta = held_flush  # type: ignore[method-assign]
        try:
            assert c.portal is not None
            applying = c.portal.start_task_soon(node.apply_remote, "there-p.1.n", 1, "d", delta)
            change = ws.receive_json()
            assert (change["type"], change["origin"], change["patches"]) == (
                "change",
                "remote",
                [{"path": ["t"], "value": "hi"}],
            )
            assert not applying.done()  # this region's flush is still held
        finally:
            gate.set()
        assert applying.result(10) is True
        ws.send_json({"type": "batch", "id": "b", "ops": [{"op": "insert", "path": ["t"], "index": 2, "text": "!"}]})
        assert ws.receive_json()["batch"] == "b"  # nothing came between: the remote record's feed entry was a no-op
        assert ws.receive_json()["type"] == "ack"
        assert c.get("/v1/docs/d").json()["value"] == {"t": "hi!"}


def test_a_peer_change_the_node_refuses_is_never_shown_early(tmp_path: Path) -> None:
    """Abuse: a peer sends dots under this replica's own id (forged). The node skips the delta and
    quarantines the document; the live channel must not have shown it in the meantime."""
    node = Node(NodeConfig(region="here", data_dir=tmp_path))
    app = build_app(node, auth=AuthPolicy(tokens=TOKENS))
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as c, c.websocket_connect(url("d")) as ws:
        ws.receive_json()
        assert c.portal is not None
        insert = [{"op": "insert", "path": ["t"], "index": 0, "text": "forged"}]
        forged = codec.encode_delta(Document().apply(insert, replica=node.replica_id))
        assert c.portal.call(node.apply_remote, "there-p.1.n", 1, "d", forged) is True  # received, skipped
        assert [q.doc_id for q in node.quarantined()] == ["d"]
        # The document's next peer deltas wait for its repair; a local write still goes through.
        c.post("/v1/docs/d", json={"ops": [{**insert[0], "text": "ok"}]})
        change = ws.receive_json()  # the first thing pushed is the local change: the forged one never was
        assert change["patches"] == [{"path": ["t"], "value": "ok"}]


def test_a_restart_between_commit_and_ack_forgets_no_batch_id(tmp_path: Path) -> None:
    # The batch commits, then the node stops before the ack: the id was recorded with the write,
    # so the resend to the restarted node is acknowledged again, not applied a second time.
    proxy = _CutAfterCommit(Node(NodeConfig(region="restart", data_dir=tmp_path, sync=False)))
    batch = {"type": "batch", "id": "once", "ops": [{"op": "increment", "path": ["n"], "by": 5}]}
    with TestClient(build_app(proxy, auth=AuthPolicy(tokens=TOKENS)), headers=auth_headers(RW_TOKEN)) as c:  # type: ignore[arg-type]
        with c.websocket_connect(url("d")) as ws:
            ws.receive_json()
            ws.send_json(batch)
            assert proxy.committed.wait(10)
        proxy.cut.set()
    restarted = Node(NodeConfig(region="restart", data_dir=tmp_path, sync=False))
    with TestClient(build_app(restarted, auth=AuthPolicy(tokens=TOKENS)), headers=auth_headers(RW_TOKEN)) as c:
        assert c.get("/v1/docs/d").json()["value"] == {"n": 5}
        with c.websocket_connect(url("d")) as ws:
            assert ws.receive_json()["value"] == {"n": 5}
            ws.send_json(batch)
            ack = receive_until(ws, "ack")
            assert ack["id"] == "once" and ack["again"] is True
            # A new id from the same client is a new batch.
            ws.send_json(batch | {"id": "twice"})
            assert "again" not in receive_until(ws, "ack")
        response = c.get("/v1/docs/d").json()
        assert response["value"] == {"n": 10}


def test_a_resend_to_a_restarted_node_is_acked_again_not_applied_again(tmp_path: Path) -> None:
    batch = {"type": "batch", "id": "b1", "ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "hi"}]}
    for attempt in range(2):
        node = Node(NodeConfig(region="restart", data_dir=tmp_path, sync=False))
        with TestClient(build_app(node, auth=AuthPolicy(tokens=TOKENS)), headers=auth_headers(RW_TOKEN)) as c:
            with c.websocket_connect(url("d")) as ws:
                ws.receive_json()
                ws.send_json(batch)
                ack = receive_until(ws, "ack")
            assert ack.get("again", False) is (attempt == 1)
            assert c.get("/v1/docs/d").json()["value"] == {"t": "hi"}


def test_a_batch_id_is_per_token_across_a_restart(tmp_path: Path) -> None:
    # Another token's batch of the same id is its own batch: it cannot replay (or suppress) someone else's.
    node = Node(NodeConfig(region="restart", data_dir=tmp_path, sync=False))
    batch = {"type": "batch", "id": "b1", "ops": [{"op": "increment", "path": ["n"]}]}
    tokens = TokenStore({RW_TOKEN: Scope.READWRITE, "other-token-0123456789": Scope.READWRITE})
    with TestClient(build_app(node, auth=AuthPolicy(tokens=tokens)), headers=auth_headers(RW_TOKEN)) as c:
        with c.websocket_connect(url("d")) as ws:
            ws.receive_json()
            ws.send_json(batch)
            receive_until(ws, "ack")
    node = Node(NodeConfig(region="restart", data_dir=tmp_path, sync=False))
    with TestClient(build_app(node, auth=AuthPolicy(tokens=tokens))) as c:
        with c.websocket_connect(url("d", token="other-token-0123456789")) as ws:
            ws.receive_json()
            ws.send_json(batch)
            assert "again" not in receive_until(ws, "ack")
        assert c.get("/v1/docs/d", headers=auth_headers(RW_TOKEN)).json()["value"] == {"n": 2}


def test_a_read_token_follows_and_sends_presence_but_cannot_write(client: TestClient) -> None:
    doc_id = fresh()
    with client.websocket_connect(url(doc_id), headers=auth_headers(READ_TOKEN)) as reader:
        reader.receive_json()
        with client.websocket_connect(url(doc_id)) as writer:
            writer.receive_json()
            reader.send_json({"type": "presence", "state": {"name": "r", "caret": 0}})
            seen = receive_until(writer, "presence")
            assert seen["state"] == {"name": "r", "caret": 0}
            reader.send_json({"type": "batch", "id": "w", "ops": [{"op": "increment", "path": ["n"]}]})
            error = receive_until(reader, "error")
            assert error["id"] == "w" and error["error"] == "forbidden"
            writer.send_json({"type": "batch", "id": "ok", "ops": [{"op": "increment", "path": ["n"]}]})
            assert receive_until(reader, "change")["patches"] == [{"path": ["n"], "value": 1}]
        # The writer left: its presence goes with it.
        reader.send_json({"type": "presence", "state": None})
    assert client.get(f"/v1/docs/{doc_id}").json()["value"] == {"n": 1}


def test_presence_expires_when_the_connection_closes(client: TestClient) -> None:
    doc_id = fresh()
    with client.websocket_connect(url(doc_id)) as watcher:
        watcher.receive_json()
        with client.websocket_connect(url(doc_id)) as editor:
            editor.receive_json()
            editor.send_json({"type": "presence", "state": {"caret": 3}})
            client_id = receive_until(watcher, "presence")["client"]
        gone = receive_until(watcher, "presence")
        assert gone == {"type": "presence", "client": client_id, "state": None}


@pytest.mark.parametrize(
    "headers, query",
    [({}, {}), ({"Authorization": "Bearer forged"}, {}), ({}, {"token": "forged"}), ({"Authorization": "Basic x"}, {})],
)
def test_unauthenticated_or_forged_tokens_are_refused_before_the_upgrade(
    client: TestClient, headers: dict[str, str], query: dict[str, str]
) -> None:
    with without_default_token(client), pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect(url(fresh(), **query), headers=headers):
            pass
    assert denied.value.status_code == 401


def test_a_query_token_is_accepted_as_on_the_feed(client: TestClient) -> None:
    with without_default_token(client), client.websocket_connect(url(fresh(), token=READ_TOKEN)) as ws:
        assert ws.receive_json()["type"] == "snapshot"


def test_a_version_of_another_document_is_refused(client: TestClient) -> None:
    other = fresh()
    version = client.post(f"/v1/docs/{other}", json={"ops": [{"op": "increment", "path": ["n"]}]}).json()["version"]
    for bad in (version, "v2.forged", "c1.2"):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect(url(fresh(), version=bad)):
                pass
        assert denied.value.status_code == 400
    with client.websocket_connect(url(fresh())) as ws:
        ws.receive_json()
        ws.send_json({"type": "resume", "version": version})
        assert ws.receive_json()["error"] == "invalid_version"


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", "malformed_json"),
        ("[1]", "invalid_request"),
        ('{"type": "nope"}', "invalid_request"),
        ('{"type": "batch", "ops": []}', "invalid_request"),
        ('{"type": "batch", "id": "x", "ops": [1]}', "invalid_op"),
        ('{"type": "batch", "id": "x", "ops": [], "extra": 1}', "invalid_request"),
        ('{"type": "batch", "id": "x", "ops": [], "w": "most"}', "invalid_request"),
        ('{"type": "batch", "id": "x", "ops": [{"op": "insert", "path": ["t"], "index": 0}]}', "invalid_op"),
        ('{"type": "batch", "id": "x", "ops": [], "version": "v2.forged"}', "invalid_version"),
        ('{"type": "presence", "state": "' + "x" * 2000 + '"}', "too_large"),
        ('{"type": "presence"}', "invalid_request"),
    ],
)
def test_garbage_gets_a_typed_error_and_changes_nothing(client: TestClient, frame: str, code: str) -> None:
    doc_id = fresh()
    with client.websocket_connect(url(doc_id)) as ws:
        ws.receive_json()
        ws.send_text(frame)
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"] == code
        # Still open and working.
        ws.send_json({"type": "batch", "id": "after", "ops": [{"op": "increment", "path": ["n"]}]})
        assert receive_until(ws, "ack")["id"] == "after"
    assert client.get(f"/v1/docs/{doc_id}").json()["value"] == {"n": 1}


def test_an_oversized_frame_closes_with_1009(client: TestClient) -> None:
    with client.websocket_connect(url(fresh())) as ws:
        ws.receive_json()
        ws.send_text("x" * (4 << 20 + 1))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009


def test_a_presence_flood_is_rate_limited(client: TestClient) -> None:
    doc_id = fresh()
    with client.websocket_connect(url(doc_id)) as ws:
        ws.receive_json()
        for i in range(40):
            ws.send_json({"type": "presence", "state": {"caret": i}})
        error = ws.receive_json()
        assert error["error"] == "rate_limited"


def test_a_batch_flood_is_refused_past_the_queue(tmp_path: Path) -> None:
    node = Node(NodeConfig(region="flood", data_dir=tmp_path, sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TOKENS))
    live.configure(app.state.api, live.LiveSettings(batch_queue=1))
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as c, c.websocket_connect(url("d")) as ws:
        ws.receive_json()
        for i in range(50):
            ws.send_json({"type": "batch", "id": f"b{i}", "ops": [{"op": "increment", "path": ["n"]}]})
        acked, refused = set(), set()
        while len(acked) + len(refused) < 50:
            message = ws.receive_json()
            if message["type"] == "ack":
                acked.add(message["id"])
            elif message["type"] == "error":
                assert message["error"] == "overloaded"
                refused.add(message["id"])
        assert refused
        assert c.get("/v1/docs/d").json()["value"] == {"n": len(acked)}


def test_a_batch_waits_for_its_w_level(client: TestClient) -> None:
    doc_id = fresh()
    with client.websocket_connect(url(doc_id)) as ws:
        ws.receive_json()
        # A node without peers is the whole cluster: every level is met here.
        ws.send_json({"type": "batch", "id": "q", "ops": [{"op": "increment", "path": ["n"]}], "w": "all"})
        ack = receive_until(ws, "ack")
        assert (ack["id"], ack["reached"], ack["needed"]) == ("q", 1, 1)
        ws.send_json({"type": "batch", "id": "o", "ops": [{"op": "increment", "path": ["n"]}]})
        ack = receive_until(ws, "ack")
        assert (ack["id"], ack["reached"], ack["needed"]) == ("o", 1, 1)


def test_resuming_from_an_older_version_gets_a_snapshot(client: TestClient) -> None:
    doc_id = fresh()
    old = client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "increment", "path": ["n"]}]}).json()["version"]
    new = client.post(f"/v1/docs/{doc_id}", json={"ops": [{"op": "increment", "path": ["n"]}]}).json()["version"]
    with client.websocket_connect(url(doc_id, version=old)) as ws:
        assert ws.receive_json() == {"type": "snapshot", "version": new, "value": {"n": 2}}
        ws.send_json({"type": "resume", "version": old})
        assert ws.receive_json()["type"] == "snapshot"


def test_a_batch_against_a_version_this_region_never_receives_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """Abuse (or a region that lost what it showed in a crash): the wait is bounded, then ``version_ahead``."""
    node = Node(NodeConfig(region="ahead", data_dir=tmp_path, sync=False))
    app = build_app(node, auth=AuthPolicy(tokens=TOKENS))
    live.configure(app.state.api, live.LiveSettings(version_wait=0.2))
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as c:
        c.post("/v1/docs/d", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "ab"}]})
        here = decode_version(open_version(c.get("/v1/docs/d").json()["version"], "d", app.state.api.version_key))
        here.join(CausalContext({"elsewhere.1.x": [1, 4]}))
        ahead = seal_version(encode_version(here), "d", app.state.api.version_key)
        with c.websocket_connect(url("d")) as ws:
            ws.receive_json()
            edit = {"op": "insert", "path": ["t"], "index": 1, "text": "X"}
            ws.send_json({"type": "batch", "id": "b", "ops": [edit], "version": ahead})
            error = receive_until(ws, "error")
            assert (error["id"], error["error"], error["status"]) == ("b", "version_ahead", 409)
            # The connection goes on: a batch against what is here applies.
            ws.send_json({"type": "batch", "id": "c", "ops": [edit]})
            assert receive_until(ws, "ack")["id"] == "c"
        assert c.get("/v1/docs/d").json()["value"] == {"t": "aXb"}
