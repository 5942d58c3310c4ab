"""Hypothesis strategies for abstract ops, per type and mixed."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .model import PATHS, AbstractOp

__all__ = ["TYPE_KINDS", "abstract_ops", "json_values"]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=3), inner, max_size=3),
    max_leaves=6,
)
small_values = st.sampled_from([0, 1, "x", "y", None, True, [1], {"k": 1}])
texts = st.text(alphabet="abcé😀\n", min_size=1, max_size=4)

# The kinds of abstract op that exercise each type.
TYPE_KINDS: dict[str, tuple[str, ...]] = {
    "register": ("set", "delete"),
    "lww": ("lww", "delete"),
    "counter": ("increment", "delete"),
    "set": ("add", "remove", "delete"),
    "flag": ("enable", "disable", "delete"),
    "text": ("insert_text", "delete_range", "delete"),
    "list": ("insert_list", "delete_range", "delete"),
    "map": ("set", "increment", "add", "delete"),
}


@st.composite
def abstract_ops(
    draw: st.DrawFn, kinds: tuple[str, ...] | None = None, paths: tuple[tuple[str, ...], ...] = PATHS
) -> AbstractOp:
    kind = draw(st.sampled_from(kinds or tuple(sorted({k for ks in TYPE_KINDS.values() for k in ks}))))
    path = draw(st.sampled_from(paths))
    if kind in ("set", "lww", "add", "remove"):
        return AbstractOp(kind, path, draw(small_values))
    if kind == "increment":
        return AbstractOp(kind, path, count=draw(st.integers(-3, 3)))
    if kind == "insert_text":
        return AbstractOp(kind, path, draw(texts), frac=draw(st.floats(0, 1)))
    if kind == "insert_list":
        return AbstractOp(kind, path, draw(st.lists(small_values, min_size=1, max_size=3)), frac=draw(st.floats(0, 1)))
    if kind == "delete_range":
        return AbstractOp(kind, path, frac=draw(st.floats(0, 1)), count=draw(st.integers(1, 3)))
    return AbstractOp(kind, path)
