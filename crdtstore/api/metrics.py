"""Prometheus metrics of one app, in a registry of its own.

A registry per app (not the process-global default) lets tests and the
``up`` command build several apps in one process without duplicate-series
errors, and keeps library metrics we did not choose out of ``/metrics``.

Series:

* ``crdtstore_http_requests_total{method,route,status}`` and
  ``crdtstore_http_request_duration_seconds{method,route}``: ``route`` is the
  route *template* (``/v1/docs/{id}``), never the raw path, so a client
  cannot grow the label set; unmatched paths count as ``<unmatched>``.
  They are counted in plain Python numbers on the event loop and handed to
  prometheus-client at scrape time (:class:`_RequestCollector`): a
  ``Counter.inc`` plus a ``Histogram.observe`` per request (locks, a Python
  loop over the buckets) cost about a sixth of a small read.
* ``crdtstore_commit_batch_size`` and ``crdtstore_commit_duration_seconds``:
  one observation per group commit (the duration includes the fsync), fed
  live from the node's group-commit writer (``node.writer.observers``).
* ``crdtstore_documents``, ``crdtstore_lmdb_map_bytes``,
  ``crdtstore_lmdb_used_bytes``, and every other number ``node.stats()``
  reports as a ``crdtstore_node_<path>`` gauge (``stats["commit"]["commits"]``
  is ``crdtstore_node_commit_commits``), read at scrape time.
* Replication, read at scrape time from the replicator
  (:class:`_ReplicationCollector`; its numbers are kept by
  :class:`crdtstore.peermetrics.ReplicationMeter`). Per peer, labelled by
  the peer's stable replica id (``peer``) only: ``crdtstore_peer_up`` (1
  while an authenticated link is open), ``crdtstore_replication_lag_seconds``
  (our commit of a write to the peer's ack of it),
  ``crdtstore_peer_outbox_messages`` (messages queued for the socket),
  ``crdtstore_peer_unacked_deltas`` (our writes it has not acknowledged),
  ``crdtstore_peer_{sent,received}_{bytes,messages}_total``. Per node:
  ``crdtstore_anti_entropy_sessions_total`` and
  ``crdtstore_anti_entropy_repaired_documents_total`` (sessions this
  replica started, documents they pulled or pushed),
  ``crdtstore_quorum_requests_total{operation,level,outcome}`` (reads and
  writes that waited on peers; ``timeout`` is the 504),
  ``crdtstore_log_oldest_entry_age_seconds`` (a lower bound),
  ``crdtstore_peers_untracked``, and each replicator counter as
  ``crdtstore_replication_<name>_total``.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crdtstore.peermetrics import QUORUM_OPERATIONS, QUORUM_OUTCOMES, Traffic
from crdtstore.peermetrics import Histogram as PlainHistogram
from sync.quorum import Level

__all__ = ["CONTENT_TYPE", "ApiMetrics", "MetricsMiddleware"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Numbers of node.stats() with a name of their own; the rest become crdtstore_node_<key>.
_NAMED_GAUGES = {
    "documents": ("crdtstore_documents", "Documents stored in this replica."),
    "lmdb_map_size": ("crdtstore_lmdb_map_bytes", "Size of the LMDB memory map."),
    "lmdb_used_bytes": ("crdtstore_lmdb_used_bytes", "Bytes of the LMDB map in use."),
    "quarantine_documents": (
        "crdtstore_quarantined_documents",
        "Documents in quarantine: peer data for them could not be joined; anti-entropy repairs them.",
    ),
    "quarantine_deltas_skipped": (
        "crdtstore_quarantine_deltas_skipped",
        "Peer deltas skipped since start because they could not be joined (their documents quarantined).",
    ),
    "quarantine_states_rejected": (
        "crdtstore_quarantine_states_rejected",
        "Peer states that could not be merged since start (their documents quarantined).",
    ),
    "quarantine_ids_rejected": (
        "crdtstore_quarantine_ids_rejected",
        "Peer deltas or states ignored since start because their document id is not addressable.",
    ),
    "quarantine_repaired": (
        "crdtstore_quarantine_repaired",
        "Documents that left quarantine since start (a peer's state merged).",
    ),
}


class ApiMetrics:
    """The metrics of one app.

    Args:
        stats: Called at scrape time for the node's numbers (``node.stats``).
        replicator: The node's :class:`crdtstore.replicator.Replicator`, or None (no replication series).
    """

    def __init__(self, stats: Callable[[], Mapping[str, Any]], *, replicator: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = _RequestCollector(_LATENCY_BUCKETS)
        self.registry.register(self.requests)
        self.commit_batch = Histogram(
            "crdtstore_commit_batch_size",
            "Write requests per group commit.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "crdtstore_commit_duration_seconds",
            "Time of one group commit including its fsync.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_NodeCollector(stats))
        if replicator is not None:
            self.registry.register(_ReplicationCollector(replicator))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one request (on the event loop)."""
        self.requests.observe(method, route, status, seconds)

    def observe_commit(self, size: int, seconds: float) -> None:
        """Record one group commit; thread-safe (the node calls it from its writer thread)."""
        self.commit_batch.observe(size)
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector(Collector):
    """Request counts and latency histograms, kept as plain numbers and exported at scrape time.

    Only the event loop touches it (requests are observed and ``/metrics``
    is rendered there), so it needs no lock.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        # (method, route, status) -> [count, sum of seconds, per-bucket counts (the last one is +Inf)]
        self._series: dict[tuple[str, str, int], list[Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series[(method, route, status)] = [0, 0.0, [0] * (len(self._bounds) + 1)]
        series[0] += 1
        series[1] += seconds
        # bisect_left: the first bound >= seconds, the bucket "le" that bound.
        series[2][bisect.bisect_left(self._bounds, seconds)] += 1

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "crdtstore_http_requests",
            "HTTP requests by route template and status.",
            labels=["method", "route", "status"],
        )
        by_route: dict[tuple[str, str], list[Any]] = {}
        for (method, route, status), (count, total, buckets) in sorted(self._series.items()):
            requests.add_metric([method, route, str(status)], count)
            merged = by_route.setdefault((method, route), [0.0, [0] * len(buckets)])
            merged[0] += total
            merged[1] = [a + b for a, b in zip(merged[1], buckets, strict=True)]
        latency = HistogramMetricFamily(
            "crdtstore_http_request_duration_seconds",
            "HTTP request latency by route template, first byte in to last byte out.",
            labels=["method", "route"],
        )
        for (method, route), (total, buckets) in by_route.items():
            cumulative, running = [], 0
            for bound, n in zip((*self._bounds, float("inf")), buckets, strict=True):
                running += n
                cumulative.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            latency.add_metric([method, route], cumulative, total)
        yield requests
        yield latency


class _NodeCollector(Collector):
    """Gauges read from ``node.stats()`` at scrape time (nothing to keep in sync)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self._stats = stats

    def describe(self) -> list[Any]:
        # Unknown until the first scrape; an empty description keeps registration cheap.
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            stats = self._stats()
        except Exception:  # a closed node must not break the scrape of the HTTP series
            return
        seen: set[str] = set()
        for key, value in _flatten(stats):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name, help_text = _named(key)
            if name in seen:
                continue
            seen.add(name)
            yield GaugeMetricFamily(name, help_text, value=float(value))


