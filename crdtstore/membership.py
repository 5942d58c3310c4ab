"""Peers found by name: DNS (or a hosts-style file) resolved at start and again periodically.

Theory of operation
-------------------

A replica in a StatefulSet does not know its peers' addresses, only names: its
own region's headless Service (one A/AAAA record per pod, published before the
pod is ready) and the other regions' ones. :class:`Membership` resolves each
:class:`PeerName` every ``interval`` seconds through a :class:`Resolver` and
tells the replicator which :class:`Target` (name, address, port) appeared and
which went away, so scaling a StatefulSet up or down restarts no replica:
the new pod's address is dialed, a removed pod's link is closed.

* A target that is missing from one answer is not dropped at once: DNS
  answers lag and flap while pods move. It goes once it has been missing
  from ``drop_after`` consecutive answers for its name.
* A name whose lookup *fails* (timeout, SERVFAIL, NXDOMAIN while the
  Service is being created) changes nothing: an outage of DNS must not
  cut every link.
* The name stays the peer's name: links to a target dial its address, but
  TLS checks the certificate against the name (the Certificate holds the
  headless Service's name), so an address never needs a certificate.
* Our own address is among the answers for our region's name. The
  replicator recognises it after dialing (the Hello it receives on its
  own listener carries the nonce it just sent) and stops dialing it.

The resolution is injected: :class:`SystemResolver` asks the system
(``loop.getaddrinfo``: A and AAAA records, with the port of the setting), and
:class:`HostsFileResolver` reads a hosts-style file on every resolution (tests
map the manifests' names to loopback ports with it; a cluster without DNS
could too). No SRV lookup: the standard library has none, and the port of a
headless Service is one per name anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "HostsFileError",
    "HostsFileResolver",
    "Membership",
    "MembershipView",
    "PeerName",
    "Resolver",
    "SystemResolver",
    "Target",
    "parse_peer_name",
]

logger = logging.getLogger("crdtstore.membership")

Address = tuple[str, int]
_NAME_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"


@dataclass(frozen=True, slots=True, order=True)
class PeerName:
    """A name to resolve into peers, and the port they listen on (a record may carry its own)."""

    name: str
    port: int


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """One peer address found under a name."""

    name: str
    host: str
    port: int

    @property
    def key(self) -> str:
        """Names the target among the replicator's links (the name, then where it is)."""
        return f"{self.name}@{_join(self.host, self.port)}"

    def url(self, *, scheme: str, path: str) -> str:
        """The URL dialed: the name (TLS checks the certificate against it), the port, the path."""
        return f"{scheme}://{_join(self.name, self.port)}{path}"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a TCP port")
    return int(text)


def parse_peer_name(text: str, *, default_port: int) -> PeerName:
    """``NAME`` or ``NAME:PORT`` (a DNS name, 1-253 characters of dot-separated labels).

    Raises:
        ValueError: Not a DNS name, or a bad port.
    """
    text = text.strip()
    name, sep, port = text.rpartition(":")
    if not sep:
        name, port = text, ""
    name = name.rstrip(".")
    labels = name.split(".")
    if not 1 <= len(name) <= 253 or not all(re.fullmatch(_NAME_LABEL, label) for label in labels):
        raise ValueError(f"a peer name is a DNS name with an optional :PORT, got {text!r}")
    return PeerName(name.lower(), _port(port) if sep else default_port)


class Resolver(Protocol):
    """Turns a name into peer addresses; raises ``OSError`` when the lookup fails (not when it finds none)."""

    async def resolve(self, name: PeerName) -> list[Address]: ...


class SystemResolver:
    """The system's resolver (``getaddrinfo``: A and AAAA), every address on the name's port."""

    async def resolve(self, name: PeerName) -> list[Address]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name.name, name.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                # "No such name" is an answer: the Service has no pods (or is not created yet).
                return []
            raise
        return sorted({(str(info[4][0]), int(info[4][1])) for info in infos})


class HostsFileError(OSError):
    """The hosts file cannot be read or has a bad line (a failed lookup: membership keeps what it had)."""


