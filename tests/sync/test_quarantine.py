"""The shared rules of quarantine (``sync.quarantine``): each decision, its use and its abuse."""

from __future__ import annotations

import pytest

from crdtstore.causal import CausalContext
from crdtstore.document import Document
from sync import quarantine as q
from sync.types import LogEntry

INC = [{"op": "increment", "path": ["n"]}]


def test_screen_skips_bad_ids_first_then_placeholders_then_held_documents() -> None:
    assert q.screen("doc", b"[]", set()) is None
    assert q.screen("a/b", b"", {"a/b"}) == "a document id holds no control characters, '/' or '\\'"
    assert q.screen("doc", b"", {"doc"}) == q.RELAYED
    assert q.screen("doc", b"[]", {"doc"}) == q.HELD
    assert q.screen("other", b"[]", {"doc"}) is None


@pytest.mark.parametrize("bad_id", ["a/b", ".", "..", "x" * 257, "nul\x00", ""])
def test_a_placeholder_keeps_an_addressable_id_and_never_a_bad_one(bad_id: str) -> None:
    assert q.placeholder(LogEntry("o.1.x", 3, "doc", b"junk")) == LogEntry("o.1.x", 3, "doc", b"")
    assert q.placeholder(LogEntry("o.1.x", 3, bad_id, b"junk")) == LogEntry("o.1.x", 3, q.NO_ID, b"")
    assert q.screen(q.NO_ID, b"", set()) is not None  # relayed on, it is skipped again, as a bad id
    assert q.is_placeholder(b"") and not q.is_placeholder(b"[]")


def test_hold_holds_each_addressable_document_once_and_no_more_than_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    held: set[str] = set()
    assert q.hold(held, "doc") and not q.hold(held, "doc")
    assert not q.hold(held, "a/b") and held == {"doc"}
    monkeypatch.setattr(q, "MAX_LISTED", 2)
    assert q.hold(held, "d2") and not q.hold(held, "d3")  # a hostile peer naming millions: bounded
    assert held == {"doc", "d2"}


def test_the_book_keeps_the_first_reason_counts_failures_and_releases() -> None:
    book = q.Quarantine()
    first = book.add("doc", ValueError("x" * 500), "o", 1, "deltas_skipped", now=5.0)
    assert first is not None and first.reason == ("ValueError: " + "x" * 500)[:200]
    assert book.add("doc", q.HELD, "o", 2, "deltas_skipped", now=6.0) is None  # already in: not logged again
    assert book.add("doc", "bad state", None, None, "states_rejected", now=7.0) is None
    [record] = book.listed()
    assert (record.reason, record.origin, record.seq, record.since, record.failures) == (first.reason, "o", 1, 5.0, 3)
    book.reject_id()
    assert not book.release("other")
    assert book.release("doc") and not book.release("doc")
    assert book.listed() == [] and "doc" not in book
    assert book.stats() == {
        "documents": 0,
        "deltas_skipped": 2,
        "states_rejected": 1,
        "ids_rejected": 1,
        "repaired": 1,
    }


def test_the_book_lists_at_most_the_bound_and_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(q, "MAX_LISTED", 1)
    book = q.Quarantine()
    assert book.add("a", "r", None, None, "states_rejected", now=0.0) is not None
    assert book.add("b", "r", None, None, "states_rejected", now=0.0) is not None  # logged, not listed
    assert [r.doc_id for r in book.listed()] == ["a"] and book.stats()["states_rejected"] == 2


@pytest.mark.parametrize(
    "entry",
    [
        LogEntry("", 1, "d", b""),
        LogEntry("o\x00", 1, "d", b""),
        LogEntry("o" * 201, 1, "d", b""),
        LogEntry("\udc80", 1, "d", b""),
        LogEntry("o", 0, "d", b""),
        LogEntry("o", 1 << 64, "d", b""),
        LogEntry("o", True, "d", b""),  # type: ignore[arg-type]
        LogEntry("o", 1, b"d", b""),  # type: ignore[arg-type]
        LogEntry("o", 1, "d", "delta"),  # type: ignore[arg-type]
    ],
)
def test_what_the_log_cannot_hold_is_refused(entry: LogEntry) -> None:
    with pytest.raises(ValueError):
        q.check_entry(entry)


def test_what_the_log_can_hold_passes_even_with_a_bad_id_or_no_delta() -> None:
    q.check_entry(LogEntry("o" * 200, (1 << 64) - 1, "a/b", b""))


def test_peer_data_may_claim_only_the_dots_we_minted() -> None:
    ours = Document()
    ours.apply(INC, replica="me")
    ours.apply(INC, replica="me")
    theirs = Document()
    for _ in range(3):
        theirs.apply(INC, replica="me")
    q.check_own_dots("me", ours.ctx, ours.ctx)
    q.check_own_dots("someone-else", ours.ctx, theirs.ctx)
    with pytest.raises(q.ForgedDots, match="up to 3"):
        q.check_own_dots("me", ours.ctx, theirs.ctx)
    q.check_own_dots("me", theirs.ctx, CausalContext())
