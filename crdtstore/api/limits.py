"""What the API accepts, checked before anything reaches the node.

The core validates ops again; checking here too keeps junk (a 50-deep body,
a 2**70 integer, a 10 MB key) off the write queue entirely and lets every
violation answer with the same JSON error shape.

Document ids
------------

A document id is 1 to 256 bytes of UTF-8 that contains no C0 or C1 control
character (U+0000–U+001F, U+007F–U+009F), no ``/`` and no ``\\``, and is
not ``.`` or ``..``. Path separators and dot segments are rewritten by URL
normalization in clients and proxies, so such an id could not be addressed
reliably; everything else (spaces, ``?``, ``#``, ``%``, any script, emoji)
is allowed once percent-encoded in the URL. A listing prefix follows the
same character rule but may be empty (or a dot).

Bodies
------

* At most ``max_body_bytes`` (default 4 MiB). A larger ``Content-Length`` is
  refused before reading; a chunked body is refused as soon as the bytes
  read so far pass the limit.
* ``Content-Type: application/json`` (any parameters), else 415.
* Values inside an op nest at most 32 deep; object keys are at most 256
  bytes; strings at most 1 MiB; integers fit in int64; numbers are finite.
  Violations answer 422 ``invalid_value``.
* An object that repeats a key is refused with 400 ``malformed_json``: JSON
  parsers disagree on which value wins (orjson keeps the last, others the
  first or refuse), so accepting it would mean something different to a
  client's own parser than to ours.
* ``-0.0`` is read as ``0.0``. JSON numbers are values and ``-0 == 0``;
  normalizing keeps equal values' canonical encodings equal, so a set that
  holds ``0.0`` does not gain a second, ``-0.0`` member on another replica.
  (An integer ``-0`` is already ``0``.)
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from crdtstore import limits as core_limits
from crdtstore.api.errors import ApiError

__all__ = [
    "ENVELOPE_DEPTH",
    "Limits",
    "check_batch",
    "check_content_type",
    "check_cursor",
    "check_doc_id",
    "check_prefix",
    "parse_json",
    "parse_page_limit",
    "read_body",
]

ENVELOPE_DEPTH = 3
"""Levels above an op's values: the body object, the ``ops`` list, the op object."""

_FORBIDDEN_ID_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")

# orjson turns an integer literal beyond 64 bits into a float without a
# word, so bodies holding a run of 19+ digits (the only way to spell such a
# literal) are parsed a second time with exact integers; that is rare, and
# cheaper than scanning every body by hand.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_REPARSE_MAX_DEPTH = 200


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits of one app (keyword-only, immutable).

    Attributes:
        max_body_bytes: Largest request body.
        max_depth: Deepest nesting of a value inside an op.
        max_key_bytes: Longest object key and document id (UTF-8 bytes).
        max_string_bytes: Longest string value (UTF-8 bytes).
        max_ops: Most ops in one batch.
        max_page: Largest ``limit`` of a listing.
        default_page: ``limit`` of a listing that names none.
        max_batch_docs: Most documents in one ``POST /v1/batch`` (:mod:`crdtstore.api.batch`).
    """

    max_body_bytes: int = 4 << 20
    max_depth: int = core_limits.MAX_DEPTH
    max_key_bytes: int = core_limits.MAX_KEY_BYTES
    max_string_bytes: int = core_limits.MAX_STRING_BYTES
    max_ops: int = core_limits.MAX_BATCH_OPS
    max_page: int = 1000
    default_page: int = 100
    max_batch_docs: int = 100


# Public functions for the request envelope.


def check_content_type(content_type: str | None) -> None:
    """Raise 415 unless the media type is ``application/json``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "the body must be application/json", {"content_type": content_type}
        )


