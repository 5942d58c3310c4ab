"""``serve`` refuses plaintext peer links off loopback unless ``--insecure-peers`` (flag, env or TOML)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtstore.cli import main, plan_up
from crdtstore.config import SETTINGS, ConfigError, ServeConfig, check_peer_transport, resolve
from crdtstore.server import build_server_app
from sync.io.wanproxy import WanController

NO_FLAGS = {s.name: None for s in SETTINGS}
SECRET_ENV = {"CRDTSTORE_CLUSTER_SECRET": "s" * 32}


def serve_config(tmp_path: Path, **flags: object) -> ServeConfig:
    return resolve(NO_FLAGS | {"data": str(tmp_path / "d")} | flags, env={})


@pytest.mark.parametrize(
    "url",
    ["ws://10.0.0.2:8080/v1/peer", "ws://eu.example.net/v1/peer", "ws://[2001:db8::1]:8080/v1/peer"],
)
def test_a_plaintext_peer_off_loopback_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="plaintext peer links"):
        build_server_app(serve_config(tmp_path, peers=[url]), env=SECRET_ENV)


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:8080/v1/peer",
        "ws://127.9.9.9:8080/v1/peer",
        "ws://localhost:8080/v1/peer",
        "ws://[::1]:8080/v1/peer",
        "wss://10.0.0.2:9443/v1/peer",  # TLS: fine anywhere
    ],
)
def test_loopback_and_tls_peers_are_accepted(tmp_path: Path, url: str) -> None:
    app = build_server_app(serve_config(tmp_path, peers=[url]), env=SECRET_ENV)
    assert app.state.api.replicator.peer_urls == [url]


def test_a_plaintext_peer_listener_off_loopback_is_refused(tmp_path: Path) -> None:
    # With a cluster secret the node takes peer links on --host: in clear there, unless TLS.
    with pytest.raises(ConfigError, match="accepted in plaintext on 0.0.0.0"):
        build_server_app(serve_config(tmp_path, host="0.0.0.0"), env=SECRET_ENV)
    with pytest.raises(ConfigError, match="accepted in plaintext"):
        build_server_app(serve_config(tmp_path, host="0.0.0.0", peer_port="9443"), env=SECRET_ENV)
    # Without a secret it takes no peer links: nothing to refuse.
    assert build_server_app(serve_config(tmp_path, host="0.0.0.0"), env={}).state.api.replicator is None
    # With a certificate, peer links come over TLS.
    tls = ServeConfig(host="0.0.0.0", certfile=Path("c.pem"), keyfile=Path("k.pem"))
    check_peer_transport(tls, accepts_peers=True)


@pytest.mark.parametrize(
    ("flags", "env", "toml"),
    [
        ({"insecure_peers": True}, {}, None),
        ({}, {"CRDTSTORE_INSECURE_PEERS": "1"}, None),
        ({}, {}, "insecure_peers = true\n"),
        ({}, {}, "insecure-peers = true\n"),
    ],
    ids=["flag", "env", "toml", "toml-dashes"],
)
def test_insecure_peers_allows_both_in_every_spelling(
    tmp_path: Path, flags: dict[str, object], env: dict[str, str], toml: str | None
) -> None:
    path = None
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
    base = {"data": str(tmp_path / "d"), "host": "0.0.0.0", "peers": ["ws://10.0.0.2:8080/v1/peer"]}
    config = resolve(NO_FLAGS | base | flags, env=env, config_file=path)
    assert config.insecure_peers is True
    app = build_server_app(config, env=SECRET_ENV)
    assert app.state.api.replicator.peer_urls == ["ws://10.0.0.2:8080/v1/peer"]
    # ...and it is off by default.
    assert resolve(NO_FLAGS | base, env={}).insecure_peers is False


def test_serve_exits_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRDTSTORE_CLUSTER_SECRET", "s" * 32)

    def must_not_serve(*args: object, **kwargs: object) -> int:
        raise AssertionError("serve started servers instead of refusing")

    monkeypatch.setattr("crdtstore.cli.run_servers", must_not_serve)
    code = main(["serve", "--peer", "ws://10.0.0.2:8080/v1/peer", "--data", str(tmp_path / "d")])
    assert code == 2
    err = capsys.readouterr().err
    assert "plaintext peer links to ws://10.0.0.2:8080/v1/peer" in err and "--insecure-peers" in err
    assert not (tmp_path / "d").exists()  # refused before the node opened anything


def test_up_is_unaffected(tmp_path: Path) -> None:
    # `crdtstore up` runs every region and every link on loopback.
    wan = WanController(("eu", "us", "ap"))
    wan.bind()
    try:
        for plan in plan_up(tmp_path, host="127.0.0.1", base_port=0, regions=3, wan=wan):
            assert plan.peers and not plan.insecure_peers
            check_peer_transport(plan, accepts_peers=True)
    finally:
        for link in wan.links.values():
            if link._sock is not None:
                link._sock.close()
