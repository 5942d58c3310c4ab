"""Errors of the replication protocol, and the close codes they map to.

Every error raised by ``sync`` derives from :class:`SyncError`::

    SyncError
    ├── LocalProtocolError          we (the adapter or our code) misused the protocol
    │   ├── InvalidState            an input not allowed in the current state (also AssertionError)
    │   └── InvalidMessage          a message built with bad fields (also ValueError)
    └── RemoteProtocolError         the peer broke the protocol (Sans-I/O: never raised out of
        │                           the receive path, recorded as ``protocol_error`` instead)
        ├── MalformedMessage        bytes that do not decode to a valid message
        ├── UnsupportedProtocol     a protocol version we do not speak
        ├── AuthenticationFailed    bad Auth MAC, our own id, or a message before authentication
        ├── FrameAuthFailed         a message after the handshake whose tag fails: injected,
        │                           replayed, reordered, or moved from another link or direction
        ├── ForbiddenOrigin         a delta for an origin the peer may not speak for
        ├── LimitExceeded           an oversize message or batch, or too many pending requests
        │   └── MessageTooBig       a message over the small limit before the handshake is done
        └── UnexpectedMessage       a valid message that makes no sense now (unknown request id)

Each :class:`RemoteProtocolError` carries the websocket close code the
adapter closes with (:class:`CloseCode`); the codes 4000-4999 are the
"private use" range of RFC 6455 section 7.4.2.
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthenticationFailed",
    "CloseCode",
    "ForbiddenOrigin",
    "FrameAuthFailed",
    "InvalidMessage",
    "InvalidState",
    "LimitExceeded",
    "LocalProtocolError",
    "MalformedMessage",
    "MessageTooBig",
    "RemoteProtocolError",
    "SyncError",
    "UnexpectedMessage",
    "UnsupportedProtocol",
]


class CloseCode(enum.IntEnum):
    """Why a connection closed; sent as the websocket close code."""

    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    MESSAGE_TOO_BIG = 1009
    """RFC 6455's code, also for a message over the pre-handshake limit."""
    INTERNAL_ERROR = 1011
    AUTH_FAILED = 4001
    UNSUPPORTED_PROTOCOL = 4002
    FORBIDDEN_ORIGIN = 4003
    LIMIT_EXCEEDED = 4004
    TIMEOUT = 4005
    UNEXPECTED_MESSAGE = 4006
    FRAME_AUTH_FAILED = 4007
    """A message after the handshake failed its tag (see :mod:`sync.channel`)."""


class SyncError(Exception):
    """Root of every error raised by ``sync``."""


class LocalProtocolError(SyncError):
    """We tried to do something the protocol does not allow: a bug on our side."""


class InvalidState(LocalProtocolError, AssertionError):
    """An input that the current state does not accept (e.g. answering an unknown request)."""


class InvalidMessage(LocalProtocolError, ValueError):
    """A message constructed with invalid fields."""


class RemoteProtocolError(SyncError):
    """The peer did something the protocol does not allow."""

    close_code: CloseCode = CloseCode.PROTOCOL_ERROR


class MalformedMessage(RemoteProtocolError):
    """Bytes that do not decode to a valid message."""


class UnsupportedProtocol(RemoteProtocolError):
    """The peer speaks a protocol version we do not."""

    close_code = CloseCode.UNSUPPORTED_PROTOCOL


class AuthenticationFailed(RemoteProtocolError):
    """Bad MAC, the peer claims our own id, or it spoke before authenticating."""

    close_code = CloseCode.AUTH_FAILED


class ForbiddenOrigin(RemoteProtocolError):
    """A delta for an origin the peer may not speak for (see ``sync.protocol``)."""

    close_code = CloseCode.FORBIDDEN_ORIGIN


class LimitExceeded(RemoteProtocolError):
    """An oversize message or batch, a full reorder buffer, or too many pending requests."""

    close_code = CloseCode.LIMIT_EXCEEDED


class UnexpectedMessage(RemoteProtocolError):
    """A well-formed message that makes no sense now (e.g. an answer to no request)."""

    close_code = CloseCode.UNEXPECTED_MESSAGE


class FrameAuthFailed(RemoteProtocolError):
    """A message after the handshake whose tag fails: injected, replayed, reordered or misplaced."""

    close_code = CloseCode.FRAME_AUTH_FAILED


class MessageTooBig(LimitExceeded):
    """A message larger than allowed before the handshake completes."""

    close_code = CloseCode.MESSAGE_TOO_BIG
