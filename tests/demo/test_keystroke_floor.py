"""The demo's local keystroke in a 100 KB note against the browser's floor, from one browser in one run.

Issue #13's target: a local keystroke reaches the screen in < 16 ms at p95.
Measured as keydown's timestamp to the animation frame after the input event,
a keystroke waits for the next frame whatever the page does: with frames 16.7
ms apart its wait is spread over one frame, so even a textarea of 100
characters with no script of ours shows about 16 ms at p95 (the floor). The
demo's own cost is the excess over the floor, and the main thread's work per
keystroke, measured in the same pages:

- edit: from beforeinput to the end of the input handlers: the textarea's own
  edit, the layout it forces, and the page's handlers;
- handler: the page's input handler alone;
- frame: the frame that shows the keystroke, from its animation frame
  callbacks to the task after its paint (style, layout, paint, commit, and
  any task that ran before that one, such as an ack arriving).

Three pages type the same keys in rounds, interleaved so that the machine's
load falls on each alike: a bare textarea of 100 characters (the frame floor),
a bare textarea holding 100 KB (the browser's cost of a long text), and the
demo's note holding 100 KB, with a second window on another region open on
the same note (as in ``test_board.py``). Printed, never asserted (run with
``-s``): the figures depend on the machine and its load, printed beside them.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

import pytest

from tests.demo.conftest import DemoCluster
from tests.demo.helpers import Window, p95

pytestmark = pytest.mark.slow

LINE = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.\n"
LONG = (LINE * 1100)[:100_000]  # the note of test_board.py's latency test
SHORT = LINE[:100]
TYPED = "typing at the end of a long note"
ROUNDS = 3

# The same listeners the demo times with (demo_app/static/app.js), on a page with nothing else.
PAGE = """<!doctype html><meta charset="utf-8"><textarea id="t" rows="30" cols="100"></textarea>
<script>
const t = document.getElementById("t");
window.stats = { local: [], work: [] };
let pending, editStart;
const afterPaint = (fn) => { const c = new MessageChannel(); c.port1.onmessage = fn; c.port2.postMessage(null); };
t.addEventListener("keydown", (e) => { pending = e.timeStamp; });
t.addEventListener("beforeinput", () => { editStart = performance.now(); });
t.addEventListener("input", () => {
  const t0 = pending, h1 = performance.now();
  pending = undefined;
  const work = { edit: editStart === undefined ? 0 : h1 - editStart, handler: 0 };
  editStart = undefined;
  if (t0 !== undefined) requestAnimationFrame(() => {
    const f0 = performance.now();
    window.stats.local.push(f0 - t0);
    afterPaint(() => window.stats.work.push({ ...work, frame: performance.now() - f0 }));
  });
});
</script>"""


class Bare:
    """A page that is nothing but a textarea holding ``text``, the caret at its end."""

    def __init__(self, browser: Any, text: str) -> None:
        self.context = browser.new_context(viewport={"width": 1300, "height": 760})
        self.page = self.context.new_page()
        self.page.set_content(PAGE)
        self.page.evaluate("text => { document.getElementById('t').value = text; }", text)
        self.expected = text

    def type(self, keys: str) -> tuple[list[float], list[dict[str, float]]]:
        self.page.evaluate("window.stats.local.length = 0; window.stats.work.length = 0")
        self.page.click("#t")
        self.page.keyboard.press("Control+End")
        self.page.keyboard.type(keys, delay=40)
        self.expected += keys
        self.page.wait_for_function("n => window.stats.work.length >= n", arg=len(keys))
        assert self.page.evaluate("document.getElementById('t').value") == self.expected
        return self.page.evaluate("window.stats.local"), self.page.evaluate("window.stats.work")


def demo_type(window: Window, keys: str) -> tuple[list[float], list[dict[str, float]]]:
    window.page.evaluate("window.demo.stats.local.length = 0; window.demo.stats.work.length = 0")
    before = window.body()
    window.type_body(keys, at_end=True, delay=40)
    window.wait("n => window.demo.stats.work.length >= n", len(keys))
    window.wait_synced()
    assert window.body() == before + keys  # every keystroke, where it was typed
    return window.page.evaluate("window.demo.stats.local"), window.page.evaluate("window.demo.stats.work")


def figures(name: str, local: Sequence[float], work: Sequence[dict[str, float]]) -> str:
    total = [w["edit"] + w["frame"] for w in work]
    return (
        f"  {name}: keystroke-to-screen p95 {p95(local):.1f} ms, median {statistics.median(local):.1f} ms; "
        f"main-thread work a keystroke p95 {p95(total):.1f} ms (edit {p95([w['edit'] for w in work]):.1f}, "
        f"handler {p95([w['handler'] for w in work]):.1f}, frame {p95([w['frame'] for w in work]):.1f}; "
        f"median {statistics.median(total):.1f}) (n={len(local)})"
    )


def test_the_demos_keystroke_against_the_browsers_floor(chromium_browser: Any, demo: DemoCluster) -> None:
    board = "board-floor"
    us = Window(chromium_browser, demo.url, region="us", board=board, name="Ana")
    eu = Window(chromium_browser, demo.url, region="eu", board=board, name="Bo")
    short, long = Bare(chromium_browser, SHORT), Bare(chromium_browser, LONG)
    try:
        us.new_note()
        eu.wait_note()
        note = us.page.evaluate("Object.keys(window.demo.doc.value().notes)[0]")
        us.page.evaluate(
            "([id, text]) => window.demo.doc.edit([{op: 'insert', path: ['notes', id, 'body'], index: 0, text}])",
            [note, LONG],
        )
        us.wait_synced()
        eu.wait_body_contains(LONG)
        results: dict[str, tuple[list[float], list[dict[str, float]]]] = {
            name: ([], []) for name in ("demo", "bare 100 KB", "bare 100 chars")
        }
        runs: dict[str, Any] = {
            "demo": lambda: demo_type(us, TYPED),
            "bare 100 KB": lambda: long.type(TYPED),
            "bare 100 chars": lambda: short.type(TYPED),
        }
        order = list(runs)
        for n in range(ROUNDS):
            for name in order[n % len(order) :] + order[: n % len(order)]:
                local, work = runs[name]()
                assert len(local) == len(work) == len(TYPED)
                results[name][0].extend(local)
                results[name][1].extend(work)
        eu.wait_body_contains(LONG + TYPED * ROUNDS)  # the other window saw every keystroke
        assert not us.errors and not eu.errors, us.errors + eu.errors
        print(
            f"\nlocal keystroke in a 100 KB note (target 16 ms at p95), {ROUNDS} interleaved rounds; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        for name, (local, work) in results.items():
            print(figures(name, local, work))
    finally:
        for page in (short, long, us, eu):
            page.context.close()
