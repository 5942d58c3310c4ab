"""HTTP and websocket handlers: parse, call the node, serialize.

No business logic lives here: validation rules are in :mod:`.limits`, who
may call what in :mod:`.auth`, error statuses in :mod:`.errors`. A handler
only raises; the app's exception handlers write the error body.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from crdtstore.api import limits as checks
from crdtstore.api import versions
from crdtstore.api.auth import Scope
from crdtstore.api.batch import apply_batches, parse_batch
from crdtstore.api.connections import EXTENSION, mark_authenticated
from crdtstore.api.context import ApiContext
from crdtstore.api.errors import ApiError, JSONResponse, error_response, status_and_body
from crdtstore.api.linkadmin import cut_links, heal_links, show_cuts
from crdtstore.api.live import live_channel
from crdtstore.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from crdtstore.api.openapi import openapi_json
from crdtstore.api.peerlink import ServerPeerConnection
from crdtstore.config import MAX_QUORUM_TIMEOUT, quorum_timeout
from crdtstore.version import seal_version
from sync.quorum import Level, QuorumOutcome

__all__ = ["routes", "wait_for_write"]

logger = logging.getLogger("crdtstore.api")


# Private helpers shared by handlers.


def _authorize(ctx: ApiContext, conn: HTTPConnection, needed: Scope, *, allow_query_token: bool = False) -> None:
    """Check the request's token against ``needed`` (401 or 403 otherwise), on every request.

    Where the listener keeps state per connection (:mod:`crdtstore.api.connections`), a header
    that checked out before on the same connection is compared, in constant time, instead of
    hashed again (:meth:`~crdtstore.api.auth.AuthPolicy.recall`).
    """
    scope = conn.scope
    authorization = _raw_header(scope, b"authorization")
    connection = None
    if authorization is not None:
        connection = scope.get("extensions", {}).get(EXTENSION)
        if connection is not None and ctx.auth.recall(connection, authorization, needed):
            return  # marked authenticated when it first checked out
    query_token = conn.query_params.get("token") if allow_query_token else None
    header = authorization.decode("latin-1") if authorization is not None else None
    granted = ctx.auth.authorize(header, query_token, needed)
    if authorization is not None or query_token is not None:
        # A valid token (anonymous access does not count): the listener keeps this connection out of the
        # unauthenticated cap (crdtstore.api.connections).
        mark_authenticated(scope)
    if authorization is not None and connection is not None:
        ctx.auth.remember(connection, authorization, granted)


def _raw_header(scope: Any, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case, as the ASGI server gives names), as sent.

    On the hot routes, instead of ``conn.headers``: building Starlette's
    Headers object costs about as much as reading a small document.
    """
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None


def _header(conn: HTTPConnection, name: bytes) -> str | None:
    """:func:`_raw_header` decoded (latin-1, as HTTP header values are)."""
    value = _raw_header(conn.scope, name)
    return value.decode("latin-1") if value is not None else None


def _doc_id(conn: HTTPConnection, ctx: ApiContext) -> str:
    return checks.check_doc_id(conn.path_params["id"], ctx.limits, conn.scope.get("raw_path"))


def _read_id(request: Request, ctx: ApiContext) -> str:
    """:func:`_doc_id`, skipped for an id a kept read body was built for: it passed the same rule then.

    Not for an id holding U+FFFD, whose check depends on the raw path too.
    """
    doc_id: str = request.path_params["id"]
    if doc_id in ctx.reads and "\ufffd" not in doc_id:
        return doc_id
    return checks.check_doc_id(doc_id, ctx.limits, request.scope.get("raw_path"))


def _query(request: Request, name: str) -> str | None:
    # Most requests carry no query string: skip building Starlette's QueryParams for them.
    if not request.scope["query_string"]:
        return None
    return request.query_params.get(name)


