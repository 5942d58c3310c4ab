"""Replication between regions: a sans-I/O protocol, and (in :mod:`sync.io`) its I/O.

The pure modules take messages, ticks and local deltas, and return messages
to send and effects to apply; nothing here touches a socket, a file or a
clock:

* :mod:`sync.protocol`: :class:`~sync.protocol.PeerProtocol`, one per peer
  link (handshake, sealed channel, timeouts), with its per-link state in
  :mod:`sync._outbound` (delta push), :mod:`sync._inbound` (in-order
  delivery, acks owed) and :mod:`sync._requests` (anti-entropy sessions,
  requests both ways); its limits in :mod:`sync.config`;
* :mod:`sync.messages` (the wire codec), :mod:`sync.channel` (handshake MAC,
  per-frame tags), :mod:`sync._state` (connection states), :mod:`sync.events`
  (what a protocol asks of its replica), :mod:`sync.types` (the log entry);
* :mod:`sync.dispatch`: the one table of event handlers every adapter runs,
  against a :class:`~sync.store.ReplicaStore` (:mod:`sync.memstore` in memory;
  :class:`crdtstore.node.Node` over LMDB), with the quarantine rules of
  :mod:`sync.quarantine`;
* :mod:`sync.antientropy` (Merkle comparison), :mod:`sync.quorum` (consistency
  levels), :mod:`sync.truncation` (how far a log may be truncated),
  :mod:`sync.backoff` (reconnect delays, as a generator);
* :mod:`sync.simulator`: a seeded network in virtual time that drives the
  same protocol and handlers as production.

The adapters are :mod:`sync.io.transport` (websocket links),
:mod:`crdtstore.api.peerlink` (the accepting side, in the HTTP server) and
:mod:`crdtstore.replicator` (tasks, timers and thread hops around each link).
"""

from __future__ import annotations

__all__: list[str] = []
