"""A thin live client's state: the confirmed value, its pending edits on top, and their rebase.

Pure (no I/O, no clock): :class:`LiveState` takes the server's frames and
the app's edits and says what to send; :mod:`crdtstore.live_client` moves
the frames. The README's "Live editing" section specifies the same rules
for the browser.

The value a user sees is ``confirmed`` (the document at ``version``, built
from the server's snapshot and patches) with the pending ops applied on top:
first the batch in flight (at most one), then the ops queued behind it. An
incoming remote patch moves those ops and the caret, so a user's edits stay
where they were made:

- an insert of n at i moves every later index right by n; at the same index
  the remote insert goes first (a pending insert moves right, a caret stays);
- a delete of k at i moves indexes past the range left by k and collapses
  those inside it to i; a pending delete loses the part already deleted, and
  a pending delete around a remote insert is cut in two, so it never
  deletes text it did not see;
- value and remove patches, and ops on other paths, move nothing.

The server reads each batch's indexes against the ``version`` it was sent
with (versioned ops), so the CRDT, not this rebase, decides where the ops
land; the rebase only keeps the screen close to that until the batch's own
change arrives.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

from .patches import apply_patches

__all__ = ["Batch", "LiveState", "apply_ops", "move_index", "transform"]

Op = dict[str, Any]


def _content_length(op: Mapping[str, Any]) -> int:
    """How many elements an insert (op or patch) brings: its text's characters or its values."""
    content: Sized = op["text"] if "text" in op else op.get("values", ())
    return len(content)


def _shape(op: Op) -> tuple[str, int, int] | None:
    """``("ins", i, n)`` / ``("del", i, k)`` for an index op or patch; None for everything else."""
    if "insert" in op and isinstance(op["insert"], dict):  # a patch
        ins = op["insert"]
        return "ins", ins["index"], _content_length(ins)
    if "delete" in op and isinstance(op["delete"], dict):
        return "del", op["delete"]["index"], op["delete"]["count"]
    if op.get("op") == "insert" and "index" in op:
        return "ins", op["index"], _content_length(op)
    if op.get("op") == "delete" and "index" in op:
        return "del", op["index"], op.get("count", 1)
    return None


def _with(op: Op, index: int, count: int | None = None) -> Op:
    """``op`` (an op or a patch) moved to ``index`` (and for a delete, cut to ``count``)."""
    if "insert" in op and isinstance(op["insert"], dict):
        return op | {"insert": op["insert"] | {"index": index}}
    if "delete" in op and isinstance(op["delete"], dict):
        return op | {"delete": {"index": index, "count": count}}
    moved = op | {"index": index}
    if count is not None:
        moved["count"] = count
    return moved


def _collapse(x: int, i: int, k: int) -> int:
    """Where index ``x`` lands once ``k`` elements at ``i`` are deleted."""
    return x if x <= i else i if x < i + k else x - k


def _xform(a: Op, b: Op) -> tuple[list[Op], list[Op]]:
    """``a`` (local) moved past ``b`` (remote), and ``b`` past ``a``; both start from the same value."""
    sa, sb = _shape(a), _shape(b)
    if sa is None or sb is None or list(a["path"]) != list(b["path"]):
        return [a], [b]
    ka, j, m = sa
    kb, i, n = sb
    if ka == "ins" and kb == "ins":
        if i <= j:  # the remote insert goes first
            return [_with(a, j + n)], [b]
        return [a], [_with(b, i + m)]
    if ka == "ins" and kb == "del":
        if j <= i:
            return [a], [_with(b, i + m, n)]
        if j >= i + n:
            return [_with(a, j - n)], [b]
        # Inserted inside the deleted range: the insert survives at the cut, the delete goes around it.
        return [_with(a, i)], [_with(b, i, j - i), _with(b, i + m, i + n - j)]
    if ka == "del" and kb == "ins":
        b2, a2 = _xform(b, a)  # the same rules with the roles swapped (no tie to break)
        return a2, b2
    # Two deletes: each keeps only what the other did not delete.
    start, end = _collapse(j, i, n), _collapse(j + m, i, n)
    other_start, other_end = _collapse(i, j, m), _collapse(i + n, j, m)
    a2 = [_with(a, start, end - start)] if end > start else []
    b2 = [_with(b, other_start, other_end - other_start)] if other_end > other_start else []
    return a2, b2


