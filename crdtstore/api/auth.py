"""Bearer-token authentication with three scopes, ``read``, ``readwrite`` and ``admin``.

Token files
-----------

A token file holds one token a line, then whitespace, then its scope::

    # comments and blank lines are ignored
    3q2-7Qk0vN1cV8mWm2dS0A  read
    l9mQe5Jb1yJ0bS7fXc2rTg  readwrite
    Zp4kR8sW2xN6vB0mQ3tY7u  admin

The environment variable ``CRDTSTORE_TOKENS`` holds the same entries
separated by commas (``token:scope,token:scope``). Tokens are 16 to 256
characters from ``A-Z a-z 0-9 - _ . ~ + / =`` (url-safe base64 and friends),
so a weak or mangled token fails at load time rather than at the first
request.

Requests carry ``Authorization: Bearer TOKEN``. Browsers cannot set headers
on a websocket, so the change feed also takes ``?token=TOKEN``.

Who may do what
---------------

* ``/healthz`` and ``/readyz`` are always anonymous (probes carry no secrets).
* ``/metrics`` needs ``read`` unless the app is built with ``public_metrics``.
* Reads, listings, the change feed and the OpenAPI document need ``read``;
  writes and deletes need ``readwrite``.
* ``/v1/admin/links`` and ``/v1/admin/merkle`` (what ``crdtstore status``
  reads) need ``read``; the routes that change the cluster's links
  (partition, isolate, heal) need ``admin``. ``admin`` includes
  ``readwrite``, so token files written before it existed keep working and
  grant what they granted.
* Anonymous access is off unless ``anonymous`` names a scope (for local
  demos only).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from crdtstore.api.errors import ApiError

__all__ = [
    "AuthPolicy",
    "Scope",
    "TokenFileError",
    "TokenStore",
    "ensure_token_of_scope",
    "generate_token",
    "parse_env_tokens",
    "parse_token_file",
]

_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


class Scope(enum.IntEnum):
    """What a token may do; a larger scope includes the smaller ones."""

    READ = 1
    READWRITE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Scope:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown scope {name!r} (expected read, readwrite or admin)") from None


class TokenFileError(ValueError):
    """A token file or ``CRDTSTORE_TOKENS`` entry that cannot be used."""


def generate_token() -> str:
    """A fresh random token (256 bits, lowercase hex).

    Hex rather than url-safe base64: one base64 token in 64 starts with "-",
    which a command line (``--token TOKEN``) then reads as an option.
    """
    import secrets

    return secrets.token_hex(32)


def ensure_token_of_scope(path: Path, scope: Scope) -> str:
    """A token of exactly ``scope`` in the token file ``path``, appended (the file's mode kept) when it has none.

    A file from before a scope existed keeps its tokens: the new one is added after them.
    """
    for token, found in parse_token_file(path.read_text(encoding="utf-8"), source=str(path)).items():
        if found is scope:
            return token
    token = generate_token()
    with path.open("a", encoding="utf-8") as file:
        file.write(f"{token} {scope.name.lower()}\n")
    return token


def parse_token_file(text: str, *, source: str = "token file") -> dict[str, Scope]:
    """Parse the ``token scope`` line format (module docstring)."""
    entries: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenFileError(f"{source}:{number}: expected 'TOKEN SCOPE'")
        entries.append((parts[0], parts[1]))
    return _build(entries, source)


def parse_env_tokens(value: str) -> dict[str, Scope]:
    """Parse ``CRDTSTORE_TOKENS`` (``token:scope`` entries separated by commas)."""
    entries: list[tuple[str, str]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, scope = item.rpartition(":")
        if not sep:
            raise TokenFileError("CRDTSTORE_TOKENS: expected 'TOKEN:SCOPE' entries separated by commas")
        entries.append((token, scope))
    return _build(entries, "CRDTSTORE_TOKENS")


def _build(entries: Iterable[tuple[str, str]], source: str) -> dict[str, Scope]:
    tokens: dict[str, Scope] = {}
    for token, scope_name in entries:
        if not _TOKEN.fullmatch(token):
            # Don't echo the token: it may be a real secret with a typo.
            raise TokenFileError(f"{source}: a token must be 16-256 characters of [A-Za-z0-9._~+/=-]")
        try:
            tokens[token] = Scope.parse(scope_name)
        except ValueError as exc:
            raise TokenFileError(f"{source}: {exc}") from None
    return tokens


class TokenStore:
    """Known tokens, kept as SHA-256 digests.

    A request's token is hashed and looked up by its digest. Whatever the
    lookup's timing reveals is about the digest of the attacker's own guess,
    and learning digest bytes does not help find a token (preimage
    resistance); a memory dump does not reveal the tokens either (except
    the headers open connections remember: :meth:`AuthPolicy.remember`).
    """

    def __init__(self, tokens: Mapping[str, Scope] | None = None) -> None:
        self._by_digest = {hashlib.sha256(t.encode()).digest(): s for t, s in (tokens or {}).items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: Path | None = None, *, env: Mapping[str, str] | None = None) -> TokenStore:
        """Tokens from ``path`` (if given) and from ``CRDTSTORE_TOKENS`` in ``env`` (if set)."""
        tokens: dict[str, Scope] = {}
        if path is not None:
            tokens.update(parse_token_file(path.read_text(encoding="utf-8"), source=str(path)))
        env = os.environ if env is None else env
        if env.get("CRDTSTORE_TOKENS"):
            tokens.update(parse_env_tokens(env["CRDTSTORE_TOKENS"]))
        return cls(tokens)

    def scope_of(self, token: str) -> Scope | None:
        """The scope of ``token``, or None."""
        # A lookup by digest, not by token: its timing depends on the SHA-256 of
        # the guess, which tells an attacker nothing about any known token.
        return self._by_digest.get(hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """Who may call what.

    Attributes:
        tokens: The known tokens.
        public_metrics: Serve ``/metrics`` without a token.
        anonymous: The scope of a request without a token (None: refused).
    """

    tokens: TokenStore = field(default_factory=TokenStore)
    public_metrics: bool = False
    anonymous: Scope | None = None

    def __post_init__(self) -> None:
        # Anyone who reaches the port would hold it: admin is only ever granted to a token.
        if self.anonymous is not None and self.anonymous >= Scope.ADMIN:
            raise ValueError("anonymous access is read or readwrite, never admin")

    def authorize(self, authorization: str | None, query_token: str | None, needed: Scope) -> Scope:
        """Check a request's credentials against the scope it needs.

        Args:
            authorization: The ``Authorization`` header.
            query_token: The ``token`` query parameter (websockets only; None elsewhere).
            needed: The scope the route needs.

        Returns:
            The granted scope.

        Raises:
            ApiError: 401 without a valid token, 403 when the token's scope is too small.
        """
        token = _bearer(authorization) if authorization is not None else query_token
        if token is None:
            if self.anonymous is not None and self.anonymous >= needed:
                return self.anonymous
            raise _unauthorized("a bearer token is required")
        scope = self.tokens.scope_of(token)
        if scope is None:
            raise _unauthorized("unknown token")
        return _grant(scope, needed)

    # A client sends the same Authorization header on every request of a connection. Hashing its token
    # again each time cost about a tenth of a small read's server CPU; comparing the header with the one
    # that checked out on this connection costs a few percent of that, and stays constant-time.

    def remember(self, memo: MutableMapping[object, object], authorization: bytes, scope: Scope) -> None:
        """Note in ``memo`` (state kept per connection) that header ``authorization`` checked out, granting ``scope``.

        Call it only after :meth:`authorize` granted ``scope`` to exactly this header. The
        header (and so the token) then stays in memory as long as ``memo``: one connection.
        """
        memo[_MEMO_KEY] = _Remembered(self, authorization, scope)

    def recall(self, memo: Mapping[object, object], authorization: bytes, needed: Scope) -> bool:
        """True if ``authorization`` is the header ``memo`` remembers (:meth:`remember`) and covers ``needed``.

        False when ``memo`` remembers another header (or none, or one of another policy):
        check it with :meth:`authorize`. The comparison takes the same time wherever the
        headers differ (:func:`hmac.compare_digest`).

        Raises:
            ApiError: 403 when the remembered scope is too small.
        """
        remembered = memo.get(_MEMO_KEY)
        if (
            type(remembered) is not _Remembered
            or remembered.policy is not self
            or not hmac.compare_digest(remembered.authorization, authorization)
        ):
            return False
        _grant(remembered.scope, needed)
        return True


_MEMO_KEY = "crdtstore.auth.checked"


@dataclass(frozen=True, slots=True)
class _Remembered:
    """An Authorization header a connection sent and the scope its token has (:meth:`AuthPolicy.remember`)."""

    policy: AuthPolicy
    authorization: bytes
    scope: Scope


def _grant(scope: Scope, needed: Scope) -> Scope:
    if scope < needed:
        raise ApiError(403, "forbidden", f"this token's scope is {scope.name.lower()}", {"needed": needed.name.lower()})
    return scope


def _bearer(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("expected 'Authorization: Bearer TOKEN'")
    return token.strip()


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="crdtstore"'})
