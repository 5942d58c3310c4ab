"""Live-editing benchmark (issue #12, section 6): E editors typing into one shared text, against each side.

Usage::

    python bench/collab.py                      # every available side, 50 editors x 5 keystrokes/s, 60 s
    python bench/collab.py --seconds 20         # shorter
    python bench/collab.py --ramp --seconds 20  # also E = 10, 25, 50, 100, 200, ... per side
    python bench/collab.py --peers pycrdt-websocket --editors 10
    python bench/collab.py --crash --seconds 20  # also SIGKILL each server as typing stops: what did acks promise?
    python bench/collab.py --regions 1           # ours on one node too, as the peers

The sides, on loopback:

- ``hocuspocus``: ``@hocuspocus/server`` with ``@hocuspocus/extension-sqlite``
  (``collab/hocuspocus_server.mjs``), driven by Yjs editors behind
  ``@hocuspocus/provider`` in Node (``collab/yjs_driver.mjs``). Installed
  here by ``npm ci`` in ``bench/collab`` from its ``package-lock.json``;
  better-sqlite3's native module is built from source against the system's
  Node headers when it does not load (npm's install-scripts policy skips
  its install script, and its prebuilt download cannot be reached here).
- ``pycrdt-websocket``: ``WebsocketServer`` with pycrdt-store's
  ``SQLiteYStore`` (``collab/pycrdt_server.py``), driven by pycrdt editors
  over ``websockets`` (``collab/pycrdt_driver.py``). Installed by the
  project's ``test`` extra (pip).
- ``crdtstore``: our live channel (``/v1/docs/{id}/live``), driven by thin
  editors with no CRDT library, as a browser runs them
  (``collab/crdtstore_driver.py``: patches and ``crdtstore.rebase``). By
  default three regions (``--regions 3``): ``crdtstore up --latency 50ms``,
  one node process per region (LMDB with fsync'd group commit) replicating
  through the emulated WAN (``sync/io/wanproxy.py``, ``--latency-ms`` one
  way), editor i in region i mod 3. ``--regions 1``: one node
  (``collab/crdtstore_server.py``). Neither peer replicates across regions:
  each is one region.

Each run starts the side's server in its own process (a fresh database in
a temporary directory), then its driver in another, and reads the server's
CPU seconds from ``/proc`` when the driver says typing starts and stops
(ours across regions: the region processes together; the WAN emulation's
own CPU is reported apart). After the driver is done it stops the server
(SIGTERM: each side's own graceful shutdown), opens the side's store (each
region's, for ours), and checks that the stored text is the editors' text
and that every acknowledged keystroke is in it. ``--crash`` adds one run per side whose server is SIGKILLed the
moment typing stops: how many acknowledged keystrokes the store lacks
then is what an ack guarantees about durability.

The ramp raises E (10, 25, 50, 100, 200, ... up to ``--ramp-max``) until
a run is not sustained: local ack p99 above 100 ms, or fewer keystrokes
acknowledged within the window than 95% of those offered. A side's
maximum sustained rate is the highest acknowledged rate among its
sustained runs; the JSON's ``target`` says what our side must reach in the
same run (the issue's bar: at least pycrdt-websocket's and half of
Hocuspocus's). Drivers report their own CPU use and how late they typed
against their schedule (``lag p99``): a driver short of CPU inflates every
latency it reports, so its run bounds the server from below.

Beside each run, ``bench/diskprobe.py`` times ``fdatasync`` of one page on
the disk the side's store is on, 20 times a second: a side that
acknowledges after fsync (ours) cannot beat its disk, and a virtual disk
stalls for 100 ms to a second now and then. ``--store-dir /dev/shm`` runs
the stores on tmpfs, where fsync costs nothing: what is left is the server's
own latency. ``--tmpfs-run`` adds that run of our side beside the one on disk.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import procs
from diskprobe import STALL_MS, DiskProbe

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
COLLAB = HERE / "collab"
ROOT = HERE.parent
ACK_P99_LIMIT_MS = 100.0
DRIVER_LAG_LIMIT_MS = 20.0  # a driver typing later than this at p99 (against its schedule) is short of CPU
SUSTAINED_FRACTION = 0.95
RAMP_STEPS = (10, 25, 50, 100, 200, 400, 800)
RAMP_DOWN = (5, 2, 1)  # when the first step is not sustained (a loaded machine): where the maximum lies below
DOC_NAME = "doc"
# Keystrokes typed from STALL_BEFORE ahead of a disk stall the probe saw to STALL_AFTER past its end are the
# stall's: a probe runs every 50 ms, so a stall may have begun that much earlier, and a keystroke typed up to
# a cross-region path (about 100 ms) earlier may still be on its way through a commit.
STALL_BEFORE = 0.15
STALL_AFTER = 0.05
TMPFS = Path("/dev/shm")
UP_READY_LINE = b"token (readwrite"  # what `crdtstore up` prints once every region is ready


# The sides.


@dataclass
class Side:
    """One system under test: how to install it, start its server and driver, and read its store."""

    name: str
    install: Callable[[], str | None]  # None when ready, else why it is unavailable
    server_cmd: Callable[[Path], list[str]]  # (database path) -> argv; the server prints "listening PORT"
    driver_cmd: Callable[[int, argparse.Namespace, int], list[str]]  # (port, args, editors) -> argv
    read_store: Callable[[Path], tuple[str, dict[int, int]]]  # (database path) -> (text, clock per client)
    acks: str  # what an ack means on this side
    persists: str  # when this side's store has a change
    # A side that runs several regions (``--regions`` > 1): starts them all, and the driver's argv for their URLs.
    start_cluster: Callable[[Path, argparse.Namespace], Servers] | None = None
    cluster_driver_cmd: Callable[[list[str], argparse.Namespace, int], list[str]] | None = None
    samples: bool = False  # its driver takes --samples: its latencies are also reported clear of disk stalls


@dataclass
class Servers:
    """A running side: what the driver connects to, whose CPU is the server's, and which stores to check."""

    proc: subprocess.Popen[bytes]  # what we started (SIGTERM stops the side)
    urls: list[str]  # the driver's --url, one per region
    pids: list[int]  # the server processes (their CPU is the side's)
    stores: list[Path]  # each region's store, read after the stop
    extra_pids: dict[str, int] = field(default_factory=dict)  # CPU reported apart (the WAN emulation)
    reader: threading.Thread | None = None  # drains ``proc``'s stdout until it exits

    def stop(self) -> None:
        procs.stop(self.proc)
        if self.reader is not None:
            self.reader.join(timeout=10)
        if self.proc.stdout is not None and (self.reader is None or not self.reader.is_alive()):
            self.proc.stdout.close()


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _better_sqlite3_loads() -> bool:
    probe = "require('better-sqlite3')(':memory:').prepare('select 1').get()"
    return _run(["node", "-e", probe], COLLAB, 60).returncode == 0


