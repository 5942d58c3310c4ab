"""Encodings of deltas and documents pinned byte for byte: fast paths of the write path must not change them.

The expected bytes were written by the code before the write path's fast
paths (planner, delta joins, context ranges, the delta encoding's implied
dots); stored documents and peers of that version must keep reading them,
and equal states must keep giving equal digests across versions.
"""

from __future__ import annotations

from typing import Any

from crdtstore import codec
from crdtstore.document import Document

BATCHES: list[list[dict[str, Any]]] = [
    [{"op": "set", "path": ["title"], "value": "t"}, {"op": "increment", "path": ["n"]}],
    [{"op": "set", "path": ["title"], "value": "u"}],
    [{"op": "increment", "path": ["n"], "by": -3}],
    [{"op": "insert", "path": ["body"], "index": 0, "text": "hello"}],
    [{"op": "insert", "path": ["body"], "index": 2, "text": "X"}],
    [{"op": "delete", "path": ["body"], "index": 1, "count": 2}],
    [
        {"op": "set", "path": ["m", "k"], "value": [1, {"a": None}], "lww": True},
        {"op": "add", "path": ["s"], "value": 5},
    ],
    [{"op": "remove", "path": ["s"], "value": 5}, {"op": "enable", "path": ["f"]}],
    [{"op": "delete", "path": ["m"]}, {"op": "disable", "path": ["f"]}],
]

PINNED = [
    '["d",1,["us-2.b"],{},[["n",[[4,[[0,2,1]]]]],["title",[[2,[[0,1,"t"]]]]]]]',
    '["d",1,["eu-1.a","us-2.b"],{"1":[1,2]},[["title",[[2,[[0,1,"u"]]]]]]]',
    '["d",1,["us-2.b"],{"0":[2,3]},[["n",[[4,[[0,3,-2]]]]]]]',
    '["I","eu-1.a","body",3,-2,null,"hello"]',
    '["i","us-2.b","body",4,2,["eu-1.a",4],"X"]',
    '["d",1,["eu-1.a","us-2.b"],{"0":[8,9]},[["body",[[8,[[],[],[[0,4,5,[0,8]],[1,4,5,[0,8]]]]]]]]]',
    '["d",1,["us-2.b"],{},[["m",[[1,[[0,5],[["k",[[3,[[0,6,[106,[1,{"a":null}]]]]]]]]]]]],["s",[[5,[[0,7],[["5",[0,8]]]]]]]]]',
    '["d",1,["eu-1.a","us-2.b"],{"0":[9,10],"1":[8,9]},[["f",[[6,[[0,10],[0,11]]]]],["s",[[5,[[],[["5",[]]]]]]]]]',
    '["d",1,["eu-1.a","us-2.b"],{"0":[11,12],"1":[5,7,9,11]},[["f",[[6,[[],[]]]]],["m",[[1,[[],[["k",[[3,[]]]]]]]]]]]',
    '["D",1,["eu-1.a","us-2.b"],{"0":[1,12],"1":[1,11]},[["body",[[8,[[0,2],[0,3,-2,null,"h",0,0,0,1,1,1,-1,4,[0,4],1,0,0,-4,1,"llo"],[0,8,0,4,1,0,0,0,1,0,1,0],[],[]]]]],["f",[[6,[[0,10],[]]]]],["n",[[4,[[1,3,-2]]]]],["s",[[5,[[1,7],[]]]]],["title",[[2,[[0,1,"u"]]]]]]]',
]


def test_deltas_and_the_document_encode_as_pinned() -> None:
    doc = Document()
    got = []
    for i, ops in enumerate(BATCHES):
        delta = doc.apply(ops, replica="eu-1.a" if i % 2 else "us-2.b", now=100 + i)
        got.append(codec.encode_delta(delta).decode())
    got.append(codec.encode_document(doc).decode())
    assert got == PINNED


def test_pinned_deltas_decode_and_rebuild_the_document() -> None:
    # What a peer of the old version sent us: joined in order, it gives the pinned document, byte for byte.
    doc = Document()
    for raw in PINNED[:-1]:
        doc.join(codec.decode_delta(raw.encode()))
    assert codec.encode_document(doc) == PINNED[-1].encode()
    assert codec.encode_document(codec.decode_document(PINNED[-1].encode())) == PINNED[-1].encode()
