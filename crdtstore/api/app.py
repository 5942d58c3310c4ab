"""Build the Starlette app of one region node.

The app serves a :class:`~crdtstore.region.Region`, which owns the node's
and replicator's start-up and shutdown (``/readyz`` turns true only once the
region started, so once storage is open). The app's lifespan starts the
region only if nothing else did: a test serving the app alone.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from crdtstore.api.auth import AuthPolicy
from crdtstore.api.context import ApiContext, NodeLike
from crdtstore.api.errors import exception_handlers
from crdtstore.api.limits import Limits
from crdtstore.api.metrics import ApiMetrics, MetricsMiddleware
from crdtstore.api.routes import peer_routes, routes
from crdtstore.region import Region

__all__ = ["build_app", "build_peer_app"]


def build_app(
    node: NodeLike | Region,
    *,
    auth: AuthPolicy,
    limits: Limits | None = None,
    replicator: Any = None,
    wan: Any = None,
    peer_links: bool = True,
    version_key: bytes | None = None,
) -> Starlette:
    """The ASGI app serving a region.

    Args:
        node: The region (not started: whoever runs it starts it), or its node alone (not
            started): it and ``replicator`` then make a region of their own.
        auth: Who may call what.
        limits: Request limits (defaults: :class:`~crdtstore.api.limits.Limits`).
        replicator: With a bare node, its :class:`crdtstore.replicator.Replicator`, or None
            for a node without peers (a region brings its own).
        wan: The emulated WAN of ``crdtstore up`` for the admin routes, or None.
        peer_links: Serve ``/v1/peer``; False when :func:`build_peer_app` serves peers on a listener
            of their own.
        version_key: The key version tokens are sealed with (:func:`crdtstore.api.versions.version_key`);
            None: a random one, so tokens stay valid only as long as this app.
    """
    region = node if isinstance(node, Region) else Region(node, replicator=replicator)
    ctx = ApiContext(
        node=region.node,
        auth=auth,
        limits=limits or Limits(),
        metrics=ApiMetrics(region.node.stats, replicator=region.replicator),
        region=region,
        replicator=region.replicator,
        wan=wan,
        version_key=secrets.token_bytes(32) if version_key is None else version_key,
    )
    region.on_start.append(lambda: _observe_commits(region.node, ctx.metrics))

    app = Starlette(
        routes=routes(ctx, peer_links=peer_links),
        middleware=[Middleware(MetricsMiddleware, metrics=ctx.metrics)],
        exception_handlers=exception_handlers(),
        lifespan=lambda app: region.lifespan(),
    )
    app.state.api = ctx
    return app


def build_peer_app(api: Starlette) -> Starlette:
    """The app of a listener for peer links alone, serving the node and replicator of ``api`` (a :func:`build_app`).

    It has no lifespan: the region of ``api`` starts and closes the node and
    replicator, and until it has, a peer that dials in is told to come back (close 4503).
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
