"""Quarantine: what a replica does with peer data it cannot join, decided once for every store.

Theory of operation
-------------------

Nothing a peer sends about one document may stop the others
(``../shared/ARCHITECTURE.md``, "Replication"). Both stores of the
:class:`sync.store.ReplicaStore` protocol, :class:`crdtstore.node.Node` on
LMDB and :class:`sync.memstore.MemStore` in memory, follow the rules below,
and take every decision that is not I/O from this module, so that the
simulator, which runs over memory, tests what ships:

* A batch of remote deltas is refused whole (``ValueError``, nothing
  written) only when the log could not hold one of its entries at all
  (:func:`check_entry`: a malformed origin or seq).
* Otherwise each entry not yet received is joined, or *skipped*: its id is
  one the API could not address, it is a placeholder, its document is
  held back (:func:`screen`), or its delta does not decode, claims dots of
  this incarnation it never minted (:func:`check_own_dots`) or does not
  join or store. A skipped entry still counts as received: the store logs
  :func:`placeholder` in its place, so the origin's mark advances, the
  peer is acked, and the bad bytes are never relayed (a peer pulling the
  log gets the placeholder and skips it the same way).
* A skipped entry of an addressable id puts its document in quarantine
  and holds back its later deltas (:func:`hold`): joined without the
  skipped one, out of causal order, they could show wrong values. An
  unaddressable id is only counted (``ids_rejected``) and never stored.
* A full state that merges releases its document (held deltas join again,
  the record leaves the list: ``repaired``); one that does not merge
  quarantines the document without holding it back and changes nothing,
  and ``merge_states`` reports it as :class:`Rejected`.
* The quarantine lives in memory (:class:`Quarantine` plus the held set):
  a restart empties it; the repair does not depend on it, since the
  document's Merkle digest still differs from its peers'.

The module holds no clock and does no I/O: a store passes the time in and
does its own logging.
"""

from __future__ import annotations

import collections
from collections.abc import Container, MutableSet
from dataclasses import dataclass
from typing import Any

from crdtstore.causal import CausalContext
from crdtstore.limits import doc_id_problem

from .types import LogEntry

__all__ = [
    "HELD",
    "MAX_LISTED",
    "NO_ID",
    "RELAYED",
    "ForgedDots",
    "Quarantine",
    "Quarantined",
    "Rejected",
    "check_entry",
    "check_own_dots",
    "describe",
    "hold",
    "is_placeholder",
    "placeholder",
    "screen",
]

NO_ID = "."
"""The id a skipped entry with an unaddressable id is logged under: no valid id itself, so a peer it is
relayed to ignores it too."""

MAX_LISTED = 10_000
"""Documents listed (and held back) at most: a hostile peer could name millions; beyond, only counted."""

RELAYED = "skipped by the peer that relayed it"
"""Why a placeholder is skipped: the peer could not join it either, so we cannot have it."""

HELD = "held: the document is in quarantine"
"""Why a later delta of a quarantined document is skipped."""

_COUNTERS = ("deltas_skipped", "states_rejected", "ids_rejected", "repaired")


class ForgedDots(ValueError):
    """Peer data claims dots of this replica's current incarnation that it never minted."""


