"""Build the Starlette app of one region node.

The app owns the node's lifecycle: its lifespan starts the node before the
server accepts connections and closes it after the last request finished,
so ``/readyz`` turns true only once storage is open.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from crdtstore.api.auth import AuthPolicy
from crdtstore.api.context import ApiContext, NodeLike
from crdtstore.api.errors import exception_handlers
from crdtstore.api.limits import Limits
from crdtstore.api.metrics import ApiMetrics, MetricsMiddleware
from crdtstore.api.routes import peer_routes, routes

__all__ = ["build_app", "build_peer_app"]

logger = logging.getLogger("crdtstore.api")


def build_app(
    node: NodeLike,
    *,
    auth: AuthPolicy,
    limits: Limits | None = None,
    replicator: Any = None,
    wan: Any = None,
    peer_links: bool = True,
    version_key: bytes | None = None,
) -> Starlette:
    """The ASGI app serving ``node``.

    Args:
        node: The region node (not started; the app's lifespan starts and closes it).
        auth: Who may call what.
        limits: Request limits (defaults: :class:`~crdtstore.api.limits.Limits`).
        replicator: The node's :class:`crdtstore.replicator.Replicator` (started after the node,
            closed before it), or None for a node without peers.
        wan: The emulated WAN of ``crdtstore up`` for the admin routes, or None.
        peer_links: Serve ``/v1/peer``; False when :func:`build_peer_app` serves peers on a listener
            of their own.
        version_key: The key version tokens are sealed with (:func:`crdtstore.api.versions.version_key`);
            None: a random one, so tokens stay valid only as long as this app.
    """
    ctx = ApiContext(
        node=node,
        auth=auth,
        limits=limits or Limits(),
        metrics=ApiMetrics(node.stats),
        replicator=replicator,
        wan=wan,
        version_key=secrets.token_bytes(32) if version_key is None else version_key,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        _observe_commits(node, ctx.metrics)
        if replicator is not None:
            await replicator.start()
        ctx.ready = True
        logger.info("node ready", extra={"replica_id": node.replica_id})
        try:
            yield
        finally:
            ctx.ready = False
            if replicator is not None:
                await replicator.close()  # before the node: sessions call into it
            await node.close()
            logger.info("node closed", extra={"replica_id": node.replica_id})

    app = Starlette(
        routes=routes(ctx, peer_links=peer_links),
        middleware=[Middleware(MetricsMiddleware, metrics=ctx.metrics)],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.api = ctx
    return app


def build_peer_app(api: Starlette) -> Starlette:
    """The app of a listener for peer links alone, serving the node and replicator of ``api`` (a :func:`build_app`).

    It has no lifespan: ``api`` starts and closes the node and replicator,
    and until it has, a peer that dials in is told to come back (close 4503).
    """
    ctx: ApiContext = api.state.api
    app = Starlette(routes=peer_routes(ctx), exception_handlers=exception_handlers())
    app.state.api = ctx
    return app


def _observe_commits(node: NodeLike, metrics: ApiMetrics) -> None:
    """Feed the commit histograms live from the node's group-commit writer (called on its thread)."""
    writer = getattr(node, "writer", None)
    if writer is not None:
        writer.observers.append(metrics.observe_commit)
