"""The live-editing benchmark's update reader (``bench/collab/yupdate.py``) against pycrdt's own updates.

The pycrdt driver keys keystrokes by (client id, clock) and learns which
keystrokes an update carries from ``clock_ranges``: a wrong range would
silently misattribute acks and remote-visible latencies, so its result is
checked here against the state vectors pycrdt itself reports.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Text, TransactionEvent, merge_updates
from pycrdt.store import SQLiteYStore

from tests.bench_modules import BENCH, load

yupdate = load("bench_collab_yupdate", BENCH / "collab" / "yupdate.py")
collab = load("bench_collab_entry", BENCH / "collab.py")
driver = load("bench_collab_pycrdt_driver", BENCH / "collab" / "pycrdt_driver.py")

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


# The pycrdt driver's accounting: which keystroke an update acknowledges or shows, counted once.


def _typist(shared: object, index: int, client: int) -> object:
    editor = driver.Editor(index, "ws://127.0.0.1:1/doc", shared, None)
    editor.doc = Doc(client_id=client)  # a known client id; the constructor's random one is replaced
    editor.text = editor.doc.get("text", type=Text)
    editor.client_id = client
    editor.doc.observe(editor._on_transaction)
    shared.sent_at[client] = []
    return editor


def _type(editor: object, at: float) -> bytes:
    # What Editor.type_until does per keystroke, without the socket.
    editor._local = True
    editor.text.insert(len(editor.text), editor.char)
    editor._local = False
    update, editor._outgoing = editor._outgoing, None
    editor.shared.sent_at[editor.client_id].append(at)
    editor.sent += 1
    return update


def test_the_driver_counts_each_ack_and_each_remote_keystroke_once() -> None:
    shared = driver.Shared()
    shared.window_end = 100.0
    a, b = _typist(shared, 0, 11), _typist(shared, 1, 22)
    first = _type(a, 1.0)
    rest = [_type(a, 2.0), _type(a, 3.0)]
    b.doc.apply_update(first)
    b._measure(first, 1.5)
    a._measure(first, 1.25)  # the server's echo of a's own keystroke
    a._measure(first, 9.0)  # a duplicate echo acknowledges nothing more
    merged = merge_updates(*rest)  # a server may broadcast two keystrokes as one update
    b.doc.apply_update(merged)
    b._measure(merged, 4.0)
    a._measure(merged, 3.5)
    assert (a.acked, shared.acked_in_window) == (3, 3)
    assert shared.ack_latency == [0.25, 1.5, 0.5]
    assert shared.visible_latency == [0.5, 2.0, 1.0]
    assert b.seen == {11: 3} and b.caught_up({11: 3, 22: 0}) and a.caught_up({11: 3, 22: 0})


def test_the_driver_does_not_count_an_ack_for_a_keystroke_it_never_sent() -> None:
    # A forged or replayed update claiming later clocks of this editor acknowledges nothing it did not type.
    shared = driver.Shared()
    a = _typist(shared, 0, 11)
    _type(a, 1.0)
    impostor = Doc(client_id=11)
    impostor.get("text", type=Text).insert(0, "xxxxx")
    a._measure(impostor.get_update(), 2.0)
    assert a.acked == 1 and shared.ack_latency == [1.0]
    a._measure(b"\x01\x01", 3.0)  # unreadable: counted, not guessed
    assert shared.unreadable_updates == 1 and a.acked == 1


def test_the_driver_refuses_servers_off_loopback() -> None:
    with pytest.raises(SystemExit):
        driver.parse_args(["--url", "ws://10.0.0.1:8080/doc"])
    with pytest.raises(SystemExit):
        driver.parse_args(["--url", "ws://127.0.0.1:8080/doc", "--editors", "0"])
    assert driver.parse_args(["--url", "ws://127.0.0.1:8080/doc"]).editors == 50


def test_the_harness_refuses_unknown_sides() -> None:
    with pytest.raises(SystemExit):
        collab.parse_args(["--peers", "hocuspocus,etherpad"])
    assert collab.parse_args([]).seconds == 60


def test_our_side_is_wired_to_the_live_channel() -> None:
    side = collab.SIDES["crdtstore"]
    assert side.install() is None
    assert side.server_cmd(Path("/tmp/x"))[-2:] == ["0", "/tmp/x"]
    driver_cmd = side.driver_cmd(8080, collab.parse_args([]), 3)
    assert "--url=ws://127.0.0.1:8080/v1/docs/doc/live?coalesce=1" in driver_cmd and "--editors=3" in driver_cmd


# The store check: the side's SQLite file, read back with pycrdt, against what the editors saw acknowledged.


def _typed(client: int, n: int) -> tuple[Doc, list[bytes]]:
    doc = Doc(client_id=client)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text = doc.get("text", type=Text)
    for k in range(n):
        text.insert(k, "x")
    return doc, updates


def _result(text: str, acked: dict[int, int]) -> dict[str, object]:
    return {
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "acked_by_client": {str(c): n for c, n in acked.items()},
    }


def _hocuspocus_db(path: Path, state: bytes | None) -> Path:
    # @hocuspocus/extension-sqlite's schema: one row per document, its whole state.
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE "documents" ("name" varchar(255) NOT NULL, "data" blob NOT NULL, UNIQUE(name))')
        if state is not None:
            conn.execute('INSERT INTO "documents" VALUES (?, ?)', (collab.DOC_NAME, state))
    return path


def test_the_hocuspocus_store_check_counts_acknowledged_keystrokes_it_lacks(tmp_path: Path) -> None:
    doc, _ = _typed(5, 10)
    db = _hocuspocus_db(tmp_path / "h.db", doc.get_update())
    side = collab.SIDES["hocuspocus"]
    assert collab.check_store(side, db, _result("x" * 10, {5: 10})) == {
        "text_identical": True,
        "text_length": 10,
        "acked_missing": 0,
    }
    # The store may hold keystrokes whose ack never arrived: no loss, and no credit against another's loss.
    assert collab.check_store(side, db, _result("x" * 10, {5: 8, 6: 2}))["acked_missing"] == 2
    # Two more were acknowledged than the store holds, and another editor's three are not there at all.
    assert collab.check_store(side, db, _result("x" * 15, {5: 12, 6: 3})) == {
        "text_identical": False,
        "text_length": 10,
        "acked_missing": 5,
    }


def test_a_missing_or_corrupt_store_is_reported_not_raised(tmp_path: Path) -> None:
    side = collab.SIDES["hocuspocus"]
    empty = _hocuspocus_db(tmp_path / "empty.db", None)
    assert collab.check_store(side, empty, _result("xy", {5: 2}))["acked_missing"] == 2
    corrupt = _hocuspocus_db(tmp_path / "corrupt.db", b"\x05\x01\x02not an update")
    assert "error" in collab.check_store(side, corrupt, _result("xy", {5: 2}))
    assert "error" in collab.check_store(side, tmp_path / "no-such-dir" / "x.db", _result("", {}))


def test_the_pycrdt_store_check_reads_what_the_library_wrote(tmp_path: Path) -> None:
    a, a_updates = _typed(7, 10)
    b, b_updates = _typed(8, 4)
    db = tmp_path / "p.db"

    class Store(SQLiteYStore):
        db_path = str(db)
        checkpoint_interval = 5  # the library also writes checkpoints (whole-document copies) beside the updates

    async def write() -> None:
        async with Store(path="/" + collab.DOC_NAME) as store:
            for update in a_updates[:7] + b_updates:
                await store.write(update)

    anyio.run(write)
    side = collab.SIDES["pycrdt-websocket"]
    stored = collab.check_store(side, db, _result("x" * 14, {7: 10, 8: 4}))
    assert stored == {"text_identical": False, "text_length": 11, "acked_missing": 3}


def test_the_target_is_the_higher_of_the_two_bars_from_the_same_run() -> None:
    sides = {
        "crdtstore": {"status": "unavailable: live channel not built yet"},
        "hocuspocus": {"max_sustained_ops_per_s": 125.0},
        "pycrdt-websocket": {"max_sustained_ops_per_s": 50.0},
    }
    assert collab.target(sides) == {"needed_ops_per_s": 62.5, "crdtstore_ops_per_s": None, "met": None}
    sides["pycrdt-websocket"]["max_sustained_ops_per_s"] = 80.0
    sides["crdtstore"]["max_sustained_ops_per_s"] = 70.0
    assert collab.target(sides)["needed_ops_per_s"] == 80.0 and collab.target(sides)["met"] is False
    sides["crdtstore"]["max_sustained_ops_per_s"] = 80.0
    assert collab.target(sides)["met"] is True
    # A peer that could not be installed sets no bar; with neither, there is nothing to meet.
    assert collab.target({"crdtstore": {"max_sustained_ops_per_s": 1.0}}) == {
        "needed_ops_per_s": None,
        "crdtstore_ops_per_s": 1.0,
        "met": None,
    }


def test_our_store_check_counts_each_editors_keystrokes(tmp_path: Path) -> None:
    from crdtstore.node import Node, NodeConfig

    text = chr(0x4E00) * 3 + chr(0x4E01) * 2

    async def write() -> None:
        node = Node(NodeConfig(region="bench", data_dir=tmp_path, sync=False))
        await node.start()
        try:
            await node.apply(collab.DOC_NAME, [{"op": "insert", "path": ["t"], "index": 0, "text": text}])
        finally:
            await node.close()

    anyio.run(write)
    assert collab.read_crdtstore_store(tmp_path) == (text, {0: 3, 1: 2})
    stored = collab.check_store(collab.SIDES["crdtstore"], tmp_path, _result(text, {0: 3, 1: 4}))
    assert stored["text_identical"] and stored["acked_missing"] == 2


# Our side across regions: the wiring, the driver's keystroke accounting, the per-region store check, a smoke run.

our_driver = load("bench_collab_crdtstore_driver", BENCH / "collab" / "crdtstore_driver.py")


def test_our_side_runs_three_regions_by_default_and_one_on_request() -> None:
    args = collab.parse_args([])
    assert (args.regions, args.latency_ms) == (3, 50.0)
    side = collab.SIDES["crdtstore"]
    urls = ["ws://127.0.0.1:1/v1/docs/doc/live", "ws://127.0.0.1:2/v1/docs/doc/live"]
    cmd = side.cluster_driver_cmd(urls, args, 4)
    assert [a for a in cmd if a.startswith("--url=")] == [f"--url={u}" for u in urls]
    assert our_driver.parse_args([f"--url={u}" for u in urls]).url == urls
    assert collab.parse_args(["--regions", "1"]).regions == 1
    for bad in (["--regions", "0"], ["--regions", "99"], ["--latency-ms", "-1"]):
        with pytest.raises(SystemExit):
            collab.parse_args(bad)
    with pytest.raises(SystemExit):  # every region's URL must be loopback
        our_driver.parse_args(["--url=ws://127.0.0.1:1/x", "--url=ws://10.1.1.1:1/x"])


def _editor(shared: object, index: int, region: int) -> object:
    return our_driver.Editor(index, "ws://127.0.0.1:1/x", shared, None, region=region)


def test_the_driver_times_each_keystroke_where_it_appears_within_and_across_regions() -> None:
    base = our_driver.EDITOR_BASE
    shared = our_driver.Shared()
    a, b, c = _editor(shared, 0, 0), _editor(shared, 1, 0), _editor(shared, 2, 1)
    for e in (a, b, c):
        e._on({"type": "snapshot", "version": "v", "value": {"t": ""}}, 0.0)
    a.sent_at += [1.0, 2.0]
    change = {"type": "change", "version": "v1", "origin": "local"}
    # b (same region) sees a's two keystrokes in one patch; c (another region) one at a time.
    b._on(change | {"patches": [{"path": ["t"], "insert": {"index": 0, "text": chr(base) * 2}}]}, 2.5)
    c._on(change | {"patches": [{"path": ["t"], "insert": {"index": 0, "text": chr(base)}}]}, 3.0)
    c._on(change | {"patches": [{"path": ["t"], "insert": {"index": 1, "text": chr(base)}}]}, 4.0)
    assert shared.visible_within == [1.5, 0.5] and shared.visible_across == [2.0, 2.0]
    # Its own change (tagged with its batch) is not a remote keystroke.
    a._on(change | {"batch": "x", "patches": [{"path": ["t"], "insert": {"index": 0, "text": chr(base)}}]}, 5.0)
    assert shared.visible_unknown == 0 and len(shared.visible_within) == 2


def test_the_driver_counts_keystrokes_it_cannot_place_instead_of_guessing() -> None:
    base = our_driver.EDITOR_BASE
    shared = our_driver.Shared()
    a, b = _editor(shared, 0, 0), _editor(shared, 1, 1)
    for e in (a, b):
        e._on({"type": "snapshot", "version": "v", "value": {"t": ""}}, 0.0)
    a.sent_at.append(1.0)
    # A character nobody typed, a third of a's when it typed one, and a value patch: none is timed.
    text = "x" + chr(base) * 2
    b._on({"type": "change", "version": "v1", "patches": [{"path": ["t"], "insert": {"index": 0, "text": text}}]}, 2.0)
    b._on({"type": "change", "version": "v1", "patches": [{"path": ["t"], "value": "whatever"}]}, 2.0)
    assert shared.visible_across == [1.0] and shared.visible_unknown == 2
    # A resync snapshot recounts what is already there: later characters are the later keystrokes.
    a.sent_at += [3.0, 4.0]
    b._on({"type": "snapshot", "version": "v2", "value": {"t": chr(base) * 2}}, 5.0)
    b._on(
        {"type": "change", "version": "v1", "patches": [{"path": ["t"], "insert": {"index": 2, "text": chr(base)}}]},
        6.0,
    )
    assert shared.visible_across == [1.0, 2.0]


def test_the_change_that_creates_the_text_times_the_keystrokes_it_carries() -> None:
    # The first change of a region makes the field appear: a value patch, the whole text at once.
    base = our_driver.EDITOR_BASE
    shared = our_driver.Shared()
    a, b, c = _editor(shared, 0, 0), _editor(shared, 1, 1), _editor(shared, 2, 1)
    for e in (a, b, c):
        e._on({"type": "snapshot", "version": "v", "value": {}}, 0.0)
    a.sent_at += [1.0, 2.0]
    c.sent_at.append(1.5)
    text = chr(base) + chr(base + 2) + chr(base)
    b._on({"type": "change", "version": "v1", "patches": [{"path": ["t"], "value": text}]}, 3.0)
    assert shared.visible_across == [2.0, 1.0] and shared.visible_within == [1.5]
    # c's own keystroke in the text is not timed as a remote one, nor counted unknown.
    c._on({"type": "change", "version": "v1", "patches": [{"path": ["t"], "value": text}]}, 3.0)
    assert shared.visible_across == [2.0, 1.0, 2.0, 1.0] and shared.visible_unknown == 0


def test_the_store_check_of_a_cluster_needs_every_region(tmp_path: Path) -> None:
    from crdtstore.node import Node, NodeConfig

    async def write(region: str, t: str) -> None:
        node = Node(NodeConfig(region=region, data_dir=tmp_path / region, sync=False))
        await node.start()
        try:
            await node.apply(collab.DOC_NAME, [{"op": "insert", "path": ["t"], "index": 0, "text": t}])
        finally:
            await node.close()

    # Editor 0 types in us, editor 1 in eu. eu lacks one of editor 0's keystrokes (not replicated yet when it
    # stopped: no ack is broken) and one of its own editor's (an acknowledged keystroke lost).
    mixed = chr(0x4E00) * 3 + chr(0x4E01) * 2
    anyio.run(write, "us", mixed)
    anyio.run(write, "eu", chr(0x4E00) * 2 + chr(0x4E01))
    side = collab.SIDES["crdtstore"]
    stored = collab.check_stores(side, [tmp_path / "us", tmp_path / "eu"], _result(mixed, {0: 3, 1: 2}))
    assert stored["text_identical"] is False and stored["regions_identical"] is False
    assert stored["acked_missing"] == 1
    assert stored["regions"]["us"]["acked_missing"] == 0 and stored["regions"]["eu"]["acked_missing"] == 1
    assert collab.check_stores(side, [tmp_path / "us"], _result(mixed, {0: 3}))["text_identical"] is True


def test_a_short_three_region_run_converges_and_stores_every_acknowledged_keystroke() -> None:
    # The smoke run: `crdtstore up` with the emulated WAN, a few editors for two seconds (bounded by the harness).
    args = collab.parse_args(["--peers=crdtstore", "--editors=6", "--seconds=2", "--drain=20", "--latency-ms=20"])
    run = collab.run_once(collab.SIDES["crdtstore"], 6, args)
    assert run.error is None, run.error
    r = run.result
    assert r["regions"] == 3 and r["server_processes"] == 3
    assert r["texts_identical"] and r["text_length"] == r["sent_ops"] == r["acked_ops"]
    assert r["visible_unknown"] == 0 and r["visible_missing"] == 0
    assert r["visible_ms_across_regions"]["p50"] is not None and r["visible_ms_within_region"]["p50"] is not None
    stored = r["persisted"]
    assert stored["text_identical"] and stored["acked_missing"] == 0 and set(stored["regions"]) == {"us", "eu", "ap"}
    # The disk under the stores was timed while the editors typed, and the table shows it.
    assert r["disk"]["probes"] >= 5 and r["disk"]["fsync_ms"]["p99"] >= 0
    header, row = collab.table([run]).splitlines()
    assert header.split()[-12:-9] == ["p99", "stalled", "steal"] and header.endswith("left out") and row.endswith("%")
    assert 0 <= r["host_steal_util"] <= 1  # the host's share of this machine's CPU while typing
    # The driver wrote its samples, so the latencies clear of the disk's stalls are reported beside all of them.
    clear = r["clear_of_stalls"]
    assert 0 <= clear["excluded_share"] <= 1
    if not r["disk"]["stalls"]:
        assert clear["ack_ms"] == r["ack_ms"] and clear["visible_ms_across_regions"] == r["visible_ms_across_regions"]


def _fake_runs(sustains_up_to: int) -> tuple[list[int], object]:
    asked: list[int] = []

    def step(editors: int) -> object:
        asked.append(editors)
        run = collab.Run("x", editors)
        p99 = 10.0 if editors <= sustains_up_to else 500.0
        run.result = {"ack_ms": {"p99": p99}, "offered_ops": 100, "acked_in_window": 100, "ops_per_s": editors}
        return run

    return asked, step


def test_the_ramp_climbs_until_a_run_is_not_sustained() -> None:
    asked, step = _fake_runs(60)
    runs = collab.ramp_runs(step, 400)
    assert asked == [10, 25, 50, 100] and [r.sustained() for r in runs] == [True, True, True, False]
    asked, step = _fake_runs(10_000)
    collab.ramp_runs(step, 200)
    assert asked == [10, 25, 50, 100, 200]  # never past --ramp-max


def test_the_ramp_goes_down_when_even_its_first_step_is_not_sustained() -> None:
    asked, step = _fake_runs(2)
    runs = collab.ramp_runs(step, 400)
    assert asked == [10, 5, 2] and runs[-1].sustained()
    asked, step = _fake_runs(0)  # nothing sustains: bounded all the same
    assert [r.editors for r in collab.ramp_runs(step, 400)] == [10, 5, 2, 1]


def test_editors_share_one_parse_of_a_frame_and_each_keeps_its_own_text() -> None:
    base = our_driver.EDITOR_BASE
    shared = our_driver.Shared()
    a, b = _editor(shared, 0, 0), _editor(shared, 1, 0)
    snapshot = orjson.dumps({"type": "snapshot", "version": "v", "value": {"t": "ab"}}).decode()
    change = orjson.dumps(
        [{"type": "change", "version": "v1", "patches": [{"path": ["t"], "insert": {"index": 0, "text": chr(base)}}]}]
    ).decode()
    for editor in (a, b):
        for raw in (snapshot, "" + change):  # equal frames, as each editor's socket hands them over
            for message in shared.frames.messages(raw):
                editor._on(message, 1.0)
    assert shared.frames.messages(change) is shared.frames.messages(change[:] + "")  # parsed once
    # Abuse: b types into its text; neither a's text nor the shared parse of the snapshot changes.
    b.state.edit([{"op": "insert", "path": ["t"], "index": 0, "text": "z"}])
    b.state.receive(
        {"type": "change", "version": "v2", "patches": [{"path": ["t"], "delete": {"index": 0, "count": 1}}]}
    )
    assert a.state.value() == {"t": chr(base) + "ab"}
    assert shared.frames.messages(snapshot)[0]["value"] == {"t": "ab"}
    assert b.state.value() == {"t": "zab"}


# The disk probe beside each run (bench/diskprobe.py).

diskprobe = load("bench_diskprobe", BENCH / "diskprobe.py")


def test_disk_probe_counts_only_fsyncs_past_the_stall_bound_as_stalled() -> None:
    probe = diskprobe.DiskProbe(Path("."))
    probe.latencies = [0.0003] * 97 + [0.049, 0.120, 0.600]
    summary = probe.summary()
    assert summary["probes"] == 100
    assert summary["stalls"] == 2
    assert summary["stalled_s"] == pytest.approx(0.72)
    assert summary["fsync_ms"]["max"] == 600.0
    assert summary["fsync_ms"]["p50"] == 0.3


def test_a_sample_belongs_to_a_stall_from_shortly_before_it_to_shortly_after() -> None:
    probe = diskprobe.DiskProbe(Path("."))
    probe.stalls = [(10.0, 10.3)]
    during = [probe.during_stall(t, before=0.15, after=0.05) for t in (9.84, 9.86, 10.1, 10.34, 10.36)]
    assert during == [False, True, True, True, False]


def test_latencies_clear_of_stalls_leave_out_exactly_the_stalls_keystrokes() -> None:
    probe = diskprobe.DiskProbe(Path("."))
    probe.stalls = [(5.0, 5.4)]
    quick = [[float(t), 0.010] for t in range(10)]  # typed at 0..9 s, 10 ms each; 5 s falls in the stall
    samples = {"ack": quick, "within": quick, "across": [*quick, [4.9, 0.500]]}  # the stall's slow one
    clear = collab.clear_of_stalls(samples, probe)
    assert clear["ack_ms"] == {"p50": 10.0, "p99": 10.0}
    assert clear["visible_ms_across_regions"] == {"p50": 10.0, "p99": 10.0}
    assert clear["excluded_share"] == pytest.approx(4 / 31, abs=1e-4)  # 5.0 in each kind, and 4.9
    assert collab.clear_of_stalls({}, probe)["excluded_share"] == 0.0


def test_disk_probe_times_real_syncs_in_the_directory_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with diskprobe.DiskProbe(tmp_path, interval=0.001, max_samples=5) as probe:
        for _ in range(500):  # bounded: five probes take milliseconds
            if len(probe.latencies) == 5:
                break
            time.sleep(0.01)
    assert len(probe.latencies) == 5
    assert all(x >= 0 for x in probe.latencies)
    assert list(tmp_path.iterdir()) == []
    unstarted = diskprobe.DiskProbe(tmp_path)
    unstarted.stop()  # a run whose driver failed before typing stops a probe that never started
    assert unstarted.summary() == {"probes": 0} and list(tmp_path.iterdir()) == []


def test_the_bench_puts_the_stores_where_it_is_told(tmp_path: Path) -> None:
    assert collab.parse_args(["--store-dir", str(tmp_path)]).store_dir == tmp_path
    assert collab.parse_args([]).store_dir is None


def test_the_tmpfs_run_is_asked_for_and_labelled_apart() -> None:
    assert collab.parse_args(["--tmpfs-run"]).tmpfs_run
    assert not collab.parse_args([]).tmpfs_run
    assert collab.TMPFS == Path("/dev/shm")


def test_steal_is_read_off_the_first_line_of_proc_stat() -> None:
    procs = load("bench_procs", BENCH / "procs.py")
    first = procs.steal_seconds()
    assert first is not None and first >= 0
    with open("/proc/stat") as f:
        fields = f.readline().split()
    assert fields[0] == "cpu"
    # The eighth counter after "cpu" is steal, in clock ticks; it only ever grows.
    assert procs.steal_seconds() >= int(fields[8]) / os.sysconf("SC_CLK_TCK") >= first
