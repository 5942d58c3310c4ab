"""The ``crdtstore`` command: ``serve`` one region node, or bring a local setup ``up``.

``crdtstore serve --region eu --data ./eu --port 8080 --tokens tokens.txt``
runs one node; every flag also comes from ``CRDTSTORE_*`` variables or a
TOML file (see :mod:`crdtstore.config`).

``crdtstore up [--regions N] [--latency 80ms] [--jitter 10ms]`` is the
embedded default: N regions (3 by default, named by :data:`UP_REGIONS`), each
a ``crdtstore serve`` process of its own on loopback with its own port, data
directory and log file under ``./data`` (:mod:`crdtstore.supervisor`), a
read-write and an admin token and a cluster secret generated on the first
run (mode 0600). Every region dials every other one through an emulated WAN
(:mod:`sync.io.wanproxy`) that stays in the ``up`` process and adds the one-way
latency and jitter; its admin API (:mod:`crdtstore.wanadmin`) cuts and heals
links. ``crdtstore status``, ``partition A B``, ``isolate A`` and ``heal``
work against any running cluster over HTTP (:mod:`crdtstore.clusterctl`):
given node URLs, a WAN admin URL and a token, or else from the plan ``up``
records in ``./data/up.json``.

Servers are uvicorn servers driven by :func:`run_servers`: one event loop,
one set of signal handlers for all of them (uvicorn's per-server handlers
would override each other), and sockets bound before startup so that
``--port 0`` works and the actual address is logged as ``listening``. Each
region node's :class:`~crdtstore.region.Region` starts before its servers
serve and closes after they stopped (see :mod:`crdtstore.region`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import uvicorn
from starlette.applications import Starlette

from crdtstore import __version__, clusterctl
from crdtstore.api.app import build_app, build_peer_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenFileError, TokenStore, generate_token, parse_token_file
from crdtstore.api.connections import ConnectionLimits, guarded_protocol
from crdtstore.api.limits import Limits
from crdtstore.api.peerlink import gated_protocol
from crdtstore.api.versions import version_key
from crdtstore.clusterctl import load_plan, pick_token
from crdtstore.config import (
    SETTINGS,
    ConfigError,
    ServeConfig,
    check_peer_transport,
    cluster_secret,
    peer_ssl_context,
    resolve,
)
from crdtstore.logs import JsonFormatter, configure_logging
from crdtstore.node import Node, NodeConfig
from crdtstore.region import Region
from crdtstore.replicator import Replicator, ReplicatorSettings
from crdtstore.supervisor import Child, Supervisor, write_plan
from crdtstore.wanadmin import build_wan_admin_app
from sync.config import SyncConfig
from sync.io.transport import TransportSettings
from sync.io.wanproxy import WanController

__all__ = [
    "UP_REGIONS",
    "bind",
    "build_parser",
    "build_server_app",
    "ensure_admin_token",
    "ensure_secret",
    "ensure_token",
    "main",
    "parse_duration",
    "plan_up",
    "run_servers",
    "server_configs",
    "transport_settings",
    "uvicorn_config",
]

logger = logging.getLogger("crdtstore.cli")

UP_REGIONS: tuple[str, ...] = ("us", "eu", "ap", "sa", "af", "me", "oc", "an")
"""Names of the regions ``up`` starts (the first ``--regions`` of them), on consecutive ports from ``--port``."""

UP_DEFAULT_REGIONS = 3
UP_TOKEN_FILE = "tokens"
UP_SECRET_FILE = "cluster-secret"
UP_STATE_FILE = "up.json"
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
            data_dir=config.data,
            sync=not config.no_sync,
            max_map_size=config.max_map_size,
            max_document_bytes=config.max_document_bytes,
            max_sequence_length=config.max_sequence_length,
        )
    )
    auth = AuthPolicy(tokens=tokens, public_metrics=config.public_metrics, anonymous=anonymous)
    secret = cluster_secret(config, env=env)
    if config.peers and secret is None:
        raise ConfigError("--peer needs a cluster secret (--cluster-secret-file or CRDTSTORE_CLUSTER_SECRET)")
    if config.peer_port is not None and secret is None:
        raise ConfigError("--peer-port needs a cluster secret (--cluster-secret-file or CRDTSTORE_CLUSTER_SECRET)")
    check_peer_transport(config, accepts_peers=secret is not None)
    replicator = None
    if secret is not None:
        replicator = Replicator(
            node,
            secret=secret,
            peers=config.peers,
            region=config.region,
            transport=transport,
            sync_config=SyncConfig(anti_entropy_interval=config.anti_entropy_interval),
            settings=ReplicatorSettings(quorum_timeout=config.quorum_timeout),
        )
    return build_app(
        Region(node, replicator=replicator),
        auth=auth,
        limits=Limits(max_body_bytes=config.max_body_bytes),
        replicator=replicator,
        wan=wan,
        peer_links=config.peer_port is None,
        version_key=version_key(secret=secret, data_dir=config.data),
    )


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
        urls.append(f"{'https' if config.is_ssl else 'http'}://{_url_host(host)}:{port}")
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


def plan_up(
    root: Path, *, host: str, base_port: int, regions: int = UP_DEFAULT_REGIONS, wan: WanController | None = None
) -> list[ServeConfig]:
    """The nodes ``up`` runs: the first ``regions`` of :data:`UP_REGIONS`, consecutive ports, one directory each.

    With ``wan``, each node is clustered and dials every other region through it.
    """
    if not 1 <= regions <= len(UP_REGIONS):
        raise ConfigError(f"--regions is 1 to {len(UP_REGIONS)}")
    return [
        ServeConfig(
            region=region,
            data=root / region,
            host=host,
            port=base_port + i if base_port else 0,  # port 0: each node gets a free port of its own
            tokens=root / UP_TOKEN_FILE,
            cluster_secret_file=root / UP_SECRET_FILE if wan is not None else None,
            peers=tuple(wan.peers_of(region, path=PEER_PATH)) if wan is not None else (),
            # Loopback links: detect a cut quickly and reconnect quickly.
            peer_ping_interval=2.0,
            peer_ping_timeout=4.0,
            peer_backoff_max=2.0,
        )
        for i, region in enumerate(UP_REGIONS[:regions])
    ]


def ensure_secret(root: Path) -> None:
    """The cluster secret of ``up``; generated (mode 0600) on the first run."""
    path = root / UP_SECRET_FILE
    root.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(generate_token() + "\n")


def parse_duration(text: str) -> float:
    """``80ms``, ``0.08s``, ``0.08`` (seconds) → seconds."""
    raw = text.strip().lower()
    try:
        if raw.endswith("ms"):
            value = float(raw[:-2]) / 1000
        elif raw.endswith("s"):
            value = float(raw[:-1])
        else:
            value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 80ms)") from None
    if not 0 <= value < 60:
        raise argparse.ArgumentTypeError(f"a duration from 0 to 60 s, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port")
    return port


def ensure_admin_token(root: Path) -> str:
    """The admin token of ``up``; added (mode 0600 kept) to its token file when the file has none.

    A token file from before the admin scope keeps its tokens: the new one is appended.
    """
    path = root / UP_TOKEN_FILE
    for token, scope in parse_token_file(path.read_text(encoding="utf-8"), source=str(path)).items():
        if scope is Scope.ADMIN:
            return token
    token = generate_token()
    with path.open("a", encoding="utf-8") as file:
        file.write(f"{token} admin\n")
    return token


def ensure_token(root: Path) -> str:
    """The read-write token of ``up``; generated and saved (mode 0600) on the first run."""
    path = root / UP_TOKEN_FILE
    root.mkdir(parents=True, exist_ok=True)
    if path.exists():
        for token, scope in parse_token_file(path.read_text(encoding="utf-8"), source=str(path)).items():
            if scope is Scope.READWRITE:
                return token
        raise ConfigError(f"{path} holds no readwrite token")
    token = generate_token()
    # O_EXCL + mode at creation: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(f"# generated by crdtstore up\n{token} readwrite\n")
    return token


# Private functions: the commands.


def _serve(args: argparse.Namespace) -> int:
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    config = resolve(flags, env=os.environ, config_file=args.config)
    configure_logging(config.log_level)
    app = build_server_app(config, env=os.environ)
    return run_servers(server_configs(app, config))


def _up(args: argparse.Namespace) -> int:
    """Run every region as its own ``serve`` process, the emulated WAN and its admin API here."""
    root = Path(args.data).absolute()
    if args.replicas != 1:
        # local_quorum is answered by one replica today (sync.quorum.Level), and peers
        # are configured URLs rather than found by name: several replicas per region would be all peers.
        raise ConfigError("--replicas: only 1 replica per region is supported yet (local_quorum spans one replica)")
    configure_logging("info")
    if not args.log_console:
        _log_to_file(root / "logs" / "up.log")  # the console keeps the table and reports of regions that exit
    token = ensure_token(root)
    admin = ensure_admin_token(root)
    wan = None
    if args.regions > 1:
        ensure_secret(root)
        try:
            wan = WanController(
                UP_REGIONS[: args.regions],
                latency=args.latency,
                jitter=args.jitter,
                base_port=args.wan_port + 1 if args.wan_port else 0,
            )
            wan.bind()  # the links' ports go into every node's peer list before anything runs
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--wan-port {args.wan_port}: {exc}") from None
    plans = plan_up(root, host="127.0.0.1", base_port=args.port, regions=args.regions, wan=wan)
    plans = _with_ports(plans)
    logs = None if args.log_console else root / "logs"
    supervisor = Supervisor(
        [Child(plan, log=logs / f"{plan.region}.log" if logs is not None else None) for plan in plans]
    )
    tokens = TokenStore.load(root / UP_TOKEN_FILE, env={})
    admin_app = build_wan_admin_app(wan or WanController([]), auth=AuthPolicy(tokens=tokens))
    admin_config = uvicorn.Config(
        admin_app, host="127.0.0.1", port=args.wan_port, log_config=None, access_log=False, lifespan="off"
    )
    wan_url: list[str] = []

    def announce(urls: list[str]) -> None:
        wan_url.append(urls[0])

    async def on_start() -> None:
        if wan is not None:
            await wan.start()
            for plan in plans:
                wan.set_target(plan.region, "127.0.0.1", plan.port)
        supervisor.start()
        write_plan(root / UP_STATE_FILE, supervisor.plan(wan_admin=wan_url[0] if wan is not None else None))
        late = await supervisor.wait_ready()
        print(f"crdtstore up: {len(plans)} region(s), one process each", flush=True)
        print(supervisor.table(), flush=True)
        if late:
            print(f"crdtstore up: not ready: {', '.join(late)} (see their logs)", flush=True)
        if wan is not None:
            print(f"WAN admin: {wan_url[0]} (crdtstore partition/isolate/heal; status)", flush=True)
        print(f"token (readwrite, kept in {root / UP_TOKEN_FILE}): {token}", flush=True)
        print(f"token (admin, kept in {root / UP_TOKEN_FILE}): {admin}", flush=True)

    async def on_stop() -> None:
        await supervisor.stop()
        if wan is not None:
            await wan.close()

    return run_servers([admin_config], announce=announce, on_start=on_start, on_stop=on_stop)


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]


def _with_ports(plans: list[ServeConfig]) -> list[ServeConfig]:
    """Give each plan of port 0 a free port now: the WAN's targets and the table need it before the child runs."""
    held = [bind("127.0.0.1", 0) for plan in plans if plan.port == 0]
    try:
        ports = iter([sock.getsockname()[1] for sock in held])
        return [plan if plan.port else dataclasses.replace(plan, port=next(ports)) for plan in plans]
    finally:
        for sock in held:
            sock.close()  # a child binds it next; on loopback nothing else is racing for it in practice


