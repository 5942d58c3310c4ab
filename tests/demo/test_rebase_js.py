"""The page's rebase (demo_app/static/rebase.js, live.js, splice.js) against the Python reference, in Chromium.

``crdtstore/rebase.py`` and ``crdtstore/patches.py`` are property-tested
against real replicas; here hypothesis draws edits and the browser's modules
must answer exactly as the Python ones do. The JS-only helpers get their own
properties: a snapshot's diff rebuilds the snapshot, the ops (and the
splice) read off one input event rebuild the textarea's text, and an event
that does not tell what it did yields no splice.

Texts hold characters outside the Basic Multilingual Plane ("😀", two UTF-16
units, one code point) beside plain ones: the store counts code points, a JS
string and a textarea count UTF-16 units, and the page converts between them
(units.js) only where it meets the textarea.
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
# "😀" and "😁" share their first UTF-16 unit: a comparison of units that stops between them cuts a character.
ASTRAL = "😀😁"
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
             window.S = await import('/static/splice.js');
             window.P = await import('/static/panel.js');
             window.U = await import('/static/units.js');
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
            text = draw(st.text(alphabet="abxy" + ASTRAL, min_size=1, max_size=4))
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


def units(text: str, index: int) -> int:
    """The UTF-16 index (a JS string's, a textarea's) of code point index ``index`` of ``text``."""
    return len(text[:index].encode("utf-16-le")) // 2


@given(data=st.data(), text=st.text(alphabet="abc\n" + ASTRAL, max_size=12))
def test_patches_apply_as_in_python(modules: Any, data: st.DataObject, text: str) -> None:
    patches, _ = data.draw(edits(len(text), as_patches=True))
    patches = [p for p in patches if p["path"] == PATH]
    value = {"notes": {"n1": {"body": text}}}
    expected = apply_patches(copy.deepcopy(value), patches)
    assert modules.evaluate("([v, p]) => R.applyPatches(v, p)", [value, patches]) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(alphabet="ab" + ASTRAL, max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("xyz"), inner, max_size=3),
    max_leaves=8,
)
documents = st.dictionaries(st.sampled_from(["title", "body", "tags", "votes", "notes"]), json_values, max_size=4)


@given(old=documents, new=documents)
def test_a_snapshot_diff_rebuilds_the_snapshot(modules: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    rebuilt = modules.evaluate("([o, n]) => R.applyPatches(structuredClone(o), L.diffPatches(o, n))", [old, new])
    assert rebuilt == new


@given(
    before=st.text(alphabet="aab " + ASTRAL, max_size=10),
    data=st.data(),
)
def test_one_input_event_becomes_ops_that_rebuild_the_text(modules: Any, before: str, data: st.DataObject) -> None:
    # One input event: a selection [start, end) replaced by typed or pasted text; the caret ends after it.
    start = data.draw(st.integers(0, len(before)))
    end = data.draw(st.integers(start, len(before)))
    typed = data.draw(st.text(alphabet="ab " + ASTRAL, max_size=3))
    after = before[:start] + typed + before[end:]
    caret = start + len(typed)
    # The textarea's caret counts UTF-16 units; the ops count code points, as the store does.
    ops = modules.evaluate("([p, b, a, c]) => R.textOps(p, b, a, c)", [PATH, before, after, units(after, caret)])
    value = {"notes": {"n1": {"body": before}}}
    got = modules.evaluate("([v, o]) => R.applyOps(v, o)", [value, ops])
    assert got["notes"]["n1"]["body"] == after
    # Typed text lands where it was typed: it ends at the caret (typing "a" after "a" is not an append).
    assert all(op["index"] + len(op["text"]) == caret for op in ops if op["op"] == "insert")
    assert len(ops) <= 2


# splice.js: a keystroke and a remote patch as splices, read in O(edit).


@st.composite
def input_events(draw: st.DrawFn) -> tuple[str, dict[str, int], str, str | None, str, int]:
    """One input event on a textarea: (text before, selection before, inputType, data, text after, caret after)."""
    before = draw(st.text(alphabet="ab\n" + ASTRAL, max_size=10))
    start = draw(st.integers(0, len(before)))
    end = draw(st.integers(start, len(before)))
    kind = draw(st.sampled_from(["insertText", "insertLineBreak", "deleteContentBackward", "deleteByCut"]))
    if kind == "insertText":
        data: str | None = draw(st.text(alphabet="ab\n" + ASTRAL, min_size=1, max_size=3))
        assert data is not None
        after = before[:start] + data + before[end:]
        caret = start + len(data)
    elif kind == "insertLineBreak":
        after, caret = before[:start] + "\n" + before[end:], start + 1
    elif start == end:  # a collapsed caret deletes backwards: a character, a word, a line
        cut = draw(st.integers(0, start))
        after, caret = before[:cut] + before[end:], cut
    else:
        after, caret = before[:start] + before[end:], start
    # The selection and the caret as the textarea gives them: UTF-16 units.
    selection = {"start": units(before, start), "end": units(before, end)}
    return before, selection, kind, data if kind == "insertText" else None, after, units(after, caret)


@given(event=input_events())
def test_the_splice_read_off_an_input_event_rebuilds_the_text(
    modules: Any, event: tuple[str, dict[str, int], str, str | None, str, int]
) -> None:
    before, selection, kind, data, after, caret = event
    splice = modules.evaluate("([s, k, d, c]) => S.inputSplice(s, k, d, c)", [selection, kind, data, caret])
    if kind.startswith("delete") and selection["start"] == selection["end"] == caret:
        assert splice is None  # nothing went (a backward delete at the start): the comparison decides
        return
    assert splice is not None
    assert modules.evaluate("([t, s]) => S.spliceText(t, [s])", [before, splice]) == after


@pytest.mark.parametrize(
    ("selection", "kind", "data", "caret"),
    [
        ({"start": 2, "end": 2}, "insertText", "ab", 3),  # the caret is not after what data says landed
        ({"start": 2, "end": 2}, "insertText", "a\r\nb", 6),  # "\r" never reaches a textarea's value
        ({"start": 2, "end": 2}, "insertText", None, 2),
        ({"start": 2, "end": 2}, "deleteContentForward", None, 2),  # how much went is not told
        ({"start": 1, "end": 3}, "deleteByCut", None, 2),  # a cut leaves the caret at its start
        ({"start": 2, "end": 2}, "historyUndo", None, 5),
        ({"start": 2, "end": 2}, "insertCompositionText", "a", 3),
        ({"start": 3, "end": 1}, "insertText", "a", 2),
        ({"start": -1, "end": 0}, "insertText", "a", 0),
        (None, "insertText", "a", 1),  # no beforeinput came first
        ({"start": 2, "end": 2}, "insertText", "a", None),  # a selection, not a caret, after it
    ],
)
def test_an_input_event_that_does_not_tell_its_edit_gives_no_splice(
    modules: Any, selection: dict[str, int] | None, kind: str, data: str | None, caret: int | None
) -> None:
    assert modules.evaluate("([s, k, d, c]) => S.inputSplice(s, k, d, c)", [selection, kind, data, caret]) is None


def cuts_no_character(modules: Any, text: str, splice: dict[str, Any]) -> bool:
    """Whether the splice (UTF-16 units) starts and ends between characters of text, never inside a pair."""
    return bool(
        modules.evaluate(
            """([t, s]) => U.alignStart(t, s.index) === s.index
                          && U.alignStart(t, s.index + s.remove) === s.index + s.remove""",
            [text, splice],
        )
    )


@given(before=st.text(alphabet="aab\n" + ASTRAL, max_size=12), after=st.text(alphabet="aab\n" + ASTRAL, max_size=12))
def test_a_diff_splice_rebuilds_the_text_around_the_common_ends(modules: Any, before: str, after: str) -> None:
    splice = modules.evaluate("([b, a]) => S.diffSplice(b, a)", [before, after])
    assert modules.evaluate("([t, s]) => S.spliceText(t, [s])", [before, splice]) == after
    prefix = 0
    while prefix < min(len(before), len(after)) and before[prefix] == after[prefix]:
        prefix += 1
    assert splice["index"] == units(before, prefix)  # common characters, not common units
    assert cuts_no_character(modules, before, splice)


@given(data=st.data(), text=st.text(alphabet="abc\n" + ASTRAL, max_size=12))
def test_patch_splices_make_what_the_patches_make(modules: Any, data: st.DataObject, text: str) -> None:
    patches, _ = data.draw(edits(len(text), as_patches=True))  # some at another note's body: not ours
    value = {"notes": {"n1": {"body": text}, "n2": {"body": "x" * 20}}}
    expected = apply_patches(copy.deepcopy(value), [p for p in patches if p["path"] == PATH])["notes"]["n1"]["body"]
    # Patches count code points; the splices count the textarea's units, read against the text.
    splices = modules.evaluate("([p, ps, t]) => S.patchSplices(p, ps, t)", [PATH, patches, text])
    assert modules.evaluate("([t, s]) => S.spliceText(t, s)", [text, splices]) == expected


@pytest.mark.parametrize(
    "patch",
    [
        {"path": PATH, "value": "a whole new text"},
        {"path": PATH[:2], "remove": True},  # the note went
        {"path": PATH[:1], "value": {}},
    ],
)
def test_a_patch_that_replaces_the_text_gives_no_splices(modules: Any, patch: dict[str, Any]) -> None:
    patches = [{"path": PATH, "insert": {"index": 0, "text": "a"}}, patch]
    assert modules.evaluate("([p, ps]) => S.patchSplices(p, ps)", [PATH, patches]) is None


# The edits table: an ack's count, where the region sends it, else the least its level means.


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        ({"status": "ack", "w": "quorum", "detail": {"reached": 2, "needed": 2}}, "acked by 2/2 of 3"),
        ({"status": "ack (again)", "w": "all", "detail": {"reached": 3, "needed": 3}}, "acked (again) by 3/3 of 3"),
        ({"status": "ack", "w": "quorum"}, "ack by ≥2/3"),
        ({"status": "ack", "w": "all", "detail": None}, "ack by ≥3/3"),
        # A region that says something else than two counts is not believed: the level's bound shows.
        ({"status": "ack", "w": "quorum", "detail": {"reached": "9", "needed": 2}}, "ack by ≥2/3"),
        ({"status": "ack", "w": "one", "detail": {"reached": 1.5, "needed": 1}}, "ack by ≥1/3"),
        (
            {"status": "504 quorum_timeout", "w": "all", "detail": {"reached": 1, "needed": 3}},
            "504 quorum_timeout (reached 1 of 3)",
        ),
        ({"status": "sent", "w": "one"}, "sent"),
    ],
)
def test_an_edit_shows_its_ack_count(modules: Any, entry: dict[str, Any], shown: str) -> None:
    assert modules.evaluate("([e, n]) => P.editOutcome(e, n)", [entry, 3]) == shown


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@given(data=st.data(), text=st.text(alphabet="ab\n" + ASTRAL, max_size=14))
def test_prefix_splices_keep_a_mirror_of_the_text_up_to_a_cut(modules: Any, data: st.DataObject, text: str) -> None:
    """The carets' mirror holds a prefix of the note; splices past it leave it, one across it asks to compare."""
    held = data.draw(st.integers(0, len(text)))
    patches, length = data.draw(edits(len(text), as_patches=True))
    patches = [p for p in patches if p["path"] == PATH]
    after = apply_patches({"notes": {"n1": {"body": text}}}, copy.deepcopy(patches))["notes"]["n1"]["body"]
    cut = data.draw(st.integers(0, len(after)))
    # The mirror (a DOM Text node) and its splices count UTF-16 units, as the page cuts it: in units.
    splices = modules.evaluate("([p, ps, t]) => S.patchSplices(p, ps, t)", [PATH, patches, text])
    got = modules.evaluate(
        "([pre, ss, t, c]) => S.prefixSplices(pre, ss, t, c)", [text[:held], splices, after, units(after, cut)]
    )
    straddles = False
    end = units(text, held)
    for s in splices:
        if s["index"] < end < s["index"] + s["remove"]:
            straddles = True
            break
        if s["index"] < end:
            end += utf16(s["text"]) - s["remove"]
    if straddles:
        assert got is None
        return
    assert got is not None
    assert modules.evaluate("([t, s]) => S.spliceText(t, s)", [text[:held], got]) == after[:cut]
    # Splices wholly past the prefix (typing further down the note) reach the mirror not at all.
    if all(s["index"] >= units(text, held) for s in splices) and cut == held:
        assert got == []


