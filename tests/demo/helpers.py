"""Windows of the demo page, for the browser tests: open one on a region, read and edit its first note."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WAIT_MS = 20_000  # the longest any step may wait (converging after a heal, a failover)


class Window:
    """One browser context (a user) with the page open on one region and one board."""

    def __init__(self, browser: Any, url: str, *, region: str, board: str, name: str, role: str | None = None) -> None:
        self.context = browser.new_context(viewport={"width": 1300, "height": 760})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        query = f"region={region}&board={board}&name={name}" + (f"&role={role}" if role else "")
        self.page.goto(f"{url}/?{query}")
        self.page.wait_for_function("window.demo && window.demo.doc.connected", timeout=WAIT_MS)

    # Reading.

    def body(self) -> str:
        return str(self.page.eval_on_selector("[data-testid=note] [data-testid=body]", "e => e.value"))

    def value(self) -> Any:
        """What the page shows (the confirmed value with the pending edits on top)."""
        return self.page.evaluate("window.demo.doc.value()")

    def region(self) -> str:
        return str(self.page.evaluate("window.demo.doc.region"))

    def unsynced(self) -> int:
        return int(self.page.evaluate("window.demo.doc.unsynced()"))

    def wait(self, expression: str, arg: Any = None, timeout: int = WAIT_MS) -> None:
        self.page.wait_for_function(expression, arg=arg, timeout=timeout)

    def wait_body_contains(self, *texts: str, timeout: int = WAIT_MS) -> None:
        self.wait(
            """texts => { const b = document.querySelector('[data-testid=note] [data-testid=body]');
                          return b && texts.every(t => b.value.includes(t)); }""",
            list(texts),
            timeout,
        )

    def wait_synced(self) -> None:
        """Until every edit of this window is acknowledged."""
        self.wait("window.demo.doc.unsynced() === 0 && window.demo.doc.unacked.size === 0")

    # Editing.

    def new_note(self) -> None:
        self.page.click("[data-testid=new-note]")
        self.page.wait_for_selector("[data-testid=note]", timeout=WAIT_MS)

    def wait_note(self) -> None:
        self.page.wait_for_selector("[data-testid=note]", timeout=WAIT_MS)

    def type_body(self, text: str, *, at_end: bool = False, delay: float = 0) -> None:
        body = self.page.locator("[data-testid=note] [data-testid=body]").first
        body.click()
        if at_end:
            self.page.keyboard.press("Control+End")
        else:
            self.page.keyboard.press("Control+Home")
        self.page.keyboard.type(text, delay=delay)

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        self.context.close()


def is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
