"""A fixed-shape Merkle tree over document digests, for anti-entropy.

Theory of operation
-------------------

Two replicas that hold the same documents in the same states must find out
cheaply that they agree, and when they do not, which few documents differ.
The tree answers both without either side shipping its document list.

* **Fixed shape.** The tree has ``depth + 1`` levels. Level 0 is the root
  and level ``depth`` holds ``fanout ** depth`` leaves (16 and 4 give 65,536
  leaves). Node ``(level, index)`` has the children ``(level + 1,
  index * fanout + k)`` for ``k`` in ``range(fanout)``. The shape does not
  depend on the data, so two replicas with the same :class:`MerkleShape`
  compare node by node with no negotiation.
* **Bucketing.** A document lives in the leaf ``bucket(doc_id)``, chosen by
  a keyed blake2b of its id. The id alone picks the bucket, so a document
  stays in one leaf for its whole life and both replicas agree on it.
* **Leaves are XORs.** A leaf holds the XOR of ``item_hash(id, digest)`` over
  its documents. XOR is commutative, associative and self-inverse, so a
  write changes a leaf in O(1) (``leaf ^= h(id, old) ^ h(id, new)``) with no
  need to read the bucket's other documents, and the result cannot depend on
  the order of the writes. The price: XOR is linear, so someone who can
  choose many (id, digest) pairs could build a set that cancels out. Digests
  are hashes of CRDT states that only authenticated peers and our own API
  produce, and anti-entropy is a repair path behind the delta log, so we
  accept that trade for O(1) updates.
* **Inner nodes hash their children.** An inner node is
  ``blake2b(child_0 || ... || child_{fanout-1})``, except that a node whose
  children are all empty is itself :data:`EMPTY`. That rule keeps the tree
  sparse in storage: empty nodes are never stored, and an empty tree is a
  store with no keys and a root of :data:`EMPTY`.
* **Pure over a pluggable mapping.** :class:`MerkleTree` reads and writes its
  nodes through a :class:`NodeStore` (anything with ``get``, item assignment
  and item deletion: a ``dict`` works). Storage backs it with an LMDB named
  database inside the write transaction that changes the document, so the
  tree never disagrees with the documents it covers.

An update touches one node per level (``depth + 1`` writes, and
``depth * fanout`` reads to rehash the inner nodes). Comparing two trees with
:func:`diff` descends only into differing subtrees, so ``k`` differing
documents cost about ``k * depth`` node exchanges.
"""

from __future__ import annotations

import copy
import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "EMPTY",
    "HASH_SIZE",
    "MerkleReader",
    "MerkleShape",
    "MerkleTree",
    "NodeId",
    "NodeStore",
    "diff",
    "diff_children",
    "hash_children",
    "NodeCursor",
    "item_hash",
    "leaf_change",
    "node_key",
    "parse_node_key",
    "rehash",
    "xor_leaves",
]

HASH_SIZE: Final = 16
"""Bytes in every node value (128-bit blake2b)."""

EMPTY: Final = bytes(HASH_SIZE)
"""The value of a node with no document below it (never stored)."""

NodeId = tuple[int, int]
"""``(level, index)``: level 0 is the root, level ``depth`` the leaves."""

# Personalisation strings keep the three hash uses apart: an item hash can
# never be mistaken for a node hash or a bucket choice.
_PERSON_BUCKET = b"crdtstore.bucket"
_PERSON_ITEM = b"crdtstore.item"
_PERSON_NODE = b"crdtstore.node"

_KEY: Final = struct.Struct(">BI")
# Keyed-by-purpose hash states, copied per use: copying costs less than setting up the parameters each time.
_ITEM_HASH: Final = hashlib.blake2b(digest_size=HASH_SIZE, person=_PERSON_ITEM)
_NODE_HASH: Final = hashlib.blake2b(digest_size=HASH_SIZE, person=_PERSON_NODE)
_BUCKET_HASH: Final = hashlib.blake2b(digest_size=8, person=_PERSON_BUCKET)


class NodeStore(Protocol):
    """Where node values live: ``dict[bytes, bytes]`` or an LMDB adapter."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...

    def __delitem__(self, key: bytes, /) -> None: ...


class NodeCursor(Protocol):
    """Stored nodes in key order (an LMDB cursor over the ``merkle`` database): what :func:`rehash` uses."""

    def set_range(self, key: bytes, /) -> bool: ...

    def set_key(self, key: bytes, /) -> bool: ...

    def put(self, key: bytes, value: bytes) -> bool: ...

    def delete(self) -> bool: ...

    def value(self) -> bytes: ...

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]: ...


class MerkleReader(Protocol):
    """The read side of a tree, local or a proxy for a peer's answers."""

    @property
    def shape(self) -> MerkleShape: ...

    def root(self) -> bytes: ...

    def children(self, level: int, index: int) -> list[bytes]: ...