def test_an_unknown_splice_makes_the_mirror_compare(modules: Any) -> None:
    splices = [{"index": 0, "remove": 0, "text": "a"}, None]
    assert modules.evaluate("([ss]) => S.prefixSplices('xy', ss, 'axy', 3)", [splices]) is None


# units.js: code points (the store's positions) against UTF-16 units (the textarea's).


@given(text=st.text(alphabet="ab\né" + ASTRAL, max_size=12), data=st.data())
def test_positions_convert_between_code_points_and_units_as_python_counts(
    modules: Any, text: str, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(text)))
    got = modules.evaluate(
        "([t, i]) => { const u = U.toUnits(t, i); return [U.cpLength(t), u, U.toCp(t, u)]; }", [text, index]
    )
    assert got == [len(text), units(text, index), index]
    # With the flag saying the text holds no surrogate, nothing is read: an index is both counts.
    if text.isascii():
        both = modules.evaluate("([t, i]) => [U.toUnits(t, i, false), U.toCp(t, i, false)]", [text, index])
        assert both == [index, index]


def test_a_position_past_the_end_stays_past_it_in_units(modules: Any) -> None:
    # A bounds check in units must refuse what the store's check in code points refuses.
    assert modules.evaluate("U.toUnits('a😀', 3)") == 4
    with pytest.raises(Exception, match="does not fit"):
        modules.evaluate("R.applyPatches({t: 'a😀'}, [{path: ['t'], delete: {index: 1, count: 2}}])")


