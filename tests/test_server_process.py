"""A real uvicorn process: HTTP on 127.0.0.1, early 413s on the wire, TLS, graceful stop, and kill -9 durability.

The durability test writes from several threads, kills the server with
SIGKILL while writes are in flight, restarts it on the same directory and
checks that every acknowledged write is there and that nothing appeared
that was never sent. 3 cycles by default; 20 with ``CRDTSTORE_DEEP=1`` or
``HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.protocol import State
from websockets.sync.client import connect

from crdtstore.client import ApiError, Client
from tests.server_helpers import READ, RW, ServerProcess, write_tokens

pytestmark = pytest.mark.slow

DEEP = os.environ.get("CRDTSTORE_DEEP") == "1" or os.environ.get("HYPOTHESIS_PROFILE") == "deep"
CYCLES = 20 if DEEP else 3
WRITERS = 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    tokens = write_tokens(tmp_path / "tokens")
    proc = ServerProcess(
        tmp_path,
        ["--region", "proc", "--data", str(tmp_path / "data"), "--tokens", str(tokens), "--max-body-bytes", "10000"],
    )
    yield proc.start()
    proc.kill()


def test_serves_the_api_on_loopback(server: ServerProcess) -> None:
    with Client(server.url, RW) as client:
        assert client.apply("a", [{"op": "set", "path": ["x"], "value": 1}]).created
        assert client.read("a").value == {"x": 1}
        assert client.health() and client.ready()
    with Client(server.url, READ) as reader:
        with pytest.raises(ApiError) as info:
            reader.delete("a")
        assert info.value.status == 403
    records = server.log_records()
    assert any(r.get("msg") == "request" and r.get("status") == 200 for r in records)
    assert all("level" in r and "ts" in r for r in records)


def raw_exchange(port: int, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request head and some body, never the rest; return what the server answers (bounded wait)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        sock.settimeout(10)
        answer = b""
        for _ in range(100):  # bounded: the answer is a few hundred bytes
            data = sock.recv(65536)
            answer += data
            head_end = answer.find(b"\r\n\r\n")
            if not data or (head_end >= 0 and len(answer) - head_end - 4 >= _content_length(answer[:head_end])):
                break
        return answer


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_413_from_content_length_before_the_body(server: ServerProcess) -> None:
    assert server.port is not None
    head = (
        b"POST /v1/docs/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + RW.encode() + b"\r\nContent-Length: 100000000\r\n\r\n"
    )
    answer = raw_exchange(server.port, head, [b'{"ops": ['])  # 99.99 MB never sent
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"error":"body_too_large"' in answer


def test_413_while_streaming_a_chunked_body(server: ServerProcess) -> None:
    assert server.port is not None
    head = (
        b"POST /v1/docs/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + RW.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 4000
    # 12 kB sent, over the 10 kB limit, and the body never ends (no final 0-chunk).
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)]
    answer = raw_exchange(server.port, head, parts)
    assert answer.startswith(b"HTTP/1.1 413")
    with Client(server.url, RW) as client:
        with pytest.raises(ApiError) as info:
            client.read("big")
        assert info.value.status == 404


def test_sigterm_stops_gracefully_and_data_survives(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens")
    args = ["--region", "proc", "--data", str(tmp_path / "data"), "--tokens", str(tokens)]
    first = ServerProcess(tmp_path, args).start()
    try:
        with Client(first.url, RW) as client:
            version = client.apply("kept", [{"op": "increment", "path": ["n"], "by": 7}]).version
        assert first.stop() == 0
        assert any(r.get("msg") == "node closed" for r in first.log_records())
        second = ServerProcess(tmp_path, args).start()
        with Client(second.url, RW) as client:
            doc = client.read("kept")
        assert doc.value == {"n": 7} and doc.version == version
        assert second.stop() == 0
    finally:
        first.kill()


def test_peer_port_gives_peer_links_a_listener_of_their_own(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens")
    args = ["--region", "proc", "--data", str(tmp_path / "data"), "--tokens", str(tokens), "--peer-port", "0"]
    proc = ServerProcess(tmp_path, args, env={"CRDTSTORE_CLUSTER_SECRET": "process-secret-0123456789abcdef"}).start()
    try:
        ports = [int(r["port"]) for r in proc.log_records() if r.get("msg") == "listening"]  # type: ignore[call-overload]
        assert len(ports) == 2 and ports[0] == proc.port
        peer_url = f"ws://127.0.0.1:{ports[1]}"
        assert httpx.get(f"http://127.0.0.1:{ports[1]}/healthz", timeout=5).status_code == 200
        with connect(f"{peer_url}/v1/peer", open_timeout=5, proxy=None) as ws:
            assert ws.protocol.state is State.OPEN  # taken; the HMAC handshake would follow
        with pytest.raises(InvalidStatus) as refused:
            with connect(f"ws://127.0.0.1:{proc.port}/v1/peer", open_timeout=5, proxy=None):
                pass
        assert refused.value.response.status_code == 403
        # The peer listener serves nothing of the API.
        assert httpx.get(f"http://127.0.0.1:{ports[1]}/v1/docs/x", timeout=5).status_code == 404
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_startup_failure_exits_nonzero(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens")
    ServerProcess(tmp_path, ["--region", "one", "--data", str(tmp_path / "d"), "--tokens", str(tokens)]).start().stop()
    # The directory belongs to region "one": a node for "two" must refuse it, and the process must say so.
    other = ServerProcess(tmp_path, ["--region", "two", "--data", str(tmp_path / "d"), "--tokens", str(tokens)])
    with pytest.raises(AssertionError, match="server exited"):
        other.start(timeout=30)
    assert other.proc is not None and other.proc.returncode != 0


def _openssl_cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls(tmp_path: Path) -> None:
    cert, key = _openssl_cert(tmp_path)
    tokens = write_tokens(tmp_path / "tokens")
    args = ["--region", "tls", "--data", str(tmp_path / "d"), "--tokens", str(tokens)]
    proc = ServerProcess(tmp_path, [*args, "--certfile", str(cert), "--keyfile", str(key)])
    context = ssl.create_default_context(cafile=str(cert))
    proc.start(verify=context)
    try:
        assert proc.url.startswith("https://")
        with Client(proc.url, RW, verify=str(cert)) as client:
            version = client.apply("t", [{"op": "enable", "path": ["secure"]}]).version
            feed = client.changes("t")
            assert next(feed)["version"] == version
            feed.close()
        with pytest.raises(httpx.ConnectError):  # an unknown CA is refused
            httpx.get(proc.url + "/healthz", timeout=5)
    finally:
        proc.kill()


# Durability.


class Writers:
    """Threads incrementing one counter each until the server goes away; they count what was acknowledged."""

    def __init__(self, url: str, n: int, base: list[int]) -> None:
        self.url = url
        self.base = list(base)  # each counter's durable value when this round starts
        self.acked = [0] * n
        self.unacked = [0] * n  # sent but not acknowledged: may or may not have committed
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(n)
        self.futures = [self.pool.submit(self._run, i) for i in range(n)]

    def _run(self, i: int) -> None:
        with Client(self.url, RW, timeout=10) as client:
            for _ in range(100_000):  # bounded; the kill or the stop ends it long before
                if self.stop.is_set():
                    return
                try:
                    client.apply(
                        f"w{i}",
                        [
                            {"op": "increment", "path": ["n"]},
                            {"op": "set", "path": ["last"], "value": self.base[i] + self.acked[i] + 1},
                        ],
                    )
                except (httpx.TransportError, ApiError):
                    self.unacked[i] += 1
                    return
                self.acked[i] += 1

    def total(self) -> int:
        return sum(self.acked)

    def join(self) -> None:
        self.stop.set()
        for future in self.futures:
            future.result(timeout=60)
        self.pool.shutdown()


def read_counter(client: Client, doc_id: str, acked: int) -> dict[str, Any]:
    """The document's value; a document whose writes were all unacknowledged may rightly not exist."""
    try:
        return client.read(doc_id).value
    except ApiError as exc:
        # Found by the suite: a writer killed before its first write committed leaves no document.
        assert exc.status == 404 and acked == 0, (doc_id, acked, exc)
        return {"n": 0}


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens")
    args = ["--region", "dur", "--data", str(tmp_path / "data"), "--tokens", str(tokens), "--access-log", "false"]
    acked = [0] * WRITERS
    unacked = [0] * WRITERS
    for cycle in range(CYCLES):
        server = ServerProcess(tmp_path, args).start()
        try:
            with Client(server.url, RW) as client:
                for i in range(WRITERS):
                    if acked[i] or unacked[i]:
                        value = read_counter(client, f"w{i}", acked[i])
                        # Every acknowledged increment is there; at most the unacknowledged ones on top.
                        assert acked[i] <= value["n"] <= acked[i] + unacked[i], (cycle, i, value, acked[i])
                        acked[i] = value["n"]  # what is durable now is the new baseline
                        unacked[i] = 0
            writers = Writers(server.url, WRITERS, acked)
            deadline = time.monotonic() + 20
            target = writers.total() + 30 + 10 * cycle
            while writers.total() < target and time.monotonic() < deadline:
                time.sleep(0.01)
            server.kill()  # SIGKILL with writes in flight
            writers.join()
        finally:
            server.kill()
        for i in range(WRITERS):
            acked[i] += writers.acked[i]
            unacked[i] += writers.unacked[i]
        assert writers.total() > 0, "no write was acknowledged before the kill"
    final = ServerProcess(tmp_path, args).start()
    try:
        with Client(final.url, RW) as client:
            for i in range(WRITERS):
                value = read_counter(client, f"w{i}", acked[i])
                assert acked[i] <= value["n"] <= acked[i] + unacked[i]
                assert value.get("last", 0) == value["n"]  # the register moved with the counter, batch by batch
    finally:
        final.kill()
