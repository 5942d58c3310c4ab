"""Every error the HTTP API sends, in one shape and one mapping.

The body of every error response is::

    {"error": CODE, "message": "human readable", "detail": <JSON or null>}

``CODE`` is a stable machine-readable string; clients switch on it, never on
the message. The status of each lower-layer error class lives in :data:`STATUS_OF`, and
:func:`exception_handlers` turns it into Starlette's ``exception_handlers``
mapping, so a handler only ever raises.

=========================================  ======  =============================
raised                                     status  code
=========================================  ======  =============================
malformed JSON, bad request shape          400     malformed_json / invalid_request
``InvalidOp``, ``IndexOutOfRange``         400     invalid_op / index_out_of_range
bad document id, cursor, version token     400     invalid_id / invalid_cursor / invalid_version
missing or unknown token                   401     unauthorized
token without the needed scope             403     forbidden
unknown document or route                  404     not_found
method not allowed                         405     method_not_allowed
``TypeMismatch``                           409     type_mismatch
``VersionAhead``                           409     version_ahead
body over the size limit                   413     body_too_large
document over its size limit (node)        413     document_too_large
content type other than JSON               415     unsupported_media_type
``InvalidValue``, limit violations         422     invalid_value
``StorageFull``, ``Overloaded``, closing  503     storage_full / overloaded / not_running
anything else (a bug)                      500     internal
=========================================  ======  =============================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from crdtstore.commit import Overloaded, WriterClosed
from crdtstore.errors import (
    IndexOutOfRange,
    InvalidOp,
    InvalidValue,
    InvalidVersion,
    OpError,
    TypeMismatch,
    VersionAhead,
)
from crdtstore.node import DocumentNotFound, DocumentTooLarge, InvalidCursor, NodeNotRunning
from crdtstore.storage import InvalidDocumentId, StorageClosed, StorageFull

__all__ = [
    "ApiError",
    "JSONResponse",
    "error_body",
    "error_response",
    "exception_handlers",
    "status_and_body",
]

logger = logging.getLogger("crdtstore.api")


class JSONResponse(Response):
    """A response serialized with orjson (Starlette's own uses the slower stdlib json)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error the API reports as-is: a status, a stable code, a message and a detail.

    Args:
        status: The HTTP status.
        code: Stable machine-readable code (see the module docstring).
        message: Human-readable explanation.
        detail: JSON-able context (the offending field, a limit...), or None.
        headers: Extra response headers (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


# Errors of lower layers, by class; the most specific class in the MRO wins.
# Anything not listed here is a bug and answers 500.
STATUS_OF: dict[type[BaseException], int] = {
    InvalidOp: 400,
    IndexOutOfRange: 400,
    InvalidVersion: 400,
    InvalidCursor: 400,
    InvalidDocumentId: 400,
    # The client left (or was closed past a deadline) mid-body: nobody reads the answer, and it is no bug.
    ClientDisconnect: 400,
    DocumentNotFound: 404,
    TypeMismatch: 409,
    VersionAhead: 409,
    DocumentTooLarge: 413,
    InvalidValue: 422,
    StorageFull: 503,
    Overloaded: 503,
    WriterClosed: 503,
    NodeNotRunning: 503,
    StorageClosed: 503,
}

_REASONS = {
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "method not allowed on this route"),
}


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": code, "message": message, "detail": detail}


def status_and_body(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map any exception to ``(status, body, headers)``; unknown ones are a 500."""
    if isinstance(exc, ApiError):
        return exc.status, error_body(exc.code, exc.message, exc.detail), exc.headers
    if isinstance(exc, HTTPException):
        code, message = _REASONS.get(exc.status_code, ("http_error", str(exc.detail)))
        return exc.status_code, error_body(code, message), dict(exc.headers or {})
    for cls in type(exc).__mro__:
        status = STATUS_OF.get(cls)
        if status is not None:
            code = str(getattr(exc, "code", "") or _snake(cls.__name__))
            detail = exc.detail() if isinstance(exc, OpError | DocumentTooLarge) else None
            # 503s are transient: tell well-behaved clients when to come back.
            headers = {"Retry-After": "1"} if status == 503 else {}
            return status, error_body(code, str(exc) or code, detail), headers
    return 500, error_body("internal", "internal error"), {}


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = status_and_body(exc)
    # 503 (overloaded) and 504 (a quorum not reached in time: the write is durable locally and
    # keeps replicating) are expected outcomes of a healthy node, not errors worth a traceback.
    if status >= 500 and status not in (503, 504):
        # Don't include exception details in the body, which may be security-sensitive; log them.
        logger.error("unhandled error", exc_info=exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def exception_handlers() -> dict[Any, Any]:
    """The one mapping passed to ``Starlette(exception_handlers=...)``.

    ``Exception`` lands in Starlette's outermost ``ServerErrorMiddleware``, so
    even a bug answers in the JSON error shape (and still re-raises for the
    server to log).
    """
    handled: list[type[BaseException]] = [ApiError, HTTPException, *STATUS_OF, Exception]
    return {cls: _handle for cls in handled}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