class _ReplicationCollector(Collector):
    """The replication series, read from the replicator at scrape time (on its event loop)."""

    def __init__(self, replicator: Any) -> None:
        self._rep = replicator

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        rep = self._rep
        meter = rep.meter
        peers = list(meter.peers)
        up = dict.fromkeys(peers, 0)
        outbox = dict.fromkeys(peers, 0)
        traffic = {p: Traffic() for p in peers}
        for p in peers:
            traffic[p].add(meter.traffic[p])
        for peer, is_open, queued, link_traffic in rep.link_states():
            if peer not in up:
                continue  # beyond the tracked peers
            up[peer] = max(up[peer], int(is_open))
            outbox[peer] += queued
            traffic[peer].add(link_traffic)
        yield _per_peer(
            GaugeMetricFamily, "crdtstore_peer_up", "1 while an authenticated link to the peer is open.", up
        )
        yield _per_peer(
            GaugeMetricFamily, "crdtstore_peer_outbox_messages", "Messages queued for the peer's socket.", outbox
        )
        yield _per_peer(
            GaugeMetricFamily,
            "crdtstore_peer_unacked_deltas",
            "Writes of this replica (this start) the peer has not acknowledged.",
            {p: meter.unacked(p) for p in peers},
        )
        for name, attr, what in (
            ("crdtstore_peer_received_bytes", "bytes_in", "Bytes received from the peer (websocket messages)."),
            ("crdtstore_peer_sent_bytes", "bytes_out", "Bytes sent to the peer (websocket messages)."),
            ("crdtstore_peer_received_messages", "messages_in", "Messages received from the peer."),
            ("crdtstore_peer_sent_messages", "messages_out", "Messages sent to the peer."),
        ):
            yield _per_peer(CounterMetricFamily, name, what, {p: getattr(traffic[p], attr) for p in peers})
        lag = HistogramMetricFamily(
            "crdtstore_replication_lag_seconds",
            "From this replica's commit of a write to the peer's acknowledgement that it durably holds it.",
            labels=["peer"],
        )
        for p in peers:
            histogram: PlainHistogram = meter.lag[p]
            lag.add_metric([p], _cumulative(histogram), histogram.total)
        yield lag
        stats = rep.stats
        yield CounterMetricFamily(
            "crdtstore_anti_entropy_sessions",
            "Anti-entropy sessions this replica started and finished.",
            value=stats.get("anti_entropy_sessions", 0),
        )
        yield CounterMetricFamily(
            "crdtstore_anti_entropy_repaired_documents",
            "Documents that sessions this replica started pulled from or pushed to a peer.",
            value=stats.get("anti_entropy_repaired", 0),
        )
        quorum = CounterMetricFamily(
            "crdtstore_quorum_requests",
            "Reads and writes that waited on peers, by level and outcome (timeout: answered 504).",
            labels=["operation", "level", "outcome"],
        )
        for operation in QUORUM_OPERATIONS:
            for level in Level:
                for outcome in QUORUM_OUTCOMES:
                    quorum.add_metric(
                        [operation, level.value, outcome], meter.quorum.get((operation, level.value, outcome), 0)
                    )
        yield quorum
        age = GaugeMetricFamily(
            "crdtstore_log_oldest_entry_age_seconds",
            "Age of the oldest delta log entry not yet truncated (at least; 0: the log is empty).",
        )
        oldest = meter.log_age(rep.now(), rep.truncated)
        if oldest is not None:
            age.add_metric([], oldest)
        yield age
        yield GaugeMetricFamily(
            "crdtstore_peers_untracked",
            "Peers seen beyond the tracked limit (no per-peer series).",
            value=len(meter.untracked),
        )
        for key, value in sorted(stats.items()):
            yield CounterMetricFamily(
                f"crdtstore_replication_{_metric_name(key)}", f"Replicator counter {key}.", value=value
            )


