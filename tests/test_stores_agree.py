"""The in-memory store and the LMDB node agree step for step (``crdtstore.testing.stores``)."""

from __future__ import annotations

from hypothesis import settings

from crdtstore.testing.stores import StoreComparison

# Each step hops to LMDB's threads: fewer runs than the pure machines, as many steps.
StoreComparison.TestCase.settings = settings(max_examples=max(10, settings.default.max_examples // 5))
TestStoresAgree = StoreComparison.TestCase


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
