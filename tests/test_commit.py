"""Tests of the group-commit writer (crdtstore.commit)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crdtstore.commit import GroupCommitWriter, Overloaded, WriteContext, WriterClosed
from crdtstore.storage import Storage, StorageError, StorageFull

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


def open_storage(path: Path, **kw: Any) -> Storage:
    c = itertools.count(1)
    return Storage.open(path, region="eu", random_id=lambda: f"n{next(c)}", **kw)


class Harness:
    """A storage plus a started writer; ``block()`` parks the writer thread until ``release()``."""

    def __init__(self, path: Path, **kw: Any) -> None:
        writer_kw = {k: kw.pop(k) for k in ("max_queue", "max_batch") if k in kw}
        self.storage = open_storage(path, **kw)
        self.writer = GroupCommitWriter(self.storage, **writer_kw)
        self.gate = threading.Event()
        self.parked = threading.Event()

    async def __aenter__(self) -> Harness:
        self.writer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        await self.writer.close()
        self.storage.close()

    def block(self) -> asyncio.Future[None]:
        """Occupy the writer with a request that waits for ``release()``."""

        def fn(ctx: WriteContext) -> None:
            self.parked.set()
            self.gate.wait()

        future = self.writer.submit(fn)
        return future

    async def parked_writer(self) -> None:
        await asyncio.to_thread(self.parked.wait)

    def release(self) -> None:
        self.gate.set()

    def hold_flush(self) -> _HeldFlush:
        """From now on, each meta flush waits for the returned object's ``release()``."""
        held = _HeldFlush(self.storage)
        self.storage.sync_meta = held  # type: ignore[method-assign]
        return held

    def put(self, key: bytes, value: bytes) -> Callable[[WriteContext], bytes]:
        def fn(ctx: WriteContext) -> bytes:
            ctx.txn.put(key, value, db=ctx.storage.dbs["docs"])
            return key

        return fn

    def get(self, key: bytes) -> bytes | None:
        with self.storage.read() as txn:
            return txn.get(key, db=self.storage.dbs["docs"])


