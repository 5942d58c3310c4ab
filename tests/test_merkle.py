"""Tests of the pure Merkle tree (crdtstore.merkle)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.merkle import (
    EMPTY,
    MerkleShape,
    MerkleTree,
    diff,
    diff_children,
    hash_children,
    item_hash,
    node_key,
    parse_node_key,
)

# Small shapes make collisions between documents' buckets common, which is
# where order-independence and diffs are interesting.
SMALL = MerkleShape(fanout=4, depth=3)

ids = st.text(min_size=1, max_size=12)
digests = st.binary(min_size=16, max_size=16)
doc_sets = st.dictionaries(ids, digests, max_size=40)
shapes = st.sampled_from(
    [MerkleShape(fanout=2, depth=1), MerkleShape(fanout=4, depth=3), MerkleShape(fanout=16, depth=2)]
)


def build(items: dict[str, bytes] | list[tuple[str, bytes]], shape: MerkleShape = SMALL) -> MerkleTree:
    tree = MerkleTree({}, shape=shape)
    for doc_id, digest in items.items() if isinstance(items, dict) else items:
        tree.update(doc_id, None, digest)
    return tree


@given(doc_sets, st.randoms(use_true_random=False), shapes)
def test_root_depends_only_on_the_set(items: dict[str, bytes], rnd, shape: MerkleShape) -> None:
    pairs = list(items.items())
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    a, b = build(pairs, shape), build(shuffled, shape)
    assert a.root() == b.root()
    # Not only the root: every stored node agrees.
    assert a.store == b.store


@given(doc_sets, doc_sets)
def test_history_does_not_matter(items: dict[str, bytes], detour: dict[str, bytes]) -> None:
    """Going through other states (inserting, changing and removing docs) ends at the same tree."""
    tree = build(detour)
    for doc_id, digest in items.items():
        tree.update(doc_id, detour.get(doc_id), digest)
    for doc_id, digest in detour.items():
        if doc_id not in items:
            tree.update(doc_id, digest, None)
    assert tree.store == build(items).store


@given(doc_sets, doc_sets)
def test_equal_roots_iff_equal_sets(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert (build(a).root() == build(b).root()) == (a == b)


@given(doc_sets)
def test_removing_everything_leaves_an_empty_store(items: dict[str, bytes]) -> None:
    tree = build(items)
    assert (tree.root() == EMPTY) == (not items)
    for doc_id, digest in items.items():
        tree.update(doc_id, digest, None)
    assert tree.store == {}
    assert tree.root() == EMPTY


@given(doc_sets, ids, digests, st.one_of(st.none(), digests))
def test_one_differing_doc_is_found_in_its_bucket(
    items: dict[str, bytes], doc_id: str, digest: bytes, other: bytes | None
) -> None:
    """Missing on one side or present with another digest: diff names exactly that doc's bucket."""
    if digest == other:
        other = None
    ours = dict(items, **{doc_id: digest})
    theirs = dict(items)
    theirs.pop(doc_id, None)
    if other is not None:
        theirs[doc_id] = other
    a, b = build(ours), build(theirs)
    assert diff(a, b) == [SMALL.bucket(doc_id)]
    assert diff(b, a) == [SMALL.bucket(doc_id)]


