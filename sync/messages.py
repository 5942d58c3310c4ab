"""The wire messages of the replication protocol, and their compact binary encoding.

Every message is a frozen, slotted dataclass that validates its fields in
``__post_init__`` (so a message that exists is a valid one) and has a
``TYPE`` byte from the one registry :class:`MessageType`. On the wire a
message is::

    type (1 byte) || body

and the body is a fixed sequence of fields per type, written with four
primitives: unsigned LEB128 varints, length-prefixed byte strings,
length-prefixed UTF-8 strings, and length-prefixed lists. There is no
padding, no field name and no self-description: the type byte decides the
layout, and :func:`decode` refuses trailing bytes, so ``decode(m.encode())
== m`` and every valid encoding is canonical. Delta and state bytes (which
are already JSON from ``crdtstore.codec``) travel as opaque byte strings,
without the base64 that a JSON envelope would cost.

:func:`decode` raises :class:`~sync.exceptions.MalformedMessage` on any bad
input and nothing else; a message that decodes but breaks a limit (too many
entries, too long an id) is malformed too, because validation runs in
``__post_init__`` during decoding.

Identifiers follow the node's rules: replica ids, regions, origins and
document ids are non-empty strings of at most :data:`MAX_ID_BYTES` UTF-8
bytes; seqs start at 1; digests and Merkle node values are
:data:`crdtstore.merkle.HASH_SIZE` bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from crdtstore.merkle import HASH_SIZE

from .exceptions import InvalidMessage, MalformedMessage
from .types import LogEntry

__all__ = [
    "MAX_BATCH",
    "MAX_BLOB_BYTES",
    "MAX_HANDSHAKE_BYTES",
    "MAX_ID_BYTES",
    "MAX_LIST",
    "MAX_PRESENCE_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "BucketItemsRequest",
    "BucketItemsResponse",
    "Deltas",
    "Hello",
    "LogTruncated",
    "MerkleChildrenRequest",
    "MerkleChildrenResponse",
    "MerkleRootRequest",
    "MerkleRootResponse",
    "Message",
    "MessageType",
    "Presence",
    "ReadRequest",
    "ReadResponse",
    "Ready",
    "StatePush",
    "StateRequest",
    "StateResponse",
    "WriteAck",
    "decode",
]

PROTOCOL_VERSION = 2
"""Bumped on any incompatible change of the messages or the state machine (2: sealed messages, Ready)."""

MAX_ID_BYTES = 256
"""Longest id (replica, origin, region, document) in UTF-8 bytes; the node's limit too."""

MAX_BATCH = 1024
"""Most entries in one ``Deltas`` or states in one state message."""

MAX_LIST = 4096
"""Most items in any other list (Merkle nodes, buckets, vector entries, items per bucket)."""

MAX_BLOB_BYTES = 64 << 20
"""Largest delta or state carried by one message."""

MAX_HANDSHAKE_BYTES = 4096
"""Largest message accepted before the peer proved it holds the secret (a Hello is under 1 KiB).

A stranger may open a link and talk: before its Auth checks out, nothing it
sends may cost more memory than this (the transports bound the websocket
message size to it until then, see :mod:`sync.io.transport`)."""

MAX_U64 = (1 << 64) - 1

MAX_PRESENCE_BYTES = 4096
"""Largest presence state a peer may relay (the live channel accepts 1 KiB from an editor)."""


class MessageType(enum.IntEnum):
    """The registry of type bytes: one per message class, never reused."""

    HELLO = 0x01
    AUTH = 0x02
    READY = 0x03
    DELTAS = 0x10
    ACK = 0x11
    LOG_TRUNCATED = 0x12
    MERKLE_ROOT_REQUEST = 0x20
    MERKLE_ROOT_RESPONSE = 0x21
    MERKLE_CHILDREN_REQUEST = 0x22
    MERKLE_CHILDREN_RESPONSE = 0x23
    BUCKET_ITEMS_REQUEST = 0x24
    BUCKET_ITEMS_RESPONSE = 0x25
    STATE_REQUEST = 0x30
    STATE_RESPONSE = 0x31
    STATE_PUSH = 0x32
    READ_REQUEST = 0x40
    READ_RESPONSE = 0x41
    WRITE_ACK = 0x42
    PRESENCE = 0x50


