"""Version tokens: a causal context as an opaque, URL-safe string.

A token names every change a reader has seen. Clients hand it back to
resume a change feed, or with an index edit so the index is read against
what they saw.

Inside a node (documents, stored views, the feed, Merkle digests) a token
is ``v1.`` + unpadded base64url of the JSON object ``{replica: [lo, hi,
...]}`` (half-open counter ranges). Clients only ever see it *sealed* to
its document (:func:`seal_version`): ``v2.`` + the same base64url + ``.`` +
a 16-character tag, the first 96 bits of a keyed BLAKE2b over the document
id and the context. The API opens a sealed token (:func:`open_version`)
only for the document it was issued for, so a token from another
document, or one edited or made up by hand, is refused as
``invalid_version`` instead of silently reading an index against a
context the client never saw. The key is the cluster's (every region
opens every other's tokens); it is not stored in tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from typing import Final

import orjson

from .causal import CausalContext
from .errors import InvalidVersion

__all__ = ["MAX_TOKEN_CHARS", "decode_version", "encode_version", "open_version", "seal_version"]

MAX_TOKEN_CHARS = 64 * 1024
_PREFIX = "v1."
_SEALED_PREFIX = "v2."
_TAG_BYTES = 12
_TAG_CHARS = 16  # unpadded base64url of 12 bytes


def encode_version(ctx: CausalContext) -> str:
    raw = orjson.dumps(ctx.ranges, option=orjson.OPT_SORT_KEYS)
    # base64.urlsafe_b64encode without its Python-level wrapper (every write encodes its version).
    return _PREFIX + binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def decode_version(token: object) -> CausalContext:
    """Parse a token from an untrusted source. Raises ``InvalidVersion``."""
    if not isinstance(token, str) or not token.startswith(_PREFIX):
        raise InvalidVersion("a version token starts with 'v1.'")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidVersion("version token too long")
    body = token[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise InvalidVersion("version token is not valid base64url JSON") from exc
    if not isinstance(data, dict):
        raise InvalidVersion("version token must hold an object")
    ranges: dict[str, list[int]] = {}
    for replica, flat in data.items():
        if not isinstance(flat, list) or not flat or len(flat) % 2:
            raise InvalidVersion("version token ranges must be pairs")
        prev = 0
        for n in flat:
            if type(n) is not int or n <= prev:
                raise InvalidVersion("version token ranges must be increasing positive integers")
            prev = n
        ranges[replica] = flat
    return CausalContext(ranges)


def seal_version(token: str, doc_id: str, key: bytes) -> str:
    """Bind an internal ``v1.`` token to ``doc_id`` under ``key`` (see the module docstring)."""
    body = token[len(_PREFIX) :]
    return f"{_SEALED_PREFIX}{body}.{_tag(body, doc_id, key)}"


def open_version(token: object, doc_id: str, key: bytes) -> str:
    """The internal ``v1.`` token of a token sealed to ``doc_id`` under ``key``.

    Raises:
        InvalidVersion: Not a string, not sealed, too long, or sealed to another document or key.
    """
    if not isinstance(token, str) or not token.startswith(_SEALED_PREFIX):
        raise InvalidVersion("a version token starts with 'v2.' (tokens from before 0.2 are no longer accepted)")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidVersion("version token too long")
    body, dot, tag = token[len(_SEALED_PREFIX) :].rpartition(".")
    if not dot or len(tag) != _TAG_CHARS or not hmac.compare_digest(tag, _tag(body, doc_id, key)):
        raise InvalidVersion("not a version token of this document")
    return _PREFIX + body


def _tag(body: str, doc_id: str, key: bytes) -> str:
    raw_id = doc_id.encode("utf-8", "surrogatepass")
    mac = _keyed(key).copy()
    mac.update(len(raw_id).to_bytes(4, "big"))
    mac.update(raw_id)
    mac.update(body.encode("utf-8", "surrogatepass"))
    # base64url without the two Python-level wrappers of base64.urlsafe_b64encode; 12 bytes are
    # 16 characters exactly, no padding to strip.
    return binascii.b2a_base64(mac.digest(), newline=False).translate(_URLSAFE).decode("ascii")


_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hashlib.blake2b:
    """BLAKE2b keyed with ``key``, its key block already compressed: a copy of it costs half a fresh one."""
    return hashlib.blake2b(key=key, digest_size=_TAG_BYTES)
