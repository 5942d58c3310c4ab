"""The authenticated channel of one peer link: handshake MACs, session keys and sealed frames (pure).

Theory of operation
-------------------

Both sides of a link send a ``Hello`` (ids, region, epoch, protocol
version, a fresh nonce). The *transcript* of one direction, X to Y, is X's
Hello then Y's Hello, each as its canonical encoding with a length prefix:
it holds both nonces, both identities and, by its order, the direction.
From the cluster secret and a transcript, HKDF-SHA256 (RFC 5869: extract
with a fixed salt, expand one block with a label and the transcript) derives
two values per direction:

* the **Auth** X sends Y: label ``auth`` over transcript(X→Y). Y computes
  the same from its own view, so a MAC reflected back to its sender fails
  (the sender's view is transcript(Y→X)), and so does one spliced from
  another connection (other nonces, other identities);
* the **frame key** of X→Y: label ``frame`` over transcript(X→Y).

Once the handshake is done, every message is sealed: ``body || tag``,
where ``tag = HMAC-SHA256(frame key of its direction, counter || body)`` and
``counter`` is the number of messages sealed before it in that direction
(8 bytes, big-endian, implicit: it never crosses the wire, both ends count).
A message that was injected (no key), replayed or reordered (another
counter), follows a dropped one (the counter moved on), or was moved from
the other direction or another link (another key) fails its tag, and the
link fails with :class:`~sync.exceptions.FrameAuthFailed`.

What this does not do: encrypt. Without TLS, anyone on the path reads
every message; they cannot change, add, drop, replay or reorder one
without the link closing. Someone relaying a handshake unchanged between
two members only makes them talk to each other through it (the keys are
theirs), and gets a link it can read and cut, not one it can speak on.

``secret`` is never used as a key directly: HKDF-Extract turns it into a
pseudorandom key first, so a secret of any length (16 bytes at least, the
CLI checks) gives full-strength keys.

**Rotating the secret.** A side may *accept* more secrets than the one it
proves itself with (``accepted``): each side sends its Auth, and seals its
direction, under its own secret, and checks the peer's Auth against its
own and each accepted one; the peer's direction is then opened with the
key of the secret that matched, which is the peer's own. With one secret on
both sides this is exactly the single-secret schedule. So a cluster moves
from secret A to B with no cut link: every node accepts B (proving with A),
then every node proves with B (accepting A), then every node drops A.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from .exceptions import FrameAuthFailed

__all__ = ["TAG_SIZE", "Channel", "auth_mac", "frame_key"]

TAG_SIZE = 32
"""Bytes of HMAC-SHA256 tag on every sealed message (the whole tag: no truncation)."""

_SALT = b"crdtstore-sync-v2"
_AUTH = b"auth"
_FRAME = b"frame"


def _prk(secret: bytes) -> bytes:
    return hmac.digest(_SALT, secret, "sha256")  # HKDF-Extract(salt, IKM = secret)


def _transcript(sender_hello: bytes, receiver_hello: bytes) -> bytes:
    return b"".join(len(h).to_bytes(4, "big") + h for h in (sender_hello, receiver_hello))


def _expand(prk: bytes, label: bytes, transcript: bytes) -> bytes:
    # HKDF-Expand for one 32-byte block: T(1) = HMAC(PRK, info || 0x01), info = label || transcript.
    info = len(label).to_bytes(1, "big") + label + transcript
    return hmac.digest(prk, info + b"\x01", "sha256")


def auth_mac(secret: bytes, sender_hello: bytes, receiver_hello: bytes) -> bytes:
    """The MAC the sender of ``sender_hello`` proves itself with to the sender of ``receiver_hello``.

    Args:
        secret: The cluster secret.
        sender_hello: The encoded ``Hello`` of the side that sends the Auth.
        receiver_hello: The encoded ``Hello`` of the side that checks it.
    """
    return _expand(_prk(secret), _AUTH, _transcript(sender_hello, receiver_hello))


def frame_key(secret: bytes, sender_hello: bytes, receiver_hello: bytes) -> bytes:
    """The key that seals messages from the sender of ``sender_hello`` to the other side."""
    return _expand(_prk(secret), _FRAME, _transcript(sender_hello, receiver_hello))


class Channel:
    """Both directions of one link once both Hellos are known: the Auth MACs and the sealing.

    Args:
        secret: The cluster secret we prove ourselves with and seal our direction under.
        our_hello: Our encoded Hello, as sent.
        their_hello: The peer's encoded Hello, as received.
        accepted: Further secrets the peer may prove itself with (a rotation; see the module docstring).
    """

    __slots__ = ("_candidates", "_received", "_recv_mac", "_send_mac", "_sent", "_theirs", "our_auth", "their_auth")

    def __init__(self, secret: bytes, our_hello: bytes, their_hello: bytes, *, accepted: Sequence[bytes] = ()) -> None:
        prk = _prk(secret)
        ours, theirs = _transcript(our_hello, their_hello), _transcript(their_hello, our_hello)
        self.our_auth = _expand(prk, _AUTH, ours)
        self.their_auth = _expand(prk, _AUTH, theirs)
        # The peer's Auth under each secret we take, and the key that opens its direction then.
        self._candidates = [(self.their_auth, prk)] + [
            (_expand(other, _AUTH, theirs), other) for other in (_prk(a) for a in accepted if a != secret)
        ]
        # Keyed once; each message copies the keyed state instead of re-keying.
        self._send_mac = hmac.new(_expand(prk, _FRAME, ours), digestmod=hashlib.sha256)
        self._recv_mac = hmac.new(_expand(prk, _FRAME, theirs), digestmod=hashlib.sha256)
        self._theirs = theirs
        self._sent = 0
        self._received = 0

    @property
    def sent(self) -> int:
        """Messages sealed so far (the counter of the next one)."""
        return self._sent

    @property
    def received(self) -> int:
        """Messages opened so far."""
        return self._received

    def check_auth(self, mac: bytes) -> bool:
        """Whether ``mac`` is the peer's Auth for this transcript under a secret we take (constant time).

        On success the peer's direction is opened under the secret that matched (the peer's own).
        """
        matched = None
        for expected, prk in self._candidates:  # every candidate compared: the time says not which matched
            if hmac.compare_digest(expected, mac) and matched is None:
                matched = prk
        if matched is None:
            return False
        self._recv_mac = hmac.new(_expand(matched, _FRAME, self._theirs), digestmod=hashlib.sha256)
        return True

    def seal(self, body: bytes) -> bytes:
        """``body || tag`` under the next counter of our direction."""
        tag = self._tag(self._send_mac, self._sent, body)
        self._sent += 1
        return body + tag

    def open(self, data: bytes) -> bytes:
        """The body of the peer's next sealed message.

        Raises:
            FrameAuthFailed: The tag is not the one of the next message in the peer's direction.
        """
        if len(data) <= TAG_SIZE:
            raise FrameAuthFailed("message too short to carry a tag")
        view = memoryview(data)
        body, tag = view[:-TAG_SIZE], bytes(view[-TAG_SIZE:])
        if not hmac.compare_digest(self._tag(self._recv_mac, self._received, body), tag):
            # Don't say which of forged, replayed, reordered or misplaced: they are indistinguishable.
            raise FrameAuthFailed(f"bad tag on message {self._received}: forged, replayed, reordered or misplaced")
        self._received += 1
        return bytes(body)

    @staticmethod
    def _tag(keyed: hmac.HMAC, counter: int, body: bytes | memoryview) -> bytes:
        mac = keyed.copy()
        mac.update(counter.to_bytes(8, "big"))
        mac.update(body)
        return mac.digest()
