"""Every overlay's pod, run as a local process: the real command, settings and files; only addresses change.

What a kubelet would start, on 127.0.0.1 instead of a cluster:

* the container's ``command`` and ``args``, the console script installed in
  this environment, with its environment built from the rendered ConfigMap;
* each volume a directory, paths in the settings moved under it; the
  Secrets' files written here: a tokens file, the cluster secret, and per
  region a certificate signed by one CA, with the rendered Certificate's
  dnsNames and usages plus ``IP:127.0.0.1``;
* listeners on port 0 (``--host``/``--port``/``--peer-port`` appended, as
  flags beat the environment);
* the cluster's DNS replaced by a hosts file (``CRDTSTORE_PEER_HOSTS_FILE``)
  and loopback relays (:mod:`sync.io.wanproxy`): each peer name of the
  manifests resolves to the relay from its region to the region whose
  headless Service that name is.

Then the probes must answer as the pod spec asks, the peer port must refuse
a client without a certificate, a write must reach every region over mutual
TLS, and SIGTERM must end each node cleanly within its grace period.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync.io.wanproxy import WanController
from tests.k8s.manifests import K8S, OVERLAYS, Rendered, container_env, headless_name

pytestmark = pytest.mark.slow

RW = "k8s-pod-rw-token-0123456789abcdef"
READ = "k8s-pod-read-token-0123456789abcdef"
SECRET = "k8s-pod-cluster-secret-0123456789abcdef"
START_BUDGET = 60.0  # seconds a node may take to become ready here (the startup probe allows more)

# The PKI: one CA for every region, as the ClusterIssuer of k8s/examples/cert-manager.


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "ca.crt", directory / "ca.key"
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", "/CN=crdtstore-ca"),
        cwd=directory,
    )
    return cert, key


def issue(directory: Path, spec: dict[str, Any], ca: tuple[Path, Path], serial: int) -> tuple[str, str]:
    """What cert-manager would issue for the Certificate ``spec`` (plus 127.0.0.1); returns (tls.crt, tls.key)."""
    eku = {"server auth": "serverAuth", "client auth": "clientAuth"}
    sans = [f"DNS:{name}" for name in spec["dnsNames"]] + ["IP:127.0.0.1"]
    ext = directory / "leaf.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={','.join(eku[u] for u in spec['usages'] if u in eku)}\n"
        f"subjectAltName={','.join(sans)}\n",
        encoding="utf-8",
    )
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={spec['commonName']}"),
        cwd=directory,
    )
    _openssl(
        *("x509", "-req", "-in", "leaf.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-set_serial", str(serial)),
        *("-days", "2", "-extfile", ext.name, "-out", "leaf.crt"),
        cwd=directory,
    )
    return (directory / "leaf.crt").read_text(), (directory / "leaf.key").read_text()


# Loopback relays standing in for the cluster's DNS and network.


class Relays:
    """A :class:`WanController` on an event loop of its own thread (the test's code is synchronous)."""

    def __init__(self, regions: tuple[str, ...]) -> None:
        self.wan = WanController(regions)
        self.wan.bind()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="relays", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.wan.start(), self.loop).result(timeout=30)

    def set_target(self, region: str, port: int) -> None:
        self.loop.call_soon_threadsafe(self.wan.set_target, region, "127.0.0.1", port)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.wan.close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@dataclass
class Pod:
    """One overlay's pod as a child process."""

    overlay: str
    rendered: Rendered
    proc: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int]  # container port name -> the local port serving it

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def probe(self, kind: str) -> int:
        """The HTTP status the kubelet's ``kind`` probe would get (it does not verify the certificate)."""
        get = self.rendered.container[kind]["httpGet"]
        url = f"{get['scheme'].lower()}://127.0.0.1:{self.ports[get['port']]}{get['path']}"
        try:
            return httpx.get(url, verify=False, timeout=5.0).status_code
        except httpx.HTTPError:
            return 0


