"""Link cuts (crdtstore/linkcut.py): only known names, nothing changes on a bad one."""

from __future__ import annotations

import pytest

from crdtstore.linkcut import MAX_KNOWN, LinkCuts, UnknownPeer


def test_cut_by_peer_or_region_and_heal_one_or_all() -> None:
    cuts = LinkCuts()
    cuts.seen("eu-1", "eu")
    cuts.seen("ap-1", "ap")
    cuts.cut(peer="eu-1")
    cuts.cut(region="ap")
    assert cuts.blocks("eu-1", "eu") and cuts.blocks("ap-2", "ap") and not cuts.blocks("us-1", "us")
    cuts.heal(region="ap")
    assert not cuts.blocks("ap-1", "ap") and cuts.blocks("eu-1", "eu")
    cuts.heal()
    assert cuts.as_json() == {"peers": [], "regions": []}


def test_unknown_names_change_nothing() -> None:
    cuts = LinkCuts()
    cuts.seen("eu-1", "eu")
    cuts.cut(peer="eu-1")
    for bad in ({"peer": "eu-2"}, {"region": "mars"}, {"peer": "eu-1", "region": "mars"}):
        with pytest.raises(UnknownPeer):
            cuts.cut(**bad)
        with pytest.raises(UnknownPeer):
            cuts.heal(**bad)
    assert cuts.as_json() == {"peers": ["eu-1"], "regions": []}


def test_known_peers_are_bounded() -> None:
    cuts = LinkCuts()
    for i in range(MAX_KNOWN + 10):
        cuts.seen(f"p-{i}", "eu")
    assert len(cuts.known) == MAX_KNOWN
    cuts.seen("p-0", "us")  # a known peer is still updated
    assert cuts.known["p-0"] == "us"