def _node_headers_dir() -> Path | None:
    """The prefix whose include/node has the headers of the running Node (a distribution's package has them)."""
    node = shutil.which("node")
    if node is None:
        return None
    prefix = Path(node).resolve().parent.parent
    return prefix if (prefix / "include" / "node" / "node_api.h").exists() else None


def install_hocuspocus() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "unavailable: node and npm are not installed"
    if not (COLLAB / "node_modules" / "@hocuspocus" / "server").is_dir():
        print("hocuspocus: npm ci in bench/collab ...", flush=True)
        done = _run(["npm", "ci", "--no-audit", "--no-fund"], COLLAB, 900)
        if done.returncode != 0:
            return f"unavailable: npm ci failed: {done.stderr.strip()[-300:]}"
    if not _better_sqlite3_loads():
        headers = _node_headers_dir()
        if headers is None:
            return "unavailable: better-sqlite3 has no native module and the Node headers to build one are missing"
        print(f"hocuspocus: building better-sqlite3 from source against {headers}/include/node ...", flush=True)
        built = _run(
            ["npx", "--yes", "node-gyp", "rebuild", "--release", f"--nodedir={headers}"],
            COLLAB / "node_modules" / "better-sqlite3",
            1200,
        )
        if built.returncode != 0 or not _better_sqlite3_loads():
            return f"unavailable: better-sqlite3 does not build: {built.stderr.strip()[-300:]}"
    return None


def install_pycrdt() -> str | None:
    try:
        import pycrdt.store  # noqa: F401
        import pycrdt.websocket  # noqa: F401
    except ImportError:
        print("pycrdt-websocket: pip install -e '.[test]' ...", flush=True)
        done = _run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[test]"], ROOT, 900)
        if done.returncode != 0:
            return f"unavailable: pip install failed: {done.stderr.strip()[-300:]}"
        # A fresh interpreter sees what pip just installed.
        check = _run([sys.executable, "-c", "import pycrdt.store, pycrdt.websocket"], ROOT, 60)
        if check.returncode != 0:
            return f"unavailable: pycrdt-websocket does not import: {check.stderr.strip()[-300:]}"
    return None


def install_crdtstore() -> str | None:
    # Our side is this checkout: nothing to install beyond the project itself.
    return None


