"""Mutual TLS on peer links (``--peer-ca``): real nodes on 127.0.0.1 with certificates made by ``openssl``.

The PKI is generated per test in ``tmp_path``: a cluster CA, one certificate
per node for ``IP:127.0.0.1`` (server and client use), and a rogue CA with a
certificate of its own, identical in shape, that the cluster never trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from crdtstore.cli import main
from crdtstore.config import ConfigError, ServeConfig, peer_ssl_context, resolve
from crdtstore.server import build_server_app, server_configs
from sync.io.transport import TransportSettings, dial

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command to make certificates"
)

TOKEN = "mtls-test-token-0123456789abcdef"
SECRET = "mtls-test-secret-0123456789abcdef"
NO_FLAGS: dict[str, Any] = {}

# A leaf both sides accept: the server checks clientAuth, the client serverAuth and the IP in the peer URL.
LEAF_EXTENSIONS = """\
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (P-256, two days); returns (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN={name}"),
        cwd=directory,
    )
    return cert, key


def make_leaf(directory: Path, name: str, ca: tuple[Path, Path], serial: int) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by ``ca``; returns (certificate, key)."""
    cert, key, csr, ext = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(LEAF_EXTENSIONS, encoding="utf-8")
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", key.name, "-out", csr.name, "-subj", f"/CN={name}"),
        cwd=directory,
    )
    _openssl(
        *("x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1])),
        *("-set_serial", str(serial), "-days", "2", "-extfile", ext.name, "-out", cert.name),
        cwd=directory,
    )
    return cert, key


@dataclasses.dataclass
class Pki:
    ca: Path
    nodes: list[tuple[Path, Path]]
    rogue_ca: Path
    rogue: tuple[Path, Path]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = make_ca(directory, "cluster-ca")
    rogue_ca = make_ca(directory, "rogue-ca")
    nodes = [make_leaf(directory, f"node{i}", ca, serial=10 + i) for i in range(2)]
    return Pki(ca=ca[0], nodes=nodes, rogue_ca=rogue_ca[0], rogue=make_leaf(directory, "rogue", rogue_ca, serial=99))


def node_config(
    tmp_path: Path, i: int, *, cert: tuple[Path, Path], ca: Path, peer_port: int, own_peer_port: int | None = None
) -> ServeConfig:
    """Node ``i`` dialing its peer's listener at ``peer_port``; ``own_peer_port``: its own ``--peer-port``."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} readwrite\n", encoding="utf-8")
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    return ServeConfig(
        region=f"r{i}",
        data=tmp_path / f"r{i}",
        no_sync=True,
        tokens=tokens,
        certfile=cert[0],
        keyfile=cert[1],
        peer_ca=ca,
        peers=(f"wss://127.0.0.1:{peer_port}/v1/peer",),
        cluster_secret_file=secret,
        access_log=False,
        peer_backoff_max=0.5,
        peer_port=own_peer_port,
    )


def client_context(ca: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


@contextlib.asynccontextmanager
async def serve_nodes(configs: list[ServeConfig], socks: list[list[socket.socket]]) -> AsyncIterator[list[Any]]:
    """Serve each config's listeners on its bound sockets (the CLI's own apps and uvicorn settings).

    Yields the replicators.
    """
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    replicators = []
    try:
        for config, node_socks in zip(configs, socks, strict=True):
            app = build_server_app(config, env={})
            replicators.append(app.state.api.replicator)
            for listener, sock in zip(server_configs(app, config), node_socks, strict=True):
                server = uvicorn.Server(listener)
                server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
                servers.append((server, asyncio.create_task(server.serve(sockets=[sock]))))
        for _ in range(500):  # bounded wait for both lifespans
            if all(server.started for server, _ in servers):
                break
            await asyncio.sleep(0.02)
        assert all(server.started for server, _ in servers), "servers did not start"
        yield replicators
    finally:
        for server, _ in servers:
            server.should_exit = True
        await asyncio.wait_for(asyncio.gather(*(task for _, task in servers)), 20)


def tls_probe(port: int, context: ssl.SSLContext) -> bytes:
    """GET /healthz over a blocking TLS socket; returns the first bytes of the answer (b"": closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return tls.recv(64)


async def both_linked(replicators: list[Any]) -> None:
    """Wait (bounded) until the two nodes' links authenticated (HMAC on top of TLS), and check who is linked."""
    for _ in range(500):
        if replicators[0].peers() and replicators[1].peers():
            break
        await asyncio.sleep(0.02)
    assert replicators[0].peers() == [replicators[1].node.storage.identity.base]
    assert replicators[1].peers() == [replicators[0].node.storage.identity.base]


async def write_all_read_one(client: httpx.AsyncClient, urls: list[str], value: str) -> None:
    """Write with w=all on the first node; the second then holds it, so a local read there sees it."""
    ops = [{"op": "set", "path": ["greeting"], "value": value}]
    response = await client.post(f"{urls[0]}/v1/docs/d?w=all", json={"ops": ops})
    assert response.status_code == 200, response.text
    response = await client.get(f"{urls[1]}/v1/docs/d?r=one")
    assert response.status_code == 200, response.text
    assert response.json()["value"] == {"greeting": value}


def bound_sockets(count: int) -> list[socket.socket]:
    return [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]


def test_two_nodes_with_mutual_tls_replicate(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        socks = bound_sockets(2)
        ports = [s.getsockname()[1] for s in socks]
        configs = [node_config(tmp_path, i, cert=pki.nodes[i], ca=pki.ca, peer_port=ports[1 - i]) for i in range(2)]
        urls = [f"https://127.0.0.1:{p}" for p in ports]
        try:
            async with serve_nodes(configs, [[sock] for sock in socks]) as replicators:
                # An API client needs a certificate from the cluster CA as well: it is one listener.
                verify = client_context(pki.ca, pki.nodes[0])
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with httpx.AsyncClient(verify=verify, headers=headers, timeout=10) as client:
                    await both_linked(replicators)
                    await write_all_read_one(client, urls, "over mTLS")
                    assert replicators[1].stats["deltas_applied"] >= 1
                # Without a client certificate the TLS handshake itself fails; no HTTP status is ever sent.
                async with httpx.AsyncClient(verify=client_context(pki.ca, None), timeout=10) as anonymous:
                    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                        await anonymous.get(f"{urls[0]}/healthz")
        finally:
            for sock in socks:
                sock.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=90))


