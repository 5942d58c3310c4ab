"""The thin client's rebase: pending edits over incoming patches, ending equal to the server's value."""

from __future__ import annotations

from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st

from crdtstore.document import Document
from crdtstore.errors import OpError
from crdtstore.patches import before, patches
from crdtstore.rebase import LiveState, apply_ops, move_index, transform


class _Server:
    """The live channel's part in miniature: a document, versioned batches, tagged changes and acks."""

    def __init__(self, text: str) -> None:
        self.doc = Document()
        self.outbox: list[dict[str, Any]] = []
        self._apply([{"op": "insert", "path": ["t"], "index": 0, "text": text}], "seed", None)

    def snapshot(self) -> dict[str, Any]:
        return {"type": "snapshot", "version": self.doc.version(), "value": self.doc.value()}

    def _apply(self, ops: list[dict[str, Any]], replica: str, batch: str | None) -> None:
        mirror = self.doc.copy()
        delta = self.doc.apply(ops, replica=replica)
        old = before(mirror.root, delta.root)
        mirror.join(delta)
        change = {"type": "change", "version": self.doc.version(), "patches": patches(old, mirror.root, delta.root)}
        if batch is not None:
            change["batch"] = batch
        self.outbox.append(change)

    def remote(self, op: dict[str, Any]) -> None:
        self._apply([op], "other", None)

    def batch(self, frame: dict[str, Any]) -> None:
        ops = [op | {"version": frame["version"]} if "index" in op else op for op in frame["ops"]]
        try:
            self._apply(ops, "srv", frame["id"])
        except OpError as exc:
            self.outbox.append({"type": "error", "id": frame["id"], "error": exc.code})
            return
        self.outbox.append({"type": "ack", "id": frame["id"], "version": self.doc.version()})


def _text_op(text: str, frac: float, what: str, piece: str, count: int) -> dict[str, Any]:
    index = round(frac * len(text))
    if what == "insert" or not text:
        return {"op": "insert", "path": ["t"], "index": index, "text": piece}
    index = min(index, len(text) - 1)
    return {"op": "delete", "path": ["t"], "index": index, "count": min(count, len(text) - index)}


