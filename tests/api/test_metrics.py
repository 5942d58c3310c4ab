"""The request series are counted by hand and exported at scrape time: they must read as prometheus-client's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crdtstore.api.metrics import _LATENCY_BUCKETS, ApiMetrics

requests = st.lists(
    st.tuples(
        st.sampled_from(["GET", "POST"]),
        st.sampled_from(["/v1/docs/{id}", "<unmatched>"]),
        st.sampled_from([200, 404]),
        # Exact bucket bounds included: "le" means less than or equal.
        st.sampled_from(_LATENCY_BUCKETS) | st.floats(0, 20, allow_nan=False),
    ),
    max_size=30,
)


def samples(text: bytes, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name.startswith(prefix) and not sample.name.endswith("_created"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@given(requests)
def test_request_series_match_prometheus_client_counting_them(observed: list[tuple[str, str, int, float]]) -> None:
    ours = ApiMetrics(stats=dict)
    registry = CollectorRegistry()
    counter = Counter("crdtstore_http_requests", "", ["method", "route", "status"], registry=registry)
    histogram = Histogram(
        "crdtstore_http_request_duration_seconds", "", ["method", "route"], buckets=_LATENCY_BUCKETS, registry=registry
    )
    for method, route, status, seconds in observed:
        ours.observe_request(method, route, status, seconds)
        counter.labels(method, route, str(status)).inc()
        histogram.labels(method, route).observe(seconds)
    got = samples(ours.render(), "crdtstore_http_")
    want = samples(generate_latest(registry), "crdtstore_http_")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
