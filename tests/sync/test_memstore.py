"""MemStore keeps the node's quarantine (``sync.quarantine``): what no differential run reaches by chance."""

from __future__ import annotations

from typing import Any

import pytest

from crdtstore.causal import CausalContext
from crdtstore.codec import encode_delta, encode_document
from crdtstore.document import Document
from sync import memstore
from sync.memstore import MemStore
from sync.quarantine import Rejected
from sync.store import run_sync
from sync.types import LogEntry

INC = [{"op": "increment", "path": ["n"]}]


def stores() -> tuple[MemStore, MemStore]:
    return MemStore("a", region="eu", nonce="1"), MemStore("b", region="us", nonce="2")


def snapshot(store: MemStore) -> tuple[Any, ...]:
    return (store.encoded(), run_sync(store.merkle_root()), run_sync(store.version_vector()))


def _fails_halfway(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """The next join or merge MemStore runs changes its working copy, and then fails.

    The seam is the check MemStore runs on its working copy just before the join: the compiled
    core's classes (``crdtstore.compiled``) cannot have their methods replaced.
    """

    def half(mine: str, ours: CausalContext, theirs: CausalContext) -> None:
        ours.join(theirs)  # a change made to the working copy...
        raise RuntimeError(message)  # ...and then a failure: only the copy may have changed

    monkeypatch.setattr(memstore, "check_own_dots", half)


def test_a_join_that_fails_halfway_leaves_the_document_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = stores()
    dst.apply_remote(*src.apply("doc", INC))
    before = snapshot(dst)
    entry = src.apply("doc", INC)
    _fails_halfway(monkeypatch, "and then a failure")
    assert dst.apply_remote(*entry)
    monkeypatch.undo()
    assert dst.encoded() == before[0] and run_sync(dst.merkle_root()) == before[1]
    assert run_sync(dst.version_vector()) == {src.origin: 2}  # skipped, yet received
    assert [(q.doc_id, q.reason) for q in dst.quarantined()] == [("doc", "RuntimeError: and then a failure")]


def test_a_merge_that_fails_halfway_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = stores()
    dst.apply_remote(*src.apply("doc", INC))
    src.apply("doc", INC)
    before = snapshot(dst)
    _fails_halfway(monkeypatch, "late")
    [out] = run_sync(dst.merge_states([("doc", src.read_state("doc") or b"")]))
    monkeypatch.undo()
    assert isinstance(out, Rejected) and isinstance(out.__cause__, RuntimeError)
    assert snapshot(dst) == before and [q.doc_id for q in dst.quarantined()] == ["doc"]


def test_a_quarantined_document_takes_local_writes_and_a_restart_forgets_the_quarantine() -> None:
    src, dst = stores()
    first = src.apply("doc", INC)
    assert dst.apply_remote(first.origin, first.seq, "doc", b"junk")  # the first write, corrupted
    dst.apply("doc", INC)  # local writes go on
    assert dst.apply_remote(*src.apply("doc", INC)) and dst.docs["doc"].value() == {"n": 1}  # held back
    assert dst.quarantined()[0].failures == 2 and dst.held == {"doc"}
    assert [e.delta for e in run_sync(dst.log_range(src.origin, 0, 10))] == [b"", b""]
    # As the node's, the quarantine is memory: after a restart later deltas join again
    # (out of causal order: the counter delta carries src's whole share, 3).
    dst.restart("3")
    assert dst.quarantined() == [] and dst.held == set() and dst.quarantine.stats()["deltas_skipped"] == 0
    assert dst.apply_remote(*src.apply("doc", INC))
    assert dst.docs["doc"].value() == {"n": 4}


def test_a_state_that_merges_releases_even_if_it_changes_nothing() -> None:
    src, dst = stores()
    first = src.apply("doc", INC)
    dst.apply_remote(*first)
    assert dst.apply_remote(src.origin, 2, "doc", b"")  # a placeholder from a relay
    assert [q.reason for q in dst.quarantined()] == ["skipped by the peer that relayed it"]
    assert run_sync(dst.merge_state("doc", src.read_state("doc") or b"")) is False  # equal: no change
    assert dst.quarantined() == [] and dst.held == set() and dst.quarantine.stats()["repaired"] == 1


def test_bad_states_and_ids_quarantine_or_are_ignored_and_change_nothing() -> None:
    src, dst = stores()
    src.apply("doc", INC)
    good = src.read_state("doc") or b""
    assert run_sync(dst.merge_state("doc", b"junk")) is False
    assert run_sync(dst.merge_state("a/b", good)) is False
    assert dst.docs == {} and [q.doc_id for q in dst.quarantined()] == ["doc"]
    assert dst.quarantine.stats()["states_rejected"] == 1 and dst.quarantine.stats()["ids_rejected"] == 1
    assert dst.held == set()  # a bad state does not hold deltas back: they still join
    assert dst.apply_remote(*src.log[src.origin][1]) and dst.docs["doc"].value() == {"n": 1}
    # An empty state of an unknown document changes nothing and stores nothing (as the node).
    assert run_sync(dst.merge_state("new", encode_document(Document()))) is False and "new" not in dst.docs


def test_forged_dots_quarantine_a_delta_and_a_state_alike() -> None:
    src, dst = stores()
    dst.apply("doc", INC)
    before = dst.encoded()
    forger = Document()
    for _ in range(3):
        forged = forger.apply(INC, replica=dst.origin)
    assert dst.apply_remote(src.origin, 1, "doc", encode_delta(forged))
    [out] = run_sync(dst.merge_states([("doc", encode_document(forger))]))
    assert isinstance(out, Rejected) and dst.encoded() == before
    [record] = dst.quarantined()
    assert record.reason == "ForgedDots: peer data claims dots of this replica up to 3" and record.failures == 2
    assert dst.apply_remote(src.origin, 2, "doc", b"[]") and dst.quarantined()[0].failures == 3  # held back


def test_a_batch_with_a_bad_origin_is_refused_whole() -> None:
    src, dst = stores()
    good = src.apply("doc", INC)
    with pytest.raises(ValueError):
        run_sync(dst.apply_remote_many([good, LogEntry("bad\x00", 1, "doc", good.delta)]))
    assert dst.docs == {} and dst.log == {} and run_sync(dst.version_vector()) == {}
