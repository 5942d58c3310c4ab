"""Python clients of the crdtstore HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

Both speak the same routes and raise the same :class:`ApiError`, built from
the server's JSON error body (``{"error", "message", "detail"}``)::

    with Client("http://127.0.0.1:8080", token=TOKEN) as client:
        written = client.apply("cart:42", [{"op": "add", "path": ["items"], "value": "apple"}])
        outcomes = client.batch({"cart:42": [...], "cart:43": [...]})  # one request, answered per document
        doc = client.read("cart:42")
        for record in client.changes("cart:42", since=doc.version):
            ...

``transport=`` accepts any httpx transport, for instance
``httpx.ASGITransport(app)`` to call an app in-process in tests. The change
feed is a websocket (the ``websockets`` package), so it needs a real
server.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
import orjson
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["ApiError", "AsyncClient", "BatchOutcome", "Client", "Document", "Page", "WriteResult"]

DEFAULT_TIMEOUT = 30.0


class ApiError(Exception):
    """The server refused a request.

    Attributes:
        status: HTTP status (for a websocket closed with code ``4000 + s``, ``s``).
        code: The server's machine-readable code (``not_found``, ``type_mismatch``...).
        message: Human-readable explanation.
        detail: The server's JSON detail, or None.
    """

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: str
    created: bool


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One document's outcome in :meth:`Client.batch`: ``result`` if it committed, else ``error``.

    ``error`` is what :meth:`Client.apply` would have raised for this
    document alone; on a 504 ``quorum_timeout`` the write is durable all the
    same (``error.detail["version"]``) and keeps replicating.
    """

    id: str
    result: WriteResult | None
    error: ApiError | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    value: dict[str, Any]
    version: str
    siblings: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[str]
    cursor: str | None


# Private helpers shared by both clients (pure: request parts in, results out).


def _doc_path(doc_id: str) -> str:
    return "/v1/docs/" + quote(doc_id, safe="")


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _batch_body(ops: Sequence[dict[str, Any]]) -> bytes:
    return orjson.dumps({"ops": list(ops)})


def _many_body(docs: Mapping[str, Sequence[dict[str, Any]]]) -> bytes:
    return orjson.dumps({"docs": [{"id": doc_id, "ops": list(ops)} for doc_id, ops in docs.items()]})


def _write_params(w: str | None, timeout: float | None) -> dict[str, str]:
    params = {"w": w} if w is not None else {}
    if timeout is not None:
        params["timeout"] = repr(float(timeout))
    return params


def _list_params(prefix: str, cursor: str | None, limit: int | None) -> dict[str, str]:
    params = {"prefix": prefix}
    if cursor is not None:
        params["cursor"] = cursor
    if limit is not None:
        params["limit"] = str(limit)
    return params