async def read_body(content_length: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Read a request body, refusing (413) as soon as it is known to exceed ``limit``.

    Args:
        content_length: The ``Content-Length`` header, if any.
        chunks: The body stream (``request.stream()``); not consumed when the header already says too large.
        limit: Largest body in bytes.
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, "invalid_request", "bad Content-Length header") from None
        if declared > limit:
            raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def parse_json(body: bytes, *, refuse_big_ints: bool = True) -> Any:
    """Parse a JSON body; 400 ``malformed_json`` if it is not JSON or an object repeats a key.

    ``-0.0`` (any spelling of a negative zero float) is read as ``0.0``; see
    the module docstring.

    Args:
        body: The body's bytes.
        refuse_big_ints: Refuse the whole body (422) for an integer beyond int64. False: keep
            it as an out-of-range int (any literal of 20+ digits as ``INT64_MAX + 1``), for the
            caller's :func:`check_value` to refuse where it checks values: one document of a
            batch, not the whole request.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", "the body is not valid JSON", {"reason": str(exc)}) from None
    if type(value) is not dict and type(value) is not list:
        return value
    fix_zero = b"-0" in body
    keys = _walk(value, fix_zero=fix_zero)
    if _LONG_DIGITS.search(body) or not _no_repeated_keys(body, value, keys):
        value = _reparse_exact(body, value, refuse_big_ints=refuse_big_ints)
        if fix_zero:
            _walk(value, fix_zero=True)
    return value


def check_batch(body: Any, limits: Limits, raw: bytes | None = None) -> list[dict[str, Any]]:
    """Check the shape and limits of a write body ``{"ops": [...]}`` and return the ops.

    Args:
        body: The parsed body.
        limits: The limits to check against.
        raw: The body's bytes, if at hand: a body too short to break any value
            limit (see :func:`_cannot_break_limits`) skips the walk over its values.

    Raises:
        ApiError: 400 for a wrong shape, 422 for a value over a limit.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", 'the body must be an object {"ops": [...]}')
    extra = sorted(set(body) - {"ops"})
    if extra:
        raise ApiError(400, "invalid_request", "unknown fields in the body", {"fields": extra[:10]})
    ops = body.get("ops")
    if not isinstance(ops, list):
        raise ApiError(400, "invalid_request", '"ops" must be a list of op objects')
    if len(ops) > limits.max_ops:
        # The same answer as the core's for an oversized batch.
        raise ApiError(400, "invalid_op", f"a batch holds at most {limits.max_ops} ops", {"limit": limits.max_ops})
    for index, op in enumerate(ops):
        if not isinstance(op, dict):
            raise ApiError(400, "invalid_op", "every op must be an object", {"op_index": index})
    if raw is not None and _cannot_break_limits(raw, limits):
        return ops
    reason = check_value(body, limits, max_depth=limits.max_depth + ENVELOPE_DEPTH)
    if reason is not None:
        raise ApiError(422, "invalid_value", reason)
    return ops


def _cannot_break_limits(raw: bytes, limits: Limits) -> bool:
    """True if no value parsed from the JSON ``raw`` can break a limit :func:`check_value` checks.

    Decoding never makes text longer (an escape is longer than what it
    stands for), so no key or string can outgrow a body shorter than its
    limit; nesting k deep takes k brackets, and strings holding brackets
    only count too many; an integer beyond int64 takes 19 digits or more.
    Most writes are small: for them this costs a few C-level scans instead
    of a Python walk over every value.
    """
    return (
        len(raw) <= min(limits.max_key_bytes, limits.max_string_bytes)
        and raw.count(b"[") + raw.count(b"{") <= limits.max_depth + ENVELOPE_DEPTH
        and _LONG_DIGITS.search(raw) is None
    )


