"""The offline validators of issue #14 pass on the rendered overlays, and fail on what they exist to catch.

* ``kubernetes-validate --strict`` against a pinned Kubernetes version, on
  every object it has a schema for (the cert-manager and Prometheus
  Operator kinds are CRDs it has none of);
* ``checkov`` (frameworks kubernetes and dockerfile) with no failed check,
  every skip justified inline;
* ``yamllint --strict`` over ``k8s/``.

Each tool runs once per session over everything, the deliberately broken
copies included, so the suite stays quick (checkov takes seconds to start).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import K8S, KUBERNETES_VERSION, OVERLAYS, REPO, Rendered, tool

CRD_KINDS = {"Certificate", "ServiceMonitor"}  # kubernetes-validate has no schema for them
EXPECTED_SKIPS = {"CKV_K8S_43", "CKV_DOCKER_2"}  # each justified where it is made


def _run(args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


# kubernetes-validate


def _broken_statefulset(rendered: Rendered) -> dict[str, Any]:
    doc = copy.deepcopy(rendered.statefulset)
    doc["metadata"]["name"] = "crdtstore-typo"
    doc["spec"]["replica"] = 1  # misspelt: only --strict rejects an unknown field
    return doc


def test_kubernetes_validate_strict_passes_every_object_it_has_a_schema_for(
    rendered: dict[str, Rendered], rendered_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(_broken_statefulset(rendered["us"])), encoding="utf-8")
    files = [str(rendered_dir / f"{o}.yaml") for o in OVERLAYS]
    validate = str(tool("kubernetes-validate"))
    good = _run([validate, "--strict", "-k", KUBERNETES_VERSION, *files])
    assert good.returncode == 0, good.stdout + good.stderr
    passed = re.findall(r"passed for resource (\S+)", good.stdout)
    expected = sum(1 for r in rendered.values() for doc in r.docs if doc["kind"] not in CRD_KINDS)
    assert len(passed) == expected, good.stdout
    # Only the CRDs go unchecked.
    unchecked = re.findall(r"Couldn't find schema for kind (\w+)", good.stdout + good.stderr)
    assert set(unchecked) == CRD_KINDS
    bad = _run([validate, "--strict", "-k", KUBERNETES_VERSION, str(broken)])
    assert bad.returncode != 0 and "replica" in bad.stdout + bad.stderr


# checkov


@pytest.fixture(scope="module")
def checkov_reports(rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One checkov run over the overlays, the Dockerfile, and a privileged copy of the StatefulSet."""
    root = tmp_path_factory.mktemp("checkov")
    for overlay, result in rendered.items():
        (root / f"{overlay}.yaml").write_text(result.text, encoding="utf-8")
    bad = copy.deepcopy(rendered["us"].statefulset)
    bad["metadata"] = {"name": "crdtstore-privileged", "namespace": "crdtstore-us"}  # no skip annotation
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        privileged=True, allowPrivilegeEscalation=True, readOnlyRootFilesystem=False
    )
    (root / "broken.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    shutil.copy(REPO / "Dockerfile", root / "Dockerfile")
    out = _run(
        [str(tool("checkov")), "-d", str(root), "--framework", "kubernetes", "dockerfile", "--skip-download"]
        + ["--output", "json"]
    )
    assert out.stdout.strip(), out.stderr
    data = json.loads(out.stdout)
    reports = data if isinstance(data, list) else [data]
    return {report["check_type"]: report for report in reports}


def _checks(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(report["results"][kind])


def test_checkov_fails_no_check_on_the_manifests_and_the_dockerfile(checkov_reports: dict[str, Any]) -> None:
    assert set(checkov_reports) == {"kubernetes", "dockerfile"}
    for report in checkov_reports.values():
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 0
    failed = [
        (c["check_id"], c["resource"])
        for report in checkov_reports.values()
        for c in _checks(report, "failed_checks")
        if "crdtstore-privileged" not in c["resource"]
    ]
    assert failed == []
    # Every overlay's objects were checked.
    resources = {c["resource"] for c in _checks(checkov_reports["kubernetes"], "passed_checks")}
    for overlay in OVERLAYS:
        assert f"StatefulSet.crdtstore-{overlay}.crdtstore" in resources


def test_checkov_skips_are_the_justified_ones(checkov_reports: dict[str, Any]) -> None:
    skipped = [c for report in checkov_reports.values() for c in _checks(report, "skipped_checks")]
    assert {c["check_id"] for c in skipped} == EXPECTED_SKIPS
    for check in skipped:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason.split()) >= 8, f"{check['check_id']} skipped without a reason: {reason!r}"


def test_checkov_catches_a_privileged_container(checkov_reports: dict[str, Any]) -> None:
    failed = {
        c["check_id"]
        for c in _checks(checkov_reports["kubernetes"], "failed_checks")
        if "crdtstore-privileged" in c["resource"]
    }
    # privileged, privilege escalation, writable root filesystem, and the unjustified image digest
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_43"} <= failed


# yamllint


def _yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    config = K8S / ".yamllint.yaml"
    return _run([str(tool("yamllint")), "--strict", "-f", "parsable", "-c", str(config), *map(str, paths)], timeout=120)


def test_yamllint_is_clean_on_every_manifest() -> None:
    out = _yamllint(K8S)
    assert out.returncode == 0, out.stdout + out.stderr


def test_yamllint_catches_a_duplicate_key(tmp_path: Path) -> None:
    # A duplicate key is the silent YAML error: the second value wins without a word.
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n", encoding="utf-8")
    out = _yamllint(bad)
    assert out.returncode != 0 and "key-duplicates" in out.stdout
