"""Test support shipped with the package: hypothesis strategies, models and state machines.

Importing these modules needs the ``test`` extra (hypothesis).
"""

from __future__ import annotations

__all__: list[str] = []
