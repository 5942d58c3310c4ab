"""The sans-I/O replication protocol: one :class:`PeerProtocol` per peer connection.

API summary (for adapters: the websocket transport and the simulator)
---------------------------------------------------------------------

Construct one object per connection, on both sides alike (there is no client
or server role)::

    proto = PeerProtocol(
        our=PeerInfo(replica_id="eu-ab12", origin=node.replica_id, region="eu", epoch=3),
        secret=cluster_secret,          # bytes, shared by every cluster member
        nonce=secrets.token_bytes(16),  # fresh per connection, passed in
        now=loop.time(),                # seconds, any monotonic origin
        our_vector=await node.version_vector(),
        config=SyncConfig(...),         # optional: limits, intervals, MerkleShape
    )

The constructor queues our ``Hello``. Then the adapter loops over these
**inputs** (each may queue messages and events):

* ``receive_message(data: bytes)``: one whole websocket message from the peer.
* ``receive_tick(now: float)``: call every ``config.tick_interval`` seconds
  or so; drives handshake/idle timeouts, retransmission, periodic acks and
  periodic anti-entropy.
* ``receive_eof()``: the connection is gone (idempotent; state -> CLOSED).
* ``local_update(origin, seq, doc_id, delta)``: the node durably committed
  ``(origin, seq)``: a local write, *or a remote delta it applied from any
  peer* (call it on every PeerProtocol of the node, including the one the
  delta came from: that is how deltas are relayed and how we ack).
* answers to the ``Need*`` events below: ``send_log(origin, after, entries)``,
  ``answer_merkle_root(request_id, root)``,
  ``answer_merkle_children(request_id, children)``,
  ``answer_bucket_items(request_id, items)``, ``answer_states(request_id, states)``.
* quorum helpers: ``request_read(request_id, doc_id)``,
  ``request_write_ack(request_id, doc_id, origin, seq)``, and
  ``push_states(states)`` (read repair: the peer merges them).
* ``fail(code, reason)``: close on our side for a local reason.

**Outputs**, drained by swapping the buffers (after *every* input call):

* ``messages_to_send() -> list[bytes]``: send each as one binary websocket
  message, in order.
* ``events_received() -> list[Event]``: effects to apply, in order
  (``sync.events`` documents each one):

  ================================  =================================================
  event                             the adapter must ...
  ================================  =================================================
  ``Authenticated(peer)``           note the peer (``PeerInfo``); the link is OPEN, nothing
                                    is accepted before it
  ``ApplyDeltas(entries)``          ``node.apply_remote`` each in order, then call
                                    ``local_update`` for each on every PeerProtocol
  ``MergeStates(states)``           ``node.merge_state(doc_id, state)`` for each
  ``NeedLog(origin, after, limit)`` ``send_log(origin, after, node.log_range(origin, after, limit))``
  ``PeerAcked(peer_id, vector)``    remember it; maybe truncate the log up to
                                    :func:`sync.truncation.truncation_vector` (``node.set_acked`` first)
  ``SkipLog(origin, upto)``         raise the node's contiguous mark of ``origin`` to ``upto``
                                    (anti-entropy has merged everything up to it)
  ``NeedMerkleRoot(request_id)``    ``answer_merkle_root(request_id, node.merkle_root())``
  ``NeedMerkleChildren(rid, nodes)``  ``answer_merkle_children(rid, [children(l, i) ...])``
  ``NeedBucketItems(rid, buckets)`` ``answer_bucket_items(rid, [bucket_items(b) ...])``
  ``NeedStates(rid, doc_ids)``      ``answer_states(rid, [read_state(d) ...])`` (None if absent)
  ``ReadResponded(...)``            hand the state to the quorum read waiting on the request id
  ``WriteAcked(...)``               count the peer toward the quorum write waiting on it
  ``PresenceReceived(...)``         hand it to the live channel (memory only; expires with the link)
  ``AntiEntropyDone(stats)``        nothing (metrics)
  ``Failed(close_code, reason)``    close the websocket with ``close_code``; reconnect later
  ================================  =================================================

:data:`sync.dispatch.HANDLERS` is this table as code, shared by every adapter.

Answers may come later and in any order (they carry the request id), but
``ApplyDeltas``/``MergeStates`` must be applied in event order. Properties:
``state`` (:class:`sync._state.State`), ``peer`` (``PeerInfo | None``),
``peer_verified`` (the peer's Auth checked out: lift the transport's
pre-handshake message limit *before* sending what that input queued),
``their_vector`` (what the peer acknowledged), ``close_code``,
``close_reason``, ``protocol_error``. The receive path never raises on peer
input; misuse by the adapter raises :class:`sync.exceptions.LocalProtocolError`.

Theory of operation
-------------------

**Handshake.** Each side sends ``Hello`` (ids, region, epoch, protocol
version, a fresh nonce). On the peer's Hello each side answers ``Auth``: a
MAC keyed by the cluster secret over both Hellos in (sender, receiver)
order, so it binds both nonces, both identities and the direction; it can
neither be replayed on another connection nor reflected back
(:mod:`sync.channel`). Any other message before a valid Auth, a bad MAC,
an unknown version, our own id or nonce, or a message over
``max_handshake_bytes`` fails the connection with no effect emitted.

**Sealed messages.** From the peer's valid Auth on, every message either
way carries an HMAC tag under a per-direction session key derived from the
secret and both Hellos, over a per-direction counter and the message
(:class:`sync.channel.Channel`): a message injected, replayed, reordered,
dropped from the middle, reflected or moved from another link fails the
connection (``FRAME_AUTH_FAILED``). So a relay that forwards a handshake
between two members gets a link it can read (without TLS) but not speak on.
Each side's first sealed message is ``Ready``, and nothing else goes out
until the peer's Ready came in: a side lifts its transport's small
pre-handshake message limit when it checks the peer's Auth, before its own
Ready leaves, so nothing large reaches it before the limit is lifted.

**Who may speak for an origin.** Origins are per-incarnation ids (the node's
``replica_id`` changes on every start), so a peer cannot declare in advance
the origins it will relay; and every member holds the cluster secret, so an
"only declared origins" rule would not stop a malicious member anyway while it
would break relaying (A-B-C line). The rule is therefore: *any authenticated
member may relay any origin, except our own current origin* beyond the
highest seq we minted; such a delta can only be forged or corrupt, and
accepting it would make us later mint a seq that peers drop as a duplicate,
silently losing a write. It fails the connection (``FORBIDDEN_ORIGIN``).
Our origin at or below our mark is a harmless echo and is dropped.

**The parts.** :class:`PeerProtocol` owns the connection: the handshake,
the sealed channel, timeouts, and the single ordered output. The rest has
state objects of its own, each module opening with its theory of operation
(as Automerge keeps its per-peer sync state apart):

* :class:`sync._outbound.Outbound`, the sending half of the delta flow:
  what the peer acknowledged and was sent, the window, retransmission,
  ``LogTruncated`` when our log cannot serve the peer;
* :class:`sync._inbound.Inbound`, the receiving half: in-order delivery per
  origin, the buffer for entries that came early, the acks and
  ``WriteAck`` answers we owe, the gaps a peer's truncated log left us;
* :class:`sync._requests.Requests`, anti-entropy sessions
  (:mod:`sync.antientropy`) and the requests both ways, answered by the
  node through the ``answer_*`` inputs.

On a healthy link each side pushes its deltas in order and the peer acks
what became durable; anything not pushed live is pulled from the log;
whatever the logs cannot ship (truncated, lost, restored from a backup)
anti-entropy repairs, and the delta flow resumes past it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import messages as m
from ._inbound import Inbound
from ._outbound import Outbound
from ._requests import Requests
from ._state import IGNORED, OPEN, SEALED, ConnectionState, Input, State
from .channel import Channel
from .config import SyncConfig
from .events import (
    ApplyDeltas,
    Authenticated,
    Event,
    Failed,
    MergeStates,
    NeedLog,
    PeerAcked,
    PeerInfo,
    PresenceReceived,
    ReadResponded,
    SkipLog,
    WriteAcked,
)
from .exceptions import (
    AuthenticationFailed,
    CloseCode,
    ForbiddenOrigin,
    InvalidState,
    LimitExceeded,
    LocalProtocolError,
    MessageTooBig,
    RemoteProtocolError,
    UnexpectedMessage,
    UnsupportedProtocol,
)
from .types import LogEntry

__all__ = ["PeerProtocol"]


class PeerProtocol:
    """The replication state machine for one peer connection (see the module docstring).

    Args:
        our: Our identity as the Hello announces it.
        secret: The cluster secret (HMAC key).
        nonce: Fresh random bytes (16 to 64) for this connection.
        now: The caller's clock at connection time.
        our_vector: The node's contiguous version vector now.
        config: Limits and intervals.
        accepted_secrets: Further secrets the peer may prove itself with, during a rotation
            (:class:`sync.channel.Channel`); we prove ourselves with ``secret``.
    """

    def __init__(
        self,
        *,
        our: PeerInfo,
        secret: bytes,
        nonce: bytes,
        now: float,
        our_vector: Mapping[str, int],
        config: SyncConfig | None = None,
        accepted_secrets: Sequence[bytes] = (),
    ) -> None:
        if not secret or not all(accepted_secrets):
            raise LocalProtocolError("the cluster secret must not be empty")
        self.our = our
        self.config = config if config is not None else SyncConfig()
        self._secret = bytes(secret)
        self._accepted = tuple(bytes(a) for a in accepted_secrets)
        self._nonce = bytes(nonce)
        self._hello = m.Hello(our.replica_id, our.origin, our.region, our.epoch, m.PROTOCOL_VERSION, self._nonce)
        self._channel: Channel | None = None  # once the peer's Hello is known
        self._verified = False
        self._conn = ConnectionState()
        self._messages: list[bytes] = []
        self._events: list[Event] = []
        # Whether this connection sends deltas. An adapter holding two links
        # to one peer (each side dials) switches one off, or every delta
        # would cross twice. See :meth:`set_pushing`.
        self.pushing = True
        self.peer: PeerInfo | None = None
        self.protocol_error: RemoteProtocolError | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._now = now
        self._started = now
        self._last_received = now
        self._last_ack_sent = now
        self._ack_due = False  # a commit's ack waits for the next tick (config.ack_delay)
        self._commit_acked_at: float | None = None  # when a commit's ack last went out at once
        self._unacked = 0  # entries handed to the node since our last ack (a waiting ack must not stall the peer)
        # The two directions of the delta flow, each with its own state (sync._inbound, sync._outbound).
        limits = self.config
        self._in = Inbound(our_vector, max_buffered=limits.max_buffered, max_write_waits=limits.max_pending_requests)
        self._out = Outbound(window=limits.window, now=now)
        # Anti-entropy sessions and the requests both ways (sync._requests).
        self._req = Requests(
            self.config,
            now=now,
            emit=self._emit,
            send=self._send,
            is_open=lambda: self._conn.state is OPEN,
            on_finish=self._anti_entropy_finished,
        )
        self._messages.append(self._hello.encode())  # the handshake goes in clear: nothing to seal it with yet

    # Public properties.

    @property
    def state(self) -> State:
        return self._conn.state

    @property
    def peer_verified(self) -> bool:
        """Whether the peer proved it holds the cluster secret (its Auth checked out).

        From then on the adapter may accept messages up to ``max_message_bytes``
        at the transport; it must lift the limit before it sends the messages
        queued by the input that made this true (our ``Ready`` is among them).
        """
        return self._verified

    @property
    def their_vector(self) -> dict[str, int]:
        """What the peer acknowledged on this connection."""
        return dict(self._out.acked)

    @property
    def our_vector(self) -> dict[str, int]:
        """What this protocol believes the node durably holds."""
        return dict(self._in.vector)

    @property
    def anti_entropy_running(self) -> bool:
        return self._req.session is not None

    # Public methods for receiving data.

    def receive_message(self, data: bytes) -> None:
        """Process one message from the peer.

        After calling this method, call :meth:`messages_to_send` and
        :meth:`events_received` and act on them. Never raises on bad peer
        input: the connection fails instead (a ``Failed`` event).
        """
        if self._conn.state in IGNORED:
            return
        self._last_received = self._now
        try:
            sealed = self._conn.state in SEALED
            if not sealed and len(data) > self.config.max_handshake_bytes:
                raise MessageTooBig(f"message of {len(data)} bytes before authentication")
            if len(data) > self.config.max_message_bytes:
                raise LimitExceeded(f"message of {len(data)} bytes exceeds {self.config.max_message_bytes}")
            if sealed:
                assert self._channel is not None
                data = self._channel.open(data)
            msg = m.decode(data, max_size=self.config.max_message_bytes)
            self._dispatch(msg)
        except RemoteProtocolError as exc:
            self._fail_remote(exc)

    def receive_tick(self, now: float) -> None:
        """Advance time: timeouts, periodic acks, retransmission, anti-entropy."""
        self._now = self._req.now = now
        state = self._conn.state
        if state in IGNORED:
            return
        if state is not OPEN:
            if now - self._started >= self.config.handshake_timeout:
                self._fail(CloseCode.TIMEOUT, "handshake timed out")
            return
        if now - self._last_received >= self.config.idle_timeout:
            self._fail(CloseCode.TIMEOUT, "peer idle")
            return
        if self._ack_due or now - self._last_ack_sent >= self.config.ack_interval:
            self._send_ack()
        if self._out.in_flight() and now - self._out.last_progress >= self.config.retransmit_timeout:
            # Acks stalled: something was lost. Resend from what the peer acknowledged.
            self._out.rewind(now)
            self._pump_all()
        req = self._req
        req.expire(now)
        if req.due(now):
            assert self.peer is not None
            if req.again:
                self.start_anti_entropy()
            elif self.our.replica_id < self.peer.replica_id and self.pushing:
                req.start(periodic=True, gaps=self._in.gaps)
            else:
                req.last = now

    def receive_eof(self) -> None:
        """The connection is gone. Idempotent."""
        self._conn.process(Input.EOF)
        self._out.outbox.clear()

    # Public methods for the node's side.

    def local_update(self, origin: str, seq: int, doc_id: str, delta: bytes) -> None:
        """The node durably committed ``(origin, seq)`` (a local write or an applied remote delta)."""
        self._req.touch(doc_id)
        if self._in.committed(origin, seq):
            self._check_durable(origin)
        if self._conn.state is not OPEN or not self._out.their_known or not self.pushing:
            return
        if origin != self.our.origin:
            # A relay waits until the peer's ack still lacks it a while later: in a mesh the
            # peer most likely got it from its origin directly (sync._outbound, Relays).
            self._out.committed_elsewhere(origin, seq, self._now, self.config.relay_grace)
            return
        if self._out.can_push(origin, seq):
            self._out.push(LogEntry(origin, seq, doc_id, delta))
        else:
            self._pump(origin)

    def set_pushing(self, pushing: bool) -> None:
        """Switch sending deltas on or off; switched on, catch up on what the peer lacks."""
        self.pushing = pushing
        if pushing and self._conn.state is OPEN and self._out.their_known:
            self._pump_all()

    def raise_vector(self, vector: Mapping[str, int]) -> None:
        """The node holds at least ``vector`` (e.g. after a ``SkipLog`` on any connection)."""
        for origin, seq in vector.items():
            if self._in.raise_to(origin, seq):
                self._check_durable(origin)
                self._drain_buffer(origin)
        if self._conn.state is OPEN and self._out.their_known:
            self._pump_all()

    def send_log(self, origin: str, after: int, entries: Sequence[LogEntry]) -> None:
        """Answer a ``NeedLog``: the node's log entries of ``origin`` after ``after`` (in seq order)."""
        out = self._out
        out.log_pending.discard(origin)
        if self._conn.state is not OPEN:
            return
        floor = out.floor(origin)
        fresh = [e for e in entries if e.origin == origin and e.seq > floor]
        first = out.truncated_at(origin, after, fresh, self._in.vector.get(origin, 0))
        if first is not None:
            # The log no longer holds what the peer lacks: it must repair by anti-entropy.
            if out.block(origin, first):
                self._send(m.LogTruncated(origin, first))
            return
        out.push_run(origin, fresh)
        self._pump(origin)

    def answer_merkle_root(self, request_id: int, root: bytes) -> None:
        self._req.answer_merkle_root(request_id, root)

    def answer_merkle_children(self, request_id: int, children: Sequence[Sequence[bytes]]) -> None:
        self._req.answer_merkle_children(request_id, children)

    def answer_bucket_items(self, request_id: int, items: Sequence[Sequence[tuple[str, bytes]]]) -> None:
        self._req.answer_bucket_items(request_id, items)

    def answer_states(self, request_id: int, states: Sequence[bytes | None]) -> None:
        """Answer a ``NeedStates``: one state (or None) per requested document, in order."""
        self._req.answer_states(request_id, states)

    # Public methods for quorum reads and writes.

    def request_read(self, request_id: int, doc_id: str) -> None:
        """Ask the peer for its state of ``doc_id``; the answer is a ``ReadResponded`` event."""
        self._require_open()
        self._send(m.ReadRequest(request_id, doc_id))

    def request_write_ack(self, request_id: int, doc_id: str, origin: str, seq: int) -> None:
        """Ask to be told once the peer holds ``(origin, seq)``; the answer is a ``WriteAcked`` event."""
        self._require_open()
        self._send(m.WriteAck(request_id, doc_id, origin, seq, False))

    def push_states(self, states: Sequence[tuple[str, bytes]]) -> None:
        """Send full document states for the peer to merge (read repair after a quorum read).

        The peer's protocol turns them into a ``MergeStates`` event, as for an
        anti-entropy push. Chunked by ``config.states_chunk``. Dropped unless
        the connection is open (read repair is best effort: anti-entropy
        repairs whatever it misses).
        """
        if self._conn.state is not OPEN:
            return
        chunk = self.config.states_chunk
        states = [(d, bytes(s)) for d, s in states]
        for start in range(0, len(states), chunk):
            self._send(m.StatePush(tuple(states[start : start + chunk])))

    def send_presence(self, doc_id: str, client: str, state: bytes) -> None:
        """Relay an editor's presence (``state`` empty: gone) to the peer; dropped unless the link is open.

        Presence is ephemeral: nothing retransmits or acknowledges it, and the
        peer turns it into a ``PresenceReceived`` event without relaying it on.
        """
        if self._conn.state is not OPEN:
            return
        self._send(m.Presence(doc_id, client, state))

    def start_anti_entropy(self) -> None:
        """Start a Merkle comparison with the peer now (or right after the running one).

        It repairs every document that differs (it defers none, unlike the periodic sessions).
        """
        self._require_open()
        self._req.start(periodic=False, gaps=self._in.gaps)

    def fail(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close for a local reason (shutdown, the node rejected a delta)."""
        self._fail(code, reason)

    # Public methods for sending data.

    def messages_to_send(self) -> list[bytes]:
        """The messages to send, in order (drained). Flushes the batched delta push first."""
        self._flush()
        messages, self._messages = self._messages, []
        return messages

    def events_received(self) -> list[Event]:
        """The effects to apply, in order (drained)."""
        events, self._events = self._events, []
        return events

    # Private methods: dispatching peer messages.

    def _dispatch(self, msg: m.Message) -> None:
        if isinstance(msg, m.Hello):
            self._transition(Input.HELLO)
            self._receive_hello(msg)
        elif isinstance(msg, m.Auth):
            self._receive_auth(msg)
        elif isinstance(msg, m.Ready):
            self._transition(Input.READY)
            self._receive_ready()
        else:
            self._transition(Input.DATA)
            handler = _HANDLERS[type(msg)]
            handler(self, msg)

    def _transition(self, event: Input) -> None:
        try:
            self._conn.process(event)
        except KeyError:
            if self._conn.state is OPEN:
                raise UnexpectedMessage(f"{event.value} message on an open connection") from None
            raise AuthenticationFailed(f"{event.value} message before authentication") from None

    def _receive_hello(self, msg: m.Hello) -> None:
        if msg.version != m.PROTOCOL_VERSION:
            raise UnsupportedProtocol(f"peer speaks version {msg.version}, we speak {m.PROTOCOL_VERSION}")
        if msg.replica_id == self.our.replica_id or msg.origin == self.our.origin:
            raise AuthenticationFailed("the peer claims our own identity")
        if msg.nonce == self._nonce:
            raise AuthenticationFailed("the peer reflected our nonce")
        self.peer = PeerInfo(msg.replica_id, msg.origin, msg.region, msg.epoch)
        # The Hello as received: decode() accepts canonical encodings only, so this is its exact bytes.
        self._channel = Channel(self._secret, self._hello.encode(), msg.encode(), accepted=self._accepted)
        self._messages.append(m.Auth(self._channel.our_auth).encode())  # in clear, like the Hello

    def _receive_auth(self, msg: m.Auth) -> None:
        if self._conn.state is not State.AUTHENTICATING:
            self._transition(Input.AUTH)  # raises: Auth is only valid right after Hello
        assert self._channel is not None
        if not self._channel.check_auth(msg.mac):
            raise AuthenticationFailed("bad MAC: the peer does not hold the cluster secret, or relayed another link's")
        self._transition(Input.AUTH)
        self._verified = True
        self._send(m.Ready())  # sealed: the first message under the session key

    def _receive_ready(self) -> None:
        assert self.peer is not None
        self._out.last_progress = self._req.last = self._now
        self._events.append(Authenticated(self.peer))
        self._send_ack()  # our vector: the peer pushes what we lack (catch-up)

    def _receive_deltas(self, msg: m.Deltas) -> None:
        assert self.peer is not None
        # Check the whole batch before any effect.
        for e in msg.entries:
            if e.origin == self.our.origin and e.seq > self._in.vector.get(e.origin, 0):
                raise ForbiddenOrigin(f"delta ({e.origin}, {e.seq}) for our own origin, beyond what we minted")
        to_apply: list[LogEntry] = []
        duplicate = False
        for e in msg.entries:
            self._req.touch(e.doc_id)
            self._out.saw(e.origin, e.seq)
            ready = self._in.receive(e)
            if ready is None:
                duplicate = True
            else:
                to_apply.extend(ready)
        if to_apply:
            self._unacked += len(to_apply)
            self._in.await_durable(to_apply)
            self._events.append(ApplyDeltas(tuple(to_apply)))
        if duplicate and not to_apply:
            self._send_ack()  # the peer resent what we hold: our last ack was probably lost

    def _receive_ack(self, msg: m.Ack) -> None:
        assert self.peer is not None
        if self._out.receive_ack(msg.vector, self._now):
            self._events.append(PeerAcked(self.peer.replica_id, dict(self._out.acked)))
        self._pump_all()

    def _receive_log_truncated(self, msg: m.LogTruncated) -> None:
        if self._in.note_gap(msg.origin, msg.first - 1):
            self.start_anti_entropy()

    def _receive_peer_request(self, msg: m.Message) -> None:
        self._req.receive_request(msg)

    def _receive_response(self, msg: Any) -> None:
        self._req.receive_response(msg)

    def _receive_state_push(self, msg: m.StatePush) -> None:
        if msg.states:
            self._events.append(MergeStates(msg.states))

    def _receive_presence(self, msg: m.Presence) -> None:
        assert self.peer is not None
        self._events.append(PresenceReceived(self.peer.replica_id, msg.doc_id, msg.client, msg.state))

    def _receive_read_response(self, msg: m.ReadResponse) -> None:
        assert self.peer is not None
        self._events.append(ReadResponded(self.peer.replica_id, msg.request_id, msg.doc_id, msg.state))

    def _receive_write_ack(self, msg: m.WriteAck) -> None:
        assert self.peer is not None
        if msg.reached:
            self._events.append(WriteAcked(self.peer.replica_id, msg.request_id, msg.doc_id))
        elif self._in.wait_for_write(msg.request_id, msg.doc_id, msg.origin, msg.seq):
            self._send(m.WriteAck(msg.request_id, msg.doc_id, msg.origin, msg.seq, True))

    # Private methods: the delta flow (the state is sync._outbound's and sync._inbound's).

    def _pump(self, origin: str) -> None:
        """Ask the node's log for what the peer lacks of ``origin``, if anything and if allowed."""
        if not self.pushing:
            return
        floor = self._out.floor(origin)
        held = self._in.vector.get(origin, 0)
        if origin != self.our.origin and not self._out.relay_due(origin, held, self._now, self.config.relay_grace):
            return
        limit = self._out.log_request(origin, held, self.config.log_fetch)
        if limit is not None:
            self._events.append(NeedLog(origin, floor, limit))

    def _pump_all(self) -> None:
        for origin in sorted(self._in.vector):
            self._pump(origin)

    def _flush(self) -> None:
        if self._out.outbox:  # the common case, on every drain: nothing queued
            for batch in self._out.take_batches(self.config.batch_size):
                self._send(m.Deltas(batch))

    def _drain_buffer(self, origin: str) -> None:
        entries = self._in.take_buffered(origin)
        if entries:
            self._unacked += len(entries)
            self._in.await_durable(entries)
            self._events.append(ApplyDeltas(tuple(entries)))

    def _check_durable(self, origin: str) -> None:
        if self._in.settle(origin) and self._conn.state is OPEN:
            # Everything this peer sent us is durable: tell it, now or with the next tick's one ack.
            # At once also when the peer may be near its window: it sends nothing more until we ack.
            last = self._commit_acked_at
            if last is None or self._now - last >= self.config.ack_delay or 2 * self._unacked >= self.config.window:
                self._commit_acked_at = self._now
                self._send_ack()
            else:
                self._ack_due = True
        if self._in.write_waits and self._conn.state is OPEN:
            for rid, doc_id, o, s in self._in.writes_reached(origin):
                self._send(m.WriteAck(rid, doc_id, o, s, True))

    def _anti_entropy_finished(self, gaps: dict[str, int]) -> None:
        """A session ended, having merged the peer's states: raise our vector over the gaps it covered."""
        skipped = self._in.skip_gaps(gaps)
        self._events.extend(SkipLog(origin, upto) for origin, upto in skipped)
        for origin in sorted(self._in.buffer):
            self._drain_buffer(origin)
        if skipped:
            self._send_ack()

    def _send_ack(self) -> None:
        self._last_ack_sent = self._now
        self._ack_due = False
        self._unacked = 0
        self._send(m.Ack.of(dict(self._in.vector)))

    # Private methods: plumbing.

    def _require_open(self) -> None:
        if self._conn.state is not OPEN:
            raise InvalidState(f"connection is {self._conn.state.name}, not OPEN")

    def _send(self, msg: m.Message, *, count: bool = False) -> None:
        """Queue ``msg`` sealed: only the handshake (Hello, Auth) goes out in clear, and not through here."""
        if self._conn.state in IGNORED:
            return  # a failed or closed link sends nothing more
        if self._conn.state not in SEALED or self._channel is None:
            raise InvalidState(f"cannot send {type(msg).__name__} before the handshake")
        data = self._channel.seal(msg.encode())
        session = self._req.session
        if count and session is not None:
            session.count_bytes(sent=len(data))
        self._messages.append(data)

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _fail_remote(self, exc: RemoteProtocolError) -> None:
        self.protocol_error = exc
        self._fail(exc.close_code, str(exc))

    def _fail(self, code: int, reason: str) -> None:
        if self._conn.state in IGNORED:
            return
        self._conn.process(Input.FAIL)
        self.close_code = int(code)
        self.close_reason = reason
        # Nothing more goes out: queued deltas and answers are dropped with the connection.
        self._out.outbox.clear()
        self._messages.clear()
        self._events = [e for e in self._events if not isinstance(e, ApplyDeltas | MergeStates)]
        self._events.append(Failed(int(code), reason))


_HANDLERS: dict[type, Any] = {
    m.Deltas: PeerProtocol._receive_deltas,
    m.Ack: PeerProtocol._receive_ack,
    m.LogTruncated: PeerProtocol._receive_log_truncated,
    m.MerkleRootRequest: PeerProtocol._receive_peer_request,
    m.MerkleChildrenRequest: PeerProtocol._receive_peer_request,
    m.BucketItemsRequest: PeerProtocol._receive_peer_request,
    m.StateRequest: PeerProtocol._receive_peer_request,
    m.ReadRequest: PeerProtocol._receive_peer_request,
    m.MerkleRootResponse: PeerProtocol._receive_response,
    m.MerkleChildrenResponse: PeerProtocol._receive_response,
    m.BucketItemsResponse: PeerProtocol._receive_response,
    m.StateResponse: PeerProtocol._receive_response,
    m.StatePush: PeerProtocol._receive_state_push,
    m.ReadResponse: PeerProtocol._receive_read_response,
    m.WriteAck: PeerProtocol._receive_write_ack,
    m.Presence: PeerProtocol._receive_presence,
}