def _known_params(request: Request, known: frozenset[str]) -> None:
    """400 for a query parameter the route does not take, or one given twice: neither should pass silently
    (a typo such as ``limt``; ``prefix=a&prefix=b``, of which a proxy and this server might read different ones).
    """
    names = [name for name, _ in request.query_params.multi_items()]
    unknown = sorted(set(names) - known)
    if unknown:
        detail = {"parameters": [u[:40] for u in unknown[:10]]}
        raise ApiError(400, "invalid_request", "unknown query parameters", detail)
    if len(names) != len(set(names)):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ApiError(400, "invalid_request", "a query parameter is given more than once", {"parameters": repeated})


_READ_PARAMS = frozenset({"siblings", "r", "timeout"})
_WRITE_PARAMS = frozenset({"w", "timeout"})
_LIST_PARAMS = frozenset({"prefix", "limit", "cursor"})


def _flag(request: Request, name: str) -> bool:
    raw = _query(request, name)
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1", ""):
        return True
    raise ApiError(400, "invalid_request", f"{name} must be true or false", {name: raw[:40]})


def _consistency(request: Request, name: str) -> Level:
    raw = _query(request, name)
    if raw is None or raw == "":
        return Level.ONE
    try:
        return Level(raw)
    except ValueError:
        allowed = ", ".join(c.value for c in Level)
        raise ApiError(400, "invalid_request", f"{name} must be one of {allowed}", {name: raw[:40]}) from None


def _timeout(request: Request) -> float | None:
    """``?timeout=SECONDS`` for a quorum wait (None: the node's ``quorum_timeout``); bounded like the setting."""
    raw = _query(request, "timeout")
    if raw is None:
        return None
    try:
        return quorum_timeout(raw)
    except ValueError:
        detail = {"timeout": raw[:40], "max": MAX_QUORUM_TIMEOUT}
        raise ApiError(
            400, "invalid_request", f"timeout is seconds, more than 0 and at most {MAX_QUORUM_TIMEOUT:g}", detail
        ) from None


def _replicator_for(ctx: ApiContext, level: Level) -> Any:
    if level is Level.ONE or ctx.replicator is None:
        # This replica answers alone (without peers it is the whole cluster).
        return None
    return ctx.replicator


def _quorum_detail(outcome: QuorumOutcome) -> dict[str, Any]:
    return {"needed": outcome.needed, "reached": outcome.reached, "replicas": list(outcome.replicas)}


# Public handlers: documents.


async def apply_batch(ctx: ApiContext, request: Request) -> bytes:
    _authorize(ctx, request, Scope.READWRITE)
    doc_id = _doc_id(request, ctx)
    checks.check_content_type(_header(request, b"content-type"))
    body = await checks.read_body(_header(request, b"content-length"), request.stream(), ctx.limits.max_body_bytes)
    ops = checks.check_batch(checks.parse_json(body), ctx.limits, body)
    versions.open_op_versions(ops, doc_id, ctx.version_key)
    if request.scope["query_string"]:
        _known_params(request, _WRITE_PARAMS)
    level = _consistency(request, "w")
    timeout = _timeout(request)  # checked before the write: a bad value changes nothing
    result = await ctx.node.apply(doc_id, ops)
    version = seal_version(result.version, doc_id, ctx.version_key)
    await wait_for_write(ctx, doc_id, level, result, version, timeout=timeout)
    return orjson.dumps({"version": version, "created": result.created})


async def apply_many(ctx: ApiContext, request: Request) -> bytes:
    """``POST /v1/batch``: many documents' op batches, answered per document (see :mod:`.batch`)."""
    _authorize(ctx, request, Scope.READWRITE)
    checks.check_content_type(_header(request, b"content-type"))
    body = await checks.read_body(_header(request, b"content-length"), request.stream(), ctx.limits.max_body_bytes)
    # An integer past int64 is one document's invalid_value, not the whole request's.
    docs = parse_batch(checks.parse_json(body, refuse_big_ints=False), ctx.limits, ctx.version_key)
    if request.scope["query_string"]:
        _known_params(request, _WRITE_PARAMS)
    level = _consistency(request, "w")
    timeout = _timeout(request)  # checked before any write: a bad value changes nothing
    results = await apply_batches(ctx, docs, level=level, timeout=timeout, wait=wait_for_write)
    return orjson.dumps({"results": results})


