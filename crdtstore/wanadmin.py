"""The admin API of an emulated WAN (:class:`sync.io.wanproxy.WanController`): cut, isolate and heal links.

``crdtstore up`` serves it from its own process, next to the WAN it runs
(the region nodes are processes of their own and hold no WAN). Routes, under
the same bearer tokens as the nodes (:mod:`crdtstore.api.auth`):

* ``GET /v1/admin/wan`` (``read``): regions, members (each replica's region), cut pairs, per-link counters.
* ``POST /v1/admin/partition`` ``{"a": A, "b": B, "mode": "close"|"hold"}`` (``admin``): cut every link
  between a replica of region A and one of region B.
* ``POST /v1/admin/isolate`` ``{"region": A, "mode": ...}`` (``admin``): cut A from every other region.
* ``POST /v1/admin/heal`` ``{"a": A, "b": B}``, or ``{}`` for every link (``admin``).

The two first paths are those of a node's own admin routes, so the CLI
speaks to either. Every answer of a change carries the cut pairs after it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crdtstore.api import limits as checks
from crdtstore.api.auth import AuthPolicy, Scope
from crdtstore.api.errors import ApiError, JSONResponse, exception_handlers
from sync.io.wanproxy import WanController

__all__ = ["build_wan_admin_app"]

_MAX_BODY = 4096
_MODES = ("close", "hold")


def build_wan_admin_app(wan: WanController, *, auth: AuthPolicy) -> Starlette:
    """The admin app of ``wan``; ``auth`` decides who may read (``read``) and change (``admin``) it."""

    def authorize(request: Request, needed: Scope) -> None:
        auth.authorize(request.headers.get("authorization"), None, needed)

    async def body(request: Request) -> dict[str, Any]:
        authorize(request, Scope.ADMIN)
        raw = await checks.read_body(request.headers.get("content-length"), request.stream(), _MAX_BODY)
        if not raw:
            return {}
        checks.check_content_type(request.headers.get("content-type"))
        data = checks.parse_json(raw)
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_request", "expected a JSON object")
        return data

    def region(data: dict[str, Any], key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str):
            raise ApiError(400, "invalid_request", f"{key} is a region name", {"regions": wan.regions})
        if value not in wan.regions:
            raise ApiError(404, "not_found", f"unknown region {value[:64]!r}", {"regions": wan.regions})
        return value

    def pair(data: dict[str, Any]) -> tuple[str, str]:
        a, b = region(data, "a"), region(data, "b")
        if a == b:
            raise ApiError(400, "invalid_request", "a region is not linked to itself")
        return a, b

    def mode(data: dict[str, Any]) -> Any:
        value = data.get("mode", "close")
        if value not in _MODES:
            raise ApiError(400, "invalid_request", "mode is close or hold", {"mode": str(value)[:40]})
        return value

    def cut() -> Response:
        return JSONResponse({"cut": [list(p) for p in wan.cut_pairs()]})

    async def show(request: Request) -> Response:
        authorize(request, Scope.READ)
        links = {name: dataclasses.asdict(stats) for name, stats in wan.stats().items()}
        cut = [list(p) for p in wan.cut_pairs()]
        return JSONResponse({"regions": wan.regions, "members": wan.members, "cut": cut, "links": links})

    async def partition(request: Request) -> Response:
        data = await body(request)
        a, b = pair(data)
        wan.partition(a, b, mode=mode(data))
        return cut()

    async def isolate(request: Request) -> Response:
        data = await body(request)
        wan.isolate(region(data, "region"), mode=mode(data))
        return cut()

    async def heal(request: Request) -> Response:
        data = await body(request)
        if "a" in data or "b" in data:
            wan.heal(*pair(data))
        else:
            wan.heal_all()
        return cut()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/admin/wan", show, methods=["GET"]),
            Route("/v1/admin/partition", partition, methods=["POST"]),
            Route("/v1/admin/isolate", isolate, methods=["POST"]),
            Route("/v1/admin/heal", heal, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers=exception_handlers(),
    )
