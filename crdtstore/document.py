"""A document: a root observed-remove map plus its causal context.

``Document.apply`` takes a batch of JSON ops and works in two phases:

1. *Plan*: parse every op, then walk the batch against the document as it
   would be after the earlier ops of the batch (a small overlay of path
   types and sequence lengths), checking types and indexes. Any failure
   raises an ``OpError`` naming the op; nothing has changed yet.
2. *Execute*: the same ops, now known to succeed, mint dots, change the
   document in place and collect one delta for the whole batch.

The replica id and the timestamp for last-writer-wins registers are passed
in; the core never reads a clock. The README's "Documents and ops" gives the op formats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, Final

from .canonical import check_deleters, decode_state, encode_state
from .causal import CausalContext, Dot
from .crdt.awset import element_key
from .crdt.counter import Counter, check_increment
from .crdt.ormap import ORMap, empty_value, removal_of
from .crdt.registers import LWWRegister, MVRegister
from .crdt.sequence import SeqDelta, Sequence
from .crdt.tags import Tag
from .errors import IndexOutOfRange, InvalidOp, InvalidValue, TypeMismatch, VersionAhead
from .ops import Op, parse_ops
from .version import decode_version, encode_version

__all__ = ["Delta", "Document"]

_OP_TAG: Final = {"increment": Tag.COUNTER, "add": Tag.SET, "remove": Tag.SET, "enable": Tag.FLAG, "disable": Tag.FLAG}
_CONTAINERS: Final = frozenset({Tag.MAP, Tag.SET, Tag.FLAG, Tag.LIST, Tag.TEXT})
_SEQUENCES: Final = frozenset({Tag.LIST, Tag.TEXT})


class Delta:
    """What one batch changed: a delta map (mentioning what it touched) and the dots it covers."""

    __slots__ = ("ctx", "root")

    def __init__(self, root: ORMap | None = None, ctx: CausalContext | None = None) -> None:
        self.root = root if root is not None else ORMap(is_delta=True)
        self.ctx = ctx if ctx is not None else CausalContext()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Delta) and self.root == other.root and self.ctx == other.ctx

    def __repr__(self) -> str:
        return f"Delta({self.root!r}, {self.ctx!r})"

    def dots(self) -> Iterator[Dot]:
        return self.ctx.dots()

    def join(self, other: Delta) -> None:
        """Group ``other`` into this delta (both are deltas)."""
        self.root.join(other.root, self.ctx, other.ctx, False)
        self.ctx.join(other.ctx)


class Document:
    """A JSON-like CRDT document. Joins are in place; ``==`` is structural."""

    __slots__ = ("ctx", "root")

    def __init__(self, root: ORMap | None = None, ctx: CausalContext | None = None) -> None:
        self.root = root if root is not None else ORMap()
        self.ctx = ctx if ctx is not None else CausalContext()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Document) and self._encode() == other._encode()

    def __repr__(self) -> str:
        return f"Document({self.value()!r})"

    # Public methods for reading.

    def value(self) -> dict[str, Any]:
        return self.root.value()

    def siblings(self) -> dict[str, Any]:
        """The same tree as ``value()``, with every register as the list of its concurrent values."""
        return self.root.siblings()

    def version(self) -> str:
        return encode_version(self.ctx)

    def vector(self) -> dict[str, int]:
        return self.ctx.vector()

    def contains_version(self, token: str) -> bool:
        return self.ctx.contains_context(decode_version(token))

    def digest(self) -> bytes:
        """blake2b of the canonical encoding: equal exactly when the states are equal."""
        return hashlib.blake2b(self._encode(), digest_size=16).digest()

    def version_digest(self) -> bytes:
        """blake2b of the causal context alone: O(replicas), not O(document).

        Every op mints a dot, and a state is determined by the ops joined into
        it, so equal contexts mean equal states (the replica state machine
        checks this). Storage keys its Merkle tree on this digest so that a
        write need not encode the whole document.
        """
        return hashlib.blake2b(encode_version(self.ctx).encode(), digest_size=16).digest()

    def copy(self) -> Document:
        # Through the canonical bytes, as crdtstore.codec.decode_document reads them: a deep copy
        # that shares nothing and is checked as any loaded state is.
        root, ctx = decode_state(self._encode(), "D")
        check_deleters(root, ctx)
        return Document(root, ctx)

    def _encode(self) -> bytes:
        # What crdtstore.codec.encode_document writes.
        return encode_state("D", self.root, self.ctx)

    # Public methods for joining.

    def join(self, delta: Delta) -> None:
        """Join a delta in place (idempotent, commutative, associative).

        Raises:
            DecodeError: the join would hold more than a decoder accepts; nothing changed.
        """
        seq = self._sequence_of(delta)
        if seq is not None:
            # The usual delta, one keystroke into a text or list that is here already:
            # what the map joins on the way down would do changes nothing, so go straight there.
            seq[0].check_join(seq[1])
            seq[0].join_delta(seq[1], self.ctx, delta.ctx)
        else:
            _check_join(self.root, delta.root)
            self.root.join(delta.root, self.ctx, delta.ctx, False)
        self.ctx.join(delta.ctx)

    def _sequence_of(self, delta: Delta) -> tuple[Sequence, SeqDelta] | None:
        """Our sequence and the delta's change to it, when the delta changes one existing sequence only.

        On the way down, each of the delta's maps must hold nothing but the
        one field, and none of our maps' presence dots may be in the delta's
        context: then joining those maps keeps them exactly as they are. (A
        sequence with elements is never empty, so nothing is dropped either.)
        """
        theirs: Any = delta.root
        ours: Any = self.root
        ctx = delta.ctx
        while type(theirs) is ORMap:
            if theirs.presence or len(theirs.fields) != 1 or any(d in ctx for d in ours.presence):
                return None
            ((name, entries),) = theirs.fields.items()
            if len(entries) != 1:
                return None
            ((tag, theirs),) = entries.items()
            ours = ours.get(name, tag)
            if ours is None:
                return None
        # With elements here or coming, nothing on the path can end up empty and be dropped.
        if type(theirs) is SeqDelta and type(ours) is Sequence and (ours.by_replica or theirs.inserts):
            return ours, theirs
        return None

    def merge(self, other: Document) -> None:
        """Join another full state in place.

        Raises:
            DecodeError: the join would hold more than a decoder accepts; nothing changed.
        """
        _check_join(self.root, other.root)
        self.root.join(other.root, self.ctx, other.ctx, True)
        self.ctx.join(other.ctx)

    # Public methods for local changes.

    def apply(self, ops: Any, *, replica: str, now: int = 0) -> Delta:
        """Apply a batch of JSON ops atomically and return its delta.

        Args:
            ops: a list of op objects (see the README).
            replica: the id of the replica making the change; it mints the dots.
            now: the hybrid-logical-clock timestamp for last-writer-wins writes.

        Raises:
            OpError: the batch was rejected whole (``op_index`` names the op); nothing changed.
        """
        if not isinstance(replica, str) or not replica:
            raise ValueError("replica must be a non-empty string")
        parsed = parse_ops(ops)
        _Planner(self, replica).check(parsed)
        return _Executor(self, replica, now).run(parsed)


class _Planner:
    """Checks a batch against the document as the earlier ops of the batch would leave it."""

    def __init__(self, doc: Document, replica: str) -> None:
        self.doc = doc
        self.replica = replica
        # path -> what earlier increments of the batch added (they must stay inside int64 together)
        self.counter_change: dict[tuple[str, ...], int] = {}
        # path -> (tag or None when removed, whether the document's own value there still counts)
        self.overlay: dict[tuple[str, ...], tuple[Tag | None, bool]] = {}
        self.length_change: dict[tuple[str, ...], int] = {}

    def check(self, ops: list[Op]) -> None:
        for i, op in enumerate(ops):
            try:
                self._check(op, last=i == len(ops) - 1)
            except (InvalidOp, InvalidValue, TypeMismatch, IndexOutOfRange, VersionAhead) as exc:
                exc.op_index = i
                exc.args = (f"op {i}: {exc.reason}",)
                raise

    def _check(self, op: Op, *, last: bool) -> None:
        path = op.path
        tag, real = self._resolve(path)
        if op.kind == "delete" and op.at is None:
            if tag is not None:
                self._remove(path)
            return
        wanted = _wanted_tag(op, tag)
        if tag is not None and tag is not wanted:
            raise TypeMismatch(f"{'/'.join(path)} is a {tag.label}; {op.kind} needs a {wanted.label}", path=list(path))
        if wanted in _SEQUENCES:
            self._check_index(op, wanted, tag, real)
        if op.kind == "increment":
            earlier = self.counter_change.get(path, 0)
            try:
                check_increment(real, self.replica, op.by, earlier)
            except InvalidValue as exc:
                exc.path = list(path)
                raise
            self.counter_change[path] = earlier + op.by
        if not last:  # only later ops of the batch read the overlay
            self._create(path, wanted)

    def _check_index(self, op: Op, wanted: Tag, tag: Tag | None, real: Sequence | None) -> None:
        if op.kind == "insert" and wanted is Tag.TEXT and not isinstance(op.content, str):
            raise TypeMismatch("insert into text takes text", path=list(op.path))
        if op.kind == "insert" and wanted is Tag.LIST and not isinstance(op.content, list):
            raise TypeMismatch("insert into a list takes values", path=list(op.path))
        if op.version is not None and not self.doc.ctx.contains_context(op.version):
            # Its index counts elements not here yet: read against what is here, it would land elsewhere.
            raise VersionAhead("the version names changes this replica has not received yet", path=list(op.path))
        if tag is None:
            length = 0
        elif real is None:
            length = self.length_change.get(op.path, 0)
        else:
            base = real.total if op.version is None else real.length_at(op.version)
            length = base + self.length_change.get(op.path, 0)
        assert op.at is not None
        if op.kind == "insert":
            if op.at > length:
                raise IndexOutOfRange(f"insert at {op.at} past the end ({length})", path=list(op.path))
            self.length_change[op.path] = self.length_change.get(op.path, 0) + len(op.content or ())
        else:
            if op.at + op.span > length:
                raise IndexOutOfRange(f"delete of {op.span} at {op.at} past the end ({length})", path=list(op.path))
            self.length_change[op.path] = self.length_change.get(op.path, 0) - op.span

    def _resolve(self, path: tuple[str, ...]) -> tuple[Tag | None, Any]:
        """The visible type at ``path`` after the earlier ops, and the document's value there if it still counts."""
        if not self.overlay:
            # The first op of a batch (most batches have one): the document alone, no prefixes to look up.
            root: ORMap = self.doc.root
            last = len(path) - 1
            for k in range(last):
                name = path[k]
                tag = root.visible_tag(name)
                if tag is None:
                    return None, None
                if tag is not Tag.MAP:
                    prefix = path[: k + 1]
                    raise TypeMismatch(f"{'/'.join(prefix)} is a {tag.label}, not a map", path=list(prefix))
                root = root.fields[name][tag]
            tag = root.visible_tag(path[last])
            return tag, (root.fields[path[last]][tag] if tag is not None else None)
        node: ORMap | None = self.doc.root
        for k, name in enumerate(path):
            prefix = path[: k + 1]
            ov = self.overlay.get(prefix)
            if ov is None:
                tag = node.visible_tag(name) if node is not None else None
                alive = node is not None
            else:
                tag, alive = ov
                alive = alive and node is not None
            value = node.get(name, tag) if (alive and node is not None and tag is not None) else None
            if k == len(path) - 1:
                return tag, value
            if tag is None:
                return None, None
            if tag is not Tag.MAP:
                raise TypeMismatch(f"{'/'.join(prefix)} is a {tag.label}, not a map", path=list(prefix))
            node = value
        raise AssertionError("unreachable")

    def _remove(self, path: tuple[str, ...]) -> None:
        n = len(path)
        for key in [k for k in self.overlay if k[:n] == path]:
            del self.overlay[key]
        for key in [k for k in self.length_change if k[:n] == path]:
            del self.length_change[key]
        for key in [k for k in self.counter_change if k[:n] == path]:
            del self.counter_change[key]
        self.overlay[path] = (None, False)

    def _create(self, path: tuple[str, ...], tag: Tag) -> None:
        for k in range(1, len(path)):
            prefix = path[:k]
            ov = self.overlay.get(prefix)
            self.overlay[prefix] = (Tag.MAP, ov[1] if ov is not None else True)
        ov = self.overlay.get(path)
        self.overlay[path] = (tag, ov[1] if ov is not None else True)