def transform(local: list[Op], remote: list[Op]) -> tuple[list[Op], list[Op]]:
    """``local`` ops moved past ``remote`` patches, and ``remote`` moved past ``local``.

    Both lists are sequential (each item applies to the value the earlier
    ones left) and start from the same value. Returns ``(local', remote')``:
    ``local'`` applies after ``remote``, ``remote'`` after ``local``.
    """
    if not local or not remote:
        return local, remote
    if len(local) == 1 and len(remote) == 1:
        return _xform(local[0], remote[0])
    if len(local) > 1:
        first, rest_remote = transform(local[:1], remote)
        rest, final_remote = transform(local[1:], rest_remote)
        return first + rest, final_remote
    moved, first_remote = transform(local, remote[:1])
    moved, rest_remote = transform(moved, remote[1:])
    return moved, first_remote + rest_remote


def move_index(path: list[str], index: int, remote: list[Op]) -> int:
    """A caret (or a selection end) at ``index`` of ``path`` after the patches ``remote``."""
    for patch in remote:
        shape = _shape(patch)
        if shape is None or list(patch["path"]) != list(path):
            continue
        kind, i, n = shape
        if kind == "ins" and i < index:  # a remote insert right at the caret goes after it
            index += n
        elif kind == "del":
            index = _collapse(index, i, n)
    return index


def apply_ops(value: dict[str, Any], ops: list[Op]) -> dict[str, Any]:
    """Apply ops (the POST format) to a plain value in place, as a screen would show them; indexes are clamped."""
    for op in ops:
        path = op.get("path") or []
        parent: Any = value
        for name in path[:-1]:
            parent = parent.setdefault(name, {}) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                break
        if not isinstance(parent, dict) or not path:
            continue
        name, kind = path[-1], op.get("op")
        current = parent.get(name)
        if kind == "set":
            parent[name] = op.get("value")
        elif kind == "delete" and "index" not in op:
            parent.pop(name, None)
        elif kind == "increment":
            parent[name] = (current if isinstance(current, int | float) else 0) + op.get("by", 1)
        elif kind in ("enable", "disable"):
            parent[name] = kind == "enable"
        elif kind in ("add", "remove"):
            items = list(current) if isinstance(current, list) else []
            if kind == "add" and op.get("value") not in items:
                items.append(op.get("value"))
            elif kind == "remove" and op.get("value") in items:
                items.remove(op.get("value"))
            parent[name] = items
        elif kind == "insert":
            seq = current if current is not None else ("" if "text" in op else [])
            add = op.get("text", op.get("values", []))
            if isinstance(seq, str) and isinstance(add, str):
                i = max(0, min(op.get("index", 0), len(seq)))
                parent[name] = seq[:i] + add + seq[i:]
            elif isinstance(seq, list) and isinstance(add, list):
                i = max(0, min(op.get("index", 0), len(seq)))
                parent[name] = seq[:i] + add + seq[i:]
            else:
                parent[name] = seq
        elif kind == "delete" and isinstance(current, str | list):
            i = max(0, min(op["index"], len(current)))
            del_end = i + op.get("count", 1)
            # One branch per type: a text and a list slice alike, but only each with its own kind.
            if isinstance(current, str):
                parent[name] = current[:i] + current[del_end:]
            else:
                parent[name] = current[:i] + current[del_end:]
    return value


_TEXT_INSERT = frozenset({"op", "path", "index", "text"})
_DELETE = frozenset({"op", "path", "index", "count"})