async def wait_for_write(
    ctx: ApiContext, doc_id: str, level: Level, result: Any, version: str, *, timeout: float | None = None
) -> QuorumOutcome | None:
    """Wait until the committed write ``result`` is held at ``level`` (POST and the live channel).

    ``timeout`` is the request's own (``?timeout=``), or None for the node's ``quorum_timeout``.

    Returns:
        What the wait reached (the live channel's ack reports it), or None when this replica
        answers alone (``w=one``, or no peers: it is then the whole cluster).

    Raises:
        ApiError: 504 ``quorum_timeout`` (the write is durable here and keeps replicating).
    """
    replicator = _replicator_for(ctx, level)
    if replicator is None:
        return None
    # Wait for exactly this write, not for whatever our origin logged since.
    outcome: QuorumOutcome = await replicator.wait_for_acks(
        doc_id, level, origin=result.origin or None, seq=result.seq or None, timeout=timeout
    )
    if not outcome.ok:
        # The write is durable here and will still replicate; the caller learns how far it got.
        detail = _quorum_detail(outcome) | {"version": version, "durable_locally": True}
        raise ApiError(504, "quorum_timeout", f"write acknowledged by {outcome.reached} of {outcome.needed}", detail)
    return outcome


async def read_doc(ctx: ApiContext, request: Request) -> Response | bytes:
    _authorize(ctx, request, Scope.READ)
    doc_id = _read_id(request, ctx)
    if request.scope["query_string"]:  # most reads have none: one replica, no siblings
        _known_params(request, _READ_PARAMS)
        with_siblings = _flag(request, "siblings")
        level = _consistency(request, "r")
        timeout = _timeout(request)
        replicator = _replicator_for(ctx, level)
        if replicator is not None:
            # Gathers peers' states and joins them here first (read repair), so the local read below sees them.
            outcome = await replicator.read(doc_id, level, timeout=timeout)
            if not outcome.ok:
                detail = _quorum_detail(outcome)
                raise ApiError(504, "quorum_timeout", f"read reached {outcome.reached} of {outcome.needed}", detail)
        if with_siblings:
            result = await ctx.node.read(doc_id, siblings=True)
            version = seal_version(result.version, doc_id, ctx.version_key)
            body = {"id": doc_id, "value": result.value, "version": version, "siblings": result.siblings}
            return JSONResponse(body)
    # The stored view's value goes out as it is (no parse and re-serialization), in the body built
    # before from the same view where there is one (crdtstore.api.reads).
    return ctx.reads.body(doc_id, await ctx.node.read_view(doc_id), ctx.version_key)


async def delete_doc(ctx: ApiContext, request: Request) -> Response:
    _authorize(ctx, request, Scope.READWRITE)
    doc_id = _doc_id(request, ctx)
    await ctx.node.delete(doc_id)
    return Response(status_code=204)


async def list_docs(ctx: ApiContext, request: Request) -> Response:
    _authorize(ctx, request, Scope.READ)
    params = request.query_params
    _known_params(request, _LIST_PARAMS)
    raw_query = request.scope["query_string"]
    prefix = checks.check_prefix(params.get("prefix", ""), ctx.limits, raw_query)
    limit = checks.parse_page_limit(params.get("limit"), ctx.limits)
    cursor = checks.check_cursor(params.get("cursor"), ctx.limits, raw_query)
    ids, next_cursor = await ctx.node.list(prefix, cursor, limit)
    return JSONResponse({"ids": ids, "cursor": next_cursor})


