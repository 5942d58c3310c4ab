"""Patches a thin client can apply: what a change did to a document's plain value, per path.

Pure (no I/O): the live channel (:mod:`crdtstore.api.live`) takes a
:func:`before` picture of the paths a delta touches, joins the delta, and
asks :func:`patches` what changed. A browser holding the document's JSON
value applies the patches in order (:func:`apply_patches`, which the README
specifies) and holds exactly ``Document.value()``.

Patch shapes (``path`` is a list of field names from the root):

- ``{"path": p, "insert": {"index": i, "text": s}}`` (text) or ``{"index": i, "values": [...]}`` (list);
- ``{"path": p, "delete": {"index": i, "count": n}}`` (text and list);
- ``{"path": p, "value": v}``: the field now holds ``v`` (every other type, and a field that
  appeared or changed type);
- ``{"path": p, "remove": true}``: the field is gone.

Sequence patches come from element ids, not from diffing text: an element
that was visible and is not any more was deleted, one that is visible now
and was not was inserted, and surviving elements keep their order (a
sequence CRDT never moves one). Indexes are relative to the value as the
earlier patches of the same change left it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .causal import ranges_add
from .crdt.ormap import ORMap
from .crdt.sequence import SeqDelta, Sequence
from .crdt.tags import Tag

__all__ = ["Before", "apply_patches", "before", "patches"]

Patch = dict[str, Any]
_SEQUENCES = (Tag.TEXT, Tag.LIST)
_WAITING_MAX = 4096  # waiting elements looked up one by one; past it a change walks the sequence


@dataclass(slots=True)
class Before:
    """One field as it was: its visible type and, by type, its runs, its children or its value."""

    tag: Tag
    runs: list[tuple[str, int, int]] | None = None
    deleted: list[int] | None = None  # fast path: old indexes of what the delta deletes
    delta: SeqDelta | None = None
    waiting: list[tuple[str, int, int]] | None = None  # fast path: ids of inserts waiting for their origin
    children: dict[str, Before] | None = None
    value: Any = None


def before(root: ORMap, scope: ORMap | None) -> dict[str, Before]:
    """A picture of the fields of ``root`` that ``scope`` (a delta's map) mentions; None: every field."""
    out: dict[str, Before] = {}
    names = root.fields.keys() if scope is None else scope.fields.keys()
    for name in names:
        tag = root.visible_tag(name)
        if tag is None:
            continue
        value = root.fields[name][tag]
        if tag is Tag.MAP:
            out[name] = Before(tag, children=before(value, _sub_scope(scope, name)))
        elif tag in _SEQUENCES:
            leaf = scope.get(name, tag) if scope is not None else None
            waiting = _waiting(value) if isinstance(leaf, SeqDelta) else None
            if isinstance(leaf, SeqDelta) and waiting is not None:
                # Only the delta's own elements, and the inserts that waited for them, can change: look
                # them up instead of walking the sequence.
                out[name] = Before(tag, deleted=_old_indexes(value, leaf), delta=leaf, waiting=waiting)
            else:
                out[name] = Before(tag, runs=[(r, lo, hi) for r, lo, hi, _ in _runs(value)])
        else:
            out[name] = Before(tag, value=value.value())
    return out


def patches(old: dict[str, Before], root: ORMap, scope: ORMap | None, path: tuple[str, ...] = ()) -> list[Patch]:
    """What changed between the picture ``old`` and ``root`` now, over the fields ``scope`` mentions."""
    out: list[Patch] = []
    names = sorted(set(old) | set(root.fields if scope is None else scope.fields))
    for name in names:
        at = [*path, name]
        was = old.get(name)
        tag = root.visible_tag(name)
        if tag is None:
            if was is not None:
                out.append({"path": at, "remove": True})
            continue
        value = root.fields[name][tag]
        if was is None or was.tag is not tag:
            out.append({"path": at, "value": value.value()})
        elif tag is Tag.MAP:
            out += patches(was.children or {}, value, _sub_scope(scope, name), (*path, name))
        elif tag in _SEQUENCES and was.delta is not None:
            out += _delta_patches(at, was.deleted or [], was.delta, value, was.waiting or [])
        elif tag in _SEQUENCES:
            out += _sequence_patches(at, was.runs or [], value)
        else:
            new = value.value()
            if new != was.value:
                out.append({"path": at, "value": new})
    return out


def _old_indexes(seq: Sequence, delta: SeqDelta) -> list[int]:
    out: list[int] = []
    for replica, lo, hi, _ in delta.deletes:
        for counter in range(lo, hi):
            index = seq.index_of((replica, counter))
            if index is not None:
                out.append(index)
    return sorted(set(out))


def _waiting(seq: Sequence) -> list[tuple[str, int, int]] | None:
    """The ids ``(replica, lo, hi)`` of the inserts that wait in ``seq`` for their origin, or None: too many
    to look up one by one (the walk is cheaper then).

    A join reveals these as well as its own elements when it brings their origin: deltas that arrive
    before their causes (three regions, one typist inserting next to another's text) must not send
    every following change down the walk over the whole sequence.
    """
    if not seq.has_pending():
        return []
    out: list[tuple[str, int, int]] = []
    total = 0
    for replica, counter, _, _, content in seq.pending:
        if isinstance(content, int):
            continue  # a dead run shows nothing when it lands
        out.append((replica, counter, counter + len(content)))
        total += len(content)
        if total > _WAITING_MAX:
            return None
    return out


def _delta_patches(
    path: list[str], deleted: list[int], delta: SeqDelta, seq: Sequence, waiting: list[tuple[str, int, int]]
) -> list[Patch]:
    """Patches from a delta's own ids and the waiting inserts it released: deletes at their old indexes,
    from the last (so each index holds), then inserts at their new indexes, from the first (as in
    :func:`_sequence_patches`). An element that waited and still waits, or landed deleted, is not visible."""
    out: list[Patch] = []
    k = len(deleted)
    while k:
        end = k
        while k > 1 and deleted[k - 2] == deleted[k - 1] - 1:
            k -= 1
        k -= 1
        out.append({"path": path, "delete": {"index": deleted[k], "count": end - k}})
    placed: list[tuple[int, Any]] = []
    runs = [(r, c, c + len(content)) for r, c, _, _, content in delta.inserts if not isinstance(content, int)]
    seen: set[tuple[str, int]] = set()
    for replica, lo, hi in runs + waiting if waiting else runs:  # a dead insert (from a state) shows nothing
        for counter in range(lo, hi):
            dot = (replica, counter)
            index = seq.index_of(dot)
            if index is not None and dot not in seen:
                seen.add(dot)
                placed.append((index, seq.element(dot)))
    placed.sort(key=lambda p: p[0])
    key = "text" if seq.tag is Tag.TEXT else "values"
    last: Patch | None = None
    for index, element in placed:
        piece: Any = element if key == "text" else [element]
        if last is not None and last["insert"]["index"] + len(last["insert"][key]) == index:
            last["insert"][key] = last["insert"][key] + piece
        else:
            last = {"path": path, "insert": {"index": index, key: piece}}
            out.append(last)
    return out


def _sub_scope(scope: ORMap | None, name: str) -> ORMap | None:
    if scope is None:
        return None
    sub = scope.get(name, Tag.MAP)
    # A delta that does not reach inside the map changes none of its fields.
    return sub if sub is not None else ORMap(is_delta=True)


def _runs(seq: Sequence) -> Iterator[tuple[str, int, int, Any]]:
    return seq.visible_runs()


def _id_set(runs: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for run in runs:
        ranges_add(out.setdefault(run[0], []), run[1], run[2])
    return out


def _split(flat: list[int] | None, lo: int, hi: int) -> Iterator[tuple[int, int, bool]]:
    """``[lo, hi)`` cut into pieces, each wholly inside ``flat`` (True) or wholly outside it."""
    if not flat:
        yield lo, hi, False
        return
    while lo < hi:
        k = bisect_right(flat, lo)
        inside = bool(k & 1)
        end = min(hi, flat[k]) if k < len(flat) else hi
        yield lo, end, inside
        lo = end


def _sequence_patches(path: list[str], old_runs: list[tuple[str, int, int]], seq: Sequence) -> list[Patch]:
    new_runs = list(_runs(seq))
    new_ids = _id_set(new_runs)
    old_ids = _id_set(old_runs)
    out: list[Patch] = []
    # Deletes first, in old order: the index counts what survives before the piece.
    pos = 0
    for replica, lo, hi in old_runs:
        for a, b, kept in _split(new_ids.get(replica), lo, hi):
            if kept:
                pos += b - a
            elif out and out[-1]["delete"]["index"] == pos:
                out[-1]["delete"]["count"] += b - a
            else:
                out.append({"path": path, "delete": {"index": pos, "count": b - a}})
    # Then inserts, in new order: the index is the element's final position.
    key = "text" if seq.tag is Tag.TEXT else "values"
    pos = 0
    last: Patch | None = None
    for replica, lo, hi, content in new_runs:
        for a, b, seen in _split(old_ids.get(replica), lo, hi):
            if not seen:
                piece = content[a - lo : b - lo]
                ins = last["insert"] if last is not None else None
                if ins is not None and ins["index"] + len(ins[key]) == pos:
                    ins[key] = ins[key] + piece
                else:
                    last = {"path": path, "insert": {"index": pos, key: piece}}
                    out.append(last)
            pos += b - a
    return out


def apply_patches(value: dict[str, Any], changes: list[Patch]) -> dict[str, Any]:
    """Apply patches in order to a plain JSON value, in place, as a thin client does; returns ``value``.

    Raises:
        ValueError: A patch does not fit the value (a client that missed a change must resync).
    """
    for patch in changes:
        path = patch["path"]
        if not path:
            raise ValueError("a patch names a field")
        parent: Any = value
        for name in path[:-1]:
            parent = parent.get(name) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                raise ValueError(f"no map at {path}")
        name = path[-1]
        if "value" in patch:
            parent[name] = patch["value"]
        elif "remove" in patch:
            parent.pop(name, None)
        elif "insert" in patch:
            ins = patch["insert"]
            current = parent.get(name)
            i = ins["index"]
            if isinstance(current, str) and "text" in ins and 0 <= i <= len(current):
                parent[name] = current[:i] + ins["text"] + current[i:]
            elif isinstance(current, list) and "values" in ins and 0 <= i <= len(current):
                current[i:i] = ins["values"]
            else:
                raise ValueError(f"insert does not fit at {path}")
        elif "delete" in patch:
            d = patch["delete"]
            current = parent.get(name)
            i, n = d["index"], d["count"]
            if not isinstance(current, str | list) or i < 0 or n < 0 or i + n > len(current):
                raise ValueError(f"delete does not fit at {path}")
            if isinstance(current, str):
                parent[name] = current[:i] + current[i + n :]
            else:
                del current[i : i + n]
        else:
            raise ValueError(f"unknown patch {sorted(patch)}")
    return value
