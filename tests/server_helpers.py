"""A real ``crdtstore serve`` process on 127.0.0.1, for tests that need sockets, signals or kill -9.

The server binds port 0 and logs the port it got (the ``listening`` JSON
line), so tests never race for a free port. Every wait is bounded; the
process is only ever signalled by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["REPO", "RW", "READ", "ServerProcess", "write_tokens"]

REPO = Path(__file__).resolve().parents[1]
RW = "rw-process-token-0123456789"
READ = "read-process-token-0123456789"


def write_tokens(path: Path) -> Path:
    path.write_text(f"{RW} readwrite\n{READ} read\n")
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTORE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class ServerProcess:
    """One ``python -m crdtstore.cli serve`` child.

    Args:
        workdir: Where logs go (and the cwd of the child).
        args: Extra command-line arguments (``--data`` and ``--tokens`` are the caller's to give).
        env: Extra environment variables.
    """

    def __init__(self, workdir: Path, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.args = args
        self.env = child_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.scheme = "https" if "--certfile" in args else "http"
        self.starts = 0

    @property
    def url(self) -> str:
        assert self.port is not None, "server not started"
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def start(self, *, timeout: float = 30.0, verify: bool | ssl.SSLContext = True) -> ServerProcess:
        """Start the child and wait (bounded) until ``/readyz`` answers 200."""
        self.starts += 1
        cmd = [sys.executable, "-m", "crdtstore.cli", "serve", "--host", "127.0.0.1", "--port", "0", *self.args]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        self.port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self.port is None:
                self.port = self._logged_port()
            elif self._ready(verify):
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # the line being written, or a non-JSON line
                continue
        return records

    def kill(self) -> None:
        """``kill -9`` the child (by its pid) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, *, timeout: float = 30.0) -> int:
        """SIGTERM (graceful), falling back to SIGKILL after ``timeout``; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def _logged_port(self) -> int | None:
        for record in self.log_records():
            if record.get("msg") == "listening":
                return int(record["port"])  # type: ignore[call-overload]
        return None

    def _ready(self, verify: bool | ssl.SSLContext) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=2.0, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False
