"""The connection state machine of :class:`sync.protocol.PeerProtocol`.

Rule 1: everything that decides whether an input is allowed in a state,
and which state it leads to, lives in this file, as tables.

Rule 2: this file knows nothing about what a message means (deltas, acks,
Merkle trees); the protocol classifies each input as one :class:`Input`
and asks :meth:`ConnectionState.process` where that leads.

Theory of operation::

    CONNECTING --Hello--> AUTHENTICATING --Auth--> CONFIRMING --Ready--> OPEN --(data)--> OPEN
        |                      |                    |                  |
        +-------- FAIL --------+------ FAIL --------+------ FAIL ------+--> FAILED --EOF--> CLOSED
        +-------- EOF  ------------------------------------------------------------------------^

Both sides start in CONNECTING with their Hello already queued (there are
no client and server roles). The peer's Auth, once its MAC checks out,
leads to CONFIRMING: the peer is known, and every message from then on is
sealed (``sync.channel``); the first must be its ``Ready``, which says it
checked our Auth too. Only then is the link OPEN for data. Any input missing from the table for the
current state is illegal: the protocol turns it into an
:class:`~sync.exceptions.AuthenticationFailed` before OPEN (nothing is
accepted before authentication) and an
:class:`~sync.exceptions.UnexpectedMessage` after. In FAILED and CLOSED,
peer messages are ignored (``IGNORED``): the adapter is closing the
connection and late bytes must not produce effects.
"""

from __future__ import annotations

import enum
import logging

__all__ = ["IGNORED", "SEALED", "TRANSITIONS", "ConnectionState", "Input", "State"]

logger = logging.getLogger(__name__)


class State(enum.IntEnum):
    CONNECTING = 0
    AUTHENTICATING = 1
    CONFIRMING = 2
    OPEN = 3
    FAILED = 4
    CLOSED = 5


CONNECTING = State.CONNECTING
AUTHENTICATING = State.AUTHENTICATING
CONFIRMING = State.CONFIRMING
OPEN = State.OPEN
FAILED = State.FAILED
CLOSED = State.CLOSED


class Input(enum.Enum):
    HELLO = "hello"  # the peer's Hello
    AUTH = "auth"  # the peer's Auth, MAC verified
    READY = "ready"  # the peer's Ready (sealed, tag verified)
    DATA = "data"  # any other peer message
    FAIL = "fail"  # a protocol error (theirs or a local fail())
    EOF = "eof"  # the connection is gone


TRANSITIONS: dict[State, dict[Input, State]] = {
    CONNECTING: {Input.HELLO: AUTHENTICATING, Input.FAIL: FAILED, Input.EOF: CLOSED},
    AUTHENTICATING: {Input.AUTH: CONFIRMING, Input.FAIL: FAILED, Input.EOF: CLOSED},
    CONFIRMING: {Input.READY: OPEN, Input.FAIL: FAILED, Input.EOF: CLOSED},
    OPEN: {Input.DATA: OPEN, Input.FAIL: FAILED, Input.EOF: CLOSED},
    FAILED: {Input.FAIL: FAILED, Input.EOF: CLOSED},
    CLOSED: {Input.FAIL: CLOSED, Input.EOF: CLOSED},
}

IGNORED: frozenset[State] = frozenset({FAILED, CLOSED})
"""States in which peer messages are dropped unread."""

SEALED: frozenset[State] = frozenset({CONFIRMING, OPEN})
"""States in which every message, either way, is sealed (the peer's Auth checked out)."""


class ConnectionState:
    """Holds the state; :meth:`process` applies the table and logs each transition."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = CONNECTING

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        if state is not self._state:
            logger.debug("= connection is %s", state.name)
        self._state = state

    def process(self, event: Input) -> State:
        """Move to the state ``event`` leads to.

        Raises:
            KeyError: ``event`` is not allowed in the current state (the caller maps it).
        """
        self.state = TRANSITIONS[self._state][event]
        return self._state
