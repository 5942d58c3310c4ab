"""The in-memory store and the LMDB node agree step for step (``crdtstore.testing.stores``)."""

from __future__ import annotations

from typing import Any

from hypothesis import settings

from crdtstore.testing.stores import ROGUE, StoreComparison
from sync.quarantine import NO_ID, Rejected
from sync.types import LogEntry

# Each step hops to LMDB's threads: fewer runs than the pure machines, as many steps.
StoreComparison.TestCase.settings = settings(max_examples=max(10, settings.default.max_examples // 5))
TestStoresAgree = StoreComparison.TestCase
INC = [{"op": "increment", "path": ["n"]}]


def test_regression_an_ack_of_zero_is_stored_by_both() -> None:
    # Shrunk: the node stored {origin: 0} for a peer, the memory store stored nothing.
    state = StoreComparison()
    try:
        state.skip_log(peer="p", upto=1)
        vector = state.run(state.node.version_vector())
        state.both(lambda s: s.set_acked("eu-p", {o: 0 for o in vector}))
        state.same_vectors_logs_and_acks()
    finally:
        state.teardown()


def peer_write(state: StoreComparison, peer: str, doc: str, ops: list[dict[str, Any]]) -> LogEntry:
    """A peer's write, in flight (the rule without its ``note``, which works inside a hypothesis test only)."""
    entry = state.peers[peer].apply(doc, ops)
    state.sent.append(entry)
    return entry


def test_quarantine_both_ways_bad_delta_then_held_good_delta_then_a_state_releases() -> None:
    # The path the rules exist for, walked on purpose (hypothesis finds it too, not every run).
    state = StoreComparison()
    try:
        first = peer_write(state, "p", "d0", INC)
        second = peer_write(state, "p", "d0", INC)
        junk = LogEntry(ROGUE, 1, "d0", b"not a delta")
        for store in state.stores:
            assert state.run(store.apply_remote_many([first, junk])) == [True, True]
            assert state.run(store.apply_remote_many([second])) == [True]  # held back, not joined
        state.check_all()
        [record] = state.node.quarantined()
        assert (record.doc_id, record.origin, record.seq, record.failures) == ("d0", ROGUE, 1, 2)
        assert record.reason.startswith("DecodeError")
        assert state.mem.docs["d0"].value() == {"n": 1}
        assert [e.delta for e in state.run(state.node.log_range(first.origin, 0, 10))] == [first.delta, b""]
        # A state of the peer's releases the document in both; later deltas join again.
        peer_state = state.peers["p"].read_state("d0") or b""
        for store in state.stores:
            assert state.run(store.merge_states([("d0", peer_state)])) == [True]
        state.check_all()
        assert state.mem.quarantined() == [] and state.mem.docs["d0"].value() == {"n": 2}
        assert state.node.stats()["quarantine"]["repaired"] == 1
        third = peer_write(state, "p", "d0", INC)
        for store in state.stores:
            assert state.run(store.apply_remote_many([third])) == [True]
        state.check_all()
        assert state.mem.docs["d0"].value() == {"n": 3}
    finally:
        state.teardown()


def test_bad_ids_are_ignored_by_both_and_logged_as_placeholders_without_an_id() -> None:
    state = StoreComparison()
    try:
        good = peer_write(state, "q", "d1", [{"op": "set", "path": ["k"], "value": 1}])
        for store in state.stores:
            assert state.run(store.apply_remote_many([good._replace(doc_id="a/b")])) == [True]
            out = state.run(store.merge_states([("..", state.peers["q"].read_state("d1") or b"")]))
            assert [type(r) for r in out] == [Rejected]
        state.check_all()
        assert state.run(state.node.log_range(good.origin, 0, 10))[0].doc_id == NO_ID
        assert state.node.quarantined() == [] and state.node.stats()["quarantine"]["ids_rejected"] == 2
        assert state.run(state.node.read_states(["d1"])) == [None]
    finally:
        state.teardown()