def _per_peer(kind: Any, name: str, help_text: str, values: Mapping[str, float]) -> Metric:
    family = kind(name, help_text, labels=["peer"])
    for peer, value in values.items():
        family.add_metric([peer], value)
    return family  # type: ignore[no-any-return]


def _cumulative(histogram: PlainHistogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*histogram.bounds, float("inf")), histogram.buckets, strict=True):
        running += n
        out.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
    return out


def _named(key: str) -> tuple[str, str]:
    """The metric name and help of a flattened stats key (``lmdb_map_size`` for ``stats["lmdb"]["map_size"]``)."""
    return _NAMED_GAUGES.get(key) or (f"crdtstore_node_{_metric_name(key)}", f"node.stats() entry {key}.")


def _flatten(stats: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in stats.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}_")
        else:
            yield f"{prefix}{key}", value


def _metric_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).strip("_").lower() or "value"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status (a pure ASGI middleware).

    The router records the matched route in ``scope["route"]``; reading it
    after the app returned gives the template, never the raw path.
    """

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        watched = _StatusSend(send)
        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.metrics.observe_request(scope["method"], template, watched.status, time.perf_counter() - start)


class _StatusSend:
    """``send``, noting the response status on the way.

    A plain callable that hands back ``send``'s own awaitable: an ``async
    def`` wrapper would add a coroutine per message, a measurable share of
    a small read.
    """

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500  # no response started: the server answers 500

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        return self.send(message)
