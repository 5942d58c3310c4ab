"""Version tokens at the API's edge: sealed on the way out, opened on the way in.

Inside the node a version token is the bare causal context (``v1.``);
clients only see it sealed to its document (``v2.``, see
:mod:`crdtstore.version` for the format and why). This module holds the
key and the few places where tokens cross the edge: write and read
results, change-feed records, an op's ``version`` and a feed's ``since``.

The key: with a cluster secret, derived from it, so every region opens
every other region's tokens; without one (a lone node), 32 random bytes
kept in ``version-key`` (mode 0600) in the data directory, so tokens
outlive a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from crdtstore.api.errors import ApiError
from crdtstore.errors import InvalidVersion
from crdtstore.version import open_version, seal_version

__all__ = ["KEY_FILE", "open_op_versions", "open_since", "seal_record", "version_key"]

KEY_FILE = "version-key"
_KEY_BYTES = 32


def version_key(*, secret: bytes | None, data_dir: Path) -> bytes:
    """The key of a node's version tokens (module docstring)."""
    if secret is not None:
        return hmac.new(secret, b"crdtstore version tokens", hashlib.sha256).digest()
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return path.read_bytes()
        key = secrets.token_bytes(_KEY_BYTES)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
    if len(key) != _KEY_BYTES:
        raise ValueError(f"{path} must hold {_KEY_BYTES} bytes")
    return key


def open_op_versions(ops: list[dict[str, Any]], doc_id: str, key: bytes) -> None:
    """Replace, in place, every op's sealed ``version`` by the node's token; 400 ``invalid_version`` if one is not."""
    for index, op in enumerate(ops):
        if "version" in op:
            try:
                op["version"] = open_version(op["version"], doc_id, key)
            except InvalidVersion as exc:
                raise ApiError(400, "invalid_version", str(exc), {"op_index": index}) from None


def open_since(since: str | None, doc_id: str, key: bytes) -> str | None:
    """A feed's ``since``: a sealed version is opened; a feed cursor passes as it is (the node checks it)."""
    if since is None or not since.startswith(("v1.", "v2.")):
        return since
    try:
        return open_version(since, doc_id, key)
    except InvalidVersion as exc:
        raise ApiError(400, "invalid_version", str(exc), {"since": since[:300]}) from None


def seal_record(record: dict[str, Any], doc_id: str, key: bytes) -> dict[str, Any]:
    """A change-feed record with its version sealed (a resync of a deleted document has none)."""
    version = record.get("version")
    if isinstance(version, str):
        record = dict(record, version=seal_version(version, doc_id, key))
    return record
