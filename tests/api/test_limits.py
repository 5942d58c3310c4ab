"""The value limits of write bodies: the shortcut for small bodies never lets a violation through."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.api.errors import ApiError
from crdtstore.api.limits import Limits, check_batch, parse_json

# Small limits, so that generated bodies land on both sides of every one of them
# (the envelope of one op takes about 50 bytes).
SMALL = Limits(max_key_bytes=90, max_string_bytes=100, max_depth=3)

texts = st.text(max_size=20) | st.text(min_size=80, max_size=130) | st.text("é€", min_size=25, max_size=60)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


def outcome(body: Any, raw: bytes | None) -> tuple[str, Any]:
    try:
        return "ok", check_batch(body, SMALL, raw)
    except ApiError as exc:
        return exc.code, exc.status


@given(value=values, extra_ops=st.integers(0, 2))
def test_the_small_body_shortcut_agrees_with_the_full_walk(value: Any, extra_ops: int) -> None:
    """Whatever the body, passing its bytes (which may skip the walk) gives the answer the walk gives."""
    ops = [{"op": "set", "path": ["k"], "value": value}] + [{"op": "enable", "path": ["f"]}] * extra_ops
    raw = json.dumps({"ops": ops}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        body = parse_json(raw)
    except ApiError:
        return  # refused by the parser (an integer past 64 bits), before any limit check
    assert outcome(body, raw) == outcome(body, None)


@pytest.mark.parametrize(
    "value",
    [
        "x" * 101,  # a string over the limit
        "é" * 51,  # 102 bytes of UTF-8 in 51 characters
        {"k" * 91: 1},  # a key over the limit
        [[[[1]]]],  # nesting past max_depth
    ],
)
def test_each_limit_is_still_enforced_for_small_bodies(value: Any) -> None:
    raw = json.dumps({"ops": [{"op": "set", "path": ["k"], "value": value}]}, ensure_ascii=False).encode()
    with pytest.raises(ApiError) as info:
        check_batch(parse_json(raw), SMALL, raw)
    assert (info.value.status, info.value.code) == (422, "invalid_value")
