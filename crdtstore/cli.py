"""The ``crdtstore`` command: ``serve`` one region node, or bring a local setup ``up``.

``crdtstore serve --region eu --data ./eu --port 8080 --tokens tokens.txt``
runs one node; every flag also comes from ``CRDTSTORE_*`` variables or a
TOML file (see :mod:`crdtstore.config`).

``crdtstore up`` is the embedded default: the nodes of :data:`UP_REGIONS`
on loopback, data under ``./data``, and a read-write token generated on the
first run and kept in ``./data/tokens`` (mode 0600). It prints the URL and
the token. Growing it into a multi-region cluster means listing more
regions (each gets the next port and its own directory) and wiring peers.

Servers are uvicorn servers driven by :func:`run_servers`: one event loop,
one set of signal handlers for all of them (uvicorn's per-server handlers
would override each other), and sockets bound before startup so that
``--port 0`` works and the actual address is logged as ``listening``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from crdtstore import __version__
from crdtstore.api.app import build_app
from crdtstore.api.auth import AuthPolicy, Scope, TokenFileError, TokenStore, generate_token, parse_token_file
from crdtstore.api.limits import Limits
from crdtstore.config import SETTINGS, ConfigError, ServeConfig, resolve
from crdtstore.logs import configure_logging
from crdtstore.node import Node, NodeConfig

__all__ = [
    "UP_REGIONS",
    "bind",
    "build_parser",
    "build_server_app",
    "ensure_token",
    "main",
    "plan_up",
    "run_servers",
    "uvicorn_config",
]

logger = logging.getLogger("crdtstore.cli")

UP_REGIONS: tuple[str, ...] = ("local",)
"""Regions ``up`` starts, on consecutive ports from ``--port``."""

UP_TOKEN_FILE = "tokens"


# Public functions: building servers from settings.


def build_server_app(config: ServeConfig, *, env: Mapping[str, str]) -> Starlette:
    """The app of one node as ``config`` describes it (the node starts with the app's lifespan)."""
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
        )
    )
    auth = AuthPolicy(tokens=tokens, public_metrics=config.public_metrics, anonymous=anonymous)
    return build_app(node, auth=auth, limits=Limits(max_body_bytes=config.max_body_bytes))


def uvicorn_config(app: Starlette, config: ServeConfig) -> uvicorn.Config:
    """Uvicorn's settings; its own limits rather than hand-written ones."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=config.certfile,
        ssl_keyfile=config.keyfile,
        limit_concurrency=config.limit_concurrency,
        timeout_keep_alive=config.timeout_keep_alive,
        ws_max_size=config.ws_max_size,
        access_log=config.access_log,
        log_level=config.log_level,
        log_config=None,  # keep our JSON logging (crdtstore.logs)
        lifespan="on",
        server_header=False,
        proxy_headers=False,
    )


class _GroupServer(uvicorn.Server):
    """A uvicorn server whose signals :func:`run_servers` handles for the whole group."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def run_servers(configs: Sequence[uvicorn.Config], *, announce: Callable[[list[str]], None] | None = None) -> int:
    """Serve every config until SIGINT/SIGTERM; returns the process exit code.

    Args:
        configs: One uvicorn config per server.
        announce: Called with the servers' URLs once their sockets are bound (before startup).
    """
    if not configs:
        return 0
    servers = [_GroupServer(config) for config in configs]
    sockets = [bind(config.host, config.port) for config in configs]

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                # A second signal skips the graceful drain, as in uvicorn.
                server.force_exit = server.should_exit
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets, strict=True)))
        finally:
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
    return 0 if all(server.started for server in servers) else 3


def plan_up(root: Path, *, host: str, base_port: int) -> list[ServeConfig]:
    """The nodes ``up`` runs: one per region of :data:`UP_REGIONS`, consecutive ports, one directory each."""
    return [
        ServeConfig(
            region=region,
            data=root / region,
            host=host,
            port=base_port + i if base_port else 0,  # port 0: each node gets a free port of its own
            tokens=root / UP_TOKEN_FILE,
        )
        for i, region in enumerate(UP_REGIONS)
    ]


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
    return run_servers([uvicorn_config(app, config)])


def _up(args: argparse.Namespace) -> int:
    root = Path(args.data)
    configure_logging("info")
    token = ensure_token(root)
    plans = plan_up(root, host="127.0.0.1", base_port=args.port)
    # Only the generated token file counts for `up`, not CRDTSTORE_TOKENS of the caller's shell.
    configs = [uvicorn_config(build_server_app(plan, env={}), plan) for plan in plans]

    def announce(urls: list[str]) -> None:
        for plan, url in zip(plans, urls, strict=True):
            print(f"crdtstore up: region {plan.region} at {url}", flush=True)
        print(f"token (readwrite, kept in {root / UP_TOKEN_FILE}): {token}", flush=True)

    return run_servers(configs, announce=announce)


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
        else:
            serve.add_argument(setting.option, dest=setting.name, default=None, help=setting.help)
    serve.set_defaults(func=_serve)

    up = commands.add_parser("up", help="run the local default setup on loopback (data under ./data)")
    up.add_argument("--data", default="data", help="root directory (default ./data)")
    up.add_argument("--port", type=int, default=8080, help="first port (default 8080)")
    up.set_defaults(func=_up)
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
