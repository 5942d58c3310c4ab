"""Serving region nodes: the Starlette apps and uvicorn servers of ``crdtstore serve``, and the loop that runs them.

:func:`build_server_app` turns one :class:`~crdtstore.config.ServeConfig` into
its region (node, replicator) and the app that serves it;
:func:`server_configs` gives the uvicorn settings of its listeners (the API,
and with ``--peer-port`` a listener for peer links alone). Servers are driven
by :func:`run_servers`: one event loop, one set of signal handlers for all of
them (uvicorn's per-server handlers would override each other), and sockets
bound before startup so that ``--port 0`` works and the actual address is
logged as ``listening``. Each region node's :class:`~crdtstore.region.Region`
starts before its servers serve and closes after they stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Literal

import uvicorn
from starlette.applications import Starlette

from crdtstore.api.app import build_app, build_peer_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenFileError, TokenStore
from crdtstore.api.connections import ConnectionLimits, guarded_protocol
from crdtstore.api.limits import Limits
from crdtstore.api.peerlink import gated_protocol
from crdtstore.api.versions import version_key
from crdtstore.config import (
    ConfigError,
    ServeConfig,
    accepted_secrets,
    check_peer_transport,
    cluster_secret,
    peer_ssl_context,
)
from crdtstore.membership import HostsFileResolver, Membership, Resolver, SystemResolver, parse_peer_name
from crdtstore.node import Node, NodeConfig
from crdtstore.region import Region
from crdtstore.replicator import Replicator, ReplicatorSettings
from sync.config import SyncConfig
from sync.io.transport import TransportSettings
from sync.io.wanproxy import WanController

__all__ = [
    "PEER_PATH",
    "bind",
    "build_server_app",
    "connection_limits",
    "run_servers",
    "server_configs",
    "transport_settings",
    "url_host",
    "uvicorn_config",
]

logger = logging.getLogger("crdtstore.server")

PEER_PATH = "/v1/peer"
START_FREEZE_WAIT = 300.0  # seconds run_servers waits for its servers to start before it freezes the GC


# Public functions: building servers from settings.


def build_server_app(config: ServeConfig, *, env: Mapping[str, str], wan: WanController | None = None) -> Starlette:
    """The app of one node as ``config`` describes it; its region (``app.state.api.region``) is not started.

    A node gets a replicator when a cluster secret is configured (it then
    accepts peers on ``/v1/peer``: on the API listener, or under
    ``--peer-port`` on the listener :func:`server_configs` adds for them) and
    dials every ``peers`` URL.

    Raises:
        ConfigError: Unusable tokens, secret or TLS files (checked before the node opens its data).
    """
    # First: it loads the --peer-ca and certificate files, so a bad one fails before anything opens.
    transport = transport_settings(config)
    try:
        tokens = TokenStore.load(config.tokens, env=env)
    except (OSError, TokenFileError) as exc:
        raise ConfigError(f"tokens: {exc}") from None
    anonymous = Scope.parse(config.anonymous) if config.anonymous else None
    if not len(tokens) and anonymous is None:
        logger.warning("no tokens configured: every request except /healthz and /readyz will get 401")
    node = Node(
        NodeConfig(
            region=config.region,
            replica_name=config.replica_name,
            data_dir=config.data,
            sync=not config.no_sync,
            max_map_size=config.max_map_size,
            max_document_bytes=config.max_document_bytes,
            max_sequence_length=config.max_sequence_length,
        )
    )
    auth = AuthPolicy(tokens=tokens, public_metrics=config.public_metrics, anonymous=anonymous)
    secret = cluster_secret(config, env=env)
    if (config.peers or config.peer_dns) and secret is None:
        raise ConfigError("--peer needs a cluster secret (--cluster-secret-file or CRDTSTORE_CLUSTER_SECRET)")
    if config.peer_port is not None and secret is None:
        raise ConfigError("--peer-port needs a cluster secret (--cluster-secret-file or CRDTSTORE_CLUSTER_SECRET)")
    check_peer_transport(config, accepts_peers=secret is not None)
    replicator = None
    if secret is not None:
        replicator = Replicator(
            node,
            secret=secret,
            accepted_secrets=accepted_secrets(config),
            peers=config.peers,
            region=config.region,
            region_replicas=config.region_replicas,
            membership=membership(config),
            peer_path=PEER_PATH,
            transport=transport,
            sync_config=SyncConfig(anti_entropy_interval=config.anti_entropy_interval),
            settings=ReplicatorSettings(
                quorum_timeout=config.quorum_timeout, removed_peer_grace=config.removed_peer_grace
            ),
        )
    return build_app(
        Region(node, replicator=replicator),
        auth=auth,
        limits=Limits(max_body_bytes=config.max_body_bytes, max_batch_docs=config.max_batch_docs),
        replicator=replicator,
        wan=wan,
        peer_links=config.peer_port is None,
        version_key=version_key(secret=secret, data_dir=config.data),
    )


def membership(config: ServeConfig) -> Membership | None:
    """Peers found by ``--peer-dns`` names (on ``--peer-hosts-file`` if given, else DNS), or None without any."""
    if not config.peer_dns:
        return None
    port = config.peer_port or config.port
    names = [parse_peer_name(name, default_port=port) for name in config.peer_dns]
    resolver: Resolver = (
        SystemResolver() if config.peer_hosts_file is None else HostsFileResolver(config.peer_hosts_file)
    )
    return Membership(names, resolver=resolver, interval=config.peer_dns_interval)


def transport_settings(config: ServeConfig) -> TransportSettings:
    """Peer link settings; under ``--peer-ca`` with the mutual-TLS client context (ConfigError if unusable)."""
    return TransportSettings(
        max_size=config.peer_max_size,
        ping_interval=config.peer_ping_interval,
        ping_timeout=config.peer_ping_timeout,
        backoff_max=config.peer_backoff_max,
        ssl_context=peer_ssl_context(config),
    )


def uvicorn_config(app: Starlette, config: ServeConfig) -> uvicorn.Config:
    """Uvicorn's settings for the API listener; its own limits rather than hand-written ones."""
    # Peer links come in here unless --peer-port gives them a listener of their own.
    peers_here = config.peer_port is None
    # --peer-ca: the TLS handshake itself refuses a client without a certificate from that CA. On the
    # one listener of a node without --peer-port, API clients need such a certificate too.
    mutual = peers_here and config.peer_ca is not None
    return _listener(
        app,
        config,
        port=config.port,
        mutual_tls=mutual,
        ws_max_size=config.ws_max_size,
        lifespan="on",
    )


