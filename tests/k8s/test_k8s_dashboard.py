"""The Grafana dashboard is laid out as Grafana expects.

Its metric names are checked against a live node in test_k8s_pod.py.
"""

from __future__ import annotations

import json
from typing import Any

from tests.k8s.manifests import K8S

DASHBOARD = K8S / "components" / "monitoring" / "dashboard.json"


def overlaps(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of panels whose grid rectangles intersect (Grafana would push one of them down)."""
    found = []
    for i, a in enumerate(panels):
        for b in panels[i + 1 :]:
            ga, gb = a["gridPos"], b["gridPos"]
            if (
                ga["x"] < gb["x"] + gb["w"]
                and gb["x"] < ga["x"] + ga["w"]
                and ga["y"] < gb["y"] + gb["h"]
                and gb["y"] < ga["y"] + ga["h"]
            ):
                found.append((a["title"], b["title"]))
    return found


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    assert overlaps(panels) == []
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and "datasource" in variables
        assert panel["targets"] and len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            # Every query is scoped to the chosen regions and pods.
            assert "$namespace" in target["expr"] and "$pod" in target["expr"], target["expr"]


def test_overlap_check_sees_a_collision() -> None:
    a = {"title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}}
    b = {"title": "b", "gridPos": {"x": 6, "y": 4, "w": 12, "h": 8}}
    c = {"title": "c", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 8}}
    assert overlaps([a, b, c]) == [("a", "b"), ("b", "c")]
