"""The notes demo in real Chromium, two windows on two regions of one ``crdtstore demo --latency 50ms``.

Each scenario saves a screenshot of its end state under the artifacts
directory (``$CRDTSTORE_ARTIFACTS`` or ``test-artifacts/``). The two latency
figures are measured in the page (``performance.now()``) and printed, never
asserted (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.demo.conftest import DemoCluster
from tests.demo.helpers import WAIT_MS, Window, is_subsequence, p95

pytestmark = pytest.mark.slow


@pytest.fixture
def windows(chromium_browser: Any, demo: DemoCluster) -> Iterator[list[Window]]:
    opened: list[Window] = []
    yield opened
    for window in opened:
        assert not window.errors, f"uncaught errors in the page: {window.errors}"
        window.close()


def open_window(
    windows: list[Window], browser: Any, demo: DemoCluster, region: str, board: str, name: str, role: str | None = None
) -> Window:
    window = Window(browser, demo.url, region=region, board=board, name=name, role=role)
    windows.append(window)
    return window


def shot(artifacts: Path, name: str, *shown: Window) -> None:
    for n, window in enumerate(shown):
        window.screenshot(artifacts / f"{name}-{n}-{window.region()}.png")


def converged_bodies(a: Window, b: Window) -> str:
    """The note's text once both windows show the same and have nothing left to send (bounded wait)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        if a.unsynced() == 0 and b.unsynced() == 0 and a.body() == b.body():
            return a.body()
        time.sleep(0.1)
    raise AssertionError(f"the windows did not converge: {a.body()!r} != {b.body()!r}")


