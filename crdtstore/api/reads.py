"""The bodies of plain reads, kept per document with the view each was built from.

A plain ``GET /v1/docs/{id}`` answers ``{"id", "value", "version"}``, the
version being the view's token sealed to the document
(:func:`crdtstore.version.seal_version`). Building that body (cut the view,
seal the token with a keyed BLAKE2b, serialize) cost about what reading the
view from LMDB does, and most reads of a document find the view the previous
read found. So the last body built for each recently read document is kept
with its view and key, and served again while LMDB holds the same view bytes
and the app the same key: the body is a function of the view, the id and the
key, nothing else.

The LMDB read is never skipped: a write (local or a peer's) changes the
view, so the next read builds a new body. A kept body also says that its id
passed the id rule (:func:`crdtstore.api.limits.check_doc_id`) with the app's
limits, so the read handler need not check the same id again.

Memory stays bounded: at most ``max_entries`` documents and ``max_bytes`` of
views, bodies and per-entry overhead together, oldest entry out first;
an entry larger than ``max_entry_bytes`` is not kept. Only the event loop
touches it, so it needs no lock.
"""

from __future__ import annotations

import orjson

from crdtstore.docstore import split_view
from crdtstore.version import seal_version

__all__ = ["ReadBodies"]

_ENTRY_OVERHEAD = 256
"""Bytes an entry costs beyond its view and body (the dict slot, the tuple, the id, object headers), roughly."""


class ReadBodies:
    """Read bodies by document id (module docstring).

    Args:
        max_entries: Documents kept at most.
        max_bytes: Bytes kept at most, views, bodies and overhead together.
        max_entry_bytes: Largest view plus body kept.
    """

    def __init__(self, *, max_entries: int = 4096, max_bytes: int = 8 << 20, max_entry_bytes: int = 64 << 10) -> None:
        if max_entries < 1 or max_bytes < 1 or max_entry_bytes < 1:
            raise ValueError("read body limits must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        # doc id -> (view, body, key); insertion order is age order.
        self._entries: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._bytes = 0

    def __contains__(self, doc_id: object) -> bool:
        """Whether a body is kept for ``doc_id`` (so it passed the id rule when it was built)."""
        return doc_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes kept (views, bodies and the per-entry overhead)."""
        return self._bytes

    def body(self, doc_id: str, view: bytes, key: bytes) -> bytes:
        """The read body of ``doc_id`` whose stored view is ``view``, sealed under ``key``.

        ``doc_id`` must already have passed the id rule: a kept id is trusted (``in``).
        """
        entry = self._entries.get(doc_id)
        if entry is not None:
            if entry[0] == view and entry[2] is key:
                return entry[1]
            self._drop(doc_id, entry)
        version, value = split_view(view)
        body = orjson.dumps(
            {"id": doc_id, "value": orjson.Fragment(value), "version": seal_version(version, doc_id, key)}
        )
        size = len(view) + len(body) + _ENTRY_OVERHEAD
        if size <= self.max_entry_bytes:
            # A copy: orjson's result keeps a ~4 KiB allocation behind it however short it is.
            kept = bytes(memoryview(body))
            self._entries[doc_id] = (view, kept, key)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest, self._entries[oldest])
        return body

    def _drop(self, doc_id: str, entry: tuple[bytes, bytes, bytes]) -> None:
        del self._entries[doc_id]
        self._bytes -= len(entry[0]) + len(entry[1]) + _ENTRY_OVERHEAD
