"""A hypothesis state machine of replicas exchanging deltas over a faulty network.

Rules make changes on random replicas and put their deltas in flight to
every other replica; the network drops, duplicates and delivers them in an
order hypothesis draws (never ``random``, so failures shrink and replay).
Invariants: a rejected batch changes nothing; a state merged into another
is below it afterwards. A full exchange, in drawn orders, must leave every
replica with identical bytes.
"""

from __future__ import annotations

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ..codec import decode_delta, decode_document, encode_delta, encode_document
from ..document import Document
from ..errors import OpError
from .model import AbstractOp, concretize
from .strategies import abstract_ops

__all__ = ["ReplicaMachine"]


class ReplicaMachine(RuleBasedStateMachine):
    replicas = 3

    def __init__(self) -> None:
        super().__init__()
        self.docs = [Document() for _ in range(self.replicas)]
        self.deltas: list[bytes] = []  # every delta ever made, for the final exchange
        self.in_flight: list[tuple[int, bytes]] = []  # (receiver, encoded delta)
        self.now = 0

    @rule(i=st.integers(0, replicas - 1), batch=st.lists(abstract_ops(), min_size=1, max_size=3))
    def update(self, i: int, batch: list[AbstractOp]) -> None:
        doc = self.docs[i]
        current = doc.value()
        ops = [concretize(op, current) for op in batch]
        before = encode_document(doc)
        self.now += 1
        try:
            delta = doc.apply(ops, replica=f"r{i}", now=self.now)
        except OpError as exc:
            note(f"r{i} rejected {ops}: {exc}")
            assert encode_document(doc) == before, "a rejected batch changed the document"
            return
        data = encode_delta(delta)
        note(f"r{i} applied {ops} -> {data!r}")
        assert encode_delta(decode_delta(data)) == data
        self.deltas.append(data)
        self.in_flight += [(j, data) for j in range(self.replicas) if j != i]
        # A delta joined into the state that already holds it changes nothing.
        doc.join(decode_delta(data))
        assert encode_document(doc) == encode_document(decode_document(encode_document(doc)))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        j, delta = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        note(f"deliver to r{j}")
        self.docs[j].join(decode_delta(delta))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.in_flight.append(self.in_flight[data.draw(st.integers(0, len(self.in_flight) - 1))])

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))

    @rule(a=st.integers(0, replicas - 1), b=st.integers(0, replicas - 1))
    def merge_state(self, a: int, b: int) -> None:
        note(f"merge r{a} into r{b}")
        sender = decode_document(encode_document(self.docs[a]))
        receiver = self.docs[b]
        receiver.merge(sender)
        after = encode_document(receiver)
        assert receiver.ctx.contains_context(sender.ctx)
        receiver.merge(sender)  # sender <= receiver: merging again changes nothing
        assert encode_document(receiver) == after

    @precondition(lambda self: self.deltas)
    @rule(data=st.data())
    def full_exchange(self, data: st.DataObject) -> None:
        """Every replica gets every delta, each in its own drawn order: all must be identical."""
        for doc in self.docs:
            for k in data.draw(st.permutations(range(len(self.deltas)))):
                doc.join(decode_delta(self.deltas[k]))
        encodings = {encode_document(doc) for doc in self.docs}
        assert len(encodings) == 1, f"replicas diverged: {[d.value() for d in self.docs]}"
        self.in_flight.clear()

    @invariant()
    def equal_contexts_mean_equal_states(self) -> None:
        """What lets a digest of the context stand for the document's (``Document.version_digest``)."""
        for a in self.docs:
            for b in self.docs:
                if a.ctx == b.ctx:
                    assert encode_document(a) == encode_document(b)

    def teardown(self) -> None:
        for doc in self.docs:
            for delta in self.deltas:
                doc.join(decode_delta(delta))
        assert len({encode_document(doc) for doc in self.docs}) == 1
        assert len({doc.digest() for doc in self.docs}) == 1
