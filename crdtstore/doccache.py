"""The writer's LRU of decoded documents (see :mod:`crdtstore.docstore` for what it holds and why)."""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

__all__ = ["DocCache"]

V = TypeVar("V")


class DocCache(Generic[V]):
    """LRU of decoded documents bounded by count and by stored bytes; writer thread only."""

    def __init__(self, max_docs: int, max_bytes: int) -> None:
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._docs: collections.OrderedDict[str, tuple[V, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, doc_id: str) -> V | None:
        entry = self._docs.get(doc_id)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._docs.move_to_end(doc_id)
        return entry[0]

    def put(self, doc_id: str, doc: V, size: int) -> None:
        entry = self._docs.get(doc_id)
        if entry is not None and entry[0] is doc and size <= self.max_bytes:
            # The usual put: a write stored the cached document it changed. Refresh it in place.
            self._docs[doc_id] = (doc, size)
            self._docs.move_to_end(doc_id)
            self.bytes += size - entry[1]
            self._shrink()
            return
        self.discard(doc_id)
        if size > self.max_bytes or self.max_docs < 1:
            return  # caching it would evict everything else
        self._docs[doc_id] = (doc, size)
        self.bytes += size
        self._shrink()

    def _shrink(self) -> None:
        while len(self._docs) > self.max_docs or self.bytes > self.max_bytes:
            _, (_, old_size) = self._docs.popitem(last=False)
            self.bytes -= old_size

    def peek(self, doc_id: str) -> V | None:
        """The cached value, without counting a hit or a miss or refreshing its age."""
        entry = self._docs.get(doc_id)
        return None if entry is None else entry[0]

    def discard(self, doc_id: str) -> None:
        entry = self._docs.pop(doc_id, None)
        if entry is not None:
            self.bytes -= entry[1]

    def stats(self) -> dict[str, int]:
        return {
            "docs": len(self._docs),
            "bytes": self.bytes,
            "max_docs": self.max_docs,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
        }