def _continue(last: Op, op: Op) -> bool:
    """Fold ``op`` into ``last`` (queued just before it) when together they are one edit; True if folded.

    An insert of text right after the text ``last`` inserts is one insert; a delete that ends where
    ``last`` deleted (a backspace) or starts there (a forward delete) is one delete. Ops with any
    other field (an explicit ``version``) are kept apart.
    """
    kind = op.get("op")
    if kind != last.get("op") or op.get("path") != last.get("path"):
        return False
    if type(op.get("index")) is not int or type(last.get("index")) is not int:
        return False
    if kind == "insert":
        text, before = op.get("text"), last.get("text")
        if (
            set(op) != _TEXT_INSERT
            or set(last) != _TEXT_INSERT
            or not isinstance(text, str)
            or not isinstance(before, str)
        ):
            return False
        if op["index"] != last["index"] + len(before):
            return False
        last["text"] = before + text
        return True
    if kind == "delete":
        count, had = op.get("count", 1), last.get("count", 1)
        if not set(op) <= _DELETE or not set(last) <= _DELETE or type(count) is not int or type(had) is not int:
            return False
        if count < 1 or had < 1:
            return False
        if op["index"] + count == last["index"]:  # backspace
            last["index"], last["count"] = op["index"], had + count
            return True
        if op["index"] == last["index"]:  # forward delete
            last["count"] = had + count
            return True
    return False


@dataclass(slots=True)
class Batch:
    """The batch in flight: its frame as sent (never changed: a resend repeats it) and its ops as shown."""

    id: str
    frame: dict[str, Any]
    shown: list[Op]
    size: int  # how many apply() calls it carries


@dataclass(slots=True)
class LiveState:
    """One client's view of one document (see the module docstring).

    ``prefix`` starts every batch id this client picks: ids must not collide with another client's of the
    same token, so the caller draws it at random (the module reads no randomness itself).
    """

    prefix: str
    confirmed: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    inflight: Batch | None = None
    queued: list[Op] = field(default_factory=list)
    queued_calls: int = 0
    carets: dict[str, tuple[list[str], int]] = field(default_factory=dict)
    # Sent and not acknowledged yet, in order: what a new connection resends (the server acks a known id again).
    unacked: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def value(self) -> dict[str, Any]:
        """What the user sees: the confirmed value with every pending op on top."""
        shown = copy.deepcopy(self.confirmed)
        return apply_ops(shown, (self.inflight.shown if self.inflight else []) + self.queued)

    def edit(self, ops: list[Op]) -> None:
        """Local ops, with indexes into :meth:`value`, queued behind the batch in flight.

        A keystroke that continues the last queued one (typing on at the caret, backspacing or deleting
        forward) joins it: the batch then holds one op for a typed run, which the server reads against
        the batch's version once, not once per character. The value shown is the same.
        """
        queued = self.queued
        for op in ops:
            if not (queued and _continue(queued[-1], op)):
                queued.append(dict(op))
        self.queued_calls += 1

    def next_batch(self, w: str | None = None) -> dict[str, Any] | None:
        """The frame to send now, if any: the queued ops, once nothing is in flight and a version is known."""
        if self.inflight is not None or not self.queued or self.version is None:
            return None
        batch_id = f"{self.prefix}-{next(self._ids)}"
        frame: dict[str, Any] = {"type": "batch", "id": batch_id, "ops": self.queued, "version": self.version}
        if w is not None:
            frame["w"] = w
        self.inflight = Batch(batch_id, frame, list(self.queued), self.queued_calls)
        self.unacked[batch_id] = frame
        self.queued, self.queued_calls = [], 0
        return frame

    def receive(self, message: dict[str, Any]) -> None:
        """Take a server frame: snapshot, change, ack or error (presence is the app's business)."""
        kind = message.get("type")
        if kind == "snapshot":
            self.confirmed, self.version = message["value"], message["version"]
        elif kind == "change":
            changes = message["patches"]
            mine = self.inflight is not None and message.get("batch") == self.inflight.id
            # Text patches hold only strings; a value or list patch may hold containers the caller keeps.
            plain = all("insert" in p and "text" in p["insert"] or "delete" in p for p in changes)
            apply_patches(self.confirmed, changes if plain else copy.deepcopy(changes))
            self.version = message["version"]
            if mine:
                # Its own effect, as the server placed it: the queue stays as it was typed.
                self.inflight = None
                return
            remote = changes
            if self.inflight is not None:
                self.inflight.shown, remote = transform(self.inflight.shown, remote)
            self.queued, remote = transform(self.queued, remote)
            for name, (path, index) in self.carets.items():
                self.carets[name] = (path, move_index(path, index, remote))
        elif kind in ("ack", "error"):
            self.unacked.pop(message.get("id"), None)  # type: ignore[arg-type]
            if self.inflight is not None and message.get("id") == self.inflight.id:
                self.inflight = None