@dataclass
class HostsFileResolver:
    """Names from a file read on every lookup: ``NAME ADDRESS[:PORT]`` per line, ``#`` comments.

    A name may have several lines (one per replica); a line's port overrides
    the name's. Rewrite the file (atomically: write a new one, rename it over)
    to change membership.
    """

    path: Path

    async def resolve(self, name: PeerName) -> list[Address]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HostsFileError(f"cannot read hosts file {self.path}: {exc}") from None
        found: set[Address] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].split()
            if not line:
                continue
            if len(line) != 2:
                raise HostsFileError(f"{self.path}:{number}: expected 'NAME ADDRESS[:PORT]'")
            try:
                entry_name = parse_peer_name(line[0], default_port=name.port).name
                address = _parse_address(line[1], default_port=name.port)
            except ValueError as exc:
                raise HostsFileError(f"{self.path}:{number}: {exc}") from None
            if entry_name == name.name:
                found.add(address)
        return sorted(found)


def _parse_address(text: str, *, default_port: int) -> Address:
    """``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]:80``: an IP address (names would need resolving)."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    return str(address), _port(port) if port else default_port


@dataclass
class MembershipView:
    """The targets found so far, and how many answers in a row each has been missing from (pure).

    Args:
        drop_after: Consecutive answers a target must be missing from before it is removed.
    """

    drop_after: int = 2
    targets: dict[Target, int] = field(default_factory=dict)  # target -> answers missed in a row

    def update(self, name: PeerName, answer: Sequence[Address] | None) -> tuple[list[Target], list[Target]]:
        """Take one answer for ``name`` (None: the lookup failed); return (added, removed) targets."""
        if answer is None:
            return [], []
        now = {Target(name.name, host, port) for host, port in answer}
        added = sorted(t for t in now if t not in self.targets)
        removed: list[Target] = []
        for target in sorted(self.targets):
            if target.name != name.name:
                continue
            if target in now:
                self.targets[target] = 0
                continue
            self.targets[target] += 1
            if self.targets[target] >= self.drop_after:
                del self.targets[target]
                removed.append(target)
        for target in added:
            self.targets[target] = 0
        return added, removed


OnChange = Callable[[Target], Awaitable[None]]


class Membership:
    """Resolves ``names`` now and every ``interval`` seconds; calls ``on_added``/``on_removed`` per change.

    Args:
        names: What to resolve.
        resolver: How (:class:`SystemResolver` in production).
        interval: Seconds between resolutions.
        drop_after: Answers a target must be missing from before it is removed.
        max_targets: More addresses than this in one answer is refused as a failed lookup: a name
            that suddenly resolves to thousands (a mistake, or someone else's DNS) must not make
            the node dial them all.
    """

    def __init__(
        self,
        names: Iterable[PeerName],
        *,
        resolver: Resolver,
        interval: float = 10.0,
        drop_after: int = 2,
        max_targets: int = 64,
    ) -> None:
        self.max_targets = max_targets
        self.names = tuple(dict.fromkeys(names))
        self.resolver = resolver
        self.interval = interval
        self.view = MembershipView(drop_after=drop_after)
        self.resolutions = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def targets(self) -> list[Target]:
        return sorted(self.view.targets)

    async def resolve_once(self, on_added: OnChange, on_removed: OnChange) -> None:
        """One round over every name (a failed lookup is logged and changes nothing for that name)."""
        for name in self.names:
            try:
                answer: list[Address] | None = await self.resolver.resolve(name)
            except (OSError, TimeoutError) as exc:
                self.failures += 1
                logger.warning("peer name lookup failed", extra={"peer_name": name.name, "error": repr(exc)[:200]})
                answer = None
            if answer is not None and len(answer) > self.max_targets:
                self.failures += 1
                logger.warning(
                    "peer name resolves to too many addresses: answer ignored",
                    extra={"peer_name": name.name, "addresses": len(answer), "max": self.max_targets},
                )
                answer = None
            added, removed = self.view.update(name, answer)
            for target in removed:
                logger.info("peer left membership", extra={"peer": target.key})
                await on_removed(target)
            for target in added:
                logger.info("peer joined membership", extra={"peer": target.key})
                await on_added(target)
        self.resolutions += 1

    async def start(self, on_added: OnChange, on_removed: OnChange) -> None:
        """Resolve once now (so the cluster's size is known before the node serves), then every ``interval``
        in a task of the running loop."""
        if self._task is None:
            await self.resolve_once(on_added, on_removed)
            self._task = asyncio.create_task(self._run(on_added, on_removed), name="membership")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, on_added: OnChange, on_removed: OnChange) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.resolve_once(on_added, on_removed)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a callback must not end membership for good
                logger.exception("membership round failed")
