"""The HTTP JSON API and change feed of one region node (Starlette).

Modules: :mod:`.app` (build_app), :mod:`.routes` (thin handlers),
:mod:`.errors` (the one error shape and status mapping), :mod:`.auth`
(bearer tokens and scopes), :mod:`.limits` (input rules), :mod:`.metrics`
(Prometheus), :mod:`.openapi` (the OpenAPI 3.1 document).
"""

from __future__ import annotations

from crdtstore.api.app import build_app, build_peer_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.api.limits import Limits

__all__ = ["AuthPolicy", "Limits", "Scope", "TokenStore", "build_app", "build_peer_app"]