def test_a_patch_after_an_emoji_lands_after_it(modules: Any) -> None:
    """Issue #13's bug: index 1 (code points) is after "😀"; read as units it split the pair."""
    value = {"notes": {"n1": {"body": "😀b"}}}
    patch = {"path": PATH, "insert": {"index": 1, "text": "a"}}
    assert modules.evaluate("([v, p]) => R.applyPatches(v, p)", [value, [patch]])["notes"]["n1"]["body"] == "😀ab"
    op = {"op": "delete", "path": PATH, "index": 1, "count": 1}
    assert modules.evaluate("([v, o]) => R.applyOps(v, o)", [value, [op]])["notes"]["n1"]["body"] == "😀"
    # Typing "x" after the emoji: the textarea's caret is 3 units, the op's index 1 code point.
    ops = modules.evaluate("([p]) => R.textOps(p, '😀b', '😀xb', 3)", [PATH])
    assert ops == [{"op": "insert", "path": PATH, "index": 1, "text": "x"}]


@given(text=st.text(alphabet="ab" + ASTRAL, min_size=1, max_size=40), index=st.integers(0, 3))
def test_a_long_insert_in_pieces_counts_code_points(modules: Any, text: str, index: int) -> None:
    """A paste cut into pieces under the frame limit: each piece's index follows the code points before it."""
    long_text = text * 400  # over one piece (8,000 units)
    op = {"op": "insert", "path": PATH, "index": index, "text": long_text}
    base = "xyz"
    got = modules.evaluate(
        """([o, b]) => { const ps = L.pieces(o);
             return [ps.length, R.applyOps({notes: {n1: {body: b}}}, ps).notes.n1.body,
                     ps.every(p => U.alignStart(p.text, p.text.length) === p.text.length)]; }""",
        [op, base],
    )
    pieces_count, body, whole = got
    assert body == base[:index] + long_text + base[index:]
    assert whole  # no piece ends inside a pair
    assert pieces_count >= (len(long_text.encode("utf-16-le")) // 2 + 7999) // 8000
