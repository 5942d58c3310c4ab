"""The lattice laws, run over every type embedded in a document.

States come from one shared history (three replicas making changes and
merging now and then), so every state is one a real system can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import decode_delta, decode_document, encode_delta, encode_document
from crdtstore.document import Document
from crdtstore.errors import OpError
from crdtstore.testing.model import concretize
from crdtstore.testing.strategies import TYPE_KINDS, abstract_ops

PATHS_FOR = {name: (("x",), ("y",)) if name != "map" else (("m", "a"), ("m", "b")) for name in TYPE_KINDS}


@dataclass
class History:
    docs: list[Document]
    deltas: list[bytes]


@st.composite
def histories(draw: st.DrawFn, type_name: str) -> History:
    docs = [Document() for _ in range(3)]
    deltas: list[bytes] = []
    ops = abstract_ops(TYPE_KINDS[type_name], PATHS_FOR[type_name])
    for step in range(draw(st.integers(1, 12))):
        i = draw(st.integers(0, 2))
        if draw(st.integers(0, 4)) == 0:
            docs[i].merge(copy(docs[draw(st.integers(0, 2))]))
            continue
        op = concretize(draw(ops), docs[i].value())
        try:
            deltas.append(encode_delta(docs[i].apply([op], replica=f"r{i}", now=step)))
        except OpError:
            pass
    return History(docs, deltas)


def copy(doc: Document) -> Document:
    return decode_document(encode_document(doc))


def joined(a: Document, b: Document) -> bytes:
    out = copy(a)
    out.merge(b)
    return encode_document(out)


TYPES = sorted(TYPE_KINDS)


@pytest.mark.parametrize("type_name", TYPES)
@given(data=st.data())
def test_join_is_commutative(type_name: str, data: st.DataObject) -> None:
    a, b, _ = data.draw(histories(type_name)).docs
    assert joined(a, b) == joined(b, a)


@pytest.mark.parametrize("type_name", TYPES)
@given(data=st.data())
def test_join_is_associative(type_name: str, data: st.DataObject) -> None:
    a, b, c = data.draw(histories(type_name)).docs
    ab = copy(a)
    ab.merge(b)
    bc = copy(b)
    bc.merge(c)
    assert joined(ab, c) == joined(a, bc)


@pytest.mark.parametrize("type_name", TYPES)
@given(data=st.data())
def test_join_is_idempotent(type_name: str, data: st.DataObject) -> None:
    a = data.draw(histories(type_name)).docs[0]
    assert joined(a, a) == encode_document(a)


@pytest.mark.parametrize("type_name", TYPES)
@given(data=st.data())
def test_delta_already_held_changes_nothing(type_name: str, data: st.DataObject) -> None:
    history = data.draw(histories(type_name))
    a = history.docs[0]
    a.merge(history.docs[1])
    a.merge(history.docs[2])
    before = encode_document(a)
    for delta in history.deltas:
        a.join(decode_delta(delta))
    assert encode_document(a) == before


@pytest.mark.parametrize("type_name", TYPES)
@given(data=st.data())
def test_encoding_roundtrips(type_name: str, data: st.DataObject) -> None:
    history = data.draw(histories(type_name))
    for doc in history.docs:
        encoded = encode_document(doc)
        again = decode_document(encoded)
        assert encode_document(again) == encoded
        assert again.value() == doc.value()
    for delta in history.deltas:
        assert encode_delta(decode_delta(delta)) == delta


@pytest.mark.parametrize("type_name", TYPES)
@given(data=st.data())
def test_same_deltas_in_any_order_give_identical_bytes(type_name: str, data: st.DataObject) -> None:
    deltas = data.draw(histories(type_name)).deltas
    results = set()
    for _ in range(2):
        doc = Document()
        for k in data.draw(st.permutations(range(len(deltas)))):
            doc.join(decode_delta(deltas[k]))
        results.add(encode_document(doc))
    assert len(results) == 1


@pytest.mark.parametrize("type_name", TYPES)
@given(data=st.data())
def test_delta_join_equals_state_merge(type_name: str, data: st.DataObject) -> None:
    """Joining every delta a replica made gives what merging its state gives."""
    history = data.draw(histories(type_name))
    via_deltas = Document()
    via_states = Document()
    for delta in history.deltas:
        via_deltas.join(decode_delta(delta))
    for doc in history.docs:
        via_states.merge(copy(doc))
    assert encode_document(via_deltas) == encode_document(via_states)