def test_two_regions_type_concurrently_and_converge(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    board = "board-concurrent"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()

    # Round one: each at an end of the note, keystrokes interleaved while the other side's are in flight.
    us.type_body("|")
    eu.wait_body_contains("|")
    us.type_body("")
    eu.type_body("", at_end=True)
    typed_us, typed_eu = "", ""
    for i in range(8):
        chunk_us, chunk_eu = f"u{i}.", f"e{i}."
        us.page.keyboard.type(chunk_us)
        eu.page.keyboard.type(chunk_eu)
        typed_us += chunk_us
        typed_eu += chunk_eu
    us.wait_body_contains(typed_us, typed_eu)
    text = converged_bodies(us, eu)
    assert text == typed_us + "|" + typed_eu  # each run whole, where it was typed: no keystroke lost or moved

    # Round two: both at the same spot (the end) at once: every keystroke present, in each typist's order.
    us.type_body("", at_end=True)
    eu.type_body("", at_end=True)
    more_us, more_eu = "", ""
    for i in range(8):
        us.page.keyboard.type(f"U{i}")
        eu.page.keyboard.type(f"E{i}")
        more_us += f"U{i}"
        more_eu += f"E{i}"
    us.wait("n => document.querySelector('[data-testid=note] [data-testid=body]').value.length === n", len(text) + 32)
    final = converged_bodies(us, eu)
    tail = final[len(text) :]
    assert final.startswith(text) and len(tail) == len(more_us) + len(more_eu)
    assert is_subsequence(more_us, tail) and is_subsequence(more_eu, tail)
    assert sorted(tail) == sorted(more_us + more_eu)
    # What the windows show is what the regions hold.
    for region in ("us", "eu"):
        stored = demo.doc(region, board)["value"]["notes"]
        assert next(iter(stored.values()))["body"] == final

    # The rest of a note, and presence: the other user's caret shows with their name and region.
    page = us.page
    page.fill("[data-testid=note] form input[placeholder='add a checklist item']", "write the README")
    page.keyboard.press("Enter")
    page.fill("[data-testid=note] form input[placeholder='+ tag']", "demo")
    page.keyboard.press("Enter")
    page.click("[data-testid=vote]")
    eu.page.click("[data-testid=vote]")
    eu.page.click("[data-testid=note] [data-testid=checklist] input[type=checkbox]", timeout=WAIT_MS)
    for window in (us, eu):
        window.wait(
            """() => { const n = Object.values(window.demo.doc.value().notes)[0];
                       const items = Object.values(n.checklist.items);
                       return n.votes === 2 && n.tags.includes('demo') && items.length === 1 && items[0].done; }"""
        )
    eu.page.locator("[data-testid=note] [data-testid=body]").click()
    us.page.wait_for_selector("[data-testid=remote-caret][data-name='Bo (eu)']", timeout=WAIT_MS)

    # A second note, deleted by one window while the other looks: gone from both.
    eu.page.click("[data-testid=new-note]")
    for window in (us, eu):
        window.wait("() => document.querySelectorAll('[data-testid=note]').length === 2")
    us.page.locator("[data-testid=delete-note]").nth(1).click()
    for window in (us, eu):
        window.wait("() => document.querySelectorAll('[data-testid=note]').length === 1")
    page.fill("[data-testid=note] [data-testid=title]", "Two regions, one note")
    page.keyboard.press("Tab")
    eu.wait("() => document.querySelector('[data-testid=note] [data-testid=title]').value === 'Two regions, one note'")
    eu.page.locator("[data-testid=note] [data-testid=body]").click()
    shot(artifacts, "concurrent", us, eu)  # the README's screenshot (docs/demo.png) is the first of these


def test_remote_and_local_keystroke_latency(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    """Printed: p95 of a remote keystroke (target: one-way 50 ms + 100 ms) and of a local one (100 KB note, 16 ms)."""
    board = "board-latency"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    us.type_body("start ")
    eu.wait_body_contains("start ")
    base = len(eu.body())
    us.page.evaluate("window.demo.stats.keydowns.length = 0")
    eu.page.evaluate("window.demo.stats.remote.length = 0")
    typed = "the quick brown fox jumps over the lazy dog"
    us.page.keyboard.type(typed, delay=60)
    eu.wait_body_contains("start " + typed)
    eu.page.wait_for_timeout(100)  # the last render's requestAnimationFrame
    keydowns = us.page.evaluate("window.demo.stats.keydowns.map(k => k.t)")
    renders = eu.page.evaluate("window.demo.stats.remote.map(r => [r.t, r.length])")
    assert len(keydowns) == len(typed)
    remote = []
    for k, sent in enumerate(keydowns, start=1):
        seen = [t for t, length in renders if length >= base + k]
        assert seen, f"keystroke {k} never showed in the other window"
        remote.append(min(seen) - sent)

    # A 100 KB note: a local keystroke, from keydown to the frame that shows it.
    note = us.page.evaluate("Object.keys(window.demo.doc.value().notes)[0]")
    line = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.\n"
    filler = (line * 1100)[:100_000]  # a long note of ordinary lines
    us.page.evaluate(
        "([id, text]) => window.demo.doc.edit([{op: 'insert', path: ['notes', id, 'body'], index: 0, text}])",
        [note, filler],
    )
    us.wait_synced()
    eu.wait("n => document.querySelector('[data-testid=note] [data-testid=body]').value.length >= n", 100_000)
    us.page.evaluate("window.demo.stats.local.length = 0")
    us.type_body("", at_end=True)
    us.page.keyboard.type("typing at the end of a long note", delay=40)
    us.wait_synced()
    local = us.page.evaluate("window.demo.stats.local")
    assert len(local) == len("typing at the end of a long note")

    # The same note with an emoji at its start: every position after it is two UTF-16 units past its code
    # point index, so the page converts at the textarea (the text is no longer one byte a character).
    us.page.evaluate(
        "([id]) => window.demo.doc.edit([{op: 'insert', path: ['notes', id, 'body'], index: 0, text: '😀'}])",
        [note],
    )
    us.wait_synced()
    us.page.evaluate("window.demo.stats.local.length = 0")
    us.type_body("", at_end=True)
    us.page.keyboard.type("typing after an emoji", delay=40)
    us.wait_synced()
    astral = us.page.evaluate("window.demo.stats.local")
    assert len(astral) == len("typing after an emoji")
    assert us.body().startswith("😀") and us.body().endswith("typing at the end of a long notetyping after an emoji")
    print(
        f"\ndemo latency (--latency 50ms): remote keystroke visible p95 {p95(remote):.1f} ms "
        f"(target 150 ms; n={len(remote)}, max {max(remote):.1f}); "
        f"local keystroke-to-screen in a 100 KB note p95 {p95(local):.1f} ms (target 16 ms; n={len(local)}), "
        f"with an emoji at its start p95 {p95(astral):.1f} ms (n={len(astral)}); "
        f"median remote {statistics.median(remote):.1f} ms, local {statistics.median(local):.1f} ms, "
        f"with an emoji {statistics.median(astral):.1f} ms; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    shot(artifacts, "latency", us)


def test_cut_edit_both_sides_heal_converge(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    board = "board-partition"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    us.type_body("shared. ")
    eu.wait_body_contains("shared. ")

    # Cut us off (with three regions, one cut link would be bridged by the third).
    us.page.click("[data-testid=isolate-us]")
    for key in ("eu-us", "ap-us"):
        us.page.wait_for_selector(f"[data-testid=link-{key}]:text('heal')", timeout=WAIT_MS)
    us.type_body("from-us ", at_end=True)
    eu.type_body("from-eu ")
    us.wait_synced()
    eu.wait_synced()

    # w=all cannot be met while us is cut: the edit waits, then shows 504 with needed and reached.
    us.page.select_option("#level", "all")
    us.type_body("!", at_end=True)
    us.page.wait_for_selector("[data-testid=edit-row]:has-text('504 quorum_timeout')", timeout=WAIT_MS)
    assert "reached 1 of 3" in us.page.inner_text("[data-testid=edits]")
    us.page.select_option("#level", "one")
    assert "from-us" not in eu.body() and "from-eu" not in us.body()
    assert us.page.inner_text("[data-testid=converged]").startswith("Not converged")

    us.page.click("[data-testid=heal-all]")
    us.wait_body_contains("from-us", "from-eu", "!")
    text = converged_bodies(us, eu)
    assert text.count("from-us") == 1 and text.count("from-eu") == 1 and text.count("shared.") == 1
    for window in (us, eu):
        window.page.wait_for_selector("[data-testid=converged]:text('Converged')", timeout=WAIT_MS)
    # One poll of the panel shows every region with the same Merkle root: the same documents everywhere.
    us.wait(
        """() => { const roots = ['us', 'eu', 'ap'].map(r =>
                       document.querySelector(`[data-testid=region-${r}]`).dataset.root);
                   return roots[0] !== '' && roots.every(x => x === roots[0]); }"""
    )
    shot(artifacts, "partition-heal", us, eu)


def test_title_conflict_shown_then_resolved(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    board = "board-title"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    demo.wan("isolate", {"region": "us"})
    for window, title in ((us, "Plan A"), (eu, "Plan B")):
        window.page.fill("[data-testid=note] [data-testid=title]", title)
        window.page.keyboard.press("Tab")
        window.wait_synced()
    demo.wan("heal", {})
    for window in (us, eu):
        window.page.wait_for_selector("[data-testid=siblings]:not([hidden])", timeout=WAIT_MS)
        picks = window.page.locator("[data-testid=pick-sibling]").all_inner_texts()
        assert sorted(picks) == ["Plan A", "Plan B"]
    shot(artifacts, "title-conflict", us)
    eu.page.click("[data-testid=pick-sibling]:text('Plan A')")
    for window in (us, eu):
        window.page.wait_for_selector("[data-testid=siblings][hidden]", state="attached", timeout=WAIT_MS)
        window.wait("() => document.querySelector('[data-testid=note] [data-testid=title]').value === 'Plan A'")
    shot(artifacts, "title-resolved", us, eu)


def test_offline_queue_merges_on_reconnect(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    board = "board-offline"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    us.type_body("online. ")
    eu.wait_body_contains("online. ")

    us.page.check("#offline")
    us.wait("() => !window.demo.doc.connected")
    us.type_body("queued-offline ", at_end=True)
    assert us.unsynced() == len("queued-offline ")  # one op a keystroke, none sent
    us.page.wait_for_selector(f"[data-testid=unsynced]:text-is('{len('queued-offline ')} unsynced')", timeout=WAIT_MS)
    eu.type_body("meanwhile ")
    eu.wait_synced()
    us.page.wait_for_timeout(500)
    assert "meanwhile" not in us.body() and "queued-offline" not in eu.body()

    us.page.uncheck("#offline")
    us.wait_synced()
    us.wait_body_contains("meanwhile", "queued-offline")
    text = converged_bodies(us, eu)
    assert text.count("queued-offline") == 1 and text.count("meanwhile") == 1
    us.page.wait_for_selector("[data-testid=unsynced]:text-is('0 unsynced')", timeout=WAIT_MS)
    shot(artifacts, "offline", us, eu)


def test_read_only_token_cannot_edit(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    board = "board-readonly"
    writer = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    reader = open_window(windows, chromium_browser, demo, "eu", board, "Ro", role="read")
    writer.new_note()
    writer.type_body("written by a writer")
    reader.wait_body_contains("written by a writer")
    assert reader.page.is_disabled("[data-testid=new-note]")
    assert reader.page.get_attribute("[data-testid=note] [data-testid=body]", "readonly") is not None

    # Past the disabled controls: the page's own client sends a batch; the region refuses it whole.
    reader.page.evaluate(
        """() => { const id = Object.keys(window.demo.doc.value().notes)[0];
                   window.demo.doc.edit([{op: 'insert', path: ['notes', id, 'body'], index: 0, text: 'FORGED '}]); }"""
    )
    reader.page.wait_for_selector("[data-testid=edit-row]:has-text('403 forbidden')", timeout=WAIT_MS)
    reader.wait("() => window.demo.doc.unsynced() === 0")
    # The refused edit leaves the screen too (once the next frame renders).
    reader.wait("() => !document.querySelector('[data-testid=note] [data-testid=body]').value.includes('FORGED')")
    # ... and a read-only window cannot cut links through the demo server either.
    token = reader.page.evaluate("window.demo.doc.token")
    answer = httpx.post(
        f"{demo.url}/demo/wan/isolate", json={"region": "us"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 403
    writer.type_body("more ", at_end=True)
    reader.wait_body_contains("more ")
    for region in ("us", "eu", "ap"):
        assert "FORGED" not in str(demo.doc(region, board))
    shot(artifacts, "read-only", reader)


def test_region_failover_and_return(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    """Kill ap by its pid: its window moves to another region; what only ap acknowledged returns with it."""
    board = "board-failover"
    ap = open_window(windows, chromium_browser, demo, "ap", board, "Cy")
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    held = open_window(windows, chromium_browser, demo, "ap", board, "Di")
    ap.new_note()
    us.wait_note()
    ap.type_body("everyone has this. ")
    us.wait_body_contains("everyone has this. ")

    demo.wan("isolate", {"region": "ap"})
    ap.type_body("only-ap-acked ", at_end=True)
    ap.wait_synced()  # durable on ap (w=one), replicated nowhere
    held.wait_body_contains("only-ap-acked ")
    held.page.check("#offline")
    plan = demo.plan()
    os.kill(plan["regions"]["ap"]["pid"], 9)

    # Typed while ap is gone, after text only ap holds: once on us, whose snapshot lacks that text, the
    # queued insert is rebased onto the snapshot (sent as it was, its index would be past us's end).
    held.type_body("typed-while-down", at_end=True)
    held.page.uncheck("#offline")
    held.wait("() => window.demo.doc.region === 'us' && window.demo.doc.connected")
    held.wait_synced()
    refused = held.page.evaluate("window.demo.doc.log.filter(e => /^[0-9]{3} /.test(e.status)).map(e => e.status)")
    assert refused == []  # nothing refused (e.g. 400 index_out_of_range): nothing typed was lost
    held.wait_body_contains("typed-while-down")
    assert held.body().endswith("typed-while-down")

    ap.wait("() => window.demo.doc.region !== 'ap' && window.demo.doc.connected")
    assert ap.region() == "us"  # the next region in the page's failover order
    ap.page.wait_for_selector("[data-testid=banner]:not([hidden])", timeout=WAIT_MS)
    ap.wait("() => !document.querySelector('[data-testid=note] [data-testid=body]').value.includes('only-ap')")
    ap.type_body("after-failover ", at_end=True)
    ap.wait_synced()
    us.wait_body_contains("after-failover ")
    assert "only-ap" not in us.body()

    # Restart ap from the command up recorded; once linked again, its acked edit comes back everywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTORE_")}
    log = (demo.root / "logs" / "ap-restarted.log").open("ab")
    restarted = subprocess.Popen(plan["regions"]["ap"]["argv"], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    demo.extra.append(restarted)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(plan["regions"]["ap"]["url"] + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    demo.wan("heal", {})
    for window in (ap, us, held):
        window.wait_body_contains("everyone has this. ", "only-ap-acked ", "after-failover ", "typed-while-down")
    text = converged_bodies(ap, us)
    assert converged_bodies(held, us) == text
    for piece in ("only-ap-acked", "after-failover", "typed-while-down"):
        assert text.count(piece) == 1
    assert sys.platform != "linux" or restarted.poll() is None
    shot(artifacts, "failover", ap, us, held)


CARET = "[data-testid=remote-caret][data-name='Bo (eu)']"


def caret_geometry(window: Window) -> dict[str, float]:
    """Where the other person's caret is drawn, in the text's own coordinates, and the body's metrics."""
    return dict(
        window.page.evaluate(
            f"""() => {{ const m = document.querySelector("{CARET}");
                        const s = getComputedStyle(document.querySelector('[data-testid=note] [data-testid=body]'));
                        return {{top: parseFloat(m.style.top), left: parseFloat(m.style.left), index: +m.dataset.index,
                                line: parseFloat(s.lineHeight), pad: parseFloat(s.paddingTop)}}; }}"""
        )
    )


def test_a_remote_caret_sits_at_its_index_and_moves_with_the_text(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    board = "board-carets"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    us.type_body("one\ntwo\nthree\n")
    eu.wait_body_contains("one\ntwo\nthree\n")
    eu.type_body("", at_end=True)  # Bo's caret after the last newline: the start of the fourth line
    us.page.wait_for_selector(f"{CARET}[data-index='14']", timeout=WAIT_MS)
    at = caret_geometry(us)
    # Within half a line of the fourth line's top (border, padding, three lines), at the line's start.
    assert abs(at["top"] - (1 + at["pad"] + 3 * at["line"])) < at["line"] / 2
    assert abs(at["left"] - (1 + at["pad"])) < 3

    # Ana types before Bo's caret: it moves on Ana's screen with the text, before Bo's page says anything.
    us.type_body("xyz")
    us.page.wait_for_selector(f"{CARET}[data-index='17']", timeout=WAIT_MS)
    moved = caret_geometry(us)
    assert (moved["top"], moved["left"]) == (at["top"], at["left"])  # still the fourth line's start
    # ... and one more line above it: a line lower.
    us.page.keyboard.type("\n")
    us.page.wait_for_selector(f"{CARET}[data-index='18']", timeout=WAIT_MS)
    assert abs(caret_geometry(us)["top"] - (at["top"] + at["line"])) < 1
    eu.wait_body_contains("xyz\none")
    shot(artifacts, "carets", us)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def selection(window: Window) -> list[int]:
    return list(
        window.page.evaluate(
            "() => { const b = document.querySelector('[data-testid=note] [data-testid=body]');"
            " return [b.selectionStart, b.selectionEnd]; }"
        )
    )


def test_two_regions_type_emoji_around_each_others_and_converge(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    """Issue #13: the store counts code points, the textarea UTF-16 units; an emoji (two units) moves nothing."""
    board = "board-emoji"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    start = "😀 mid 😁"
    us.type_body(start)
    eu.wait_body_contains(start)
    eu.type_body("")
    eu.page.keyboard.press("ArrowRight")  # Bo: after the first emoji (one character, two units)
    us.type_body("", at_end=True)  # Ana: at the end, after the last emoji

    # Keystrokes interleaved, each side's while the other's are in flight, emoji among them.
    typed_us, typed_eu = "", ""
    for i in range(6):
        chunk_us, chunk_eu = f"u{i}🎉", f"🙂e{i}"
        us.page.keyboard.type(chunk_us)
        eu.page.keyboard.type(chunk_eu)
        typed_us += chunk_us
        typed_eu += chunk_eu
    us.wait_body_contains(typed_us, typed_eu)
    text = converged_bodies(us, eu)
    # Every character, each run where it was typed: after Bo's emoji, after Ana's.
    assert text == "😀" + typed_eu + " mid 😁" + typed_us
    for region in ("us", "eu"):
        assert next(iter(demo.doc(region, board)["value"]["notes"].values()))["body"] == text
    # Each caret where its user left it (the textarea's units), and each drawn in the other window at its
    # index in code points (what presence and the store count).
    bo_at = len("😀" + typed_eu)
    assert selection(us) == [utf16(text)] * 2
    assert selection(eu) == [utf16(text[:bo_at])] * 2
    us.page.wait_for_selector(f"{CARET}[data-index='{bo_at}']", timeout=WAIT_MS)
    ana = f"[data-testid=remote-caret][data-name='Ana (us)'][data-index='{len(text)}']"
    eu.page.wait_for_selector(ana, timeout=WAIT_MS)

    # Ana types emoji before Bo's caret: Bo's caret moves past them on both screens, and Bo types on there.
    us.page.keyboard.press("Control+Home")
    us.page.keyboard.type("A😀")
    eu.wait_body_contains("A😀😀")
    assert selection(eu) == [utf16("A😀" + text[:bo_at])] * 2
    us.page.wait_for_selector(f"{CARET}[data-index='{bo_at + 2}']", timeout=WAIT_MS)
    eu.page.keyboard.type("Z🙂")
    final = converged_bodies(us, eu)
    assert final == "A😀" + text[:bo_at] + "Z🙂" + text[bo_at:]
    for region in ("us", "eu"):
        assert next(iter(demo.doc(region, board)["value"]["notes"].values()))["body"] == final
    shot(artifacts, "emoji", us, eu)


def test_a_presence_with_no_index_draws_no_caret(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window]
) -> None:
    """Presence is other people's input: indexes out of the text are clamped, non-numbers draw nothing."""
    board = "board-carets-abuse"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    us.new_note()
    us.type_body("short text")
    us.wait_synced()
    us.page.evaluate(
        """() => { const id = Object.keys(window.demo.doc.value().notes)[0];
                   const path = ['notes', id, 'body'];
                   const forged = [[-5, 'neg'], [1e12, 'far'], ['3', 'str'], [null, 'nul'], [1.5, 'half'], [4, 'ok']];
                   for (const [index, name] of forged) window.demo.doc._receive(
                       {type: 'presence', client: name, state: {name, region: 'xx', caret: {path, index}}}); }"""
    )
    us.page.wait_for_selector("[data-testid=remote-caret][data-name='ok (xx)']", timeout=WAIT_MS)
    drawn = us.page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=remote-caret]')]
                     .map(m => [m.dataset.name, +m.dataset.index])"""
    )
    assert sorted(drawn) == [["far (xx)", 10], ["neg (xx)", 0], ["ok (xx)", 4]]
    # The window fixture asserts the page threw nothing.


def test_an_input_event_that_misreports_its_edit_is_reconciled(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window]
) -> None:
    """The page reads a keystroke off its input event; one that lies is caught by the comparison after typing pauses."""
    board = "board-lying-input"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    us.type_body("abc")
    eu.wait_body_contains("abc")
    us.page.evaluate(
        """() => { const body = document.querySelector('[data-testid=note] [data-testid=body]');
                   body.focus();
                   body.setSelectionRange(3, 3);
                   body.dispatchEvent(new InputEvent('beforeinput', {inputType: 'insertText', data: 'X'}));
                   body.setRangeText('Q', 3, 3, 'end');  // what really landed
                   body.dispatchEvent(new InputEvent('input', {inputType: 'insertText', data: 'X'})); }"""
    )
    us.wait_synced()
    eu.wait("() => document.querySelector('[data-testid=note] [data-testid=body]').value === 'abcQ'")
    text = converged_bodies(us, eu)
    assert text == "abcQ"
    for region in ("us", "eu"):
        stored = demo.doc(region, board)["value"]["notes"]
        assert next(iter(stored.values()))["body"] == "abcQ"


def test_an_ack_shows_how_many_replicas_held_the_batch(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window]
) -> None:
    board = "board-ack-count"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    us.page.evaluate(
        "window.acks = []; window.demo.doc.addEventListener('ack', e => window.acks.push(e.detail.message))"
    )
    us.page.select_option("#level", "quorum")
    us.new_note()
    us.wait_synced()
    acks = [m for m in us.page.evaluate("window.acks") if m["type"] == "ack"]
    assert acks, "the note's batch was never acknowledged"
    rows = "[data-testid=edit-row]"
    if not isinstance(acks[-1].get("reached"), int) or not isinstance(acks[-1].get("needed"), int):
        # Without counts the page shows the least an ack at quorum means (2 of the 3 regions).
        us.page.wait_for_selector(f"{rows}:has-text('ack by ≥2/3')", timeout=WAIT_MS)
        pytest.skip("the region's ack frame has no reached/needed yet (crdtstore/api/live.py adds them)")
    reached, needed = acks[-1]["reached"], acks[-1]["needed"]
    assert needed == 2 and needed <= reached <= 3
    us.page.wait_for_selector(f"{rows}:has-text('acked by {reached}/{needed} of 3')", timeout=WAIT_MS)


def test_every_kind_of_keystroke_sends_what_the_textarea_shows(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window]
) -> None:
    """Read off its input event, each edit leaves the page's value equal to the textarea's, at once."""
    board = "board-keystrokes"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    drift: list[str] = []
    us.page.on("console", lambda m: drift.append(m.text) if "drifted" in m.text else None)
    us.new_note()
    us.type_body("hello world\nsecond line")
    same = """() => { const b = document.querySelector('[data-testid=note] [data-testid=body]');
                      const n = Object.values(window.demo.doc.value().notes)[0];
                      return [b.value, n.body]; }"""
    keys = us.page.keyboard
    steps: list[tuple[str, Any]] = [
        ("type", "!"),
        ("press", "Backspace"),
        ("press", "Control+Backspace"),  # a word backwards
        ("press", "Enter"),
        ("press", "Home"),
        ("press", "Delete"),  # forwards: the event does not say how much went; the comparison does
        ("press", "Shift+End"),
        ("type", "replaced"),  # over a selection
        ("press", "Control+a"),
        ("press", "Backspace"),
        ("insert", "pasted\ntext"),
        ("press", "Control+z"),  # an undo says nothing of what it undid
        # Beyond Latin-1, and beyond the BMP: an emoji is two UTF-16 units in the textarea, one code point
        # in the store, so every edit after one is read in units and sent in code points.
        ("type", "é€x"),
        ("press", "Backspace"),
        ("press", "Backspace"),
        ("type", "😀a😀"),
        ("press", "ArrowLeft"),  # between "a" and the last emoji
        ("type", "b"),
        ("press", "Backspace"),
        ("press", "Backspace"),  # the "a"
        ("press", "Backspace"),  # an emoji, both its units, one character
        ("press", "Shift+ArrowRight"),  # a selection over an emoji
        ("type", "🎉"),
        ("press", "Home"),
        ("insert", "😀\n😁"),  # a paste; "😀" and "😁" share their first unit
        ("press", "Delete"),
        ("type", "z"),
    ]
    for kind, what in steps:
        if kind == "type":
            keys.type(what)
        elif kind == "insert":
            keys.insert_text(what)
        else:
            keys.press(what)
        shown, sent = us.page.evaluate(same)
        assert shown == sent, f"after {kind} {what!r}"
    us.wait_synced()
    us.page.wait_for_timeout(700)  # past the pause after which the page compares
    stored = next(iter(demo.doc("us", board)["value"]["notes"].values()))["body"]
    assert stored == us.body()
    assert drift == []


# The page's requestAnimationFrame held: the callbacks wait in a list until released (the page looks the
# function up each time it asks for a frame, so this holds the page's own). Its fetches wait too: a title's
# siblings, fetched after a remote change, render the board when they come.
HOLD_FRAMES = """() => { window.heldFrames = []; window.realFrame = window.requestAnimationFrame;
                         window.requestAnimationFrame = (fn) => { window.heldFrames.push(fn); return 0; };
                         window.realFetch = window.fetch; window.fetch = () => new Promise(() => {}); }"""
RELEASE_FRAMES = """() => { window.requestAnimationFrame = window.realFrame; window.fetch = window.realFetch;
                            const held = window.heldFrames; window.heldFrames = [];
                            for (const fn of held) fn(performance.now()); }"""


def test_a_keystroke_typed_while_a_remote_change_waits_for_its_frame_lands_where_it_was_typed(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window], artifacts: Path
) -> None:
    """A remote change shows at the next frame; keystrokes typed before it move past it (and it past them)."""
    board = "board-held-frame"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    eu = open_window(windows, chromium_browser, demo, "eu", board, "Bo")
    us.new_note()
    eu.wait_note()
    us.type_body("middle")
    eu.wait_body_contains("middle")
    us.wait_synced()

    us.page.evaluate(HOLD_FRAMES)
    eu.type_body("REMOTE ")  # at the start
    us.wait("() => Object.values(window.demo.doc.value().notes)[0].body === 'REMOTE middle'")
    assert us.body() == "middle"  # not on screen before its frame: the textarea was not touched
    # Typed on the text the textarea shows: at its end, and at its start (where the remote text went too).
    us.type_body("-local", at_end=True)
    us.type_body("L-")
    held = us.page.evaluate("window.heldFrames.length")
    assert held > 0
    assert us.body() == "L-middle-local"
    us.wait_synced()  # sent without a frame too (a page that draws none still sends)
    us.page.evaluate(RELEASE_FRAMES)

    # The remote insert at 0 goes before the local one at 0 (the rebase's rule), on both screens alike.
    us.wait_body_contains("REMOTE L-middle-local")
    assert converged_bodies(us, eu) == "REMOTE L-middle-local"
    assert selection(us) == [len("REMOTE L-")] * 2  # the caret, after what it typed, moved past the remote text
    shot(artifacts, "held-frame", us, eu)


def test_an_edit_made_outside_the_textarea_is_on_it_before_the_next_keystroke(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window]
) -> None:
    """Only what was typed into the textarea may wait for the status render: other edits of the text show at once."""
    board = "board-outside-edit"
    us = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    us.new_note()
    us.type_body("typed")
    us.wait_synced()
    us.page.evaluate(HOLD_FRAMES)
    shown = us.page.evaluate(
        "() => { const id = Object.keys(window.demo.doc.value().notes)[0];"
        " window.demo.doc.edit([{op: 'insert', path: ['notes', id, 'body'], index: 0, text: 'X'}]);"
        " return document.querySelector('[data-testid=note] [data-testid=body]').value; }"
    )
    assert shown == "Xtyped"  # no frame, no timer: on the textarea when edit() returned
    us.type_body("!", at_end=True)
    us.page.evaluate(RELEASE_FRAMES)
    us.wait_synced()
    assert [note["body"] for note in us.value()["notes"].values()] == ["Xtyped!"]
    assert us.body() == "Xtyped!"


def test_a_refused_batch_leaves_the_textarea_before_the_next_keystroke(
    chromium_browser: Any, demo: DemoCluster, windows: list[Window]
) -> None:
    """A refused batch leaves the value shown: the textarea follows at once, not with the status render."""
    board = "board-refused"
    writer = open_window(windows, chromium_browser, demo, "us", board, "Ana")
    reader = open_window(windows, chromium_browser, demo, "eu", board, "Ro", role="read")
    writer.new_note()
    writer.type_body("written")
    reader.wait_body_contains("written")
    reader.page.evaluate(HOLD_FRAMES)
    shown = reader.page.evaluate(
        """() => { const id = Object.keys(window.demo.doc.value().notes)[0];
                   window.demo.doc.edit([{op: 'insert', path: ['notes', id, 'body'], index: 0, text: 'FORGED '}]);
                   return document.querySelector('[data-testid=note] [data-testid=body]').value; }"""
    )
    assert shown == "FORGED written"  # shown until the region answers (read in the same task as the edit)
    reader.wait("() => window.demo.doc.unsynced() === 0 && window.demo.doc.log.some(e => /^403/.test(e.status))")
    assert reader.body() == "written"  # no frame yet: the refusal itself took it off
    reader.page.evaluate(RELEASE_FRAMES)
    reader.page.wait_for_selector("[data-testid=edit-row]:has-text('403 forbidden')", timeout=WAIT_MS)