steps = st.lists(
    st.tuples(
        st.sampled_from(["local", "remote", "send", "serve", "deliver", "deliver"]),
        st.floats(0, 1),
        st.sampled_from(["insert", "delete"]),
        st.text(alphabet="xyz", min_size=1, max_size=3),
        st.integers(1, 3),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(initial=st.text(alphabet="ab", min_size=1, max_size=5), steps=steps)
def test_pending_edits_end_equal_to_the_server(initial: str, steps: list[Any]) -> None:
    server = _Server(initial)
    client = LiveState(prefix="test")
    client.receive(server.snapshot())
    server.outbox.clear()
    to_server: list[dict[str, Any]] = []
    errors: list[Any] = []

    def deliver() -> None:
        message = server.outbox.pop(0)
        note(f"deliver {message}")
        if message["type"] == "error":
            errors.append(message)
        client.receive(message)

    for kind, frac, what, piece, count in steps:
        if kind == "local":
            op = _text_op(client.value()["t"], frac, what, piece, count)
            note(f"local {op} on {client.value()['t']!r}")
            client.edit([op])
        elif kind == "remote":
            op = _text_op(server.doc.value()["t"], frac, what, piece, count)
            note(f"remote {op}")
            server.remote(op)
        elif kind == "send":
            frame = client.next_batch()
            if frame is not None:
                to_server.append(frame)
        elif kind == "serve" and to_server:
            server.batch(to_server.pop(0))
        elif kind == "deliver" and server.outbox:
            deliver()
    for _ in range(100):  # bounded: every round moves one frame
        frame = client.next_batch()
        if frame is not None:
            to_server.append(frame)
        if to_server:
            server.batch(to_server.pop(0))
        elif server.outbox:
            deliver()
        else:
            break
    assert not errors, "a rebased batch was refused"
    assert client.inflight is None and not client.queued
    assert client.value() == client.confirmed == server.doc.value()


@given(initial=st.text(alphabet="ab", min_size=1, max_size=5), steps=steps)
def test_without_concurrent_edits_the_screen_never_jumps(initial: str, steps: list[Any]) -> None:
    server = _Server(initial)
    client = LiveState(prefix="test")
    client.receive(server.snapshot())
    server.outbox.clear()
    for kind, frac, what, piece, count in steps:
        if kind == "local":
            client.edit([_text_op(client.value()["t"], frac, what, piece, count)])
        frame = client.next_batch()
        if frame is not None and kind in ("serve", "send"):
            server.batch(frame)
        while server.outbox and kind == "deliver":
            shown = client.value()
            client.receive(server.outbox.pop(0))
            assert client.value() == shown


def test_a_remote_insert_before_the_caret_moves_it() -> None:
    patch = [{"path": ["t"], "insert": {"index": 1, "text": "xy"}}]
    assert move_index(["t"], 3, patch) == 5
    assert move_index(["t"], 1, patch) == 1  # at the caret: the caret stays before it
    assert move_index(["u"], 3, patch) == 3
    assert move_index(["t"], 3, [{"path": ["t"], "delete": {"index": 1, "count": 5}}]) == 1


def test_a_pending_delete_around_a_remote_insert_spares_it() -> None:
    pending = [{"op": "delete", "path": ["t"], "index": 1, "count": 4}]
    remote = [{"path": ["t"], "insert": {"index": 3, "text": "NEW"}}]
    moved, _ = transform(pending, remote)
    assert moved == [
        {"op": "delete", "path": ["t"], "index": 1, "count": 2},
        {"op": "delete", "path": ["t"], "index": 4, "count": 2},
    ]


def test_a_batch_whose_ack_was_lost_is_kept_for_the_resend() -> None:
    """Its change arrived, its ack did not (the connection dropped): the next connection must resend it."""
    client = LiveState(prefix="test")
    client.receive({"type": "snapshot", "version": "v0", "value": {}})
    client.edit([{"op": "increment", "path": ["n"]}])
    frame = client.next_batch()
    assert frame is not None
    change = {"path": ["n"], "value": 1}
    client.receive({"type": "change", "version": "v1", "patches": [change], "batch": frame["id"]})
    assert client.inflight is None and client.value() == {"n": 1}
    assert list(client.unacked.values()) == [frame]
    client.receive({"type": "ack", "id": frame["id"], "version": "v1", "again": True})
    assert not client.unacked


def test_a_typed_run_queues_as_one_insert_and_backspaces_as_one_delete() -> None:
    state = LiveState(prefix="c")
    state.receive({"type": "snapshot", "version": "v", "value": {"t": "hello"}})
    state.edit([{"op": "insert", "path": ["t"], "index": 5, "text": "!"}])
    assert state.next_batch() is not None  # in flight: what follows queues behind it
    for i, ch in enumerate("abc"):
        state.edit([{"op": "insert", "path": ["t"], "index": 6 + i, "text": ch}])
    state.edit([{"op": "delete", "path": ["t"], "index": 8, "count": 1}])  # a backspace is a delete apart
    state.edit([{"op": "delete", "path": ["t"], "index": 7, "count": 1}])
    assert state.queued == [
        {"op": "insert", "path": ["t"], "index": 6, "text": "abc"},
        {"op": "delete", "path": ["t"], "index": 7, "count": 2},
    ]
    assert state.queued_calls == 5 and state.value() == {"t": "hello!a"}


def test_ops_that_do_not_continue_the_last_one_stay_apart() -> None:
    state = LiveState(prefix="c")
    state.receive({"type": "snapshot", "version": "v", "value": {"t": "hello", "u": ""}})
    ops = [
        {"op": "insert", "path": ["t"], "index": 0, "text": "a"},
        {"op": "insert", "path": ["t"], "index": 0, "text": "b"},  # before it, not after
        {"op": "insert", "path": ["u"], "index": 0, "text": "c"},  # another path
        {"op": "insert", "path": ["u"], "index": 1, "text": "d", "version": "v"},  # read against its own version
        {"op": "insert", "path": ["t"], "index": 1, "values": ["e"]},  # not text
    ]
    state.edit(ops)
    assert state.queued == ops


_edits = st.lists(
    st.tuples(st.sampled_from(["type", "type", "type", "backspace", "forward", "jump"]), st.floats(0, 1)),
    max_size=30,
)


@given(initial=st.text(alphabet="ab", max_size=5), edits=_edits)
def test_folded_keystrokes_show_and_apply_as_the_keystrokes_would(initial: str, edits: list[Any]) -> None:
    server = _Server(initial or "a")
    state = LiveState(prefix="c")
    state.receive(server.snapshot())
    server.outbox.clear()
    text, caret, ops = state.value()["t"], 0, []
    for kind, frac in edits:
        if kind == "jump":
            caret = round(frac * len(text))
            continue
        if kind == "type":
            op: dict[str, Any] = {"op": "insert", "path": ["t"], "index": caret, "text": "x"}
            caret += 1
        elif kind == "backspace" and caret > 0:
            op = {"op": "delete", "path": ["t"], "index": caret - 1, "count": 1}
            caret -= 1
        elif kind == "forward" and caret < len(text):
            op = {"op": "delete", "path": ["t"], "index": caret, "count": 1}
        else:
            continue
        ops.append(op)
        state.edit([op])
        text = state.value()["t"]
    note(f"queued {state.queued}")
    assert text == apply_ops({"t": initial or "a"}, ops)["t"]
    frame = state.next_batch()
    if frame is None:
        assert not ops
        return
    server.batch(frame)
    for message in server.outbox:
        state.receive(message)
    assert server.doc.value()["t"] == text == state.value()["t"]
