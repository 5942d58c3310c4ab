"""Convergence under drops, duplicates and reordering, and a single replica against a plain model."""

from __future__ import annotations

from hypothesis import given, note
from hypothesis import strategies as st

from crdtstore.document import Document
from crdtstore.errors import OpError
from crdtstore.testing.model import AbstractOp, Model, concretize
from crdtstore.testing.replicas import ReplicaMachine
from crdtstore.testing.strategies import abstract_ops

TestReplicas = ReplicaMachine.TestCase


@given(st.lists(st.lists(abstract_ops(), min_size=1, max_size=3), max_size=25))
def test_single_replica_matches_plain_model(batches: list[list[AbstractOp]]) -> None:
    doc, model = Document(), Model()
    for batch in batches:
        ops = [concretize(op, doc.value()) for op in batch]
        try:
            doc.apply(ops, replica="solo")
        except OpError as exc:
            note(f"rejected {ops}: {exc}")
            continue
        model.apply(ops)
        assert doc.value() == model.value(), ops
