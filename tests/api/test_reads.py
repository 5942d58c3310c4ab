"""Kept read bodies (crdtstore.api.reads): served only for the same view and key, bounded, and never stale."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtstore.api.reads import ReadBodies
from crdtstore.errors import InvalidVersion
from crdtstore.version import open_version
from tests.api.helpers import TestClient

_RUNS = itertools.count()
KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def view(version: str, value: Any) -> bytes:
    return orjson.dumps([version, value])


def check(body: bytes, doc_id: str, raw_view: bytes, key: bytes) -> None:
    """``body`` is the read of ``raw_view``: its id and value, and its version sealed to this document and key."""
    got = orjson.loads(body)
    version, value = orjson.loads(raw_view)
    assert got["id"] == doc_id
    assert got["value"] == value
    assert open_version(got["version"], doc_id, key) == version
    with pytest.raises(InvalidVersion):
        open_version(got["version"], doc_id + "x", key)


def test_a_kept_body_is_served_for_the_same_view_only() -> None:
    bodies = ReadBodies()
    first = view("v1.e30", {"a": 1})
    body = bodies.body("d", first, KEY)
    check(body, "d", first, KEY)
    assert "d" in bodies
    assert bodies.body("d", bytes(first), KEY) == body  # equal bytes, another object: still the same read
    changed = view("v1.eyJyIjpbMSwyXX0", {"a": 2})
    check(bodies.body("d", changed, KEY), "d", changed, KEY)
    assert len(bodies) == 1


def test_a_body_is_sealed_under_the_key_it_is_asked_for() -> None:
    bodies = ReadBodies()
    raw = view("v1.e30", {"a": 1})
    bodies.body("d", raw, KEY)
    check(bodies.body("d", raw, OTHER_KEY), "d", raw, OTHER_KEY)


def test_bodies_of_different_documents_do_not_mix() -> None:
    """Abuse: two documents with byte-equal views still get their own ids and their own seals."""
    bodies = ReadBodies()
    raw = view("v1.e30", {"a": 1})
    a, b = bodies.body("a", raw, KEY), bodies.body("b", raw, KEY)
    check(a, "a", raw, KEY)
    check(b, "b", raw, KEY)


def test_an_entry_larger_than_the_bound_is_served_but_not_kept() -> None:
    bodies = ReadBodies(max_entry_bytes=1024)
    raw = view("v1.e30", {"text": "x" * 2000})
    check(bodies.body("big", raw, KEY), "big", raw, KEY)
    assert "big" not in bodies
    assert bodies.size == 0


@given(
    reads=st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 3), st.integers(0, 600)), min_size=1, max_size=80
    ),
    max_entries=st.integers(1, 6),
    max_bytes=st.integers(1, 4000),
)
@settings(max_examples=200)
def test_bounds_hold_and_every_answer_is_right(
    reads: list[tuple[str, int, int]], max_entries: int, max_bytes: int
) -> None:
    bodies = ReadBodies(max_entries=max_entries, max_bytes=max_bytes, max_entry_bytes=1500)
    for doc_id, version, length in reads:
        raw = view(f"v1.{'e' * (version + 1)}", {"s": "y" * length})
        check(bodies.body(doc_id, raw, KEY), doc_id, raw, KEY)
        assert len(bodies) <= max_entries
        assert 0 <= bodies.size <= max_bytes


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReadBodies(max_entries=0)


# Through the app: a read answers what the node holds now, whatever was kept before.


def doc_url(doc_id: str) -> str:
    return "/v1/docs/" + quote(doc_id, safe="")


def test_reads_follow_every_write_and_delete(client: TestClient) -> None:
    url = doc_url("d")
    for n in range(5):
        written = client.post(url, json={"ops": [{"op": "set", "path": ["n"], "value": n}]}).json()
        for _ in range(3):
            assert client.get(url).json() == {"id": "d", "value": {"n": n}, "version": written["version"]}
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    client.post(url, json={"ops": [{"op": "set", "path": ["b"], "value": 2}]})
    assert client.get(url).json()["value"] == {"b": 2}


def test_a_kept_id_does_not_excuse_other_raw_bytes(client: TestClient) -> None:
    """Abuse: once "a\\ufffd" (sent as real UTF-8) has a kept body, "a%FF" (which a server decodes to the
    same string) is still refused: the raw path of an id holding U+FFFD is checked on every read."""
    good = "/v1/docs/a%EF%BF%BD"
    client.post(good, json={"ops": [{"op": "set", "path": ["a"], "value": 1}]})
    assert client.get(good).status_code == 200
    assert client.get(good).status_code == 200
    assert client.app.state.api.reads.__contains__("a\ufffd")  # type: ignore[attr-defined]
    bad = client.get("/v1/docs/a%FF")
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_id"


@pytest.mark.parametrize("doc_id", ["a\x00b", "x" * 257, "a\\b", "\x7f", "\x85"])
def test_invalid_ids_are_refused_on_the_read_path(client: TestClient, doc_id: str) -> None:
    assert client.get(doc_url("ok")).status_code == 404  # a valid id: read, nothing kept (no document)
    response = client.get(doc_url(doc_id))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_id"


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["write", "read", "delete"]), st.sampled_from(["p", "q"]), st.integers(0, 9)),
        min_size=1,
        max_size=25,
    )
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_read_answers_what_the_node_reads(client: TestClient, steps: Any) -> None:
    node = client.app.state.api.node  # type: ignore[attr-defined]
    key = client.app.state.api.version_key  # type: ignore[attr-defined]
    run = next(_RUNS)  # documents of their own per example: the client lives across examples
    for action, name, n in steps:
        doc_id = f"{run}-{name}"
        url = doc_url(doc_id)
        if action == "write":
            assert client.post(url, json={"ops": [{"op": "set", "path": ["v"], "value": n}]}).status_code == 200
        elif action == "delete":
            client.delete(url)
        response = client.get(url)
        if response.status_code == 404:
            continue
        truth = client.portal.call(node.read, doc_id)  # type: ignore[union-attr]
        got = response.json()
        assert got["value"] == truth.value
        assert open_version(got["version"], doc_id, key) == truth.version
