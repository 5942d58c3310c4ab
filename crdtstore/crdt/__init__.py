"""The pure CRDT types a document is built from. No I/O, no clock, no randomness."""

from __future__ import annotations

__all__: list[str] = []
