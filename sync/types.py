"""Types every layer of replication shares: the log entry, from the store's log to the wire and back."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["LogEntry"]


class LogEntry(NamedTuple):
    """One logged delta: what a store logs, ``log_range`` returns, ``Deltas`` carries and a peer applies.

    The document id travels next to the delta because a delta does not name
    its document. One type end to end: the LMDB log
    (:mod:`crdtstore.storage`), the memory store, the protocol's buffers and
    the wire codec (:class:`sync.messages.Deltas`) all hold these.
    """

    origin: str
    seq: int
    doc_id: str
    delta: bytes
