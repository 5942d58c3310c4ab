"""Replay real editing traces on our core and on pycrdt (the peer we compare against).

The traces come from the public ``editing-traces`` collection (josephg/editing-traces, CC BY 4.0);
``tests/data/traces/ATTRIBUTION.md`` and ``../shared/traces/README.md`` describe them. A trace is
gzipped JSON in one of two shapes:

* sequential: ``{"startContent", "endContent", "txns": [{"patches": [[pos, ndel, ins], ...]}]}``,
  one author typing;
* concurrent: ``{"kind": "concurrent", "endContent", "numAgents", "txns": [{"parents", "agent",
  "patches"}]}``, where a txn was made by ``agent`` on a replica that had seen exactly ``parents``
  and their ancestors.

A patch is a splice ``s[:pos] + ins + s[pos + ndel:]`` with positions in Unicode code points.

Theory of operation. Both engines run the same driver: one replica per agent; before each txn the
agent's replica joins what the txn's causal history holds and the replica has not seen yet (the
payloads recorded for those txns, in txn index order, which is a topological order); then every
patch is applied as its own batch (our core) or transaction (pycrdt), and the payload it produces
is encoded and counted as an editor shipping it would. At the end every replica catches up with
every txn. Payloads travel as bytes and are decoded by the receiver, as on the wire, so replicas
never share objects.

This module never reads a clock: callers that time a replay pass ``on_window``, which is called
after every ``window`` patches, and read the clock themselves.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import orjson
import pycrdt

from .. import codec
from ..document import Document

__all__ = [
    "Kind",
    "Patch",
    "Replay",
    "Trace",
    "Txn",
    "load_trace",
    "parse_trace",
    "patch_ops",
    "pycrdt_offset_unit",
    "replay_ours",
    "replay_pycrdt",
    "splice_replay",
]

Patch = tuple[int, int, str]
Kind = Literal["sequential", "concurrent"]
OffsetUnit = Literal["codepoint", "utf-16", "utf-8"]

TEXT_KEY = "text"
_TEXT_PATH = [TEXT_KEY]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Txn:
    """One transaction: ``agent`` applied ``patches`` after seeing exactly ``parents`` (txn indexes)."""

    agent: int
    parents: tuple[int, ...]
    patches: tuple[Patch, ...]


@dataclass(frozen=True, slots=True)
class Trace:
    """A parsed trace. Sequential traces are one agent whose txns form a chain."""

    kind: Kind
    end_content: str
    num_agents: int
    txns: tuple[Txn, ...]
    ops: int  # number of patches, i.e. of batches we apply
    ascii: bool  # every inserted character is ASCII, so all position units agree


@dataclass(slots=True)
class Replay(Generic[R]):
    """The outcome of a replay: one replica per agent, already merged with everything."""

    replicas: list[R]
    texts: list[str]
    ops: int
    delta_bytes: int  # sum of the encoded sizes of every per-patch delta / update

    def matches(self, expected: str) -> bool:
        return all(text == expected for text in self.texts)


# Public functions for loading traces.


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a gzipped JSON trace file (see the module docstring for the shapes)."""
    with gzip.open(path, "rb") as f:
        return parse_trace(orjson.loads(f.read()))


def parse_trace(raw: dict[str, Any]) -> Trace:
    """Build a ``Trace`` from decoded JSON; the kind is detected from the fields present.

    Raises:
        ValueError: the JSON is neither shape, or a txn names a parent that is not earlier.
    """
    if raw.get("kind") == "concurrent" or "numAgents" in raw:
        kind: Kind = "concurrent"
        num_agents = int(raw["numAgents"])
        txns = tuple(
            Txn(int(t["agent"]), tuple(int(p) for p in t["parents"]), _patches(t["patches"])) for t in raw["txns"]
        )
    elif "txns" in raw and "endContent" in raw:
        kind = "sequential"
        num_agents = 1
        txns = tuple(Txn(0, (i - 1,) if i else (), _patches(t["patches"])) for i, t in enumerate(raw["txns"]))
        start = raw.get("startContent", "")
        if start:
            # Every published trace starts empty; a non-empty start is typed in as a first txn so the
            # replicas still begin from an empty document.
            txns = (Txn(0, (), ((0, 0, start),)), *(Txn(0, (i,), t.patches) for i, t in enumerate(txns)))
    else:
        raise ValueError("not an editing trace: expected 'txns' and 'endContent'")
    for i, txn in enumerate(txns):
        if not 0 <= txn.agent < num_agents:
            raise ValueError(f"txn {i}: agent {txn.agent} out of range")
        if any(not 0 <= p < i for p in txn.parents):
            raise ValueError(f"txn {i}: parents {list(txn.parents)} must name earlier txns")
    ops = sum(len(t.patches) for t in txns)
    ascii_only = all(ins.isascii() for t in txns for _, _, ins in t.patches)
    return Trace(kind, raw["endContent"], num_agents, txns, ops, ascii_only)


