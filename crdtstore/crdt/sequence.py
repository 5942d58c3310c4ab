"""Sequence CRDT for text and lists: RGA with runs, tombstones and a position index.

Theory of operation
-------------------
Every element (a character, or a JSON value in a list) has an id, the dot
``(replica, counter)`` minted for it, and a Lamport timestamp. An element
is inserted after an *origin*: the element it was typed after, or the start.
The order is the Replicated Growable Array's (Roh et al., "Replicated
abstract data types", JPDC 2011): the elements inserted after one origin
sit in descending ``(lamport, replica)`` order, each followed by what was
inserted after it. Integrating a remote element therefore needs only its
origin: start right after the origin and skip every element with a greater
timestamp (all of a greater sibling's descendants are greater still, and
nothing past the origin's subtree is). Deletion keeps a tombstone, so later
inserts can still anchor on a deleted element; the tombstone records the
dots of the deletes, which lets an index be read against an older version.

Runs. Characters typed one after another by one replica have consecutive
counters and timestamps and each has the previous as origin, so one *item*
holds the whole run: ``(replica, counter, lamport, origin, content)``. Items
split where an insert or delete lands inside them. The canonical encoding
merges whatever can merge, so two replicas holding the same elements encode
to the same bytes whatever their in-memory splits.

Index. Items live in blocks of at most ``BLOCK_MAX``; a Fenwick tree over the
blocks' visible lengths finds the block of a visible index in O(log n), and
a C-level prefix sum finds the item inside it. Ids are found through a
per-replica sorted list of run starts, each with its few pieces. No
operation walks the whole sequence, except reading an index against an
older version (which must look at every tombstone) and encoding, and none
walks it element by element: what a few bytes may claim (a dead run of
millions) costs no more than one run.

Deltas carry inserts ``(replica, counter, lamport, origin, content)`` and
deletes ``(replica, lo, hi, deleter)``. One whose origin (or target) has not
arrived yet waits in ``pending`` and is retried after every integration, so
deltas may be joined in any order.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from itertools import accumulate, repeat
from operator import add, and_, attrgetter, eq, ge, le, lt, mul, sub, truth
from typing import Any, cast

from ..causal import CausalContext, Dot, ranges_add
from ..errors import DecodeError
from .base import ReplicaTable, decode_dot, decode_dots, encode_dots, join_dotset
from .tags import Tag

__all__ = ["BLOCK_MAX", "Insert", "Item", "SeqDelta", "Sequence"]

BLOCK_MAX = 128
# The most element ids (live, dead and waiting) one sequence may hold, and
# one run or delete may span. Decoding refuses more and so does a join
# (``check_join``), so whatever joins cleanly also loads. No work walks
# elements one by one, so the bound is about what bytes may claim, not about
# time: a local write stops at the node's per-document limit (4M elements),
# and this sits 64 times above it, for documents that many regions filled
# concurrently.
MAX_ELEMENTS = 1 << 28
# Local typing extends the run it continues; past this the run is closed so
# that extending (which copies the content) stays O(1) amortized.
RUN_MAX = 256
# Reading an index against an older version goes through the current view
# when that version lacks few visible pieces (and no deleter): at least this many.
_RECENT_MIN = 16

Content = str | list[Any]
# An insert as shipped: (replica, counter, lamport, origin, content-or-length).
# A dead insert (from a full state) carries its length instead of content.
Insert = tuple[str, int, int, Dot | None, Content | int]
Delete = tuple[str, int, int, tuple[Dot, ...]]
# Who deleted what, run-length coded: deleter k is (dr, d0 + k * dstep) and its
# target is (tr, t0 + k * tstep), for k < n. One range delete is one segment
# (dstep 0), and so is a run of backspaces (dstep 1, tstep -1).
Segment = tuple[str, int, int, str, int, int, int]

_counter = attrgetter("counter")
# Loading sorts runs by one integer key, replica index * _KEY + counter; no
# legal counter comes near it (counters count a replica's ops).
_KEY = 1 << 64


class Item:
    """A run of elements with consecutive ids and timestamps."""

    __slots__ = ("block", "content", "counter", "lamport", "length", "origin", "replica")

    def __init__(
        self,
        replica: str,
        counter: int,
        lamport: int,
        origin: Dot | None,
        length: int,
        content: Content | None,
        block: Block,
    ) -> None:
        self.replica = replica
        self.counter = counter
        self.lamport = lamport
        self.origin = origin
        self.length = length
        self.content = content  # None once deleted
        self.block = block

    def __repr__(self) -> str:
        return (
            f"Item({self.replica}:{self.counter} L{self.lamport} after {self.origin} "
            f"{self.content if self.content is not None else self.length})"
        )


class Block:
    __slots__ = ("idx", "items", "lens", "vis")

    def __init__(self, idx: int, items: list[Item], lens: list[int]) -> None:
        self.idx = idx
        self.items = items
        self.lens = lens  # visible length of each item (0 for tombstones)
        self.vis = sum(lens)


class SeqDelta:
    """The delta of sequence operations: presence dots, inserts and deletes, in the order made."""

    __slots__ = ("deletes", "inserts", "presence", "tag")

    def __init__(
        self,
        tag: Tag,
        presence: set[Dot] | None = None,
        inserts: list[Insert] | None = None,
        deletes: list[Delete] | None = None,
    ) -> None:
        self.tag = tag
        self.presence: set[Dot] = presence if presence is not None else set()
        self.inserts: list[Insert] = inserts if inserts is not None else []
        self.deletes: list[Delete] = deletes if deletes is not None else []

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SeqDelta)
            and self.tag == other.tag
            and self.presence == other.presence
            and self.inserts == other.inserts
            and self.deletes == other.deletes
        )

    def __repr__(self) -> str:
        return f"SeqDelta({self.tag.label}, {self.presence!r}, {self.inserts!r}, {self.deletes!r})"

    def is_bottom(self) -> bool:
        return not self.presence and not self.inserts and not self.deletes

    def visible(self) -> bool:
        return bool(self.presence) or any(not isinstance(ins[4], int) for ins in self.inserts)

    def dots(self) -> Iterator[Dot]:
        yield from self.presence

    def copy(self) -> SeqDelta:
        return SeqDelta(self.tag, set(self.presence), list(self.inserts), list(self.deletes))

    def join(self, other: Any, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        """Delta groups concatenate (joining them into a sequence dedups)."""
        if not isinstance(other, SeqDelta):
            raise TypeError("a sequence delta joins only another sequence delta")
        self.presence = join_dotset(self.presence, other.presence, ours, theirs)
        self.inserts.extend(i for i in other.inserts if i not in self.inserts)
        self.deletes.extend(d for d in other.deletes if d not in self.deletes)

    def to_json(self, table: ReplicaTable) -> list[Any]:
        """``[presence, inserts, deletes]``, trailing empty lists left out (most deltas are one insert)."""
        out = [
            encode_dots(self.presence, table),
            [_encode_insert(ins, table) for ins in self.inserts],
            [_encode_delete(d, table) for d in self.deletes],
        ]
        while out and not out[-1]:
            out.pop()
        return out

    @classmethod
    def from_json(cls, tag: Tag, data: Any, table: ReplicaTable) -> SeqDelta:
        if not isinstance(data, list) or len(data) > 3 or (data and not data[-1]):
            raise DecodeError(f"{tag.label}: bad delta body")
        data = data + [[]] * (3 - len(data))
        if not isinstance(data[1], list) or not isinstance(data[2], list):
            raise DecodeError(f"{tag.label}: bad delta body")
        inserts = [_decode_insert(tag, x, table) for x in data[1]]
        deletes = [_decode_delete(x, table) for x in data[2]]
        return cls(tag, set(decode_dots(data[0], table)), inserts, deletes)


def _encode_insert(ins: Insert, table: ReplicaTable) -> list[Any]:
    """``[replica, counter, lamport - counter, origin, content]``; a dead run has its length as content.

    Numbers are written relative to the counter, and an origin in the same
    replica as the count back to it (usually 1), so that a one-character
    delta stays small however long the document's history is.
    """
    replica, counter, lamport, origin, content = ins
    return [table.ref(replica), counter, lamport - counter, _origin_ref(replica, counter, origin, table), content]


def _origin_ref(replica: str, counter: int, origin: Dot | None, table: ReplicaTable) -> Any:
    if origin is None:
        return None
    if origin[0] == replica:
        return counter - origin[1]
    return [table.ref(origin[0]), origin[1]]


def _decode_origin(rel: Any, replica_ref: Any, counter: int, table: ReplicaTable) -> Dot | None:
    if rel is None:
        return None
    if type(rel) is int:
        return decode_dot(replica_ref, counter - rel, table)
    if isinstance(rel, list) and len(rel) == 2:
        return decode_dot(rel[0], rel[1], table)
    raise DecodeError("bad origin")


def _check_content(tag: Tag, content: Any) -> None:
    if type(content) is int:
        if not 1 <= content <= MAX_ELEMENTS:
            raise DecodeError(f"{tag.label}: bad run length")
    elif not (isinstance(content, str) if tag is Tag.TEXT else isinstance(content, list)) or not content:
        raise DecodeError(f"{tag.label}: bad content")


def _decode_insert(tag: Tag, data: Any, table: ReplicaTable) -> Insert:
    if not isinstance(data, list) or len(data) != 5:
        raise DecodeError(f"{tag.label}: bad insert")
    replica, counter = decode_dot(data[0], data[1], table)
    if type(data[2]) is not int or counter + data[2] < 1:
        raise DecodeError(f"{tag.label}: bad timestamp")
    _check_content(tag, data[4])
    return (replica, counter, counter + data[2], _decode_origin(data[3], data[0], counter, table), data[4])


def _encode_delete(d: Delete, table: ReplicaTable) -> list[Any]:
    return [table.ref(d[0]), d[1], d[2], encode_dots(set(d[3]), table)]


def _decode_delete(data: Any, table: ReplicaTable) -> Delete:
    if not isinstance(data, list) or len(data) != 4:
        raise DecodeError("bad delete")
    replica, lo = decode_dot(data[0], data[1], table)
    hi = data[2]
    if type(hi) is not int or not 0 < hi - lo <= MAX_ELEMENTS:
        raise DecodeError("bad delete range")
    deleters = tuple(sorted(set(decode_dots(data[3], table))))
    if not deleters:
        raise DecodeError("a delete needs a deleter")
    return (replica, lo, hi, deleters)


class Sequence:
    """A text (``Tag.TEXT``, content is ``str``) or list (``Tag.LIST``, content is ``list``)."""

    __slots__ = (
        "_deleter_bounds",
        "_deletion_columns",
        "_deletions",
        "_dirty",
        "_dirty_n",
        "_fblk",
        "_fstart",
        "_blocks",
        "_by_replica",
        "_hint",
        "_runs",
        "_stamp",
        "_tree",
        "deletions_normal",
        "max_lamport",
        "oversized",
        "pending",
        "pending_deletes",
        "presence",
        "size",
        "tag",
        "total",
    )

    def __init__(self, tag: Tag) -> None:
        self.tag = tag
        self.presence: set[Dot] = set()
        self._blocks: list[Block] = [Block(0, [], [])]
        self._tree: list[int] = [0, 0]
        self.total = 0
        self.size = 0  # element ids held in items, live or dead
        # replica -> (sorted run starts, pieces of each run sorted by counter). A run never
        # split is its one item, not a list of one: most never are, and a load makes one each.
        self._by_replica: dict[str, tuple[list[int], list[Item | list[Item]]]] = {}
        # A load's runs, checked but not yet built into items (see ``_build_runs``).
        self._runs: _Runs | None = None
        self.max_lamport = 0
        self.oversized: list[Block] = []  # blocks a multi-item operation grew past BLOCK_MAX
        self.pending: list[Insert] = []
        # Ranges deleted before their elements arrived: (replica, lo, hi).
        self.pending_deletes: list[tuple[str, int, int]] = []
        # Who deleted what; only reading an index against an older version needs it.
        self._deletions: list[Segment] | None = []
        # A loaded log, checked but not yet built into segments (see ``deletions``).
        self._deletion_columns: _Columns | None = None
        # ``deletions[:deletions_normal]`` is in canonical form; what joins and
        # local deletes appended after it is not yet.
        self.deletions_normal = 0
        # Set by a load: (the deletion log as loaded, None until built; its length; each deleter
        # replica's least and greatest deleter), which answers ``deleters_seen`` while the log
        # is still that list.
        self._deleter_bounds: tuple[list[Segment] | None, int, dict[str, tuple[int, int]]] | None = None
        # The position index's shortcuts for edits that stay in one place, as typing does
        # (see ``_find`` and ``_grew``): the Fenwick tree lacks ``_dirty_n`` visible elements
        # of block ``_dirty``; block ``_fblk`` (always ``_dirty`` when set) starts at visible
        # index ``_fstart``; and ``_hint`` is ``(j, start)``, item ``j`` of that block starting
        # ``start`` into it, while ``_stamp`` (bumped by every change) is still ``_hint[2]``.
        self._dirty: Block | None = None
        self._dirty_n = 0
        self._fblk: Block | None = None
        self._fstart = 0
        self._hint: tuple[int, int, int] = (0, 0, -1)
        self._stamp = 0

    @property
    def blocks(self) -> list[Block]:
        """The items in document order, in blocks of at most ``BLOCK_MAX`` (built on first use after a load)."""
        if self._runs is not None:
            self._build_runs()
        return self._blocks

    @blocks.setter
    def blocks(self, blocks: list[Block]) -> None:
        self._blocks = blocks

    @property
    def by_replica(self) -> dict[str, tuple[list[int], list[Item | list[Item]]]]:
        """Replica -> (sorted run starts, pieces of each run sorted by counter)."""
        if self._runs is not None:
            self._build_runs()
        return self._by_replica

    @property
    def tree(self) -> list[int]:
        """The Fenwick tree over the blocks' visible lengths."""
        if self._runs is not None:
            self._build_runs()
        return self._tree

    @tree.setter
    def tree(self, tree: list[int]) -> None:
        self._tree = tree

    @property
    def deletions(self) -> list[Segment]:
        """Who deleted what: the log of segments.

        A load checks the log's columns and builds the segments only when
        something asks for them: reading a loaded document never does.
        """
        log = self._deletions
        if log is None:
            assert self._deletion_columns is not None
            log = self._deletions = _build_segments(self._deletion_columns)
            self._deletion_columns = None
            known = self._deleter_bounds
            if known is not None and known[0] is None and known[1] == len(log):
                self._deleter_bounds = (log, known[1], known[2])
        return log

    @deletions.setter
    def deletions(self, log: list[Segment]) -> None:
        self._deletions = log
        self._deletion_columns = None

    def _deletion_count(self) -> int:
        log = self._deletions
        if log is not None:
            return len(log)
        assert self._deletion_columns is not None
        return len(self._deletion_columns[1])

    # Public methods for reading.

    def __len__(self) -> int:
        return self.total

    def __eq__(self, other: object) -> bool:
        """Structural: the same elements, tombstones, presence and pending work."""
        return isinstance(other, Sequence) and self.tag == other.tag and self._canonical() == other._canonical()

    def __repr__(self) -> str:
        return f"Sequence({self.tag.label}, {self.value()!r})"

    def value(self) -> Content:
        runs = self._runs
        if runs is not None:  # loaded and not built yet: reading needs only the contents, in order
            lives = [c for c in runs[6] if c is not None]  # the contents; None: a dead run
            if self.tag is Tag.TEXT:
                return "".join(cast("list[str]", lives))
            out_: list[Any] = []
            for c in lives:
                out_ += c
            return out_
        if self.tag is Tag.TEXT:
            # A text's runs hold str (its tag says so, which the item type cannot).
            return "".join(cast("Iterator[str]", (it.content for it in self._items() if it.content is not None)))
        out: list[Any] = []
        for it in self._items():
            if it.content is not None:
                out += it.content
        return out

    def siblings(self) -> Content:
        return self.value()

    def index_of(self, dot: Dot) -> int | None:
        """The index of element ``dot`` among the visible ones, or None if it is deleted or unknown.

        O(log blocks + BLOCK_MAX): the Fenwick tree gives the visible length before its block.
        """
        found = self._lookup(dot)
        if found is None or found[0].content is None:
            return None
        item, off = found
        blk = item.block
        self._flush()
        tree = self.tree
        index = 0
        i = blk.idx
        while i > 0:
            index += tree[i]
            i -= i & -i
        j = blk.items.index(item)
        return index + sum(blk.lens[:j]) + off

    def element(self, dot: Dot) -> Any:
        """The content of visible element ``dot`` (a character or a value); call after :meth:`index_of`."""
        found = self._lookup(dot)
        assert found is not None and found[0].content is not None
        return found[0].content[found[1]]

    def has_pending(self) -> bool:
        """Inserts wait for their origin here: a join may then reveal more than its own elements."""
        return bool(self.pending)

    def visible_runs(self) -> Iterator[tuple[str, int, int, Content]]:
        """The visible elements in order, as runs ``(replica, first counter, end counter, content)``.

        A run is wholly visible or wholly deleted (a delete splits it), so
        this walks items, not elements: the live channel's patches
        (:mod:`crdtstore.patches`) diff two of these by id.
        """
        for it in self._items():
            if it.content is not None:
                yield it.replica, it.counter, it.counter + it.length, it.content

    def is_bottom(self) -> bool:
        return not self.presence and not self.size and not self.pending and not self._deletion_count()

    def visible(self) -> bool:
        return bool(self.presence) or self.total > 0

    def dots(self) -> Iterator[Dot]:
        yield from self.presence

    def copy(self) -> Sequence:
        table = ReplicaTable()
        return Sequence.from_json(self.tag, self.to_json(table), table)

    # Public methods for local operations. Each returns what its delta ships.

    def insert(self, index: int, content: Content, replica: str, counter: int) -> Insert:
        """Insert ``content`` so that it starts at visible ``index``; its ids are ``counter..``."""
        if index == 0:
            return self._insert_at(None, None, 0, 0, content, replica, counter)
        blk = self._fblk
        hint = self._hint
        if blk is not None and hint[2] == self._stamp:
            # Typing on: the element before ``index`` ends our own run, the one the last edit
            # found. Extend it here, as ``_insert_at`` would, without searching for it again.
            j = hint[0]
            item = blk.items[j]
            n = item.length
            lamport = self.max_lamport + 1
            if (
                index - self._fstart - hint[1] == n
                and item.counter + n == counter
                and item.replica == replica
                and item.lamport + n == lamport
                and n < RUN_MAX
                and item.content is not None
            ):
                k = len(content)
                run: Any = item.content  # str + str or list + list: the tag decides
                item.content = run + content
                item.length = n + k
                self.size += k
                self.max_lamport = lamport + k - 1
                blk.lens[j] += k
                # ``_grew`` without the stamp: only this item grew, so finger and hint still hold.
                blk.vis += k
                self.total += k
                self._dirty_n += k  # the finger's block is always the one ``_grew`` defers
                return (replica, counter, lamport, (replica, counter - 1), content)
        blk, j, off = self._find(index - 1)
        return self._insert_at(blk, blk.items[j], j, off, content, replica, counter)

    def insert_after(self, origin: Dot | None, content: Content, replica: str, counter: int) -> Insert:
        """Insert right after element ``origin`` (None: at the start)."""
        if origin is None:
            return self._insert_at(None, None, 0, 0, content, replica, counter)
        found = self._lookup(origin)
        assert found is not None, "local insert after an unknown element"
        item, off = found
        return self._insert_at(item.block, item, item.block.items.index(item), off, content, replica, counter)

    def _insert_at(
        self, blk: Block | None, item: Item | None, j: int, off: int, content: Content, replica: str, counter: int
    ) -> Insert:
        """Insert after element ``off`` of ``item`` (at ``blk.items[j]``), or at the start when ``item`` is None.

        This replica has seen everything here, so the new elements have the
        greatest timestamp and go right after their origin: no skipping.
        """
        lamport = self.max_lamport + 1
        n = len(content)
        self.max_lamport = lamport + n - 1
        if item is None or blk is None:
            self._place(self.blocks[0], 0, Item(replica, counter, lamport, None, n, content, self.blocks[0]))
            return (replica, counter, lamport, None, content)
        origin = (item.replica, item.counter + off)
        if off < item.length - 1:
            self._split(item, off + 1)
            blk = item.block
        elif (
            item.replica == replica
            and item.counter + item.length == counter
            and item.lamport + item.length == lamport
            and item.content is not None
            and item.length < RUN_MAX
        ):
            # Typing on at the end of our own run: extend it. ``run`` is str for a text and list for a list,
            # as ``content`` is: the tag decides, which the types cannot say (and a cast would cost a call).
            run: Any = item.content
            item.content = run + content
            item.length += n
            self.size += n
            blk.lens[j] += n
            hint = self._hint
            fresh = hint[2] == self._stamp and hint[0] == j and self._fblk is blk
            self._grew(blk, n)
            if fresh:
                # Only this item grew: the next keystroke finds it again without a search.
                self._hint = (j, hint[1], self._stamp)
            return (replica, counter, lamport, origin, content)
        if item.block is not blk:  # a block split moved it
            blk = item.block
            j = blk.items.index(item)
        self._place(blk, j + 1, Item(replica, counter, lamport, origin, n, content, blk))
        return (replica, counter, lamport, origin, content)

    def delete(self, index: int, count: int, deleter: Dot) -> list[Delete]:
        """Delete ``count`` visible elements from ``index``; returns the id ranges removed."""
        blk, j, off = self._find(index)
        if off:
            self._split(blk.items[j], off)
            j += 1
        removed: list[Delete] = []
        remaining = count
        while remaining:
            if j == len(blk.items):
                blk = self.blocks[blk.idx + 1]
                j = 0
                continue
            item = blk.items[j]
            if item.content is None:
                j += 1
                continue
            if item.length > remaining:
                self._split(item, remaining)
            self._kill(item, j)
            removed.append((item.replica, item.counter, item.counter + item.length, (deleter,)))
            remaining -= item.length
            j += 1
        self._rebalance()
        removed = _coalesce(removed)
        self._record(removed)
        return removed

    def delete_ids(self, ids: list[Dot], deleter: Dot) -> list[Delete]:
        """Delete elements by id (used when an index was read against an older version)."""
        removed = _coalesce([(replica, c, c + 1, (deleter,)) for replica, c in ids])
        for replica, lo, hi, _ in removed:
            self._delete_range(replica, lo, hi)
        self._rebalance()
        self._record(removed)
        return removed

    # Public methods for reading an index against an older version.

    def ids_at(self, seen: CausalContext, start: int, count: int) -> list[Dot] | None:
        """The ids of visible elements ``start .. start+count-1`` in the view holding only dots ``seen``.

        Also answers the origin lookup for inserts: ``ids_at(seen, i - 1, 1)``.
        Returns None when the view is shorter than ``start + count``.
        """
        recent = self._recent(seen)
        if recent is not None:
            return self._ids_skipping(recent, start, count)
        out: list[Dot] = []
        pos = 0
        for replica, lo, hi in self._visible_at(seen):
            if pos + hi - lo > start:
                first = lo + max(0, start - pos)
                last = min(hi, first + count - len(out))
                out += ((replica, c) for c in range(first, last))
                if len(out) == count:
                    return out
            pos += hi - lo
        return None

    def length_at(self, seen: CausalContext) -> int:
        pieces = self._recent_pieces(seen)
        if pieces is not None:
            return self.total - sum(hi - lo for _, lo, hi in pieces)
        return sum(hi - lo for _, lo, hi in self._visible_at(seen))

    def _recent(self, seen: CausalContext) -> list[tuple[int, int]] | None:
        """What the current view has on top of the view at ``seen``, when that is all the difference.

        Returns the visible elements ``seen`` lacks as ``(index, length)``
        intervals of the current view, sorted; or None when the shortcut
        does not apply (see :meth:`_recent_pieces`). An editor's version is
        usually a few commits old, so this is O(deletion segments + pieces x
        log n) where the walk in :meth:`_visible_at` is O(items): under 50
        concurrent typists that walk was most of a write's cost.
        """
        pieces = self._recent_pieces(seen)
        if pieces is None:
            return None
        located: list[tuple[int, int]] = []
        for replica, lo, hi in pieces:
            index = self.index_of((replica, lo))
            assert index is not None  # a visible piece
            located.append((index, hi - lo))
        located.sort()
        return located

    def _recent_pieces(self, seen: CausalContext) -> list[tuple[str, int, int]] | None:
        """The visible runs ``(replica, lo, hi)`` that ``seen`` lacks, or None where the walk must answer.

        None: a deleter ``seen`` lacks (the old view then holds elements the
        current one lost), or more pieces than the walk would cost: about one
        per 32 items (a piece is located in O(log n + BLOCK_MAX), an item
        walked costs a few comparisons).
        """
        limit = max(_RECENT_MIN, 2 * len(self.blocks))
        ranges = seen.ranges
        for dr, d0, dstep, _, _, _, n in self.deletions:
            if not _covered(ranges.get(dr), d0, d0 + (n if dstep else 1)):
                return None
        out: list[tuple[str, int, int]] = []
        for replica, (starts, groups) in self.by_replica.items():
            flat = ranges.get(replica) or []
            # The gaps of ``flat``: the ids of this replica that ``seen`` lacks.
            gap_lo = 0
            for k in range(0, len(flat) + 1, 2):
                gap_hi = flat[k] if k < len(flat) else _KEY
                if gap_lo < gap_hi and not _pieces(starts, groups, gap_lo, gap_hi, out, limit):
                    return None
                if k + 1 < len(flat):
                    gap_lo = flat[k + 1]
        return out

    def _ids_skipping(self, recent: list[tuple[int, int]], start: int, count: int) -> list[Dot] | None:
        """:meth:`ids_at` through the current view, skipping the ``recent`` intervals the old view lacks."""
        if count <= 0:  # as the walk answers it: [] inside the view, None past its end
            return [] if start < self.total - sum(n for _, n in recent) else None
        cur = start
        k = 0
        out: list[Dot] = []
        while True:
            # Old index ``start + len(out)`` is current index ``cur`` once the new pieces before it are skipped.
            while k < len(recent) and recent[k][0] <= cur:
                cur += recent[k][1]
                k += 1
            if len(out) == count:
                return out
            end = recent[k][0] if k < len(recent) else self.total
            take = min(count - len(out), end - cur)
            if take <= 0:
                return None  # past the end of the old view
            out += self._ids_from(cur, take)
            cur += take

    def _ids_from(self, index: int, count: int) -> list[Dot]:
        """The ids of visible elements ``index .. index+count-1`` of the current view (all exist)."""
        blk, j, off = self._find(index)
        out: list[Dot] = []
        b = blk.idx
        while True:
            items = self.blocks[b].items
            while j < len(items):
                it = items[j]
                if it.content is not None:
                    last = min(it.length, off + count - len(out))
                    out += ((it.replica, c) for c in range(it.counter + off, it.counter + last))
                    if len(out) == count:
                        return out
                off = 0
                j += 1
            b += 1
            j = 0

    def _visible_at(self, seen: CausalContext) -> Iterator[tuple[str, int, int]]:
        """The runs ``(replica, lo, hi)`` visible in the view holding only dots ``seen``, in order.

        O(items + deletion segments), never per element: a view is what
        ``seen`` inserted minus what a deleter in ``seen`` deleted, and both
        are ranges (a chain's targets step by one, so they are a range too).
        """
        deleted: dict[str, list[int]] = {}
        for dr, d0, dstep, tr, t0, tstep, n in self.deletions:
            flat = seen.ranges.get(dr)
            if flat is None:
                continue
            for lo, hi in _intersect(flat, d0, d0 + (n if dstep else 1)):
                if dstep == 0:
                    a, b = t0, t0 + n
                elif tstep == 1:
                    a, b = t0 + lo - d0, t0 + hi - d0
                else:
                    a, b = t0 - (hi - 1 - d0), t0 - (lo - d0) + 1
                ranges_add(deleted.setdefault(tr, []), a, b)
        ranges = seen.ranges
        # A replica's seen dots are mostly one range (a compact vector): an item wholly inside it, with
        # nothing of the replica deleted, is yielded as it is, without the generic intersection.
        whole = {r: (f[0], f[1]) for r, f in ranges.items() if len(f) == 2 and r not in deleted}
        for blk in self.blocks:
            for it in blk.items:
                replica = it.replica
                lo, hi = it.counter, it.counter + it.length
                bounds = whole.get(replica)
                if bounds is not None and bounds[0] <= lo and hi <= bounds[1]:
                    yield (replica, lo, hi)
                    continue
                flat = ranges.get(replica)
                if flat is None:
                    continue
                gone = deleted.get(replica)
                for a, b in _intersect(flat, lo, hi):
                    if gone is None:
                        yield (replica, a, b)
                    else:
                        yield from ((replica, x, y) for x, y in _subtract(gone, a, b))

    # Public methods for joining.

    def join(self, other: Any, ours: CausalContext, theirs: CausalContext, full: bool) -> None:
        if isinstance(other, SeqDelta):
            self.join_delta(other, ours, theirs)
        else:
            self.merge(other, ours, theirs)

    def join_delta(self, delta: SeqDelta, ours: CausalContext, theirs: CausalContext) -> None:
        # Most deltas are one keystroke: each step below is skipped when it has nothing to do.
        presence = self.presence
        if delta.presence or any(d in theirs for d in presence):
            self.presence = join_dotset(presence, delta.presence, ours, theirs)
        for ins in delta.inserts:
            self._integrate(ins)
        if delta.deletes:
            for replica, lo, hi, _ in delta.deletes:
                self._delete_range(replica, lo, hi)
            self._record(delta.deletes, ours)
        if self.pending or self.pending_deletes:
            self._retry_pending()
        if self.oversized:
            self._rebalance()

    def merge(self, other: Sequence, ours: CausalContext, theirs: CausalContext) -> None:
        """Full-state join. Other's items come in document order, so every origin precedes its element."""
        self.presence = join_dotset(self.presence, other.presence, ours, theirs)
        for it in list(other._items()):
            self._integrate((it.replica, it.counter, it.lamport, it.origin, it.content or it.length))
        for ins in other.pending:
            self._integrate(ins)
        for d in other.pending_deletes:
            self._delete_range(*d)
        added = _unseen(other.deletions, ours)
        if added:
            self.deletions += added
        self._retry_pending()
        self._rebalance()

    def check_join(self, other: SeqDelta | Sequence) -> None:
        """Raise ``DecodeError`` if joining ``other`` would hold more than ``MAX_ELEMENTS`` ids.

        Called before any change, so that a peer's claims (a few bytes can
        claim a dead run of millions) can never make a document that no
        longer decodes: the join is refused instead, and nothing changed.
        """
        held = self.size + (sum(_insert_length(ins) for ins in self.pending) if self.pending else 0)
        if isinstance(other, SeqDelta):
            claims = other.inserts
            if len(claims) == 1 and held + _insert_length(claims[0]) <= MAX_ELEMENTS:
                return  # the usual delta: one insert, far below the bound
        else:
            claims = [(it.replica, it.counter, 0, None, it.length) for it in other._items()] + other.pending
        if held + sum(_insert_length(ins) for ins in claims) <= MAX_ELEMENTS:
            return
        # Only the ids not held yet count: a join adds no others.
        for ins in claims:
            replica, counter, n = ins[0], ins[1], _insert_length(ins)
            end = counter + n
            while counter < end:
                found = self._lookup((replica, counter))
                if found is not None:
                    counter += found[0].length - found[1]
                else:
                    step = min(end - counter, self._unknown_extent(replica, counter))
                    held += step
                    counter += step
            if held > MAX_ELEMENTS:
                raise DecodeError(f"{self.tag.label}: the join would hold more than {MAX_ELEMENTS} elements")

    def deleters_seen(self, ctx: CausalContext) -> bool:
        """Whether ``ctx`` holds every deleter of the log (true of every state legal writes make)."""
        ranges = ctx.ranges
        known = self._deleter_bounds
        if known is not None and known[0] is self._deletions and known[1] == self._deletion_count():
            # Right after a load: one range of ``ctx`` holding each replica's least and greatest
            # deleter holds every deleter of that replica.
            for dr, (lo, last) in known[2].items():
                flat = ranges.get(dr)
                if flat is None:
                    return False
                i = bisect_right(flat, lo)
                if not i & 1 or flat[i] <= last:
                    break
            else:
                return True
        for dr, d0, dstep, _, _, _, n in self.deletions:
            flat = ranges.get(dr)
            if flat is None:
                return False
            i = bisect_right(flat, d0)
            if not i & 1 or flat[i] < d0 + dstep * (n - 1) + 1:
                return False
        return True

    def removal(self, ctx: CausalContext, deleter: Callable[[], Dot]) -> SeqDelta:
        """The delta that removes this value from its map: presence and every live element."""
        ctx.add_all(self.presence)
        delta = SeqDelta(self.tag)
        if self.total:
            d = deleter()
            for it in self._items():
                if it.content is not None:
                    delta.deletes.append((it.replica, it.counter, it.counter + it.length, (d,)))
            delta.deletes = _coalesce(delta.deletes)
        return delta

    # Encoding.

    def _canonical(self) -> list[Any]:
        table = ReplicaTable()
        return [table.names, self.to_json(table)]

    def to_json(self, table: ReplicaTable) -> list[Any]:
        """``[presence, runs, deletions, pending, pending_deletes]``.

        Runs come in document order, merged wherever they can be, as a flat
        list of five values each: replica, counter minus the previous run's
        end, (lamport - counter) minus the previous run's, origin (see
        ``_origin_ref``), and content (a dead run: its length). Deletion
        segments are normalized, then flat too, each number relative to the
        previous segment's. Relative numbers stay short however long the
        history, which keeps a document near the size of its text.
        """
        runs: list[Any] = []
        merged = self._merged_runs()
        prev_end = 0
        prev_dl = 0
        for replica, counter, lamport, origin, content in merged:
            n = content if type(content) is int else len(content)
            dl = lamport - counter
            runs += (
                table.ref(replica),
                counter - prev_end,
                dl - prev_dl,
                _origin_ref(replica, counter, origin, table),
                content,
            )
            prev_end = counter + n
            prev_dl = dl
        deletions: list[int] = []
        prev_d = prev_t = 0
        if self.deletions_normal < len(self.deletions):
            # Normalizing costs O(deletions log deletions): keep the result.
            self.deletions = _normalize_tail(self.deletions, self.deletions_normal)
            self.deletions_normal = len(self.deletions)
        for dr, d0, dstep, tr, t0, tstep, n in self.deletions:
            deletions += (table.ref(dr), d0 - prev_d, table.ref(tr), t0 - prev_t, n, _STEP_CODES[(dstep, tstep)])
            prev_d, prev_t = d0, t0
        return [
            encode_dots(self.presence, table),
            runs,
            deletions,
            [_encode_insert(ins, table) for ins in sorted(self.pending, key=_insert_order)],
            [[table.ref(r), lo, hi] for r, lo, hi in _coalesce_ranges(self.pending_deletes)],
        ]

    def _merged_runs(self) -> list[list[Any]]:
        """Items in document order with neighbours merged where one run could hold both."""
        out: list[list[Any]] = []
        prev: list[Any] | None = None
        end: tuple[str, int, int] | None = None  # (replica, next counter, next lamport) of prev
        for it in self._items():
            dead = it.content is None
            if (
                prev is not None
                and end == (it.replica, it.counter, it.lamport)
                and it.origin == (it.replica, it.counter - 1)
                and dead == (type(prev[4]) is int)
            ):
                prev[4] = prev[4] + (it.length if dead else it.content)
            else:
                prev = [it.replica, it.counter, it.lamport, it.origin, it.length if dead else it.content]
                out.append(prev)
            end = (it.replica, it.counter + it.length, it.lamport + it.length)
        return out

    @classmethod
    def from_json(cls, tag: Tag, data: Any, table: ReplicaTable) -> Sequence:
        if not isinstance(data, list) or len(data) != 5 or not all(isinstance(x, list) for x in data[1:]):
            raise DecodeError(f"{tag.label}: bad body")
        seq = cls(tag)
        seq.presence = set(decode_dots(data[0], table))
        runs = data[1]
        if len(runs) % 5:
            raise DecodeError(f"{tag.label}: bad runs")
        elements = seq._load_runs(runs, table) if runs else 0
        columns, shared, bounds = _check_segments(data[2], table)
        seq._deletions = None
        seq._deletion_columns = columns
        if bounds is not None:
            seq._deleter_bounds = (None, len(columns[1]), bounds)
        if shared is None:
            segs = sorted(seq.deletions)
            shared = _shared_count(_shared_deleters(segs)) if _sharing(segs) else 0
        if shared > seq._deletion_count() + 1024:
            # Normalizing cuts chains into pairs where they share deleters: legal
            # logs share a few; claims of millions must not cost millions.
            raise DecodeError(f"{tag.label}: deletion runs share too many deleters")
        seq.deletions_normal = 0  # untrusted input: normalize before writing it out again
        seq.pending = [_decode_insert(tag, x, table) for x in data[3]]
        for x in data[4]:
            if not isinstance(x, list) or len(x) != 3:
                raise DecodeError(f"{tag.label}: bad pending delete")
            replica, lo = decode_dot(x[0], x[1], table)
            if type(x[2]) is not int or x[2] <= lo:
                raise DecodeError(f"{tag.label}: bad pending delete range")
            seq.pending_deletes.append((replica, lo, x[2]))
        if elements + sum(_insert_length(ins) for ins in seq.pending) > MAX_ELEMENTS:
            raise DecodeError(f"{tag.label}: more than {MAX_ELEMENTS} elements")
        if seq._runs is None:
            seq._rebuild()
        return seq

    def _load_runs(self, runs: list[Any], table: ReplicaTable) -> int:
        """Build the items of a decoded state from its flat runs; returns the element count.

        Loading is a large share of a node's work (every read of a stored
        document), so the checks run column by column in C where they can:
        the numbers' types and ranges, the counters and timestamps (prefix
        sums), no two runs sharing an id and every origin placed before its
        element (one sort, one pass). The columns go through ``map`` with C
        functions rather than comprehensions, which run bytecode per run.
        """
        tag = self.tag
        label = tag.label
        refs, dcs, ddls, rels, contents = runs[0::5], runs[1::5], runs[2::5], runs[3::5], runs[4::5]
        m = len(refs)
        names = table.names
        if not set().union(map(type, refs), map(type, dcs), map(type, ddls)) <= {int}:
            raise DecodeError(f"{label}: bad run numbers")
        rmin = min(refs)
        rmax = max(refs)
        if rmin < 0 or rmax >= len(names):
            raise DecodeError(f"{label}: unknown replica reference")
        kinds = set(map(type, contents))
        if not kinds <= ({str, int} if tag is Tag.TEXT else {list, int}):
            raise DecodeError(f"{label}: bad content")
        ns = [c if type(c) is int else len(c) for c in contents]
        if min(ns) < 1 or max(ns) > MAX_ELEMENTS:
            raise DecodeError(f"{label}: bad run length")
        elements = sum(ns)
        if elements > MAX_ELEMENTS:
            raise DecodeError(f"{label}: more than {MAX_ELEMENTS} elements")
        ends = list(accumulate(map(add, dcs, ns)))
        counters = list(map(sub, ends, ns))
        lamports = list(map(add, counters, accumulate(ddls)))
        if min(counters) < 1 or min(lamports) < 1:
            raise DecodeError(f"{label}: bad run counters")
        if max(ends) >= _KEY:
            raise DecodeError(f"{label}: bad run counters")
        # Every run sorted by id, one integer key per run: replica index * _KEY + counter. A
        # sequence one replica wrote (every local write of a region is its replica's) keys on the
        # counter alone, which keeps the keys small ints, quicker to sort and search.
        single = rmin == rmax
        if single:
            replicas = [names[rmin]] * m
            bases: list[int] = []
            starts = counters
            kends = ends
        else:
            replicas = list(map(names.__getitem__, refs))
            bases = [r * _KEY for r in refs]
            starts = list(map(add, bases, counters))
            kends = list(map(add, bases, ends))
        order = sorted(range(m), key=starts.__getitem__)
        s_starts = list(map(starts.__getitem__, order))
        s_ends = list(map(kends.__getitem__, order))
        if any(map(lt, s_starts[1:], s_ends)):
            raise DecodeError(f"{label}: duplicate element ids")
        # Origins in the run's own replica stay counters (None: the start) until the items are
        # built: a tuple each would cost a read that never needs them.
        origins: list[Dot | None] | None = None
        origin_counters: list[int | None] | None = None
        if set(map(type, rels)) <= {int, type(None)}:  # origins in the same replica, or the start
            at = list(range(m))
            starts_at: list[int] = []
            k = -1
            for _ in range(rels.count(None)):
                k = rels.index(None, k + 1)
                starts_at.append(k)
                rels[k] = 0  # placeholders, dropped below
            ocs = list(map(sub, counters, rels))
            origin_counters = list(ocs)
            keys = list(ocs) if single else list(map(add, bases, ocs))
            for k in reversed(starts_at):
                origin_counters[k] = None
                ocs[k] = 1
                del keys[k], at[k]
            if min(ocs) < 1:
                raise DecodeError(f"{label}: bad origin")
        else:
            at, keys, origins = [], [], [None] * m
            for k, rel in enumerate(rels):
                if rel is None:
                    continue
                if type(rel) is int:
                    oref, oc = refs[k], counters[k] - rel
                elif isinstance(rel, list) and len(rel) == 2 and type(rel[0]) is int and type(rel[1]) is int:
                    oref, oc = rel
                    if not 0 <= oref < len(names):
                        raise DecodeError(f"{label}: unknown replica reference")
                else:
                    raise DecodeError(f"{label}: bad origin")
                if not 1 <= oc < _KEY:
                    raise DecodeError(f"{label}: bad origin")
                if single and oref != rmin:
                    # An origin in a replica that holds no run here: never placed before its element.
                    raise DecodeError(f"{label}: an element precedes its origin")
                at.append(k)
                keys.append(oc if single else oref * _KEY + oc)
                origins[k] = (names[oref], oc)
        if keys:
            # An origin is nearly always the last element of a run (what is typed after it splits
            # the run there), so one dict lookup by run end finds the run holding it; the rest
            # search the runs sorted by id. Either way the origin's run must come first.
            ends_at = dict(zip(kends, range(m), strict=True))
            holders = list(map(ends_at.get, map(add, keys, repeat(1))))
            if None in holders:
                misses = [k for k, h in enumerate(holders) if h is None]
                mkeys = list(map(keys.__getitem__, misses))
                # The run holding each is the last one starting at or before it; index 0 of
                # the shifted columns stands for "none", which fails both checks.
                js = list(map(bisect_right, repeat(s_starts), mkeys))
                if any(map(ge, mkeys, map([-1, *s_ends].__getitem__, js))):
                    raise DecodeError(f"{label}: an element precedes its origin")
                for k, j in zip(misses, js, strict=True):
                    holders[k] = order[j - 1]
            if any(map(ge, cast("list[int]", holders), at)):  # every miss was filled in above
                raise DecodeError(f"{label}: an element precedes its origin")
        lives = [None if type(c) is int else c for c in contents]
        lens = list(map(mul, ns, map(truth, lives)))  # visible lengths: 0 for a dead run
        self.max_lamport = max(map(add, lamports, ns)) - 1
        self.total = sum(lens)
        # Items, blocks and the id index wait for their first use: a read needs none of them.
        columns = (replicas, counters, lamports, origins, origin_counters, ns, lives, lens, refs, order, s_starts)
        self._runs = (*columns, names)
        self.size = elements
        return elements

    def _build_runs(self) -> None:
        """Build the items, blocks, id index and Fenwick tree of the runs a load checked (``_load_runs``)."""
        runs = self._runs
        assert runs is not None
        self._runs = None
        replicas, counters, lamports, origins, origin_counters, ns, lives, lens, refs, order, s_starts, names = runs
        if origins is None:
            assert origin_counters is not None
            origins = [None if oc is None else (r, oc) for r, oc in zip(replicas, origin_counters, strict=True)]
        m = len(counters)
        # Items in blocks half full, so that local edits split few of them at first.
        step = BLOCK_MAX // 2
        blocks: list[Block] = []
        items: list[Item] = []
        for lo in range(0, m, step):
            hi = lo + step
            blk = Block(len(blocks), [], lens[lo:hi])
            chunk = list(
                map(
                    Item,
                    replicas[lo:hi],
                    counters[lo:hi],
                    lamports[lo:hi],
                    origins[lo:hi],
                    ns[lo:hi],
                    lives[lo:hi],
                    repeat(blk),
                )
            )
            blk.items = chunk
            blocks.append(blk)
            items += chunk
        self._blocks = blocks
        single = refs[order[0]] == refs[order[-1]]
        lo = 0
        while lo < m:
            ref = refs[order[lo]]
            hi = m if single else bisect_left(s_starts, (ref + 1) * _KEY, lo)
            ks = order[lo:hi]
            self._by_replica[names[ref]] = (list(map(counters.__getitem__, ks)), list(map(items.__getitem__, ks)))
            lo = hi
        self._rebuild()

    # Private methods: the position index.

    def _items(self) -> Iterator[Item]:
        for blk in self.blocks:
            yield from blk.items

    def _rebuild(self) -> None:
        """Renumber blocks and rebuild the Fenwick tree: O(blocks), once per block split."""
        self._dirty = self._fblk = None
        self._dirty_n = 0
        self._stamp += 1
        blocks = self.blocks
        nb = len(blocks)
        tree = [0] * (nb + 1)
        for i, b in enumerate(blocks):
            b.idx = i
            tree[i + 1] += b.vis
            parent = (i + 1) + ((i + 1) & -(i + 1))
            if parent <= nb:
                tree[parent] += tree[i + 1]
        self.tree = tree
        self.total = sum(b.vis for b in blocks)

    def _grew(self, blk: Block, n: int) -> None:
        """Block ``blk`` holds ``n`` more visible elements (fewer when negative).

        The Fenwick tree's update waits while the edits stay in one block, as
        typing's do: ``_flush`` makes it before anything reads the tree.
        """
        blk.vis += n
        self.total += n
        self._stamp += 1
        if blk is not self._dirty:
            if self._dirty_n:
                self._flush()
            self._dirty = blk
            self._fblk = None  # a block before it may have changed
        self._dirty_n += n

    def _flush(self) -> None:
        """Bring the Fenwick tree up to date with the block that ``_grew`` left pending."""
        n = self._dirty_n
        if n:
            assert self._dirty is not None
            tree = self.tree
            size = len(tree)
            i = self._dirty.idx + 1
            while i < size:
                tree[i] += n
                i += i & -i
            self._dirty_n = 0

    def _find(self, index: int) -> tuple[Block, int, int]:
        """The block, item position and offset of visible element ``index`` (0 <= index < len).

        Edits cluster, so the block (and item) the last search found is tried first.
        """
        blk = self._fblk
        if blk is not None:
            rem = index - self._fstart
            if 0 <= rem < blk.vis:
                hint = self._hint
                if hint[2] == self._stamp:
                    off = rem - hint[1]
                    if 0 <= off < blk.lens[hint[0]]:
                        return blk, hint[0], off
                return self._find_in(blk, rem)
        self._flush()
        tree = self.tree
        nb = len(tree) - 1
        pos = 0
        rem = index
        step = 1 << (nb.bit_length() - 1) if nb else 0
        while step:
            nxt = pos + step
            if nxt <= nb and tree[nxt] <= rem:
                pos = nxt
                rem -= tree[nxt]
            step >>= 1
        blk = self.blocks[pos]
        # The tree is up to date, so nothing is pending for whichever block is ``_dirty``.
        self._dirty = self._fblk = blk
        self._fstart = index - rem
        return self._find_in(blk, rem)

    def _find_in(self, blk: Block, rem: int) -> tuple[Block, int, int]:
        """The item position and offset of visible element ``rem`` of block ``blk`` (the finger's)."""
        cum = list(accumulate(blk.lens))
        j = bisect_right(cum, rem)
        start = cum[j - 1] if j else 0
        self._hint = (j, start, self._stamp)
        return blk, j, rem - start

    def _place(self, blk: Block, j: int, item: Item) -> None:
        self._stamp += 1
        self.size += item.length
        item.block = blk
        blk.items.insert(j, item)
        n = item.length if item.content is not None else 0
        blk.lens.insert(j, n)
        self._register(item)
        if n:
            self._grew(blk, n)
        if len(blk.items) > BLOCK_MAX:
            self._split_block(blk)

    def _split_block(self, blk: Block) -> None:
        half = len(blk.items) // 2
        new = Block(blk.idx + 1, blk.items[half:], blk.lens[half:])
        del blk.items[half:]
        del blk.lens[half:]
        blk.vis -= new.vis
        for it in new.items:
            it.block = new
        self.blocks.insert(blk.idx + 1, new)
        self._rebuild()

    def _rebalance(self) -> None:
        """Split the blocks that a multi-item operation grew past the limit."""
        while self.oversized:
            blk = self.oversized.pop()
            if len(blk.items) > BLOCK_MAX:
                self._split_block(blk)
                self.oversized += (b for b in self.blocks[blk.idx : blk.idx + 2] if len(b.items) > BLOCK_MAX)

    # Private methods: ids.

    def _register(self, item: Item) -> None:
        entry = self.by_replica.get(item.replica)
        if entry is None:
            self.by_replica[item.replica] = ([item.counter], [item])
            return
        starts, groups = entry
        if item.counter > starts[-1]:
            starts.append(item.counter)
            groups.append(item)
        else:
            k = bisect_right(starts, item.counter)
            starts.insert(k, item.counter)
            groups.insert(k, item)

    def _lookup(self, dot: Dot) -> tuple[Item, int] | None:
        entry = self.by_replica.get(dot[0])
        if entry is None:
            return None
        starts, groups = entry
        c = dot[1]
        k = bisect_right(starts, c) - 1
        if k < 0:
            return None
        group = groups[k]
        item = group if isinstance(group, Item) else group[bisect_right(group, c, key=_counter) - 1]
        off = c - item.counter
        return (item, off) if off < item.length else None

    def _lookup_any(self, replica: str, lo: int, hi: int) -> bool:
        entry = self.by_replica.get(replica)
        if entry is None:
            return False
        starts, groups = entry
        k = bisect_right(starts, hi - 1) - 1
        if k < 0:
            return False
        group = groups[k]
        last = group if isinstance(group, Item) else group[-1]
        return last.counter + last.length > lo

    def _split(self, item: Item, off: int) -> Item:
        """Cut ``item`` before offset ``off``; returns the right piece, placed after it."""
        self._stamp += 1
        blk = item.block
        j = blk.items.index(item)
        content = item.content
        right = Item(
            item.replica,
            item.counter + off,
            item.lamport + off,
            (item.replica, item.counter + off - 1),
            item.length - off,
            content[off:] if content is not None else None,
            blk,
        )
        item.length = off
        if content is not None:
            item.content = content[:off]
            blk.lens[j] = off
            blk.items.insert(j + 1, right)
            blk.lens.insert(j + 1, right.length)
        else:
            blk.items.insert(j + 1, right)
            blk.lens.insert(j + 1, 0)
        if len(blk.items) > BLOCK_MAX:
            self.oversized.append(blk)
        starts, groups = self.by_replica[item.replica]
        k = bisect_right(starts, item.counter) - 1
        group = groups[k]
        if isinstance(group, Item):
            groups[k] = [group, right]
        else:
            group.insert(bisect_right(group, item.counter, key=_counter), right)
        return right

    def _kill(self, item: Item, j: int) -> None:
        if item.content is not None:
            blk = item.block
            item.content = None
            n = blk.lens[j]
            blk.lens[j] = 0
            self._grew(blk, -n)

    def _record(self, deletes: list[Delete], seen: CausalContext | None = None) -> None:
        """Log who deleted what; deleters in ``seen`` are logged already (a deleter's deletes travel whole)."""
        for replica, lo, hi, deleters in deletes:
            for dot in deleters:
                if seen is None or dot not in seen:
                    self.deletions.append((dot[0], dot[1], 0, replica, lo, 1, hi - lo))

    # Private methods: integrating remote work.

    def _integrate(self, ins: Insert) -> None:
        replica, counter, lamport, origin, content = ins
        # ``live`` is the content still to place, None for a dead run (which ships its length instead).
        live: Content | None
        if isinstance(content, int):
            live, length = None, content
        else:
            live, length = content, len(content)
        while length > 0:
            found = self._lookup((replica, counter))
            if found is not None:
                item, off = found
                n = min(length, item.length - off)
                if live is None:
                    self._delete_range(replica, counter, counter + n)
            else:
                n = min(length, self._unknown_extent(replica, counter))
                # A dead run ships its length: the n ids left, not the length it arrived with.
                piece: Content | int = n if live is None else (live if n == length else live[:n])
                at = None if origin is None else self._lookup(origin)
                if origin is not None and at is None:
                    self.pending.append((replica, counter, lamport, origin, piece))
                else:
                    self._integrate_new(replica, counter, lamport, origin, piece, at)
            if n == length:
                return
            if live is not None:
                live = live[n:]
            origin = (replica, counter + n - 1)
            counter += n
            lamport += n
            length -= n

    def _unknown_extent(self, replica: str, counter: int) -> int:
        entry = self.by_replica.get(replica)
        if entry is None:
            return 1 << 62
        starts = entry[0]
        k = bisect_right(starts, counter)
        return starts[k] - counter if k < len(starts) else 1 << 62

    def _integrate_new(
        self,
        replica: str,
        counter: int,
        lamport: int,
        origin: Dot | None,
        content: Content | int,
        found: tuple[Item, int] | None = None,
    ) -> None:
        """Place new elements after ``origin``; ``found`` is the origin's lookup when the caller has it."""
        # The content to place, None for a dead run (``content`` is then its length).
        run: Content | None
        if isinstance(content, int):
            run, n = None, content
        else:
            run, n = content, len(content)
        live = run is not None
        prev: Item | None = None
        if origin is None:
            blk, j = self.blocks[0], 0
        else:
            if found is None:
                found = self._lookup(origin)
            assert found is not None
            prev, off = found
            if off < prev.length - 1:
                self._split(prev, off + 1)
            blk = prev.block
            j = blk.items.index(prev) + 1
        start_blk, start_j = blk, j
        # Skip every element with a greater timestamp: later siblings and their subtrees.
        while True:
            if j == len(blk.items):
                if blk.idx + 1 == len(self.blocks):
                    break
                blk = self.blocks[blk.idx + 1]
                j = 0
                continue
            y = blk.items[j]
            if y.lamport > lamport or (y.lamport == lamport and y.replica > replica):
                j += 1
            else:
                break
        if lamport + n - 1 > self.max_lamport:
            self.max_lamport = lamport + n - 1
        if (
            prev is not None
            and blk is start_blk
            and j == start_j
            and prev.replica == replica
            and prev.counter + prev.length == counter
            and prev.lamport + prev.length == lamport
            and (prev.content is not None) == live
            and prev.length < RUN_MAX
        ):
            # It continues the run it was typed after, right where that run ends: extend the run,
            # as the replica that typed it did, rather than keep an item a keystroke.
            prev.length += n
            self.size += n
            if live:
                # str + str for a text, list + list for a list: the tag decides, which the types cannot say.
                ext: Any = prev.content
                prev.content = ext + run
                blk.lens[j - 1] += n
                self._grew(blk, n)
            return
        item = Item(replica, counter, lamport, origin, n, run, blk)
        self._place(blk, j, item)

    def _delete_range(self, replica: str, lo: int, hi: int) -> None:
        """Mark elements dead; those not here yet wait in ``pending_deletes``."""
        c = lo
        while c < hi:
            found = self._lookup((replica, c))
            if found is None:
                n = min(hi - c, self._unknown_extent(replica, c))
                self.pending_deletes.append((replica, c, c + n))
                c += n
                continue
            item, off = found
            if item.content is None:
                c += item.length - off
                continue
            if off:
                item = self._split(item, off)
            if item.length > hi - c:
                self._split(item, hi - c)
            self._kill(item, item.block.items.index(item))
            c += item.length

    def _retry_pending(self) -> None:
        while self.pending or self.pending_deletes:
            before = (sorted(self.pending, key=_insert_order), _coalesce_ranges(self.pending_deletes))
            self.pending, self.pending_deletes = [], []
            for ins in before[0]:
                self._integrate(ins)
            for d in before[1]:
                self._delete_range(*d)
            self.pending.sort(key=_insert_order)
            self.pending_deletes = _coalesce_ranges(self.pending_deletes)
            if (self.pending, self.pending_deletes) == before:
                return