def read_crdtstore_store(db: Path, region: str = "bench") -> tuple[str, dict[int, int]]:
    # The node's LMDB directory, opened once the server has stopped. Editor i types only
    # chr(EDITOR_BASE + i), so its count in the text is how many of its keystrokes the store holds.
    import asyncio

    from crdtstore.node import DocumentNotFound, Node, NodeConfig

    async def read() -> str:
        node = Node(NodeConfig(region=region, data_dir=db))
        await node.start()
        try:
            return str((await node.read(DOC_NAME)).value.get("t", ""))
        except DocumentNotFound:
            return ""
        finally:
            await node.close()

    text = asyncio.run(read())
    base = 0x4E00  # bench/collab/crdtstore_driver.py's EDITOR_BASE
    clocks: dict[int, int] = {}
    for char in text:
        clocks[ord(char) - base] = clocks.get(ord(char) - base, 0) + 1
    return text, clocks


def _driver_args(args: argparse.Namespace, editors: int) -> list[str]:
    return [
        f"--editors={editors}",
        f"--rate={args.rate}",
        f"--seconds={args.seconds}",
        f"--drain={args.drain}",
        f"--seed={args.seed}",
    ]


def _doc_text(updates: list[bytes]) -> tuple[str, dict[int, int]]:
    from pycrdt import Doc, Text
    from yupdate import decode_state_vector

    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("text", type=Text)), decode_state_vector(doc.get_state())


def read_hocuspocus_store(db: Path) -> tuple[str, dict[int, int]]:
    # extension-sqlite keeps one row per document: the whole Y.Doc state as one update.
    with sqlite3.connect(db) as conn:
        rows = conn.execute('SELECT data FROM "documents" WHERE name = ?', (DOC_NAME,)).fetchall()
    return _doc_text([bytes(r[0]) for r in rows])


def read_pycrdt_store(db: Path) -> tuple[str, dict[int, int]]:
    # pycrdt-store keeps every update as a row, and now and then a checkpoint of the whole document.
    path = "/" + DOC_NAME
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT yupdate FROM yupdates WHERE path = ?", (path,)).fetchall()
        rows += conn.execute("SELECT checkpoint FROM ycheckpoints WHERE path = ?", (path,)).fetchall()
    return _doc_text([bytes(r[0]) for r in rows])


def _up_token(root: Path) -> str:
    # `crdtstore up` writes its tokens file as "TOKEN SCOPE" lines.
    for line in (root / "tokens").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "readwrite":
            return parts[0]
    raise RuntimeError("crdtstore up wrote no readwrite token")


def start_crdtstore_cluster(root: Path, args: argparse.Namespace) -> Servers:
    """``crdtstore up``: one node process per region on loopback, linked through the emulated WAN."""
    cmd = [
        sys.executable,
        "-m",
        "crdtstore.cli",
        "up",
        f"--data={root}",
        "--port=0",
        f"--regions={args.regions}",
        f"--latency={args.latency_ms}ms",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None)
    assert proc.stdout is not None
    ready: list[bool] = []

    def watch() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(UP_READY_LINE):
                ready.append(True)
        # Keeps draining until `up` exits, so it never blocks on a full pipe.

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not ready:
        if proc.poll() is not None or time.monotonic() > deadline:
            Servers(proc, [], [], [], reader=reader).stop()
            raise RuntimeError(f"crdtstore up did not start (exit {proc.returncode})")
        time.sleep(0.05)
    plan = orjson.loads((root / "up.json").read_bytes())
    token = _up_token(root)
    regions = plan["regions"]
    urls = [
        regions[name]["url"].replace("http://", "ws://", 1) + f"/v1/docs/{DOC_NAME}/live?coalesce=1&token={token}"
        for name in regions
    ]
    return Servers(
        proc=proc,
        urls=urls,
        pids=[regions[name]["pid"] for name in regions],
        stores=[root / name for name in regions],
        extra_pids={"wan_proxy": proc.pid},
        reader=reader,
    )


def _read_our_region(path: Path) -> tuple[str, dict[int, int]]:
    # A region's LMDB opens only under its own region name: `up` names each directory after its region.
    from crdtstore.cli import UP_REGIONS

    return read_crdtstore_store(path, region=path.name if path.name in UP_REGIONS else "bench")


