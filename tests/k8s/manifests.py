"""Shared helpers of the Kubernetes tests: finding the tools, rendering overlays, reading objects.

The validators (checkov, kubernetes-validate, yamllint) come from the ``k8s``
extra, which ``.ci/run`` installs in a virtualenv of its own (``.venv/k8s``):
checkov pins libraries that pytest does not accept. ``kubectl`` (with its
built-in kustomize) comes from the machine.

Where a tool is missing the tests skip with a reason that says how to get it,
except under CI (``CI=true``), where ``.ci/run`` installs the Python tools:
a missing one there is a failure, never a silent skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a dependency of uvicorn[standard]

__all__ = [
    "K8S",
    "KUBERNETES_VERSION",
    "OVERLAYS",
    "REPO",
    "Rendered",
    "container_env",
    "headless_name",
    "hostname_matches",
    "kubectl",
    "pod_hosts",
    "render",
    "selector_matches",
    "tool",
]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS: tuple[str, ...] = ("us", "eu", "ap")
KUBERNETES_VERSION = "1.32.0"
"""The Kubernetes version the manifests are validated against (kubernetes-validate ``-k``)."""

MIN_KUSTOMIZE = (5, 0)  # components, `labels:` with includeTemplates


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool(name: str) -> Path:
    """The executable ``name`` of the ``k8s`` extra; skips (fails under CI) if it is not installed."""
    dirs = [
        os.environ.get("CRDTSTORE_K8S_TOOLS"),
        str(REPO / ".venv" / "k8s" / "bin"),
        str(Path(sys.executable).parent),
    ]
    for directory in filter(None, dirs):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    reason = (
        f"{name} not found: install the k8s extra with "
        "`python3 -m venv .venv/k8s && .venv/k8s/bin/pip install '.[k8s]'` (as .ci/run does)"
    )
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def kubectl() -> Path:
    """``kubectl`` with a kustomize recent enough for the overlays; skips loudly without one."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found: the kustomize overlays cannot be rendered on this machine")
    out = subprocess.run(
        [found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60, check=False
    )
    try:
        version = json.loads(out.stdout).get("kustomizeVersion", "")
    except ValueError:
        version = ""
    match = re.match(r"v?(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < MIN_KUSTOMIZE:
        pytest.skip(f"kubectl's kustomize is {version or 'unknown'}; the overlays need v{MIN_KUSTOMIZE[0]} or later")
    return Path(found)


@dataclass(frozen=True)
class Rendered:
    """One overlay as ``kubectl kustomize`` renders it."""

    overlay: str
    text: str
    docs: tuple[dict[str, Any], ...]

    @property
    def namespace(self) -> str:
        return str(self.one("Namespace")["metadata"]["name"])

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [doc for doc in self.all(kind) if name is None or doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def statefulset(self) -> dict[str, Any]:
        return self.one("StatefulSet")

    @property
    def container(self) -> dict[str, Any]:
        containers = self.statefulset["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return dict(containers[0])

    def container_port(self, name: str) -> int:
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        return int(port)


def render(overlay: str) -> Rendered:
    out = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    docs = tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)
    return Rendered(overlay=overlay, text=out.stdout, docs=docs)


def container_env(rendered: Rendered, *, pod_name: str = "crdtstore-0") -> dict[str, str]:
    """The container's environment as the kubelet builds it: ``envFrom`` ConfigMaps, then ``env``."""
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in rendered.all("ConfigMap")}
    env: dict[str, str] = {}
    container = rendered.container
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    field_values = {
        "metadata.name": pod_name,
        "metadata.namespace": rendered.namespace,
        "metadata.labels['apps.kubernetes.io/pod-index']": pod_name.rpartition("-")[2],
    }
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def headless_name(rendered: Rendered) -> str:
    """The DNS name of the StatefulSet's headless Service: one record per pod, ready or not."""
    return f"{rendered.statefulset['spec']['serviceName']}.{rendered.namespace}.svc.cluster.local"


def pod_hosts(rendered: Rendered) -> list[str]:
    """The DNS names of the StatefulSet's pods behind its headless Service."""
    sts = rendered.statefulset
    spec = sts["spec"]
    return [
        f"{sts['metadata']['name']}-{i}.{spec['serviceName']}.{rendered.namespace}.svc.cluster.local"
        for i in range(spec["replicas"])
    ]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes label selector (``matchLabels``/``matchExpressions``) selects ``labels``."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def hostname_matches(pattern: str, host: str) -> bool:
    """Whether a certificate's dNSName ``pattern`` covers ``host`` (RFC 6125: a wildcard is one whole left label)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == host
    head, _, rest = host.partition(".")
    return bool(head) and rest == pattern[2:]


def iter_manifest_files() -> Iterator[Path]:
    for path in sorted(K8S.rglob("*")):
        if path.suffix in (".yaml", ".yml") and path.is_file():
            yield path
