"""Tests of the LMDB adapter (crdtstore.storage)."""

from __future__ import annotations

import itertools
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.merkle import MerkleShape, MerkleTree
from crdtstore.storage import (
    IncompatibleStorage,
    InvalidDocumentId,
    Storage,
    check_doc_id,
)
from sync import messages as m
from sync.types import LogEntry

SHAPE = MerkleShape(fanout=4, depth=3)


def ids_from(*values: str) -> Callable[[], str]:
    it = iter(values)
    return lambda: next(it)


def counter_ids() -> Callable[[], str]:
    c = itertools.count(1)
    return lambda: f"n{next(c)}"


def open_storage(path: Path, random_id: Callable[[], str] | None = None, **kw: object) -> Storage:
    kw.setdefault("shape", SHAPE)
    return Storage.open(path, region=kw.pop("region", "eu"), random_id=random_id or counter_ids(), **kw)  # type: ignore[arg-type]


def commit(storage: Storage, fn: Callable[..., object]) -> object:
    txn = storage.begin_write()
    try:
        result = fn(txn)
        storage.flush_merkle(txn)  # what the group-commit writer does before every commit
    except BaseException:
        txn.abort()
        raise
    txn.commit()
    return result


# Identity and epochs.


def test_new_directory_gets_base_id_and_epoch_one(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r", ids_from("abc", "n1"))
    try:
        ident = s.identity
        assert (ident.region, ident.base, ident.epoch, ident.nonce) == ("eu", "eu-abc", 1, "n1")
        assert s.replica_id == "eu-abc.1.n1"
    finally:
        s.close()


def test_reopen_keeps_base_and_bumps_epoch(tmp_path: Path) -> None:
    seen = set()
    rid = counter_ids()
    for expected_epoch in (1, 2, 3):
        s = open_storage(tmp_path / "r", rid)
        assert s.identity.base == "eu-n1"
        assert s.identity.epoch == expected_epoch
        seen.add(s.replica_id)
        s.close()
    assert len(seen) == 3


def test_restored_backup_never_reuses_a_replica_id(tmp_path: Path) -> None:
    """A backup restored after the original moved on gets the same epoch, but never the same effective id."""
    rid = counter_ids()
    live = open_storage(tmp_path / "live", rid)
    (tmp_path / "backup").mkdir()
    live.env.copy(str(tmp_path / "backup"))
    used = {live.replica_id}
    live.close()
    live = open_storage(tmp_path / "live", rid)  # epoch 2 on the live timeline
    used.add(live.replica_id)
    live.close()
    restored = open_storage(tmp_path / "backup", rid)
    try:
        assert restored.identity.base == live.identity.base
        assert restored.identity.epoch == 2  # the epoch repeats ...
        assert restored.replica_id not in used  # ... the effective id does not
    finally:
        restored.close()


def test_refuses_another_region_or_shape(tmp_path: Path) -> None:
    open_storage(tmp_path / "r").close()
    with pytest.raises(IncompatibleStorage):
        open_storage(tmp_path / "r", region="us")
    with pytest.raises(IncompatibleStorage):
        open_storage(tmp_path / "r", shape=MerkleShape(16, 4))
    # The refused opens did not bump the epoch or leave the env open.
    s = open_storage(tmp_path / "r", ids_from("zz"))
    assert s.identity.epoch == 2
    s.close()


@pytest.mark.parametrize("region", ["", "a.b", "a b", "x" * 65, "é"])
def test_refuses_bad_region(tmp_path: Path, region: str) -> None:
    with pytest.raises(ValueError):
        open_storage(tmp_path / "r", region=region)


def test_refuses_bad_random_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        open_storage(tmp_path / "r", ids_from("has.dot"))


# Documents, buckets and the Merkle tree.


def test_documents_survive_reopen(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    assert commit(s, lambda t: s.put_doc(t, "a", b"state-a", b"1" * 16)) is True
    assert commit(s, lambda t: s.put_doc(t, "a", b"state-a2", b"2" * 16)) is False
    with s.read() as txn:
        root = s.merkle(txn).root()
    s.env.close()  # close without Storage.close to mimic a crash after commit
    s = open_storage(tmp_path / "r")
    try:
        with s.read() as txn:
            assert s.get_doc(txn, "a") == b"state-a2"
            assert s.get_digest(txn, "a") == b"2" * 16
            assert s.merkle(txn).root() == root
            assert s.count_docs(txn) == 1
    finally:
        s.close()


ops = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from("abcdefghij"), st.binary(min_size=16, max_size=16)),
    max_size=30,
)


