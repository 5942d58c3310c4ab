"""What every handler of one app shares: the node, the policies and the metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crdtstore.api.auth import AuthPolicy
from crdtstore.api.limits import Limits
from crdtstore.api.metrics import ApiMetrics
from crdtstore.api.reads import ReadBodies

__all__ = ["ApiContext", "NodeLike"]


class NodeLike(Protocol):
    """The part of :class:`crdtstore.node.Node` the API calls (see crdtstore/node.py for the semantics)."""

    replica_id: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, doc_id: str, ops: list[dict[str, Any]]) -> Any: ...

    async def apply_many(self, items: Sequence[tuple[str, list[dict[str, Any]]]]) -> Sequence[Any]: ...

    async def read(self, doc_id: str, *, siblings: bool = False) -> Any: ...
    async def read_view(self, doc_id: str) -> bytes: ...

    async def delete(self, doc_id: str) -> Any: ...

    async def list(self, prefix: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]: ...

    def changes(self, doc_id: str, since: str | None) -> AsyncIterator[dict[str, Any]]: ...

    def watch_remote(
        self, doc_id: str, watcher: Callable[[tuple[str, int | None], bytes], None]
    ) -> Callable[[], None]: ...

    def stats(self) -> Mapping[str, Any]: ...


@dataclass(eq=False)
class ApiContext:
    """Per-app state, stored as ``app.state.api``.

    Attributes:
        node: The region node.
        auth: Who may call what.
        limits: Request limits.
        metrics: This app's Prometheus registry and series.
        region: The region serving the node (:class:`crdtstore.region.Region`): it owns start-up
            and shutdown, and says whether the node is ready.
        replicator: The node's :class:`crdtstore.replicator.Replicator`, or None (no peers, no quorum).
        wan: The emulated WAN of ``crdtstore up`` (:class:`sync.io.wanproxy.WanController`), or None.
        version_key: The key version tokens are sealed with (:mod:`crdtstore.version`).
        reads: The bodies of plain reads, kept with the views they were built from.
    """

    node: NodeLike
    auth: AuthPolicy
    limits: Limits
    metrics: ApiMetrics
    region: Any = None
    replicator: Any = None
    wan: Any = None
    version_key: bytes = b""
    reads: ReadBodies = field(default_factory=ReadBodies)

    @property
    def ready(self) -> bool:
        """True between the region's start and the beginning of its close."""
        return self.region is not None and bool(self.region.ready)