SIDES = {
    "crdtstore": Side(
        name="crdtstore",
        install=install_crdtstore,
        server_cmd=lambda db: [sys.executable, str(COLLAB / "crdtstore_server.py"), "0", str(db)],
        driver_cmd=lambda port, args, editors: [
            sys.executable,
            str(COLLAB / "crdtstore_driver.py"),
            f"--url=ws://127.0.0.1:{port}/v1/docs/{DOC_NAME}/live?coalesce=1",
            *_driver_args(args, editors),
        ],
        read_store=_read_our_region,
        acks="the live channel's ack: the batch's LMDB commit is fsync'd (group commit), its change already pushed",
        persists="before the ack",
        start_cluster=start_crdtstore_cluster,
        cluster_driver_cmd=lambda urls, args, editors: [
            sys.executable,
            str(COLLAB / "crdtstore_driver.py"),
            *(f"--url={url}" for url in urls),
            *_driver_args(args, editors),
        ],
        samples=True,
    ),
    "hocuspocus": Side(
        name="hocuspocus",
        install=install_hocuspocus,
        server_cmd=lambda db: ["node", str(COLLAB / "hocuspocus_server.mjs"), "0", str(db)],
        driver_cmd=lambda port, args, editors: [
            "node",
            str(COLLAB / "yjs_driver.mjs"),
            f"--url=ws://127.0.0.1:{port}",
            f"--name={DOC_NAME}",
            *_driver_args(args, editors),
        ],
        read_store=read_hocuspocus_store,
        acks="SyncStatus reply once the update is applied in memory",
        persists="whole document, debounced: 2 s after the last change, at most 10 s after the first unsaved one",
    ),
    "pycrdt-websocket": Side(
        name="pycrdt-websocket",
        install=install_pycrdt,
        server_cmd=lambda db: [sys.executable, str(COLLAB / "pycrdt_server.py"), "0", str(db)],
        driver_cmd=lambda port, args, editors: [
            sys.executable,
            str(COLLAB / "pycrdt_driver.py"),
            f"--url=ws://127.0.0.1:{port}/{DOC_NAME}",
            *_driver_args(args, editors),
        ],
        read_store=read_pycrdt_store,
        acks="none; the echo of the sender's own update, broadcast once applied in memory",
        persists="each update, one SQLite transaction, started in the background after the broadcast",
    ),
}


# One run.


@dataclass
class Run:
    side: str
    editors: int
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def sustained(self) -> bool:
        if self.error is not None or not self.result:
            return False
        p99 = self.result["ack_ms"]["p99"]
        offered = self.result["offered_ops"]
        return (
            p99 is not None
            and p99 <= ACK_P99_LIMIT_MS
            and self.result["acked_in_window"] >= SUSTAINED_FRACTION * offered
        )