async def changes_feed(ctx: ApiContext, websocket: WebSocket) -> None:
    """Stream a document's change records as JSON text frames until the client leaves.

    Errors found before the handshake completes (auth, id, ``since``) are
    sent as an HTTP denial response with the usual JSON body when the server
    supports that ASGI extension (uvicorn does); otherwise, and for errors
    after the handshake, the socket closes with code ``4000 + HTTP status``
    and the error code as the reason.
    """
    try:
        _authorize(ctx, websocket, Scope.READ, allow_query_token=True)
        doc_id = _doc_id(websocket, ctx)
        since = versions.open_since(websocket.query_params.get("since") or None, doc_id, ctx.version_key)
        feed = ctx.node.changes(doc_id, since)
    except Exception as exc:
        await _deny(websocket, exc)
        return
    await websocket.accept()
    session = _FeedSession(websocket, feed, doc_id, ctx.version_key)
    try:
        await session.run()
    finally:
        aclose = getattr(feed, "aclose", None)
        if aclose is not None:  # release the node's subscription now, not at garbage collection
            await aclose()
    if session.client_left:
        return
    if session.error is None:
        # The feed ended because the node is closing: "going away", so clients back off rather than retry at once.
        await _close_quietly(websocket, 1001, "going away")
    elif not isinstance(session.error, WebSocketDisconnect | OSError):
        status, body, _ = status_and_body(session.error)
        if status >= 500 and status != 503:
            logger.error("change feed failed", exc_info=session.error)
        await _close_quietly(websocket, 4000 + status, body["error"])


class _FeedSession:
    """Two tasks: the relay sends records, the watcher receives.

    A client that leaves while the feed is idle is only noticed by
    receiving; whichever task ends first cancels the other. Each task keeps
    its own outcome instead of raising, so nothing surfaces wrapped in an
    ExceptionGroup and the handler maps the error to a close code.
    """

    def __init__(self, websocket: WebSocket, feed: AsyncIterator[dict[str, Any]], doc_id: str, key: bytes) -> None:
        self.websocket = websocket
        self.feed = feed
        self.doc_id = doc_id
        self.key = key
        self.client_left = False
        self.error: Exception | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._relay, tg.cancel_scope)
            tg.start_soon(self._watch, tg.cancel_scope)

    async def _relay(self, scope: anyio.CancelScope) -> None:
        try:
            async for record in self.feed:
                record = versions.seal_record(record, self.doc_id, self.key)
                await self.websocket.send_text(orjson.dumps(record).decode())
        except Exception as exc:
            self.error = exc
        finally:
            scope.cancel()

    async def _watch(self, scope: anyio.CancelScope) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.client_left = True
                scope.cancel()
                return


async def _deny(websocket: WebSocket, exc: Exception) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(exc))
    else:
        status, body, _ = status_and_body(exc)
        await websocket.close(code=4000 + status, reason=body["error"])


async def _close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await websocket.close(code=code, reason=reason)
    except (RuntimeError, WebSocketDisconnect, OSError):  # the peer is already gone
        pass


# Public handlers: replication.


async def peer_link(ctx: ApiContext, websocket: WebSocket) -> None:
    """A peer region's replication link: binary protocol messages (``sync.protocol``).

    Peers authenticate inside the protocol (HMAC over nonces with the
    cluster secret), so the upgrade itself carries no bearer token; a node
    without a replicator refuses with close code 4404.
    """
    if ctx.replicator is None or not ctx.ready:
        await websocket.close(code=4404 if ctx.replicator is None else 4503, reason="no replication here")
        return
    await websocket.accept()
    await ctx.replicator.accept(ServerPeerConnection(websocket))


