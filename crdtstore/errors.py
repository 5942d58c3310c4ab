"""Errors of the crdtstore core.

Every error the core raises on bad input derives from :class:`CrdtError`::

    CrdtError
    ├── OpError                 a batch of ops was rejected whole; nothing changed
    │   ├── InvalidOp           malformed op (unknown kind, bad path, bad field)
    │   ├── InvalidValue        a value outside the limits (depth, size, int64)
    │   ├── IndexOutOfRange     a list or text index past the end
    │   └── TypeMismatch        an op of another kind than the path's type
    ├── InvalidVersion          a version token that cannot be parsed
    └── DecodeError             untrusted bytes that are not a valid encoding
        └── UnsupportedVersion  a valid envelope from a format we do not know

``OpError`` carries the index of the offending op in its batch and a short
machine-readable ``code`` so that the HTTP layer maps it to a status without
parsing messages.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CrdtError",
    "DecodeError",
    "IndexOutOfRange",
    "InvalidOp",
    "InvalidValue",
    "InvalidVersion",
    "OpError",
    "TypeMismatch",
    "UnsupportedVersion",
    "VersionAhead",
]


class CrdtError(Exception):
    """Root of every error raised by the crdtstore core."""

    code = "crdt_error"


class OpError(CrdtError):
    """A batch was rejected; ``op_index`` names the offending op (or None)."""

    code = "invalid_op"

    def __init__(self, reason: str, *, op_index: int | None = None, path: Any = None) -> None:
        self.reason = reason
        self.op_index = op_index
        self.path = path
        where = f"op {op_index}: " if op_index is not None else ""
        super().__init__(f"{where}{reason}")

    def detail(self) -> dict[str, Any]:
        """A JSON-able description for API error bodies."""
        return {"op_index": self.op_index, "path": self.path, "reason": self.reason}


class InvalidOp(OpError):
    code = "invalid_op"


class InvalidValue(OpError):
    code = "invalid_value"


class IndexOutOfRange(OpError):
    code = "index_out_of_range"


class TypeMismatch(OpError):
    code = "type_mismatch"


class VersionAhead(OpError):
    """An op's ``version`` names changes this replica has not received yet.

    Its index counts elements this replica does not hold, so reading it here
    would edit another spot than the client meant: the batch is refused
    whole instead, and the client retries once the replica caught up (or
    sends it to the replica that gave it the version).
    """

    code = "version_ahead"


class InvalidVersion(CrdtError):
    code = "invalid_version"


class DecodeError(CrdtError):
    code = "decode_error"


class UnsupportedVersion(DecodeError):
    code = "unsupported_version"
