"""The one event table: complete, used by the simulator, and each handler's use and abuse over a MemStore."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from typing import Any

import pytest

from sync import dispatch as sd
from sync import events as ev
from sync.memstore import MemStore
from sync.quarantine import RELAYED
from sync.simulator import Simulator
from sync.store import ReplicaStore, Suspended, run_sync
from sync.types import LogEntry
from tests.sync.helpers import StoreContext, make_protocol

INC = [{"op": "increment", "path": ["n"]}]


def event_types() -> set[type[ev.Event]]:
    """Every subclass of Event, by its module name (a slotted dataclass leaves its pre-slots class behind)."""
    found: set[type[ev.Event]] = set()
    todo = [ev.Event]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(getattr(sys.modules[sub.__module__], sub.__qualname__))
            todo.append(sub)
    return found


def test_every_event_type_has_exactly_one_handler() -> None:
    declared = {getattr(ev, name) for name in ev.__all__}
    types = event_types()
    assert types == {t for t in declared if isinstance(t, type) and issubclass(t, ev.Event) and t is not ev.Event}
    assert set(sd.HANDLERS) == types
    # One handler per type, none shared (a shared one would have to branch on the type again).
    assert len(set(sd.HANDLERS.values())) == len(sd.HANDLERS)
    assert all(inspect.iscoroutinefunction(h) for h in sd.HANDLERS.values())
    assert set(sd.READS) <= types


def test_an_unknown_event_is_a_key_error_and_touches_nothing() -> None:
    store = MemStore("a", region="eu", nonce="1")
    ctx = StoreContext(store, make_protocol(store), [])
    with pytest.raises(KeyError):
        run_sync(sd.dispatch(ctx, object()))  # type: ignore[arg-type]
    assert store.docs == {} and ctx.stats == {}


def test_memstore_and_node_are_replica_stores() -> None:
    from crdtstore.node import Node

    assert isinstance(MemStore("a", region="eu", nonce="1"), ReplicaStore)
    members = {name: m for name, m in vars(ReplicaStore).items() if not name.startswith("_")}
    assert len(members) == 14  # info and 13 coroutines
    for cls in (MemStore, Node):
        for name, member in members.items():
            theirs = getattr(cls, name)
            if isinstance(member, property):
                assert isinstance(theirs, property), (cls, name)
                continue
            assert inspect.iscoroutinefunction(theirs), (cls, name)
            ours_params = list(inspect.signature(member).parameters)
            assert list(inspect.signature(theirs).parameters) == ours_params, (cls, name)


def test_run_sync_refuses_a_coroutine_that_suspends() -> None:
    async def sleeps() -> int:
        await asyncio.sleep(0)
        return 1

    async def returns() -> int:
        return 2

    with pytest.raises(Suspended):
        run_sync(sleeps())
    assert run_sync(returns()) == 2


def test_the_simulator_dispatches_through_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type[ev.Event]] = []

    def spy(kind: type[ev.Event], real: sd.Handler) -> sd.Handler:
        async def handler(ctx: Any, event: ev.Event) -> None:
            seen.append(kind)
            if kind is not ev.ApplyDeltas:  # deltas dropped: only the table could have applied them
                await real(ctx, event)

        return handler

    for kind, real in list(sd.HANDLERS.items()):
        monkeypatch.setitem(sd.HANDLERS, kind, spy(kind, real))
    sim = Simulator({"a": "eu", "b": "us"}, seed=1)
    sim.run(2)
    sim.write("a", "doc", INC)
    sim.run(2)
    assert ev.Authenticated in seen and ev.ApplyDeltas in seen
    # The simulator has no way around the table: b never applied a's delta.
    (state,) = run_sync(sim.replicas["b"].store.read_states(["doc"]))
    assert state is None


# Use and abuse of the handlers, over a MemStore and a recording context.


def scene() -> tuple[MemStore, MemStore, StoreContext]:
    src, dst = MemStore("a", region="eu", nonce="1"), MemStore("b", region="us", nonce="2")
    return src, dst, StoreContext(dst, make_protocol(dst), [make_protocol(dst, nonce=3)])


def test_apply_deltas_applies_the_batch_and_counts_it() -> None:
    src, dst, ctx = scene()
    entries = tuple(src.apply("doc", INC) for _ in range(3))
    run_sync(sd.dispatch(ctx, ev.ApplyDeltas(entries)))
    assert dst.encoded() == src.encoded() and ctx.stats["deltas_applied"] == 3 and not ctx.rejected


def test_a_bad_delta_in_a_batch_skips_only_itself_and_the_link_goes_on() -> None:
    src, dst, ctx = scene()
    good = src.apply("doc", INC)
    other = src.apply("other", INC)
    bad = LogEntry(good.origin, 3, "doc", b"not a delta")
    later = src.apply("doc", INC)._replace(seq=4)  # the same document, after the bad one: held back
    run_sync(sd.dispatch(ctx, ev.ApplyDeltas((good, other, bad, later))))
    assert not ctx.rejected and ctx.stats["deltas_applied"] == 4
    assert run_sync(dst.version_vector()) == {good.origin: 4}  # every one counts as received: acked
    assert dst.docs["doc"].value() == {"n": 1} and dst.docs["other"].value() == {"n": 1}
    logged = run_sync(dst.log_range(good.origin, 0, 10))
    assert [(e.seq, e.delta) for e in logged] == [(1, good.delta), (2, other.delta), (3, b""), (4, b"")]
    [record] = dst.quarantined()
    assert (record.doc_id, record.seq, record.failures) == ("doc", 3, 2)
    assert record.reason.startswith("DecodeError")


def test_relays_pull_the_placeholder_never_the_bad_bytes() -> None:
    src, dst, ctx = scene()
    bad = LogEntry(src.origin, 1, "doc", b"not a delta")
    run_sync(sd.dispatch(ctx, ev.ApplyDeltas((bad,))))
    (relayed,) = run_sync(dst.log_range(src.origin, 0, 10))
    assert relayed == LogEntry(src.origin, 1, "doc", b"")
    # The next replica skips the placeholder the same way: its mark moves on, the document is quarantined.
    third = MemStore("c", region="ap", nonce="3")
    assert third.apply_remote(*relayed) and run_sync(third.version_vector()) == {src.origin: 1}
    assert [(q.doc_id, q.reason) for q in third.quarantined()] == [("doc", RELAYED)] and third.docs == {}


def test_a_batch_the_log_cannot_hold_is_rejected_whole_and_writes_nothing() -> None:
    src, dst, ctx = scene()
    good = src.apply("doc", INC)
    for bad in (LogEntry("bad\x00", 1, "doc", good.delta), LogEntry(good.origin, 0, "doc", good.delta)):
        run_sync(sd.dispatch(ctx, ev.ApplyDeltas((good, bad))))
        assert dst.docs == {} and dst.log == {} and ctx.stats["deltas_applied"] == 0
        assert isinstance(ctx.rejected[-1][1], ValueError)
    assert [what for what, _ in ctx.rejected] == [f"deltas from ({good.origin}, 1)"] * 2


def test_merge_states_merges_the_good_ones_and_counts_and_logs_the_bad_one(caplog: pytest.LogCaptureFixture) -> None:
    src, dst, ctx = scene()
    src.apply("x", INC)
    src.apply("y", INC)
    states = (("x", src.read_state("x")), ("bad", b"junk"), ("y", src.read_state("y")), ("a/b", src.read_state("x")))
    with caplog.at_level(logging.WARNING, logger="sync.dispatch"):
        run_sync(sd.dispatch(ctx, ev.MergeStates(states)))  # type: ignore[arg-type]
    assert set(dst.docs) == {"x", "y"} and ctx.stats["states_merged"] == 2
    assert ctx.stats["states_rejected"] == 2 and not ctx.rejected and not ctx.closed
    assert [r.doc_id for r in caplog.records] == ["bad", "a/b"]  # type: ignore[attr-defined]
    assert [q.doc_id for q in dst.quarantined()] == ["bad"]  # the unaddressable id is only counted
    assert dst.quarantine.stats()["ids_rejected"] == 1


def test_a_store_failure_that_is_not_bad_data_propagates_to_the_adapter() -> None:
    src, dst, ctx = scene()
    src.apply("x", INC)

    async def broken(states: Any) -> list[bool | BaseException]:
        return [OSError("disk full")]

    dst.merge_states = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        run_sync(sd.dispatch(ctx, ev.MergeStates((("x", src.read_state("x")),))))  # type: ignore[arg-type]
    assert not ctx.rejected


def test_skip_log_raises_the_mark_and_every_link_hears_the_whole_vector() -> None:
    _, dst, ctx = scene()
    raised: list[dict[str, int]] = []
    ctx.input_all = lambda call: raised.append(run_sync(dst.version_vector()))  # type: ignore[method-assign]
    run_sync(sd.dispatch(ctx, ev.SkipLog("c.1.z", 4)))
    assert run_sync(dst.version_vector()) == {"c.1.z": 4} and raised == [{"c.1.z": 4}]


def test_peer_acked_stays_in_memory() -> None:
    _, dst, ctx = scene()
    run_sync(sd.dispatch(ctx, ev.PeerAcked("a", {"a.1.1": 3})))
    assert ctx.acks == {"a": {"a.1.1": 3}} and run_sync(dst.acked("a")) == {}


def test_failed_closes_the_link_with_its_code() -> None:
    _, _, ctx = scene()
    run_sync(sd.dispatch(ctx, ev.Failed(4001, "bad auth")))
    assert ctx.closed == [(4001, "bad auth")]
