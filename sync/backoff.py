"""Reconnect delays: capped exponential backoff with jitter, as a pure generator.

The policy yields delays and never sleeps; the adapter does the sleeping
(the shape of ``websockets.client.backoff``). The random source is passed
in, so a test or the simulator replays the exact same delays from a seed.

The jitter is "full jitter" over the upper half of the step: a delay lies in
``[step * (1 - jitter), step]``. Keeping a floor under each delay stops a
flapping link from reconnecting in a tight loop, and the random part stops
N regions that lost the same peer from reconnecting in lockstep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["backoff"]


def backoff(
    *,
    initial: float = 0.05,
    factor: float = 2.0,
    cap: float = 2.0,
    jitter: float = 0.5,
    random: Callable[[], float],
    limit: int | None = None,
) -> Iterator[float]:
    """Yield reconnect delays in seconds: ``initial``, growing by ``factor`` up to ``cap``, jittered.

    Args:
        initial: The first step (seconds, > 0).
        factor: Growth per attempt (>= 1).
        cap: No delay exceeds this (>= initial).
        jitter: Fraction of each step that is random (0: none, 1: anywhere in ``[0, step]``).
        random: Uniform source in ``[0, 1)``, e.g. ``random.Random(seed).random``.
        limit: Stop after this many delays (None: never stop; the caller bounds its loop).

    Raises:
        ValueError: A parameter out of range (raised on the first ``next``).
    """
    if not initial > 0 or factor < 1 or cap < initial or not 0 <= jitter <= 1:
        raise ValueError("need initial > 0, factor >= 1, cap >= initial, 0 <= jitter <= 1")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    step = initial
    count = 0
    while limit is None or count < limit:
        r = random()
        # Clamp: a misbehaving source must not push a delay past the cap or below zero.
        r = min(max(r, 0.0), 1.0)
        yield step * (1.0 - jitter * r)
        count += 1
        step = min(step * factor, cap)
