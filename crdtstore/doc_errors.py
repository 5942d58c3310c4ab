"""The node's document errors, each with the ``code`` its API error body carries.

A module of their own, outside the compiled modules: mypyc's native classes
keep no class attributes such as ``code`` on their instances, and cannot
derive from ``RuntimeError`` (see ``crdtstore.compiled``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DocumentNotFound", "DocumentTooLarge", "NodeNotRunning"]


class DocumentNotFound(LookupError):
    """No live document has this id (HTTP 404)."""

    code = "not_found"

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        super().__init__(f"document {doc_id!r} not found")


class NodeNotRunning(RuntimeError):
    """The node was not started, or is closed."""

    code = "not_running"


class DocumentTooLarge(Exception):
    """A local write would take a document past ``max_document_bytes`` or ``max_sequence_length`` (HTTP 413).

    Nothing was written.
    """

    code = "document_too_large"

    def __init__(self, doc_id: str, reason: str, *, limit: int, size: int, path: list[str] | None = None) -> None:
        self.doc_id = doc_id
        self.reason = reason
        self.limit = limit
        self.size = size
        self.path = path
        super().__init__(f"document {doc_id!r}: {reason}")

    def detail(self) -> dict[str, Any]:
        """A JSON-able description for API error bodies."""
        return {"id": self.doc_id, "reason": self.reason, "limit": self.limit, "size": self.size, "path": self.path}