def check_value(value: Any, limits: Limits, *, max_depth: int) -> str | None:
    """The first limit ``value`` breaks, or None.

    Iterative, so a hostile body cannot exhaust the Python stack.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        t = type(item)
        if t is dict or t is list:
            if depth > max_depth:
                return f"values nest at most {limits.max_depth} deep"
            if t is dict:
                for key, child in item.items():
                    if _over(key, limits.max_key_bytes):
                        return f"object keys are at most {limits.max_key_bytes} bytes"
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif t is str:
            if _over(item, limits.max_string_bytes):
                return f"strings are at most {limits.max_string_bytes} bytes"
        elif t is int:
            if not core_limits.INT64_MIN <= item <= core_limits.INT64_MAX:
                return "integers must fit in 64 bits (signed)"
    return None


# Public functions for URL parts.


def check_doc_id(doc_id: str, limits: Limits, raw_path: bytes | None = None) -> str:
    """Return ``doc_id`` if it follows the id rule (module docstring), else raise 400 ``invalid_id``.

    Args:
        doc_id: The id, percent-decoded by the server.
        limits: The limits to check against.
        raw_path: The request's path as sent (ASGI ``raw_path``): where the
            decoded id holds U+FFFD, the bytes it came from are checked too.
    """
    reason = _id_chars_reason(doc_id, limits)
    if reason is None and "\ufffd" in doc_id and raw_path is not None and not _utf8_after_unquote(raw_path):
        reason = _NOT_UTF8
    if reason is None and not doc_id:
        reason = "a document id must not be empty"
    if reason is None and doc_id in (".", ".."):
        reason = "a document id must not be '.' or '..'"
    if reason is not None:
        raise ApiError(400, "invalid_id", reason, {"id": doc_id[:300]})
    return doc_id


def check_prefix(prefix: str, limits: Limits, raw_query: bytes | None = None) -> str:
    reason = _id_chars_reason(prefix, limits)
    if reason is None and "\ufffd" in prefix and raw_query is not None and not _query_is_utf8(raw_query):
        reason = _NOT_UTF8
    if reason is not None:
        raise ApiError(400, "invalid_id", f"prefix: {reason}", {"prefix": prefix[:300]})
    return prefix


def check_cursor(cursor: str | None, limits: Limits, raw_query: bytes | None = None) -> str | None:
    """A listing cursor is the last id of the previous page: it follows the id rule (so is never empty)."""
    if cursor is None:
        return None
    bad_bytes = "\ufffd" in cursor and raw_query is not None and not _query_is_utf8(raw_query)
    if bad_bytes or not cursor or _id_chars_reason(cursor, limits) is not None:
        raise ApiError(400, "invalid_cursor", "not a cursor this API returned", {"cursor": cursor[:300]})
    return cursor


def parse_page_limit(raw: str | None, limits: Limits) -> int:
    if raw is None:
        return limits.default_page
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= limits.max_page:
        raise ApiError(400, "invalid_request", f"limit must be an integer from 1 to {limits.max_page}", {"limit": raw})
    return int(raw)


# Private functions.


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body exceeds {limit} bytes", {"limit": limit})


def _over(s: str, limit: int) -> bool:
    """True if ``s`` is longer than ``limit`` bytes of UTF-8 (encodes only when the length is ambiguous)."""
    if len(s) > limit:
        return True
    if len(s) * 4 <= limit:
        return False
    return len(s.encode("utf-8", "surrogatepass")) > limit


_NOT_UTF8 = "must be valid UTF-8 once percent-decoded"


def _utf8_after_unquote(raw: bytes) -> bool:
    """True if the percent-decoded bytes of ``raw`` are UTF-8.

    Servers decode ``%FF`` or the overlong ``%C0%AF`` to U+FFFD without a
    word, so distinct invalid ids would all name one document; only called
    when a decoded value holds U+FFFD, which a valid id rarely does.
    """
    try:
        urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _query_is_utf8(raw_query: bytes) -> bool:
    return _utf8_after_unquote(raw_query.replace(b"+", b" "))


def _id_chars_reason(s: str, limits: Limits) -> str | None:
    if _over(s, limits.max_key_bytes):
        return f"at most {limits.max_key_bytes} bytes of UTF-8"
    if _FORBIDDEN_ID_CHARS.search(s):
        return "no control characters, '/' or '\\'"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    return None


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if type(item) is dict:
            stack.extend((child, depth + 1) for child in item.values())
        elif type(item) is list:
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _walk(value: Any, *, fix_zero: bool) -> int:
    """Count the keys of every object in ``value``; with ``fix_zero``, replace each ``-0.0`` by ``0.0`` in place."""
    keys = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            keys += len(item)
            for key, child in item.items():
                t = type(child)
                if t is dict or t is list:
                    stack.append(child)
                elif fix_zero and t is float and child == 0.0:
                    item[key] = 0.0
        else:
            for index, child in enumerate(item):
                t = type(child)
                if t is dict or t is list:
                    stack.append(child)
                elif fix_zero and t is float and child == 0.0:
                    item[index] = 0.0
    return keys


def _no_repeated_keys(body: bytes, value: Any, keys: int) -> bool:
    """True if no object of ``body`` (parsed as ``value``, holding ``keys`` keys) repeats a key; False: unknown.

    Every object member takes one ':' outside strings, so as many ':' as
    parsed keys proves no key was repeated. A ':' inside a string is
    written as itself (or as a ``\\u003a`` escape: then the answer is
    unknown), so the ':' of parsed strings account for the rest.
    """
    colons = body.count(b":")
    if colons == keys:
        return True
    if b"\\u003a" in body or b"\\u003A" in body:
        return False
    return colons - _string_colons(value) == keys


def _string_colons(value: Any) -> int:
    count = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is str:
            count += item.count(":")
        elif t is dict:
            for key, child in item.items():
                count += key.count(":")
                stack.append(child)
        elif t is list:
            stack.extend(item)
    return count


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(400, "malformed_json", "an object repeats a key", {"key": key[:300]})
            seen.add(key)
    return result


def _reparse_exact(body: bytes, fast: Any, *, refuse_big_ints: bool = True) -> Any:
    """Parse ``body`` again with exact integers, refusing repeated keys (orjson keeps the last silently)."""

    def exact_int(text: str) -> int:
        # 20+ digits cannot fit in int64 (and int() of thousands of digits raises ValueError).
        too_long = len(text.lstrip("-")) > 19
        if too_long or not core_limits.INT64_MIN <= int(text) <= core_limits.INT64_MAX:
            if not refuse_big_ints:
                return core_limits.INT64_MAX + 1 if too_long else int(text)
            raise ApiError(422, "invalid_value", "integers must fit in 64 bits (signed)", {"integer": text[:40]})
        return int(text)

    # orjson accepted the body, so it is valid JSON; but the stdlib parser
    # recurses, so a deep body keeps the fast result (the depth limit refuses it anyway).
    if _depth(fast) > _REPARSE_MAX_DEPTH:
        if not refuse_big_ints:
            # The fast result may hold a rounded float for a big integer, or the last of repeated keys,
            # in any part of the body: the caller's per-part checks could not tell, so refuse it whole.
            raise ApiError(422, "invalid_value", f"values nest at most {_REPARSE_MAX_DEPTH} deep in this body")
        return fast
    return json.loads(body, parse_int=exact_int, object_pairs_hook=_unique_keys)
