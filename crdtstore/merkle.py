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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
    "item_hash",
    "node_key",
    "parse_node_key",
]

HASH_SIZE = 16
"""Bytes in every node value (128-bit blake2b)."""

EMPTY = bytes(HASH_SIZE)
"""The value of a node with no document below it (never stored)."""

NodeId = tuple[int, int]
"""``(level, index)``: level 0 is the root, level ``depth`` the leaves."""

# Personalisation strings keep the three hash uses apart: an item hash can
# never be mistaken for a node hash or a bucket choice.
_PERSON_BUCKET = b"crdtstore.bucket"
_PERSON_ITEM = b"crdtstore.item"
_PERSON_NODE = b"crdtstore.node"

_KEY = struct.Struct(">BI")
# Keyed-by-purpose hash states, copied per use: copying costs less than setting up the parameters each time.
_ITEM_HASH = hashlib.blake2b(digest_size=HASH_SIZE, person=_PERSON_ITEM)
_NODE_HASH = hashlib.blake2b(digest_size=HASH_SIZE, person=_PERSON_NODE)
_BUCKET_HASH = hashlib.blake2b(digest_size=8, person=_PERSON_BUCKET)


class NodeStore(Protocol):
    """Where node values live: ``dict[bytes, bytes]`` or an LMDB adapter."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...

    def __delitem__(self, key: bytes, /) -> None: ...


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
    return _KEY.pack(level, index)


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