def _error_from(status: int, body: bytes | bytearray) -> ApiError:
    try:
        data = orjson.loads(body)
        return ApiError(status, str(data["error"]), str(data["message"]), data.get("detail"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        # Not our JSON shape: a proxy or load balancer in front of the node.
        return ApiError(status, "http_error", body[:200].decode("utf-8", "replace") or f"HTTP {status}")


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise _error_from(response.status_code, response.content)
    return response


def _document(doc_id: str, response: httpx.Response) -> Document:
    data = orjson.loads(_checked(response).content)
    return Document(id=doc_id, value=data["value"], version=data["version"], siblings=data.get("siblings"))


def _write_result(response: httpx.Response) -> WriteResult:
    data = orjson.loads(_checked(response).content)
    return WriteResult(version=data["version"], created=data["created"])


def _batch_outcomes(response: httpx.Response) -> list[BatchOutcome]:
    outcomes = []
    for item in orjson.loads(_checked(response).content)["results"]:
        if item["status"] == 200:
            written = WriteResult(version=item["version"], created=item["created"])
            outcomes.append(BatchOutcome(item["id"], written, None))
        else:
            error = ApiError(item["status"], str(item["error"]), str(item["message"]), item.get("detail"))
            outcomes.append(BatchOutcome(item["id"], None, error))
    return outcomes


def _page(response: httpx.Response) -> Page:
    data = orjson.loads(_checked(response).content)
    return Page(ids=data["ids"], cursor=data["cursor"])


def _ws_url(base_url: str, doc_id: str, since: str | None) -> str:
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + _doc_path(doc_id) + "/changes"
    query = urlencode({"since": since}) if since else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def _ws_ssl(url: str, verify: bool | str | ssl.SSLContext) -> ssl.SSLContext | None:
    if not url.startswith("wss:"):
        return None
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _httpx_verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _ws_denied(exc: InvalidStatus) -> ApiError:
    return _error_from(exc.response.status_code, exc.response.body or b"")


def _ws_closed(exc: ConnectionClosed) -> ApiError | None:
    """An ApiError for an error close (code 4000 + HTTP status), None for a normal end of the feed."""
    frame = exc.rcvd
    if frame is not None and 4000 <= frame.code < 5000:
        return ApiError(frame.code - 4000, frame.reason or "closed", f"change feed closed: {frame.reason}")
    return None


class Client:
    """Synchronous client (``httpx.Client``).

    Args:
        base_url: ``http(s)://host:port``.
        token: Bearer token, or None for anonymous access.
        transport: An httpx transport (``httpx.ASGITransport``/``MockTransport`` in tests).
        timeout: Seconds per request.
        verify: TLS verification: True, False, a CA bundle path, or an SSL context.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._verify = verify
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_headers(token),
            transport=transport,
            timeout=timeout,
            verify=_httpx_verify(verify),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Public methods for documents.

    def apply(self, doc_id: str, ops: Sequence[dict[str, Any]]) -> WriteResult:
        """Apply a batch of ops; returns once the server committed it durably."""
        response = self._http.post(
            _doc_path(doc_id), content=_batch_body(ops), headers={"Content-Type": "application/json"}
        )
        return _write_result(response)

    def batch(
        self, docs: Mapping[str, Sequence[dict[str, Any]]], *, w: str | None = None, timeout: float | None = None
    ) -> list[BatchOutcome]:
        """Apply each document's ops atomically, all in one request (``POST /v1/batch``).

        Args:
            docs: Document id to its ops, at most the server's ``max_batch_docs`` (100 by default).
            w: The write consistency level (``one``, ``local_quorum``, ``quorum``, ``all``).
            timeout: Seconds the server waits for ``w`` (None: its default).

        Returns:
            One outcome per document, in the mapping's order; a refused document changed nothing.

        Raises:
            ApiError: The request itself was refused (empty, too many documents, bad ``w``, scope); nothing applied.
        """
        response = self._http.post(
            "/v1/batch",
            content=_many_body(docs),
            params=_write_params(w, timeout),
            headers={"Content-Type": "application/json"},
        )
        return _batch_outcomes(response)

    def read(self, doc_id: str, *, siblings: bool = False) -> Document:
        params = {"siblings": "true"} if siblings else None
        return _document(doc_id, self._http.get(_doc_path(doc_id), params=params))

    def delete(self, doc_id: str) -> None:
        _checked(self._http.delete(_doc_path(doc_id)))

    def list(self, prefix: str = "", cursor: str | None = None, limit: int | None = None) -> Page:
        return _page(self._http.get("/v1/docs", params=_list_params(prefix, cursor, limit)))

    def iter_ids(self, prefix: str = "", *, page_size: int | None = None) -> Iterator[str]:
        """Every id starting with ``prefix``, following cursors page by page."""
        cursor: str | None = None
        while True:
            page = self.list(prefix, cursor, page_size)
            yield from page.ids
            if page.cursor is None:
                return
            cursor = page.cursor

    def changes(self, doc_id: str, since: str | None = None, *, open_timeout: float = 10.0) -> Iterator[dict[str, Any]]:
        """Follow a document's change feed (blocking); resume with ``since=record["cursor"]``.

        Ends when the server closes the feed normally (it shuts down).

        Raises:
            ApiError: The server refused the feed or closed it with an error.
        """
        from websockets.sync.client import connect

        url = _ws_url(self.base_url, doc_id, since)
        try:
            with connect(
                url,
                additional_headers=_headers(self._token),
                ssl=_ws_ssl(url, self._verify),
                open_timeout=open_timeout,
                max_size=None,
                proxy=None,
            ) as ws:
                for message in ws:
                    yield orjson.loads(message)
        except InvalidStatus as exc:
            raise _ws_denied(exc) from None
        except ConnectionClosed as exc:
            error = _ws_closed(exc)
            if error is not None:
                raise error from None

    # Public methods for operations.

    def health(self) -> bool:
        """True if the server answers ``/healthz``."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """True if the node is started and its storage open (``/readyz``)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncClient:
    """Asynchronous client (``httpx.AsyncClient``); same arguments and methods as :class:`Client`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._verify = verify
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(token),
            transport=transport,
            timeout=timeout,
            verify=_httpx_verify(verify),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Public methods for documents.

    async def apply(self, doc_id: str, ops: Sequence[dict[str, Any]]) -> WriteResult:
        response = await self._http.post(
            _doc_path(doc_id), content=_batch_body(ops), headers={"Content-Type": "application/json"}
        )
        return _write_result(response)

    async def batch(
        self, docs: Mapping[str, Sequence[dict[str, Any]]], *, w: str | None = None, timeout: float | None = None
    ) -> list[BatchOutcome]:
        """Apply each document's ops atomically, all in one request; see :meth:`Client.batch`."""
        response = await self._http.post(
            "/v1/batch",
            content=_many_body(docs),
            params=_write_params(w, timeout),
            headers={"Content-Type": "application/json"},
        )
        return _batch_outcomes(response)

    async def read(self, doc_id: str, *, siblings: bool = False) -> Document:
        params = {"siblings": "true"} if siblings else None
        return _document(doc_id, await self._http.get(_doc_path(doc_id), params=params))

    async def delete(self, doc_id: str) -> None:
        _checked(await self._http.delete(_doc_path(doc_id)))

    async def list(self, prefix: str = "", cursor: str | None = None, limit: int | None = None) -> Page:
        return _page(await self._http.get("/v1/docs", params=_list_params(prefix, cursor, limit)))

    async def iter_ids(self, prefix: str = "", *, page_size: int | None = None) -> AsyncIterator[str]:
        cursor: str | None = None
        while True:
            page = await self.list(prefix, cursor, page_size)
            for doc_id in page.ids:
                yield doc_id
            if page.cursor is None:
                return
            cursor = page.cursor

    async def changes(
        self, doc_id: str, since: str | None = None, *, open_timeout: float = 10.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Follow a document's change feed; see :meth:`Client.changes`."""
        from websockets.asyncio.client import connect

        url = _ws_url(self.base_url, doc_id, since)
        try:
            async with connect(
                url,
                additional_headers=_headers(self._token),
                ssl=_ws_ssl(url, self._verify),
                open_timeout=open_timeout,
                max_size=None,
                proxy=None,
            ) as ws:
                async for message in ws:
                    yield orjson.loads(message)
        except InvalidStatus as exc:
            raise _ws_denied(exc) from None
        except ConnectionClosed as exc:
            error = _ws_closed(exc)
            if error is not None:
                raise error from None

    def live(self, doc_id: str, **options: Any) -> Any:
        """A :class:`crdtstore.live_client.LiveDoc` on ``doc_id`` (``async with client.live(id) as doc``)."""
        from crdtstore.live_client import LiveDoc, Wire  # only when used: it needs the websockets client

        wire = Wire(_headers(self._token), lambda url: _ws_ssl(url, self._verify), ApiError, _error_from)
        return LiveDoc(self.base_url, doc_id, wire=wire, **options)

    # Public methods for operations.

    async def health(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False
