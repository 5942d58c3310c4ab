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


# Replication series, driven by real linked regions (tests/api/linked.py).

import asyncio  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from sync.config import SyncConfig  # noqa: E402
from sync.exceptions import CloseCode  # noqa: E402
from sync.memstore import MemStore  # noqa: E402
from tests.api.helpers import ADMIN_TOKEN  # noqa: E402
from tests.api.linked import Linked, linked_regions, scrape, wait_for  # noqa: E402

DASHBOARD = Path(__file__).parents[2] / "k8s" / "components" / "monitoring" / "dashboard.json"


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=90))


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def linked_up(linked: Linked, *names: str) -> None:
    """Every region of ``names`` reports every other one up."""

    async def up() -> bool:
        for name in names:
            metrics = await scrape(linked, name)
            if any(value(metrics, "crdtstore_peer_up", peer=linked.peer_id(o)) != 1 for o in names if o != name):
                return False
        return True

    assert await wait_for(up), "the regions did not link"


def lag_count(metrics: dict[Any, float], peer: str) -> float:
    return value(metrics, "crdtstore_replication_lag_seconds_count", peer=peer)


def test_the_lag_histogram_counts_each_write_once_per_peer_and_traffic_grows(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu", "ap")) as linked:
            await linked_up(linked, "us", "eu", "ap")
            eu, ap, us = linked.peer_id("eu"), linked.peer_id("ap"), linked.peer_id("us")
            before = await scrape(linked, "us")
            for i in range(5):
                assert await linked.write("us", f"lag-{i}") == 200

            async def acked(n: int) -> bool:
                m = await scrape(linked, "us")
                return lag_count(m, eu) == n and lag_count(m, ap) == n

            assert await wait_for(lambda: acked(5))
            after = await scrape(linked, "us")
            for peer in (eu, ap):
                assert value(after, "crdtstore_peer_unacked_deltas", peer=peer) == 0
                assert value(after, "crdtstore_replication_lag_seconds_sum", peer=peer) > 0
                assert value(after, "crdtstore_replication_lag_seconds_bucket", peer=peer, le="+Inf") == 5
                for name in ("crdtstore_peer_sent_bytes_total", "crdtstore_peer_sent_messages_total"):
                    assert value(after, name, peer=peer) > value(before, name, peer=peer)
            # eu received what us sent it: its counters of us move too; it wrote nothing, so it observed no lag.
            at_eu = await scrape(linked, "eu")
            assert value(at_eu, "crdtstore_peer_received_bytes_total", peer=us) > 0
            assert value(at_eu, "crdtstore_peer_received_messages_total", peer=us) > 0
            assert lag_count(at_eu, us) == 0
            for i in range(3):
                assert await linked.write("us", f"lag-more-{i}") == 200
            assert await wait_for(lambda: acked(8))

    run(scenario())


def test_link_up_drops_to_zero_when_the_peer_stops_and_its_unacked_writes_add_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as linked:
            await linked_up(linked, "us", "eu")
            eu = linked.peer_id("eu")
            await linked.stop("eu")

            async def down() -> bool:
                return value(await scrape(linked, "us"), "crdtstore_peer_up", peer=eu) == 0

            assert await wait_for(down)
            for i in range(4):
                assert await linked.write("us", f"while-down-{i}") == 200

            # The meter counts a commit once the replicator's tailer has read it from the log,
            # a moment after the write's answer; so the count is waited for, and must come to 4.
            async def four_unacked() -> bool:
                return value(await scrape(linked, "us"), "crdtstore_peer_unacked_deltas", peer=eu) == 4

            assert await wait_for(four_unacked)
            metrics = await scrape(linked, "us")
            assert value(metrics, "crdtstore_peer_unacked_deltas", peer=eu) == 4  # and stays there
            assert lag_count(metrics, eu) == 0  # no ack, no lag observed (yet)

    run(scenario())


def test_quorum_outcomes_are_counted_by_level_and_a_504_as_a_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as linked:
            await linked_up(linked, "us", "eu")
            assert await linked.write("us", "q", level="all") == 200
            assert (await linked.call("us", "GET", "/v1/docs/q?r=quorum")).status_code == 200
            await linked.stop("eu")
            eu_gone = await wait_for(lambda: linked.replicator("us").peers() == [])
            assert eu_gone
            assert await linked.write("us", "q", level="all", timeout=0.3) == 504
            assert await linked.write("us", "q", level="quorum", timeout=0.3) == 504
            assert (await linked.call("us", "GET", "/v1/docs/q?r=all&timeout=0.3")).status_code == 504
            m = await scrape(linked, "us")
            counted = {
                (labels["operation"], labels["level"], labels["outcome"]): v
                for (name, pairs), v in m.items()
                if name == "crdtstore_quorum_requests_total" and v
                for labels in [dict(pairs)]
            }
            assert counted == {
                ("write", "all", "ok"): 1,
                ("read", "quorum", "ok"): 1,
                ("write", "all", "timeout"): 1,
                ("write", "quorum", "timeout"): 1,
                ("read", "all", "timeout"): 1,
            }
            # Every level's series exists from the start (rate() needs them), zero or not.
            zero = ("crdtstore_quorum_requests_total", (("level", "one"), ("operation", "read"), ("outcome", "ok")))
            assert m[zero] == 0

    run(scenario())


def test_anti_entropy_counts_its_sessions_and_each_repaired_document_once(tmp_path: Path) -> None:
    quick = SyncConfig(anti_entropy_interval=0.3, anti_entropy_settle=0.0)

    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu"), sync_config=quick) as linked:
            await linked_up(linked, "us", "eu")
            # A document only us holds and no delta carries (a state merged from a replica outside the
            # cluster, as a restored backup brings): only anti-entropy can bring it to eu.
            outsider = MemStore("zz-outsider", region="zz", nonce="1")
            outsider.apply("repair-me", [{"op": "increment", "path": ["n"]}])
            state = outsider.read_state("repair-me")
            assert state is not None
            assert await linked.regions["us"].node.merge_states([("repair-me", state)]) == [True]

            async def repaired() -> bool:
                return (await linked.call("eu", "GET", "/v1/docs/repair-me")).status_code == 200

            assert await wait_for(repaired)
            totals = [await scrape(linked, name) for name in ("us", "eu")]
            assert sum(value(m, "crdtstore_anti_entropy_repaired_documents_total") for m in totals) == 1
            assert sum(value(m, "crdtstore_anti_entropy_sessions_total") for m in totals) >= 1

    run(scenario())


def test_the_oldest_log_entry_ages_while_a_peer_is_cut_and_resets_once_truncated(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu"), truncate_interval=0.1) as linked:
            await linked_up(linked, "us", "eu")
            assert await linked.write("us", "age") == 200

            async def age() -> float:
                return value(await scrape(linked, "us"), "crdtstore_log_oldest_entry_age_seconds")

            async def truncated() -> bool:
                return await age() == 0

            assert await wait_for(truncated)
            cut = await linked.call("us", "POST", "/v1/admin/links/cut", token=ADMIN_TOKEN, json={"region": "eu"})
            assert cut.status_code == 200, cut.text
            assert await linked.write("us", "age") == 200

            async def aged() -> bool:
                return await age() >= 0.5

            assert await wait_for(aged)  # eu cannot ack, so nothing is truncated: the entry ages
            heal = await linked.call("us", "POST", "/v1/admin/links/heal", token=ADMIN_TOKEN, json={})
            assert heal.status_code == 200
            assert await wait_for(truncated)

    run(scenario())


def test_labels_name_peers_never_documents_and_strangers_add_no_series(tmp_path: Path) -> None:
    from tests.sync_io.regions import Member

    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as linked:
            await linked_up(linked, "us", "eu")
            for i in range(3):
                assert await linked.write("us", f"secret-doc-{i}") == 200
            # A stranger (another cluster secret) dials us and fails its handshake.
            stranger = Member("intruder", secret=b"not the cluster secret at all!!")
            await stranger.connect(linked.url("us").replace("http", "ws") + "/v1/peer")
            await stranger.flush()
            assert stranger.conn is not None
            await asyncio.wait_for(stranger.conn.recv(), 5)  # the node's Hello
            await stranger.send_raw(await asyncio.wait_for(stranger.conn.recv(), 5))  # its own Auth, reflected
            assert await stranger.recv_until_closed() == CloseCode.AUTH_FAILED
            m = await scrape(linked, "us")
            labels = {v for (_, pairs), _v in m.items() for _, v in pairs}
            assert not any("secret-doc" in label for label in labels)
            peers = {dict(pairs)["peer"] for (name, pairs), _ in m.items() if "peer" in dict(pairs)}
            assert peers == {linked.peer_id("eu")}

    run(scenario())


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Metric families the dashboard's queries name (``_total``, ``_bucket``, ``_sum``, ``_count`` dropped)."""
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in re.findall(r"\bcrdtstore_[a-z0-9_]+", target["expr"]):
                names.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    for variable in dashboard.get("templating", {}).get("list", []):
        for name in re.findall(r"\bcrdtstore_[a-z0-9_]+", str(variable.get("definition", ""))):
            names.add(name)
    return names


def test_the_dashboard_queries_only_metrics_a_linked_node_exports(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async def scenario() -> None:
        async with linked_regions(tmp_path, ("us", "eu")) as linked:
            await linked_up(linked, "us", "eu")
            assert await linked.write("us", "d") == 200
            text = (await linked.call("us", "GET", "/metrics")).text
            exported = {family.name for family in text_string_to_metric_families(text)}
            dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
            assert dashboard_metrics(dashboard) - exported == set()
            # The check itself catches a misspelt name.
            typo = {"panels": [{"targets": [{"expr": "sum(crdtstore_peer_upp)"}]}]}
            assert dashboard_metrics(typo) - exported == {"crdtstore_peer_upp"}

    run(scenario())
