"""The OpenAPI 3.1 description of the API, served at ``/v1/openapi.json``.

Hand-written rather than generated: the routes are few, and writing the
schemas down is where the contract gets decided. ``tests/api/test_routes.py``
checks that every route of the app appears here and nothing else does.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import orjson

from crdtstore import __version__

__all__ = ["openapi_document", "openapi_json"]

_JSON = "application/json"

_ERROR = {
    "type": "object",
    "required": ["error", "message", "detail"],
    "properties": {
        "error": {"type": "string", "description": "Stable machine-readable code, e.g. invalid_op, not_found."},
        "message": {"type": "string"},
        "detail": {"description": "JSON context of the error (the offending op index, a limit...), or null."},
    },
}

# The character rule of ids, prefixes and cursors (crdtstore.api.limits). JSON Schema cannot count
# UTF-8 bytes: maxLength bounds the characters, the description states the byte limit the server applies.
_ID_CHARS = "[^\\u0000-\\u001f\\u007f-\\u009f/\\\\]"
_ID_RULE = (
    "1-256 bytes of UTF-8 once percent-decoded (invalid UTF-8 such as %FF is refused), "
    "no control characters (U+0000-U+001F, U+007F-U+009F), no '/' or '\\\\', not '.' or '..'. "
    "Percent-encode everything else."
)
_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": f"Document id: {_ID_RULE}",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": f"^{_ID_CHARS}+$"},
}
_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
_INDEX = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}

_LEVELS = ["one", "local_quorum", "quorum", "all"]
_TIMEOUT_PARAM = {
    "name": "timeout",
    "in": "query",
    "description": "Seconds to wait for r=/w= replicas (default: the node's quorum_timeout, 5 s); then 504.",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
}

_PAIR = {
    "type": "object",
    "required": ["a", "b"],
    "properties": {
        "a": {"type": "string"},
        "b": {"type": "string"},
        "mode": {"enum": ["close", "hold"], "description": "close: drop connections; hold: blackhole them."},
    },
}

_OP = {
    "type": "object",
    "required": ["op", "path"],
    "description": (
        "One operation. op is one of set, delete, increment, add, remove, enable, disable, insert. "
        "set: value (+ lww: true for last-writer-wins); increment: by; add/remove: value; "
        "insert: index + text or values; delete with index + count deletes a range of a list or text; "
        "insert and ranged delete may carry version (the index is read against that version)."
    ),
    "properties": {
        "op": {"enum": ["set", "delete", "increment", "add", "remove", "enable", "disable", "insert"]},
        "path": {"type": "array", "items": {"type": "string"}},
        "value": {},
        "lww": {"type": "boolean"},
        "by": _INT64,
        "index": _INDEX,
        "count": _INDEX,
        "text": {"type": "string"},
        "values": {"type": "array"},
        "version": {"type": "string", "description": "A version token this API gave for this document."},
    },
}


_LINK_TARGET = {
    "type": "object",
    "maxProperties": 1,
    "additionalProperties": False,
    "properties": {
        "peer": {"type": "string", "minLength": 1, "maxLength": 256, "description": "A peer's replica id."},
        "region": {"type": "string", "minLength": 1, "maxLength": 256},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed JSON, request or op (invalid_op, index_out_of_range, invalid_id, invalid_version...).",
        401: "Missing or unknown bearer token.",
        403: "The token's scope is too small.",
        404: "No such document.",
        409: "The op does not fit the type already at its path (type_mismatch), or its version names changes "
        "this replica has not received yet (version_ahead: retry shortly).",
        413: "Body over the size limit (body_too_large), or a document past its size limit (document_too_large).",
        415: "Content-Type is not application/json.",
        422: "A value over a limit: depth 32, keys 256 bytes, strings 1 MiB, int64 (invalid_value).",
        503: "Storage full, write queue full or node not ready; retry after Retry-After seconds.",
        504: "The consistency level was not reached in time (quorum_timeout; detail: needed, reached, replicas). "
        "A write is durable locally all the same and keeps replicating.",
    }
    return {
        str(s): {"description": reasons[s], "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for s in statuses
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


@cache
def _document() -> dict[str, Any]:
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "crdtstore region API",
            "version": __version__,
            "description": (
                "Multi-master JSON CRDT documents. Every error is JSON {error, message, detail}. "
                "Bearer tokens carry scope read or readwrite. A method a path does not list answers 405 "
                "method_not_allowed with an Allow header; a request line and headers over 64 KiB answer 431, "
                "headers or a body sent slower than the server's deadlines answer 408."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Op": _OP,
                "Batch": {
                    "type": "object",
                    "required": ["ops"],
                    "additionalProperties": False,
                    "properties": {
                        "ops": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 10_000,
                            "items": {"$ref": "#/components/schemas/Op"},
                        }
                    },
                },
                "BatchRequest": {
                    "type": "object",
                    "required": ["docs"],
                    "additionalProperties": False,
                    "properties": {
                        "docs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 100,
                            "description": (
                                "1 to max_batch_docs documents (a server setting, 100 by default); "
                                "an id given twice refuses the whole request (400 invalid_request)."
                            ),
                            "items": {"$ref": "#/components/schemas/BatchEntry"},
                        }
                    },
                },
                # ops and further fields are left open on purpose: a document the single-write rules refuse
                # is answered in its own result (200 for the request), so the schema must not call it invalid.
                "BatchEntry": {
                    "type": "object",
                    "required": ["id"],
                    "description": (
                        "One document: ops (needed) as in POST /v1/docs/{id}, an array of Op applied atomically. "
                        f"The id follows the rule of the path parameter, unencoded: {_ID_RULE} A document that "
                        "breaks a rule (id, ops missing or bad, fields other than id and ops, limits) gets its "
                        "error as its result."
                    ),
                    "properties": {"id": {"type": "string"}, "ops": {}},
                },
                "BatchResults": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {
                        "results": {
                            "type": "array",
                            "description": "One result per document, in request order.",
                            "items": {"$ref": "#/components/schemas/BatchResult"},
                        }
                    },
                },
                "BatchResult": {
                    "type": "object",
                    "required": ["id", "status"],
                    "description": (
                        "status 200: version and created, as POST /v1/docs/{id} answers. Otherwise the status "
                        "and error body (error, message, detail) that POST would have answered for this document "
                        "alone; nothing of it changed, except on 504 quorum_timeout (durable here, replicating)."
                    ),
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"type": "integer"},
                        "version": {"type": "string"},
                        "created": {"type": "boolean"},
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "detail": {},
                    },
                },
                "WriteResult": {
                    "type": "object",
                    "required": ["version", "created"],
                    "properties": {"version": {"type": "string"}, "created": {"type": "boolean"}},
                },
                "Document": {
                    "type": "object",
                    "required": ["id", "value", "version"],
                    "properties": {
                        "id": {"type": "string"},
                        "value": {"type": "object"},
                        "version": {"type": "string", "description": "Opaque version token."},
                        "siblings": {
                            "type": "object",
                            "description": "With ?siblings=true: every register shows all concurrent values.",
                        },
                    },
                },
                "Page": {
                    "type": "object",
                    "required": ["ids", "cursor"],
                    "properties": {
                        "ids": {"type": "array", "items": {"type": "string"}},
                        "cursor": {"type": ["string", "null"], "description": "Pass back to get the next page."},
                    },
                },
            },
        },
        "security": auth,
        "paths": {
            "/v1/docs": {
                "get": {
                    "summary": "List document ids by prefix, in UTF-8 byte order",
                    "parameters": [
                        {
                            "name": "prefix",
                            "in": "query",
                            "allowEmptyValue": True,
                            "description": f"Ids starting with this (empty: all). Same rule as ids: {_ID_RULE}",
                            "schema": {"type": "string", "default": "", "maxLength": 256, "pattern": f"^{_ID_CHARS}*$"},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "The cursor of the previous page (an id: the same rule).",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 256,
                                "pattern": f"^{_ID_CHARS}+$",
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                    ],
                    "responses": {
                        "200": _ok("A page of ids", {"$ref": "#/components/schemas/Page"}),
                        **_errors(400, 401, 403),
                    },
                },
            },
            "/v1/docs/{id}": {
                "parameters": [_ID_PARAM],
                "get": {
                    "summary": "Read a document",
                    "parameters": [
                        {
                            "name": "siblings",
                            "in": "query",
                            "allowEmptyValue": True,
                            "schema": {"type": "boolean", "default": False},
                        },
                        {
                            "name": "r",
                            "in": "query",
                            "allowEmptyValue": True,
                            "description": "Replicas to gather and join before answering (this one counts).",
                            "schema": {"enum": _LEVELS, "default": "one"},
                        },
                        _TIMEOUT_PARAM,
                    ],
                    "responses": {
                        "200": _ok("The document", {"$ref": "#/components/schemas/Document"}),
                        **_errors(400, 401, 403, 404, 504),
                    },
                },
                "post": {
                    "summary": "Apply a batch of ops atomically (creates the document)",
                    "parameters": [
                        {
                            "name": "w",
                            "in": "query",
                            "allowEmptyValue": True,
                            "description": "Replicas that must hold the write before the answer (this one counts).",
                            "schema": {"enum": _LEVELS, "default": "one"},
                        },
                        _TIMEOUT_PARAM,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Batch"}}},
                    },
                    "responses": {
                        "200": _ok("Durably committed", {"$ref": "#/components/schemas/WriteResult"}),
                        **_errors(400, 401, 403, 409, 413, 415, 422, 503, 504),
                    },
                },
                "delete": {
                    "summary": "Delete a document",
                    "responses": {"204": {"description": "Deleted"}, **_errors(400, 401, 403, 404, 503)},
                },
            },
            "/v1/batch": {
                "post": {
                    "summary": "Apply op batches to many documents: each atomically, answered per document",
                    "description": (
                        "Every document is checked and applied as POST /v1/docs/{id} would (same scope, limits, "
                        "errors); the documents share one group commit. One document's error never changes the "
                        "others' outcome, and changes nothing itself. The status is 200 whenever the request "
                        "itself is sound, whatever each document's outcome (HTTP 207's idea): read each result's "
                        "status. w= and timeout= apply to every document."
                    ),
                    "parameters": [
                        {
                            "name": "w",
                            "in": "query",
                            "allowEmptyValue": True,
                            "description": "Replicas that must hold each document's write (this one counts).",
                            "schema": {"enum": _LEVELS, "default": "one"},
                        },
                        _TIMEOUT_PARAM,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
                    },
                    "responses": {
                        "200": _ok("One result per document", {"$ref": "#/components/schemas/BatchResults"}),
                        **_errors(400, 401, 403, 413, 415, 422, 503),
                    },
                },
            },
            "/v1/docs/{id}/changes": {
                "parameters": [_ID_PARAM],
                "get": {
                    "summary": "Change feed (websocket)",
                    "description": (
                        "Upgrade to a websocket; every text frame is one JSON change record. Reconnect with "
                        "?since=<the last record's cursor> to resume with no record missed or repeated. "
                        "Browsers may pass the token as ?token=. Errors before the upgrade answer with the "
                        "JSON error body; later ones close the socket with code 4000 + HTTP status."
                    ),
                    "parameters": [
                        {"name": "since", "in": "query", "allowEmptyValue": True, "schema": {"type": "string"}},
                        {"name": "token", "in": "query", "allowEmptyValue": True, "schema": {"type": "string"}},
                    ],
                    "responses": {"101": {"description": "Switching protocols"}, **_errors(400, 401, 403, 404)},
                },
            },
            "/v1/docs/{id}/live": {
                "parameters": [_ID_PARAM],
                "get": {
                    "summary": "Live editing channel (websocket, JSON text frames)",
                    "description": (
                        "One websocket per document for an editor. Client to server: "
                        '{"type":"batch","id":ID,"ops":[...],"version":TOKEN?,"w":LEVEL?} (ops as in POST; '
                        "indexes read against version), "
                        '{"type":"presence","state":{...}|null} (at most 1 KiB, 20 a second), '
                        '{"type":"resume","version":TOKEN}. Server to client: {"type":"snapshot","version","value"}, '
                        '{"type":"change","version","patches":[...],"origin":"local|remote","batch"?}, '
                        '{"type":"ack","id","version","again"?} once the batch is durable at w, '
                        '{"type":"error","id","status","error","message","detail"} (a rejected batch changes '
                        'nothing), {"type":"presence","client","state"}. A batch id seen before is acknowledged '
                        "again, never applied twice. A read token may follow and send presence, not write. "
                        "Closes: 4008 slow reader, 1009 frame too large, 1001 node closing. See the README."
                    ),
                    "parameters": [
                        {"name": "version", "in": "query", "allowEmptyValue": True, "schema": {"type": "string"}},
                        {"name": "token", "in": "query", "allowEmptyValue": True, "schema": {"type": "string"}},
                    ],
                    "responses": {"101": {"description": "Switching protocols"}, **_errors(400, 401, 403, 503)},
                },
            },
            "/v1/peer": {
                "get": {
                    "summary": "Replication link between regions (websocket, binary sync protocol)",
                    "description": (
                        "Peers authenticate inside the protocol with the cluster secret, and every message "
                        "after the handshake carries a tag; messages are at most 4 KiB until then (close 1009). "
                        "A node started with --peer-port serves this route on that port alone, not on the API port."
                    ),
                    "security": [],
                    "responses": {"101": {"description": "Switching protocols"}},
                },
            },
            "/v1/admin/partition": {
                "post": {
                    "summary": "Cut the emulated WAN link between two regions (crdtstore up only; admin scope)",
                    "requestBody": {"required": True, "content": {_JSON: {"schema": _PAIR}}},
                    "responses": {"200": _ok("Cut pairs", {"type": "object"}), **_errors(400, 401, 403, 404)},
                },
            },
            "/v1/admin/heal": {
                "post": {
                    "summary": "Heal the emulated WAN link between two regions (crdtstore up only; admin scope)",
                    "requestBody": {"required": True, "content": {_JSON: {"schema": _PAIR}}},
                    "responses": {"200": _ok("Cut pairs", {"type": "object"}), **_errors(400, 401, 403, 404)},
                },
            },
            "/v1/admin/links": {
                "get": {
                    "summary": "Authenticated peers, replication counters and cut links",
                    "responses": {"200": _ok("Links", {"type": "object"}), **_errors(401, 403)},
                },
            },
            "/v1/admin/links/cut": {
                "get": {
                    "summary": "This node's cut peer links, and the peers it has linked with since it started",
                    "responses": {"200": _ok("Cuts", {"type": "object"}), **_errors(401, 403, 404)},
                },
                "post": {
                    "summary": "Cut this node's links to a peer or a region until healed (in memory; admin scope)",
                    "requestBody": {"required": True, "content": {_JSON: {"schema": _LINK_TARGET}}},
                    "responses": {"200": _ok("Cuts", {"type": "object"}), **_errors(400, 401, 403, 404)},
                },
            },
            "/v1/admin/links/heal": {
                "post": {
                    "summary": "Heal this node's cut links to a peer or a region ({}: every cut; admin scope)",
                    "requestBody": {"required": False, "content": {_JSON: {"schema": _LINK_TARGET}}},
                    "responses": {"200": _ok("Cuts", {"type": "object"}), **_errors(400, 401, 403, 404)},
                },
            },
            "/v1/admin/merkle": {
                "get": {
                    "summary": "This replica's Merkle root over document digests (hex), to check convergence",
                    "responses": {"200": _ok("Merkle root", {"type": "object"}), **_errors(401, 403)},
                },
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _ok("OpenAPI 3.1", {"type": "object"}), **_errors(401, 403)},
                },
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness (anonymous)",
                    "security": [],
                    "responses": {"200": _ok("Alive", {"type": "object"})},
                },
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: node started and storage open (anonymous)",
                    "security": [],
                    "responses": {"200": _ok("Ready", {"type": "object"}), **_errors(503)},
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (read scope unless the server runs with public metrics)",
                    "responses": {
                        "200": {"description": "Prometheus text format", "content": {"text/plain": {}}},
                        **_errors(401, 403),
                    },
                },
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may not mutate the cached one)."""
    return copy.deepcopy(_document())


@cache
def openapi_json() -> bytes:
    """The document serialized once (it never changes while the process runs)."""
    return orjson.dumps(_document())
