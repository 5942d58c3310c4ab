"""A hybrid logical clock (HLC), pure: wall time comes in as an argument.

Theory of operation
-------------------

Last-writer-wins registers need timestamps that (a) follow wall-clock time
closely, so "last" means what a person expects, and (b) never go backwards
on one replica and always exceed every timestamp the replica has seen, so
causally later writes win even when clocks are skewed. The HLC of Kulkarni,
Demirbas et al. ("Logical Physical Clocks", OPODIS 2014) gives both.

A timestamp is one non-negative ``int``: milliseconds since the epoch in the
high bits and a 16-bit logical counter in the low bits::

    ts = (millis << 16) | counter

Packing makes the HLC rules collapse into integer arithmetic: the next
timestamp is ``max(last + 1, remote + 1, pack(wall_ms, 0))``. When the
counter overflows, ``+ 1`` carries into the milliseconds, i.e. the clock
runs a millisecond ahead of the wall clock for a while, which is the
standard HLC behaviour under a burst of more than 65,536 events per ms.

The clock holds only ``last``. The node persists it with every write and
builds the clock from the stored value at start-up, so a restart with a wall
clock that went backwards still issues larger timestamps.
"""

from __future__ import annotations

__all__ = ["COUNTER_BITS", "ClockDriftError", "HybridClock", "pack", "unpack"]

COUNTER_BITS = 16
_COUNTER_MASK = (1 << COUNTER_BITS) - 1


class ClockDriftError(ValueError):
    """A remote timestamp is further ahead of our wall clock than allowed."""


def pack(millis: int, counter: int = 0) -> int:
    """Build a timestamp from milliseconds and a logical counter."""
    if millis < 0 or not 0 <= counter <= _COUNTER_MASK:
        raise ValueError(f"bad HLC parts: millis={millis}, counter={counter}")
    return (millis << COUNTER_BITS) | counter


def unpack(ts: int) -> tuple[int, int]:
    """Split a timestamp into ``(millis, counter)``."""
    if ts < 0:
        raise ValueError(f"bad HLC timestamp: {ts}")
    return ts >> COUNTER_BITS, ts & _COUNTER_MASK


def _wall_ts(wall: float) -> int:
    return pack(max(0, int(wall * 1000)), 0)


class HybridClock:
    """One replica's HLC. Not thread-safe: the single writer thread owns it.

    Args:
        last: The largest timestamp issued or seen so far (0 for a new replica).
        max_drift_ms: If set, :meth:`observe` refuses remote timestamps more
            than this far ahead of the local wall clock, so one peer with a
            broken clock cannot drag every replica's LWW timestamps into the future.
    """

    __slots__ = ("last", "max_drift_ms")

    def __init__(self, last: int = 0, *, max_drift_ms: int | None = None) -> None:
        if last < 0:
            raise ValueError(f"bad HLC timestamp: {last}")
        self.last = last
        self.max_drift_ms = max_drift_ms

    def now(self, wall: float) -> int:
        """A timestamp for a local event at wall time ``wall`` (seconds).

        Strictly greater than every timestamp issued or observed before.
        """
        self.last = max(self.last + 1, _wall_ts(wall))
        return self.last

    def observe(self, remote: int, wall: float) -> int:
        """Merge a timestamp received from elsewhere and tick.

        Returns:
            A timestamp strictly greater than ``remote`` and than every
            timestamp issued or observed before.

        Raises:
            ClockDriftError: If ``max_drift_ms`` is set and ``remote`` is too far ahead.
            ValueError: If ``remote`` is negative.
        """
        remote_ms, _ = unpack(remote)
        if self.max_drift_ms is not None and remote_ms - int(wall * 1000) > self.max_drift_ms:
            raise ClockDriftError(f"remote clock {remote_ms} ms is more than {self.max_drift_ms} ms ahead")
        self.last = max(self.last + 1, remote + 1, _wall_ts(wall))
        return self.last