def node_key(level: int, index: int) -> bytes:
    """The storage key of node ``(level, index)``: one level byte, four index bytes.

    Big-endian so that an LMDB cursor walks a level in index order.
    """
    if not 0 <= level <= 255 or not 0 <= index < 1 << 32:
        raise ValueError(f"no node key for ({level}, {index})")
    # The same five bytes as ``_KEY.pack``, without a method call: every flush makes a few per node.
    return ((level << 32) | index).to_bytes(5, "big")


def parse_node_key(key: bytes) -> NodeId:
    """Inverse of :func:`node_key`."""
    level, index = _KEY.unpack(key)
    return level, index


def item_hash(doc_id: str, digest: bytes) -> bytes:
    """The contribution of one document to its leaf.

    The id is length-prefixed so that ``("ab", b"c...")`` and
    ``("a", b"bc...")`` cannot collide by concatenation.
    """
    raw = doc_id.encode()
    h = _ITEM_HASH.copy()
    h.update(len(raw).to_bytes(4, "big") + raw + digest)
    return h.digest()


def hash_children(children: Sequence[bytes]) -> bytes:
    """The value of an inner node given its children's values (EMPTY when all are empty).

    Public so that a store can rehash inner nodes in bulk (storage defers it
    to once per group commit) with exactly the rule :class:`MerkleTree` uses.
    """
    if children.count(EMPTY) == len(children):
        return EMPTY
    h = _NODE_HASH.copy()
    h.update(b"".join(children))
    return h.digest()


def leaf_change(doc_id: str, old_digest: bytes | None, new_digest: bytes | None) -> int:
    """What ``doc_id`` going from ``old_digest`` to ``new_digest`` XORs into its leaf, as an int (0: nothing).

    ``None`` means absent, as in :meth:`MerkleTree.update`.
    """
    change = 0
    if old_digest is not None:
        # The hash this document's last change computed for its new digest, if it is still here.
        known = _ITEM_INTS.pop((doc_id, old_digest), None)
        change ^= known if known is not None else int.from_bytes(item_hash(doc_id, old_digest), "big")
    if new_digest is not None:
        new = int.from_bytes(item_hash(doc_id, new_digest), "big")
        if len(_ITEM_INTS) >= _ITEM_INTS_MAX:
            _ITEM_INTS.clear()
        _ITEM_INTS[(doc_id, new_digest)] = new
        change ^= new
    return change


# (doc id, digest) -> item_hash as an int, for the digests leaf_change stored last: the next
# change of the document XORs the same hash out again, one hash of its two saved. A pure memo
# of item_hash (any entry is right whoever reads it), bounded by dropping everything past the bound.
_ITEM_INTS: Final[dict[tuple[str, bytes], int]] = {}
_ITEM_INTS_MAX: Final = 1 << 16


def xor_leaves(cursor: NodeCursor, shape: MerkleShape, changes: dict[int, int]) -> None:
    """XOR each leaf's change (from :func:`leaf_change`, summed per bucket) into the stored leaf, in bucket order.

    The storage keeps a group commit's leaf changes in memory and writes
    them with this, once per leaf, before the leaves are read (their inner
    nodes wait for :func:`rehash`).
    """
    depth = shape.depth
    for bucket in sorted(changes):
        change = changes[bucket]
        if not change:
            continue
        key = node_key(depth, bucket)
        found = cursor.set_key(key)
        value = (int.from_bytes(cursor.value(), "big") if found else 0) ^ change
        if value:
            cursor.put(key, value.to_bytes(HASH_SIZE, "big"))
        elif found:
            cursor.delete()  # empty nodes are never stored


