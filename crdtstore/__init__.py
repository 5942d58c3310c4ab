"""crdtstore: a multi-master, geo-replicated datastore of JSON-like CRDT documents."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
