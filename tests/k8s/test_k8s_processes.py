"""What the manifests say, run as 3 regions x 3 replicas of local processes: kills, scaling, convergence.

Each overlay is rendered and each pod of its StatefulSet started as a kubelet
would (as in ``test_k8s_pod``): the container's command and args, its
environment from the rendered ConfigMap with the pod's name, the Secrets'
files (one CA, a certificate per region from its Certificate), volumes as
directories. What changes, and only that:

* listeners on port 0 of 127.0.0.1 (``--host``/``--port``/``--peer-port``);
* the cluster's DNS is a hosts file (``CRDTSTORE_PEER_HOSTS_FILE``) holding,
  for each region's headless Service name, one line per pod that exists:
  its peer port on loopback, as a headless Service with
  ``publishNotReadyAddresses`` lists every pod that exists, ready or not;
* ``CRDTSTORE_PEER_DNS_INTERVAL`` is 0.5 s instead of 10, so the test is short.

Then: a write through every region with ``w=local_quorum``; ``kill -9`` of one
replica per region; ``local_quorum`` still answers (and ``all`` does not);
the live replicas converge (every document's value and version, and the
Merkle roots, equal); the killed pods come back on their volumes at new
addresses (rescheduled) and everything converges; then a region scales up by
one pod and another down by one, and the cluster converges with the pids of
every other replica unchanged. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.k8s.manifests import OVERLAYS, Rendered, container_env, headless_name
from tests.k8s.test_k8s_pod import READ, RW, SECRET, _local, _write_secrets, issue, make_ca

pytestmark = pytest.mark.slow

START_BUDGET = 60.0  # seconds for a replica to listen (the startup probe allows more)
CONVERGE_BUDGET = 45.0
DNS_INTERVAL = "0.5"


@dataclass
class Replica:
    """One pod of a region's StatefulSet as a child process."""

    overlay: str
    ordinal: int
    rendered: Rendered
    proc: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int]

    @property
    def name(self) -> str:
        return f"{self.overlay}-{self.ordinal}"

    @property
    def api(self) -> str:
        return f"https://127.0.0.1:{self.ports['api']}"

    def listening(self) -> list[int]:
        ports = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == "listening":
                ports.append(int(record["port"]))
        return ports