def server_configs(app: Starlette, config: ServeConfig) -> list[uvicorn.Config]:
    """The listeners of one node: the API's, then under ``--peer-port`` the one for peer links.

    The peer listener serves ``app``'s node and replicator (see
    :func:`crdtstore.api.app.build_peer_app`); under ``--peer-ca`` it alone
    asks clients for certificates, so API clients need none.
    """
    configs = [uvicorn_config(app, config)]
    if config.peer_port is not None:
        peer = _listener(
            build_peer_app(app),
            config,
            port=config.peer_port,
            mutual_tls=config.peer_ca is not None,
            ws_max_size=config.peer_max_size,
            lifespan="off",  # the region starts and closes the node (served alone: the API app's lifespan)
        )
        configs.append(peer)
    return configs


def _listener(
    app: Starlette,
    config: ServeConfig,
    *,
    port: int,
    mutual_tls: bool,
    ws_max_size: int,
    lifespan: Literal["on", "off"],
) -> uvicorn.Config:
    # Peer links get 4 KiB messages until the peer authenticates, then peer_max_size; API websockets
    # ws_max_size (see crdtstore.api.peerlink).
    ws = gated_protocol(peer_max_size=config.peer_max_size)
    return uvicorn.Config(
        app,
        host=config.host,
        port=port,
        ssl_certfile=config.certfile,
        ssl_keyfile=config.keyfile,
        ssl_ca_certs=config.peer_ca if mutual_tls else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if mutual_tls else ssl.CERT_NONE,
        # Our protocol class, not limit_concurrency: that one answers everyone, /healthz and peers included,
        # with a plain-text 503 once idle sockets fill it (crdtstore.api.connections).
        http=guarded_protocol(connection_limits(config)),
        timeout_keep_alive=config.timeout_keep_alive,
        ws_max_size=ws_max_size,
        ws=ws,
        ws_ping_interval=config.peer_ping_interval,
        ws_ping_timeout=config.peer_ping_timeout,
        access_log=config.access_log,
        log_level=config.log_level,
        log_config=None,  # keep our JSON logging (crdtstore.logs)
        lifespan=lifespan,
        server_header=False,
        proxy_headers=False,
    )


def connection_limits(config: ServeConfig) -> ConnectionLimits:
    """Deadlines and the connection cap of one listener."""
    return ConnectionLimits(
        max_connections=config.max_connections,
        reserve=config.max_connections // 8,
        header_timeout=config.timeout_request_headers,
        body_timeout=config.timeout_request_body,
    )


