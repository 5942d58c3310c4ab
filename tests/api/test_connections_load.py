"""Issue #9 (4) end to end: 2,000 idle and 200 trickling sockets on a real ``serve`` process and its peer.

``bench/connections.py`` runs the scenario and prints latencies; here it
runs shorter, and only what holds on any machine is asserted: every read
answered 200, the server closed idle and trickling sockets (past their
deadline, or pushed out at the cap), and the peers stayed linked and kept
replicating. No assertion is about time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.connections import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "serve_args",
    [
        # Under the cap: the deadline closes them.
        ["--timeout-request-headers", "2"],
        # Over the unauthenticated cap (1024 - 128): newcomers push the oldest out as well.
        ["--timeout-request-headers", "2", "--max-connections", "1024"],
    ],
    ids=["deadline", "cap"],
)
def test_reads_and_peer_links_survive_a_socket_flood(tmp_path: Path, serve_args: list[str]) -> None:
    result = run(tmp_path, idle=2000, trickle=200, rate=50.0, seconds=5.0, serve_args=serve_args)
    for phase in (result.baseline, result.attacked):
        assert phase.errors == 0
        assert phase.statuses == {200: 250}
    assert result.idle_closed_by_server > 0
    assert result.trickle_closed_by_server > 0
    assert result.peers_before["a"] and result.peers_before["b"]
    assert result.peers_after == result.peers_before
    assert result.replicated_under_attack