class Cluster:
    """The pods of every overlay, their volumes and certificates, and the hosts file standing in for DNS."""

    def __init__(self, root: Path, rendered: dict[str, Rendered]) -> None:
        self.root = root
        self.rendered = rendered
        self.hosts = root / "hosts"
        self.hosts.write_text("", encoding="utf-8")
        self.replicas: dict[str, Replica] = {}
        self.starts = 0
        pki = root / "pki"
        pki.mkdir()
        ca = make_ca(pki)
        self.ca = ca[0]
        self.secrets: dict[str, dict[str, dict[str, str]]] = {}
        for serial, overlay in enumerate(OVERLAYS, start=1):
            spec = rendered[overlay].one("Certificate")["spec"]
            (pki / overlay).mkdir()
            crt, key = issue(pki / overlay, spec, ca, serial)
            self.secrets[overlay] = {
                "crdtstore-tokens": {"tokens": f"{RW} readwrite\n{READ} read\n"},
                "crdtstore-cluster-secret": {"secret": SECRET + "\n"},
                spec["secretName"]: {"tls.crt": crt, "tls.key": key, "ca.crt": ca[0].read_text()},
            }

    def spawn(self, overlay: str, ordinal: int) -> Replica:
        """Start pod ``crdtstore-<ordinal>`` of ``overlay`` on its volumes (kept across restarts)."""
        result = self.rendered[overlay]
        container = result.container
        base = self.root / f"{overlay}-{ordinal}"
        volumes = {m["name"]: base / "volumes" / m["name"] for m in container["volumeMounts"]}
        for directory in volumes.values():
            directory.mkdir(parents=True, exist_ok=True)
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        _write_secrets(result, volumes, self.secrets[overlay])
        env = container_env(result, pod_name=f"crdtstore-{ordinal}")
        for name, value in env.items():
            if value.startswith("/"):
                env[name] = _local(value, mounts)
        names = [item.rpartition(":")[0] for item in env["CRDTSTORE_PEER_DNS"].split(",")]
        # Every name the pod resolves is a headless Service of an overlay: the hosts file maps them all.
        assert sorted(names) == sorted(headless_name(r) for r in self.rendered.values())
        env["CRDTSTORE_PEER_HOSTS_FILE"] = str(self.hosts)
        env["CRDTSTORE_PEER_DNS_INTERVAL"] = DNS_INTERVAL
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTORE_")} | env
        script = Path(sys.executable).parent / container["command"][0]
        cmd = [str(script), *container["command"][1:], *container["args"]]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--peer-port", "0"]
        workdir = base / "workdir"
        workdir.mkdir(exist_ok=True)
        self.starts += 1
        log_path = base / f"pod-{self.starts}.log"  # one log per start: its "listening" lines are this start's
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, cwd=workdir, env=child_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        replica = Replica(overlay, ordinal, result, proc, log_path, {})
        self.replicas[replica.name] = replica
        return replica

    def wait_listening(self, replica: Replica) -> None:
        deadline = time.monotonic() + START_BUDGET
        while time.monotonic() < deadline:
            assert replica.proc.poll() is None, f"{replica.name} exited:\n{replica.log_path.read_text()}"
            ports = replica.listening()
            if len(ports) == 2:
                # The API listener is bound first, then the one for peer links (crdtstore.server.server_configs).
                replica.ports = {"api": ports[0], "peer": ports[1]}
                return
            time.sleep(0.05)
        raise AssertionError(f"{replica.name} never listened:\n{replica.log_path.read_text()}")

    def start(self, pods: list[tuple[str, int]]) -> list[Replica]:
        """Start ``pods`` at once (podManagementPolicy: Parallel), then publish them in DNS."""
        started = [self.spawn(overlay, ordinal) for overlay, ordinal in pods]
        for replica in started:
            self.wait_listening(replica)
        self.publish()
        return started

    def publish(self) -> None:
        """Rewrite the hosts file: a record per existing pod (killed ones too: the pod object still exists)."""
        lines = [
            f"{headless_name(r.rendered)} 127.0.0.1:{r.ports['peer']}\n"
            for r in sorted(self.replicas.values(), key=lambda r: r.name)
        ]
        new = self.hosts.with_suffix(".new")
        new.write_text("".join(lines), encoding="utf-8")
        new.replace(self.hosts)

    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.proc.poll() is None]

    def stop_all(self) -> None:
        for replica in self.replicas.values():
            if replica.proc.poll() is None:
                os.kill(replica.proc.pid, signal.SIGKILL)
                replica.proc.wait(timeout=30)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