def _local(path: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + path[len(mount_path) :]
    raise AssertionError(f"{path} is on no volume of the pod")


def _write_secrets(result: Rendered, volumes: dict[str, Path], files: dict[str, dict[str, str]]) -> None:
    for vol in result.statefulset["spec"]["template"]["spec"]["volumes"]:
        if "secret" in vol:
            contents = files[vol["secret"]["secretName"]]  # a Secret the test does not know is an error
            for key, text in contents.items():
                (volumes[vol["name"]] / key).write_text(text, encoding="utf-8")


def start_pod(
    root: Path, rendered: dict[str, Rendered], overlay: str, relays: Relays, secrets: dict[str, dict[str, str]]
) -> Pod:
    result = rendered[overlay]
    base = root / overlay
    container = result.container
    volumes = {m["name"]: base / "volumes" / m["name"] for m in container["volumeMounts"]}
    for directory in volumes.values():
        directory.mkdir(parents=True)
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    _write_secrets(result, volumes, secrets)
    env = container_env(result)
    for name, value in env.items():
        if value.startswith("/"):
            env[name] = _local(value, mounts)
    # Each peer name is a region's headless Service; here it resolves (a hosts file) to the relay from
    # this region to that one. The pod's own region has no other pod in this test: no record.
    hosts = []
    for item in env["CRDTSTORE_PEER_DNS"].split(","):
        name = item.rpartition(":")[0]
        (target,) = [o for o in OVERLAYS if name == headless_name(rendered[o])]
        if target != overlay:
            hosts.append(f"{name} 127.0.0.1:{urlsplit(relays.wan.url(overlay, target)).port}\n")
    (base / "hosts").write_text("".join(hosts), encoding="utf-8")
    env["CRDTSTORE_PEER_HOSTS_FILE"] = str(base / "hosts")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTORE_")} | env
    script = Path(sys.executable).parent / container["command"][0]
    cmd = [str(script), *container["command"][1:], *container["args"]]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--peer-port", "0"]
    workdir = base / "workdir"
    workdir.mkdir()
    log_path = base / "pod.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=child_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    pod = Pod(overlay, result, proc, log_path, {})
    deadline = time.monotonic() + START_BUDGET
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{overlay} exited with {proc.returncode}:\n{log_path.read_text()}"
        listening = [int(r["port"]) for r in pod.log_records() if r.get("msg") == "listening"]
        if len(listening) == 2:
            # The API listener is bound first, then the one for peer links (crdtstore.server.server_configs).
            pod.ports = {"api": listening[0], "peer": listening[1]}
            relays.set_target(overlay, pod.ports["peer"])
            return pod
        time.sleep(0.05)
    raise AssertionError(f"{overlay} never listened:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def cluster(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if subprocess.run(["which", "openssl"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs the openssl command to make certificates")
    root = tmp_path_factory.mktemp("pods")
    pki = root / "pki"
    pki.mkdir()
    ca = make_ca(pki)
    relays = Relays(OVERLAYS)
    pods: list[Pod] = []
    try:
        for serial, overlay in enumerate(OVERLAYS, start=1):
            result = rendered[overlay]
            spec = result.one("Certificate")["spec"]
            leaf_dir = pki / overlay
            leaf_dir.mkdir()
            crt, key = issue(leaf_dir, spec, ca, serial)
            secrets = {
                "crdtstore-tokens": {"tokens": f"{RW} readwrite\n{READ} read\n"},
                "crdtstore-cluster-secret": {"secret": SECRET + "\n"},
                spec["secretName"]: {"tls.crt": crt, "tls.key": key, "ca.crt": ca[0].read_text()},
            }
            pods.append(start_pod(root, rendered, overlay, relays, secrets))
        yield {"pods": {p.overlay: p for p in pods}, "ca": ca[0], "pki": pki}
    finally:
        for pod in pods:
            if pod.proc.poll() is None:
                os.kill(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait(timeout=30)
        relays.close()


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_probes_answer_as_the_pod_spec_asks(cluster: dict[str, Any]) -> None:
    for pod in cluster["pods"].values():
        _wait_for(lambda pod=pod: pod.probe("startupProbe") == 200, START_BUDGET, f"{pod.overlay} startup probe")
        assert pod.probe("readinessProbe") == 200
        assert pod.probe("livenessProbe") == 200


def _client_context(ca: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    # TLS 1.2: the server checks the client certificate in the handshake itself, so a refusal shows there.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def _tls_get(port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return tls.recv(64)


def test_peer_port_takes_only_clients_with_a_cluster_certificate(cluster: dict[str, Any]) -> None:
    pod = cluster["pods"]["us"]
    member = (cluster["pki"] / "eu" / "leaf.crt", cluster["pki"] / "eu" / "leaf.key")
    assert _tls_get(pod.ports["peer"], _client_context(cluster["ca"], member)).startswith(b"HTTP/1.1 200")
    with pytest.raises(ssl.SSLError):
        _tls_get(pod.ports["peer"], _client_context(cluster["ca"], None))
    # The API port asks for none (clients and probes have none), and verifies as the CA's.
    assert _tls_get(pod.ports["api"], _client_context(cluster["ca"], None)).startswith(b"HTTP/1.1 200")


def test_a_write_in_one_region_reaches_every_other_over_mutual_tls(cluster: dict[str, Any]) -> None:
    pods: dict[str, Pod] = cluster["pods"]
    verify = ssl.create_default_context(cafile=str(cluster["ca"]))
    headers = {"Authorization": f"Bearer {RW}"}
    with httpx.Client(verify=verify, headers=headers, timeout=10.0) as client:
        for pod in pods.values():
            _wait_for(lambda pod=pod: pod.probe("readinessProbe") == 200, START_BUDGET, f"{pod.overlay} ready")
        first = OVERLAYS[0]
        ops = [{"op": "set", "path": ["greeting"], "value": f"hello from {first}"}]
        answer = client.post(f"https://127.0.0.1:{pods[first].ports['api']}/v1/docs/k8s-smoke", json={"ops": ops})
        assert answer.status_code in (200, 201), answer.text
        for overlay in OVERLAYS[1:]:
            url = f"https://127.0.0.1:{pods[overlay].ports['api']}/v1/docs/k8s-smoke"

            def arrived(url: str = url) -> bool:
                got = client.get(url)
                return got.status_code == 200 and got.json()["value"] == {"greeting": f"hello from {first}"}

            _wait_for(arrived, 60.0, f"the write to reach {overlay}")


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Metric families the dashboard's queries name (``_total``, ``_bucket``, ``_sum``, ``_count`` dropped)."""
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in re.findall(r"\bcrdtstore_[a-z0-9_]+", target["expr"]):
                names.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    return names


def unknown_metrics(dashboard: dict[str, Any], exported: set[str]) -> set[str]:
    return dashboard_metrics(dashboard) - exported


def test_the_dashboard_shows_only_metrics_the_node_exports(cluster: dict[str, Any]) -> None:
    pod = cluster["pods"]["us"]
    scrape = httpx.get(
        f"https://127.0.0.1:{pod.ports['api']}/metrics",
        headers={"Authorization": f"Bearer {READ}"},
        verify=ssl.create_default_context(cafile=str(cluster["ca"])),
        timeout=10.0,
    )
    assert scrape.status_code == 200
    exported = {family.name for family in text_string_to_metric_families(scrape.text)}
    dashboard = json.loads((K8S / "components" / "monitoring" / "dashboard.json").read_text(encoding="utf-8"))
    assert unknown_metrics(dashboard, exported) == set()
    # The per-peer, anti-entropy, quorum and log panels are among them (issue #14).
    assert {"crdtstore_peer_up", "crdtstore_replication_lag_seconds", "crdtstore_quorum_requests"} <= exported
    # The check itself catches a misspelt name.
    typo = {"panels": [{"targets": [{"expr": "sum(crdtstore_documnets)"}]}]}
    assert unknown_metrics(typo, exported) == {"crdtstore_documnets"}


def test_sigterm_ends_every_node_cleanly_within_its_grace_period(cluster: dict[str, Any]) -> None:
    pods: dict[str, Pod] = cluster["pods"]
    for pod in pods.values():
        os.kill(pod.proc.pid, signal.SIGTERM)
    for pod in pods.values():
        spec = pod.rendered.statefulset["spec"]["template"]["spec"]
        grace = (
            spec["terminationGracePeriodSeconds"] - pod.rendered.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        )
        assert pod.proc.wait(timeout=grace) == 0, pod.log_path.read_text()
        assert any(r.get("msg") == "node closed" for r in pod.log_records())
