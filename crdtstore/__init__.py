"""crdtstore: a multi-master, geo-replicated datastore of JSON-like CRDT documents."""

from __future__ import annotations

from . import compiled

__all__ = ["__version__"]

__version__ = "0.1.0"

# Before any module of the core is imported: it runs compiled only when that matches its source.
compiled.install()
