"""Parsing a batch of JSON ops into checked ``Op`` values.

This is the first of two checks a batch passes before anything changes:
here each op is checked on its own (shape, field types, limits); then the
document checks the batch against its state (types and indexes). The op
formats are listed in the README.
"""

from __future__ import annotations

from typing import Any, Final

from .causal import CausalContext
from .errors import InvalidOp, InvalidValue, InvalidVersion, OpError
from .limits import INT64_MAX, INT64_MIN, MAX_BATCH_OPS, MAX_DEPTH, MAX_KEY_BYTES, check_json, check_key
from .version import decode_version

__all__ = ["KINDS", "Op", "parse_ops"]

# kind -> (required fields, optional fields), besides "op" and "path"
KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "set": (frozenset({"value"}), frozenset({"lww"})),
    "delete": (frozenset(), frozenset({"index", "count", "version"})),
    "increment": (frozenset(), frozenset({"by"})),
    "add": (frozenset({"value"}), frozenset()),
    "remove": (frozenset({"value"}), frozenset()),
    "enable": (frozenset(), frozenset()),
    "disable": (frozenset(), frozenset()),
    "insert": (frozenset({"index"}), frozenset({"text", "values", "version"})),
}

_ALLOWED: Final = {kind: required | optional | {"op", "path"} for kind, (required, optional) in KINDS.items()}
# kind -> (required, allowed): one lookup on the per-keystroke path.
_SPECS: Final = {kind: (required, _ALLOWED[kind]) for kind, (required, _) in KINDS.items()}


class Op:
    """One checked op: immutable (``Final`` attributes; compiled, they are read-only).

    A plain class, not a named tuple: compiled, it is a native class, built and
    read without a Python-level call (a ``NamedTuple``'s ``__new__`` is Python
    code even in a compiled module), and every batch builds one per op.
    """

    __slots__ = ("at", "by", "content", "kind", "lww", "path", "span", "value", "version")

    def __init__(
        self,
        kind: str,
        path: tuple[str, ...],
        value: Any = None,
        lww: bool = False,
        by: int = 1,
        at: int | None = None,
        span: int = 1,
        content: str | list[Any] | None = None,
        version: CausalContext | None = None,
    ) -> None:
        self.kind: Final = kind
        self.path: Final = path
        self.value: Final = value
        self.lww: Final = lww
        self.by: Final = by
        # ``at`` and ``span`` are the wire's ``index`` and ``count``.
        self.at: Final = at
        self.span: Final = span
        self.content: Final = content  # insert: text (str) or values (list)
        self.version: Final = version

    def __repr__(self) -> str:
        return f"Op({self.kind!r}, {self.path!r})"


def parse_ops(ops: Any) -> list[Op]:
    """Check every op of a batch on its own. Raises an ``OpError`` naming the first bad op."""
    if not isinstance(ops, list):
        raise InvalidOp("a batch must be a list of ops")
    if not ops:
        raise InvalidOp("a batch needs at least one op")
    if len(ops) > MAX_BATCH_OPS:
        raise InvalidOp(f"a batch holds at most {MAX_BATCH_OPS} ops")
    parsed = []
    for i, raw in enumerate(ops):
        try:
            parsed.append(_parse(raw))
        except OpError as exc:
            exc.op_index = i
            exc.args = (f"op {i}: {exc.reason}",)
            raise
    return parsed


def _parse(raw: Any) -> Op:
    if not isinstance(raw, dict):
        raise InvalidOp("an op must be an object")
    kind = raw.get("op")
    if not isinstance(kind, str) or (spec := _SPECS.get(kind)) is None:
        raise InvalidOp(f"unknown op {kind!r}; expected one of {', '.join(sorted(KINDS))}")
    required, allowed = spec
    # Set operations on the keys: the whole check in C (keys of a JSON object are strings).
    if not allowed.issuperset(raw):
        extra = sorted(k for k in raw if k not in allowed)
        raise InvalidOp(f"{kind}: unknown field {', '.join(extra)}")
    if not required.issubset(raw):
        raise InvalidOp(f"{kind}: missing {', '.join(sorted(f for f in required if f not in raw))}")
    path = _path(raw.get("path"))
    value = raw.get("value")
    if "value" in raw and (reason := check_json(value, len(path))):
        raise InvalidValue(reason, path=list(path))
    if kind == "set":
        lww = raw.get("lww", False)
        if not isinstance(lww, bool):
            raise InvalidOp("set: lww must be true or false")
        return Op(kind, path, value=value, lww=lww)
    if kind == "increment":
        by = raw.get("by", 1)
        if type(by) is not int:
            raise InvalidOp("increment: by must be an integer", path=list(path))
        if not INT64_MIN <= by <= INT64_MAX:
            raise InvalidValue("increment: by must fit in 64 bits", path=list(path))
        return Op(kind, path, by=by)
    if kind in ("add", "remove"):
        return Op(kind, path, value=value)
    if kind in ("enable", "disable"):
        return Op(kind, path)
    version = _version(raw["version"]) if "version" in raw else None
    if kind == "delete":
        if "index" not in raw:
            if "count" in raw or version is not None:
                raise InvalidOp("delete: count and version go with index", path=list(path))
            return Op(kind, path)
        index = _natural(raw["index"], "index")
        count = _natural(raw.get("count", 1), "count")
        if count < 1:
            raise InvalidOp("delete: count must be at least 1", path=list(path))
        return Op(kind, path, at=index, span=count, version=version)
    # insert
    index = _natural(raw["index"], "index")
    has_text, has_values = "text" in raw, "values" in raw
    if has_text == has_values:
        raise InvalidOp("insert: give exactly one of text or values", path=list(path))
    if has_text:
        text = raw["text"]
        if not isinstance(text, str) or not text:
            raise InvalidOp("insert: text must be a non-empty string", path=list(path))
        if reason := check_json(text):
            raise InvalidValue(reason, path=list(path))
        return Op(kind, path, at=index, content=text, version=version)
    values = raw["values"]
    if not isinstance(values, list) or not values:
        raise InvalidOp("insert: values must be a non-empty list", path=list(path))
    if reason := check_json(values, len(path)):
        raise InvalidValue(reason, path=list(path))
    return Op(kind, path, at=index, content=values, version=version)


def _path(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidOp("path must be a non-empty list of keys")
    if len(raw) > MAX_DEPTH:
        raise InvalidValue(f"paths are at most {MAX_DEPTH} keys deep")
    for key in raw:
        # The common key inline (check_key's ascii case); anything else gets the full check.
        if type(key) is str and key.isascii() and 0 < len(key) <= MAX_KEY_BYTES:
            continue
        if reason := check_key(key):
            raise InvalidOp(f"path: {reason}")
    return tuple(raw)


def _natural(raw: Any, name: str) -> int:
    if type(raw) is not int or raw < 0:
        raise InvalidOp(f"{name} must be a non-negative integer")
    if raw > INT64_MAX:
        raise InvalidValue(f"{name} must fit in 64 bits")
    return raw


def _version(raw: Any) -> CausalContext:
    try:
        return decode_version(raw)
    except InvalidVersion as exc:
        raise InvalidOp(f"bad version token: {exc}") from exc