async def _admin_pair(ctx: ApiContext, request: Request) -> tuple[ApiContext, str, str, dict[str, Any]]:
    _authorize(ctx, request, Scope.ADMIN)
    if ctx.wan is None:
        raise ApiError(404, "not_found", "no emulated WAN here (only `crdtstore up` has one)")
    checks.check_content_type(request.headers.get("content-type"))
    body = await checks.read_body(request.headers.get("content-length"), request.stream(), 4096)
    data = checks.parse_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("a"), str) or not isinstance(data.get("b"), str):
        raise ApiError(400, "invalid_request", 'expected {"a": REGION, "b": REGION}', None)
    for region in (data["a"], data["b"]):
        if region not in ctx.wan.regions:
            raise ApiError(404, "not_found", f"unknown region {region[:64]!r}", {"regions": ctx.wan.regions})
    if data["a"] == data["b"]:
        raise ApiError(400, "invalid_request", "a region is not linked to itself", None)
    return ctx, data["a"], data["b"], data


async def admin_partition(ctx: ApiContext, request: Request) -> Response:
    ctx, a, b, data = await _admin_pair(ctx, request)
    mode = data.get("mode", "close")
    if mode not in ("close", "hold"):
        raise ApiError(400, "invalid_request", "mode is close or hold", {"mode": str(mode)[:40]})
    ctx.wan.partition(a, b, mode=mode)
    return JSONResponse({"cut": [list(pair) for pair in ctx.wan.cut_pairs()]})


async def admin_heal(ctx: ApiContext, request: Request) -> Response:
    ctx, a, b, _ = await _admin_pair(ctx, request)
    ctx.wan.heal(a, b)
    return JSONResponse({"cut": [list(pair) for pair in ctx.wan.cut_pairs()]})


async def admin_links(ctx: ApiContext, request: Request) -> Response:
    _authorize(ctx, request, Scope.READ)
    body: dict[str, Any] = {"replica_id": ctx.node.replica_id, "peers": [], "cut": None}
    if ctx.replicator is not None:
        body["peers"] = ctx.replicator.peers()
        body["stats"] = dict(ctx.replicator.stats)
    # Documents peer data could not be joined into, waiting for anti-entropy (see crdtstore/remote.py).
    quarantined = getattr(ctx.node, "quarantined", None)
    if quarantined is not None:
        body["quarantine"] = [record.as_json() for record in quarantined()]
    if ctx.wan is not None:
        body["cut"] = [list(pair) for pair in ctx.wan.cut_pairs()]
    return JSONResponse(body)


async def admin_merkle(ctx: ApiContext, request: Request) -> Response:
    """The Merkle root over this replica's document digests: equal roots mean equal documents."""
    _authorize(ctx, request, Scope.READ)
    merkle_root = getattr(ctx.node, "merkle_root", None)
    if merkle_root is None:
        raise ApiError(404, "not_found", "this node keeps no Merkle tree", None)
    root = await merkle_root()
    return JSONResponse({"replica_id": ctx.node.replica_id, "root": root.hex()})


# Public handlers: operations.


async def slash_in_id(ctx: ApiContext, request: Request) -> Response:
    """``/v1/docs/a/b``: an id with a '/' (percent-encoded or not) gets a clear 400 rather than a bare 404."""
    _authorize(ctx, request, Scope.READ)
    raise ApiError(400, "invalid_id", "a document id contains no '/'", {"id": request.path_params["rest"][:300]})