def test_a_peer_with_a_certificate_from_another_ca_is_refused_and_nothing_replicates(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        socks = bound_sockets(2)
        ports = [s.getsockname()[1] for s in socks]
        # r1 holds the cluster secret and trusts the cluster CA, but its own certificate is the rogue CA's.
        configs = [
            node_config(tmp_path, 0, cert=pki.nodes[0], ca=pki.ca, peer_port=ports[1]),
            node_config(tmp_path, 1, cert=pki.rogue, ca=pki.ca, peer_port=ports[0]),
        ]
        try:
            async with serve_nodes(configs, [[sock] for sock in socks]) as replicators:
                # The rogue certificate is refused by TLS, before any HTTP (or HMAC) exchange. Under TLS 1.2
                # the server checks it inside the handshake, so the handshake itself fails; under TLS 1.3
                # (the client's side finishes first) the connection ends without a byte of HTTP. The same
                # probes with a cluster certificate get an answer, so the probe itself works.
                rogue, member = client_context(pki.ca, pki.rogue), client_context(pki.ca, pki.nodes[1])
                for context in (rogue, member):
                    context.maximum_version = ssl.TLSVersion.TLSv1_2
                with pytest.raises(ssl.SSLError):
                    await asyncio.to_thread(tls_probe, ports[0], rogue)
                assert (await asyncio.to_thread(tls_probe, ports[0], member)).startswith(b"HTTP/1.1 200")
                rogue, member = client_context(pki.ca, pki.rogue), client_context(pki.ca, pki.nodes[1])
                assert await asyncio.to_thread(tls_probe, ports[0], rogue) == b""
                assert (await asyncio.to_thread(tls_probe, ports[0], member)).startswith(b"HTTP/1.1 200")
                await replicators[0].node.apply("from-r0", [{"op": "set", "path": ["x"], "value": 0}])
                await replicators[1].node.apply("from-r1", [{"op": "set", "path": ["x"], "value": 1}])
                # Bounded: let each dialer fail a few times (both directions: r0 rejects r1's client
                # certificate, and r1's server certificate fails r0's verification).
                dialers = [rep._dialers[0] for rep in replicators]
                for _ in range(1000):
                    if all(d.attempts >= 3 for d in dialers):
                        break
                    await asyncio.sleep(0.02)
                assert all(d.attempts >= 3 for d in dialers)
                assert [d.sessions for d in dialers] == [0, 0]  # no websocket link ever opened
                for rep in replicators:
                    assert rep.peers() == []
                    assert rep.stats["messages_in"] == 0
                assert await replicators[0].node.read_state("from-r1") is None
                assert await replicators[1].node.read_state("from-r0") is None
                # r0 could tell that r1's server certificate did not verify, and said so.
                warnings = [r for r in caplog.records if r.getMessage() == "peer TLS handshake failed"]
                assert configs[0].peers[0] in [getattr(r, "peer", None) for r in warnings]
        finally:
            for sock in socks:
                sock.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=90))


