"""The operator's side of a running cluster: ``crdtstore status`` and the link commands, over HTTP.

They need no ``up`` process: ``status`` reads ``/v1/admin/links`` and
``/v1/admin/merkle`` of every node URL it is given, and ``partition``,
``isolate`` and ``heal`` call the admin API of the emulated WAN the regions
dial each other through (:mod:`crdtstore.wanadmin`; a node that holds a WAN
serves ``partition`` and ``heal`` on the same paths), or, given node URLs
(``--node``), each node's own link cuts (:func:`cut_on_nodes`,
``/v1/admin/links/cut`` and ``/heal``), where there is no emulated WAN
(Kubernetes). Without URLs they take those of the ``up`` whose plan
(``up.json``) is under ``--data``.

The token comes from ``--token``, else ``CRDTSTORE_TOKEN``, else the token
file ``up`` wrote: ``status`` needs ``read``, the link commands ``admin``.
"""

from __future__ import annotations

import collections
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtstore.api.auth import Scope, TokenFileError, parse_token_file
from crdtstore.config import ConfigError
from crdtstore.supervisor import format_table

__all__ = [
    "AdminError",
    "NodeStatus",
    "admin_call",
    "cut_on_nodes",
    "fetch_status",
    "load_plan",
    "pick_token",
    "render_status",
]

TIMEOUT = 10.0  # seconds per admin request


class AdminError(Exception):
    """An admin request the server refused (its status and JSON error body)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


def load_plan(root: Path) -> dict[str, Any]:
    """The plan of the ``up`` under ``root`` (``ConfigError`` if there is none)."""
    try:
        plan = json.loads((root / "up.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no `crdtstore up` plan under {root} ({exc}); give the URLs and --token") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("regions"), dict):
        raise ConfigError(f"{root / 'up.json'} is not a plan written by `crdtstore up`")
    return plan


def pick_token(explicit: str | None, *, env: Mapping[str, str], root: Path, needed: Scope) -> str:
    """``--token``, else ``CRDTSTORE_TOKEN``, else the smallest token of ``up``'s file that has ``needed``."""
    if explicit:
        return explicit
    if env.get("CRDTSTORE_TOKEN"):
        return env["CRDTSTORE_TOKEN"]
    path = root / "tokens"
    try:
        tokens = parse_token_file(path.read_text(encoding="utf-8"), source=str(path))
    except (OSError, TokenFileError) as exc:
        raise ConfigError(f"no token: give --token or CRDTSTORE_TOKEN ({exc})") from None
    fitting = sorted((scope, token) for token, scope in tokens.items() if scope >= needed)
    if not fitting:
        raise ConfigError(f"{path} holds no {needed.name.lower()} token; give --token or CRDTSTORE_TOKEN")
    return fitting[0][1]


