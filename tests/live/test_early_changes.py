"""A document's live mirror taking peers' changes early (before their feed records) and in feed order.

The writer shows a peer's change once accepted, while older commits may still
wait for their fsync: the mirror then takes changes out of the feed's order,
and each one twice. Whatever the interleaving, a thin client that applies
every pushed patch holds the mirror's value, the version pushed with it is
the mirror's own, and once the feed is through, the mirror is the node's
document.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from crdtstore import codec
from crdtstore.api.limits import Limits
from crdtstore.api.live import DocChannel, LiveHub, LiveSettings
from crdtstore.document import Document
from crdtstore.patches import apply_patches
from crdtstore.version import open_version
from tests.live.idle import IdleNode

KEY = b"k" * 32
PEERS = ("p1-a.1.x", "p2-b.1.y")

# ("local", at, char): an edit here; ("remote", peer, at, char, early): a peer's edit, which the node
# accepts at once and the mirror may see at once; ("deliver",): the oldest committed record reaches the
# feed; ("catch up", peer): a peer receives what the node holds.
actions = st.lists(
    st.one_of(
        st.tuples(st.just("local"), st.integers(0, 50), st.sampled_from("ab")),
        st.tuples(st.just("remote"), st.sampled_from(PEERS), st.integers(0, 50), st.sampled_from("xy"), st.booleans()),
        st.tuples(st.just("deliver")),
        st.tuples(st.just("catch up"), st.sampled_from(PEERS)),
    ),
    max_size=40,
)


def _insert(doc: Document, at: int, char: str, replica: str) -> bytes:
    length = len(doc.value().get("t", ""))
    op = {"op": "insert", "path": ["t"], "index": min(at, length), "text": char}
    return codec.encode_delta(doc.apply([op], replica=replica))


@given(actions)
def test_a_client_holds_the_mirror_whatever_arrives_early(steps: list[tuple[Any, ...]]) -> None:
    async def scenario() -> None:
        ctx = SimpleNamespace(node=IdleNode(), version_key=KEY, limits=Limits(), replicator=None)
        channel = DocChannel(LiveHub(ctx, LiveSettings()), "d")  # type: ignore[arg-type]
        await channel.until_ready()
        client: dict[str, Any] = {}
        pushed: list[dict[str, Any]] = []

        def broadcast(data: str, **_: Any) -> None:
            message = orjson.loads(data)
            apply_patches(client, message["patches"])
            assert client == channel.mirror.value()
            assert open_version(message["version"], "d", KEY) == channel.mirror.version()
            pushed.append(message)

        channel.broadcast = broadcast  # type: ignore[method-assign]
        node = Document()
        peers = {p: Document() for p in PEERS}
        seqs = {p: 0 for p in (*PEERS, "r")}
        committed: list[dict[str, Any]] = []

        def record(origin: str, delta: bytes) -> dict[str, Any]:
            seqs[origin] += 1
            # As the feed writes it: the node's version after this commit.
            return {
                "type": "change",
                "origin": origin,
                "origin_seq": seqs[origin],
                "delta": orjson.loads(delta),
                "version": node.version(),
            }

        for step in steps:
            if step[0] == "local":
                committed.append(record("r", _insert(node, step[1], step[2], "r")))
            elif step[0] == "remote":
                _, peer, at, char, early = step
                delta = _insert(peers[peer], at, char, peer)
                node.join(codec.decode_delta(delta))
                committed.append(record(peer, delta))
                if early:
                    channel._take_early((peer, seqs[peer]), delta)
            elif step[0] == "deliver" and committed:
                await channel._take(committed.pop(0))
            elif step[0] == "catch up":
                peers[step[1]].merge(node.copy())
        while committed:
            await channel._take(committed.pop(0))
        assert channel.mirror.value() == node.value() == client
        assert channel.mirror.version() == node.version()
        assert not channel.early  # every early change met its feed record
        channel.stop()

    asyncio.run(scenario())
