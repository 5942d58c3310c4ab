"""Fixtures of the browser tests: one ``crdtstore demo`` cluster and one Debian chromium for this package.

Both live as long as this package's tests, not the session: Playwright's
sync API keeps an event loop running in the main thread while it is open,
which would break every later test that runs a loop of its own, and the
cluster's three regions would take CPU from the rest of the suite.

The browser is Debian's ``chromium`` package driven by Playwright for Python
(never ``playwright install``: it downloads, which this machine cannot do).
Where no browser exists the tests skip, with the reason in the report.

The cluster is ``crdtstore demo --latency 50ms`` run as a process (the
command a user runs), on free ports; each test uses a board of its own. A
region restarted by a test (failover) is stopped here by its pid.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0


@dataclass
class DemoCluster:
    """A running ``crdtstore demo``: its page URL, the plan of its ``up``, tokens, and processes to stop."""

    url: str
    root: Path
    proc: subprocess.Popen[bytes]
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def plan(self) -> dict[str, Any]:
        return dict(json.loads((self.root / "up.json").read_text()))

    def config(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/demo/config.json", timeout=5).json())

    def doc(self, region: str, doc_id: str) -> dict[str, Any]:
        """A document's value as one region holds it (HTTP, not through the page)."""
        config = self.config()
        answer = httpx.get(
            f"{config['regions'][region]}/v1/docs/{doc_id}",
            headers={"Authorization": f"Bearer {config['tokens']['readwrite']}"},
            timeout=5,
        )
        return dict(answer.json()) if answer.status_code == 200 else {}

    def wan(self, action: str, body: dict[str, str]) -> None:
        token = self.config()["tokens"]["readwrite"]
        answer = httpx.post(
            f"{self.url}/demo/wan/{action}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        answer.raise_for_status()


@pytest.fixture(scope="package")
def chromium_browser() -> Iterator[Any]:
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (the test extra installs it)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install -y chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="package")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoCluster]:
    root = tmp_path_factory.mktemp("demo") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTORE_")}
    log = (root.parent / "demo.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crdtstore.cli", "demo", "--data", str(root), "--port", "0", "--latency", "50ms"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    cluster: DemoCluster | None = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"crdtstore demo: open (http://\S+?)/\?", (root.parent / "demo.out").read_text())
            if found:
                cluster = DemoCluster(url=found.group(1), root=root, proc=proc)
                break
            time.sleep(0.2)
        if cluster is None:
            pytest.fail(f"crdtstore demo did not start:\n{(root.parent / 'demo.out').read_text()[-3000:]}")
        yield cluster
    finally:
        for extra in cluster.extra if cluster is not None else []:
            if extra.poll() is None:
                os.kill(extra.pid, signal.SIGTERM)
                extra.wait(60)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(90)
        log.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where the scenarios' end-state screenshots go: ``$CRDTSTORE_ARTIFACTS`` or ``test-artifacts/`` (git-ignored)."""
    path = Path(os.environ.get("CRDTSTORE_ARTIFACTS") or ROOT / "test-artifacts") / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path
