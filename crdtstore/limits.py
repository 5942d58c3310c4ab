"""Limits on what a document may hold, checked before anything changes.

They keep one request from exhausting memory or the encoder: JSON nesting,
key and string sizes, integer range (the encodings and most JSON peers stop
at 64 bits), batch size, and the size of a whole document (see
``MAX_DOCUMENT_BYTES``). The document id rule is here too, because ids
arrive from peers as well as from the API.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BATCH_OPS",
    "MAX_DOCUMENT_BYTES",
    "MAX_ID_BYTES",
    "MAX_SEQUENCE_LENGTH",
    "MAX_DEPTH",
    "MAX_KEY_BYTES",
    "MAX_STRING_BYTES",
    "check_json",
    "check_key",
    "doc_id_problem",
]

# Final: compiled, they are constants rather than a module dictionary lookup each (every op checks some).
MAX_DEPTH: Final = 32
MAX_KEY_BYTES: Final = 256
MAX_STRING_BYTES: Final = 1 << 20
MAX_BATCH_OPS: Final = 10_000
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

MAX_DOCUMENT_BYTES = 16 << 20
"""Default bound on a document's stored bytes after a local write (``NodeConfig.max_document_bytes``).

Stored bytes are the snapshot plus the deltas not compacted into it yet, so
this bounds what every load decodes. 16 MiB decodes in well under a second,
holds a 4 Mi-character text with its history, and stays far below the
decoder's hard bound (``codec.MAX_ENCODED_BYTES``): merges of concurrent
writes in several regions can pass the write limit and must still load.
"""

MAX_SEQUENCE_LENGTH = 4 << 20
"""Default bound on the elements a text or list shows after a local insert (``NodeConfig.max_sequence_length``).

4 Mi characters is ten times a long book; it keeps one text's index and a
read of it (the whole string in one JSON response) reasonable, several
regions' concurrent inserts can together exceed it and still decode.
"""

MAX_ID_BYTES = 256
_FORBIDDEN_ID_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")


def check_key(key: Any) -> str | None:
    """The reason ``key`` is not a valid map key, or None."""
    if type(key) is not str:
        return "a key must be a string"
    if not key:
        return "a key must not be empty"
    if key.isascii():  # the common case: one byte a character, no surrogates
        return None if len(key) <= MAX_KEY_BYTES else f"a key is at most {MAX_KEY_BYTES} bytes"
    if len(key) > MAX_KEY_BYTES or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"a key is at most {MAX_KEY_BYTES} bytes"
    if _has_surrogate(key):
        return "a key must be valid unicode"
    return None


def doc_id_problem(doc_id: Any) -> str | None:
    """Why ``doc_id`` is not a document id the API can address, or None.

    The rule of ``crdtstore/api/limits.py``: 1 to 256 bytes of UTF-8, no C0
    or C1 control character, no ``/`` or ``\\``, not ``.`` or ``..`` (URL
    normalization rewrites those, so such a document could never be read).
    Peers are held to it too: a peer may send any id it likes.
    """
    if type(doc_id) is not str or not doc_id:
        return "a document id must be a non-empty string"
    if len(doc_id) > MAX_ID_BYTES:
        return f"a document id is at most {MAX_ID_BYTES} bytes of UTF-8"
    try:
        size = len(doc_id.encode("utf-8"))
    except UnicodeEncodeError:
        return "a document id must be valid unicode"
    if size > MAX_ID_BYTES:
        return f"a document id is at most {MAX_ID_BYTES} bytes of UTF-8"
    if _FORBIDDEN_ID_CHARS.search(doc_id):
        return "a document id holds no control characters, '/' or '\\'"
    if doc_id in (".", ".."):
        return "a document id must not be '.' or '..'"
    return None


def check_json(value: Any, depth: int = 0) -> str | None:
    """The reason ``value`` is not a storable JSON value, or None."""
    if depth > MAX_DEPTH:
        return f"values nest at most {MAX_DEPTH} deep"
    t = type(value)
    if value is None or t is bool:
        return None
    if t is int:
        return None if INT64_MIN <= value <= INT64_MAX else "integers must fit in 64 bits"
    if t is float:
        return None if math.isfinite(value) else "numbers must be finite"
    if t is str:
        if value.isascii():
            return None if len(value) <= MAX_STRING_BYTES else f"strings are at most {MAX_STRING_BYTES} bytes"
        if len(value) > MAX_STRING_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
            return f"strings are at most {MAX_STRING_BYTES} bytes"
        return "strings must be valid unicode" if _has_surrogate(value) else None
    if t is list:
        for item in value:
            reason = check_json(item, depth + 1)
            if reason:
                return reason
        return None
    if t is dict:
        for k, v in value.items():
            reason = check_key(k) if k else (None if isinstance(k, str) else "object keys must be strings")
            if reason:
                return reason
            reason = check_json(v, depth + 1)
            if reason:
                return reason
        return None
    return f"{t.__name__} is not a JSON value"


def _has_surrogate(s: str) -> bool:
    # Lone surrogates cannot be encoded as UTF-8; orjson would refuse them later.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