@pytest.fixture
def cluster(rendered: dict[str, Rendered], tmp_path: Path) -> Iterator[Cluster]:
    if subprocess.run(["which", "openssl"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs the openssl command to make certificates")
    c = Cluster(tmp_path, rendered)
    try:
        yield c
    finally:
        c.stop_all()


def test_three_regions_of_three_replicas_survive_kills_and_scale_without_restarts(cluster: Cluster) -> None:
    replicas = {o: cluster.rendered[o].statefulset["spec"]["replicas"] for o in OVERLAYS}
    assert replicas == {o: 3 for o in OVERLAYS}
    cluster.start([(o, i) for o in OVERLAYS for i in range(replicas[o])])
    verify = ssl.create_default_context(cafile=str(cluster.ca))
    with httpx.Client(verify=verify, headers={"Authorization": f"Bearer {RW}"}, timeout=15.0) as client:

        def linked(replica: Replica, count: int) -> bool:
            return len(client.get(f"{replica.api}/v1/admin/links").json()["peers"]) == count

        def replica_id(replica: Replica) -> str:
            return str(client.get(f"{replica.api}/v1/admin/links").json()["replica_id"]).split(".")[0]

        def sees_the_others(replica: Replica) -> bool:
            others = {replica_id(r) for r in cluster.live() if r is not replica}
            return others <= set(client.get(f"{replica.api}/v1/admin/links").json()["peers"])

        def all_linked() -> bool:
            live = cluster.live()
            return all(linked(r, len(live) - 1) for r in live)

        def write(replica: Replica, doc: str, level: str, timeout: float | None = None) -> httpx.Response:
            ops = [{"op": "increment", "path": ["n"]}, {"op": "add", "path": ["by"], "value": replica.name}]
            query = f"?w={level}" + (f"&timeout={timeout}" if timeout else "")
            return client.post(f"{replica.api}/v1/docs/{doc}{query}", json={"ops": ops})

        docs: list[str] = []

        def snapshot(replica: Replica) -> tuple[Any, ...]:
            state = []
            for doc in docs:
                body = client.get(f"{replica.api}/v1/docs/{doc}").json()
                state.append((doc, body.get("value"), body.get("version")))
            return (*state, client.get(f"{replica.api}/v1/admin/merkle").json()["root"])

        def converged() -> tuple[Any, ...] | None:
            states = [snapshot(r) for r in cluster.live()]
            return states[0] if all(s == states[0] for s in states) else None

        # Every replica finds the 8 others by name (and never dials itself), then takes writes.
        wait_for("9 replicas to link to each other", all_linked, START_BUDGET)
        for replica in cluster.live():
            # The replica id from the region and the pod's ordinal (then a random part: never reused).
            assert replica_id(replica).startswith(f"{replica.overlay}-{replica.ordinal}-"), replica_id(replica)
        for overlay in OVERLAYS:
            replica = cluster.replicas[f"{overlay}-0"]
            answer = write(replica, f"first-{overlay}", "local_quorum")
            assert answer.status_code in (200, 201), answer.text
            docs.append(f"first-{overlay}")

        # kill -9 one replica per region: 2 of 3 remain, so local_quorum still answers; all cannot.
        killed = [cluster.replicas[f"{o}-2"] for o in OVERLAYS]
        for replica in killed:
            os.kill(replica.proc.pid, signal.SIGKILL)
            replica.proc.wait(timeout=30)
        for overlay in OVERLAYS:
            for ordinal in (0, 1):
                replica = cluster.replicas[f"{overlay}-{ordinal}"]
                doc = f"after-kill-{replica.name}"
                answer = write(replica, doc, "local_quorum", timeout=10)
                assert answer.status_code in (200, 201), (replica.name, answer.text)
                docs.append(doc)
        refused = write(cluster.replicas["us-0"], "needs-all", "all", timeout=0.5)
        assert refused.status_code == 504, refused.text
        docs.append("needs-all")  # written here, waiting for all: it converges like the others
        state = wait_for("the 6 live replicas to converge", converged, CONVERGE_BUDGET)
        assert all(value is not None for _, value, _ in state[:-1])

        # The killed pods come back on their volumes, rescheduled: new addresses in DNS.
        for replica in killed:
            del cluster.replicas[replica.name]
        cluster.start([(o, 2) for o in OVERLAYS])
        wait_for("9 replicas to converge after the restarts", converged, CONVERGE_BUDGET)
        pids = {r.name: r.proc.pid for r in cluster.live()}
        assert len(pids) == 9

        # Scale eu down to 2 and us up to 4: nobody else restarts.
        removed = cluster.replicas.pop("eu-2")
        cluster.publish()  # its record goes with the pod, which drains on SIGTERM meanwhile
        os.kill(removed.proc.pid, signal.SIGTERM)
        (added,) = cluster.start([("us", 3)])
        wait_for("the new replica and the others to link", lambda: all(sees_the_others(r) for r in cluster.live()), 60)
        answer = write(added, "from-the-new-replica", "local_quorum", timeout=10)
        assert answer.status_code in (200, 201), answer.text
        docs.append("from-the-new-replica")
        state = wait_for("the scaled cluster to converge", converged, CONVERGE_BUDGET)
        assert all(value is not None for _, value, _ in state[:-1])
        assert {r.name: r.proc.pid for r in cluster.live() if r is not added} == {
            name: pid for name, pid in pids.items() if name != "eu-2"
        }
        grace = removed.rendered.statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert removed.proc.wait(timeout=grace) == 0