def _wanted_tag(op: Op, current: Tag | None) -> Tag:
    if op.kind == "set":
        return Tag.LWW if op.lww else Tag.REGISTER
    if op.kind in ("insert", "delete"):
        if current in _SEQUENCES:
            return current
        if op.kind == "insert":
            return Tag.TEXT if isinstance(op.content, str) else Tag.LIST
        return Tag.TEXT  # an index delete on another type mismatches; on nothing, is out of range
    return _OP_TAG[op.kind]


class _Executor:
    """Runs a checked batch: nothing here may fail."""

    def __init__(self, doc: Document, replica: str, now: int) -> None:
        self.doc = doc
        self.replica = replica
        self.now = now
        self.batch: Delta | None = None  # the first op's delta becomes the batch
        # Dots enter the document's context only when their change is joined,
        # so the next counter is tracked here.
        self.next_counter = doc.ctx.max_counter(replica) + 1

    def run(self, ops: list[Op]) -> Delta:
        for op in ops:
            self._run(op)
        return self.batch if self.batch is not None else Delta()

    def mint(self, ctx: CausalContext) -> Dot:
        dot = (self.replica, self.next_counter)
        self.next_counter += 1
        ctx.add(dot)
        return dot

    def _commit(self, delta: ORMap, ctx: CausalContext, *, owned: bool = True) -> None:
        self.doc.root.join(delta, self.doc.ctx, ctx, False)
        self.doc.ctx.join(ctx)
        self._add_to_batch(delta, ctx, owned=owned)

    def _add_to_batch(self, delta: ORMap, ctx: CausalContext, *, owned: bool = True) -> None:
        """Group an op's delta into the batch; ``owned``: the caller no longer changes ``ctx``."""
        if self.batch is None:
            # The first op's delta is the batch's: no join needed. (Joins into
            # the document copy what they keep, so nothing here is shared.)
            self.batch = Delta(delta, ctx if owned else ctx.copy())
        else:
            root = self.batch.root
            if _new_registers_or_counters(root, delta):
                # Joined into nothing, such a store comes back equal to itself (its dots
                # are this op's own, new to the batch): take it as it is.
                root.fields.update(delta.fields)
            else:
                root.join(delta, self.batch.ctx, ctx, False)
            self.batch.ctx.join(ctx)

    def _run(self, op: Op) -> None:
        path = op.path
        ctx = CausalContext()
        if op.kind == "delete" and op.at is None:
            # Every op mints a dot, removals included: then two replicas with
            # equal contexts have joined the same ops and hold equal states,
            # so a digest of the context can stand for the document's.
            dot = self.mint(ctx)
            parent = self._parent(path)
            if parent is not None and parent.visible_tag(path[-1]) is not None:
                entries = removal_of(parent.fields[path[-1]], ctx, lambda: dot)
                self._commit(_wrap(path, entries, {}), ctx)
            else:
                self.doc.ctx.join(ctx)
                self._add_to_batch(ORMap(is_delta=True), ctx)
            return
        parent, created = self._walk(path, ctx)
        name = path[-1]
        tag = _wanted_tag(op, parent.visible_tag(name) if parent is not None else None)
        value = parent.get(name, tag) if parent is not None else None
        if value is None:
            value = empty_value(tag, delta=False)
        presence = {self.mint(ctx)} if tag in _CONTAINERS and not value.presence else set()
        if tag in _SEQUENCES:
            self._sequence_op(op, path, tag, value, ctx, created, presence)
            return
        dot = self.mint(ctx)  # remove and disable mint one too, though no store keeps it
        leaf: Any
        if op.kind == "set":
            leaf = value.write(dot, (self.now, op.value) if op.lww else op.value, ctx)
        elif op.kind == "increment":
            leaf = value.increment(dot, op.by, ctx)
        elif op.kind == "add":
            leaf = value.add(dot, element_key(op.value), ctx)
        elif op.kind == "remove":
            leaf = value.remove(element_key(op.value), ctx)
        elif op.kind == "enable":
            leaf = value.enable(dot, ctx)
        else:
            leaf = value.disable(ctx)
        if presence:
            leaf.presence = presence
        self._commit(_wrap(path, {tag: leaf}, created), ctx)

    def _parent(self, path: tuple[str, ...]) -> ORMap | None:
        node: ORMap | None = self.doc.root
        for name in path[:-1]:
            node = node.get(name, Tag.MAP) if node is not None else None
        return node

    def _walk(self, path: tuple[str, ...], ctx: CausalContext) -> tuple[ORMap | None, dict[int, Dot]]:
        """The parent map of ``path``'s last key, and presence dots (by depth) for ancestors not there yet."""
        node: ORMap | None = self.doc.root
        created: dict[int, Dot] = {}
        for depth in range(len(path) - 1):
            child = node.get(path[depth], Tag.MAP) if node is not None else None
            if child is None or not child.visible():
                created[depth] = self.mint(ctx)
            node = child
        return node, created

    def _sequence_op(
        self,
        op: Op,
        path: tuple[str, ...],
        tag: Tag,
        seq: Sequence,
        ctx: CausalContext,
        created: dict[int, Dot],
        presence: set[Dot],
    ) -> None:
        # The sequence must be in the document before it is edited in place.
        if created or presence or seq.is_bottom():
            self._commit(_wrap(path, {tag: SeqDelta(tag, set(presence))}, created), ctx, owned=False)
            seq = self._lookup(path, tag)
        leaf = SeqDelta(tag, set(presence))
        seen = self._seen(op)
        assert op.at is not None
        if op.kind == "insert":
            assert op.content is not None
            counter = self.next_counter
            self.next_counter += len(op.content)
            if seen is None:
                leaf.inserts.append(seq.insert(op.at, op.content, self.replica, counter))
            else:
                origin = None
                if op.at:
                    before = seq.ids_at(seen, op.at - 1, 1)
                    assert before is not None  # the batch check read op.at against this view
                    origin = before[0]
                leaf.inserts.append(seq.insert_after(origin, op.content, self.replica, counter))
            ctx.add_range(self.replica, counter, counter + len(op.content))
        else:
            deleter = self.mint(ctx)
            if seen is None:
                leaf.deletes = seq.delete(op.at, op.span, deleter)
            else:
                ids = seq.ids_at(seen, op.at, op.span)
                assert ids is not None
                leaf.deletes = seq.delete_ids(ids, deleter)
        self._add_to_batch(_wrap(path, {tag: leaf}, created), ctx)
        self.doc.ctx.join(ctx)

    def _lookup(self, path: tuple[str, ...], tag: Tag) -> Any:
        node = self._parent(path)
        return node.get(path[-1], tag) if node is not None else None

    def _seen(self, op: Op) -> CausalContext | None:
        """With a version, the view is what the caller saw plus what this batch did before."""
        if op.version is None:
            return None
        seen = op.version.copy()
        if self.batch is not None:
            seen.join(self.batch.ctx)
        return seen