def _start_server(side: Side, db: Path) -> tuple[subprocess.Popen[bytes], int, threading.Thread]:
    proc = subprocess.Popen(side.server_cmd(db), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None)
    assert proc.stdout is not None
    port: list[int] = []

    def read_port() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"listening "):
                port.append(int(line.split()[1]))
                break
        # Keep draining, so a chatty server never blocks on a full pipe.
        for _ in proc.stdout:
            pass

    reader = threading.Thread(target=read_port, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not port:
        if proc.poll() is not None or time.monotonic() > deadline:
            Servers(proc, [], [], [], reader=reader).stop()
            raise RuntimeError(f"{side.name} server did not start (exit {proc.returncode})")
        time.sleep(0.02)
    return proc, port[0], reader


def _start(side: Side, db: Path, args: argparse.Namespace, editors: int) -> tuple[Servers, list[str]]:
    """The side's servers, and the driver's argv for them."""
    if side.start_cluster is not None and side.cluster_driver_cmd is not None and args.regions > 1:
        servers = side.start_cluster(db.parent / "cluster", args)
        return servers, side.cluster_driver_cmd(servers.urls, args, editors)
    server, port, reader = _start_server(side, db)
    servers = Servers(proc=server, urls=[], pids=[server.pid], stores=[db], reader=reader)
    return servers, side.driver_cmd(port, args, editors)


def _cpu(pids: list[int]) -> float | None:
    seconds = [procs.cpu_seconds(pid) for pid in pids]
    return None if any(s is None for s in seconds) else sum(s for s in seconds if s is not None)


def _kill(servers: Servers) -> None:
    # A crash of every server process at once: SIGKILL by pid (the processes this run started, directly or via `up`).
    for pid in servers.pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_once(side: Side, editors: int, args: argparse.Namespace, *, crash: bool = False, tmpfs: bool = False) -> Run:
    """One run of the workload against ``side``; ``crash``: SIGKILL the server the moment typing stops;
    ``tmpfs``: the stores on ``/dev/shm`` whatever ``--store-dir`` says."""
    run = Run(f"{side.name} tmpfs" if tmpfs else side.name, editors)
    store_dir = TMPFS if tmpfs else args.store_dir
    with tempfile.TemporaryDirectory(prefix=f"collab-{side.name}-", dir=store_dir) as tmp:
        db = Path(tmp) / "store.db"
        servers, driver_cmd = _start(side, db, args, editors)
        samples = Path(tmp) / "samples.json"
        if side.samples:
            driver_cmd = [*driver_cmd, f"--samples={samples}"]
        driver = subprocess.Popen(driver_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None)
        assert driver.stdout is not None
        marks: dict[str, tuple[float, float | None, float | None, dict[str, float | None]]] = {}
        steal: dict[str, float | None] = {}  # the host's, from /proc/stat
        load1 = os.getloadavg()[0]
        # The disk the side's store is on, timed on its own while the editors type.
        probe = DiskProbe(Path(tmp))
        # The driver bounds itself; this bounds the driver.
        killer = threading.Timer(args.seconds + args.drain + 180, lambda: procs.stop(driver, timeout=5))
        killer.start()
        try:
            for line in driver.stdout:
                record = orjson.loads(line)
                event = record.get("event")
                if event == "start":
                    probe.start()
                elif event == "end":
                    probe.stop()
                if event in ("start", "end"):
                    marks[event] = (
                        time.monotonic(),
                        _cpu(servers.pids),
                        procs.cpu_seconds(driver.pid),
                        {name: procs.cpu_seconds(pid) for name, pid in servers.extra_pids.items()},
                    )
                    steal[event] = procs.steal_seconds()
                    if event == "end" and crash:
                        _kill(servers)
                elif event == "result":
                    run.result = record
            driver.wait(timeout=30)
        finally:
            probe.stop()
            killer.cancel()
            procs.stop(driver, timeout=5)
            driver.stdout.close()
            servers.stop()
        if driver.returncode != 0 or not run.result:
            run.error = f"driver exited with {driver.returncode}"
            return run
        r = run.result
        r["load1_at_start"] = round(load1, 2)
        r["disk"] = probe.summary()
        if samples.exists():
            r["clear_of_stalls"] = clear_of_stalls(orjson.loads(samples.read_bytes()), probe)
        r["server_processes"] = len(servers.pids)
        if "start" in marks and "end" in marks:
            (w0, s0, d0, x0), (w1, s1, d1, x1) = marks["start"], marks["end"]
            wall = w1 - w0
            if s0 is not None and s1 is not None:
                r["server_cpu_s"] = round(s1 - s0, 3)
                r["server_cpu_util"] = round((s1 - s0) / wall, 3)
                r["server_cpu_ms_per_op"] = (
                    round((s1 - s0) / r["acked_in_window"] * 1e3, 4) if r["acked_in_window"] else None
                )
                if r.get("batches_sent"):
                    # Editors send what they typed while a batch was in flight as one batch: faster acks mean
                    # more, smaller batches, so a side's CPU per op also moves with its own latency.
                    r["server_cpu_ms_per_batch"] = round((s1 - s0) / r["batches_sent"] * 1e3, 4)
            if d0 is not None and d1 is not None:
                r["driver_cpu_util"] = round((d1 - d0) / wall, 3)
            for name, before in x0.items():
                after = x1.get(name)
                if before is not None and after is not None:
                    r[f"{name}_cpu_util"] = round((after - before) / wall, 3)
            t0, t1 = steal.get("start"), steal.get("end")
            if t0 is not None and t1 is not None:
                # Of the machine's CPU time while typing, the share its host gave to other guests.
                r["host_steal_util"] = round((t1 - t0) / (wall * (os.cpu_count() or 1)), 4)
        r["persisted"] = check_stores(side, servers.stores, r)
    return run


def clear_of_stalls(samples: dict[str, list[list[float]]], probe: DiskProbe) -> dict[str, Any]:
    """The run's latencies over the keystrokes typed clear of the disk's stalls, and the share left out.

    Every region of ours shares this machine's one disk, so a stall holds up
    all of them at once; on their own machines a stall would hold up one. The
    latencies of all keystrokes are reported beside these, never replaced.
    """
    from drivers import p50_p99  # bench/collab/, on sys.path as for yupdate

    out: dict[str, Any] = {}
    total = kept_count = 0
    for kind, key in (
        ("ack", "ack_ms"),
        ("within", "visible_ms_within_region"),
        ("across", "visible_ms_across_regions"),
    ):
        pairs = samples.get(kind, [])
        kept = [lat for at, lat in pairs if not probe.during_stall(at, before=STALL_BEFORE, after=STALL_AFTER)]
        out[key] = p50_p99(kept)
        total += len(pairs)
        kept_count += len(kept)
    out["excluded_share"] = round(1 - kept_count / total, 4) if total else 0.0
    return out


def check_stores(side: Side, stores: list[Path], result: dict[str, Any]) -> dict[str, Any]:
    """:func:`check_store` of every region's store (editor i types in region i mod len(stores)).

    An ack promises the keystroke is durable in the editor's own region, so
    ``acked_missing`` counts, per region, the acknowledged keystrokes of its
    own editors it lacks. Whether the regions had converged when they
    stopped (a graceful stop does not wait for replication) is apart:
    ``text_identical`` (every region holds the editors' final text) and
    ``regions_identical``.
    """
    if len(stores) == 1:
        return check_store(side, stores[0], result)
    each = {
        path.name: check_store(side, path, result, own=lambda c, k=k: c % len(stores) == k, with_digest=True)
        for k, path in enumerate(stores)
    }
    errors = [c["error"] for c in each.values() if "error" in c]
    if errors:
        return {"error": "; ".join(errors), "regions": each}
    return {
        "text_identical": all(c["text_identical"] for c in each.values()),
        "regions_identical": len({c["text_sha256"] for c in each.values()}) == 1,
        "text_length": min(c["text_length"] for c in each.values()),
        "acked_missing": sum(c["acked_missing"] for c in each.values()),
        "regions": each,
    }


def check_store(
    side: Side,
    db: Path,
    result: dict[str, Any],
    *,
    own: Callable[[int], bool] = lambda client: True,
    with_digest: bool = False,
) -> dict[str, Any]:
    """Is the editors' text in the side's store, with every acknowledged keystroke (of the clients ``own`` names)?"""
    try:
        text, clocks = side.read_store(db)
    except (sqlite3.Error, OSError, ValueError) as exc:
        return {"error": str(exc)}
    acked = {int(c): n for c, n in result["acked_by_client"].items() if own(int(c))}
    # Each editor's k-th keystroke is its clock k: a store that has clock n of a client has its first n.
    missing = sum(max(0, n - clocks.get(c, 0)) for c, n in acked.items())
    digest = hashlib.sha256(text.encode()).hexdigest()
    out: dict[str, Any] = {"text_identical": digest == result["text_sha256"], "text_length": len(text)}
    out["acked_missing"] = missing
    if with_digest:  # a region of a cluster: the digests tell whether the regions agree
        out["text_sha256"] = digest
    return out


# Reporting.


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[Run]) -> str:
    head = (
        f"{'side':<17}{'reg':>4}{'E':>5}{'offered/s':>10}{'acked/s':>9}{'ack p50':>9}{'ack p99':>9}{'vis p50':>9}"
        f"{'vis p99':>9}{'x-reg p50':>10}{'x-reg p99':>10}{'lag p99':>9}{'cpu ms/op':>10}{'srv cpu':>8}"
        f"{'drv cpu':>8}{'same text':>10}{'stored':>8}{'load1':>7}{'fsync p99':>10}{'stalled':>9}{'steal':>7}"
        f"{'clear: ack p99':>15}{'vis p99':>9}{'x-reg p99':>10}{'left out':>9}"
    )
    lines = [head]
    for run in runs:
        if run.error is not None:
            lines.append(f"{run.side:<17}{'':>4}{run.editors:>5}  {run.error}")
            continue
        r = run.result
        within = r.get("visible_ms_within_region") or r["visible_ms"]
        across = r.get("visible_ms_across_regions") or {}
        stored = r.get("persisted", {})
        disk = r.get("disk", {})
        clear = r.get("clear_of_stalls") or {}
        stored_ok = (
            "error"
            if "error" in stored
            else (
                "ok"
                if stored.get("text_identical") and not stored.get("acked_missing")
                else f"-{stored.get('acked_missing')}"
            )
        )
        lines.append(
            f"{run.side:<17}{r.get('regions', 1):>4}{run.editors:>5}{r['offered_ops'] / r['seconds']:>10.0f}"
            f"{r['ops_per_s']:>9.0f}{_fmt(r['ack_ms']['p50'], '.1f'):>9}{_fmt(r['ack_ms']['p99'], '.1f'):>9}"
            f"{_fmt(within['p50'], '.1f'):>9}{_fmt(within['p99'], '.1f'):>9}"
            f"{_fmt(across.get('p50'), '.1f'):>10}{_fmt(across.get('p99'), '.1f'):>10}"
            f"{_fmt(r['send_lag_ms_p99'], '.1f'):>9}"
            f"{_fmt(r.get('server_cpu_ms_per_op'), '.3f'):>10}{_fmt(r.get('server_cpu_util'), '.0%'):>8}"
            f"{_fmt(r.get('driver_cpu_util'), '.0%'):>8}{'yes' if r['texts_identical'] else 'NO':>10}"
            f"{stored_ok:>8}{r['load1_at_start']:>7.2f}"
            f"{_fmt(disk.get('fsync_ms', {}).get('p99'), '.1f'):>10}{_fmt(disk.get('stalled_s'), '.2f'):>8}s"
            f"{_fmt(r.get('host_steal_util'), '.1%'):>7}"
            f"{_fmt(clear.get('ack_ms', {}).get('p99'), '.1f'):>15}"
            f"{_fmt(clear.get('visible_ms_within_region', {}).get('p99'), '.1f'):>9}"
            f"{_fmt((clear.get('visible_ms_across_regions') or {}).get('p99'), '.1f'):>10}"
            f"{_fmt(clear.get('excluded_share'), '.1%'):>9}"
        )
    return "\n".join(lines)


