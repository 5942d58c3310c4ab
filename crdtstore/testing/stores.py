"""A differential state machine: the in-memory store and the LMDB node, step for step, must agree.

Rules apply the same step to a :class:`~sync.memstore.MemStore` and to a
:class:`~crdtstore.node.Node` on LMDB in a scratch directory: local writes,
peers' deltas delivered in batches hypothesis draws (dropped, duplicated,
reordered, with gaps), full-state merges, ``skip_log``, ``set_acked`` and
log truncation, and bad peer data: deltas and states that do not decode,
placeholders, forged dots of the store's own origin, ids the API could not
address (the rules of :mod:`sync.quarantine`). Invariants, after every
step: the two hold the same document encodings (byte for byte), Merkle
digests and root, version vectors, logs (placeholders included), stored
acks, and quarantine (the documents listed, why, and the counters). Both run through the
:class:`sync.store.ReplicaStore` protocol, the only way replication sees a
store, so the simulator's verdicts over memory carry over to the node.

Both stores get the same identity (the node's, passed to the MemStore) so
states compare byte for byte. LWW writes are left out: their timestamp is
the node's hybrid clock and the MemStore's counter, which differ by design.

Hypothesis's stateful testing has no asyncio, so the machine owns one event
loop for its whole run (zarr's ``SyncStoreWrapper`` does the same); MemStore's
coroutines run on it too.

Use it as ``TestStores = StoreComparison.TestCase``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sync.memstore import MemStore
from sync.quarantine import Quarantined
from sync.simulator import all_states
from sync.store import ReplicaStore
from sync.types import LogEntry

from ..errors import CrdtError, OpError
from ..merkle import MerkleShape
from ..node import Node
from .model import AbstractOp, concretize
from .nodes import open_node
from .strategies import TYPE_KINDS, abstract_ops

__all__ = ["StoreComparison"]

T = TypeVar("T")

SHAPE = MerkleShape(fanout=4, depth=2)
DOCS = ("d0", "d1", "d2", "d3")
PEERS = ("p", "q")
ROGUE = "eu-r.1.1"  # the origin bad peer data comes under (its own seqs: no gap in the peers' logs)
BAD_IDS = ("a/b", ".", "x" * 257, "tab\there")
BAD_KINDS = ("junk", "placeholder", "bad_id", "forged")
UNLOGGABLE = (("", 1), ("bad\x00", 1), ("x" * 201, 1), (ROGUE, 0), (ROGUE, 1 << 64))
# Every kind of op but LWW (see the module docstring).
KINDS = tuple(sorted({k for ks in TYPE_KINDS.values() for k in ks} - {"lww"}))
batches = st.lists(abstract_ops(KINDS), min_size=1, max_size=3)


def _key(entry: Any) -> tuple[str, int, str, bytes]:
    return (entry.origin, entry.seq, entry.doc_id, bytes(entry.delta))


def _record(q: Quarantined) -> tuple[str, str, str | None, int | None, int]:
    """A quarantine record but its time (the node's clock and the memory store's counter differ)."""
    return (q.doc_id, q.reason, q.origin, q.seq, q.failures)


def _results(out: Any) -> Any:
    """Results with each returned error as its type (two stores' error objects never compare equal)."""
    return [r if isinstance(r, bool) else type(r) for r in out] if isinstance(out, list) else out


class StoreComparison(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="crdtstore-stores-"))
        self.node: Node = self.run(open_node(self.dir / "node", region="eu", shape=SHAPE, ids=("x", "n1")))
        info = self.node.info
        self.mem = MemStore(info.replica_id, region=info.region, nonce="n1", shape=SHAPE)
        assert self.mem.info == info, (self.mem.info, info)
        self.stores: tuple[ReplicaStore, ReplicaStore] = (self.mem, self.node)
        # Peers minting deltas of their own; what they sent is in flight until delivered (or never).
        self.peers = {p: MemStore(f"eu-{p}", region="eu", nonce="1", shape=SHAPE) for p in PEERS}
        self.sent: list[LogEntry] = []
        self.rogue_seq = 0

    def run(self, step: Awaitable[T]) -> T:
        return self.loop.run_until_complete(step)  # type: ignore[arg-type]

    def both(self, make: Any) -> tuple[Any, Any]:
        """``make(store)`` awaited on each store: the two outcomes, or the two error types."""
        out = []
        for store in self.stores:
            try:
                out.append(self.run(make(store)))
            except (CrdtError, ValueError) as exc:
                out.append(type(exc))
        return out[0], out[1]

    # Rules.

    @rule(doc=st.sampled_from(DOCS), batch=batches)
    def local_write(self, doc: str, batch: list[AbstractOp]) -> None:
        current = self.mem.docs[doc].value() if doc in self.mem.docs else {}
        ops = [concretize(op, current) for op in batch]
        note(f"local write {doc} {ops}")
        try:
            entry = self.mem.apply(doc, ops)
        except OpError as exc:
            with_mem: type[Exception] | None = type(exc)
        else:
            with_mem = None
        try:
            result = self.run(self.node.apply(doc, ops))
        except OpError as exc:
            assert type(exc) is with_mem, (with_mem, exc)
            return
        assert with_mem is None, f"the node took a batch the memory store rejected ({with_mem})"
        assert (result.origin, result.seq) == (entry.origin, entry.seq)

    @rule(peer=st.sampled_from(PEERS), doc=st.sampled_from(DOCS), batch=batches)
    def peer_write(self, peer: str, doc: str, batch: list[AbstractOp]) -> None:
        store = self.peers[peer]
        current = store.docs[doc].value() if doc in store.docs else {}
        try:
            entry = store.apply(doc, [concretize(op, current) for op in batch])
        except OpError:
            return
        note(f"{peer} wrote {entry.origin}:{entry.seq} {doc}")
        self.sent.append(entry)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """A batch of what peers sent, in a drawn order, duplicates and gaps allowed."""
        batch = data.draw(st.lists(st.sampled_from(self.sent), min_size=1, max_size=6), label="batch")
        note(f"deliver {[(e.origin, e.seq) for e in batch]}")
        mem, node = self.both(lambda s: s.apply_remote_many(batch))
        assert mem == node

    def bad_delta(self, kind: str, doc: str, data: st.DataObject) -> LogEntry:
        """One entry of bad peer data of ``kind`` (see ``BAD_KINDS``), under the rogue origin's next seq."""
        self.rogue_seq += 1
        source = data.draw(st.sampled_from(self.sent), label="source") if self.sent else None
        delta = source.delta if source is not None else b"[]"
        if kind == "junk":
            delta = b"not a delta"
        elif kind == "placeholder":
            delta = b""
        elif kind == "bad_id":
            doc = data.draw(st.sampled_from(BAD_IDS), label="id")
        elif source is not None:  # forged: a peer's dots passed off as the store's own
            delta = delta.replace(source.origin.encode(), self.mem.origin.encode())
        return LogEntry(ROGUE, self.rogue_seq, doc, delta)

    @rule(data=st.data(), kind=st.sampled_from(BAD_KINDS), doc=st.sampled_from(DOCS))
    def deliver_with_bad_data(self, data: st.DataObject, kind: str, doc: str) -> None:
        """Bad peer data anywhere in a batch: it alone is skipped (a placeholder logged), the rest joins."""
        batch = data.draw(st.lists(st.sampled_from(self.sent), max_size=4), label="batch") if self.sent else []
        bad = self.bad_delta(kind, doc, data)
        batch.insert(data.draw(st.integers(0, len(batch)), label="at"), bad)
        note(f"deliver {[(e.origin, e.seq) for e in batch]} with {kind} {bad.doc_id!r:.20} at {ROGUE}:{bad.seq}")
        mem, node = self.both(lambda s: s.apply_remote_many(batch))
        assert mem == node
        assert mem[batch.index(bad)] is True  # skipped, yet received: the origin's mark moves on

    @rule(slot=st.sampled_from(UNLOGGABLE))
    def deliver_what_the_log_cannot_hold(self, slot: tuple[str, int]) -> None:
        """A malformed origin or seq next to good entries: both refuse the whole batch, and nothing changes."""
        batch = [*self.sent[-2:], LogEntry(*slot, DOCS[0], b"")]
        before = self.both(lambda s: s.version_vector())
        mem, node = self.both(lambda s: s.apply_remote_many(batch))
        assert mem is ValueError and node is ValueError, (mem, node)
        assert self.both(lambda s: s.version_vector()) == before

    @rule(peer=st.sampled_from(PEERS), doc=st.sampled_from(DOCS), bad=st.sampled_from((None, *BAD_KINDS)))
    def merge(self, peer: str, doc: str, bad: str | None) -> None:
        state = self.peers[peer].read_state(doc)
        states = [(doc, state)] if state is not None else []
        if bad == "junk" or (bad == "placeholder" and state is None):
            states.append((DOCS[-1], b"junk"))
        elif bad == "bad_id":
            states.append((BAD_IDS[0], state or b"junk"))
        elif bad == "forged" and state is not None:
            states.append((doc, state.replace(self.peers[peer].origin.encode(), self.mem.origin.encode())))
        if not states:
            return
        note(f"merge {peer}'s {doc} (bad: {bad})")
        mem, node = self.both(lambda s: s.merge_states(states))
        assert _results(mem) == _results(node)

    @rule(peer=st.sampled_from(PEERS), upto=st.integers(0, 8))
    def skip_log(self, peer: str, upto: int) -> None:
        origin = self.peers[peer].origin
        mem, node = self.both(lambda s: s.skip_log(origin, upto))
        assert mem == node

    @rule(peer=st.sampled_from(PEERS), data=st.data())
    def set_acked(self, peer: str, data: st.DataObject) -> None:
        vector = self.run(self.node.version_vector())
        acked = {o: data.draw(st.integers(0, s + 1), label=o) for o, s in sorted(vector.items())}
        self.both(lambda s: s.set_acked(f"eu-{peer}", acked))

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        vector = self.run(self.node.version_vector())
        upto = {o: data.draw(st.integers(0, s), label=o) for o, s in sorted(vector.items())}
        mem, node = self.both(lambda s: s.truncate_log(upto))
        assert mem == node

    # Invariants: the two stores hold the same thing, as replication reads it.

    @invariant()
    def same_states_and_digests(self) -> None:
        mem, node = self.both(lambda s: all_states(s, SHAPE))
        assert mem == node
        assert mem == self.mem.encoded()
        buckets = range(SHAPE.leaves)
        mem, node = self.both(lambda s: s.bucket_items_many(buckets))
        assert mem == node

    @invariant()
    def same_merkle_tree(self) -> None:
        mem, node = self.both(lambda s: s.merkle_root())
        assert mem == node
        level = [(1, i) for i in range(SHAPE.fanout)]
        mem, node = self.both(lambda s: s.merkle_children_many([(0, 0), *level]))
        assert mem == node

    @invariant()
    def same_vectors_logs_and_acks(self) -> None:
        mem, node = self.both(lambda s: s.version_vector())
        assert mem == node
        origins = sorted({*mem, self.mem.origin, ROGUE, *(p.origin for p in self.peers.values())})
        for origin in origins:
            mem, node = self.both(lambda s, o=origin: s.log_range(o, 0, 1000))
            assert [_key(e) for e in mem] == [_key(e) for e in node], origin
        for peer in PEERS:
            mem, node = self.both(lambda s, p=peer: s.acked(f"eu-{p}"))
            assert mem == node

    @invariant()
    def same_quarantine(self) -> None:
        assert [_record(q) for q in self.mem.quarantined()] == [_record(q) for q in self.node.quarantined()]
        assert self.mem.quarantine.stats() == self.node.stats()["quarantine"]

    def check_all(self) -> None:
        """Every invariant, for tests that drive the machine by hand."""
        self.same_states_and_digests()
        self.same_merkle_tree()
        self.same_vectors_logs_and_acks()
        self.same_quarantine()

    def teardown(self) -> None:
        try:
            self.run(self.node.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)
