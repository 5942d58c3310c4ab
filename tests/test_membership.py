"""crdtstore.membership: names, the hosts-file and system resolvers, and when a target comes and goes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crdtstore.config import ConfigError, ServeConfig, check_peer_transport, resolve
from crdtstore.membership import (
    HostsFileError,
    HostsFileResolver,
    Membership,
    MembershipView,
    PeerName,
    SystemResolver,
    Target,
    parse_peer_name,
)
from sync.truncation import pinning_peers

NAME = PeerName("crdtstore-peer.crdtstore-us.svc.cluster.local", 9443)


def test_a_peer_name_is_a_dns_name_with_an_optional_port() -> None:
    assert parse_peer_name("Crdtstore-Peer.ns.svc:9000", default_port=1) == PeerName("crdtstore-peer.ns.svc", 9000)
    assert parse_peer_name("peer.ns.", default_port=9443) == PeerName("peer.ns", 9443)


@pytest.mark.parametrize(
    "bad",
    ["", "a..b", "-a.b", "a_b.c", "peer:0", "peer:65536", "peer:x", "ws://peer", "a b", "x" * 64 + ".b", "peer:"],
)
def test_a_bad_peer_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_peer_name(bad, default_port=9443)


def _resolve(resolver: HostsFileResolver, name: PeerName) -> list[tuple[str, int]]:
    return asyncio.run(resolver.resolve(name))


def test_the_hosts_file_gives_every_line_of_a_name_with_its_port(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# the us region\n"
        f"{NAME.name} 127.0.0.1:4001\n"
        f"{NAME.name.upper()} 127.0.0.2   # no port: the name's\n"
        f"{NAME.name} [::1]:4003\n"
        "other.name 127.0.0.9:1\n\n",
        encoding="utf-8",
    )
    resolver = HostsFileResolver(hosts)
    assert _resolve(resolver, NAME) == [("127.0.0.1", 4001), ("127.0.0.2", 9443), ("::1", 4003)]
    assert _resolve(resolver, PeerName("absent.name", 1)) == []


@pytest.mark.parametrize(
    "line",
    ["peer.ns", "peer.ns 127.0.0.1 extra", "peer.ns host.example", "peer.ns 127.0.0.1:0", "bad_name 127.0.0.1"],
)
def test_a_bad_hosts_file_is_a_failed_lookup(tmp_path: Path, line: str) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(HostsFileError, match=":1:"):
        _resolve(HostsFileResolver(hosts), PeerName("peer.ns", 1))
    with pytest.raises(HostsFileError, match="cannot read"):
        _resolve(HostsFileResolver(tmp_path / "missing"), PeerName("peer.ns", 1))


def test_the_system_resolver_asks_getaddrinfo() -> None:
    found = asyncio.run(SystemResolver().resolve(PeerName("localhost", 4321)))
    assert found and all(port == 4321 for _, port in found)
    assert {host for host, _ in found} <= {"127.0.0.1", "::1"}


def test_a_target_is_dropped_only_after_it_stayed_gone() -> None:
    view = MembershipView(drop_after=2)
    a, b = ("10.0.0.1", 9443), ("10.0.0.2", 9443)
    ta, tb = Target(NAME.name, *a), Target(NAME.name, *b)
    assert view.update(NAME, [a, b]) == ([ta, tb], [])
    assert view.update(NAME, [a]) == ([], [])  # one answer without b: DNS lags while pods move
    assert view.update(NAME, None) == ([], [])  # a failed lookup counts for nothing
    assert view.update(NAME, [a, b]) == ([], [])  # b back: its count starts again
    assert view.update(NAME, [a]) == ([], [])
    assert view.update(NAME, [a]) == ([], [tb])
    assert view.update(NAME, []) == ([], [])
    assert view.update(NAME, []) == ([], [ta])
    assert view.targets == {}


def test_answers_for_one_name_leave_the_others_targets_alone() -> None:
    view = MembershipView(drop_after=1)
    other = PeerName("crdtstore-peer.crdtstore-eu.svc.cluster.local", 9443)
    view.update(NAME, [("10.0.0.1", 9443)])
    view.update(other, [("10.1.0.1", 9443)])
    assert view.update(other, []) == ([], [Target(other.name, "10.1.0.1", 9443)])
    assert list(view.targets) == [Target(NAME.name, "10.0.0.1", 9443)]


def test_a_target_is_dialed_by_name_and_keyed_by_address() -> None:
    target = Target("peer.ns", "::1", 9443)
    assert target.url(scheme="wss", path="/v1/peer") == "wss://peer.ns:9443/v1/peer"
    assert target.key == "peer.ns@[::1]:9443"


class _Flaky:
    """Answers from a list, raising OSError for a None entry."""

    def __init__(self, answers: list[list[tuple[str, int]] | None]) -> None:
        self.answers = answers

    async def resolve(self, name: PeerName) -> list[tuple[str, int]]:
        answer = self.answers.pop(0)
        if answer is None:
            raise OSError("SERVFAIL")
        return answer


def test_membership_reports_changes_and_survives_a_failing_lookup() -> None:
    resolver = _Flaky([[("10.0.0.1", 1)], None, None, None, [], []])
    membership = Membership([NAME], resolver=resolver, drop_after=2)
    added: list[Target] = []
    removed: list[Target] = []

    async def on_added(t: Target) -> None:
        added.append(t)

    async def on_removed(t: Target) -> None:
        removed.append(t)

    async def rounds() -> None:
        for _ in range(6):
            await membership.resolve_once(on_added, on_removed)

    asyncio.run(rounds())
    assert added == [Target(NAME.name, "10.0.0.1", 1)]
    assert removed == added  # after two empty answers, not after three failed lookups
    assert membership.failures == 3 and membership.resolutions == 6


# Truncation: which peers pin the log (sync.truncation.pinning_peers).


def test_a_member_pins_truncation_even_when_down_and_a_departed_peer_only_for_the_grace() -> None:
    # "b" is a member whatever its links; "gone" left membership at t=100.
    departed = {"gone": 100.0}
    assert pinning_peers(["b"], departed, now=100.0, grace=60.0) == ["b", "gone"]
    assert pinning_peers(["b"], departed, now=159.9, grace=60.0) == ["b", "gone"]
    assert pinning_peers(["b"], departed, now=160.0, grace=60.0) == ["b"]
    assert pinning_peers(["b"], departed, now=10_000.0, grace=60.0) == ["b"]
    assert pinning_peers([], {}, now=0.0, grace=1.0) == []


# Settings.


def test_peer_dns_settings_from_flags_env_and_file(tmp_path: Path) -> None:
    config = resolve(
        {"peer_dns": ["a.ns:9000", "b.ns"], "region_replicas": "3"},
        env={"CRDTSTORE_PEER_DNS_INTERVAL": "2.5", "CRDTSTORE_REMOVED_PEER_GRACE": "30"},
    )
    # No --peer at all, yet 3 replicas in the region: the other two come from the names.
    assert config.peer_dns == ("a.ns:9000", "b.ns")
    assert config.region_replicas == 3 and config.peer_dns_interval == 2.5 and config.removed_peer_grace == 30
    env = resolve({}, env={"CRDTSTORE_PEER_DNS": "a.ns, b.ns,a.ns"})
    assert env.peer_dns == ("a.ns", "b.ns")
    toml = tmp_path / "c.toml"
    toml.write_text('peer_dns = ["c.ns:1"]\npeer_hosts_file = "h"\n', encoding="utf-8")
    from_file = resolve({}, env={}, config_file=toml)
    assert from_file.peer_dns == ("c.ns:1",) and from_file.peer_hosts_file == Path("h")


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        ({"peer_dns": ["not a name"]}, {}),
        ({}, {"CRDTSTORE_PEER_DNS": "a.ns:99999"}),
        ({}, {"CRDTSTORE_PEER_DNS_INTERVAL": "0"}),
        ({}, {"CRDTSTORE_REMOVED_PEER_GRACE": "-1"}),
        ({"region_replicas": "3"}, {}),  # without names, the region's replicas must be configured peers
    ],
)
def test_bad_peer_dns_settings_are_refused(flags: dict[str, object], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        resolve(flags, env=env)


def test_peer_names_over_plaintext_need_insecure_peers() -> None:
    with pytest.raises(ConfigError, match="plaintext peer links to ws://crdtstore-peer.ns"):
        check_peer_transport(ServeConfig(peer_dns=("crdtstore-peer.ns:9443",)), accepts_peers=True)
    check_peer_transport(ServeConfig(peer_dns=("localhost:9443",)), accepts_peers=True)
    check_peer_transport(ServeConfig(peer_dns=("peer.ns",), insecure_peers=True), accepts_peers=True)


def test_start_knows_the_members_before_it_returns() -> None:
    # A node serves once its replicator started: `quorum` must count the members found by then, not 1.
    async def main() -> list[Target]:
        added: list[Target] = []

        async def on_added(t: Target) -> None:
            added.append(t)

        async def on_removed(t: Target) -> None:
            raise AssertionError(t)

        membership = Membership([NAME], resolver=_Flaky([[("10.0.0.1", 1)]]), interval=60.0)
        await membership.start(on_added, on_removed)
        await membership.close()
        return added

    assert asyncio.run(main()) == [Target(NAME.name, "10.0.0.1", 1)]


def test_an_answer_with_too_many_addresses_changes_nothing() -> None:
    flood = [(f"10.0.{i // 256}.{i % 256}", 9443) for i in range(65)]
    resolver = _Flaky([[("10.0.0.1", 1)], flood, flood, [("10.0.0.1", 1)] + flood[:63]])
    membership = Membership([NAME], resolver=resolver, drop_after=1, max_targets=64)
    seen: list[tuple[str, Target]] = []

    async def on_added(t: Target) -> None:
        seen.append(("+", t))

    async def on_removed(t: Target) -> None:
        seen.append(("-", t))

    async def rounds(n: int) -> None:
        for _ in range(n):
            await membership.resolve_once(on_added, on_removed)

    asyncio.run(rounds(3))
    assert seen == [("+", Target(NAME.name, "10.0.0.1", 1))]  # the floods were refused, nothing dropped
    assert membership.failures == 2
    asyncio.run(rounds(1))
    assert len(membership.targets) == 64  # at the bound: taken