def ramp_runs(step: Callable[[int], Run], ramp_max: int) -> list[Run]:
    """Raise E through :data:`RAMP_STEPS` until a run is not sustained; if the first is not, lower it instead.

    Bounded: at most ``len(RAMP_STEPS) + len(RAMP_DOWN)`` runs, none above ``ramp_max`` editors.
    """
    done: list[Run] = []
    for editors in [e for e in RAMP_STEPS if e <= ramp_max]:
        done.append(step(editors))
        if not done[-1].sustained():
            break
    if done and not any(r.sustained() for r in done):
        for editors in RAMP_DOWN:
            done.append(step(editors))
            if done[-1].sustained():
                break
    return done


def summary(run: Run) -> dict[str, Any]:
    if run.error is not None:
        return {"editors": run.editors, "error": run.error}
    r = run.result
    keep = (
        "editors", "offered_ops", "acked_in_window", "ops_per_s", "ack_ms", "visible_ms", "visible_missing",
        "send_lag_ms_p99", "server_cpu_ms_per_op", "server_cpu_util", "driver_cpu_util", "texts_identical",
        "text_length", "persisted", "load1_at_start", "unreadable_updates", "batches_sent", "frames_received",
        "server_cpu_ms_per_batch", "disk", "host_steal_util", "clear_of_stalls",
    )  # fmt: skip
    out = {k: r.get(k) for k in keep}
    out["regions"] = r.get("regions", 1)
    # A peer is one region: every remote-visible latency is within it.
    out["visible_ms_within_region"] = r.get("visible_ms_within_region") or out["visible_ms"]
    out["visible_ms_across_regions"] = r.get("visible_ms_across_regions")
    out["wan_proxy_cpu_util"] = r.get("wan_proxy_cpu_util")
    out["sustained"] = run.sustained()
    # A driver that types late is short of CPU itself: its latencies are inflated by as much, so the
    # run bounds the server from below rather than measuring it.
    lag = r.get("send_lag_ms_p99")
    out["driver_late"] = lag is not None and lag > DRIVER_LAG_LIMIT_MS
    return out


