"""Hypothesis strategies for the sync messages."""

from __future__ import annotations

from hypothesis import strategies as st

from sync import messages as m
from sync.types import LogEntry

ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
u64 = st.integers(0, 2**64 - 1)
seqs = st.integers(1, 2**64 - 1)
digests = st.binary(min_size=16, max_size=16)
blobs = st.binary(max_size=64)


def _vectors() -> st.SearchStrategy[m.Ack]:
    return st.dictionaries(ids, seqs, max_size=5).map(m.Ack.of)


messages: st.SearchStrategy[m.Message] = st.one_of(
    st.builds(m.Hello, ids, ids, ids, u64, u64, st.binary(min_size=16, max_size=64)),
    st.builds(m.Auth, st.binary(min_size=32, max_size=32)),
    st.just(m.Ready()),
    st.builds(m.Deltas, st.lists(st.builds(LogEntry, ids, seqs, ids, blobs), max_size=4).map(tuple)),
    _vectors(),
    st.builds(m.LogTruncated, ids, st.integers(2, 2**64 - 1)),
    st.builds(m.MerkleRootRequest, u64),
    st.builds(m.MerkleRootResponse, u64, st.integers(2, 300), st.integers(1, 300), digests),
    st.builds(m.MerkleChildrenRequest, u64, st.lists(st.tuples(u64, u64), max_size=4).map(tuple)),
    st.builds(m.MerkleChildrenResponse, u64, st.lists(st.lists(digests, max_size=4).map(tuple), max_size=3).map(tuple)),
    st.builds(m.BucketItemsRequest, u64, st.lists(u64, max_size=4).map(tuple)),
    st.builds(
        m.BucketItemsResponse,
        u64,
        st.lists(st.lists(st.tuples(ids, digests), max_size=3).map(tuple), max_size=3).map(tuple),
    ),
    st.builds(m.StateRequest, u64, st.lists(ids, max_size=4).map(tuple)),
    st.builds(m.StateResponse, u64, st.lists(st.tuples(ids, st.none() | blobs), max_size=4).map(tuple)),
    st.builds(m.StatePush, st.lists(st.tuples(ids, blobs), max_size=4).map(tuple)),
    st.builds(m.ReadRequest, u64, ids),
    st.builds(m.ReadResponse, u64, ids, st.none() | blobs),
    st.builds(m.WriteAck, u64, ids, ids, seqs, st.booleans()),
    st.builds(m.Presence, ids, ids, st.binary(max_size=64)),
)
