"""Shared bits of the API tests: tokens and Starlette's TestClient."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # Starlette asks for httpx2; the project pins httpx, which TestClient still drives fine.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse

__all__ = ["ADMIN_TOKEN", "READ_TOKEN", "RW_TOKEN", "TestClient", "WebSocketDenialResponse", "auth_headers"]

RW_TOKEN = "rw-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
