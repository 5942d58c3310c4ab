"""How far a node may truncate its delta log: what every configured peer acknowledged.

Pure functions over version vectors; the adapters (the replicator, the
simulator) call them with the acknowledgements the node persisted, then
``ReplicaStore.truncate_log``. A peer that lacks truncated entries is
repaired by anti-entropy (``LogTruncated``, then ``SkipLog``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["min_acked", "pinning_peers", "truncation_vector"]


def min_acked(vectors: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Per origin, the lowest seq over ``vectors`` (an origin missing from one vector counts as 0)."""
    vectors = list(vectors)
    if not vectors:
        return {}
    origins = set().union(*vectors)
    out = {o: min(v.get(o, 0) for v in vectors) for o in origins}
    return {o: s for o, s in out.items() if s > 0}


def truncation_vector(
    our_vector: Mapping[str, int], acked: Mapping[str, Mapping[str, int]], peers: Iterable[str]
) -> dict[str, int]:
    """How far the node may truncate its log: what *every* configured peer acknowledged.

    Args:
        our_vector: The node's own contiguous vector (never truncate past it).
        acked: Persisted acknowledgements, by peer replica id.
        peers: Every peer the node is configured to replicate with, connected or not:
            a peer that never acknowledged holds every origin at 0.

    Returns:
        ``origin -> seq``: entries with seq <= it are held by every peer. A peer added
        later, or restored from an old copy, catches up through anti-entropy
        (``LogTruncated``).
    """
    floor = min_acked([acked.get(p, {}) for p in peers])
    return {o: min(s, our_vector.get(o, 0)) for o, s in floor.items() if min(s, our_vector.get(o, 0)) > 0}


def pinning_peers(members: Iterable[str], departed: Mapping[str, float], *, now: float, grace: float) -> list[str]:
    """The peers whose acknowledgements bound truncation: the ``peers`` of :func:`truncation_vector`.

    Every member pins, up or down: a member that is down (a pod restarting,
    a region cut off) is expected back, and catching up from the log costs
    only what it missed, where anti-entropy would compare whole trees. A peer
    that left membership (its name no longer resolves to it: the StatefulSet
    was scaled down) pins for ``grace`` seconds after it left, so a pod that
    is only being moved does not lose its place, and then no longer: nothing
    would otherwise ever release the log it held back. If it comes back later
    it catches up through anti-entropy (``LogTruncated``).

    Args:
        members: Peer replica ids in membership now.
        departed: Peer replica id -> when it left membership (the caller's clock).
        now: The same clock.
        grace: Seconds a departed peer still pins.
    """
    pinning = set(members)
    pinning.update(p for p, left in departed.items() if now - left < grace)
    return sorted(pinning)
