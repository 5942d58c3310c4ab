"""Peer links an operator cut on this node: by peer replica id or by region, held in memory.

A cut node closes its links to those peers, refuses their links once they
authenticate (close :data:`LINK_CUT`), and stops dialing them, until healed
(:class:`crdtstore.replicator.Replicator` enforces it; ``crdtstore/api/linkadmin.py``
serves it). This is ``crdtstore partition`` on a cluster with no emulated WAN
(Kubernetes): the links really drop, so quorum reads and writes that need
those peers answer 504, deltas wait in the log, and a heal catches up
through the usual ack and anti-entropy paths.

Only peers and regions this node has linked with since it started may be cut
(a peer's identity is known once it authenticates; anything else is a typo).
The cuts live in memory: a restart heals every link of the restarted node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["LINK_CUT", "MAX_KNOWN", "LinkCuts", "UnknownPeer"]

LINK_CUT = 4008
"""Close code of a link this node cut, or refused because it is cut."""

MAX_KNOWN = 1024
"""Peers remembered per run (each authenticated with the cluster secret; ids are never reused)."""


class UnknownPeer(ValueError):
    """A peer or region this node has not linked with since it started."""


class LinkCuts:
    """What is cut: peer replica ids and regions; and the peers seen, to check names against."""

    def __init__(self) -> None:
        self.peers: set[str] = set()
        self.regions: set[str] = set()
        self.known: dict[str, str] = {}  # peer replica id -> region, as each authenticated

    def seen(self, peer_id: str, region: str) -> None:
        """A peer authenticated (kept, up to :data:`MAX_KNOWN`)."""
        if peer_id in self.known or len(self.known) < MAX_KNOWN:
            self.known[peer_id] = region

    def blocks(self, peer_id: str, region: str) -> bool:
        """Whether a link to this peer is cut."""
        return peer_id in self.peers or region in self.regions

    def check(self, *, peer: str | None = None, region: str | None = None) -> None:
        """Raise :class:`UnknownPeer` unless ``peer`` (or ``region``) is one this node has linked with."""
        if peer is not None and peer not in self.known:
            raise UnknownPeer(f"no peer {peer[:80]!r} has linked with this node since it started")
        if region is not None and region not in self.known.values():
            raise UnknownPeer(f"no peer of region {region[:80]!r} has linked with this node since it started")

    def cut(self, *, peer: str | None = None, region: str | None = None) -> None:
        """Cut one peer or one region (checked first: nothing changes on an unknown name)."""
        self.check(peer=peer, region=region)
        if peer is not None:
            self.peers.add(peer)
        if region is not None:
            self.regions.add(region)

    def heal(self, *, peer: str | None = None, region: str | None = None) -> None:
        """Heal one peer or region; neither: every cut."""
        self.check(peer=peer, region=region)
        if peer is None and region is None:
            self.peers.clear()
            self.regions.clear()
        if peer is not None:
            self.peers.discard(peer)
        if region is not None:
            self.regions.discard(region)

    def as_json(self) -> dict[str, Any]:
        return {"peers": sorted(self.peers), "regions": sorted(self.regions)}

    def known_json(self) -> Mapping[str, str]:
        return dict(sorted(self.known.items()))
