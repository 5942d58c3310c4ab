"""The Dockerfile builds the package from this repository and runs it as the StatefulSet expects.

No container engine runs here: these tests read the Dockerfile and
``.dockerignore`` against pyproject.toml and the manifests (checkov's
dockerfile checks run in test_k8s_validators.py).
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import PurePosixPath

import yaml

from crdtstore.cli import build_parser
from crdtstore.config import SETTINGS
from tests.k8s.manifests import K8S, OVERLAYS, REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines, pending = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        lines.append((keyword.upper(), rest.strip()))
        pending = ""
    return lines


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    return steps[last_from:]


def dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` out of the build context (last matching rule wins)."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_image_installs_every_package_of_the_project_from_the_repository() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    copied = set()
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            copied.update(args.split()[:-1])
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    # Everything pip needs to build the package: its metadata, its readme, its packages.
    needed = {"pyproject.toml", pyproject["project"]["readme"], *packages}
    assert needed <= copied, needed - copied
    for path in needed:
        assert (REPO / path).exists()
        assert not dockerignored(path), f".dockerignore drops {path}"
    assert any(kw == "RUN" and "pip install ." in args for kw, args in instructions())


def test_build_context_leaves_out_what_the_image_does_not_need() -> None:
    for path in (
        ".venv/bin/python",
        "tests/test_node.py",
        "data/us/data.mdb",
        ".git/HEAD",
        "crdtstore/__pycache__/x.pyc",
    ):
        assert dockerignored(path), path
    assert not dockerignored("crdtstore/node.py")


def test_image_runs_the_console_script_as_the_statefulsets_user() -> None:
    steps = final_stage()
    (user,) = [args for kw, args in steps if kw == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()  # numeric: runAsNonRoot can check it
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (entrypoint,) = [json.loads(args) for kw, args in steps if kw == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for kw, args in steps if kw == "CMD"]
    assert entrypoint[0] in pyproject["project"]["scripts"]
    args = build_parser().parse_args([*entrypoint[1:], *cmd])
    assert args.command == "serve" and args.host == "0.0.0.0"
    # Its data directory is under the volume the image declares and the StatefulSet mounts.
    (volume,) = [json.loads(args) for kw, args in steps if kw == "VOLUME"]
    sts = yaml.safe_load((K8S / "base" / "statefulset.yaml").read_text(encoding="utf-8"))
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    data_mount = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data"]
    assert volume == data_mount
    assert PurePosixPath(volume[0]) in PurePosixPath(args.data).parents
    assert int(uid) == container["securityContext"]["runAsUser"]
    # No setting is baked into the image's environment: the manifests own them.
    env = " ".join(args for kw, args in steps if kw == "ENV")
    assert not any(s.env in env for s in SETTINGS)


def test_overlays_name_the_example_issuer() -> None:
    issuers = [
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all((K8S / "examples" / "cert-manager" / "issuer.yaml").read_text(encoding="utf-8"))
        if doc["kind"] == "ClusterIssuer"
    ]
    for overlay in OVERLAYS:
        cert = yaml.safe_load((K8S / "overlays" / overlay / "certificate.yaml").read_text(encoding="utf-8"))
        assert cert["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
        assert cert["spec"]["issuerRef"]["name"] in issuers
