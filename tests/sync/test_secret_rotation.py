"""Rotating the cluster secret with no cut link: a side accepts more secrets than the one it proves itself with."""

from __future__ import annotations

import pytest

from sync import events as ev
from sync._state import State
from sync.channel import Channel
from sync.exceptions import CloseCode, FrameAuthFailed
from sync.protocol import PeerProtocol
from tests.sync.helpers import Pair, run_sync

OLD = b"the-old-cluster-secret-0123456789"
NEW = b"the-new-cluster-secret-9876543210"
INC = [{"op": "increment", "path": ["n"]}]

# The rotation, one step per rolling restart of every node: (proves with, also accepts).
STEPS = [(OLD, ()), (OLD, (NEW,)), (NEW, (OLD,)), (NEW, ())]


def pair_of(a: tuple[bytes, tuple[bytes, ...]], b: tuple[bytes, tuple[bytes, ...]]) -> Pair:
    pair = Pair()

    def proto(store: object, secret: bytes, accepted: tuple[bytes, ...], nonce: int) -> PeerProtocol:
        old = pair.pa if store is pair.a else pair.pb
        return PeerProtocol(
            our=old.our,
            secret=secret,
            nonce=nonce.to_bytes(16, "big"),
            now=0.0,
            our_vector=run_sync(pair.a.version_vector() if store is pair.a else pair.b.version_vector()),
            config=old.config,
            accepted_secrets=accepted,
        )

    pair.pa = proto(pair.a, *a, 1)
    pair.pb = proto(pair.b, *b, 2)
    pair.sync_until_quiet()
    return pair


@pytest.mark.parametrize("i", range(len(STEPS)))
@pytest.mark.parametrize("j", range(len(STEPS)))
def test_nodes_one_step_apart_link_and_two_steps_apart_do_not(i: int, j: int) -> None:
    pair = pair_of(STEPS[i], STEPS[j])
    if abs(i - j) <= 1:
        assert pair.pa.state is State.OPEN and pair.pb.state is State.OPEN
        # Each direction is sealed under its sender's secret: deltas cross both ways.
        pair.write("a", "from-a", INC)
        pair.write("b", "from-b", INC)
        pair.sync_until_quiet()
        assert pair.a.read_state("from-b") is not None and pair.b.read_state("from-a") is not None
    else:
        codes = {e.close_code for side in "ab" for e in pair.events[side] if isinstance(e, ev.Failed)}
        assert codes == {CloseCode.AUTH_FAILED}
        assert pair.a.read_state("from-b") is None


def test_a_stranger_with_a_third_secret_is_refused_by_a_node_that_accepts_two() -> None:
    pair = pair_of((NEW, (OLD,)), (b"a-third-secret-nobody-accepts-000", ()))
    assert pair.pa.state is State.FAILED


def test_the_key_of_the_peer_direction_is_the_one_its_auth_matched() -> None:
    hello_a, hello_b = b"hello of a", b"hello of b"
    a = Channel(OLD, hello_a, hello_b, accepted=(NEW,))
    b = Channel(NEW, hello_b, hello_a, accepted=(OLD,))
    assert a.check_auth(b.our_auth) and b.check_auth(a.our_auth)
    # Not a's own secret's key: b's first message, sealed under the old key instead, fails at a.
    forged = Channel(OLD, hello_b, hello_a)
    with pytest.raises(FrameAuthFailed):
        a.open(forged.seal(b"forged"))
    assert b.open(a.seal(b"a to b")) == b"a to b"
    assert a.open(b.seal(b"b to a")) == b"b to a"


def test_an_empty_accepted_secret_is_our_misuse() -> None:
    from sync.exceptions import LocalProtocolError

    pair = Pair()
    with pytest.raises(LocalProtocolError):
        PeerProtocol(our=pair.pa.our, secret=OLD, nonce=b"n" * 16, now=0.0, our_vector={}, accepted_secrets=[b""])
