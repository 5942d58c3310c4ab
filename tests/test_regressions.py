"""Counterexamples hypothesis shrank, frozen so they stay fixed."""

from __future__ import annotations

import pytest

from crdtstore.codec import decode_delta, encode_delta, encode_document
from crdtstore.document import Document
from crdtstore.errors import TypeMismatch


def test_index_delete_on_a_set_is_a_type_mismatch() -> None:
    # Shrunk from the replica machine: add(a, 0) then delete_range on a; the
    # planner let an index delete through on a set and execution crashed.
    doc = Document()
    doc.apply([{"op": "add", "path": ["a"], "value": 0}], replica="r0")
    before = encode_document(doc)
    with pytest.raises(TypeMismatch):
        doc.apply([{"op": "delete", "path": ["a"], "index": 0, "count": 1}], replica="r0")
    assert encode_document(doc) == before


def test_removing_a_set_ships_its_elements_to_other_replicas() -> None:
    # Shrunk from the replica machine: r0 adds 0 to set a, every replica gets
    # it, then r0 deletes a. The batch delta dropped the emptied element, so
    # the others never removed it and diverged.
    r0, r1 = Document(), Document()
    r1.join(decode_delta(encode_delta(r0.apply([{"op": "add", "path": ["a"], "value": 0}], replica="r0"))))
    removal = encode_delta(r0.apply([{"op": "delete", "path": ["a"]}], replica="r0"))
    r1.join(decode_delta(removal))
    assert r1.value() == r0.value() == {}
    assert encode_document(r1) == encode_document(r0)
