"""The rendered overlays hold what issue #14 asks for, and run the real ``crdtstore serve`` with real settings.

A setting the node does not know is ignored silently (``CRDTSTORE_*``
variables are read by name), so these tests parse every manifest setting
with the node's own parser and check every name against it.
"""

from __future__ import annotations

import tomllib
from pathlib import PurePosixPath
from typing import Any

import pytest

from crdtstore.cli import build_parser
from crdtstore.config import SETTINGS, resolve
from crdtstore.membership import parse_peer_name
from tests.k8s.manifests import (
    K8S,
    OVERLAYS,
    REPO,
    Rendered,
    container_env,
    headless_name,
    hostname_matches,
    selector_matches,
)

# Variables the node reads that are not SETTINGS (see crdtstore/config.py and crdtstore/api/auth.py).
EXTRA_ENV = frozenset({"CRDTSTORE_CONFIG", "CRDTSTORE_TOKENS", "CRDTSTORE_CLUSTER_SECRET"})
# What cert-manager writes into a Certificate's Secret.
CERT_MANAGER_KEYS = frozenset({"tls.crt", "tls.key", "ca.crt"})


def unknown_settings(env: dict[str, str]) -> list[str]:
    """``CRDTSTORE_*`` names in ``env`` that ``crdtstore serve`` does not read (a typo is ignored silently)."""
    known = {s.env for s in SETTINGS} | EXTRA_ENV
    return sorted(name for name in env if name.startswith("CRDTSTORE_") and name not in known)


def mount_of(rendered: Rendered, path: str) -> dict[str, Any]:
    """The volume mount that holds ``path`` (the deepest one)."""
    mounts = [
        m
        for m in rendered.container["volumeMounts"]
        if PurePosixPath(path) == PurePosixPath(m["mountPath"])
        or PurePosixPath(m["mountPath"]) in PurePosixPath(path).parents
    ]
    assert mounts, f"{path} is on no volume (the root filesystem is read-only)"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def volume(rendered: Rendered, name: str) -> dict[str, Any]:
    (found,) = [v for v in rendered.statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return dict(found)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object_of_a_region(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    kinds = sorted(doc["kind"] for doc in result.docs)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "ConfigMap",
            "Service",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "NetworkPolicy",
            "Certificate",
            "ServiceMonitor",
        ]
    )
    assert result.namespace == f"crdtstore-{overlay}"
    for doc in result.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == result.namespace, doc["metadata"]["name"]