def _token_and_data(args: argparse.Namespace, needed: Scope) -> tuple[Path, str]:
    root = Path(args.data)
    return root, pick_token(args.token, env=os.environ, root=root, needed=needed)


def _link_command(args: argparse.Namespace) -> int:
    """``partition A B`` / ``isolate A`` / ``heal [A B]`` through a WAN admin API (``--wan`` or ``up``'s plan)."""
    root, token = _token_and_data(args, Scope.ADMIN)
    wan = args.wan or load_plan(root).get("wan")
    if not wan:
        raise ConfigError("no emulated WAN to cut: give --wan URL (the `up` of one region has none)")
    body: dict[str, str] = {}
    if args.command == "partition":
        body = {"a": args.a, "b": args.b, "mode": args.mode}
    elif args.command == "isolate":
        body = {"region": args.region, "mode": args.mode}
    elif args.a is not None or args.b is not None:
        if args.a is None or args.b is None:
            raise ConfigError("heal takes two regions, or none to heal every link")
        body = {"a": args.a, "b": args.b}
    try:
        answer = clusterctl.admin_call(f"{wan.rstrip('/')}/v1/admin/{args.command}", token, body=body)
    except clusterctl.AdminError as exc:
        print(f"crdtstore {args.command}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reach the WAN admin API at {wan}: {exc}") from None
    print("cut links: " + (", ".join("-".join(pair) for pair in answer["cut"]) or "none"), flush=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    """Every node's links and Merkle root (URLs given, or those of ``up``'s plan), and the WAN's cut links."""
    root, token = _token_and_data(args, Scope.READ)
    wan = args.wan
    if args.urls:
        nodes = {url.rstrip("/"): url.rstrip("/") for url in args.urls}
    else:
        plan = load_plan(root)
        nodes = {region: entry["url"] for region, entry in plan["regions"].items()}
        wan = wan or plan.get("wan")
    statuses = clusterctl.fetch_status(nodes, token)
    cut = None
    if wan:
        try:
            cut = clusterctl.admin_call(f"{wan.rstrip('/')}/v1/admin/wan", token)["cut"]
        except (clusterctl.AdminError, OSError, ValueError, KeyError) as exc:
            print(f"crdtstore status: WAN admin API at {wan}: {exc}", file=sys.stderr)
    print(clusterctl.render_status(statuses, cut=cut), flush=True)
    return 0 if all(s.error is None for s in statuses) else 1


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdtstore", description="A geo-replicated CRDT document store.")
    parser.add_argument("--version", action="version", version=f"crdtstore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run one region node",
        description="Run one region node. Every flag also reads CRDTSTORE_<NAME> and the TOML file; "
        "precedence: flags > environment > file > defaults.",
    )
    serve.add_argument("--config", type=Path, default=None, help="TOML file of settings (or CRDTSTORE_CONFIG)")
    for setting in SETTINGS:
        if setting.flag == "switch":
            serve.add_argument(setting.option, dest=setting.name, action="store_const", const=True, help=setting.help)
        elif setting.flag == "list":
            serve.add_argument(setting.option, dest=setting.name, action="append", default=None, help=setting.help)
        else:
            serve.add_argument(setting.option, dest=setting.name, default=None, help=setting.help)
    serve.set_defaults(func=_serve)

    up = commands.add_parser(
        "up",
        help="run a local multi-region cluster on loopback, one process per region (data under ./data)",
        description="Run a local cluster: one `crdtstore serve` process per region on 127.0.0.1, an emulated "
        "WAN between them, logs under DATA/logs. Ctrl-C stops every region.",
    )
    up.add_argument("--data", default="data", help="root directory (default ./data)")
    up.add_argument("--port", type=int, default=8080, help="first port (default 8080; 0: any free ports)")
    up.add_argument("--regions", type=int, default=UP_DEFAULT_REGIONS, help="regions to run (default 3)")
    up.add_argument("--replicas", type=int, default=1, help="replicas per region (only 1 is supported yet)")
    up.add_argument("--latency", type=parse_duration, default=0.0, help="one-way latency between regions (80ms)")
    up.add_argument("--jitter", type=parse_duration, default=0.0, help="extra random one-way delay (10ms)")
    up.add_argument(
        "--wan-port",
        type=_port,
        default=0,
        help="the WAN admin API's port; its links take the next N*(N-1) ports (default 0: any free ports)",
    )
    up.add_argument("--log-console", action="store_true", help="the regions' JSON logs on this console, not in files")
    up.set_defaults(func=_up)

    def common(cmd: argparse.ArgumentParser, *, wan: bool = True) -> None:
        cmd.add_argument("--data", default="data", help="the root directory of a running `up` (default ./data)")
        cmd.add_argument("--token", default=None, help="bearer token (or CRDTSTORE_TOKEN; default: up's token file)")
        if wan:
            cmd.add_argument("--wan", default=None, help="the WAN admin API's URL (default: from up's plan)")

    partition = commands.add_parser("partition", help="cut the link between two regions")
    partition.add_argument("a", help="region")
    partition.add_argument("b", help="region")
    isolate = commands.add_parser("isolate", help="cut one region off from every other")
    isolate.add_argument("region", help="region")
    for cmd in (partition, isolate):
        cmd.add_argument("--mode", choices=["close", "hold"], default="close", help="drop or blackhole (hold)")
    heal = commands.add_parser("heal", help="restore the link between two regions (none: every link)")
    heal.add_argument("a", nargs="?", default=None, help="region")
    heal.add_argument("b", nargs="?", default=None, help="region")
    for cmd in (partition, isolate, heal):
        common(cmd)
        cmd.set_defaults(func=_link_command)

    status = commands.add_parser("status", help="links, counters and Merkle roots of every node")
    status.add_argument("urls", nargs="*", help="node base URLs (default: those of up's plan)")
    common(status)
    status.set_defaults(func=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crdtstore`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"crdtstore: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