def test_with_a_peer_port_peers_use_mutual_tls_there_and_api_clients_need_no_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    async def scenario() -> None:
        # Per node: its API listener, then its peer listener.
        socks = [bound_sockets(2) for _ in range(2)]
        api_ports = [node[0].getsockname()[1] for node in socks]
        peer_ports = [node[1].getsockname()[1] for node in socks]
        configs = [
            node_config(
                tmp_path, i, cert=pki.nodes[i], ca=pki.ca, peer_port=peer_ports[1 - i], own_peer_port=peer_ports[i]
            )
            for i in range(2)
        ]
        urls = [f"https://127.0.0.1:{p}" for p in api_ports]
        try:
            async with serve_nodes(configs, socks) as replicators:
                await both_linked(replicators)
                # An API client verifies the server against the CA but shows no certificate of its own.
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with httpx.AsyncClient(
                    verify=client_context(pki.ca, None), headers=headers, timeout=10
                ) as client:
                    await write_all_read_one(client, urls, "peers apart")
                # The API listener takes no peer links: a peer cannot reach the node past the mTLS one.
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(f"wss://127.0.0.1:{api_ports[0]}/v1/peer", ssl=client_context(pki.ca, None)):
                        pass
                assert refused.value.response.status_code == 403
                assert replicators[1].stats["deltas_applied"] >= 1
                # The peer listener refuses a client without a certificate from the CA in the handshake
                # (TLS 1.2: the server checks it there), and answers one with a cluster certificate.
                anonymous, member = client_context(pki.ca, None), client_context(pki.ca, pki.nodes[1])
                for context in (anonymous, member):
                    context.maximum_version = ssl.TLSVersion.TLSv1_2
                with pytest.raises(ssl.SSLError):
                    await asyncio.to_thread(tls_probe, peer_ports[0], anonymous)
                assert (await asyncio.to_thread(tls_probe, peer_ports[0], member)).startswith(b"HTTP/1.1 200")
        finally:
            for node in socks:
                for sock in node:
                    sock.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=90))


def test_peer_port_settings_and_misconfiguration(tmp_path: Path, pki: Pki) -> None:
    assert resolve({"peer_port": "9443"}, env={}).peer_port == 9443
    assert resolve(NO_FLAGS, env={"CRDTSTORE_PEER_PORT": "9443"}).peer_port == 9443
    assert resolve(NO_FLAGS, env={}).peer_port is None
    with pytest.raises(ConfigError, match="--peer-port"):
        resolve({"peer_port": "70000"}, env={})
    with pytest.raises(ConfigError, match="--peer-port must differ from --port"):
        resolve({"peer_port": "8080", "port": "8080"}, env={})
    # Without a cluster secret nobody could authenticate on the peer listener.
    data = tmp_path / "never-created"
    with pytest.raises(ConfigError, match="--peer-port needs a cluster secret"):
        build_server_app(ServeConfig(data=data, peer_port=9443), env={})
    assert not data.exists()


def test_peer_ca_settings_and_misconfiguration(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.nodes[0]
    tls = {"certfile": str(cert), "keyfile": str(key)}
    config = resolve({"peer_ca": str(pki.ca), "peers": ["wss://127.0.0.1:1/v1/peer"]} | tls, env={})
    assert config.peer_ca == pki.ca
    env = {"CRDTSTORE_PEER_CA": str(pki.ca), "CRDTSTORE_CERTFILE": str(cert), "CRDTSTORE_KEYFILE": str(key)}
    assert resolve(NO_FLAGS, env=env).peer_ca == pki.ca
    toml = tmp_path / "serve.toml"
    toml.write_text(f'peer_ca = "{pki.ca}"\ncertfile = "{cert}"\nkeyfile = "{key}"\n', encoding="utf-8")
    assert resolve(NO_FLAGS, env={}, config_file=toml).peer_ca == pki.ca
    context = peer_ssl_context(config)
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert peer_ssl_context(resolve(tls, env={})) is None

    with pytest.raises(ConfigError, match="--peer-ca needs --certfile"):
        resolve({"peer_ca": str(pki.ca)}, env={})
    with pytest.raises(ConfigError, match="wss://"):
        resolve({"peer_ca": str(pki.ca), "peers": ["ws://127.0.0.1:1/v1/peer"]} | tls, env={})

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n", encoding="utf-8")
    bad = [
        (dataclasses.replace(config, peer_ca=tmp_path / "missing.pem"), "--peer-ca"),
        (dataclasses.replace(config, peer_ca=not_pem), "--peer-ca"),
        (dataclasses.replace(config, keyfile=pki.rogue[1]), "--certfile"),  # a key that is not the cert's
    ]
    for bad_config, where in bad:
        with pytest.raises(ConfigError, match=where):
            peer_ssl_context(bad_config)
        # The CLI's app fails the same way, before the node creates its data directory.
        data = tmp_path / "never-created"
        with pytest.raises(ConfigError, match=where):
            build_server_app(dataclasses.replace(bad_config, data=data), env={})
        assert not data.exists()


def test_serve_reports_peer_ca_without_a_certificate(capsys: pytest.CaptureFixture[str], pki: Pki) -> None:
    assert main(["serve", "--peer-ca", str(pki.ca)]) == 2
    assert "--peer-ca needs --certfile and --keyfile" in capsys.readouterr().err


def test_a_tls_context_refuses_a_plain_ws_url() -> None:
    settings = TransportSettings(ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    with pytest.raises(ValueError, match="wss://"):
        asyncio.run(dial("ws://127.0.0.1:9/v1/peer", settings=settings))