def test_regions_differ_only_in_region_peers_and_names(rendered: dict[str, Rendered]) -> None:
    envs = {overlay: container_env(r) for overlay, r in rendered.items()}
    assert {overlay: env["CRDTSTORE_REGION"] for overlay, env in envs.items()} == {o: o for o in OVERLAYS}
    shared = [
        {k: v for k, v in env.items() if k not in ("CRDTSTORE_REGION", "CRDTSTORE_PEER_DNS")} for env in envs.values()
    ]
    assert all(env == shared[0] for env in shared)
    # Every region resolves the same names (its own first): only the order differs.
    names = [sorted(env["CRDTSTORE_PEER_DNS"].split(",")) for env in envs.values()]
    assert all(n == names[0] for n in names)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_statefulset_runs_the_real_serve_command(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    container = result.container
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert container["command"][0] in scripts  # the console script the package installs
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.command == "serve"
    # Every flag left at None: the settings come from the environment alone.
    assert all(getattr(args, s.name) is None for s in SETTINGS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_settings_the_node_reads(rendered: dict[str, Rendered], overlay: str) -> None:
    assert unknown_settings(container_env(rendered[overlay])) == []


def test_a_misspelt_setting_is_caught() -> None:
    assert unknown_settings({"CRDTSTORE_PEER_PROT": "9443", "CRDTSTORE_PORT": "8080", "HOME": "/"}) == [
        "CRDTSTORE_PEER_PROT"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_parse_and_agree_with_the_pod_spec(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    config = resolve({}, env=container_env(result))
    assert config.region == overlay
    assert config.host == "0.0.0.0"  # reachable from outside the pod
    assert config.port == result.container_port("api")
    assert config.peer_port == result.container_port("peer")
    # Data on the LMDB volume of the pod's own claim, writable.
    data = mount_of(result, str(config.data))
    assert data["name"] in [t["metadata"]["name"] for t in result.statefulset["spec"]["volumeClaimTemplates"]]
    assert not data.get("readOnly", False)
    # Mutual TLS between regions, with the files cert-manager writes into the Certificate's Secret.
    assert config.peer_ca is not None and config.certfile is not None and config.keyfile is not None
    secret_name = result.one("Certificate")["spec"]["secretName"]
    for path in (config.certfile, config.keyfile, config.peer_ca):
        mount = mount_of(result, str(path))
        assert mount.get("readOnly") is True
        assert volume(result, mount["name"])["secret"]["secretName"] == secret_name
        assert str(PurePosixPath(str(path)).relative_to(mount["mountPath"])) in CERT_MANAGER_KEYS
    # Tokens and the cluster secret from Secrets mounted as files (not variables), whose keys the README names.
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for path in (config.tokens, config.cluster_secret_file):
        assert path is not None
        mount = mount_of(result, str(path))
        assert mount.get("readOnly") is True
        secret = volume(result, mount["name"])["secret"]["secretName"]
        key = PurePosixPath(str(path)).relative_to(mount["mountPath"])
        assert f"kubectl create secret generic {secret}" in readme and f"--from-file={key}=" in readme
    assert config.max_map_size < _bytes(result.statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"])


def _bytes(resources: dict[str, Any]) -> int:
    quantity = resources["requests"]["storage"]
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_peers_are_every_regions_headless_service_by_a_name_its_certificate_holds(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    config = resolve({}, env=container_env(rendered[overlay]))
    assert config.peers == ()  # no fixed URL: every peer is found by name
    reached = []
    for item in config.peer_dns:
        peer = parse_peer_name(item, default_port=config.peer_port or config.port)
        (target,) = [r for r in rendered.values() if headless_name(r) == peer.name]
        reached.append(target.overlay)
        assert peer.port == target.container_port("peer")
        headless = target.one("Service", target.statefulset["spec"]["serviceName"])
        # One record per pod, a pod that is not ready included: it must catch up before it is.
        assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
        assert [p["port"] for p in headless["spec"]["ports"]] == [peer.port]
        # The replicas are dialed by address with this name as the TLS name: the certificate must hold it.
        names = target.one("Certificate")["spec"]["dnsNames"]
        assert any(hostname_matches(name, peer.name) for name in names), (peer, names)
    assert reached[0] == overlay and sorted(reached) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_region_size_setting_is_the_statefulsets_replicas(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    config = resolve({}, env=container_env(result))
    spec = result.statefulset["spec"]
    assert spec["replicas"] == config.region_replicas == 3
    assert spec["podManagementPolicy"] == "Parallel"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_replica_is_named_by_its_pods_ordinal(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    (item,) = [e for e in result.container["env"] if e["name"] == "CRDTSTORE_REPLICA_NAME"]
    # The label the StatefulSet controller puts on each pod (Kubernetes 1.28 and later).
    assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    names = [resolve({}, env=container_env(result, pod_name=f"crdtstore-{i}")).replica_name for i in range(3)]
    assert names == ["0", "1", "2"]


def test_certificate_name_matching_follows_rfc_6125() -> None:
    assert hostname_matches(
        "*.crdtstore-peer.crdtstore-eu.svc.cluster.local", "crdtstore-1.crdtstore-peer.crdtstore-eu.svc.cluster.local"
    )
    # A wildcard covers one label only, and never another namespace.
    assert not hostname_matches(
        "*.crdtstore-peer.crdtstore-eu.svc.cluster.local", "a.b.crdtstore-peer.crdtstore-eu.svc.cluster.local"
    )
    assert not hostname_matches(
        "*.crdtstore-peer.crdtstore-eu.svc.cluster.local", "crdtstore-0.crdtstore-peer.crdtstore-us.svc.cluster.local"
    )
    assert not hostname_matches(
        "*.crdtstore-peer.crdtstore-eu.svc.cluster.local", "crdtstore-peer.crdtstore-eu.svc.cluster.local"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_certificate_covers_the_client_service_and_both_tls_roles(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    spec = result.one("Certificate")["spec"]
    service = result.one("Service", "crdtstore")["metadata"]["name"]
    assert {f"{service}.{result.namespace}.svc", f"{service}.{result.namespace}.svc.cluster.local"} <= set(
        spec["dnsNames"]
    )
    # The node's certificate is the server's on its listeners and the client's when it dials a peer.
    assert {"server auth", "client auth"} <= set(spec["usages"])
    # The ServiceMonitor checks the name it scrapes pod IPs under.
    server_name = result.one("ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"]["serverName"]
    assert server_name in spec["dnsNames"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_budget_select_the_pods(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    sts = result.statefulset["spec"]
    labels = sts["template"]["metadata"]["labels"]
    assert selector_matches(sts["selector"], labels)
    headless = result.one("Service", sts["serviceName"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    client = result.one("Service", "crdtstore")["spec"]
    assert client.get("clusterIP") != "None" and not client.get("publishNotReadyAddresses", False)
    assert [p["targetPort"] for p in client["ports"]] == ["api"]
    for service in (headless, client):
        assert selector_matches({"matchLabels": service["selector"]}, labels)
    assert selector_matches(result.one("PodDisruptionBudget")["spec"]["selector"], labels)
    monitor = result.one("ServiceMonitor")["spec"]
    assert selector_matches(monitor["selector"], result.one("Service", "crdtstore")["metadata"]["labels"])
    assert not selector_matches(monitor["selector"], result.one("Service", sts["serviceName"])["metadata"]["labels"])
    assert [e["port"] for e in monitor["endpoints"]] == ["api"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_statefulset_shape(rendered: dict[str, Rendered], overlay: str) -> None:
    sts = rendered[overlay].statefulset["spec"]
    assert sts["podManagementPolicy"] == "Parallel"
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    pod = sts["template"]["spec"]
    zones = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
    assert zones and all(selector_matches(c["labelSelector"], sts["template"]["metadata"]["labels"]) for c in zones)
    assert pod["automountServiceAccountToken"] is False


def service_link_variables(service: dict[str, Any]) -> set[str]:
    """The variables the kubelet sets in every pod of the namespace for ``service`` (Docker-link style)."""
    if service["spec"].get("clusterIP") == "None":
        return set()  # the kubelet makes none for a headless Service
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    names = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    for port in service["spec"]["ports"]:
        link = f"{prefix}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
        names |= {link, f"{link}_PROTO", f"{link}_PORT", f"{link}_ADDR"}
        if "name" in port:
            names.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_service_link_variable_can_pose_as_a_setting(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    settings = {s.env for s in SETTINGS} | EXTRA_ENV
    posing = {v for service in result.all("Service") for v in service_link_variables(service)} & settings
    # The client Service "crdtstore" gives CRDTSTORE_PORT=tcp://<ip>:8080: service links must be off.
    assert posing == {"CRDTSTORE_PORT"}
    assert result.statefulset["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_graceful_shutdown(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    container = result.container
    config = resolve({}, env=container_env(result))
    scheme = "HTTPS" if config.certfile is not None else "HTTP"
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    # The API port: the peer port asks for a client certificate, which the kubelet has not.
    assert all(probe["port"] == "api" and probe["scheme"] == scheme for probe in probes.values())
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = result.statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + 30  # the preStop pause is counted in the grace period


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_unprivileged_as_the_image_user(rendered: dict[str, Rendered], overlay: str) -> None:
    result = rendered[overlay]
    pod = result.statefulset["spec"]["template"]["spec"]
    sc = result.container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} == pod["securityContext"]["seccompProfile"]
    user = [line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert user == [f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    assert pod["securityContext"]["fsGroup"] == sc["runAsGroup"]  # so the secret files (mode 0440) are readable
    assert result.one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(result.container["resources"][kind])
