"""Causality: dots, version vectors and causal contexts.

A *dot* ``(replica, counter)`` names one event: the ``counter``-th event
minted by ``replica`` (counters start at 1). A *causal context* is the set of
dots a state has seen. Most of it is a version vector (every dot up to ``n``
for each replica); what arrived out of order sits beside it. We keep both in
one shape: per replica, a sorted list of disjoint half-open ranges
``[lo0, hi0, lo1, hi1, ...]``. A compact context is the case of one range
starting at 1 per replica, and the "dots seen out of order" are the other
ranges. Compaction is automatic: adjacent ranges merge on insertion.

Reference: Almeida, Shoker, Baquero, "Delta state replicated data types"
(JPDC 2018), section 5 (causal contexts with a compact vector and a dot cloud).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["CausalContext", "Dot", "ranges_add", "ranges_remove"]

Dot = tuple[str, int]


def ranges_add(flat: list[int], lo: int, hi: int) -> None:
    """Add ``[lo, hi)`` to ``flat`` in place, merging overlapping and adjacent ranges."""
    if lo >= hi:
        return
    if flat:
        last = flat[-1]
        if lo >= last:
            # At or past the end, where new dots go: extend the last range, or start one after a gap.
            if lo == last:
                flat[-1] = hi
            else:
                flat += (lo, hi)
            return
        # Without a bisection, the cases every write meets: dots seen already at the end (a
        # document's context is one range) and an earlier dot an op covers (before its own).
        if lo >= flat[-2] and hi <= last:
            return
        first = flat[0]
        if hi < first:
            flat[0:0] = (lo, hi)
            return
        if hi == first:
            flat[0] = lo
            return
    i = bisect_left(flat, lo)
    j = bisect_right(flat, hi)
    if i & 1:  # lo falls inside (or at the end of) the range that starts at flat[i - 1]
        i -= 1
        lo = flat[i]
    if j & 1:  # hi falls inside (or at the start of) the range that ends at flat[j]
        hi = flat[j]
        j += 1
    flat[i:j] = (lo, hi)


def ranges_remove(flat: list[int], lo: int, hi: int) -> None:
    """Remove ``[lo, hi)`` from ``flat`` in place."""
    if lo >= hi:
        return
    if flat and lo >= flat[-2]:
        # Within or past the last range, without a bisection: where a delta's own newest dots are.
        start, end = flat[-2], flat[-1]
        if lo >= end:
            return
        if hi >= end:
            if lo == start:
                del flat[-2:]
            else:
                flat[-1] = lo
        elif lo == start:
            flat[-2] = hi
        else:
            flat[-1] = lo
            flat += (hi, end)
        return
    i = bisect_right(flat, lo)
    j = bisect_left(flat, hi)
    keep: list[int] = []
    if i & 1:  # lo is inside a range: keep its left part, if any
        if flat[i - 1] < lo:
            keep.append(lo)
        else:
            i -= 1
    if j & 1:  # hi is inside a range: keep its right part, if any
        if hi < flat[j]:
            keep.append(hi)
        else:
            j += 1
    flat[i:j] = keep


class CausalContext:
    """The set of dots a state has seen, per replica as sorted ranges.

    ``==`` is structural: two contexts are equal when they hold the same dots.
    """

    __slots__ = ("ranges",)

    def __init__(self, ranges: dict[str, list[int]] | None = None) -> None:
        self.ranges: dict[str, list[int]] = ranges if ranges is not None else {}

    # Public methods for queries.

    def __contains__(self, dot: Dot) -> bool:
        flat = self.ranges.get(dot[0])
        if flat is None:
            return False
        c = dot[1]
        # Past the end, in the last range, or before the first: every join asks, mostly these.
        if c >= flat[-1]:
            return False
        if c >= flat[-2]:
            return True
        return c >= flat[0] and bisect_right(flat, c) & 1 == 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CausalContext) and self.ranges == other.ranges

    def __repr__(self) -> str:
        return f"CausalContext({self.ranges!r})"

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def contains_context(self, other: CausalContext) -> bool:
        """True if every dot of ``other`` is in this context."""
        for replica, theirs in other.ranges.items():
            ours = self.ranges.get(replica)
            if ours is None:
                return False
            for k in range(0, len(theirs), 2):
                lo, hi = theirs[k], theirs[k + 1]
                i = bisect_right(ours, lo)
                if not (i & 1) or ours[i] < hi:
                    return False
        return True

    def vector(self) -> dict[str, int]:
        """The compact version vector: per replica, the highest counter seen with no gap below it."""
        return {r: flat[1] - 1 for r, flat in self.ranges.items() if flat[0] == 1}

    def max_counter(self, replica: str) -> int:
        flat = self.ranges.get(replica)
        return flat[-1] - 1 if flat else 0

    def next_dot(self, replica: str) -> Dot:
        """The next dot ``replica`` may mint: one past every counter of it seen so far."""
        return (replica, self.max_counter(replica) + 1)

    def dots(self) -> Iterator[Dot]:
        """Every dot, one by one: only for small contexts (deltas)."""
        for replica, flat in self.ranges.items():
            for k in range(0, len(flat), 2):
                for c in range(flat[k], flat[k + 1]):
                    yield (replica, c)

    def count(self) -> int:
        return sum(flat[k + 1] - flat[k] for flat in self.ranges.values() for k in range(0, len(flat), 2))

    # Public methods for updates (in place).

    def add(self, dot: Dot) -> None:
        replica, c = dot
        flat = self.ranges.get(replica)
        if flat is None:
            self.ranges[replica] = [c, c + 1]
        elif flat[-1] == c:  # the next dot of the last range: the usual mint
            flat[-1] = c + 1
        else:
            ranges_add(flat, c, c + 1)

    def add_range(self, replica: str, lo: int, hi: int) -> None:
        """Add the dots ``(replica, lo) .. (replica, hi - 1)``."""
        if lo >= hi:
            return
        flat = self.ranges.get(replica)
        if flat is None:
            self.ranges[replica] = [lo, hi]
        else:
            ranges_add(flat, lo, hi)

    def remove_range(self, replica: str, lo: int, hi: int) -> None:
        flat = self.ranges.get(replica)
        if flat is not None:
            ranges_remove(flat, lo, hi)
            if not flat:
                del self.ranges[replica]

    def add_all(self, dots: Iterable[Dot]) -> None:
        for dot in dots:
            self.add(dot)

    def join(self, other: CausalContext) -> None:
        """Union with ``other``, in place."""
        for replica, theirs in other.ranges.items():
            ours = self.ranges.get(replica)
            if ours is None:
                self.ranges[replica] = list(theirs)
            elif ours != theirs:
                for k in range(0, len(theirs), 2):
                    ranges_add(ours, theirs[k], theirs[k + 1])

    def copy(self) -> CausalContext:
        return CausalContext({r: list(flat) for r, flat in self.ranges.items()})

    # Encoding: a dict of replica -> flat ranges; canonical because dict keys are sorted on output.

    def to_json(self) -> dict[str, list[int]]:
        return self.ranges