class _GroupServer(uvicorn.Server):
    """A uvicorn server whose signals :func:`run_servers` handles for the whole group."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def run_servers(
    configs: Sequence[uvicorn.Config],
    *,
    announce: Callable[[list[str]], None] | None = None,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Serve every config until SIGINT/SIGTERM; returns the process exit code.

    The servers of one region (those whose app is a :func:`crdtstore.api.app.build_app`
    or :func:`~crdtstore.api.app.build_peer_app` of it) are served by
    :meth:`Region.serve <crdtstore.region.Region.serve>`: the region starts
    first and closes after they stopped. A region that fails to start stops
    every server, and the exit code is 3, as for a failed uvicorn startup.

    Args:
        configs: One uvicorn config per server.
        announce: Called with the servers' URLs once their sockets are bound (before startup).
        on_start: Awaited in the event loop before the regions and servers start (``up`` starts its WAN here).
        on_stop: Awaited after every server stopped and every region closed.
    """
    if not configs:
        return 0
    servers = [_GroupServer(config) for config in configs]
    sockets = [bind(config.host, config.port) for config in configs]
    failed: list[BaseException] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                # A second signal skips the graceful drain, as in uvicorn.
                server.force_exit = server.should_exit
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        freeze: asyncio.Task[None] | None = None
        try:
            if on_start is not None:
                await on_start()
            freeze = asyncio.create_task(_freeze_once_started(servers))

            async def serve_region(region: Region, group: list[tuple[uvicorn.Server, socket.socket]]) -> None:
                try:
                    await region.serve([s for s, _ in group], [sock for _, sock in group])
                except Exception as exc:
                    if any(s.started for s, _ in group):
                        raise
                    logger.error("region failed to start", exc_info=exc)
                    failed.append(exc)
                    stop()  # the others stop too: a process serves all its regions or none

            groups = _by_region(servers, sockets)
            await asyncio.gather(
                *(serve_region(region, group) for region, group in groups.items() if region is not None),
                *(server.serve(sockets=[sock]) for server, sock in groups.get(None, [])),
            )
        finally:
            if freeze is not None:
                freeze.cancel()
            if on_stop is not None:
                await on_stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    urls = []
    for config, sock in zip(configs, sockets, strict=True):
        host, port = sock.getsockname()[:2]
        urls.append(f"{'https' if config.is_ssl else 'http'}://{url_host(host)}:{port}")
        logger.info("listening", extra={"url": urls[-1], "port": port})
    if announce is not None:
        announce(urls)
    try:
        with asyncio.Runner(loop_factory=configs[0].get_loop_factory()) as runner:
            runner.run(main())
    except SystemExit as exc:  # uvicorn exits this way when a lifespan startup fails
        return int(exc.code or 0)
    finally:
        for sock in sockets:
            sock.close()
    return 0 if not failed and all(server.started for server in servers) else 3


def _by_region(
    servers: Sequence[uvicorn.Server], sockets: Sequence[socket.socket]
) -> dict[Region | None, list[tuple[uvicorn.Server, socket.socket]]]:
    """The servers (with their sockets) of each region, in order; None: servers of apps without one."""
    groups: dict[Region | None, list[tuple[uvicorn.Server, socket.socket]]] = {}
    for server, sock in zip(servers, sockets, strict=True):
        api = getattr(getattr(server.config.app, "state", None), "api", None)
        region = getattr(api, "region", None)
        groups.setdefault(region if isinstance(region, Region) else None, []).append((server, sock))
    return groups


async def _freeze_once_started(servers: Sequence[uvicorn.Server]) -> None:
    """Once every server is up, move the objects of start-up out of the garbage collector's sight.

    Modules, the app, the node: tens of thousands of objects that live as long as
    the process. Left tracked, every full collection walks them all, and that
    pause (tens of milliseconds on a busy machine, every few seconds under a
    thousand writes a second) stops the event loop, and with it every request
    and replicated delta in flight. Frozen (:func:`gc.freeze`), they are never
    walked again; a full collection only walks what came after.
    """
    for _ in range(int(START_FREEZE_WAIT / 0.05)):  # bounded: a server that never starts is reported elsewhere
        if all(server.started for server in servers):
            break
        await asyncio.sleep(0.05)
    else:
        return
    gc.collect()  # garbage of start-up is freed, not frozen
    gc.freeze()


def url_host(host: str) -> str:
    """``host`` as it stands in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
