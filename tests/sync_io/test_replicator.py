"""Two region nodes in one process, linked by websockets: deltas replicate, quorum levels are met."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from crdtstore import codec
from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore
from crdtstore.document import Document
from crdtstore.errors import DecodeError
from crdtstore.node import DocumentNotFound, Node, NodeConfig
from crdtstore.replicator import Replicator, ReplicatorSettings, _coalesce_deltas, _Link
from sync import messages as m
from sync._state import State
from sync.channel import TAG_SIZE
from sync.events import ApplyDeltas, Event, MergeStates, NeedLog, NeedMerkleRoot, PeerInfo
from sync.io.transport import TransportSettings, dial
from sync.protocol import PeerProtocol
from sync.quorum import Level
from sync.types import LogEntry

TOKEN = "replicator-test-token-0123456789"
SECRET = b"replicator-test-secret-0123456789"


@dataclass
class LinkedPair:
    """Two region nodes served by uvicorn on loopback, each dialing the other."""

    nodes: list[Node]
    replicators: list[Replicator]
    servers: list[uvicorn.Server]
    urls: list[str]

    def started(self) -> bool:
        return all(server.started for server in self.servers)


@contextlib.asynccontextmanager
async def linked_pair(tmp_path: Path, settings: ReplicatorSettings | None = None) -> AsyncIterator[LinkedPair]:
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    ports = [s.getsockname()[1] for s in socks]
    nodes = [Node(NodeConfig(region=f"r{i}", data_dir=tmp_path / f"r{i}", sync=False)) for i in range(2)]
    replicators = [
        Replicator(
            nodes[i],
            secret=SECRET,
            peers=[f"ws://127.0.0.1:{ports[1 - i]}/v1/peer"],
            region=f"r{i}",
            transport=TransportSettings(backoff_max=0.5, close_timeout=1.0),
            settings=settings,
        )
        for i in range(2)
    ]
    auth = AuthPolicy(tokens=TokenStore({TOKEN: Scope.READWRITE}))
    servers, tasks = [], []
    for i in range(2):
        app = build_app(nodes[i], auth=auth, replicator=replicators[i])
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        servers.append(server)
        tasks.append(asyncio.create_task(server.serve(sockets=[socks[i]])))
    try:
        yield LinkedPair(nodes, replicators, servers, [f"http://127.0.0.1:{p}" for p in ports])
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        for sock in socks:
            sock.close()


def test_writes_replicate_both_ways_and_quorum_levels_are_met(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Truncation only when the test asks.
        async with linked_pair(tmp_path, ReplicatorSettings(truncate_interval=None)) as pair:
            urls = pair.urls
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
                for _ in range(300):  # bounded wait for both lifespans
                    if all([(await client.get(u + "/readyz")).status_code == 200 for u in urls]):
                        break
                    await asyncio.sleep(0.02)
                # w=all waits for the peer: the write is then readable there at r=one.
                for i in range(5):
                    for url in urls:
                        ops = [{"op": "increment", "path": ["n"]}, {"op": "add", "path": ["s"], "value": f"{url}-{i}"}]
                        response = await client.post(f"{url}/v1/docs/d?w=all", json={"ops": ops})
                        assert response.status_code == 200, response.text
                values = [(await client.get(f"{u}/v1/docs/d?r=all")).json()["value"] for u in urls]
                assert values[0] == values[1]
                assert values[0]["n"] == 10
                assert sorted(values[0]["s"]) == sorted(f"{u}-{i}" for u in urls for i in range(5))
                # Acks live in memory until truncation stores them: then it relies on the stored ones.
                for own, replicator in zip(pair.nodes, pair.replicators, strict=True):
                    [peer_id] = replicator.peers()
                    assert await own.acked(peer_id) == {}
                    assert await replicator.truncate_once() >= 5  # w=all: the peer acked every write of ours
                    assert (await own.acked(peer_id))[own.replica_id] == 5
                    assert await own.log_range(own.replica_id, 0, 10) == []

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_an_undecodable_delta_quarantines_its_document_and_the_link_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        node = Node(NodeConfig(region="r0", data_dir=tmp_path / "r0", sync=False))
        # A configured peer that never connects: truncation must wait for it (nothing truncated).
        replicator = Replicator(
            node,
            secret=SECRET,
            peers=["ws://127.0.0.1:9/v1/peer"],
            region="r0",
            transport=TransportSettings(backoff_max=0.5, close_timeout=1.0),
        )
        auth = AuthPolicy(tokens=TokenStore({TOKEN: Scope.READWRITE}))
        server = uvicorn.Server(
            uvicorn.Config(build_app(node, auth=auth, replicator=replicator), log_config=None, lifespan="on")
        )
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(300):
                if server.started:
                    break
                await asyncio.sleep(0.02)
            # A member holding the secret (so it authenticates) that sends bytes no codec accepts.
            peer = PeerProtocol(
                our=PeerInfo("evil", "evil.1.n", "r9", 1),
                secret=SECRET,
                nonce=b"n" * 16,
                now=0.0,
                our_vector={"evil.1.n": 5},
            )
            conn = await dial(f"ws://127.0.0.1:{port}/v1/peer", settings=TransportSettings())
            for _ in range(100):  # bounded handshake
                for data in peer.messages_to_send():
                    await conn.send(data)
                if peer.state is State.OPEN:
                    break
                reply = await asyncio.wait_for(conn.recv(), 5)
                assert reply is not None
                peer.receive_message(reply)
            assert peer.state is State.OPEN
            await node.apply("mine", [{"op": "increment", "path": ["n"]}])
            good = codec.encode_delta(Document().apply([{"op": "set", "path": ["k"], "value": 1}], replica="evil.1.n"))
            entries = [
                LogEntry("evil.1.n", 1, "d", b"not a delta"),
                LogEntry("evil.1.n", 2, "a/b", good),
                LogEntry("evil.1.n", 3, "..", good),
                LogEntry("evil.1.n", 4, "ctl\x07", good),
                LogEntry("evil.1.n", 5, "fine", good),
            ]
            acked = 0
            for _ in range(1000):  # bounded: until the node acknowledged the whole batch
                for event in peer.events_received():
                    if isinstance(event, NeedLog):
                        peer.send_log(event.origin, event.after, [e for e in entries if e.seq > event.after])
                for data in peer.messages_to_send():
                    await conn.send(data)
                acked = peer.their_vector.get("evil.1.n", 0)
                if acked == 5:
                    break
                reply = await asyncio.wait_for(conn.recv(), 5)
                assert reply is not None, "the link must stay open"
                peer.receive_message(reply)
            assert acked == 5  # counted as received: the peer has nothing to re-send
            assert replicator.stats["protocol_errors"] == 0
            assert (await node.read("fine")).value == {"k": 1}
            assert await node.read_state("d") is None
            assert [q.doc_id for q in node.quarantined()] == ["d"]
            assert node.stats()["quarantine"]["ids_rejected"] == 3
            ids, _ = await node.list("", None, 10)
            assert ids == ["fine", "mine"]  # the unaddressable ids were never stored
            # The bad delta is not relayed: the log holds placeholders without a delta.
            logged = await node.log_range("evil.1.n", 0, 10)
            assert [(e.doc_id, e.delta) for e in logged[:4]] == [("d", b""), (".", b""), (".", b""), (".", b"")]
            # The configured peer never identified itself: the log stays whole.
            assert await replicator.truncate_once() == 0
            assert len(await node.log_range(node.replica_id, 0, 10)) == 1
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 20)
            sock.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_a_truncated_log_and_a_delete_are_repaired_by_anti_entropy_then_skipped(tmp_path: Path) -> None:
    async def seed() -> tuple[str, int]:
        # Before any link: b holds a's first two deltas; then a writes on, deletes, and drops its whole log.
        a = Node(NodeConfig(region="r0", data_dir=tmp_path / "r0", sync=False))
        b = Node(NodeConfig(region="r1", data_dir=tmp_path / "r1", sync=False))
        await a.start()
        await b.start()
        try:
            await a.apply("x", [{"op": "increment", "path": ["n"]}])
            await a.apply("gone", [{"op": "set", "path": ["g"], "value": 1}])
            for e in await a.log_range(a.replica_id, 0, 10):
                await b.apply_remote(e.origin, e.seq, e.doc_id, e.delta)
            await a.apply("x", [{"op": "increment", "path": ["n"]}])
            await a.delete("gone")
            vector = await a.version_vector()
            assert await a.truncate_log(vector) == 4
            return a.replica_id, vector[a.replica_id]
        finally:
            await a.close()
            await b.close()

    async def scenario() -> None:
        old_origin, last = await seed()
        async with linked_pair(tmp_path) as pair:
            a, b = pair.nodes
            for _ in range(500):  # bounded: until b skipped a's truncated entries and the trees agree
                if pair.started():
                    vector = await b.version_vector()
                    if vector.get(old_origin) == last and await a.merkle_root() == await b.merkle_root():
                        break
                await asyncio.sleep(0.02)
            # b could not get seq 3..4 from the log: anti-entropy merged a's states, then the mark skipped.
            assert (await b.version_vector()).get(old_origin) == last
            assert await a.merkle_root() == await b.merkle_root()
            assert (await b.read("x")).value == (await a.read("x")).value == {"n": 2}
            # The delete reached b only as a's tombstone state, and b's older live copy did not undo it at a.
            with pytest.raises(DocumentNotFound):
                await a.read("gone")
            with pytest.raises(DocumentNotFound):
                await b.read("gone")  # deleted there too: no field is left
            assert await a.read_state("gone") == await b.read_state("gone")

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_a_quorum_read_repairs_the_stale_replicas(tmp_path: Path) -> None:
    async def state_of(path: Path, ops: list[dict[str, object]]) -> bytes:
        # A state neither linked node has, from an unlinked third replica.
        other = Node(NodeConfig(region="r9", data_dir=path, sync=False))
        await other.start()
        try:
            await other.apply("doc", ops)
            state = await other.read_state("doc")
            assert state is not None
            return state
        finally:
            await other.close()

    async def scenario() -> None:
        async with linked_pair(tmp_path) as pair:
            a, b = pair.nodes
            reps = pair.replicators
            for _ in range(500):  # bounded: until both have an authenticated link
                if pair.started() and reps[0].peers() and reps[1].peers():
                    break
                await asyncio.sleep(0.02)
            # merge_state is not logged, so these states only travel by quorum read (or anti-entropy).
            await a.merge_state("doc", await state_of(tmp_path / "x", [{"op": "set", "path": ["x"], "value": 1}]))
            await b.merge_state("doc", await state_of(tmp_path / "y", [{"op": "set", "path": ["y"], "value": 2}]))
            outcome = await reps[0].read("doc", Level.ALL)
            assert outcome.ok and outcome.reached == 2
            assert outcome.repaired == (b.storage.identity.base,)  # b lacked x: it gets the join pushed
            assert (await a.read("doc")).value == {"x": 1, "y": 2}  # a joined b's state
            for _ in range(500):  # bounded: the push is asynchronous
                if await b.read_state("doc") == await a.read_state("doc"):
                    break
                await asyncio.sleep(0.02)
            assert (await b.read("doc")).value == {"x": 1, "y": 2}
            assert await a.merkle_root() == await b.merkle_root()
            again = await reps[1].read("doc", Level.QUORUM)
            assert again.ok and again.repaired == ()  # nothing stale any more

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_consecutive_delta_events_share_one_commit_in_order() -> None:
    e = [LogEntry("o", seq, "doc", b"d") for seq in range(1, 6)]
    merge = MergeStates((("doc", b"s"),))
    events: collections.deque[object] = collections.deque(
        [ApplyDeltas((e[0],)), ApplyDeltas((e[1], e[2])), merge, ApplyDeltas((e[3],)), ApplyDeltas((e[4],))]
    )
    assert _coalesce_deltas(events) == ApplyDeltas((e[0], e[1], e[2]))
    assert _coalesce_deltas(events) is merge  # never reordered across another event
    assert _coalesce_deltas(events) == ApplyDeltas((e[3], e[4]))
    assert not events


# The adapter's own scheduling, against stand-ins for the node, the link and (where its
# outputs are scripted) the protocol object.


class _StubConn:
    remote = "stub"
    close_code: int | None = None

    async def send(self, data: bytes) -> None:
        pass

    async def recv(self) -> bytes | None:
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code

    def lift_limit(self) -> None:
        pass


class _ScriptedProto:
    """Outputs given in advance; records the answers and failures the adapter feeds back."""

    pushing = True
    peer_verified = False

    def __init__(self, events: list[Event]) -> None:
        self._events = events
        self.answers: list[tuple[int, bytes]] = []
        self.failures: list[int] = []

    def messages_to_send(self) -> list[bytes]:
        return []

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def answer_merkle_root(self, request_id: int, root: bytes) -> None:
        self.answers.append((request_id, root))

    def local_update(self, origin: str, seq: int, doc_id: str, delta: bytes) -> None:
        pass

    def fail(self, code: int, reason: str = "") -> None:
        self.failures.append(code)

    def receive_eof(self) -> None:
        pass


def _open_protocols() -> tuple[PeerProtocol, PeerProtocol]:
    """Two protocol objects that completed the handshake and the first acks, in memory."""
    a = PeerProtocol(our=PeerInfo("a", "a.1.x", "r0", 1), secret=SECRET, nonce=b"a" * 16, now=0.0, our_vector={})
    b = PeerProtocol(our=PeerInfo("b", "b.1.y", "r1", 1), secret=SECRET, nonce=b"b" * 16, now=0.0, our_vector={})
    for _ in range(10):  # bounded: a handshake is two round trips
        to_b, to_a = a.messages_to_send(), b.messages_to_send()
        if not to_a and not to_b:
            break
        for data in to_b:
            b.receive_message(data)
        for data in to_a:
            a.receive_message(data)
    assert a.state is State.OPEN and b.state is State.OPEN
    a.events_received()
    return a, b


def test_a_run_of_local_writes_leaves_as_one_deltas_message_per_link() -> None:
    class Node1:
        replica_id = "a.1.x"

    replicator = Replicator(Node1(), secret=SECRET, region="r0")  # type: ignore[arg-type]  # only its id is used
    links = [_Link(proto=_open_protocols()[0], conn=_StubConn()) for _ in range(2)]
    replicator._links.update(links)
    entries = [LogEntry("a.1.x", seq, f"doc{seq % 2}", b"delta") for seq in range(1, 6)]
    replicator._announce(entries)  # what the tailer does with one page of the log: one group commit's writes
    for link in links:
        assert len(link.outbox) == 1
        message = m.decode(link.outbox[0][:-TAG_SIZE])  # the tag is the channel's (tests/sync/test_channel.py)
        assert isinstance(message, m.Deltas) and [e.seq for e in message.entries] == [1, 2, 3, 4, 5]


def test_reads_are_answered_while_a_commit_of_the_same_link_is_pending() -> None:
    class SlowNode:
        replica_id = "n.1.x"

        def __init__(self) -> None:
            self.applying = asyncio.Event()
            self.release = asyncio.Event()

        async def apply_remote_many(self, entries: list[LogEntry]) -> list[bool]:
            self.applying.set()
            await self.release.wait()
            return [True] * len(entries)

        async def merkle_root(self) -> bytes:
            return b"root"

    async def scenario() -> None:
        node = SlowNode()
        replicator = Replicator(node, secret=SECRET, region="r0")  # type: ignore[arg-type]  # a stub of what it calls
        proto = _ScriptedProto([ApplyDeltas((LogEntry("o.1.z", 1, "d", b"x"),)), NeedMerkleRoot(7)])
        link = _Link(proto=proto, conn=_StubConn())
        replicator._links.add(link)
        replicator._flush(link)
        workers = [
            asyncio.create_task(replicator._effects_loop(link, link.events, link.events_ready)),
            asyncio.create_task(replicator._effects_loop(link, link.reads, link.reads_ready)),
        ]
        try:
            await asyncio.wait_for(node.applying.wait(), 5)
            for _ in range(500):  # bounded
                if proto.answers:
                    break
                await asyncio.sleep(0.01)
            # The tree read queued behind the commit was answered before the commit finished.
            assert proto.answers == [(7, b"root")] and not node.release.is_set()
            node.release.set()
            for _ in range(500):  # bounded
                if replicator.stats["deltas_applied"]:
                    break
                await asyncio.sleep(0.01)
            assert replicator.stats["deltas_applied"] == 1
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_the_states_of_one_merge_event_are_submitted_together_and_a_bad_one_keeps_the_link() -> None:
    class MergeNode:
        replica_id = "n.1.x"

        def __init__(self, expected: int) -> None:
            self.expected = expected
            self.started = 0
            self.in_flight = 0
            self.most = 0
            self.everyone = asyncio.Event()

        async def _merge_one(self, doc_id: str, state: bytes) -> bool:  # what Node.merge_states gathers
            self.started += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            if self.started == self.expected:
                self.everyone.set()
            try:
                # One at a time, each would wait here in vain (bounded): a group commit needs them all queued.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.everyone.wait(), 0.5)
                if state == b"bad":
                    raise DecodeError("not a state")
                return True
            finally:
                self.in_flight -= 1

        # The group commit is Node's: its merge_states submits every state's merge at once.
        merge_states = Node.merge_states

    async def scenario() -> None:
        node = MergeNode(5)
        replicator = Replicator(node, secret=SECRET, region="r0")  # type: ignore[arg-type]  # a stub of what it calls
        proto = _ScriptedProto([])
        link = _Link(proto=proto, conn=_StubConn())
        states = tuple((f"d{i}", b"bad" if i == 3 else b"s") for i in range(5))
        await replicator._process(link, MergeStates(states))
        assert node.most == 5
        assert replicator.stats["protocol_errors"] == 0 and proto.failures == []
        assert replicator.stats["states_rejected"] == 1
        assert replicator.stats["states_merged"] == 4  # the others were merged: joins need no order

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


class _LogNode:
    """Just a log of our origin, as the tailer reads it."""

    replica_id = "a.1.x"

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []

    async def log_range(self, origin: str, after: int, limit: int) -> list[LogEntry]:
        return [e for e in self.entries if e.origin == origin and e.seq > after][:limit]

    def commit(self, seq: int) -> None:
        self.entries.append(LogEntry(self.replica_id, seq, "doc", b"delta"))


async def _tailing(interval: float, burst: int = 1) -> tuple[_LogNode, Replicator, _Link, asyncio.Task[None]]:
    node = _LogNode()
    settings = ReplicatorSettings(announce_interval=interval, announce_burst=burst)
    replicator = Replicator(node, secret=SECRET, region="r0", settings=settings)  # type: ignore[arg-type]
    link = _Link(proto=_open_protocols()[0], conn=_StubConn())
    replicator._links.add(link)
    replicator._running = True
    return node, replicator, link, asyncio.create_task(replicator._tail())


async def _messages(link: _Link, n: int) -> list[list[int]]:
    for _ in range(500):  # bounded: 10 s
        if len(link.outbox) >= n:
            break
        await asyncio.sleep(0.02)
    return [[e.seq for e in m.decode(data[:-TAG_SIZE]).entries] for data in link.outbox]  # type: ignore[attr-defined]


@pytest.mark.parametrize("burst", [1, 3])
def test_a_burst_of_commits_goes_at_once_then_commits_within_the_interval_cross_together(burst: int) -> None:
    """Commits within the burst never wait (the wait was on every cross-region change); more are still paced."""

    async def scenario() -> list[list[int]]:
        node, replicator, link, task = await _tailing(1.0, burst=burst)
        for seq in range(1, burst + 1):  # after a quiet spell, within the burst: each at once, on its own
            node.commit(seq)
            replicator._tail_wake.set()
            assert len(await _messages(link, seq)) == seq
        for seq in (burst + 1, burst + 2):  # the bucket is empty: these wait for the next token, then go as one
            node.commit(seq)
            replicator._tail_wake.set()
            await asyncio.sleep(0)
        sent = await _messages(link, burst + 1)
        task.cancel()
        return sent

    assert asyncio.run(scenario()) == [[seq] for seq in range(1, burst + 1)] + [[burst + 1, burst + 2]]


def test_a_sustained_commit_rate_is_announced_at_most_once_per_interval_after_the_burst() -> None:
    async def scenario() -> tuple[int, float]:
        node, replicator, link, task = await _tailing(0.02, burst=4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for seq in range(1, 201):  # a commit every millisecond for 0.2 s
            node.commit(seq)
            replicator._tail_wake.set()
            await asyncio.sleep(0.001)
        sent = await _messages(link, 1)
        elapsed = loop.time() - started
        task.cancel()
        assert [seq for message in sent for seq in message] == list(range(1, len(sum(sent, [])) + 1))
        return len(sent), elapsed

    messages, elapsed = asyncio.run(scenario())
    assert messages <= 4 + elapsed / 0.02 + 1


def test_with_no_announce_interval_each_commit_goes_on_its_own() -> None:
    async def scenario() -> list[list[int]]:
        node, replicator, link, task = await _tailing(0.0)
        for seq in (1, 2, 3):
            node.commit(seq)
            replicator._tail_wake.set()
            await _messages(link, seq)
        task.cancel()
        return await _messages(link, 3)

    assert asyncio.run(scenario()) == [[1], [2], [3]]


def test_a_write_waiting_for_its_announcement_already_counts_as_committed_and_bounds_truncation() -> None:
    async def scenario() -> tuple[int, int, list[list[int]]]:
        node, replicator, link, task = await _tailing(1.0)
        node.commit(1)
        replicator._tail_wake.set()
        await _messages(link, 1)
        node.commit(2)  # within the interval: its announcement waits
        replicator._tail_wake.set()
        for _ in range(500):  # bounded: until the tailer read it
            if replicator.meter.last_seq == 2:
                break
            await asyncio.sleep(0.01)
        seen = (replicator.meter.last_seq, replicator._announced, await _messages(link, 1))
        task.cancel()
        return seen

    last, announced, sent = asyncio.run(scenario())
    # /metrics counts it unacknowledged at once; truncation still stops at what the links were given.
    assert (last, announced, sent) == (2, 1, [[1]])