def target(sides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar, from one run: our maximum sustained ops/s >= pycrdt-websocket's and >= 0.5x Hocuspocus's."""
    hocuspocus = sides.get("hocuspocus", {}).get("max_sustained_ops_per_s")
    pycrdt = sides.get("pycrdt-websocket", {}).get("max_sustained_ops_per_s")
    ours = sides.get("crdtstore", {}).get("max_sustained_ops_per_s")
    bars = [b for b in (pycrdt, None if hocuspocus is None else 0.5 * hocuspocus) if b is not None]
    needed = max(bars) if bars else None
    return {
        "needed_ops_per_s": needed,
        "crdtstore_ops_per_s": ours,
        "met": None if ours is None or needed is None else ours >= needed,
    }


# Entry.


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", default="crdtstore,hocuspocus,pycrdt-websocket", help="comma-separated sides")
    p.add_argument("--editors", type=int, default=50, help="E, editors per run (default 50)")
    p.add_argument("--rate", type=float, default=5.0, help="R, keystrokes per second per editor (default 5)")
    p.add_argument("--seconds", type=float, default=60.0, help="typing time per run (default 60)")
    p.add_argument("--drain", type=float, default=15.0, help="most seconds a driver waits for stragglers")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--ramp", action="store_true", help="also raise E until ack p99 > 100 ms")
    p.add_argument("--ramp-max", type=int, default=400, help="largest E the ramp tries (default 400)")
    p.add_argument("--crash", action="store_true", help="also one run per side killed (SIGKILL) as typing stops")
    p.add_argument("--regions", type=int, default=3, help="our side's regions (default 3; the peers run one)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="one-way latency between our regions (default 50)")
    p.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="where the sides' stores go (default: the system's temporary directory); /dev/shm takes the disk "
        "out of the measure, to tell the server's latency from its disk's",
    )
    p.add_argument(
        "--tmpfs-run",
        action="store_true",
        help="also run our side once more with its stores on tmpfs (/dev/shm), where fsync costs nothing: "
        "the server's own latency, beside the one its disk allows",
    )
    args = p.parse_args(argv)
    unknown = set(args.peers.split(",")) - set(SIDES)
    if unknown:
        p.error(f"unknown sides: {', '.join(sorted(unknown))}")
    if args.editors < 1 or args.rate <= 0 or args.seconds <= 0 or args.drain < 0:
        p.error("--editors, --rate, --seconds must be positive")
    from crdtstore.cli import UP_REGIONS

    if not 1 <= args.regions <= len(UP_REGIONS) or args.latency_ms < 0:
        p.error(f"--regions is 1 to {len(UP_REGIONS)}, --latency-ms at least 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(COLLAB))
    report: dict[str, Any] = {
        "workload": {
            "editors": args.editors,
            "rate": args.rate,
            "seconds": args.seconds,
            "regions": {name: args.regions if SIDES[name].start_cluster else 1 for name in args.peers.split(",")},
            "latency_ms_one_way": args.latency_ms if args.regions > 1 else None,
        },
        "cores": os.cpu_count(),
        "store_dir": str(args.store_dir or tempfile.gettempdir()),
        "load1_before": round(os.getloadavg()[0], 2),
        "sides": {},
    }
    runs: list[Run] = []
    for name in args.peers.split(","):
        side = SIDES[name]
        status = side.install()
        entry: dict[str, Any] = {"acks": side.acks, "persists": side.persists}
        report["sides"][name] = entry
        if status is not None:
            print(f"{name}: {status}", flush=True)
            entry["status"] = status
            continue
        entry["status"] = "ok"
        print(f"{name}: {args.editors} editors x {args.rate:g}/s for {args.seconds:g} s ...", flush=True)
        main_run = run_once(side, args.editors, args)
        runs.append(main_run)
        entry["run"] = summary(main_run)
        if args.tmpfs_run and side.name == "crdtstore":
            print(f"{name}: the same, its stores on tmpfs ...", flush=True)
            tmpfs_run = run_once(side, args.editors, args, tmpfs=True)
            runs.append(tmpfs_run)
            entry["run_tmpfs"] = summary(tmpfs_run)
        if args.ramp:

            def step(editors: int, side: Side = side, main_run: Run = main_run) -> Run:
                print(f"{side.name}: ramp, {editors} editors ...", flush=True)
                if editors == args.editors:
                    return main_run
                done = run_once(side, editors, args)
                runs.append(done)
                return done

            ramp = ramp_runs(step, args.ramp_max)
            best = max((s for s in ramp if s.sustained()), key=lambda s: s.result["ops_per_s"], default=None)
            entry["ramp"] = [summary(s) for s in ramp]
            entry["max_sustained_ops_per_s"] = best.result["ops_per_s"] if best else None
            entry["max_sustained_editors"] = best.editors if best else None
        if args.crash:
            print(f"{name}: crash run (SIGKILL as typing stops) ...", flush=True)
            crash_run = run_once(side, args.editors, args, crash=True)
            entry["crash"] = {
                "editors": args.editors,
                "acked_ops": crash_run.result.get("acked_ops"),
                "persisted": crash_run.result.get("persisted"),
                "error": crash_run.error,
            }
    if args.ramp:
        report["target"] = target(report["sides"])
    report["load1_after"] = round(os.getloadavg()[0], 2)
    print()
    print(table(runs))
    print(
        f"\nack p99 limit {ACK_P99_LIMIT_MS:g} ms. 'lag p99': how late the driver typed against its schedule; past "
        f"{DRIVER_LAG_LIMIT_MS:g} ms the driver was short of CPU and the run's latencies are inflated by it. 'stored': "
        "the side's store after a graceful stop (ours: every region's) holds the editors' text and every "
        "acknowledged keystroke (-N: N acknowledged keystrokes missing). 'vis': remote-visible within the "
        f"typist's region; 'x-reg': in another region ({args.latency_ms:g} ms one way). The peers are one region "
        "each. ack: local (the editor's own region). 'fsync p99', 'stalled': the disk under the side's store, "
        f"timed on its own during the run (bench/diskprobe.py): its fdatasync p99 in ms, and the seconds it spent in "
        f"fsyncs over {STALL_MS:g} ms, during which no write on it can be made durable. 'steal': of the machine's "
        "CPU time while typing, the share its hypervisor gave other guests (/proc/stat): a busy host delays every "
        "process here. 'clear': ours again, over the keystrokes typed clear of those stalls (from "
        f"{STALL_BEFORE * 1e3:g} ms before one to {STALL_AFTER * 1e3:g} ms after it; 'left out': the share of samples "
        "that were not): our regions share this one disk, so one stall holds up all three at once."
    )
    print(orjson.dumps(report).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
