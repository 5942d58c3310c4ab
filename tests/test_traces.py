"""Real editing traces replayed on our core (and, for the harness itself, on pycrdt).

The two recorded traces must come out exactly as recorded on every replica. Small hand-written
traces with non-ASCII text check the harness: code point positions, and their conversion to the
unit pycrdt counts, which the ASCII-only recorded traces never exercise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore import codec
from crdtstore.testing.traces import (
    Patch,
    Trace,
    load_trace,
    parse_trace,
    patch_ops,
    replay_ours,
    replay_pycrdt,
    splice_replay,
)

__all__: list[str] = []

TRACES = Path(__file__).parent / "data" / "traces"

REPLAYS = [pytest.param(replay_ours, id="ours"), pytest.param(replay_pycrdt, id="pycrdt")]


def sequential(patches: list[Patch]) -> Trace:
    text = ""
    for pos, ndel, ins in patches:
        text = text[:pos] + ins + text[pos + ndel :]
    return parse_trace({"startContent": "", "endContent": text, "txns": [{"patches": [p]} for p in patches]})


# Two agents editing concurrently (never inserting at the same place, as the published traces
# promise), with multi-byte and astral characters on both sides of every edit.
UNICODE_CONCURRENT: dict[str, Any] = {
    "kind": "concurrent",
    "numAgents": 2,
    "endContent": "Hello wörld 😀!",
    "txns": [
        {"agent": 0, "parents": [], "patches": [[0, 0, "héllo"]]},
        {"agent": 1, "parents": [0], "patches": [[5, 0, " wörld😀"]]},
        {"agent": 0, "parents": [0], "patches": [[0, 1, "H"], [1, 1, "e"]]},
        {"agent": 1, "parents": [1, 2], "patches": [[11, 0, " "], [13, 0, "!"]]},
        {"agent": 0, "parents": [2], "patches": [[2, 0, "~"]]},
        {"agent": 0, "parents": [3, 4], "patches": [[2, 1, ""]]},
    ],
}


# The recorded traces, on our core.


def test_trace_files_replay_as_plain_strings() -> None:
    trace = load_trace(TRACES / "sveltecomponent.json.gz")
    assert trace.kind == "sequential"
    assert trace.ops == 19_749
    assert splice_replay(trace) == trace.end_content


@pytest.mark.slow
def test_sequential_trace_replays_exactly() -> None:
    trace = load_trace(TRACES / "sveltecomponent.json.gz")
    replay = replay_ours(trace)
    assert replay.texts == [trace.end_content]
    [doc] = replay.replicas
    decoded = codec.decode_document(codec.encode_document(doc))
    assert decoded.value() == doc.value() == {"text": trace.end_content}
    assert decoded.digest() == doc.digest()


@pytest.mark.slow
def test_concurrent_trace_converges_exactly() -> None:
    trace = load_trace(TRACES / "friendsforever.json.gz")
    assert trace.kind == "concurrent"
    assert trace.num_agents == 2
    replay = replay_ours(trace)
    assert replay.texts == [trace.end_content] * trace.num_agents
    first, *others = [codec.encode_document(doc) for doc in replay.replicas]
    assert all(encoded == first for encoded in others)


# The harness, on both engines.


@pytest.mark.parametrize("replay", REPLAYS)
def test_unicode_sequential_positions_count_code_points(replay: Any) -> None:
    trace = sequential([(0, 0, "añb"), (1, 1, "😀é"), (3, 0, "中文"), (0, 2, ""), (1, 1, "x"), (4, 0, "!")])
    assert not trace.ascii
    assert trace.end_content == "éx文b!"
    assert replay(trace).texts == [trace.end_content]


@pytest.mark.parametrize("replay", REPLAYS)
def test_unicode_concurrent_replicas_converge(replay: Any) -> None:
    trace = parse_trace(UNICODE_CONCURRENT)
    result = replay(trace)
    assert result.texts == [trace.end_content] * 2
    assert result.matches(trace.end_content)
    assert not result.matches(trace.end_content + "?")


@st.composite
def patch_lists(draw: st.DrawFn) -> list[Patch]:
    alphabet = st.sampled_from("ab é中😀\n")
    length = 0
    patches: list[Patch] = []
    for _ in range(draw(st.integers(1, 12))):
        pos = draw(st.integers(0, length))
        ndel = draw(st.integers(0, length - pos))
        ins = draw(st.text(alphabet, min_size=0 if ndel else 1, max_size=4))
        patches.append((pos, ndel, ins))
        length += len(ins) - ndel
    return patches


@given(patch_lists())
def test_random_sequential_traces_match_plain_strings(patches: list[Patch]) -> None:
    trace = sequential(patches)
    assert replay_ours(trace).texts == [trace.end_content]
    assert replay_pycrdt(trace).texts == [trace.end_content]


def test_window_callback_sees_every_window_and_the_end() -> None:
    trace = sequential([(i, 0, "x") for i in range(7)])
    seen: list[int] = []
    replay = replay_ours(trace, on_window=seen.append, window=3)
    assert seen == [3, 6, 7]
    assert replay.ops == 7
    assert replay.delta_bytes > 0


def test_patch_ops_delete_before_insert() -> None:
    assert patch_ops((2, 1, "é")) == [
        {"op": "delete", "path": ["text"], "index": 2, "count": 1},
        {"op": "insert", "path": ["text"], "index": 2, "text": "é"},
    ]
    assert patch_ops((0, 0, "a")) == [{"op": "insert", "path": ["text"], "index": 0, "text": "a"}]
    assert patch_ops((4, 2, "")) == [{"op": "delete", "path": ["text"], "index": 4, "count": 2}]


@pytest.mark.parametrize(
    "raw",
    [
        {"txns": []},
        {"kind": "concurrent", "numAgents": 1, "endContent": "", "txns": [{"agent": 0, "parents": [0], "patches": []}]},
        {"kind": "concurrent", "numAgents": 1, "endContent": "", "txns": [{"agent": 1, "parents": [], "patches": []}]},
    ],
    ids=["no-end-content", "parent-not-earlier", "agent-out-of-range"],
)
def test_malformed_traces_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_trace(raw)