def splice_replay(trace: Trace) -> str:
    """Apply a sequential trace to a plain ``str``: the reference the CRDT replays must agree with."""
    if trace.kind != "sequential":
        raise ValueError("only a sequential trace has a single plain-string history")
    text = ""
    for txn in trace.txns:
        for pos, ndel, ins in txn.patches:
            text = text[:pos] + ins + text[pos + ndel :]
    return text


def patch_ops(patch: Patch) -> list[dict[str, Any]]:
    """The op batch for one patch on our core: the delete first, then the insert (either may be absent)."""
    pos, ndel, ins = patch
    ops: list[dict[str, Any]] = []
    if ndel:
        ops.append({"op": "delete", "path": _TEXT_PATH, "index": pos, "count": ndel})
    if ins:
        ops.append({"op": "insert", "path": _TEXT_PATH, "index": pos, "text": ins})
    return ops


# Public functions for replaying.


def replay_ours(
    trace: Trace, *, on_window: Callable[[int], None] | None = None, window: int = 10_000
) -> Replay[Document]:
    """Replay ``trace`` on our core: one ``Document`` per agent, replica ids ``a0``, ``a1``, ...

    Each patch is one ``Document.apply`` batch; its delta is encoded with ``codec.encode_delta``
    (counted in ``delta_bytes``) and other replicas join ``codec.decode_delta`` of those bytes.
    """
    engine = _OurEngine()
    delta_bytes = _drive(trace, engine, on_window, window)
    return Replay(engine.docs, [engine.text(r) for r in range(len(engine.docs))], trace.ops, delta_bytes)


def replay_pycrdt(
    trace: Trace, *, on_window: Callable[[int], None] | None = None, window: int = 10_000
) -> Replay[pycrdt.Doc[pycrdt.Text]]:
    """Replay ``trace`` on pycrdt: one ``Doc`` per agent, one transaction per patch.

    The update each transaction emits (captured with ``Doc.observe``) is counted in ``delta_bytes``;
    other replicas ``apply_update`` those bytes. Positions are converted from code points to
    whatever unit the installed pycrdt uses (see ``pycrdt_offset_unit``).
    """
    engine = _PeerEngine(convert=not trace.ascii)
    delta_bytes = _drive(trace, engine, on_window, window)
    return Replay(engine.docs, [engine.text(r) for r in range(len(engine.docs))], trace.ops, delta_bytes)


def pycrdt_offset_unit() -> OffsetUnit:
    """Find out, by trying, which unit the installed pycrdt's ``Text`` indexes count.

    pycrdt has counted UTF-8 bytes (yrs' default) and is moving to code points, so this asks the
    library rather than trusting a version number. Every probe index is valid under each unit still
    in question, so no probe can split a character.
    """
    if _probe("éx", 2) == "é|x":
        return "utf-8"
    if _probe("😀x", 2) == "😀|x":
        return "utf-16"
    if _probe("😀x", 1) == "😀|x":
        return "codepoint"
    raise RuntimeError("cannot tell which unit pycrdt.Text positions count")


# Private helpers: the driver shared by both engines.


class _Engine(Generic[R]):
    docs: list[R]

    def add_replica(self, agent: int) -> None:
        raise NotImplementedError

    def apply(self, replica: int, patch: Patch) -> bytes:
        """Apply one patch as its own batch and return the encoded payload to ship."""
        raise NotImplementedError

    def receive(self, replica: int, payload: bytes) -> None:
        raise NotImplementedError

    def text(self, replica: int) -> str:
        raise NotImplementedError


def _drive(trace: Trace, engine: _Engine[Any], on_window: Callable[[int], None] | None, window: int) -> int:
    if window <= 0:
        raise ValueError("window must be positive")
    for agent in range(trace.num_agents):
        engine.add_replica(agent)
    # A single agent always sees its own previous txn, so there is nothing to ship or catch up.
    shipping = trace.num_agents > 1
    seen: list[set[int]] = [set() for _ in range(trace.num_agents)]
    shipped: list[list[bytes]] = []
    done = 0
    total_bytes = 0
    for index, txn in enumerate(trace.txns):
        replica = txn.agent
        if shipping:
            _catch_up(trace, engine, replica, seen[replica], txn.parents, shipped)
        payloads: list[bytes] = []
        for patch in txn.patches:
            payload = engine.apply(replica, patch)
            total_bytes += len(payload)
            payloads.append(payload)
            done += 1
            if on_window is not None and done % window == 0:
                on_window(done)
        if shipping:
            shipped.append(payloads)
            seen[replica].add(index)
    if on_window is not None and done % window:
        on_window(done)
    if shipping:
        everything = tuple(range(len(trace.txns)))
        for replica in range(trace.num_agents):
            _catch_up(trace, engine, replica, seen[replica], everything, shipped)
    return total_bytes