def admin_call(url: str, token: str, *, body: Mapping[str, Any] | None = None) -> Any:
    """GET ``url`` (or POST ``body`` as JSON) with the bearer token; the decoded JSON answer.

    Raises:
        AdminError: The server answered with an error status.
        OSError: It could not be reached.
    """
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (an operator's URL)
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AdminError(exc.code, exc.read().decode(errors="replace")[:500]) from None


@dataclass
class NodeStatus:
    """What ``status`` learned of one node (``error`` set when it could not)."""

    name: str
    url: str
    replica_id: str = ""
    peers: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    root: str = ""
    cuts: list[str] = field(default_factory=list)  # links this node cut (``/v1/admin/links/cut``)
    error: str | None = None


def fetch_status(nodes: Mapping[str, str], token: str) -> list[NodeStatus]:
    """Links and Merkle root of every node (``name -> base URL``); an unreachable node gets an ``error``."""
    out = []
    for name, url in nodes.items():
        status = NodeStatus(name=name, url=url)
        try:
            links = admin_call(f"{url}/v1/admin/links", token)
            merkle = admin_call(f"{url}/v1/admin/merkle", token)
        except AdminError as exc:
            status.error = f"HTTP {exc.status}"
        except (OSError, ValueError) as exc:
            status.error = f"unreachable ({getattr(exc, 'reason', exc)})"
        else:
            status.replica_id = str(links.get("replica_id", ""))
            if name == url and status.replica_id:
                status.name = status.replica_id.rsplit("-", 1)[0]  # a replica id starts with its region
            status.peers = [str(p) for p in links.get("peers", [])]
            status.stats = {k: int(v) for k, v in (links.get("stats") or {}).items()}
            status.quarantined = len(links.get("quarantine") or [])
            status.root = str(merkle.get("root", ""))
            status.cuts = _node_cuts(url, token)
        out.append(status)
    return out


def _node_cuts(url: str, token: str) -> list[str]:
    """``region:eu``, ``peer:ID``: what the node at ``url`` cut; none from a node without the link-cut API."""
    try:
        cut = admin_call(f"{url}/v1/admin/links/cut", token).get("cut") or {}
    except AdminError:  # an older node (404) or none to cut with: nothing it cut
        return []
    return [f"region:{r}" for r in cut.get("regions", [])] + [f"peer:{p}" for p in cut.get("peers", [])]


def _peer_regions(peers: Sequence[str]) -> str:
    """``eu,ap`` for one linked replica per region, ``usx2,eux3`` for several (a replica id starts with its region)."""
    counts = collections.Counter(p.rsplit("-", 1)[0] for p in peers)
    return ",".join(region if n == 1 else f"{region}x{n}" for region, n in counts.items()) or "-"


def render_status(statuses: Sequence[NodeStatus], *, cut: list[list[str]] | None = None) -> str:
    """A table of nodes, then whether their Merkle roots agree, then the cut links (when known)."""
    rows = [("node", "url", "state", "replica", "peers", "msgs in/out", "quarantined", "merkle root", "cut here")]
    for s in statuses:
        if s.error is not None:
            rows.append((s.name, s.url, s.error, "", "", "", "", "", ""))
            continue
        traffic = f"{s.stats.get('messages_in', 0)}/{s.stats.get('messages_out', 0)}"
        peers = _peer_regions(s.peers)
        cuts = ",".join(s.cuts) or "-"
        rows.append((s.name, s.url, "up", s.replica_id, peers, traffic, str(s.quarantined), s.root[:16], cuts))
    lines = [format_table(rows)]
    roots = {s.root for s in statuses if s.error is None}
    if len(roots) == 1 and len(statuses) > 1 and all(s.error is None for s in statuses):
        lines.append("merkle roots: equal (the replicas hold the same documents)")
    elif len(roots) > 1:
        lines.append("merkle roots: differ (replication or anti-entropy still catching up, or links cut)")
    if cut is not None:
        lines.append("cut links: " + (", ".join("-".join(pair) for pair in cut) or "none"))
    return "\n".join(lines)


def cut_on_nodes(
    command: str, nodes: Sequence[str], token: str, *, a: str | None = None, b: str | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """``partition A B``, ``isolate A`` or ``heal [A B]`` through the link cuts of ``nodes`` (base URLs).

    ``partition``: each node of region A cuts region B, and each of B cuts A.
    ``isolate``: each node of A cuts every other region it knows, every other
    node cuts A. ``heal A B`` undoes a partition; ``heal`` heals every cut of
    every node. Every node is asked what it knows first, and a region a node
    has never linked with stops the command before any node changes.

    Returns:
        ``(url, region, cuts after)`` per node changed.

    Raises:
        ConfigError: A region no node serves, or one a node cannot cut.
        AdminError, OSError: A node refused or could not be reached.
    """
    infos = {url.rstrip("/"): admin_call(f"{url.rstrip('/')}/v1/admin/links/cut", token) for url in nodes}
    served = {info["region"] for info in infos.values()}
    for region in (a, b):
        if region is not None and region not in served:
            raise ConfigError(f"no node given serves region {region!r} (given: {', '.join(sorted(served))})")
    plan: list[tuple[str, str, dict[str, str]]] = []  # (url, route, body)
    for url, info in infos.items():
        own, known = info["region"], set(info["known"].values())
        if command == "isolate":
            if own == a:
                plan += [(url, "cut", {"region": r}) for r in sorted(known - {own})]
            elif a is not None and a in known:
                plan.append((url, "cut", {"region": a}))
        elif command == "heal" and a is None:
            plan.append((url, "heal", {}))
        elif a is not None and b is not None and own in (a, b):  # partition A B, heal A B
            plan.append((url, "cut" if command == "partition" else "heal", {"region": b if own == a else a}))
    for url, _, body in plan:
        region = body.get("region")
        if region is not None and region not in set(infos[url]["known"].values()):
            raise ConfigError(f"{url} ({infos[url]['region']}) has not linked with region {region!r}: nothing changed")
    done: dict[str, dict[str, Any]] = {}
    for url, route, body in plan:
        done[url] = admin_call(f"{url}/v1/admin/links/{route}", token, body=body)
    return [(url, answer["region"], answer["cut"]) for url, answer in done.items()]
