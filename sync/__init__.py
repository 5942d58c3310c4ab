"""Replication between regions: a sans-I/O protocol and its websocket transport.

The geo-replication work fills this package: per-peer state machines for
delta gossip, catch-up and Merkle anti-entropy, driven both by the websocket
transport and by a seeded network simulator in the tests.
"""

from __future__ import annotations

__all__: list[str] = []