def _new_registers_or_counters(batch: ORMap, delta: ORMap) -> bool:
    """The op's delta only adds fields the batch does not mention yet, each a register or a counter.

    The usual multi-op batch, an op per field: the batch takes those fields as
    they are instead of joining them into bottom values (same stores, less work).
    """
    if delta.presence:
        return False
    for name, entries in delta.fields.items():
        if name in batch.fields:
            return False
        for value in entries.values():
            kind = type(value)
            if kind is not Counter and kind is not MVRegister and kind is not LWWRegister:
                return False
    return True


def _check_join(ours: ORMap | None, theirs: ORMap) -> None:
    """Refuse, before any change, a join whose sequences would pass the decoder's bounds."""
    for name, entries in theirs.fields.items():
        for tag, value in entries.items():
            mine = ours.get(name, tag) if ours is not None else None
            if isinstance(value, ORMap):
                _check_join(mine, value)
            elif isinstance(value, SeqDelta | Sequence):
                (mine if mine is not None else Sequence(tag)).check_join(value)


def _wrap(path: tuple[str, ...], entries: dict[Tag, Any], created: dict[int, Dot]) -> ORMap:
    """The delta map holding ``entries`` at ``path``; ``created`` maps an ancestor's depth to its presence dot."""
    node = ORMap({created[len(path) - 2]} if len(path) - 2 in created else set(), {path[-1]: entries}, is_delta=True)
    for depth in range(len(path) - 2, -1, -1):
        presence = {created[depth - 1]} if depth - 1 in created else set()
        node = ORMap(presence, {path[depth]: {Tag.MAP: node}}, is_delta=True)
    return node