# Encoding primitives.


class _Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def uint(self, n: int) -> None:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            if n:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
        self.parts.append(bytes(out))

    def blob(self, data: bytes) -> None:
        self.uint(len(data))
        self.parts.append(bytes(data))

    def text(self, s: str) -> None:
        self.blob(s.encode())

    def opt_blob(self, data: bytes | None) -> None:
        # A presence flag rather than a sentinel length: "absent" and "empty" differ.
        if data is None:
            self.uint(0)
        else:
            self.uint(1)
            self.blob(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint(self) -> int:
        n = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise MalformedMessage("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                # Canonical: no redundant trailing zero groups, so each value has one encoding.
                if byte == 0 and shift:
                    raise MalformedMessage("non-canonical varint")
                break
            shift += 7
            if shift > 63:
                raise MalformedMessage("varint too long")
        if n > MAX_U64:
            raise MalformedMessage("varint out of range")
        return n

    def blob(self, limit: int = MAX_BLOB_BYTES) -> bytes:
        n = self.uint()
        if n > limit:
            raise MalformedMessage(f"byte string of {n} bytes exceeds {limit}")
        end = self.pos + n
        if end > len(self.data):
            raise MalformedMessage("truncated byte string")
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out

    def text(self) -> str:
        raw = self.blob(MAX_ID_BYTES)
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise MalformedMessage("invalid UTF-8") from exc

    def opt_blob(self) -> bytes | None:
        flag = self.uint()
        if flag > 1:
            raise MalformedMessage("bad presence flag")
        return self.blob() if flag else None

    def count(self, limit: int) -> int:
        n = self.uint()
        if n > limit:
            raise MalformedMessage(f"list of {n} items exceeds {limit}")
        return n

    def list(self, limit: int, item: Callable[[], Any]) -> tuple[Any, ...]:
        return tuple(item() for _ in range(self.count(limit)))

    def done(self) -> None:
        if self.pos != len(self.data):
            raise MalformedMessage("trailing bytes")


# Validation helpers: raise InvalidMessage, which decode() turns into MalformedMessage.


def _check_id(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{what} must be a non-empty string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError as exc:
        raise InvalidMessage(f"{what} is not valid Unicode") from exc
    if size > MAX_ID_BYTES:
        raise InvalidMessage(f"{what} longer than {MAX_ID_BYTES} bytes")


def _check_uint(value: object, what: str, *, low: int = 0) -> None:
    if type(value) is not int or not low <= value <= MAX_U64:
        raise InvalidMessage(f"{what} must be an integer in [{low}, 2**64)")


def _check_blob(value: object, what: str, *, size: int | None = None, limit: int = MAX_BLOB_BYTES) -> None:
    if type(value) is not bytes:
        raise InvalidMessage(f"{what} must be bytes")
    if size is not None and len(value) != size:
        raise InvalidMessage(f"{what} must be {size} bytes")
    if len(value) > limit:
        raise InvalidMessage(f"{what} longer than {limit} bytes")


def _check_list(value: object, what: str, limit: int) -> None:
    if type(value) is not tuple:
        raise InvalidMessage(f"{what} must be a tuple")
    if len(value) > limit:
        raise InvalidMessage(f"{what} has more than {limit} items")


def _check_pair(value: object, what: str) -> None:
    if type(value) is not tuple or len(value) != 2:
        raise InvalidMessage(f"{what} must be a pair")


# The messages.


class Message:
    """Base of every message: ``TYPE`` plus the body codec. Don't subclass outside this module."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]

    def encode(self) -> bytes:
        """The wire form: the type byte, then the body."""
        w = _Writer()
        w.parts.append(bytes((self.TYPE,)))
        self._write(w)
        return w.getvalue()

    def _write(self, w: _Writer) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def _read(cls, r: _Reader) -> Message:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """The first message on a connection, from both sides.

    Attributes:
        replica_id: The stable id of the replica (kept across restarts; acks are keyed by it).
        origin: The id this incarnation mints dots and logs deltas under.
        region: The replica's region (quorum levels count replicas per region).
        epoch: Bumped on every start of the replica.
        version: The protocol version the sender speaks.
        nonce: Fresh random bytes (16 to 64); the peer's Auth MACs it.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    replica_id: str
    origin: str
    region: str
    epoch: int
    version: int
    nonce: bytes

    def __post_init__(self) -> None:
        _check_id(self.replica_id, "replica_id")
        _check_id(self.origin, "origin")
        _check_id(self.region, "region")
        _check_uint(self.epoch, "epoch")
        _check_uint(self.version, "version")
        _check_blob(self.nonce, "nonce", limit=64)
        if len(self.nonce) < 16:
            raise InvalidMessage("nonce must be at least 16 bytes")

    def _write(self, w: _Writer) -> None:
        w.text(self.replica_id)
        w.text(self.origin)
        w.text(self.region)
        w.uint(self.epoch)
        w.uint(self.version)
        w.blob(self.nonce)

    @classmethod
    def _read(cls, r: _Reader) -> Hello:
        return cls(r.text(), r.text(), r.text(), r.uint(), r.uint(), r.blob(64))


@dataclass(frozen=True, slots=True)
class Auth(Message):
    """Proof that the sender holds the cluster secret (HMAC-SHA256, see ``sync.protocol``)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH
    mac: bytes

    def __post_init__(self) -> None:
        _check_blob(self.mac, "mac", size=32)

    def _write(self, w: _Writer) -> None:
        w.blob(self.mac)

    @classmethod
    def _read(cls, r: _Reader) -> Auth:
        return cls(r.blob(32))


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """The first sealed message each way: "I checked your Auth and hold the session keys".

    Nothing else is sent until the peer's Ready arrived, so a side raises its
    transport's message limit (``MAX_HANDSHAKE_BYTES`` until then) before the
    peer can send anything larger. It also confirms the keys: its tag can only
    be made with the frame key of that direction.
    """

    TYPE: ClassVar[MessageType] = MessageType.READY

    def _write(self, w: _Writer) -> None:
        pass

    @classmethod
    def _read(cls, r: _Reader) -> Ready:
        return cls()


@dataclass(frozen=True, slots=True)
class Deltas(Message):
    """A batch of logged deltas, each origin's in increasing seq order."""

    TYPE: ClassVar[MessageType] = MessageType.DELTAS
    entries: tuple[LogEntry, ...]

    def __post_init__(self) -> None:
        _check_list(self.entries, "entries", MAX_BATCH)
        for e in self.entries:
            if not isinstance(e, LogEntry):
                raise InvalidMessage("entries must be LogEntry tuples")
            _check_id(e.origin, "origin")
            _check_uint(e.seq, "seq", low=1)
            _check_id(e.doc_id, "doc_id")
            _check_blob(e.delta, "delta")

    def _write(self, w: _Writer) -> None:
        w.uint(len(self.entries))
        for e in self.entries:
            w.text(e.origin)
            w.uint(e.seq)
            w.text(e.doc_id)
            w.blob(e.delta)

    @classmethod
    def _read(cls, r: _Reader) -> Deltas:
        return cls(r.list(MAX_BATCH, lambda: LogEntry(r.text(), r.uint(), r.text(), r.blob())))


def _vector_tuple(vector: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(vector.items()))


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The sender's version vector: per origin, the highest seq it holds durably with no gap below.

    Attributes:
        vector: ``(origin, seq)`` pairs sorted by origin, each origin once, seq >= 1.
    """

    TYPE: ClassVar[MessageType] = MessageType.ACK
    vector: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        _check_list(self.vector, "vector", MAX_LIST)
        prev: str | None = None
        for pair in self.vector:
            _check_pair(pair, "vector entry")
            _check_id(pair[0], "origin")
            _check_uint(pair[1], "seq", low=1)
            if prev is not None and pair[0] <= prev:
                raise InvalidMessage("vector must be sorted by origin, each once")
            prev = pair[0]

    @classmethod
    def of(cls, vector: Mapping[str, int]) -> Ack:
        """The Ack of a vector (zero entries are left out: seq 0 means nothing held)."""
        return cls(_vector_tuple({k: v for k, v in vector.items() if v > 0}))

    def as_dict(self) -> dict[str, int]:
        return dict(self.vector)

    def _write(self, w: _Writer) -> None:
        w.uint(len(self.vector))
        for origin, seq in self.vector:
            w.text(origin)
            w.uint(seq)

    @classmethod
    def _read(cls, r: _Reader) -> Ack:
        return cls(r.list(MAX_LIST, lambda: (r.text(), r.uint())))


@dataclass(frozen=True, slots=True)
class LogTruncated(Message):
    """The sender's log of ``origin`` starts at ``first``: get what is below by anti-entropy."""

    TYPE: ClassVar[MessageType] = MessageType.LOG_TRUNCATED
    origin: str
    first: int

    def __post_init__(self) -> None:
        _check_id(self.origin, "origin")
        _check_uint(self.first, "first", low=2)

    def _write(self, w: _Writer) -> None:
        w.text(self.origin)
        w.uint(self.first)

    @classmethod
    def _read(cls, r: _Reader) -> LogTruncated:
        return cls(r.text(), r.uint())


@dataclass(frozen=True, slots=True)
class MerkleRootRequest(Message):
    """Anti-entropy: what is your Merkle root?"""

    TYPE: ClassVar[MessageType] = MessageType.MERKLE_ROOT_REQUEST
    request_id: int

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)

    @classmethod
    def _read(cls, r: _Reader) -> MerkleRootRequest:
        return cls(r.uint())


@dataclass(frozen=True, slots=True)
class MerkleRootResponse(Message):
    """Anti-entropy: my Merkle root (and the tree shape it belongs to)."""

    TYPE: ClassVar[MessageType] = MessageType.MERKLE_ROOT_RESPONSE
    request_id: int
    fanout: int
    depth: int
    root: bytes

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_uint(self.fanout, "fanout", low=2)
        _check_uint(self.depth, "depth", low=1)
        _check_blob(self.root, "root", size=HASH_SIZE)

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.uint(self.fanout)
        w.uint(self.depth)
        w.blob(self.root)

    @classmethod
    def _read(cls, r: _Reader) -> MerkleRootResponse:
        return cls(r.uint(), r.uint(), r.uint(), r.blob(HASH_SIZE))


def _check_nodes(nodes: object) -> None:
    _check_list(nodes, "nodes", MAX_LIST)
    assert isinstance(nodes, tuple)
    for node in nodes:
        _check_pair(node, "node")
        _check_uint(node[0], "level")
        _check_uint(node[1], "index")


@dataclass(frozen=True, slots=True)
class MerkleChildrenRequest(Message):
    """Anti-entropy: the children of these inner nodes ``(level, index)``, please."""

    TYPE: ClassVar[MessageType] = MessageType.MERKLE_CHILDREN_REQUEST
    request_id: int
    nodes: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_nodes(self.nodes)

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.uint(len(self.nodes))
        for level, index in self.nodes:
            w.uint(level)
            w.uint(index)

    @classmethod
    def _read(cls, r: _Reader) -> MerkleChildrenRequest:
        return cls(r.uint(), r.list(MAX_LIST, lambda: (r.uint(), r.uint())))


@dataclass(frozen=True, slots=True)
class MerkleChildrenResponse(Message):
    """Anti-entropy: per requested node (same order), the values of its children."""

    TYPE: ClassVar[MessageType] = MessageType.MERKLE_CHILDREN_RESPONSE
    request_id: int
    children: tuple[tuple[bytes, ...], ...]

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_list(self.children, "children", MAX_LIST)
        for values in self.children:
            _check_list(values, "child values", 256)
            for v in values:
                _check_blob(v, "node value", size=HASH_SIZE)

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.uint(len(self.children))
        for values in self.children:
            w.uint(len(values))
            for v in values:
                w.blob(v)

    @classmethod
    def _read(cls, r: _Reader) -> MerkleChildrenResponse:
        return cls(r.uint(), r.list(MAX_LIST, lambda: r.list(256, lambda: r.blob(HASH_SIZE))))


@dataclass(frozen=True, slots=True)
class BucketItemsRequest(Message):
    """Anti-entropy: the ``(doc_id, digest)`` pairs of these leaf buckets, please."""

    TYPE: ClassVar[MessageType] = MessageType.BUCKET_ITEMS_REQUEST
    request_id: int
    buckets: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_list(self.buckets, "buckets", MAX_LIST)
        for b in self.buckets:
            _check_uint(b, "bucket")

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.uint(len(self.buckets))
        for b in self.buckets:
            w.uint(b)

    @classmethod
    def _read(cls, r: _Reader) -> BucketItemsRequest:
        return cls(r.uint(), r.list(MAX_LIST, r.uint))


@dataclass(frozen=True, slots=True)
class BucketItemsResponse(Message):
    """Anti-entropy: per requested bucket (same order), its ``(doc_id, digest)`` pairs."""

    TYPE: ClassVar[MessageType] = MessageType.BUCKET_ITEMS_RESPONSE
    request_id: int
    items: tuple[tuple[tuple[str, bytes], ...], ...]

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_list(self.items, "items", MAX_LIST)
        for bucket in self.items:
            _check_list(bucket, "bucket items", MAX_LIST)
            for pair in bucket:
                _check_pair(pair, "item")
                _check_id(pair[0], "doc_id")
                _check_blob(pair[1], "digest", size=HASH_SIZE)

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.uint(len(self.items))
        for bucket in self.items:
            w.uint(len(bucket))
            for doc_id, digest in bucket:
                w.text(doc_id)
                w.blob(digest)

    @classmethod
    def _read(cls, r: _Reader) -> BucketItemsResponse:
        return cls(r.uint(), r.list(MAX_LIST, lambda: r.list(MAX_LIST, lambda: (r.text(), r.blob(HASH_SIZE)))))


def _check_doc_ids(doc_ids: object) -> None:
    _check_list(doc_ids, "doc_ids", MAX_BATCH)
    assert isinstance(doc_ids, tuple)
    for d in doc_ids:
        _check_id(d, "doc_id")


def _check_states(states: object, *, optional: bool) -> None:
    _check_list(states, "states", MAX_BATCH)
    assert isinstance(states, tuple)
    for pair in states:
        _check_pair(pair, "state")
        _check_id(pair[0], "doc_id")
        if not (optional and pair[1] is None):
            _check_blob(pair[1], "state")


@dataclass(frozen=True, slots=True)
class StateRequest(Message):
    """Anti-entropy: the encoded states of these documents, please."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_REQUEST
    request_id: int
    doc_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_doc_ids(self.doc_ids)

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.uint(len(self.doc_ids))
        for d in self.doc_ids:
            w.text(d)

    @classmethod
    def _read(cls, r: _Reader) -> StateRequest:
        return cls(r.uint(), r.list(MAX_BATCH, r.text))


@dataclass(frozen=True, slots=True)
class StateResponse(Message):
    """Anti-entropy: ``(doc_id, state or None when absent)`` per requested document."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_RESPONSE
    request_id: int
    states: tuple[tuple[str, bytes | None], ...]

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_states(self.states, optional=True)

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.uint(len(self.states))
        for doc_id, state in self.states:
            w.text(doc_id)
            w.opt_blob(state)

    @classmethod
    def _read(cls, r: _Reader) -> StateResponse:
        return cls(r.uint(), r.list(MAX_BATCH, lambda: (r.text(), r.opt_blob())))


@dataclass(frozen=True, slots=True)
class StatePush(Message):
    """Anti-entropy: states the receiver lacks or holds older; it merges them."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_PUSH
    states: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        _check_states(self.states, optional=False)

    def _write(self, w: _Writer) -> None:
        w.uint(len(self.states))
        for doc_id, state in self.states:
            w.text(doc_id)
            w.blob(state)

    @classmethod
    def _read(cls, r: _Reader) -> StatePush:
        return cls(r.list(MAX_BATCH, lambda: (r.text(), r.blob())))


@dataclass(frozen=True, slots=True)
class ReadRequest(Message):
    """Quorum read: your state of ``doc_id``, please."""

    TYPE: ClassVar[MessageType] = MessageType.READ_REQUEST
    request_id: int
    doc_id: str

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_id(self.doc_id, "doc_id")

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.text(self.doc_id)

    @classmethod
    def _read(cls, r: _Reader) -> ReadRequest:
        return cls(r.uint(), r.text())


@dataclass(frozen=True, slots=True)
class ReadResponse(Message):
    """Quorum read: my state of ``doc_id`` (None if I do not have it)."""

    TYPE: ClassVar[MessageType] = MessageType.READ_RESPONSE
    request_id: int
    doc_id: str
    state: bytes | None

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_id(self.doc_id, "doc_id")
        if self.state is not None:
            _check_blob(self.state, "state")

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.text(self.doc_id)
        w.opt_blob(self.state)

    @classmethod
    def _read(cls, r: _Reader) -> ReadResponse:
        return cls(r.uint(), r.text(), r.opt_blob())


@dataclass(frozen=True, slots=True)
class WriteAck(Message):
    """Quorum write: ``reached=False`` asks "tell me once you hold (origin, seq) durably";
    the answer repeats the fields with ``reached=True``.
    """

    TYPE: ClassVar[MessageType] = MessageType.WRITE_ACK
    request_id: int
    doc_id: str
    origin: str
    seq: int
    reached: bool

    def __post_init__(self) -> None:
        _check_uint(self.request_id, "request_id")
        _check_id(self.doc_id, "doc_id")
        _check_id(self.origin, "origin")
        _check_uint(self.seq, "seq", low=1)
        if type(self.reached) is not bool:
            raise InvalidMessage("reached must be a bool")

    def _write(self, w: _Writer) -> None:
        w.uint(self.request_id)
        w.text(self.doc_id)
        w.text(self.origin)
        w.uint(self.seq)
        w.uint(int(self.reached))

    @classmethod
    def _read(cls, r: _Reader) -> WriteAck:
        request_id, doc_id, origin, seq, flag = r.uint(), r.text(), r.text(), r.uint(), r.uint()
        if flag > 1:
            raise MalformedMessage("bad reached flag")
        return cls(request_id, doc_id, origin, seq, bool(flag))


@dataclass(frozen=True, slots=True)
class Presence(Message):
    """An editor's ephemeral presence on a document, relayed to peers and never stored.

    ``client`` names the editor's connection (unique per sending replica);
    an empty ``state`` means it is gone. The receiver does not relay it on.
    """

    TYPE: ClassVar[MessageType] = MessageType.PRESENCE
    doc_id: str
    client: str
    state: bytes

    def __post_init__(self) -> None:
        _check_id(self.doc_id, "doc_id")
        _check_id(self.client, "client")
        _check_blob(self.state, "state", limit=MAX_PRESENCE_BYTES)

    def _write(self, w: _Writer) -> None:
        w.text(self.doc_id)
        w.text(self.client)
        w.blob(self.state)

    @classmethod
    def _read(cls, r: _Reader) -> Presence:
        return cls(r.text(), r.text(), r.blob(MAX_PRESENCE_BYTES))


_REGISTRY: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Auth,
        Ready,
        Deltas,
        Ack,
        LogTruncated,
        MerkleRootRequest,
        MerkleRootResponse,
        MerkleChildrenRequest,
        MerkleChildrenResponse,
        BucketItemsRequest,
        BucketItemsResponse,
        StateRequest,
        StateResponse,
        StatePush,
        ReadRequest,
        ReadResponse,
        WriteAck,
        Presence,
    )
}
assert len(_REGISTRY) == len(MessageType), "every MessageType needs exactly one class"


def decode(data: bytes, *, max_size: int = MAX_BLOB_BYTES + (1 << 20)) -> Message:
    """Decode one message from its wire form.

    Args:
        data: One whole websocket message.
        max_size: Refuse longer input before parsing it.

    Raises:
        MalformedMessage: Anything wrong with ``data`` (and nothing else is raised).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("expected bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds {max_size}")
    if not data:
        raise MalformedMessage("empty message")
    cls = _REGISTRY.get(data[0])
    if cls is None:
        raise MalformedMessage(f"unknown message type 0x{data[0]:02x}")
    r = _Reader(data)
    r.pos = 1
    try:
        msg = cls._read(r)
    except InvalidMessage as exc:
        raise MalformedMessage(f"{cls.__name__}: {exc}") from exc
    r.done()
    return msg