def _catch_up(
    trace: Trace,
    engine: _Engine[Any],
    replica: int,
    seen: set[int],
    heads: tuple[int, ...],
    shipped: list[list[bytes]],
) -> None:
    # Walk back from the heads and stop at anything already seen: the seen set is downward closed,
    # so the cost is the number of txns actually missing, not the size of the history.
    missing = {h for h in heads if h not in seen}
    stack = list(missing)
    while stack:
        for parent in trace.txns[stack.pop()].parents:
            if parent not in seen and parent not in missing:
                missing.add(parent)
                stack.append(parent)
    for index in sorted(missing):
        for payload in shipped[index]:
            engine.receive(replica, payload)
        seen.add(index)


class _OurEngine(_Engine[Document]):
    def __init__(self) -> None:
        self.docs = []
        self.names: list[str] = []
        self.now = 0

    def add_replica(self, agent: int) -> None:
        self.docs.append(Document())
        self.names.append(f"a{agent}")

    def apply(self, replica: int, patch: Patch) -> bytes:
        self.now += 1
        delta = self.docs[replica].apply(patch_ops(patch), replica=self.names[replica], now=self.now)
        return codec.encode_delta(delta)

    def receive(self, replica: int, payload: bytes) -> None:
        self.docs[replica].join(codec.decode_delta(payload))

    def text(self, replica: int) -> str:
        value = self.docs[replica].value().get(TEXT_KEY, "")
        if not isinstance(value, str):
            raise TypeError(f"replica a{replica}: {TEXT_KEY!r} holds {type(value).__name__}, not text")
        return value


class _PeerEngine(_Engine[pycrdt.Doc[pycrdt.Text]]):
    def __init__(self, *, convert: bool) -> None:
        self.docs = []
        self.texts: list[pycrdt.Text] = []
        self.captured: list[list[bytes]] = []
        self.unit: OffsetUnit | None = pycrdt_offset_unit() if convert else None
        if self.unit == "codepoint":
            self.unit = None
        # Only non-ASCII traces need the code point view of each replica to convert positions;
        # None marks a view made stale by a remote update.
        self.shadows: list[str | None] = []

    def add_replica(self, agent: int) -> None:
        # Fixed client ids keep update bytes (and so the measured sizes) reproducible run to run.
        doc: pycrdt.Doc[pycrdt.Text] = pycrdt.Doc(client_id=agent + 1)
        captured: list[bytes] = []
        doc.observe(lambda event: captured.append(event.update))
        self.docs.append(doc)
        self.texts.append(doc.get(TEXT_KEY, type=pycrdt.Text))
        self.captured.append(captured)
        self.shadows.append("")

    def apply(self, replica: int, patch: Patch) -> bytes:
        pos, ndel, ins = patch
        text = self.texts[replica]
        start, count = pos, ndel
        if self.unit is not None:
            shadow = self.shadows[replica]
            if shadow is None:
                shadow = str(text)
            start = _units(shadow[:pos], self.unit)
            count = _units(shadow[pos : pos + ndel], self.unit)
            self.shadows[replica] = shadow[:pos] + ins + shadow[pos + ndel :]
        captured = self.captured[replica]
        captured.clear()
        with self.docs[replica].transaction():
            if count:
                del text[start : start + count]
            if ins:
                text.insert(start, ins)
        # One transaction commits exactly one update (none only if it changed nothing).
        return b"".join(captured)

    def receive(self, replica: int, payload: bytes) -> None:
        self.docs[replica].apply_update(payload)
        self.shadows[replica] = None

    def text(self, replica: int) -> str:
        return str(self.texts[replica])


def _units(s: str, unit: OffsetUnit) -> int:
    if unit == "utf-8":
        return len(s.encode("utf-8"))
    if unit == "utf-16":
        return len(s.encode("utf-16-le")) // 2
    return len(s)


def _probe(initial: str, index: int) -> str:
    doc: pycrdt.Doc[pycrdt.Text] = pycrdt.Doc()
    text = doc.get("probe", type=pycrdt.Text)
    text.insert(0, initial)
    text.insert(index, "|")
    return str(text)


def _patches(raw: list[Any]) -> tuple[Patch, ...]:
    return tuple((int(p[0]), int(p[1]), str(p[2])) for p in raw)