class Rejected(ValueError):
    """A peer's state that a store did not merge: its document is quarantined (or its id ignored).

    ``merge_states`` returns it in place of a result, so the adapter counts
    and logs it; the store changed nothing for it. ``__cause__`` holds the
    error that refused it, when there was one.
    """


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A document some peer data could not be joined into.

    Attributes:
        doc_id: The document.
        reason: Why the first failure happened (the exception, shortened).
        origin: The origin of the skipped delta, None for a state.
        seq: Its sequence number, None for a state.
        since: When it entered quarantine (the store's clock).
        failures: Failures since it entered quarantine.
    """

    doc_id: str
    reason: str
    origin: str | None
    seq: int | None
    since: float
    failures: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.doc_id,
            "reason": self.reason,
            "origin": self.origin,
            "seq": self.seq,
            "since": self.since,
            "failures": self.failures,
        }


class Quarantine:
    """The quarantine's records and counters (the held set is the store's: Node keeps it on its writer)."""

    def __init__(self) -> None:
        self._records: collections.OrderedDict[str, Quarantined] = collections.OrderedDict()
        self._counts: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._records

    def add(
        self, doc_id: str, error: BaseException | str, origin: str | None, seq: int | None, counter: str, *, now: float
    ) -> Quarantined | None:
        """Count a failure of ``doc_id``'s peer data under ``counter``; the record if it just entered.

        A document already in quarantine keeps its first reason; only its failures grow.
        """
        self._counts[counter] += 1
        old = self._records.get(doc_id)
        if old is not None:
            self._records[doc_id] = Quarantined(doc_id, old.reason, old.origin, old.seq, old.since, old.failures + 1)
            return None
        record = Quarantined(doc_id, describe(error), origin, seq, now)
        if len(self._records) < MAX_LISTED:
            self._records[doc_id] = record
        return record

    def reject_id(self) -> None:
        """Count peer data for an id the API could not address (ignored, never stored)."""
        self._counts["ids_rejected"] += 1

    def release(self, doc_id: str) -> bool:
        """A state of ``doc_id`` merged: it leaves quarantine; True if it was in."""
        if self._records.pop(doc_id, None) is None:
            return False
        self._counts["repaired"] += 1
        return True

    def listed(self) -> list[Quarantined]:
        """The documents in quarantine, oldest first (at most :data:`MAX_LISTED`)."""
        return list(self._records.values())

    def stats(self) -> dict[str, int]:
        """``documents`` and the counters since start (exported as metrics by the node)."""
        return {"documents": len(self._records), **{name: self._counts[name] for name in _COUNTERS}}


def check_entry(entry: LogEntry) -> None:
    """Refuse what the log cannot hold at all: an origin or seq no peer of ours could have sent honestly.

    Raises:
        ValueError: The entry, and so its whole batch, is refused.
    """
    origin = entry.origin
    if type(origin) is not str or not origin or "\x00" in origin or len(origin) > 200:
        raise ValueError(f"bad origin {origin!r:.80}")
    try:
        if len(origin.encode()) > 200:
            raise ValueError(f"bad origin {origin!r:.80}")
    except UnicodeEncodeError as exc:
        raise ValueError("origin is not valid unicode") from exc
    if type(entry.seq) is not int or not 1 <= entry.seq < 1 << 64:
        raise ValueError(f"bad seq {entry.seq!r:.40}")
    if type(entry.doc_id) is not str or type(entry.delta) is not bytes:
        raise ValueError("bad log entry")


def screen(doc_id: str, delta: bytes, held: Container[str]) -> str | None:
    """Why an entry not yet received is skipped before its delta is even decoded, or None to join it."""
    problem = doc_id_problem(doc_id)
    if problem is not None:
        return problem
    if is_placeholder(delta):
        return RELAYED
    if doc_id in held:
        # The document misses an earlier delta: joining later ones out of causal order
        # could show wrong values (a counter replica's old sum would stay). It stays
        # as it was, consistent if stale, until a full state repairs it.
        return HELD
    return None


def is_placeholder(delta: bytes) -> bool:
    """A logged entry with no delta: a skipped delta's stand-in (every real delta encodes to some bytes)."""
    return not delta


def placeholder(entry: LogEntry) -> LogEntry:
    """What a store logs in place of a skipped entry: its ``(origin, seq)``, no delta, its id or :data:`NO_ID`."""
    doc_id = entry.doc_id if doc_id_problem(entry.doc_id) is None else NO_ID
    return LogEntry(entry.origin, entry.seq, doc_id, b"")


def hold(held: MutableSet[str], doc_id: str) -> bool:
    """Hold back ``doc_id``'s later deltas (if it is addressable and there is room); True if newly held."""
    if doc_id in held or len(held) >= MAX_LISTED or doc_id_problem(doc_id) is not None:
        return False
    held.add(doc_id)
    return True


def check_own_dots(mine: str, ours: CausalContext, theirs: CausalContext) -> None:
    """Refuse peer data claiming dots of this incarnation (``mine``) beyond what ``ours`` holds.

    Every dot of ours is in our own copy from the moment it is minted, so
    such a claim is forged or corrupt; joined, it would make our next local
    write mint past it (up to counters no encoding holds).

    Raises:
        ForgedDots: The claim.
    """
    if theirs.max_counter(mine) > ours.max_counter(mine):
        raise ForgedDots(f"peer data claims dots of this replica up to {theirs.max_counter(mine)}")


def describe(error: BaseException | str) -> str:
    """A failure as a quarantine record and a log line show it (bounded: a peer chose the bytes)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text[:200]
