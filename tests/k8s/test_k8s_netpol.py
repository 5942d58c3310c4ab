"""The rendered NetworkPolicies let in and out exactly what issue #14 says, evaluated as Kubernetes does.

A small evaluator of the NetworkPolicy semantics (policies add up; a pod
selected by a policy of a direction is isolated in that direction; a rule
admits a peer matching one of its ``from``/``to`` entries on one of its
ports, a named port being the target container's) runs over the three
overlays' policies together, as if the regions shared one cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.k8s.manifests import Rendered, selector_matches


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    ports: Mapping[str, int] = field(default_factory=dict)  # container port name -> number
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def ns_labels(self) -> dict[str, str]:
        # The API server sets this label on every namespace.
        return {**self.namespace_labels, "kubernetes.io/metadata.name": self.namespace}


def _peer_matches(entry: Mapping[str, Any], policy_ns: str, other: Pod) -> bool:
    if "ipBlock" in entry:
        return False  # pods of the cluster are matched by labels in these tests
    ns_sel, pod_sel = entry.get("namespaceSelector"), entry.get("podSelector")
    if ns_sel is not None and not selector_matches(ns_sel, other.ns_labels):
        return False
    if ns_sel is None and other.namespace != policy_ns:
        return False  # a podSelector alone means the policy's own namespace
    return pod_sel is None or selector_matches(pod_sel, other.labels)


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str, target: Pod) -> bool:
    if not rule_ports:
        return True
    for item in rule_ports:
        number = item.get("port")
        if isinstance(number, str):
            number = target.ports.get(number)
        if item.get("protocol", "TCP") == protocol and (number is None or number == port):
            return True
    return False


def allowed(policies: list[dict[str, Any]], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether ``src`` may open a connection to ``dst`` on ``port``: egress from src and ingress to dst."""

    def direction(kind: str, owner: Pod, other: Pod, key: str) -> bool:
        selecting = [
            p
            for p in policies
            if p["metadata"]["namespace"] == owner.namespace
            and kind in p["spec"].get("policyTypes", ["Ingress"])
            and selector_matches(p["spec"]["podSelector"], owner.labels)
        ]
        if not selecting:
            return True  # not isolated in this direction
        for policy in selecting:
            for rule in policy["spec"].get(kind.lower(), []) or []:
                peers = rule.get(key)
                if _port_matches(rule.get("ports"), port, protocol, dst) and (
                    not peers or any(_peer_matches(e, owner.namespace, other) for e in peers)
                ):
                    return True
        return False

    return direction("Egress", src, dst, "to") and direction("Ingress", dst, src, "from")


@pytest.fixture(scope="module")
def policies(rendered: dict[str, Rendered]) -> list[dict[str, Any]]:
    return [p for r in rendered.values() for p in r.all("NetworkPolicy")]


def node(rendered: dict[str, Rendered], overlay: str) -> Pod:
    result = rendered[overlay]
    labels = result.statefulset["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in result.container["ports"]}
    return Pod(result.namespace, labels, ports)


CLIENT = Pod("shop", {"app": "shop", "crdtstore.io/client": "true"})
STRANGER = Pod("shop", {"app": "other"})
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"})


def test_clients_reach_the_api_port_and_not_the_peer_port(rendered: dict[str, Rendered], policies: list[Any]) -> None:
    us = node(rendered, "us")
    assert allowed(policies, CLIENT, us, us.ports["api"])
    assert not allowed(policies, CLIENT, us, us.ports["peer"])


def test_unlabelled_pods_reach_nothing(rendered: dict[str, Rendered], policies: list[Any]) -> None:
    us = node(rendered, "us")
    neighbour = Pod(us.namespace, {"app": "debug"})  # even in the region's own namespace
    for src in (STRANGER, neighbour):
        assert not allowed(policies, src, us, us.ports["api"])
        assert not allowed(policies, src, us, us.ports["peer"])


def test_nodes_of_other_regions_reach_the_peer_port(rendered: dict[str, Rendered], policies: list[Any]) -> None:
    for a in rendered:
        for b in rendered:
            if a != b:
                src, dst = node(rendered, a), node(rendered, b)
                assert allowed(policies, src, dst, dst.ports["peer"]), (a, b)
                # A node is not an API client of another region.
                assert not allowed(policies, src, dst, dst.ports["api"]), (a, b)


def test_node_labels_outside_the_region_namespaces_get_nowhere(
    rendered: dict[str, Rendered], policies: list[Any]
) -> None:
    us = node(rendered, "us")
    impostor = Pod("shop", dict(us.labels))
    assert not allowed(policies, impostor, us, us.ports["peer"])


def test_nodes_resolve_names_and_dial_only_peers(rendered: dict[str, Rendered], policies: list[Any]) -> None:
    us, eu = node(rendered, "us"), node(rendered, "eu")
    assert allowed(policies, us, KUBE_DNS, 53, "UDP")
    assert allowed(policies, us, KUBE_DNS, 53, "TCP")
    assert not allowed(policies, us, CLIENT, 443)
    assert not allowed(policies, us, Pod(eu.namespace, {"app": "debug"}, {"peer": 9443}), 9443)
    # DNS is kube-dns's alone: port 53 of any other pod is not.
    assert not allowed(policies, us, Pod("kube-system", {"k8s-app": "other"}), 53, "UDP")


def test_prometheus_scrapes_the_api_port_only(rendered: dict[str, Rendered], policies: list[Any]) -> None:
    us = node(rendered, "us")
    assert allowed(policies, PROMETHEUS, us, us.ports["api"])
    assert not allowed(policies, PROMETHEUS, us, us.ports["peer"])
    assert not allowed(policies, Pod("shop", dict(PROMETHEUS.labels)), us, us.ports["api"])


def test_evaluator_isolates_only_selected_pods() -> None:
    """The evaluator itself: a pod no policy selects is open; a selected one only to what a rule admits."""
    policy = {
        "metadata": {"namespace": "a"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": "sql"}], "from": [{"podSelector": {"matchLabels": {"role": "app"}}}]}],
        },
    }
    db = Pod("a", {"role": "db"}, {"sql": 5432})
    app_here, app_there = Pod("a", {"role": "app"}), Pod("b", {"role": "app"})
    assert allowed([policy], app_here, db, 5432)
    assert not allowed([policy], app_here, db, 22)
    assert not allowed([policy], app_there, db, 5432)  # podSelector alone: the policy's namespace
    assert allowed([policy], app_there, Pod("a", {"role": "web"}), 80)
