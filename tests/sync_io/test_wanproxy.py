"""The emulated WAN on loopback: order, latency floor, cut and heal.

Timing is only asserted as a floor (the proxy must add at least the
configured latency), never as an upper bound.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from sync.io.wanproxy import WanController, WanLink

LIMIT = 20.0  # seconds any one scenario may take


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=LIMIT))


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), 5)


async def closed_or_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, wait: float) -> bool:
    """True if nothing comes back within ``wait`` (EOF or reset count as nothing)."""
    try:
        writer.write(b"x")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(1), wait)
    except (OSError, TimeoutError):
        return True
    return data == b""


def test_bytes_arrive_in_order_with_at_least_the_latency() -> None:
    latency, jitter = 0.03, 0.02

    async def scenario() -> None:
        async with echo_server() as port:
            link = WanLink(latency=latency, jitter=jitter, random=random.Random(1).random, target=("127.0.0.1", port))
            await link.start()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                # Many small writes with jitter per chunk: any reordering would show in the echo.
                sent = b"".join(i.to_bytes(4, "big") for i in range(2000))
                started = time.monotonic()
                for i in range(0, len(sent), 40):
                    writer.write(sent[i : i + 40])
                    await asyncio.sleep(0)
                await writer.drain()
                got = await asyncio.wait_for(reader.readexactly(len(sent)), 10)
                first_rtt = time.monotonic() - started
                assert got == sent
                # Through the link and back: two one-way delays at least.
                started = time.monotonic()
                assert await roundtrip(reader, writer, b"ping") == b"ping"
                assert time.monotonic() - started >= 2 * latency
                assert first_rtt >= 2 * latency
                assert link.stats.bytes_forward == link.stats.bytes_backward == len(sent) + 4
                writer.close()
            finally:
                await link.close()

    run(scenario)


def test_close_cut_blocks_traffic_and_heal_restores_it() -> None:
    async def scenario() -> None:
        async with echo_server() as port:
            link = WanLink(latency=0.005, random=random.Random(2).random, target=("127.0.0.1", port))
            await link.start()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                assert await roundtrip(reader, writer, b"before") == b"before"
                link.cut()
                assert link.is_cut
                # The open connection dies; a new one is accepted and closed.
                assert await closed_or_silent(reader, writer, wait=0.5)
                r2, w2 = await asyncio.open_connection("127.0.0.1", link.port)
                assert await closed_or_silent(r2, w2, wait=0.5)
                link.heal()
                r3, w3 = await asyncio.open_connection("127.0.0.1", link.port)
                assert await roundtrip(r3, w3, b"after") == b"after"
                w3.close()
            finally:
                await link.close()

    run(scenario)


def test_hold_cut_keeps_connections_and_delivers_after_heal() -> None:
    async def scenario() -> None:
        async with echo_server() as port:
            link = WanLink(random=random.Random(3).random, target=("127.0.0.1", port))
            await link.start()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                assert await roundtrip(reader, writer, b"a") == b"a"
                link.cut("hold")
                writer.write(b"held")
                await writer.drain()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader.readexactly(4), 0.3)
                link.heal()
                assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
                writer.close()
            finally:
                await link.close()

    run(scenario)


def test_unknown_target_closes_and_a_new_target_is_used() -> None:
    async def scenario() -> None:
        async with echo_server() as port:
            link = WanLink(random=random.Random(4).random)
            await link.start()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                assert await closed_or_silent(reader, writer, wait=1.0)
                link.set_target(("127.0.0.1", port))
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                assert await roundtrip(reader, writer, b"ok") == b"ok"
                writer.close()
            finally:
                await link.close()

    run(scenario)


def test_controller_partitions_and_heals_pairs_of_regions() -> None:
    async def scenario() -> None:
        async with echo_server() as pa, echo_server() as pb, echo_server() as pc:
            wan = WanController(["a", "b", "c"], latency=0.001, seed=5)
            await wan.start()
            try:
                for region, port in zip("abc", (pa, pb, pc), strict=True):
                    wan.set_target(region, "127.0.0.1", port)
                assert len(wan.links) == 6
                assert len(wan.peers_of("a")) == 2

                async def reaches(src: str, dst: str) -> bool:
                    reader, writer = await asyncio.open_connection("127.0.0.1", wan.links[(src, dst)].port)
                    try:
                        return await roundtrip(reader, writer, b"hi") == b"hi"
                    except (OSError, asyncio.IncompleteReadError, TimeoutError):
                        return False
                    finally:
                        writer.close()

                assert all([await reaches(s, d) for (s, d) in wan.links])
                wan.partition("a", "b")
                assert wan.cut_pairs() == [("a", "b")]
                assert not await reaches("a", "b")
                assert not await reaches("b", "a")
                assert await reaches("a", "c") and await reaches("c", "b")
                wan.heal("b", "a")
                assert wan.cut_pairs() == []
                assert await reaches("a", "b") and await reaches("b", "a")
                wan.isolate("c")
                assert wan.cut_pairs() == [("a", "c"), ("b", "c")]
                wan.heal_all()
                assert all([await reaches(s, d) for (s, d) in wan.links])
                with pytest.raises(KeyError):
                    wan.partition("a", "zz")
                with pytest.raises(ValueError):
                    wan.partition("a", "a")
            finally:
                await wan.close()

    run(scenario)


def test_replicas_of_a_region_get_a_link_to_each_remote_replica_and_are_cut_together() -> None:
    members = {"a-0": "a", "a-1": "a", "b-0": "b", "b-1": "b", "c-0": "c"}
    wan = WanController(["a", "b", "c"], members=members)
    # Every ordered pair of replicas in different regions; none inside a region (no WAN there).
    assert len(wan.links) == 5 * 4 - 2 - 2
    assert ("a-0", "a-1") not in wan.links and ("a-0", "b-1") in wan.links
    assert [b for a, b in wan.pairs() if a == "a-0"] == ["b-0", "b-1", "c-0"]
    assert len([b for a, b in wan.pairs() if a == "c-0"]) == 4
    wan.partition("a", "b")
    cut = {pair for pair, link in wan.links.items() if link.is_cut}
    assert cut == {(x, y) for x in members for y in members if {members[x], members[y]} == {"a", "b"}}
    assert wan.cut_pairs() == [("a", "b")]
    wan.isolate("c", mode="hold")
    assert wan.cut_pairs() == [("a", "b"), ("a", "c"), ("b", "c")]
    wan.heal("b", "a")
    assert wan.cut_pairs() == [("a", "c"), ("b", "c")]
    wan.heal_all()
    assert wan.cut_pairs() == []


def test_bad_members_and_region_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no listed region"):
        WanController(["a", "b"], members={"a-0": "a", "z-0": "z"})
    wan = WanController(["a", "b"], members={"a-0": "a", "a-1": "a", "b-0": "b"})
    with pytest.raises(KeyError):
        wan.partition("a-0", "b-0")  # cuts are by region; a replica name is not one
    with pytest.raises(ValueError):
        wan.partition("a", "a")  # replicas of one region are not linked through the WAN
    with pytest.raises(KeyError):
        wan.set_target("a", "127.0.0.1", 1)  # a region with replicas is not itself a target
    assert wan.cut_pairs() == []
    with pytest.raises(ValueError, match="do not fit"):
        WanController(["a", "b"], members={f"a-{i}": "a" for i in range(5)} | {"b-0": "b"}, base_port=65530)