def test_concurrent_submits_share_commits(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            first = h.block()
            await h.parked_writer()
            futures = [h.writer.submit(h.put(b"k%d" % i, b"v%d" % i)) for i in range(50)]
            assert h.writer.pending == 50
            h.release()
            assert await asyncio.gather(*futures) == [b"k%d" % i for i in range(50)]
            await first
            stats = h.writer.stats()
            # 51 requests: the blocker alone, then everything that queued behind it in one transaction.
            assert stats["requests"] == 51
            assert stats["commits"] == 2
            assert stats["max_batch_size"] == 50
            assert stats["rerun_batches"] == 0  # nothing failed: one run each, no nested transactions
            assert all(h.get(b"k%d" % i) == b"v%d" % i for i in range(50))

    run(main)


def test_max_batch_bounds_a_transaction(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path / "r", max_batch=8) as h:
            h.block()
            await h.parked_writer()
            futures = [h.writer.submit(h.put(b"k%d" % i, b"v")) for i in range(20)]
            h.release()
            await asyncio.gather(*futures)
            stats = h.writer.stats()
            assert stats["max_batch_size"] == 8
            assert stats["commits"] == 1 + 3  # 8 + 8 + 4

    run(main)


def test_failing_request_does_not_lose_its_batch_mates(tmp_path: Path) -> None:
    events: list[str] = []

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:

            def bad(ctx: WriteContext) -> None:
                ctx.on_abort(lambda: events.append("bad aborted"))
                ctx.on_commit(lambda: events.append("bad committed"))
                ctx.txn.put(b"bad", b"written before the error", db=ctx.storage.dbs["docs"])
                raise KeyError("boom")

            def good(name: bytes) -> Callable[[WriteContext], bytes]:
                put = h.put(name, b"ok")

                def fn(ctx: WriteContext) -> bytes:
                    ctx.on_commit(lambda: events.append(f"{name.decode()} committed"))
                    ctx.on_abort(lambda: events.append(f"{name.decode()} aborted"))
                    return put(ctx)

                return fn

            h.block()
            await h.parked_writer()
            f1 = h.writer.submit(good(b"g1"))
            f2 = h.writer.submit(bad)
            f3 = h.writer.submit(good(b"g2"))
            h.release()
            assert await f1 == b"g1"
            with pytest.raises(KeyError, match="boom"):
                await f2
            assert await f3 == b"g2"
            assert h.get(b"g1") == b"ok" and h.get(b"g2") == b"ok"
            assert h.get(b"bad") is None
            assert h.writer.stats()["commits"] == 2
            assert h.writer.stats()["failed_requests"] == 1
            assert h.writer.stats()["rerun_batches"] == 1

    run(main)
    # The batch ran once in one transaction: bad's error rolled back g1 too (g2 had
    # not run yet). Then again with a child transaction each: only bad's is rolled back.
    assert events == ["g1 aborted", "bad aborted", "bad aborted", "g1 committed", "g2 committed"]


def test_on_commit_runs_on_the_loop_before_the_future_resolves(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            loop_thread = threading.get_ident()
            seen: list[tuple[int, bool]] = []
            future: asyncio.Future[None]

            def fn(ctx: WriteContext) -> None:
                assert threading.get_ident() != loop_thread
                ctx.on_commit(lambda: seen.append((threading.get_ident(), future.done())))

            future = h.writer.submit(fn)
            await future
            assert seen == [(loop_thread, False)]

    run(main)


def test_queue_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path / "r", max_queue=3) as h:
            h.block()
            await h.parked_writer()
            queued = [h.writer.submit(h.put(b"k%d" % i, b"v")) for i in range(3)]
            with pytest.raises(Overloaded):
                h.writer.submit(h.put(b"over", b"v"))
            h.release()
            await asyncio.gather(*queued)
            assert h.get(b"over") is None
            await h.writer.submit(h.put(b"later", b"v"))  # room again

    run(main)


def test_map_full_grows_and_retries_the_batch(tmp_path: Path) -> None:
    calls: list[bytes] = []
    aborted: list[bytes] = []

    async def main() -> None:
        async with Harness(tmp_path / "r", map_size=256 << 10, max_map_size=16 << 20) as h:

            def big(name: bytes) -> Callable[[WriteContext], bytes]:
                def fn(ctx: WriteContext) -> bytes:
                    calls.append(name)
                    ctx.on_abort(lambda: aborted.append(name))
                    ctx.txn.put(name, b"x" * (400 << 10), db=ctx.storage.dbs["docs"])
                    return name

                return fn

            h.block()
            await h.parked_writer()
            futures = [h.writer.submit(big(b"a")), h.writer.submit(big(b"b"))]
            h.release()
            assert await asyncio.gather(*futures) == [b"a", b"b"]
            assert len(h.get(b"a") or b"") == len(h.get(b"b") or b"") == 400 << 10
            assert h.storage.info()["map_size"] > 256 << 10
            assert h.writer.stats()["retried_batches"] >= 1

    run(main)
    # Every retry re-ran the functions after rolling the earlier attempt back.
    assert calls.count(b"a") > 1
    for name in (b"a", b"b"):
        assert aborted.count(name) == calls.count(name) - 1  # the last run committed


def test_storage_full_at_the_cap_is_never_acknowledged(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path / "r", map_size=256 << 10, max_map_size=1 << 20) as h:
            await h.writer.submit(h.put(b"before", b"kept"))
            h.block()
            await h.parked_writer()
            small = h.writer.submit(h.put(b"small", b"fits"))
            huge = h.writer.submit(h.put(b"huge", b"x" * (2 << 20)))
            h.release()
            with pytest.raises(StorageFull):
                await huge
            # The batch-mate that fits on its own still commits.
            assert await small == b"small"
            assert h.get(b"huge") is None
            assert h.get(b"before") == b"kept" and h.get(b"small") == b"fits"
            assert h.storage.info()["map_size"] == 1 << 20
            assert h.writer.stats()["storage_full"] == 1

    run(main)
    # Nothing of the refused write survives a reopen either.
    s = open_storage(tmp_path / "r")
    try:
        with s.read() as txn:
            assert txn.get(b"huge", db=s.dbs["docs"]) is None
            assert txn.get(b"small", db=s.dbs["docs"]) == b"fits"
    finally:
        s.close()


def test_close_drains_the_queue(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(tmp_path / "r")
        h.writer.start()
        h.block()
        await h.parked_writer()
        futures = [h.writer.submit(h.put(b"k%d" % i, b"v")) for i in range(10)]
        closing = asyncio.ensure_future(h.writer.close())
        await asyncio.sleep(0)
        with pytest.raises(WriterClosed):
            h.writer.submit(h.put(b"late", b"v"))
        h.release()
        await closing
        # close() returned: every queued write is committed and its future resolved.
        assert all(f.done() and not f.exception() for f in futures)
        assert h.get(b"k9") == b"v" and h.get(b"late") is None
        await h.writer.close()  # idempotent
        h.storage.close()

    run(main)


def test_cancelled_caller_does_not_undo_the_write(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            h.block()
            await h.parked_writer()
            future = h.writer.submit(h.put(b"k", b"v"))
            future.cancel()
            h.release()
            await h.writer.submit(h.put(b"after", b"v"))
            assert h.get(b"k") == b"v"

    run(main)


def test_observers_see_every_commit(tmp_path: Path) -> None:
    seen: list[int] = []

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            h.writer.observers.append(lambda size, seconds: seen.append(size))
            h.writer.observers.append(lambda size, seconds: 1 / 0)  # a broken observer is contained
            for i in range(3):
                await h.writer.submit(h.put(b"k%d" % i, b"v"))
            assert h.writer.stats()["commits"] == 3

    run(main)
    assert seen == [1, 1, 1]


def test_submit_needs_a_started_writer(tmp_path: Path) -> None:
    async def main() -> None:
        s = open_storage(tmp_path / "r")
        w = GroupCommitWriter(s)
        with pytest.raises(WriterClosed):
            w.submit(lambda ctx: None)
        w.start()
        with pytest.raises(RuntimeError):
            w.start()
        await w.close()
        s.close()

    run(main)
    with pytest.raises(ValueError):
        GroupCommitWriter(None, max_queue=0)  # type: ignore[arg-type]


class _HeldFlush:
    """Replaces ``Storage.sync_meta``: each flush waits for ``release()``; ``fail`` makes it raise."""

    def __init__(self, storage: Storage) -> None:
        self.real = storage.sync_meta
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0
        self.fail: Exception | None = None

    def __call__(self) -> None:
        self.calls += 1
        self.entered.set()
        self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.real()

    def release(self) -> None:
        self.gate.set()


def test_fsync_on_defers_the_meta_flush_to_the_syncer(tmp_path: Path) -> None:
    """The default (sync and metasync): LMDB commits without the meta page's own sync, and the writer flushes it."""
    durable = open_storage(tmp_path / "a")
    assert durable.meta_sync_deferred and not durable.env.flags()["metasync"]
    durable.close()
    # The operator's choices stand: no fsync at all, or no meta sync, are not upgraded or deferred.
    for kw in ({"sync": False}, {"metasync": False}):
        s = open_storage(tmp_path / f"b{len(kw)}{next(iter(kw))}", **kw)
        assert not s.meta_sync_deferred
        assert GroupCommitWriter(s)._syncer is None
        s.close()


def test_a_batch_is_acknowledged_only_after_its_meta_flush(tmp_path: Path) -> None:
    published: list[str] = []

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            held = h.hold_flush()

            def fn(ctx: WriteContext) -> bytes:
                ctx.on_commit(lambda: published.append("k"))
                return h.put(b"k", b"v")(ctx)

            future = h.writer.submit(fn)
            await asyncio.to_thread(held.entered.wait)
            # Committed (a reader sees it) but not yet flushed: neither acknowledged nor published.
            assert h.get(b"k") == b"v"
            await asyncio.sleep(0.01)
            assert not future.done() and published == []
            held.release()
            assert await future == b"k"
            assert published == ["k"]
            assert h.writer.stats()["syncs"] >= 1

    run(main)


def test_on_applied_runs_on_the_loop_before_the_commit_is_durable_for_accepted_requests_only(tmp_path: Path) -> None:
    events: list[str] = []

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            held = h.hold_flush()
            loop_thread = threading.get_ident()

            def good(ctx: WriteContext) -> bytes:
                ctx.on_applied(lambda: events.append(f"applied on loop: {threading.get_ident() == loop_thread}"))
                ctx.on_commit(lambda: events.append("committed"))
                # A savepoint that succeeds hands its hooks to the request; one that fails, never.
                ctx.savepoint(lambda sub: sub.on_applied(lambda: events.append("savepoint applied")))

                def failing(sub: WriteContext) -> None:
                    sub.on_applied(lambda: events.append("failed savepoint applied"))
                    raise KeyError("in a savepoint")

                assert isinstance(ctx.savepoint(failing), KeyError)
                return h.put(b"k", b"v")(ctx)

            def bad(ctx: WriteContext) -> None:
                ctx.on_applied(lambda: events.append("bad applied"))
                raise KeyError("boom")

            h.block()
            await h.parked_writer()
            ok, failed = h.writer.submit(good), h.writer.submit(bad)
            h.release()
            for _ in range(2000):  # the flush stays held: on_applied cannot wait for it
                if events:
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)
            assert events == ["applied on loop: True", "savepoint applied"]
            assert not ok.done()  # not durable, not acknowledged
            held.release()
            assert await ok == b"k"
            with pytest.raises(KeyError, match="boom"):
                await failed
            # The batch ran twice (bad failed it once), its hooks once: only the run that commits shows.
            assert events == ["applied on loop: True", "savepoint applied", "committed"]

    run(main)


def test_the_writer_commits_the_next_batch_while_a_flush_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            held = h.hold_flush()
            first = h.writer.submit(h.put(b"a", b"1"))
            await asyncio.to_thread(held.entered.wait)
            second = h.writer.submit(h.put(b"b", b"2"))
            # The second batch commits while the first one's flush is still held...
            while h.writer.stats()["commits"] < 2:
                await asyncio.sleep(0.001)
            assert h.get(b"b") == b"2"
            # ...and is acknowledged after the first, by a flush that covers both.
            assert not first.done() and not second.done()
            held.release()
            assert await asyncio.gather(first, second) == [b"a", b"b"]

    run(main)


def test_writes_submitted_in_one_loop_iteration_share_one_batch(tmp_path: Path) -> None:
    """The writer is woken once per loop iteration, so it never commits the iteration's first write alone."""

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            keys = [b"k%d" % n for n in range(5)]
            futures = [h.writer.submit(h.put(keys[0], b"v"))]
            # A woken writer would take the first write alone while this thread sleeps.
            threading.Event().wait(0.05)
            futures += [h.writer.submit(h.put(key, b"v")) for key in keys[1:]]
            assert await asyncio.gather(*futures) == keys
            stats = h.writer.stats()
            assert stats["commits"] == 1 and stats["max_batch_size"] == len(keys)
            # The next iteration's write gets its own wakeup.
            assert await h.writer.submit(h.put(b"later", b"v")) == b"later"
            assert h.writer.stats()["commits"] == 2

    run(main)


def test_a_loop_that_never_runs_its_wakeup_strands_no_other_loop(tmp_path: Path) -> None:
    """Abuse: a write queued from a loop that stops before its wakeup runs; another loop's write still commits."""
    s = open_storage(tmp_path / "r")
    w = GroupCommitWriter(s)
    w.start()
    dead = asyncio.new_event_loop()

    async def submit_only() -> None:
        w.submit(lambda ctx: ctx.txn.put(b"dead", b"v", db=ctx.storage.dbs["docs"]))
        dead.stop()  # the loop ends with this iteration: its wakeup of the writer never runs

    dead.run_until_complete(submit_only())
    assert dead in w._kicks and w.pending == 1
    dead.close()

    async def main() -> bool:
        ok = await w.submit(lambda ctx: ctx.txn.put(b"live", b"v", db=ctx.storage.dbs["docs"]))
        await w.close()
        return bool(ok)

    assert run(main)
    with s.env.begin(db=s.dbs["docs"]) as txn:
        assert txn.get(b"live") == b"v" and txn.get(b"dead") == b"v"  # both committed with the other loop's wakeup
    s.close()


def test_one_flush_hands_all_its_batches_to_the_loop_at_once(tmp_path: Path) -> None:
    """Batches committed during one flush are acknowledged by one handoff to the loop, in commit order."""

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            held = h.hold_flush()
            handoffs: list[list[bytes]] = []
            deliver = h.writer._deliver

            def counting(outcomes: list[Any]) -> None:
                handoffs.append([value for _, _, value in outcomes])
                deliver(outcomes)

            h.writer._deliver = counting  # type: ignore[method-assign]
            first = h.writer.submit(h.put(b"a", b"1"))
            await asyncio.to_thread(held.entered.wait)
            later = []
            for n, key in enumerate((b"b", b"c", b"d"), start=2):
                later.append(h.writer.submit(h.put(key, b"v")))
                while h.writer.stats()["commits"] < n:  # a batch of its own each
                    await asyncio.sleep(0.001)
            held.release()
            assert await asyncio.gather(first, *later) == [b"a", b"b", b"c", b"d"]
            # The first flush covered only the first batch; the second covers the other three.
            assert handoffs == [[b"a"], [b"b", b"c", b"d"]]

    run(main)


def test_a_failed_flush_fails_every_batch_it_covered(tmp_path: Path) -> None:
    """Abuse: the flush that covers several batches fails: none of them is acknowledged, all are published."""
    published: list[bytes] = []

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            held = h.hold_flush()

            def put(key: bytes) -> Callable[[WriteContext], bytes]:
                def fn(ctx: WriteContext) -> bytes:
                    ctx.on_commit(lambda: published.append(key))
                    return h.put(key, b"v")(ctx)

                return fn

            first = h.writer.submit(put(b"a"))
            await asyncio.to_thread(held.entered.wait)
            later = []
            for n, key in enumerate((b"b", b"c"), start=2):
                later.append(h.writer.submit(put(key)))
                while h.writer.stats()["commits"] < n:
                    await asyncio.sleep(0.001)
            held.fail = OSError("EIO")  # the first flush and the one covering b and c both fail
            held.release()
            for future in (first, *later):
                with pytest.raises(StorageError, match="flushing the commit failed"):
                    await future
            assert published == [b"a", b"b", b"c"]  # in commit order

    run(main)


def test_a_failed_flush_is_never_acknowledged(tmp_path: Path) -> None:
    """Abuse: the disk fails the flush. The commit stands (readers see it), its caller gets a StorageError."""
    published: list[str] = []

    async def main() -> None:
        async with Harness(tmp_path / "r") as h:
            held = h.hold_flush()
            held.fail = OSError("EIO")
            held.release()

            def fn(ctx: WriteContext) -> bytes:
                ctx.on_commit(lambda: published.append("k"))
                return h.put(b"k", b"v")(ctx)

            with pytest.raises(StorageError, match="flushing the commit failed"):
                await h.writer.submit(fn)
            assert published == ["k"]  # visible to readers, so followers hear of it
            held.fail = None
            assert await h.writer.submit(h.put(b"after", b"v")) == b"after"  # the writer goes on

    run(main)
