"""The page's rebase (demo_app/static/rebase.js, live.js, app.js) against the Python reference, in Chromium.

``crdtstore/rebase.py`` and ``crdtstore/patches.py`` are property-tested
against real replicas; here hypothesis draws edits and the browser's modules
must answer exactly as the Python ones do. The JS-only helpers get their own
properties: a snapshot's diff rebuilds the snapshot, and the ops read off
one input event rebuild the textarea's text.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.patches import apply_patches
from crdtstore.rebase import move_index, transform
from tests.demo.conftest import DemoCluster

pytestmark = pytest.mark.slow

PATH = ["notes", "n1", "body"]
OTHER = ["notes", "n2", "body"]


@pytest.fixture(scope="package")
def modules(chromium_browser: Any, demo: DemoCluster) -> Iterator[Any]:
    context = chromium_browser.new_context()
    page = context.new_page()
    page.goto(f"{demo.url}/static/style.css")  # any page of the demo's origin: the modules load from it
    page.evaluate(
        """async () => {
             window.R = await import('/static/rebase.js');
             window.L = await import('/static/live.js');
           }"""
    )
    yield page
    context.close()


@st.composite
def edits(draw: st.DrawFn, length: int, *, as_patches: bool) -> tuple[list[dict[str, Any]], int]:
    """Sequential index edits of a text of ``length`` (each valid on what the earlier ones left)."""
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from([PATH, PATH, PATH, OTHER]))
        if length == 0 or draw(st.booleans()):
            index = draw(st.integers(0, length))
            text = draw(st.text(alphabet="abxy", min_size=1, max_size=4))
            if as_patches:
                out.append({"path": path, "insert": {"index": index, "text": text}})
            else:
                out.append({"op": "insert", "path": path, "index": index, "text": text})
            if path == PATH:
                length += len(text)
        else:
            index = draw(st.integers(0, length - 1))
            count = draw(st.integers(1, length - index))
            if as_patches:
                out.append({"path": path, "delete": {"index": index, "count": count}})
            else:
                out.append({"op": "delete", "path": path, "index": index, "count": count})
            if path == PATH:
                length -= count
    return out, length


@given(data=st.data(), length=st.integers(0, 12))
def test_transform_and_carets_match_the_python_rebase(modules: Any, data: st.DataObject, length: int) -> None:
    local, _ = data.draw(edits(length, as_patches=False))
    remote, after_remote = data.draw(edits(length, as_patches=True))
    caret = data.draw(st.integers(0, max(after_remote, 0)))
    expected = [list(x) for x in transform(copy.deepcopy(local), copy.deepcopy(remote))]
    got = modules.evaluate("([l, r]) => R.transform(l, r)", [local, remote])
    assert got == expected
    caret = data.draw(st.integers(0, length))
    assert modules.evaluate("([p, i, r]) => R.moveIndex(p, i, r)", [PATH, caret, remote]) == move_index(
        PATH, caret, remote
    )


@given(data=st.data(), text=st.text(alphabet="abc\n", max_size=12))
def test_patches_apply_as_in_python(modules: Any, data: st.DataObject, text: str) -> None:
    patches, _ = data.draw(edits(len(text), as_patches=True))
    patches = [p for p in patches if p["path"] == PATH]
    value = {"notes": {"n1": {"body": text}}}
    expected = apply_patches(copy.deepcopy(value), patches)
    assert modules.evaluate("([v, p]) => R.applyPatches(v, p)", [value, patches]) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(alphabet="ab", max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("xyz"), inner, max_size=3),
    max_leaves=8,
)
documents = st.dictionaries(st.sampled_from(["title", "body", "tags", "votes", "notes"]), json_values, max_size=4)


@given(old=documents, new=documents)
def test_a_snapshot_diff_rebuilds_the_snapshot(modules: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    rebuilt = modules.evaluate("([o, n]) => R.applyPatches(structuredClone(o), L.diffPatches(o, n))", [old, new])
    assert rebuilt == new


@given(
    before=st.text(alphabet="aab ", max_size=10),
    data=st.data(),
)
def test_one_input_event_becomes_ops_that_rebuild_the_text(modules: Any, before: str, data: st.DataObject) -> None:
    # One input event: a selection [start, end) replaced by typed or pasted text; the caret ends after it.
    start = data.draw(st.integers(0, len(before)))
    end = data.draw(st.integers(start, len(before)))
    typed = data.draw(st.text(alphabet="ab ", max_size=3))
    after = before[:start] + typed + before[end:]
    caret = start + len(typed)
    ops = modules.evaluate("([p, b, a, c]) => R.textOps(p, b, a, c)", [PATH, before, after, caret])
    value = {"notes": {"n1": {"body": before}}}
    got = modules.evaluate("([v, o]) => R.applyOps(v, o)", [value, ops])
    assert got["notes"]["n1"]["body"] == after
    # Typed text lands where it was typed: it ends at the caret (typing "a" after "a" is not an append).
    assert all(op["index"] + len(op["text"]) == caret for op in ops if op["op"] == "insert")
    assert len(ops) <= 2
