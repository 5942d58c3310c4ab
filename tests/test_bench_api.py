"""The API benchmark's same-rate comparison (``bench/api.py``): which rate, and which ratio, it reports."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from tests.bench_modules import BENCH, load

api = load("bench_api_entry", BENCH / "api.py")


class _Proc:
    pid = 1


class _Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = _Proc()


def test_each_pair_runs_at_one_rate_below_both_maxima_and_reports_cpu_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Per request, by server: the node's write 300, 280, 320 µs over rounds; the HTTP layer alone 150 each.
    costs = {1: iter([300.0, 280.0, 320.0]), 2: iter([150.0, 150.0, 150.0])}
    asked: list[tuple[int, float]] = []

    async def fake_fixed_rate(
        name: str, port: int, make: Any, *, rate: float, seconds: float, pool: int, pid: Any
    ) -> Any:
        asked.append((port, rate))
        result = api.Result(name, latencies=[0.001] * 1000, elapsed=seconds)
        result.server_cpu = next(costs[port]) * 1000 / 1e6
        return result

    monkeypatch.setattr(api, "fixed_rate", fake_fixed_rate)
    args = argparse.Namespace(rounds=3, seconds=1.0, concurrency=8)
    by_name = {"write": api.Result("write", latencies=[0.0] * 2500, elapsed=1.0),
               "write-http": api.Result("write-http", latencies=[0.0] * 9000, elapsed=1.0)}  # fmt: skip
    phases = {"write": (_Server(1), None), "write-http": (_Server(2), None)}
    out = asyncio.run(api.same_rate(args, {"write_over_write_http": ("write", "write-http")}, phases, by_name))
    # 0.9 of the slower phase's closed-loop rate (2,500/s), the same for both phases, every round.
    assert {rate for _, rate in asked} == {2250.0} and len(asked) == 6
    assert out["write_over_write_http_same_rate"] == {"rate": 2250.0, "write_cpu_us": 300.0, "write-http_cpu_us": 150.0}
    assert out["write_over_write_http_same_rate_cpu"] == 0.5  # the median of each side: 150 / 300
