"""Version tokens: a causal context as an opaque, URL-safe string.

A token names every change a reader has seen. Clients hand it back to
resume a change feed, or with an index edit so the index is read against
what they saw. Format: ``v1.`` + unpadded base64url of the JSON object
``{replica: [lo, hi, ...]}`` (half-open counter ranges).
"""

from __future__ import annotations

import base64
import binascii

import orjson

from .causal import CausalContext
from .errors import InvalidVersion

__all__ = ["MAX_TOKEN_CHARS", "decode_version", "encode_version"]

MAX_TOKEN_CHARS = 64 * 1024
_PREFIX = "v1."


def encode_version(ctx: CausalContext) -> str:
    raw = orjson.dumps(ctx.ranges, option=orjson.OPT_SORT_KEYS)
    return _PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


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
