"""Cutting and healing this node's peer links (``crdtstore partition``/``isolate``/``heal`` against nodes).

Routes (the state and its rules are :mod:`crdtstore.linkcut`'s; the replicator enforces them):

* ``GET /v1/admin/links/cut`` (``read``): this node's region, what is cut, and
  the peers it has linked with since it started (``peer id -> region``).
* ``POST /v1/admin/links/cut`` ``{"peer": ID}`` or ``{"region": R}`` (``admin``):
  close the links to that peer or region, refuse them and stop dialing them.
* ``POST /v1/admin/links/heal`` ``{"peer": ID}``, ``{"region": R}``, or ``{}``
  for every cut (``admin``).

A body that is not one of those (both keys, another key, a name that is not
a string, a peer or region never linked with) is a 400 that changes nothing.
Cuts live in memory: restarting the node heals them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from crdtstore.api import limits as checks
from crdtstore.api.auth import Scope
from crdtstore.api.context import ApiContext
from crdtstore.api.errors import ApiError, JSONResponse
from crdtstore.linkcut import UnknownPeer

__all__ = ["cut_links", "heal_links", "show_cuts"]

_MAX_BODY = 4096
_KEYS = ("peer", "region")


def _authorize(ctx: ApiContext, request: Request, needed: Scope) -> Any:
    ctx.auth.authorize(request.headers.get("authorization"), None, needed)
    if ctx.replicator is None:
        raise ApiError(404, "not_found", "this node has no peer links (no cluster secret or peers)")
    return ctx.replicator


async def _target(request: Request, *, allow_empty: bool) -> dict[str, str]:
    """``{"peer": ID}`` or ``{"region": R}`` (``{}`` where allowed), checked before anything changes."""
    raw = await checks.read_body(request.headers.get("content-length"), request.stream(), _MAX_BODY)
    if not raw and allow_empty:
        return {}
    checks.check_content_type(request.headers.get("content-type"))
    data = checks.parse_json(raw)
    expected = 'expected {"peer": ID} or {"region": REGION}' + (", or {} for every cut" if allow_empty else "")
    if not isinstance(data, dict) or set(data) - set(_KEYS) or len(data) > 1 or (not data and not allow_empty):
        raise ApiError(400, "invalid_request", expected)
    for key, value in data.items():
        if not isinstance(value, str) or not 0 < len(value) <= 256:
            raise ApiError(400, "invalid_request", f"{key} is a non-empty string", {key: str(value)[:80]})
    return data


def _answer(replicator: Any) -> Response:
    return JSONResponse(
        {"region": replicator.region, "cut": replicator.cuts.as_json(), "known": replicator.cuts.known_json()}
    )


async def show_cuts(ctx: ApiContext, request: Request) -> Response:
    return _answer(_authorize(ctx, request, Scope.READ))


async def cut_links(ctx: ApiContext, request: Request) -> Response:
    replicator = _authorize(ctx, request, Scope.ADMIN)
    target = await _target(request, allow_empty=False)
    try:
        await replicator.cut(**target)
    except UnknownPeer as exc:
        raise ApiError(400, "unknown_peer", str(exc), {"known": replicator.cuts.known_json()}) from None
    return _answer(replicator)


async def heal_links(ctx: ApiContext, request: Request) -> Response:
    replicator = _authorize(ctx, request, Scope.ADMIN)
    target = await _target(request, allow_empty=True)
    try:
        replicator.heal(**target)
    except UnknownPeer as exc:
        raise ApiError(400, "unknown_peer", str(exc), {"known": replicator.cuts.known_json()}) from None
    return _answer(replicator)