def rehash(cursor: NodeCursor, shape: MerkleShape, leaves: set[int]) -> int:
    """Recompute every inner node above the changed ``leaves``, level by level; return how many.

    Each parent of a changed node is recomputed once from its children,
    read with one range scan of ``cursor`` (keys are big-endian, so a
    node's children are adjacent and in index order; empty nodes are not
    stored, so the scan sees only the others), and stored through it
    (deleted when :data:`EMPTY`). The storage runs this once per group
    commit (``Storage.flush_merkle``): compiled with the core, it costs a
    fraction of the same loop interpreted, which was a fifth of a lone
    write's instructions.
    """
    fanout = shape.fanout
    indexes = leaves
    rehashed = 0
    for level in range(shape.depth - 1, -1, -1):
        indexes = {i // fanout for i in indexes}
        child_level = level + 1
        for index in indexes:
            first = index * fanout
            base = (child_level << 32) | first  # a child's key as an int, less this, is its place
            children = [EMPTY] * fanout
            # Past the last child: the next sibling's key, or past every key
            # of the children's level when they end the index space.
            if first + fanout < 1 << 32:
                end = node_key(child_level, first + fanout)
            else:
                end = bytes([child_level]) + b"\xff" * 5
            if cursor.set_range(node_key(child_level, first)):
                for key, value in cursor:
                    if key >= end:
                        break
                    children[int.from_bytes(key, "big") - base] = value
            value = hash_children(children)
            key = node_key(level, index)
            if value == EMPTY:
                if cursor.set_key(key):
                    cursor.delete()
            else:
                cursor.put(key, value)
            rehashed += 1
    return rehashed


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(HASH_SIZE, "big")


@dataclass(frozen=True, slots=True)
class MerkleShape:
    """The fixed shape of a tree; two trees compare only if their shapes are equal.

    Attributes:
        fanout: Children per inner node (at least 2).
        depth: Levels below the root (at least 1); leaves are at level ``depth``.
    """

    fanout: int = 16
    depth: int = 4

    def __post_init__(self) -> None:
        if self.fanout < 2 or self.depth < 1:
            raise ValueError(f"need fanout >= 2 and depth >= 1, got {self.fanout}, {self.depth}")
        if self.depth > 255 or self.fanout**self.depth > 2**32:
            # node_key stores the level in one byte and the index in four.
            raise ValueError(f"shape too large: {self.fanout}**{self.depth} leaves")

    # Immutable: a copy is the shape itself. Also what lets a deep copy of a store holding one work
    # when this class is compiled (mypyc's frozen classes refuse the copy module's setattr).
    def __copy__(self) -> MerkleShape:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> MerkleShape:
        return self

    # The hash the dataclass would generate, spelled out: compiled, the generated one stays Python
    # code, and the storage hashes the shape with every document id it caches a bucket key for.
    def __hash__(self) -> int:
        return hash((self.fanout, self.depth))

    @property
    def leaves(self) -> int:
        """Number of leaf buckets."""
        return int(self.fanout**self.depth)

    def width(self, level: int) -> int:
        """Number of nodes at ``level``."""
        return int(self.fanout**level)

    def bucket(self, doc_id: str) -> int:
        """The leaf bucket of ``doc_id``; stable for the life of the document."""
        h = _BUCKET_HASH.copy()
        h.update(doc_id.encode())
        return int.from_bytes(h.digest(), "big") % self.leaves

    def children_of(self, level: int, index: int) -> list[NodeId]:
        """The ids of the children of an inner node."""
        self._check(level, index, inner=True)
        first = index * self.fanout
        return [(level + 1, first + k) for k in range(self.fanout)]

    def leaf_range(self, level: int, index: int) -> range:
        """The leaf buckets under node ``(level, index)``."""
        self._check(level, index, inner=False)
        span = self.fanout ** (self.depth - level)
        return range(index * span, (index + 1) * span)

    def _check(self, level: int, index: int, *, inner: bool) -> None:
        top = self.depth - 1 if inner else self.depth
        if not 0 <= level <= top or not 0 <= index < self.width(level):
            raise IndexError(f"no {'inner ' if inner else ''}node ({level}, {index}) in {self}")


class MerkleTree:
    """A Merkle tree of document digests over a :class:`NodeStore`.

    The object holds no node values itself: every read and write goes to
    ``store``, so a new tree over an LMDB write transaction is cheap and sees
    exactly what the transaction sees.

    Args:
        store: Where node values live. Empty nodes are absent from it.
        shape: The tree's shape; keyword-only since it must match the peers'.
    """

    __slots__ = ("shape", "store")

    def __init__(self, store: NodeStore, *, shape: MerkleShape | None = None) -> None:
        self.store = store
        self.shape = shape if shape is not None else MerkleShape()

    def __deepcopy__(self, memo: dict[int, object]) -> MerkleTree:
        # Spelled out for the compiled class, which the copy module cannot rebuild field by field.
        return MerkleTree(copy.deepcopy(self.store, memo), shape=self.shape)

    # Public methods for reading.

    def node(self, level: int, index: int) -> bytes:
        """The value of a node; :data:`EMPTY` if nothing lies below it."""
        value = self.store.get(node_key(level, index))
        return EMPTY if value is None else bytes(value)

    def root(self) -> bytes:
        """The root value; equal roots mean equal sets of (id, digest) pairs (up to hash collisions)."""
        return self.node(0, 0)

    def children(self, level: int, index: int) -> list[bytes]:
        """The values of the ``fanout`` children of inner node ``(level, index)``."""
        return [self.node(lv, ix) for lv, ix in self.shape.children_of(level, index)]

    def bucket(self, doc_id: str) -> int:
        """Shortcut for ``self.shape.bucket(doc_id)``."""
        return self.shape.bucket(doc_id)

    # Public methods for updating.

    def update(self, doc_id: str, old_digest: bytes | None, new_digest: bytes | None) -> list[NodeId]:
        """Record that ``doc_id`` went from ``old_digest`` to ``new_digest``.

        ``None`` means absent: ``(None, d)`` inserts, ``(d, None)`` removes.
        The caller must pass the digest the tree last saw for this document;
        XOR cannot detect a wrong ``old_digest``, it would just corrupt the leaf.

        Returns:
            The nodes whose value changed, leaf first and root last; empty if
            nothing changed.
        """
        if old_digest == new_digest:
            return []
        delta = EMPTY
        if old_digest is not None:
            delta = _xor(delta, item_hash(doc_id, old_digest))
        if new_digest is not None:
            delta = _xor(delta, item_hash(doc_id, new_digest))
        level, index = self.shape.depth, self.shape.bucket(doc_id)
        changed: list[NodeId] = []
        value = _xor(self.node(level, index), delta)
        while True:
            if not self._put(level, index, value):
                # An unchanged node leaves every ancestor unchanged too.
                break
            changed.append((level, index))
            if level == 0:
                break
            level, index = level - 1, index // self.shape.fanout
            value = self._hash_children(level, index)
        return changed

    def clear(self) -> None:
        """Remove every node (the store must support it; used to rebuild)."""
        for level in range(self.shape.depth + 1):
            for index in range(self.shape.width(level)):
                key = node_key(level, index)
                if self.store.get(key) is not None:
                    del self.store[key]

    # Private methods.

    def _hash_children(self, level: int, index: int) -> bytes:
        return hash_children(self.children(level, index))

    def _put(self, level: int, index: int, value: bytes) -> bool:
        """Store ``value`` (deleting the key for EMPTY); return whether it changed."""
        key = node_key(level, index)
        old = self.store.get(key)
        old_value = EMPTY if old is None else bytes(old)
        if old_value == value:
            return False
        if value == EMPTY:
            del self.store[key]
        else:
            self.store[key] = value
        return True


# Comparing trees.


def diff_children(parent: NodeId, ours: Sequence[bytes], theirs: Sequence[bytes], shape: MerkleShape) -> list[NodeId]:
    """The children of ``parent`` whose values differ between two trees.

    This is the one step of anti-entropy: a replicator sends its children of
    the differing nodes, the peer answers with its own, and both recurse into
    what this returns.

    Raises:
        ValueError: If either side does not have ``fanout`` children.
    """
    if len(ours) != shape.fanout or len(theirs) != shape.fanout:
        raise ValueError(f"expected {shape.fanout} children, got {len(ours)} and {len(theirs)}")
    ids = shape.children_of(*parent)
    return [node for node, a, b in zip(ids, ours, theirs, strict=True) if a != b]


def diff(ours: MerkleReader, theirs: MerkleReader) -> list[int]:
    """The leaf buckets whose values differ, descending only into differing subtrees.

    Both trees are walked level by level; a subtree whose root agrees is not
    visited. Use it locally (tests, two stores in one process); a replicator
    drives :func:`diff_children` over the network instead.

    Raises:
        ValueError: If the two trees have different shapes.
    """
    if ours.shape != theirs.shape:
        raise ValueError(f"cannot compare {ours.shape} with {theirs.shape}")
    shape = ours.shape
    if ours.root() == theirs.root():
        return []
    frontier: list[NodeId] = [(0, 0)]
    for _ in range(shape.depth):
        frontier = [
            child
            for node in frontier
            for child in diff_children(node, ours.children(*node), theirs.children(*node), shape)
        ]
    return [index for _, index in frontier]
