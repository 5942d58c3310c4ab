"""The operator's side of a running cluster: ``crdtstore status`` and the link commands, over HTTP.

They need no ``up`` process: ``status`` reads ``/v1/admin/links`` and
``/v1/admin/merkle`` of every node URL it is given, and ``partition``,
``isolate`` and ``heal`` call the admin API of the emulated WAN the regions
dial each other through (:mod:`crdtstore.wanadmin`; a node that holds a WAN
serves ``partition`` and ``heal`` on the same paths). Without URLs they take
those of the ``up`` whose plan (``up.json``) is under ``--data``.

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

__all__ = ["AdminError", "NodeStatus", "admin_call", "fetch_status", "load_plan", "pick_token", "render_status"]

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
        out.append(status)
    return out


def _peer_regions(peers: Sequence[str]) -> str:
    """``eu,ap`` for one linked replica per region, ``usx2,eux3`` for several (a replica id starts with its region)."""
    counts = collections.Counter(p.rsplit("-", 1)[0] for p in peers)
    return ",".join(region if n == 1 else f"{region}x{n}" for region, n in counts.items()) or "-"


def render_status(statuses: Sequence[NodeStatus], *, cut: list[list[str]] | None = None) -> str:
    """A table of nodes, then whether their Merkle roots agree, then the cut links (when known)."""
    rows = [("node", "url", "state", "replica", "peers", "msgs in/out", "quarantined", "merkle root")]
    for s in statuses:
        if s.error is not None:
            rows.append((s.name, s.url, s.error, "", "", "", "", ""))
            continue
        traffic = f"{s.stats.get('messages_in', 0)}/{s.stats.get('messages_out', 0)}"
        peers = _peer_regions(s.peers)
        rows.append((s.name, s.url, "up", s.replica_id, peers, traffic, str(s.quarantined), s.root[:16]))
    lines = [format_table(rows)]
    roots = {s.root for s in statuses if s.error is None}
    if len(roots) == 1 and len(statuses) > 1 and all(s.error is None for s in statuses):
        lines.append("merkle roots: equal (the replicas hold the same documents)")
    elif len(roots) > 1:
        lines.append("merkle roots: differ (replication or anti-entropy still catching up, or links cut)")
    if cut is not None:
        lines.append("cut links: " + (", ".join("-".join(pair) for pair in cut) or "none"))
    return "\n".join(lines)
