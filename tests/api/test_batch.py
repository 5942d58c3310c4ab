"""``POST /v1/batch``: many documents in one request, each atomic, answered per document.

Each use comes with its abuse: a refused request or document must change
nothing, and one bad document must not change any other's outcome (the
differential property at the end checks the batch against single writes).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.batch import DocumentGate, gate_of
from crdtstore.api.errors import ApiError
from crdtstore.api.limits import Limits, parse_json
from crdtstore.api.openapi import openapi_document
from crdtstore.client import AsyncClient, Client
from crdtstore.config import SETTINGS, resolve
from crdtstore.node import DocumentNotFound, Node, NodeConfig
from sync.quorum import Level, QuorumOutcome, required
from tests.api.helpers import READ_TOKEN, RW_TOKEN, TestClient, auth_headers

URL = "/v1/batch"
SET = [{"op": "set", "path": ["a"], "value": 1}]
DEEP: Any = 1
for _ in range(33):
    DEEP = [DEEP]


def docs_body(*entries: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"docs": [{"id": doc_id, "ops": ops} for doc_id, ops in entries]}


def stored_ids(client: TestClient) -> list[str]:
    ids: list[str] = client.get("/v1/docs", params={"limit": 1000}, headers=auth_headers(RW_TOKEN)).json()["ids"]
    return ids


def value_of(client: TestClient, doc_id: str) -> Any:
    response = client.get(f"/v1/docs/{doc_id}")
    return response.json()["value"] if response.status_code == 200 else response.status_code


# Use: the documents apply, each answered as a single write would be.


def test_every_document_applies_and_answers_its_version(client: TestClient) -> None:
    entries = [(f"d{i}", [{"op": "increment", "path": ["n"], "by": i}]) for i in range(10)]
    response = client.post(URL, json=docs_body(*entries))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [f"d{i}" for i in range(10)]  # request order
    for i, result in enumerate(results):
        assert result["status"] == 200 and result["created"] is True
        read = client.get(f"/v1/docs/d{i}").json()
        assert read["value"] == {"n": i} and read["version"] == result["version"]
    again = client.post(URL, json=docs_body(("d0", SET), ("new", SET))).json()["results"]
    assert [r["created"] for r in again] == [False, True]
    assert value_of(client, "d0") == {"n": 0, "a": 1}


def test_a_documents_ops_apply_in_order_and_may_carry_its_version(client: TestClient) -> None:
    first = client.post(URL, json=docs_body(("t", [{"op": "insert", "path": ["t"], "index": 0, "text": "ac"}])))
    version = first.json()["results"][0]["version"]
    client.post("/v1/docs/t", json={"ops": [{"op": "insert", "path": ["t"], "index": 0, "text": "zz"}]})
    ops = [
        {"op": "insert", "path": ["t"], "index": 1, "text": "b", "version": version},  # between a and c, as seen
        {"op": "increment", "path": ["n"]},
    ]
    result = client.post(URL, json=docs_body(("t", ops))).json()["results"][0]
    assert result["status"] == 200
    assert value_of(client, "t") == {"t": "zzabc", "n": 1}


def test_the_documents_share_group_commits(client: TestClient) -> None:
    writer = client.app.state.api.node.writer  # type: ignore[attr-defined]
    before = writer.stats()["commits"]
    response = client.post(URL, json=docs_body(*((f"g{i}", SET) for i in range(100))))
    assert all(r["status"] == 200 for r in response.json()["results"])
    # One commit per document would be 100: the documents were queued together, not one after another.
    assert writer.stats()["commits"] - before < 50


def test_a_batch_is_one_writer_request(client: TestClient) -> None:
    writer = client.app.state.api.node.writer  # type: ignore[attr-defined]
    before = writer.stats()["requests"]
    response = client.post(URL, json=docs_body(*((f"w{i}", SET) for i in range(100))))
    assert all(r["status"] == 200 for r in response.json()["results"])
    # Node.apply_many: one queue slot and one future for the 100 documents, not one each.
    assert writer.stats()["requests"] - before == 1


def test_ids_are_json_strings_not_url_encoded(client: TestClient) -> None:
    ids = ["a b", "q?x=1", "100%", "%41", "é", "😀", "x" * 256]
    response = client.post(URL, json=docs_body(*((i, SET) for i in ids)))
    assert [r["status"] for r in response.json()["results"]] == [200] * len(ids)
    assert sorted(stored_ids(client)) == sorted(ids)


# Abuse: one bad document is refused alone and changes nothing.


@pytest.mark.parametrize(
    ("ops", "status", "code"),
    [
        ([{"op": "frobnicate", "path": ["a"]}], 400, "invalid_op"),
        ([{"op": "set", "value": 1}], 400, "invalid_op"),
        ([{"op": "insert", "path": ["t"], "index": 5, "text": "x"}], 400, "index_out_of_range"),
        ([{"op": "increment", "path": ["x"]}, {"op": "set", "path": ["x"], "value": 1}], 409, "type_mismatch"),
        ([{"op": "set", "path": ["x"], "value": 2**70}], 422, "invalid_value"),
        ([{"op": "set", "path": ["x"], "value": -(2**63) - 1}], 422, "invalid_value"),
        ([{"op": "set", "path": ["x"], "value": "s" * ((1 << 20) + 1)}], 422, "invalid_value"),
        ([{"op": "set", "path": ["x"], "value": {"k" * 257: 1}}], 422, "invalid_value"),
        ([{"op": "set", "path": ["k" * 257], "value": 1}], 400, "invalid_op"),
        ([{"op": "set", "path": ["x"], "value": DEEP}], 422, "invalid_value"),
        ([{"op": "insert", "path": ["t"], "index": 0, "text": "x", "version": "v2.forged"}], 400, "invalid_version"),
        ([], 400, "invalid_op"),
        ("not a list", 400, "invalid_request"),
        (["not an op"], 400, "invalid_op"),
        ([{"op": "enable", "path": ["f"]}] * 10_001, 400, "invalid_op"),
    ],
)
def test_a_bad_document_is_refused_alone(client: TestClient, ops: Any, status: int, code: str) -> None:
    client.post("/v1/docs/bad", json={"ops": [{"op": "set", "path": ["keep"], "value": 0}]})
    before = client.get("/v1/docs/bad").json()
    response = client.post(URL, json=docs_body(("ok1", SET), ("bad", ops), ("ok2", SET)))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, status, 200], results[1]
    assert results[1]["error"] == code and results[1]["id"] == "bad"
    assert set(results[1]) == {"id", "status", "error", "message", "detail"}
    assert client.get("/v1/docs/bad").json() == before  # changed nothing, version included
    assert value_of(client, "ok1") == value_of(client, "ok2") == {"a": 1}
    # The same document alone answers the same way on the single-write route.
    single = client.post("/v1/docs/bad", json={"ops": ops})
    assert (single.status_code, single.json()["error"]) == (status, code)


def test_the_error_names_the_op(client: TestClient) -> None:
    ops = [{"op": "set", "path": ["a"], "value": 1}, {"op": "increment", "path": ["a"]}]
    result = client.post(URL, json=docs_body(("d", ops))).json()["results"][0]
    assert result["status"] == 409 and result["detail"]["op_index"] == 1
    assert value_of(client, "d") == 404  # the first op did not apply either: the document's batch is atomic


@pytest.mark.parametrize("bad_id", ["", ".", "..", "a/b", "a\\b", "tab\there", "\x7f", "x" * 257, "é" * 129])
def test_a_bad_id_is_refused_alone(client: TestClient, bad_id: str) -> None:
    results = client.post(URL, json=docs_body((bad_id, SET), ("ok", SET))).json()["results"]
    assert [(r["status"], r.get("error")) for r in results] == [(400, "invalid_id"), (200, None)]
    assert results[0]["id"] == bad_id
    assert stored_ids(client) == ["ok"]


def test_unknown_fields_in_an_entry_refuse_that_document(client: TestClient) -> None:
    body = {"docs": [{"id": "a", "ops": SET, "w": "all"}, {"id": "b", "ops": SET}]}
    results = client.post(URL, json=body).json()["results"]
    assert [(r["status"], r.get("error")) for r in results] == [(400, "invalid_request"), (200, None)]
    assert results[0]["detail"] == {"fields": ["w"]}
    assert stored_ids(client) == ["b"]


def test_regression_an_entry_without_ops_is_answered_alone_and_the_schema_allows_it(client: TestClient) -> None:
    # Found by schemathesis: the OpenAPI document required "ops" in an entry, so an entry without it was
    # schema-invalid, yet (rightly) answered per document in a 200. The schema now requires only "id".
    results = client.post(URL, json={"docs": [{"id": "a"}, {"id": "b", "ops": SET}]}).json()["results"]
    assert [(r["status"], r.get("error")) for r in results] == [(400, "invalid_request"), (200, None)]
    entry = openapi_document()["components"]["schemas"]["BatchEntry"]
    assert entry["required"] == ["id"] and entry["properties"]["ops"] == {}


def test_a_document_over_its_size_limit_is_refused_alone(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_document_bytes=4096)
    big = [{"op": "insert", "path": ["t"], "index": 0, "text": "x" * 8000}]
    results = client.post(URL, json=docs_body(("big", big), ("small", SET))).json()["results"]
    assert [(r["status"], r.get("error")) for r in results] == [(413, "document_too_large"), (200, None)]
    assert results[0]["detail"]["limit"] == 4096
    assert stored_ids(client) == ["small"]


def test_a_body_that_cannot_be_parsed_exactly_is_refused_whole(client: TestClient) -> None:
    # Past 200 levels the body cannot be parsed a second time for its big integer: a rounded float must not slip in.
    deep = "[" * 250 + "]" * 250
    raw = '{"docs": [{"id": "a", "ops": [{"op": "set", "path": ["x"], "value": 123456789012345678901}]},'
    raw += '{"id": "b", "ops": [{"op": "set", "path": ["x"], "value": ' + deep + "}]}]}"
    response = client.post(URL, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"] == "invalid_value"
    assert stored_ids(client) == []


def test_big_integers_stay_exact_or_are_refused_per_document() -> None:
    raw = b'{"a": 9223372036854775808, "b": -9223372036854775809, "c": 1' + b"0" * 30 + b"}"
    parsed = parse_json(raw, refuse_big_ints=False)
    assert parsed == {"a": 2**63, "b": -(2**63) - 1, "c": 2**63}  # 20+ digits: a stand-in past int64
    with pytest.raises(Exception, match="64 bits"):
        parse_json(b'{"a": 9223372036854775808}')


# Abuse: a bad request is refused whole and changes nothing.


@pytest.mark.parametrize(
    "body",
    [
        [],
        [{"id": "a", "ops": SET}],
        "docs",
        3,
        None,
        {},
        {"docs": {"a": SET}},
        {"docs": "a"},
        {"docs": [{"id": "a", "ops": SET}], "w": "all"},
        {"docs": [{"id": "a", "ops": SET}, ["b", SET]]},
        {"docs": [{"id": "a", "ops": SET}, {"ops": SET}]},
        {"docs": [{"id": "a", "ops": SET}, {"id": 7, "ops": SET}]},
        {"docs": [{"id": "a", "ops": SET}, {"id": None, "ops": SET}]},
    ],
)
def test_a_malformed_envelope_is_refused_whole(client: TestClient, body: Any) -> None:
    response = client.post(URL, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert stored_ids(client) == []


def test_an_empty_batch_is_refused(client: TestClient) -> None:
    response = client.post(URL, json={"docs": []})
    assert response.status_code == 400 and response.json()["detail"] == {"documents": 0, "limit": 100}


def test_an_oversize_batch_is_refused_whole(client: TestClient) -> None:
    response = client.post(URL, json=docs_body(*((f"d{i}", SET) for i in range(101))))
    assert response.status_code == 400
    assert response.json()["detail"] == {"documents": 101, "limit": 100}
    assert stored_ids(client) == []
    assert client.post(URL, json=docs_body(*((f"d{i}", SET) for i in range(100)))).status_code == 200


def test_the_document_limit_is_a_setting(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(limits=Limits(max_batch_docs=2))
    assert client.post(URL, json=docs_body(("a", SET), ("b", SET), ("c", SET))).status_code == 400
    assert client.post(URL, json=docs_body(("a", SET), ("b", SET))).status_code == 200
    assert "max_batch_docs" in {s.name for s in SETTINGS}
    flags = {s.name: None for s in SETTINGS}
    config = resolve(flags | {"data": str(tmp_path / "d"), "max_batch_docs": "7"}, env={})
    assert config.max_batch_docs == 7
    assert resolve(flags, env={"CRDTSTORE_MAX_BATCH_DOCS": "9"}).max_batch_docs == 9
    for bad in ("0", "-1", "x"):
        with pytest.raises(ValueError):
            resolve(flags | {"max_batch_docs": bad}, env={})
    from crdtstore.server import build_server_app

    app = build_server_app(config, env={"CRDTSTORE_TOKENS": f"{RW_TOKEN}:readwrite"})
    assert app.state.api.limits.max_batch_docs == 7


def test_duplicate_ids_are_refused_whole(client: TestClient) -> None:
    body = docs_body(("a", SET), ("b", SET), ("a", [{"op": "increment", "path": ["n"]}]))
    response = client.post(URL, json=body)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert response.json()["detail"] == {"id": "a", "indexes": [0, 2]}
    assert stored_ids(client) == []


@pytest.mark.parametrize("query", ["w=most", "w=ONE", "w=one&w=all", "wait=all", "timeout=0", "timeout=61"])
def test_bad_query_parameters_are_refused_before_any_write(client: TestClient, query: str) -> None:
    response = client.post(f"{URL}?{query}", json=docs_body(("a", SET)))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert stored_ids(client) == []


@pytest.mark.parametrize("level", ["one", "local_quorum", "quorum", "all", ""])
def test_every_level_is_answered_by_a_lone_node(client: TestClient, level: str) -> None:
    response = client.post(f"{URL}?w={level}&timeout=1", json=docs_body(("a", SET)))
    assert response.json()["results"][0]["status"] == 200


def test_a_read_token_writes_nothing(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    response = client.post(URL, json=docs_body(("a", SET)), headers=auth_headers(READ_TOKEN))
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert client.post(URL, json=docs_body(("a", SET)), headers={"Authorization": "Bearer nope"}).status_code == 401
    anonymous = make_client(token=None)
    assert anonymous.post(URL, json=docs_body(("a", SET))).status_code == 401
    assert stored_ids(client) == [] and stored_ids(anonymous) == []


def test_body_limit_content_type_and_json(make_client: Callable[..., TestClient]) -> None:
    client = make_client(limits=Limits(max_body_bytes=1000))
    big = docs_body(("a", [{"op": "set", "path": ["x"], "value": "y" * 1000}]))
    assert client.post(URL, json=big).json()["error"] == "body_too_large"
    assert client.post(URL, content=b'{"docs": []}', headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post(URL, content=b'{"docs": [', headers={"Content-Type": "application/json"}).status_code == 400
    repeated = b'{"docs": [{"id": "a", "ops": [], "ops": [{"op": "enable", "path": ["f"]}]}]}'
    response = client.post(URL, content=repeated, headers={"Content-Type": "application/json"})
    assert response.json()["error"] == "malformed_json"
    assert stored_ids(client) == []
    assert client.get(URL).status_code == 405


# Quorum waits: each document waits for its own write; a timeout answers that document alone.


class AckingReplicator:
    """A replicator of a 3-replica cluster whose peers acknowledge only documents named ``acked*``."""

    cluster_size = 3

    def __init__(self) -> None:
        self.waits: list[tuple[str, str | None, int | None, float | None]] = []

    async def wait_for_acks(self, doc_id: str, level: Level, **kwargs: Any) -> QuorumOutcome:
        self.waits.append((doc_id, kwargs.get("origin"), kwargs.get("seq"), kwargs.get("timeout")))
        needed = required(level, replicas=self.cluster_size, local_replicas=1).total
        reached = needed if doc_id.startswith("acked") else 1
        return QuorumOutcome(needed=needed, reached=reached, replicas=("me",))

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture
def quorum_client(tmp_path: Path) -> Iterator[tuple[TestClient, AckingReplicator]]:
    node = Node(NodeConfig(region="test", data_dir=tmp_path / "n", sync=False))
    replicator = AckingReplicator()
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})), replicator=replicator)
    with TestClient(app, headers=auth_headers(RW_TOKEN)) as client:
        yield client, replicator


def test_a_quorum_timeout_answers_its_document_alone(quorum_client: tuple[TestClient, AckingReplicator]) -> None:
    client, replicator = quorum_client
    bad = [{"op": "frobnicate", "path": ["a"]}]
    body = docs_body(("acked1", SET), ("lagging", SET), ("refused", bad), ("acked2", SET))
    results = client.post(f"{URL}?w=quorum&timeout=0.5", json=body).json()["results"]
    assert [r["status"] for r in results] == [200, 504, 400, 200]
    lagging = results[1]
    assert lagging["error"] == "quorum_timeout"
    assert lagging["detail"]["durable_locally"] is True and lagging["detail"]["needed"] == 2
    assert client.get("/v1/docs/lagging").json()["version"] == lagging["detail"]["version"]  # durable here
    # One wait per committed document, for exactly its own write; the refused one waited for nothing.
    assert sorted(w[0] for w in replicator.waits) == ["acked1", "acked2", "lagging"]
    assert len({(w[1], w[2]) for w in replicator.waits}) == 3 and all(w[3] == 0.5 for w in replicator.waits)
    replicator.waits.clear()
    # local_quorum is a majority of this region's replicas, here this one alone: met by the local commit.
    assert client.post(f"{URL}?w=local_quorum", json=docs_body(("lagging", SET))).json()["results"][0]["status"] == 200
    assert [w[0] for w in replicator.waits] in ([], ["lagging"])


# The Python client.


def test_sync_and_async_clients(client: TestClient) -> None:
    transport = httpx.ASGITransport(app=client.app)

    async def scenario() -> None:
        async with AsyncClient("http://in-process", RW_TOKEN, transport=transport) as api:
            outcomes = await api.batch({"x": SET, "y": [{"op": "frobnicate", "path": ["a"]}]}, w="one", timeout=2)
            assert [o.id for o in outcomes] == ["x", "y"]
            assert outcomes[0].ok and outcomes[0].result is not None and outcomes[0].result.created
            assert not outcomes[1].ok and outcomes[1].error is not None
            assert (outcomes[1].error.status, outcomes[1].error.code) == (400, "invalid_op")
            doc = await api.read("x")
            assert doc.version == outcomes[0].result.version
            with pytest.raises(Exception) as info:
                await api.batch({})
            assert getattr(info.value, "code", None) == "invalid_request"

    asyncio.run(scenario())
    with Client("http://testserver", RW_TOKEN, transport=client._transport) as sync:
        outcomes = sync.batch({"x": [{"op": "increment", "path": ["n"]}]})
        assert outcomes[0].ok and outcomes[0].result is not None and not outcomes[0].result.created
        with pytest.raises(Exception) as info:
            sync.batch({"x": SET}, w="most")
        assert getattr(info.value, "status", None) == 400
    assert value_of(client, "x") == {"a": 1, "n": 1}


# Differential: a batch answers every document as single writes of the same documents would.

_OPS = st.sampled_from(
    [
        {"op": "set", "path": ["a"], "value": 1},
        {"op": "increment", "path": ["a"]},
        {"op": "increment", "path": ["n"], "by": 2},
        {"op": "insert", "path": ["t"], "index": 0, "text": "hi"},
        {"op": "insert", "path": ["t"], "index": 3, "text": "x"},
        {"op": "delete", "path": ["t"], "index": 0},
        {"op": "add", "path": ["s"], "value": {"k": [1]}},
        {"op": "set", "path": ["big"], "value": 2**64},
        {"op": "set", "path": [], "value": 1},
        {"op": "nope", "path": ["a"]},
        {"op": "insert", "path": ["t"], "index": 0, "text": "v", "version": "v2.bogus"},
    ]
)
_DOCS = st.lists(st.lists(_OPS, min_size=1, max_size=4), min_size=1, max_size=8)


def test_a_batch_answers_as_single_writes_would(make_client: Callable[..., TestClient]) -> None:
    batched, single = make_client(), make_client()
    examples = itertools.count()

    @given(docs=_DOCS)
    def check(docs: list[list[dict[str, Any]]]) -> None:
        ids = [f"e{next(examples)}-{i}" for i in range(len(docs))]  # fresh ids: both nodes live for the whole search
        results = batched.post(URL, json=docs_body(*zip(ids, docs, strict=True))).json()["results"]
        for doc_id, ops, result in zip(ids, docs, results, strict=True):
            alone = single.post(f"/v1/docs/{doc_id}", json={"ops": ops})
            expected = alone.json()
            assert result["status"] == alone.status_code, (ops, result, expected)
            if alone.status_code == 200:
                assert result["created"] == expected["created"]
            else:
                assert result["error"] == expected["error"]
                op_index = (expected["detail"] or {}).get("op_index")
                assert op_index is None or result["detail"]["op_index"] == op_index
            assert value_of(batched, doc_id) == value_of(single, doc_id)

    check()


# The admission gate: bulk writers wait their turn instead of filling the write queue.


def test_concurrent_batches_past_the_write_queue_wait_their_turn(tmp_path: Path) -> None:
    # A write queue of 64: the gate admits 32 documents at once and lets 8 x 32 wait; the writer is held
    # still until every batch has arrived, so without the gate the queue would overflow (per-document 503s).
    node = Node(NodeConfig(region="test", data_dir=tmp_path / "n", sync=False, max_queue=64))
    auth = AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE}))
    app = build_app(node, auth=auth, limits=Limits(max_batch_docs=32))
    hold = threading.Event()

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            gate = gate_of(app.state.api)
            assert (gate.capacity, gate.backlog) == (32, 256)
            held = node.writer.submit(lambda ctx: hold.wait(60))
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://in-process", RW_TOKEN, transport=transport) as api:

                async def send(n: int) -> Any:
                    try:
                        return await api.batch({f"b{n}-{k}": SET for k in range(32)})
                    except Exception as exc:
                        return exc

                sent = [asyncio.ensure_future(send(n)) for n in range(10)]
                for _ in range(500):  # bounded: until 32 admitted, 256 waiting and one refused
                    if gate.waiting == 256 and sum(t.done() for t in sent) == 1:
                        break
                    await asyncio.sleep(0.01)
                while_held = (gate.admitted, gate.waiting)
                hold.set()
                await held
                outcomes = await asyncio.gather(*sent)
                applied = [o for o in outcomes if not isinstance(o, Exception)]
                assert all(item.ok for batch in applied for item in batch)  # no document met a full queue
                refused = [o for o in outcomes if isinstance(o, Exception)]
                assert len(refused) == 1
                assert (getattr(refused[0], "status", None), getattr(refused[0], "code", None)) == (503, "overloaded")
                ids = [doc_id async for doc_id in api.iter_ids("b", page_size=1000)]
                assert len(ids) == 9 * 32  # the refused batch wrote nothing
            assert while_held == (32, 256) and (gate.admitted, gate.waiting) == (0, 0)

    try:
        asyncio.run(scenario())
    finally:
        hold.set()


def test_a_batch_the_writer_refuses_whole_answers_overloaded_for_each_document(tmp_path: Path) -> None:
    # A write queue of 1, filled by a queued write behind a held one: the batch's one submission is refused,
    # so every document answers 503 overloaded and none of them applies.
    node = Node(NodeConfig(region="test", data_dir=tmp_path / "n", sync=False, max_queue=1))
    app = build_app(node, auth=AuthPolicy(tokens=TokenStore({RW_TOKEN: Scope.READWRITE})))
    hold = threading.Event()

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            held = node.writer.submit(lambda ctx: hold.wait(60))
            for _ in range(500):  # bounded: until the writer thread took the held request
                if node.writer.pending == 0:
                    break
                await asyncio.sleep(0.01)
            queued = node.writer.submit(lambda ctx: None)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
                body = docs_body(("o1", SET), ("o2", SET))
                response = await http.post(URL, json=body, headers=auth_headers(RW_TOKEN))
            hold.set()
            await asyncio.gather(held, queued)
            results = response.json()["results"]
            assert [(r["id"], r["status"], r["error"]) for r in results] == [
                ("o1", 503, "overloaded"),
                ("o2", 503, "overloaded"),
            ]
            for doc_id in ("o1", "o2"):
                with pytest.raises(DocumentNotFound):
                    await node.read(doc_id)

    try:
        asyncio.run(scenario())
    finally:
        hold.set()


def test_the_gate_admits_in_arrival_order_within_capacity() -> None:
    async def scenario() -> None:
        gate = DocumentGate(capacity=10, backlog=20)
        order: list[str] = []
        release = {name: asyncio.Event() for name in "abcde"}

        async def hold(name: str, documents: int) -> None:
            async with gate.admit(documents):
                order.append(name)
                assert gate.admitted <= 10 or gate.admitted == documents
                await release[name].wait()

        tasks = {"a": asyncio.ensure_future(hold("a", 6))}
        await asyncio.sleep(0)
        tasks["b"] = asyncio.ensure_future(hold("b", 6))
        await asyncio.sleep(0)
        tasks["c"] = asyncio.ensure_future(hold("c", 4))  # would fit beside a, but b came first
        await asyncio.sleep(0)
        assert order == ["a"] and (gate.admitted, gate.waiting) == (6, 10)
        with pytest.raises(ApiError) as info:  # 10 waiting + 11 > 20: refused whole, nothing held
            async with gate.admit(11):
                pass
        assert info.value.status == 503 and (gate.admitted, gate.waiting) == (6, 10)
        tasks["d"] = asyncio.ensure_future(hold("d", 30))  # larger than the gate: goes alone, in turn
        await asyncio.sleep(0)
        assert gate.waiting == 10  # 10 + 30 > 20: refused
        assert isinstance(tasks["d"].exception(), ApiError)
        release["a"].set()
        await asyncio.sleep(0.01)
        assert order == ["a", "b", "c"] and gate.admitted == 10
        tasks["e"] = asyncio.ensure_future(hold("e", 1))
        await asyncio.sleep(0)
        tasks["e"].cancel()  # cancelled while waiting: leaves the line
        await asyncio.sleep(0)
        assert gate.waiting == 0
        release["b"].set()
        release["c"].set()
        await asyncio.gather(tasks["a"], tasks["b"], tasks["c"])
        assert (gate.admitted, gate.waiting) == (0, 0) and order == ["a", "b", "c"]

        alone = DocumentGate(capacity=4, backlog=100)
        async with alone.admit(9):  # an oversized batch is admitted when nothing else is
            assert alone.admitted == 9
        assert alone.admitted == 0

    asyncio.run(scenario())


@settings(deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(1, 12), st.integers(0, 3), st.booleans()),  # (documents, yields held, cancel it)
        min_size=1,
        max_size=12,
    )
)
def test_the_gate_never_overfills_and_always_drains(plan: list[tuple[int, int, bool]]) -> None:
    async def scenario() -> None:
        gate = DocumentGate(capacity=10, backlog=30)
        admitted_order: list[int] = []

        async def hold(index: int, documents: int, yields: int) -> None:
            async with gate.admit(documents):
                admitted_order.append(index)
                # Past the capacity only when an oversized batch holds the gate alone.
                assert gate.admitted <= gate.capacity or gate.admitted == documents
                for _ in range(yields):
                    await asyncio.sleep(0)

        tasks = []
        for index, (documents, yields, _) in enumerate(plan):
            tasks.append(asyncio.ensure_future(hold(index, documents, yields)))
            await asyncio.sleep(0)
        for task, (_, _, cancel) in zip(tasks, plan, strict=True):
            if cancel:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert (gate.admitted, gate.waiting) == (0, 0)
        # Every batch not cancelled got in (arrival order is the deterministic test's above).
        entered = set(admitted_order)
        for index, task in enumerate(tasks):
            assert index in entered or task.cancelled() or isinstance(task.exception(), ApiError)

    asyncio.run(scenario())


@pytest.mark.slow
def test_the_bench_runs_both_phases_and_reports_every_document() -> None:
    # A smoke run of bench/batch.py: its figures are not checked (no timing in tests), only that both
    # phases ran against a real server and every document answered 200.
    bench = Path(__file__).resolve().parents[2] / "bench" / "batch.py"
    args = ["--concurrency", "1", "--rounds", "1", "--seconds", "0.3", "--max-requests", "5", "--docs", "100"]
    run = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["c1_failed"] == 0
    assert summary["c1_single_docs_per_s"] > 0 and summary["c1_batch_docs_per_s"] > 0
    assert "c1_ratio_wall" in summary
