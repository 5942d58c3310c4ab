"""The I/O side of replication: what touches a socket.

* :mod:`sync.io.transport`: websocket links between regions (dial, reconnect
  with :func:`sync.backoff.backoff`'s delays, per-link limits).
* :mod:`sync.io.wanproxy`: a loopback TCP relay that emulates WAN latency,
  jitter and partitions between regions (``crdtstore up``, tests, benchmarks).

The accepting side of a peer link runs in the node's HTTP server, so it
lives with the API (:mod:`crdtstore.api.peerlink`). Nothing in the pure
modules of :mod:`sync` imports from here.
"""

from __future__ import annotations

__all__: list[str] = []