@given(doc_sets, doc_sets)
def test_diff_finds_exactly_the_buckets_of_differing_docs(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    differing = {d for d in a.keys() | b.keys() if a.get(d) != b.get(d)}
    assert sorted(diff(build(a), build(b))) == sorted({SMALL.bucket(d) for d in differing})


def test_diff_descends_only_into_differing_subtrees() -> None:
    shape = MerkleShape(fanout=16, depth=4)
    common = {f"doc-{i}": bytes([i]) * 16 for i in range(200)}
    a = build(common, shape)
    b = build(dict(common, extra=b"x" * 16), shape)
    visited: list[tuple[int, int]] = []

    class Counting:
        def __init__(self, tree: MerkleTree) -> None:
            self.tree = tree
            self.shape = tree.shape

        def root(self) -> bytes:
            return self.tree.root()

        def children(self, level: int, index: int) -> list[bytes]:
            visited.append((level, index))
            return self.tree.children(level, index)

    assert diff(Counting(a), b) == [shape.bucket("extra")]
    # One path from the root to the leaf's parent: depth nodes expanded, not the whole tree.
    assert len(visited) == shape.depth
    assert diff(a, build(common, shape)) == []


def test_update_returns_the_changed_path_leaf_first() -> None:
    shape = MerkleShape(fanout=16, depth=4)
    tree = MerkleTree({}, shape=shape)
    changed = tree.update("a", None, b"1" * 16)
    bucket = shape.bucket("a")
    assert changed == [(4, bucket), (3, bucket // 16), (2, bucket // 256), (1, bucket // 4096), (0, 0)]
    assert tree.update("a", b"1" * 16, b"1" * 16) == []
    assert len(tree.update("a", b"1" * 16, b"2" * 16)) == 5
    assert set(tree.store) == {node_key(level, index) for level, index in changed}


def test_store_holds_bytes_keyed_by_level_and_index() -> None:
    tree = build({"a": b"1" * 16, "b": b"2" * 16})
    for key, value in tree.store.items():
        level, index = parse_node_key(key)
        assert tree.node(level, index) == value
        assert isinstance(value, bytes) and len(value) == 16
    assert parse_node_key(node_key(3, 4095)) == (3, 4095)


def test_children_and_shape_helpers() -> None:
    shape = MerkleShape(fanout=4, depth=2)
    assert shape.leaves == 16
    assert shape.children_of(1, 2) == [(2, 8), (2, 9), (2, 10), (2, 11)]
    assert shape.leaf_range(1, 2) == range(8, 12)
    assert shape.leaf_range(0, 0) == range(16)
    assert shape.leaf_range(2, 5) == range(5, 6)
    tree = MerkleTree({}, shape=shape)
    assert tree.children(0, 0) == [EMPTY] * 4
    with pytest.raises(IndexError):
        shape.children_of(2, 0)  # a leaf has no children
    with pytest.raises(IndexError):
        tree.children(1, 4)
    with pytest.raises(ValueError):
        MerkleShape(fanout=1, depth=2)
    with pytest.raises(ValueError):
        MerkleShape(fanout=16, depth=9)  # 2**36 leaves do not fit a u32 index


def test_diff_refuses_other_shapes_and_bad_children() -> None:
    with pytest.raises(ValueError):
        diff(build({}, MerkleShape(4, 2)), build({}, MerkleShape(4, 3)))
    with pytest.raises(ValueError):
        diff_children((0, 0), [EMPTY] * 4, [EMPTY] * 3, MerkleShape(4, 2))


def test_item_hash_separates_id_from_digest() -> None:
    assert item_hash("ab", b"c" * 16) != item_hash("a", b"b" + b"c" * 15)


def test_bucket_is_stable_and_in_range() -> None:
    shape = MerkleShape()
    # Pinned: every replica (and every version of this code) must bucket alike.
    assert shape.bucket("hello") == 34137
    assert shape.bucket("doc/1") == 25522
    assert item_hash("a", bytes(16)).hex() == "7ef684baf8951444a5fb22be9288cb9f"
    assert all(0 <= shape.bucket(f"d{i}") < shape.leaves for i in range(1000))
    assert len({shape.bucket(f"d{i}") for i in range(1000)}) > 950  # spreads out


def test_inner_node_hash_is_pinned() -> None:
    # Pinned from the code before the hash states were precomputed: peers of either version must agree.
    assert hash_children([EMPTY, b"\x01" * 16]).hex() == "c923737d4569935383e621229c46645e"
    assert hash_children([EMPTY, EMPTY]) == EMPTY
    assert hash_children((EMPTY,)) == EMPTY
    assert MerkleShape().bucket("doc-\u00e9") == 48775 and MerkleShape(16, 2).bucket("x") == 103


def test_clear_empties_the_store() -> None:
    tree = build({"a": b"1" * 16, "b": b"2" * 16}, MerkleShape(4, 2))
    tree.clear()
    assert tree.store == {}
