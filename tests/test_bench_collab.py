"""The live-editing benchmark's update reader (``bench/collab/yupdate.py``) against pycrdt's own updates.

The pycrdt driver keys keystrokes by (client id, clock) and learns which
keystrokes an update carries from ``clock_ranges``: a wrong range would
silently misattribute acks and remote-visible latencies, so its result is
checked here against the state vectors pycrdt itself reports.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Text, TransactionEvent, merge_updates

_PATH = Path(__file__).resolve().parent.parent / "bench" / "collab" / "yupdate.py"
_spec = importlib.util.spec_from_file_location("bench_collab_yupdate", _PATH)
assert _spec is not None and _spec.loader is not None
yupdate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = yupdate
_spec.loader.exec_module(yupdate)

# Inserts take text as editors type it: ASCII, accents, and characters past the BMP (two UTF-16 units in
# Yjs). Deletes and formats run on ASCII-only scripts: pycrdt 0.14 panics deleting around multi-byte
# characters (its indexes and yrs' disagree), which is not what this reader is tested for.
inserts = st.lists(
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.text(st.sampled_from("ab é\n😀字"), min_size=1)),
    min_size=1,
    max_size=25,
)
ascii_edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "format"]),
        st.integers(0, 10**6),
        st.text(st.sampled_from("ab \n"), min_size=1),
    ),
    min_size=1,
    max_size=25,
)
edits = st.one_of(inserts, ascii_edits)


def _apply(doc: Doc, text: Text, kind: str, at: int, s: str) -> None:
    n = len(text)
    if kind == "insert":
        text.insert(at % (n + 1), s)
    elif n and kind == "delete":
        start = at % n
        del text[start : min(n, start + len(s))]
    elif n:
        start = at % n
        text.format(start, min(n, start + len(s)), {"bold": True})


def _state(doc: Doc) -> dict[int, int]:
    return yupdate.decode_state_vector(doc.get_state())


class Recorder:
    """The updates ``doc`` emits, each with the document's state before and after the step that emitted it.

    The state cannot be read inside pycrdt's observer (the transaction is still borrowed), so each step
    is wrapped: ``with recorder.step(): ...`` runs one transaction.
    """

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.pending: list[bytes] = []
        self.steps: list[tuple[bytes, dict[int, int], dict[int, int]]] = []
        doc.observe(self._on_transaction)

    def _on_transaction(self, event: TransactionEvent) -> None:
        self.pending.append(event.update)

    @contextmanager
    def step(self) -> Iterator[None]:
        before = _state(self.doc)
        yield
        after = _state(self.doc)
        assert len(self.pending) <= 1, "one step, one transaction"
        self.steps += [(u, before, after) for u in self.pending]
        self.pending.clear()


def _advanced(before: dict[int, int], after: dict[int, int]) -> dict[int, tuple[int, int]]:
    return {c: (before.get(c, 0), end) for c, end in after.items() if end > before.get(c, 0)}


@given(client=st.integers(1, 2**53 - 1), script=edits)
def test_each_local_update_carries_exactly_the_clocks_its_transaction_added(client: int, script: list) -> None:
    doc = Doc(client_id=client)
    text = doc.get("text", type=Text)
    recorder = Recorder(doc)
    for kind, at, s in script:
        with recorder.step():
            _apply(doc, text, kind, at, s)
    for update, before, after in recorder.steps:
        assert yupdate.clock_ranges(update) == _advanced(before, after)
    # The whole document as one update: every client from clock 0.
    state = yupdate.decode_state_vector(doc.get_state())
    assert yupdate.clock_ranges(doc.get_update()) == {c: (0, n) for c, n in state.items() if n}


@given(scripts=st.lists(edits, min_size=2, max_size=4))
def test_merged_and_relayed_updates_carry_every_writers_clocks(scripts: list) -> None:
    # Several writers; a relay (the server) applies their updates in turn. What the relay's document
    # emits per applied update, and all updates merged into one, name each writer's clocks.
    writers = [Doc(client_id=i + 1) for i in range(len(scripts))]
    relay = Doc(client_id=10_000)
    relayed = Recorder(relay)
    updates: list[bytes] = []
    for doc, script in zip(writers, scripts, strict=True):
        local: list[bytes] = []
        doc.observe(lambda event, local=local: local.append(event.update))
        text = doc.get("text", type=Text)
        for kind, at, s in script:
            _apply(doc, text, kind, at, s)
        for update in local:
            with relayed.step():
                relay.apply_update(update)
        updates += local
    for update, before, after in relayed.steps:
        assert yupdate.clock_ranges(update) == _advanced(before, after)
    expected = {
        d.client_id: (0, n) for d in writers if (n := yupdate.decode_state_vector(d.get_state()).get(d.client_id))
    }
    assert yupdate.clock_ranges(merge_updates(*updates)) == expected


def test_a_keystroke_is_one_clock_of_its_editor() -> None:
    # The driver's keying: an editor that types one ASCII character per transaction gives keystroke k clock k.
    doc = Doc(client_id=7)
    text = doc.get("text", type=Text)
    recorder = Recorder(doc)
    for k in range(20):
        with recorder.step():
            text.insert(k % (len(text) + 1), "x")
    assert [yupdate.clock_ranges(u) for u, _, _ in recorder.steps] == [{7: (k, k + 1)} for k in range(20)]


@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_give_ranges_or_the_typed_error(data: bytes) -> None:
    try:
        ranges = yupdate.clock_ranges(data)
    except yupdate.UpdateFormatError:
        return
    assert all(0 <= start <= end for start, end in ranges.values())


def test_truncated_updates_raise_the_typed_error() -> None:
    doc = Doc(client_id=3)
    text = doc.get("text", type=Text)
    text.insert(0, "hello 😀")
    update = doc.get_update()
    for cut in range(1, len(update) - 1):
        # Only the delete set may be cut without losing a struct; that must not be read as fewer clocks.
        try:
            ranges = yupdate.clock_ranges(update[:cut])
        except yupdate.UpdateFormatError:
            continue
        assert ranges == {3: (0, 8)}


def test_unknown_content_is_refused_not_guessed() -> None:
    # ContentAny (ref 8): one client, one struct, clock 0, a root parent named "a", then content the reader skips.
    update = bytes([1, 1, 5, 0, 8, 1, 1, ord("a"), 1, 0x77, 0, 0])
    with pytest.raises(yupdate.UpdateFormatError, match="content ref 8"):
        yupdate.clock_ranges(update)