async def healthz(ctx: ApiContext, request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(ctx: ApiContext, request: Request) -> Response:
    if not ctx.ready:
        raise ApiError(503, "not_ready", "the node is not started or is shutting down")
    return JSONResponse({"status": "ready", "replica_id": ctx.node.replica_id})


async def metrics(ctx: ApiContext, request: Request) -> Response:
    if not ctx.auth.public_metrics:
        _authorize(ctx, request, Scope.READ)
    return Response(ctx.metrics.render(), media_type=METRICS_CONTENT_TYPE)


async def openapi(ctx: ApiContext, request: Request) -> Response:
    _authorize(ctx, request, Scope.READ)
    return Response(openapi_json(), media_type="application/json")


class _Endpoint:
    """A request handler served as a plain ASGI endpoint, for the routes every client hits.

    Starlette wraps a function endpoint in a second exception-handling layer
    of its own and builds a second Request; together they cost about a tenth
    of a small read. Without them an exception still reaches the app's
    exception middleware, which answers with the same JSON error. A handler
    may return the bytes of a 200 JSON body instead of a Response: the two
    ASGI messages are then sent without building one.
    """

    def __init__(self, handler: Callable[[ApiContext, Request], Any], ctx: ApiContext) -> None:
        self.handler = handler
        self.ctx = ctx
        self.__name__ = handler.__name__
        self.__doc__ = handler.__doc__

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response = await self.handler(self.ctx, Request(scope, receive))
        if type(response) is bytes:  # a 200 JSON body: no Response object to build
            headers = [(b"content-length", b"%d" % len(response)), (b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": response})
        else:
            await response(scope, receive, send)


def _bind(ctx: ApiContext, handler: Callable[..., Any]) -> Callable[..., Any]:
    return functools.wraps(handler)(functools.partial(handler, ctx))


def routes(ctx: ApiContext, *, peer_links: bool = True) -> list[BaseRoute]:
    """Every route of the API, its handler bound to ``ctx``; the OpenAPI document describes each (a test checks it).

    Handlers get the context as an argument rather than from ``app.state``:
    that lookup costs a measurable share of a small read.

    Args:
        ctx: The API context.
        peer_links: Serve ``/v1/peer`` here; False when peer links have a listener of their own
            (:func:`peer_routes`), so no peer reaches the node past that listener's TLS checks.
    """

    def bind(handler: Callable[..., Any]) -> Callable[..., Any]:
        return _bind(ctx, handler)

    def hot(handler: Callable[..., Any]) -> _Endpoint:
        return _Endpoint(handler, ctx)

    peer = [WebSocketRoute("/v1/peer", bind(peer_link))] if peer_links else []
    return [
        # The busiest first: the router tries routes in order.
        Route("/v1/docs/{id}", hot(read_doc), methods=["GET"]),
        Route("/v1/docs/{id}", hot(apply_batch), methods=["POST"]),
        Route("/v1/docs/{id}", bind(delete_doc), methods=["DELETE"]),
        Route("/v1/docs", bind(list_docs), methods=["GET"]),
        Route("/v1/batch", hot(apply_many), methods=["POST"]),
        WebSocketRoute("/v1/docs/{id}/changes", bind(changes_feed)),
        WebSocketRoute("/v1/docs/{id}/live", bind(functools.partial(live_channel, wait_for_write=wait_for_write))),
        *peer,
        Route("/v1/admin/partition", bind(admin_partition), methods=["POST"]),
        Route("/v1/admin/heal", bind(admin_heal), methods=["POST"]),
        Route("/v1/admin/links", bind(admin_links), methods=["GET"]),
        Route("/v1/admin/links/cut", bind(show_cuts), methods=["GET"]),
        Route("/v1/admin/links/cut", bind(cut_links), methods=["POST"]),
        Route("/v1/admin/links/heal", bind(heal_links), methods=["POST"]),
        Route("/v1/admin/merkle", bind(admin_merkle), methods=["GET"]),
        Route("/v1/openapi.json", bind(openapi), methods=["GET"]),
        Route("/healthz", bind(healthz), methods=["GET"]),
        Route("/readyz", bind(readyz), methods=["GET"]),
        Route("/metrics", bind(metrics), methods=["GET"]),
        # Last, so it only catches what no route above matched.
        Route("/v1/docs/{rest:path}", bind(slash_in_id), methods=["GET", "POST", "DELETE"], include_in_schema=False),
    ]


def peer_routes(ctx: ApiContext) -> list[BaseRoute]:
    """The routes of a listener for peer links alone: ``/v1/peer``, and ``/healthz`` for probes."""
    return [
        WebSocketRoute("/v1/peer", _bind(ctx, peer_link)),
        Route("/healthz", _bind(ctx, healthz), methods=["GET"]),
    ]