_STEP_CODES = {(0, 1): 0, (1, -1): 1, (1, 1): 2}
_DSTEP = (0, 1, 1)  # by code
_TSTEP = (1, -1, 1)


def _intersect(flat: list[int], lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The parts of ``[lo, hi)`` inside the sorted ranges ``flat``."""
    i = bisect_right(flat, lo)
    if i & 1:
        i -= 1
    while i < len(flat) and flat[i] < hi:
        a, b = max(flat[i], lo), min(flat[i + 1], hi)
        if a < b:
            yield (a, b)
        i += 2


def _covered(flat: list[int] | None, lo: int, hi: int) -> bool:
    """Whether the sorted ranges ``flat`` hold all of ``[lo, hi)``."""
    if not flat:
        return False
    i = bisect_right(flat, lo)
    return bool(i & 1) and hi <= flat[i]


def _pieces(
    starts: list[int], groups: list[Item | list[Item]], lo: int, hi: int, out: list[tuple[str, int, int]], limit: int
) -> bool:
    """Add to ``out`` the visible parts of one replica's items inside ids ``[lo, hi)``; False past ``limit``."""
    k = max(0, bisect_right(starts, lo) - 1)
    while k < len(starts) and starts[k] < hi:
        group = groups[k]
        for it in (group,) if isinstance(group, Item) else group:  # a run never split is kept as its item
            a, b = max(lo, it.counter), min(hi, it.counter + it.length)
            if a < b and it.content is not None:
                out.append((it.replica, a, b))
                if len(out) > limit:
                    return False
        k += 1
    return True


def _subtract(flat: list[int], lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The parts of ``[lo, hi)`` outside the sorted ranges ``flat``."""
    for a, b in _intersect(flat, lo, hi):
        if lo < a:
            yield (lo, a)
        lo = b
    if lo < hi:
        yield (lo, hi)


def _insert_length(ins: Insert) -> int:
    content = ins[4]
    return content if isinstance(content, int) else len(content)


def _insert_order(ins: Insert) -> tuple[int, str, int]:
    return (ins[2], ins[0], ins[1])


def _coalesce(deletes: list[Delete]) -> list[Delete]:
    """Sort deletes and merge adjacent ranges with the same deleters (one canonical form)."""
    out: list[Delete] = []
    for d in sorted(deletes):
        if out and out[-1][0] == d[0] and out[-1][3] == d[3] and out[-1][2] >= d[1]:
            last = out[-1]
            out[-1] = (last[0], last[1], max(last[2], d[2]), last[3])
        else:
            out.append(d)
    return out


def _coalesce_ranges(ranges: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for r, lo, hi in sorted(ranges):
        if out and out[-1][0] == r and out[-1][2] >= lo:
            out[-1] = (r, out[-1][1], max(out[-1][2], hi))
        else:
            out.append((r, lo, hi))
    return out


def _normalize(segments: list[Segment]) -> list[Segment]:
    """The canonical segments of a set of (deleter, target) pairs, in O(S log S) for S segments.

    The canonical form is defined per deleter dot: its targets as maximal
    ranges (one ``dstep 0`` segment each, sorted). A deleter whose only target
    is one element is *simple*; consecutive simple deleters of one replica
    whose targets step by +1 or -1 in one target replica chain into one
    segment (a run of backspaces or of forward deletes), greedily from the
    left. This depends only on the pairs, and it never expands a run: a
    deleter dot names one op, whose deletes travel whole, so two sources that
    both know a deleter know the same targets for it (``_unseen`` drops the
    ones a join already has), and segments overlap only in range segments of
    one deleter, which merge as ranges. Overlapping chains cannot come from
    legal writes but in a few shared deleters (decoding refuses more); chains
    are cut into pairs there, and only there.
    """
    segs = sorted(set(segments))
    shared = _shared_deleters(segs) if _sharing(segs) else None
    if shared:
        segs = sorted(set(_split_shared(segs, shared)))
    out: list[list[Any]] = []
    # Merge overlapping or touching ranges of one deleter and target replica.
    for s in segs:
        if s[2] == 0 and out:
            last = out[-1]
            if last[2] == 0 and last[0] == s[0] and last[1] == s[1] and last[3] == s[3] and last[4] + last[6] >= s[4]:
                last[6] = max(last[4] + last[6], s[4] + s[6]) - last[4]
                continue
        out.append(list(s))
    return _chain(out)


def _normalize_tail(segments: list[Segment], k: int) -> list[Segment]:
    """``_normalize(segments)`` where ``segments[:k]`` is canonical already: O(new + log S) in the usual case.

    New deletes nearly always have a deleter newer than every logged one of
    its replica (a replica's ops count up, and arrive in order), so they sort
    at the end of that replica's group, after everything a greedy left-to-
    right pass has already decided: only the group's last segment (and the
    other targets of its deleter) can change, and only those are redone.
    Anything else falls back to the full pass.
    """
    fresh = segments[k:]
    if not k or len(fresh) > k:
        return _normalize(segments)
    out = segments[:k]
    groups: dict[str, list[Segment]] = {}
    for s in fresh:
        groups.setdefault(s[0], []).append(s)
    # From the last group back, so that earlier indexes stay valid.
    for dr in sorted(groups, reverse=True):
        new = groups[dr]
        lo = bisect_left(out, (dr,))
        hi = bisect_left(out, (dr, math.inf))
        start = hi
        if hi > lo:
            last = out[hi - 1]
            if min(s[1] for s in new) <= last[1] + last[2] * (last[6] - 1):
                return _normalize(segments)  # an older deleter: not at the end
            start = hi - 1
            while start > lo and last[2] == 0 and out[start - 1][1] == last[1] and out[start - 1][2] == 0:
                start -= 1
        out[start:hi] = _normalize(out[start:hi] + new)
    return out


def _chain(atoms: list[list[Any]]) -> list[Segment]:
    """Chain the simple deleters of sorted, merged atoms (see ``_normalize``)."""
    out: list[Segment | list[Any]] = []
    cur: list[Any] | None = None  # the open chain: the last segment written, while it may grow
    n_atoms = len(atoms)
    for i, (dr, d0, dstep, tr, t0, tstep, n) in enumerate(atoms):
        if dstep == 0:
            simple = (
                n == 1
                and not (i and atoms[i - 1][2] == 0 and atoms[i - 1][0] == dr and atoms[i - 1][1] == d0)
                and not (i + 1 < n_atoms and atoms[i + 1][2] == 0 and atoms[i + 1][0] == dr and atoms[i + 1][1] == d0)
            )
            if not simple:
                out.append((dr, d0, 0, tr, t0, 1, n))
                cur = None
                continue
        # A simple pair (d0, t0), possibly the head of a chain of n pairs with steps (1, tstep).
        if cur is not None and cur[0] == dr and cur[3] == tr and cur[1] + cur[2] * (cur[6] - 1) + 1 == d0:
            last_t = cur[4] + cur[5] * (cur[6] - 1)
            if cur[6] == 1 and t0 - last_t in (1, -1):
                cur[2], cur[5], cur[6] = 1, t0 - last_t, 2
            elif cur[6] > 1 and t0 == last_t + cur[5]:
                cur[6] += 1
            else:
                cur = None
        else:
            cur = None
        if cur is None:
            cur = [dr, d0, 0, tr, t0, 1, 1]
            out.append(cur)
        if dstep == 0 or n == 1:
            continue
        # The chain's tail: n - 1 more pairs, each one deleter on and tstep away.
        if cur[6] == 1:
            cur[2], cur[5], cur[6] = 1, tstep, n
        elif cur[5] == tstep:
            cur[6] += n - 1
        elif n == 2:
            cur = [dr, d0 + 1, 0, tr, t0 + tstep, 1, 1]
            out.append(cur)
        else:
            cur = [dr, d0 + 1, 1, tr, t0 + tstep, tstep, n - 1]
            out.append(cur)
    # Every atom and chain has Segment's seven fields; tuple() cannot say so.
    return cast("list[Segment]", [tuple(s) for s in out])


def _shared_deleters(segs: list[Segment]) -> dict[str, list[int]]:
    """The deleters that two segments of sorted ``segs`` both cover, as flat ranges per replica.

    Legal writes share one only where a deleter deleted several ranges (one
    segment each), and, in logs written before this form, where a deleter
    with two targets also ended one chain and began another: a few each.
    """
    shared: dict[str, list[int]] = {}
    replica: str | None = None
    reach = 0
    for dr, d0, dstep, _, _, _, n in segs:
        last = d0 + dstep * (n - 1)
        if dr == replica and d0 <= reach:
            ranges_add(shared.setdefault(dr, []), d0, min(last, reach) + 1)
            reach = max(reach, last)
        else:
            replica, reach = dr, last
    return shared


def _sharing(segs: list[Segment]) -> bool:
    """Whether two segments of sorted ``segs`` share a deleter: neighbours overlap then, and only then."""
    if len(segs) < 2:
        return False
    drs, d0s, dsteps, _, _, _, ns = zip(*segs, strict=True)
    lasts = list(map(add, d0s, map(mul, dsteps, map(sub, ns, repeat(1)))))
    return any(map(and_, map(eq, drs[1:], drs), map(le, d0s[1:], lasts)))


def _shared_count(shared: dict[str, list[int]]) -> int:
    return sum(flat[k + 1] - flat[k] for flat in shared.values() for k in range(0, len(flat), 2))


def _split_shared(segs: list[Segment], shared: dict[str, list[int]]) -> Iterator[Segment]:
    """``segs`` with every chain cut into single pairs where its deleters are shared (and only there)."""
    for seg in segs:
        dr, d0, dstep, tr, t0, tstep, n = seg
        flat = shared.get(dr)
        if dstep == 0 or not flat:
            yield seg
            continue
        d, end = d0, d0 + n
        for a, b in [*_intersect(flat, d0, end), (end, end)]:
            if d < a:  # the part before: still a chain
                t = t0 + (d - d0) * tstep
                yield (dr, d, 1, tr, t, tstep, a - d) if a - d > 1 else (dr, d, 0, tr, t, 1, 1)
            for x in range(a, b):
                yield (dr, x, 0, tr, t0 + (x - d0) * tstep, 1, 1)
            d = b


def _unseen(segments: list[Segment], ctx: CausalContext) -> list[Segment]:
    """The parts of ``segments`` whose deleters ``ctx`` has not seen (a join already holds the rest)."""
    out: list[Segment] = []
    for s in segments:
        dr, d0, dstep, tr, t0, tstep, n = s
        flat = ctx.ranges.get(dr)
        if not flat:
            out.append(s)
        elif dstep == 0:
            if not bisect_right(flat, d0) & 1:
                out.append(s)
        else:
            d, end = d0, d0 + n
            while d < end:
                i = bisect_right(flat, d)
                if i & 1:  # d is seen: skip to the end of its range
                    d = flat[i]
                    continue
                stop = min(end, flat[i]) if i < len(flat) else end
                m = stop - d
                t = t0 + (d - d0) * tstep
                out.append((dr, d, 1, tr, t, tstep, m) if m > 1 else (dr, d, 0, tr, t, 1, 1))
                d = stop
    return out


# A load's runs, checked (see ``Sequence._load_runs``): replica, counter, lamport, origin (or None,
# with the origins' counters in the run's own replica instead), length, content (None: dead) and
# visible length of each run in document order; replica references;
# the runs' order by id, and their sorted id keys; the replica table's names.
_Runs = tuple[
    list[str],
    list[int],
    list[int],
    list["Dot | None"] | None,
    list[int | None] | None,
    list[int],
    list["Content | None"],
    list[int],
    list[int],
    list[int],
    list[int],
    list[str],
]

# A deletion log's columns, checked: deleter and target replica names, first deleters,
# first targets, lengths and step codes (see ``_STEP_CODES``).
_Columns = tuple[list[str], list[int], list[str], list[int], list[int], list[int]]


def _check_segments(flat: Any, table: ReplicaTable) -> tuple[_Columns, int | None, dict[str, tuple[int, int]] | None]:
    """A deletion log's flat encoding, checked column by column (see ``Sequence._load_runs``).

    Also, read off the columns where that is cheap: how many deleters two
    segments share (``_shared_deleters``; None: not known), and each deleter
    replica's least and greatest deleter (None: not known). Both are known
    when one replica deleted everything and the segments come sorted by
    deleter, as canonical ones do.
    """
    if type(flat) is not list or len(flat) % 6:
        raise DecodeError("bad deletion segments")
    if not flat:
        return ([], [], [], [], [], []), 0, {}
    drefs, dds, trefs, dts, ns, codes = flat[0::6], flat[1::6], flat[2::6], flat[3::6], flat[4::6], flat[5::6]
    if not set().union(*(map(type, column) for column in (drefs, dds, trefs, dts, ns, codes))) <= {int}:
        raise DecodeError("bad deletion segment")
    names = table.names
    dmin, dmax = min(drefs), max(drefs)
    if min(dmin, min(trefs)) < 0 or max(dmax, max(trefs)) >= len(names):
        raise DecodeError("bad deletion segment replica")
    if min(codes) < 0 or max(codes) > 2 or min(ns) < 1 or max(ns) > MAX_ELEMENTS:
        raise DecodeError("bad deletion segment")
    d0s = list(accumulate(dds))
    t0s = list(accumulate(dts))
    if min(d0s) < 1 or min(t0s) < 1:
        raise DecodeError("bad deletion segment counters")
    if any(map(and_, map(eq, codes, repeat(1)), map(lt, t0s, ns))):  # a backspace chain's last target
        raise DecodeError("bad deletion segment counters")
    count = len(codes)
    drs = [names[dmin]] * count if dmin == dmax else list(map(names.__getitem__, drefs))
    columns = (drs, d0s, list(map(names.__getitem__, trefs)), t0s, ns, codes)
    if dmin != dmax or not all(map(le, d0s, d0s[1:])):
        return columns, None, None
    # A chain's last deleter is n - 1 past its first; a range's (code 0) is its first.
    lasts = list(map(add, d0s, map(mul, map(sub, ns, repeat(1)), map(truth, codes))))
    # Sorted by deleter, two segments share one exactly when one starts at or before the
    # previous one's last (segments with equal first deleters share it, in any order).
    shared = _shared_count_sorted(d0s, lasts) if any(map(le, d0s[1:], lasts)) else 0
    return columns, shared, {names[dmin]: (d0s[0], max(lasts))}


def _shared_count_sorted(d0s: list[int], lasts: list[int]) -> int:
    """``_shared_count(_shared_deleters(segs))`` for one replica's segments sorted by first deleter.

    Every earlier segment starts at or before this one, so what this one
    shares with them is its part up to the furthest deleter they reached.
    """
    shared = 0
    end = 0  # the shared deleters counted so far end before this
    reach = lasts[0]
    for d0, last in zip(d0s[1:], lasts[1:], strict=True):
        if d0 <= reach:
            lo = max(d0, end)
            hi = min(last, reach) + 1
            if lo < hi:
                shared += hi - lo
                end = hi
        if last > reach:
            reach = last
    return shared


def _build_segments(columns: _Columns) -> list[Segment]:
    drs, d0s, trs, t0s, ns, codes = columns
    return list(
        zip(
            drs,
            d0s,
            list(map(_DSTEP.__getitem__, codes)),
            trs,
            t0s,
            list(map(_TSTEP.__getitem__, codes)),
            ns,
            strict=True,
        )
    )