@settings(deadline=None)
@given(ops)
def test_lmdb_tree_matches_the_pure_tree(steps: list[tuple[str, str, bytes]]) -> None:
    """Differential: whatever puts and deletes happen, the stored tree equals one built from the final set."""
    model: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        s = open_storage(Path(tmp))
        try:

            def apply(txn: object) -> None:
                for kind, doc_id, digest in steps:
                    if kind == "put":
                        assert s.put_doc(txn, doc_id, b"doc", digest) == (doc_id not in model)
                        model[doc_id] = digest
                    else:
                        assert s.delete_doc(txn, doc_id) == (doc_id in model)
                        model.pop(doc_id, None)

            commit(s, apply)
            pure = MerkleTree({}, shape=SHAPE)
            for doc_id, digest in model.items():
                pure.update(doc_id, None, digest)
            with s.read() as txn:
                stored = dict(txn.cursor(db=s.dbs["merkle"]))
                assert stored == pure.store
                for bucket in range(SHAPE.leaves):
                    expected = sorted((d, g) for d, g in model.items() if SHAPE.bucket(d) == bucket)
                    assert s.bucket_items(txn, bucket) == expected
                assert s.count_docs(txn) == len(model)
        finally:
            s.close()


def test_list_docs_pages_by_prefix(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:
        names = ["a", "a/1", "a/2", "a/3", "a/30", "b", "b/1"]
        commit(s, lambda t: [s.put_doc(t, n, b"x", n.encode().ljust(16, b"-")) for n in names])
        with s.read() as txn:
            assert s.list_docs(txn, "a/", None, 2) == (["a/1", "a/2"], True)
            assert s.list_docs(txn, "a/", "a/2", 2) == (["a/3", "a/30"], False)
            assert s.list_docs(txn, "a/", "a/30", 2) == ([], False)
            assert s.list_docs(txn, "", None, 100) == (names, False)
            assert s.list_docs(txn, "c", None, 5) == ([], False)
            assert s.list_docs(txn, "", "a/3", 1) == (["a/30"], True)
            with pytest.raises(ValueError):
                s.list_docs(txn, "", None, 0)
    finally:
        s.close()


def test_tombstones(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:
        commit(s, lambda t: s.put_tombstone(t, "gone", b"old-state"))
        with s.read() as txn:
            assert s.get_tombstone(txn, "gone") == b"old-state"
            assert s.get_doc(txn, "gone") is None
        assert commit(s, lambda t: s.delete_tombstone(t, "gone")) is True
        with s.read() as txn:
            assert s.get_tombstone(txn, "gone") is None
    finally:
        s.close()


@pytest.mark.parametrize("bad", ["", "x" * 257, "a\x00b", "\ud800"])
def test_invalid_doc_ids(bad: str) -> None:
    with pytest.raises(InvalidDocumentId):
        check_doc_id(bad)


def test_longest_id_is_accepted_everywhere(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    doc_id = "é" * 128  # 256 utf-8 bytes
    try:
        seq = commit(s, lambda t: s.next_feed_seq(t))
        commit(s, lambda t: (s.put_doc(t, doc_id, b"x", b"1" * 16), s.put_feed(t, doc_id, seq, b"{}")))
        with s.read() as txn:
            assert s.get_doc(txn, doc_id) == b"x"
            assert s.last_feed_seq(txn, doc_id) == seq
    finally:
        s.close()


# The log and version vectors.


def test_local_log_and_ranges(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    me = s.replica_id
    try:
        seqs = commit(s, lambda t: [s.append_local(t, me, f"d{i}", b"delta%d" % i) for i in range(5)])
        assert seqs == [1, 2, 3, 4, 5]
        with s.read() as txn:
            assert s.vector(txn) == {me: 5}
            assert s.log_range(txn, me, 2, 2) == [LogEntry(me, 3, "d2", b"delta2"), LogEntry(me, 4, "d3", b"delta3")]
            assert [e.seq for e in s.log_range(txn, me, 0, 100)] == [1, 2, 3, 4, 5]
            assert s.log_range(txn, "someone-else.1.x", 0, 100) == []
        assert commit(s, lambda t: s.truncate_log(t, me, 3)) == 3
        with s.read() as txn:
            assert [e.seq for e in s.log_range(txn, me, 0, 100)] == [4, 5]
            assert s.vector(txn) == {me: 5}  # truncation keeps the vector
        assert commit(s, lambda t: s.truncate_log(t, me, 99)) == 2
    finally:
        s.close()


def test_a_logged_entry_goes_on_the_wire_and_back_into_the_log_as_it_is(tmp_path: Path) -> None:
    # One log-entry type end to end: what LMDB returns is what Deltas carries and a peer appends.
    s, peer = open_storage(tmp_path / "a"), open_storage(tmp_path / "b")
    me = s.replica_id
    try:
        commit(s, lambda t: s.append_local(t, me, "doc\u00e9", b"\x00delta"))
        with s.read() as txn:
            (entry,) = s.log_range(txn, me, 0, 10)
        assert type(entry) is LogEntry
        (received,) = m.decode(m.Deltas((entry,)).encode()).entries  # no conversion on the way out
        assert received == entry and type(received) is LogEntry
        assert commit(peer, lambda t: peer.append_remote(t, received))
        with peer.read() as txn:
            assert peer.log_range(txn, me, 0, 10) == [entry]
    finally:
        s.close()
        peer.close()


def test_skip_log_raises_the_mark_over_logged_entries(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:
        for seq in (1, 4, 5, 7):
            commit(s, lambda t, seq=seq: s.append_remote(t, LogEntry("o", seq, "d", b"x")))
        assert commit(s, lambda t: s.skip_log(t, "o", 3)) == 5  # 4 and 5 are logged: the mark runs on
        assert commit(s, lambda t: s.skip_log(t, "o", 2)) == 5  # never lowered
        assert commit(s, lambda t: s.skip_log(t, "fresh", 0)) == 0
        with s.read() as txn:
            assert s.vector(txn) == {"o": 5}
            assert s.has_log(txn, "o", 2) and not s.has_log(txn, "o", 6)
    finally:
        s.close()


def test_a_tombstone_digest_is_in_the_tree_but_not_a_document(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:
        commit(s, lambda t: s.put_digest(t, "gone", b"t" * 16))
        with s.read() as txn:
            assert s.get_digest(txn, "gone") == b"t" * 16 and s.get_doc(txn, "gone") is None
            assert s.merkle(txn).root() != MerkleTree({}, shape=SHAPE).root()
        assert commit(s, lambda t: s.delete_doc(t, "gone")) is False  # no live document to delete
        assert commit(s, lambda t: s.put_doc(t, "gone", b"back", b"b" * 16)) is True  # resurrected: created
        with s.read() as txn:
            assert s.get_digest(txn, "gone") == b"b" * 16 and s.count_docs(txn) == 1
        assert commit(s, lambda t: s.delete_doc(t, "gone")) is True
        with s.read() as txn:
            assert s.get_digest(txn, "gone") is None
            assert s.merkle(txn).root() == MerkleTree({}, shape=SHAPE).root()
    finally:
        s.close()


def test_origins_sharing_a_prefix_stay_apart(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:
        commit(s, lambda t: [s.append_local(t, o, "d", o.encode()) for o in ("a", "ab", "a", "ab")])
        with s.read() as txn:
            assert [e.delta for e in s.log_range(txn, "a", 0, 10)] == [b"a", b"a"]
            assert s.vector(txn) == {"a": 2, "ab": 2}
        commit(s, lambda t: s.truncate_log(t, "a", 10))
        with s.read() as txn:
            assert len(s.log_range(txn, "ab", 0, 10)) == 2
    finally:
        s.close()


@given(st.permutations(range(1, 9)), st.lists(st.integers(1, 8), max_size=5))
@settings(deadline=None)
def test_remote_entries_in_any_order_advance_the_contiguous_vector(order: list[int], dups: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = open_storage(Path(tmp))
        try:
            delivered: set[int] = set()

            def deliver(txn: object, seq: int) -> None:
                fresh = s.append_remote(txn, LogEntry("peer", seq, "d", b"%d" % seq))
                assert fresh == (seq not in delivered)
                delivered.add(seq)
                contiguous = 0
                while contiguous + 1 in delivered:
                    contiguous += 1
                assert s.get_seq(txn, "peer") == contiguous

            commit(s, lambda t: [deliver(t, seq) for seq in order[:4] + dups + order[4:]])
            with s.read() as txn:
                assert s.vector(txn) == {"peer": 8}
                assert [e.seq for e in s.log_range(txn, "peer", 0, 100)] == list(range(1, 9))
                assert s.has_log(txn, "peer", 3) and not s.has_log(txn, "peer", 9)
        finally:
            s.close()


def test_acked_vectors_only_rise(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:
        commit(s, lambda t: s.set_acked(t, "peer-1", {"a": 5, "b": 2}))
        commit(s, lambda t: s.set_acked(t, "peer-1", {"a": 3, "b": 4}))
        commit(s, lambda t: s.set_acked(t, "peer-12", {"a": 1}))
        with s.read() as txn:
            assert s.acked(txn, "peer-1") == {"a": 5, "b": 4}
            assert s.acked(txn, "peer-12") == {"a": 1}
            assert s.acked(txn, "nobody") == {}
    finally:
        s.close()


# The change feed and the clock.


def test_feed_per_document(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:

        def write(txn: object) -> None:
            for doc_id in ["a", "ab", "a", "b", "ab", "a"]:
                seq = s.next_feed_seq(txn)
                s.put_feed(txn, doc_id, seq, f"{doc_id}:{seq}".encode())

        commit(s, write)
        with s.read() as txn:
            assert s.feed_range(txn, "a", 0, 10) == [(1, b"a:1"), (3, b"a:3"), (6, b"a:6")]
            assert s.feed_range(txn, "a", 1, 1) == [(3, b"a:3")]
            assert s.feed_range(txn, "ab", 0, 10) == [(2, b"ab:2"), (5, b"ab:5")]
            assert s.last_feed_seq(txn, "a") == 6
            assert s.last_feed_seq(txn, "ab") == 5
            assert s.last_feed_seq(txn, "b") == 4
            assert s.last_feed_seq(txn, "aa") == 0
            assert s.last_feed_seq(txn, "z") == 0
            assert s.get_feed(txn, "a", 3) == b"a:3"
            assert s.get_feed(txn, "a", 2) is None
    finally:
        s.close()
    s = open_storage(tmp_path / "r")
    try:
        assert commit(s, lambda t: s.next_feed_seq(t)) == 7  # never reused after reopen
    finally:
        s.close()


def test_hlc_persists(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    commit(s, lambda t: s.set_hlc(t, 12345))
    s.close()
    s = open_storage(tmp_path / "r")
    try:
        with s.read() as txn:
            assert s.get_hlc(txn) == 12345
    finally:
        s.close()


# Map size.


def test_grow_doubles_up_to_the_cap(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r", map_size=1 << 20, max_map_size=3 << 20)
    try:
        assert s.grow() is True
        assert s.info()["map_size"] == 2 << 20
        assert s.grow() is True
        assert s.info()["map_size"] == 3 << 20
        assert s.grow() is False
        assert s.info()["map_grows"] == 2
    finally:
        s.close()


def test_grow_waits_for_open_reads_and_new_reads_wait_for_it(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r", map_size=1 << 20, max_map_size=4 << 20)
    grower = threading.Thread(target=s.grow, daemon=True)
    with s.read():
        grower.start()
        grower.join(0.2)
        assert grower.is_alive()  # a read is open: the map must not move under it
    grower.join(10)  # the read's end wakes it (a read opened now would wait for the grow)
    assert not grower.is_alive(), "the grow was never woken"  # (left open: close would wait for it too)
    assert s.info()["map_size"] == 2 << 20
    assert s.read_view("absent") is None  # reads go on after it
    s.close()


def test_grown_map_is_kept_on_reopen(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r", map_size=1 << 20, max_map_size=4 << 20)
    s.grow()
    commit(s, lambda t: s.put_doc(t, "a", b"x" * (1 << 20), b"1" * 16))
    s.close()
    s = open_storage(tmp_path / "r", map_size=1 << 20, max_map_size=4 << 20)
    try:
        assert s.info()["map_size"] >= 2 << 20
        with s.read() as txn:
            assert len(s.get_doc(txn, "a") or b"") == 1 << 20
    finally:
        s.close()


def test_refuses_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        open_storage(tmp_path / "r", map_size=2 << 20, max_map_size=1 << 20)
    with pytest.raises(ValueError):
        open_storage(tmp_path / "r", max_dbs=3)


# Snapshot, tail and views.


def test_tail_appends_in_order_and_snapshots_and_deletes_drop_it(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    try:
        commit(s, lambda t: s.put_doc(t, "a", b"snap-1", b"1" * 16))
        commit(s, lambda t: s.put_doc(t, "ab", b"other", b"9" * 16))  # shares the prefix: must stay apart
        for seq in (1, 2, 3):
            commit(s, lambda t, seq=seq: s.append_tail(t, "a", seq, b"delta-%d" % seq, bytes([seq]) * 16))
        commit(s, lambda t: s.put_view(t, "a", b"[1]"))
        with s.read() as txn:
            assert s.get_tail(txn, "a") == [(1, b"delta-1"), (2, b"delta-2"), (3, b"delta-3")]
            assert s.get_tail(txn, "ab") == []
            assert s.get_digest(txn, "a") == bytes([3]) * 16  # each append recorded the new digest
            assert s.get_view(txn, "a") == b"[1]"
            root = s.merkle(txn).root()
        pure = MerkleTree({}, shape=SHAPE)
        pure.update("a", None, bytes([3]) * 16)
        pure.update("ab", None, b"9" * 16)
        assert root == pure.root()  # leaf-only updates plus the flush equal the eager tree
        assert commit(s, lambda t: s.put_doc(t, "a", b"snap-2", b"4" * 16)) is False  # compaction
        with s.read() as txn:
            assert s.get_doc(txn, "a") == b"snap-2" and s.get_tail(txn, "a") == []
        commit(s, lambda t: s.append_tail(t, "a", 1, b"delta-again", b"5" * 16))
        assert commit(s, lambda t: s.delete_doc(t, "a")) is True
        with s.read() as txn:
            assert (s.get_doc(txn, "a"), s.get_tail(txn, "a"), s.get_view(txn, "a")) == (None, [], None)
            assert s.get_doc(txn, "ab") == b"other"
        assert s.merkle_dirty == 0
    finally:
        s.close()


# The meta counters a write transaction keeps in memory.


def _meta_on_disk(s: Storage, txn: object, key: bytes) -> bytes | None:
    return txn.get(key, db=s.dbs["meta"])  # type: ignore[attr-defined, no-any-return]


def test_a_batch_writes_its_counters_once_at_the_flush(tmp_path: Path) -> None:
    s = open_storage(tmp_path / "r")
    me = s.replica_id
    try:
        txn = s.begin_write()
        assert [s.append_local(txn, me, "d", b"x") for _ in range(3)] == [1, 2, 3]
        assert [s.next_feed_seq(txn) for _ in range(3)] == [1, 2, 3]
        s.set_hlc(txn, 77)
        # Kept in memory, not yet in the transaction...
        assert _meta_on_disk(s, txn, b"vv\x00" + me.encode()) is None
        assert s.get_seq(txn, me) == 3 and s.get_hlc(txn) == 77
        assert s.vector(txn) == {me: 3}  # ...though a cursor over meta sees them (written out first)
        s.flush_merkle(txn)
        txn.commit()
        with s.read() as r:
            assert s.vector(r) == {me: 3} and s.get_hlc(r) == 77
        assert commit(s, lambda t: s.next_feed_seq(t)) == 4
    finally:
        s.close()


def test_an_aborted_batch_leaves_no_counter_behind(tmp_path: Path) -> None:
    """Abuse: a batch that rolls back (its map was full, its commit failed) must not lend its seqs to the next."""
    s = open_storage(tmp_path / "r")
    me = s.replica_id
    try:
        txn = s.begin_write()
        assert s.append_local(txn, me, "d", b"x") == 1
        s.flush_merkle(txn)
        txn.abort()
        assert commit(s, lambda t: s.append_local(t, me, "d", b"y")) == 1
        with s.read() as r:
            assert s.log_range(r, me, 0, 10) == [LogEntry(me, 1, "d", b"y")]
    finally:
        s.close()


def test_a_rolled_back_savepoint_gives_its_seq_back(tmp_path: Path) -> None:
    """Abuse: a child transaction (a request's savepoint) takes a seq and aborts. The memory cannot follow
    that abort, so the next write must read the parent's mark: seq 2 again, never a gap at 2."""
    s = open_storage(tmp_path / "r")
    me = s.replica_id
    try:
        txn = s.begin_write()
        assert s.append_local(txn, me, "d", b"a") == 1
        assert s.next_feed_seq(txn) == 1
        child = s.begin_write(parent=txn)
        assert s.append_local(child, me, "d", b"lost") == 2
        assert s.next_feed_seq(child) == 2
        child.abort()
        assert s.append_local(txn, me, "d", b"b") == 2
        assert s.next_feed_seq(txn) == 2
        s.flush_merkle(txn)
        txn.commit()
        with s.read() as r:
            assert [(e.seq, e.delta) for e in s.log_range(r, me, 0, 10)] == [(1, b"a"), (2, b"b")]
            assert s.vector(r) == {me: 2}
    finally:
        s.close()


# Merkle leaf changes kept in memory within a top-level transaction.

groups = st.lists(st.tuples(st.sampled_from(["top", "child-commit", "child-abort"]), ops), max_size=6)


@settings(deadline=None)
@given(groups)
def test_leaf_changes_kept_in_memory_follow_savepoints(steps: list[tuple[str, list[tuple[str, str, bytes]]]]) -> None:
    """Differential: the leaves a batch changes stay in memory until a savepoint or the flush writes them out;
    whatever mix of direct writes and committed or aborted child transactions, the stored tree equals the
    pure tree of what committed (an aborted child's leaf changes must vanish with it)."""
    model: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        s = open_storage(Path(tmp))
        try:

            def apply(txn: object) -> None:
                for mode, group in steps:
                    target = txn if mode == "top" else s.begin_write(parent=txn)  # type: ignore[arg-type]
                    scratch = dict(model)
                    for kind, doc_id, digest in group:
                        if kind == "put":
                            s.put_doc(target, doc_id, b"doc", digest)
                            scratch[doc_id] = digest
                        else:
                            s.delete_doc(target, doc_id)
                            scratch.pop(doc_id, None)
                    if mode == "child-abort":
                        target.abort()
                        continue
                    if mode == "child-commit":
                        target.commit()
                    model.clear()
                    model.update(scratch)

            commit(s, apply)
            pure = MerkleTree({}, shape=SHAPE)
            for doc_id, digest in model.items():
                pure.update(doc_id, None, digest)
            with s.read() as txn:
                assert dict(txn.cursor(db=s.dbs["merkle"])) == pure.store
        finally:
            s.close()


def test_a_known_old_digest_saves_the_read_and_agrees_with_it(tmp_path: Path) -> None:
    """A caller that knows the stored digest (the writer's cached document) passes it; the tree is the same."""
    s = open_storage(tmp_path / "r")
    try:
        commit(s, lambda t: s.put_doc(t, "a", b"doc", b"1" * 16, None))
        commit(s, lambda t: s.append_tail(t, "a", 1, b"delta", b"2" * 16, b"1" * 16))
        commit(s, lambda t: s.put_doc(t, "b", b"doc", b"3" * 16))
        pure = MerkleTree({}, shape=SHAPE)
        pure.update("a", None, b"2" * 16)
        pure.update("b", None, b"3" * 16)
        with s.read() as txn:
            assert dict(txn.cursor(db=s.dbs["merkle"])) == pure.store
            assert s.get_digest(txn, "a") == b"2" * 16
    finally:
        s.close()


@pytest.mark.parametrize("bad", [None, 7, b"id", ["a"], {"a": 1}])
def test_a_doc_id_that_is_no_string_is_refused_typed(bad: object) -> None:
    """Abuse: the remembered ids are keyed by the id itself; an unhashable or non-string id is still
    an InvalidDocumentId, never a TypeError from the cache."""
    with pytest.raises(InvalidDocumentId):
        check_doc_id(bad)  # type: ignore[arg-type]


def test_a_refused_id_is_refused_every_time() -> None:
    """Abuse: a refusal is never remembered as an answer (a lone surrogate, NUL, too long)."""
    for bad in ["\ud800", "a\x00b", "x" * 257, ""]:
        for _ in range(2):
            with pytest.raises(InvalidDocumentId):
                check_doc_id(bad)
    assert check_doc_id("ok") == b"ok"


def test_puts_kept_for_the_flush_are_seen_by_every_reader_of_the_transaction(tmp_path: Path) -> None:
    """The batch's puts to log, tail, buckets and feed wait for one putmulti per database; every read of
    those databases in the same transaction still sees them (and a child transaction does too)."""
    s = open_storage(tmp_path / "r")
    me = s.replica_id
    try:
        txn = s.begin_write()
        assert s.append_local(txn, me, "d", b"delta-1") == 1
        assert s.has_log(txn, me, 1)
        assert s.log_range(txn, me, 0, 10) == [LogEntry(me, 1, "d", b"delta-1")]
        s.put_doc(txn, "d", b"snap", b"1" * 16)
        s.append_tail(txn, "d", 1, b"t1", b"2" * 16, b"1" * 16)
        assert s.get_tail(txn, "d") == [(1, b"t1")]
        assert s.get_digest(txn, "d") == b"2" * 16
        assert s.bucket_items(txn, SHAPE.bucket("d")) == [("d", b"2" * 16)]
        s.put_feed(txn, "d", 1, b"{}")
        assert s.feed_range(txn, "d", 0, 10) == [(1, b"{}")]
        s.append_tail(txn, "d", 2, b"t2", b"3" * 16, b"2" * 16)
        s.put_feed(txn, "d", 2, b"[]")
        child = s.begin_write(parent=txn)  # a savepoint writes everything out first
        assert s.get_tail(child, "d") == [(1, b"t1"), (2, b"t2")]
        assert s.last_feed_seq(child, "d") == 2
        child.abort()
        s.append_tail(txn, "d", 3, b"t3", b"4" * 16, b"3" * 16)
        s.put_doc(txn, "d", b"snap2", b"5" * 16)  # compaction drops the tail, kept puts included
        s.flush_merkle(txn)
        txn.commit()
        with s.read() as r:
            assert s.get_tail(r, "d") == []
            assert s.get_doc(r, "d") == b"snap2" and s.get_digest(r, "d") == b"5" * 16
            assert [seq for seq, _ in s.feed_range(r, "d", 0, 10)] == [1, 2]
            assert s.log_range(r, me, 0, 10) == [LogEntry(me, 1, "d", b"delta-1")]
    finally:
        s.close()


def test_an_aborted_batch_leaves_no_kept_put_behind(tmp_path: Path) -> None:
    """Abuse: puts kept for a flush that never came (the batch rolled back) must not land in the next batch."""
    s = open_storage(tmp_path / "r")
    me = s.replica_id
    try:
        txn = s.begin_write()
        s.append_local(txn, me, "d", b"lost")
        s.put_feed(txn, "d", 1, b"lost")
        s.put_doc(txn, "d", b"snap", b"1" * 16)
        s.append_tail(txn, "d", 1, b"lost", b"2" * 16, b"1" * 16)
        txn.abort()
        commit(s, lambda t: s.append_local(t, me, "e", b"kept"))
        with s.read() as r:
            assert s.log_range(r, me, 0, 10) == [LogEntry(me, 1, "e", b"kept")]
            assert s.feed_range(r, "d", 0, 10) == [] and s.get_tail(r, "d") == []
            assert s.get_digest(r, "d") is None
            assert dict(r.cursor(db=s.dbs["merkle"])) == {}
    finally:
        s.close()
