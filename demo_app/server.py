"""The demo's own small Starlette app: the page, its settings, and a read-only view of the cluster.

The page talks to its region directly over the live websocket (websockets
are not subject to CORS, and the point of the demo is that a window talks to
one region). The few HTTP calls it makes go through this app instead:

* ``GET /demo/config.json``: the regions' URLs and the read-write and read
  tokens (a local demo on loopback: see the README's "Demo" section).
* ``GET /demo/cluster?doc=ID``: per region, in one answer, whether it is up,
  its peers, Merkle root and the version vector of one document; and the
  WAN's cut links. The page polls it for its network panel.
* ``GET /demo/siblings?region=R&doc=ID``: one region's document with every
  register as its list of concurrent values (a title conflict).
* ``POST /demo/wan/{partition,isolate,heal}``: the WAN admin API, with the
  admin token added here, so the page never holds it; the caller shows the
  read-write token (a read-only window cannot cut links).

Why a proxy rather than CORS on the regions: the regions' API keeps no
cross-origin surface at all (nothing to switch off after a demo), the admin
token stays in this process, and ``crdtstore up``'s regions run unchanged.
Only these fixed paths are forwarded, to URLs from ``up``'s own plan.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["DemoSettings", "build_demo_app", "static_dir", "vector_of"]

_TIMEOUT = 2.0
_WAN_ACTIONS = ("partition", "isolate", "heal")
_MAX_BODY = 4096


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """What the demo server needs to know about its cluster.

    Attributes:
        regions: Region name -> the region's base URL (``http://127.0.0.1:PORT``), in failover order.
        token: A read-write token (handed to the page).
        read_token: A read-only token (handed to the page for a read-only window).
        admin_token: The admin token (kept here: it signs the WAN admin calls).
        wan: The WAN admin API's base URL, or None without an emulated WAN.
        latency: The WAN's one-way latency in seconds (shown in the page).
    """

    regions: Mapping[str, str]
    token: str
    read_token: str
    admin_token: str
    wan: str | None = None
    latency: float = 0.0


def static_dir() -> Path:
    """The page's files, shipped as package data."""
    return Path(str(resources.files("demo_app") / "static"))


def vector_of(version: str) -> dict[str, int]:
    """The version vector a sealed version token carries (``v2.`` + base64url JSON ranges + ``.`` + tag).

    A replica's entry is the end of its first range: what it holds without a gap (the display needs no more).
    """
    try:
        body = version.split(".")[1]
        ranges = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    if not isinstance(ranges, dict):
        return {}
    out: dict[str, int] = {}
    for replica, flat in ranges.items():
        if isinstance(flat, list) and len(flat) >= 2 and isinstance(flat[1], int) and flat[0] == 1:
            out[str(replica)] = flat[1]
    return out


def build_demo_app(settings: DemoSettings) -> Starlette:
    """The demo server's app (see the module docstring)."""
    client = httpx.AsyncClient(timeout=_TIMEOUT)
    auth = {"Authorization": f"Bearer {settings.token}"}

    async def config(request: Request) -> Response:
        return JSONResponse(
            {
                "regions": dict(settings.regions),
                "tokens": {"readwrite": settings.token, "read": settings.read_token},
                "wan": settings.wan is not None,
                "latency": settings.latency,
            }
        )

    async def region_state(name: str, url: str, doc: str | None) -> dict[str, Any]:
        state: dict[str, Any] = {"url": url, "up": False}
        try:
            links, merkle = await asyncio.gather(
                client.get(f"{url}/v1/admin/links", headers=auth), client.get(f"{url}/v1/admin/merkle", headers=auth)
            )
            state["up"] = links.status_code == 200
            if links.status_code == 200:
                body = links.json()
                state |= {"replica_id": body.get("replica_id"), "peers": body.get("peers", [])}
            if merkle.status_code == 200:
                state["root"] = merkle.json().get("root")
            if doc:
                answer = await client.get(f"{url}/v1/docs/{doc}", headers=auth)
                if answer.status_code == 200:
                    state["vector"] = vector_of(answer.json().get("version", ""))
                elif answer.status_code == 404:
                    state["vector"] = {}
        except (httpx.HTTPError, ValueError) as exc:
            state["error"] = type(exc).__name__
        return state

    async def cluster(request: Request) -> Response:
        doc = request.query_params.get("doc")
        if doc is not None and not _plain_id(doc):
            return JSONResponse({"error": "invalid_id"}, status_code=400)
        names = list(settings.regions)
        states = await asyncio.gather(*(region_state(n, settings.regions[n], doc) for n in names))
        answer: dict[str, Any] = {"regions": dict(zip(names, states, strict=True)), "cut": [], "wan": None}
        if settings.wan is not None:
            try:
                wan = await client.get(f"{settings.wan}/v1/admin/wan", headers=auth)
                if wan.status_code == 200:
                    body = wan.json()
                    answer["cut"] = body.get("cut", [])
                    answer["wan"] = body.get("links", {})
            except httpx.HTTPError as exc:
                answer["wan_error"] = type(exc).__name__
        return JSONResponse(answer)

    async def siblings(request: Request) -> Response:
        region = request.query_params.get("region", "")
        doc = request.query_params.get("doc", "")
        if region not in settings.regions or not _plain_id(doc):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        try:
            answer = await client.get(f"{settings.regions[region]}/v1/docs/{doc}?siblings=true", headers=auth)
        except httpx.HTTPError as exc:
            return JSONResponse({"error": "unreachable", "detail": type(exc).__name__}, status_code=502)
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")

    async def wan_action(request: Request) -> Response:
        action = request.path_params["action"]
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            return JSONResponse({"error": "forbidden", "message": "the read-write token cuts links"}, status_code=403)
        if settings.wan is None or action not in _WAN_ACTIONS:
            return JSONResponse({"error": "not_found"}, status_code=404)
        body = await request.body()
        if len(body) > _MAX_BODY:
            return JSONResponse({"error": "too_large"}, status_code=413)
        try:
            answer = await client.post(
                f"{settings.wan}/v1/admin/{action}",
                content=body or b"{}",
                headers={"Authorization": f"Bearer {settings.admin_token}", "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return JSONResponse({"error": "unreachable", "detail": type(exc).__name__}, status_code=502)
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")

    async def index(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse(f"/static/index.html?{query}" if query else "/static/index.html")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/demo/config.json", config, methods=["GET"]),
            Route("/demo/cluster", cluster, methods=["GET"]),
            Route("/demo/siblings", siblings, methods=["GET"]),
            Route("/demo/wan/{action}", wan_action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        ],
        lifespan=lifespan,
    )


def _plain_id(doc: str) -> bool:
    # The page's board ids: letters, digits and a few marks; nothing that could change the proxied path.
    return 0 < len(doc) <= 200 and all(c.isalnum() or c in ":-_." for c in doc) and ".." not in doc
