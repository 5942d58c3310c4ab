"""The ``crdtstore`` command: ``serve`` one region node, or bring a local setup ``up``.

``crdtstore serve --region eu --data ./eu --port 8080 --tokens tokens.txt``
runs one node; every flag also comes from ``CRDTSTORE_*`` variables or a
TOML file (see :mod:`crdtstore.config`).

``crdtstore up [--regions N] [--replicas R] [--latency 80ms] [--jitter 10ms]``
is the embedded default: N regions (3 by default, named by :data:`UP_REGIONS`)
of R replicas each (1 by default; ``us-0``, ``us-1``... when R > 1), each
replica a ``crdtstore serve`` process of its own on loopback with its own
port, data directory and log file under ``./data`` (:mod:`crdtstore.supervisor`),
a read-write and an admin token and a cluster secret generated on the first
run (mode 0600). Every replica dials every other one: those of its own region
directly, those of the other regions through an emulated WAN
(:mod:`sync.io.wanproxy`) that stays in the ``up`` process and adds the one-way
latency and jitter; its admin API (:mod:`crdtstore.wanadmin`) cuts and heals
links between regions. Each replica is told its region's size
(``--region-replicas``), so ``local_quorum`` is a majority of R.
``crdtstore status``, ``partition A B``, ``isolate A`` and ``heal``
work against any running cluster over HTTP (:mod:`crdtstore.clusterctl`):
given node URLs, a WAN admin URL and a token, or else from the plan ``up``
records in ``./data/up.json``; the link commands given ``--node URL``s cut
the links on the nodes themselves (no emulated WAN: Kubernetes).

``serve`` builds and runs its servers with :mod:`crdtstore.server`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from crdtstore import __version__, clusterctl, compiled
from crdtstore.api.auth import AuthPolicy, Scope, TokenStore, ensure_token_of_scope, generate_token, parse_token_file
from crdtstore.clusterctl import load_plan, pick_token
from crdtstore.config import (
    SETTINGS,
    ConfigError,
    ServeConfig,
    resolve,
)
from crdtstore.logs import JsonFormatter, configure_logging
from crdtstore.server import PEER_PATH, bind, build_server_app, run_servers, server_configs
from crdtstore.supervisor import Child, Supervisor, replica_names, write_plan
from crdtstore.wanadmin import build_wan_admin_app
from sync.io.wanproxy import WanController

__all__ = [
    "UP_REGIONS",
    "build_parser",
    "ensure_admin_token",
    "ensure_secret",
    "ensure_token",
    "main",
    "parse_duration",
    "plan_up",
]

logger = logging.getLogger("crdtstore.cli")

UP_REGIONS: tuple[str, ...] = ("us", "eu", "ap", "sa", "af", "me", "oc", "an")
"""Names of the regions ``up`` starts (the first ``--regions`` of them), on consecutive ports from ``--port``."""

UP_DEFAULT_REGIONS = 3
UP_MAX_REPLICAS = 5  # one link per replica pair: (N*R)(N*R-1) links, 210 at 3 regions x 5 (see the README)
UP_TOKEN_FILE = "tokens"
UP_SECRET_FILE = "cluster-secret"
UP_STATE_FILE = "up.json"


def plan_up(
    root: Path,
    *,
    host: str,
    base_port: int,
    regions: int = UP_DEFAULT_REGIONS,
    replicas: int = 1,
    wan: WanController | None = None,
    ports: Sequence[int] | None = None,
) -> list[ServeConfig]:
    """The nodes ``up`` runs: ``replicas`` for each of the first ``regions`` of :data:`UP_REGIONS`.

    Each replica has its directory ``root/NAME`` (:func:`~crdtstore.supervisor.replica_names`: the
    region's name alone when it has one replica) and a port: ``ports[i]``, else consecutive from
    ``base_port`` (0: a free one, chosen later). With ``wan``, each dials every replica of the other
    regions through it; with several replicas, each dials its region's others directly (their ports
    must then be known) and is told its region's size.

    Raises:
        ConfigError: Regions or replicas out of range, or unknown ports where same-region links need them.
    """
    if not 1 <= regions <= len(UP_REGIONS):
        raise ConfigError(f"--regions is 1 to {len(UP_REGIONS)}")
    if not 1 <= replicas <= UP_MAX_REPLICAS:
        raise ConfigError(f"--replicas is 1 to {UP_MAX_REPLICAS}")
    members = [(name, region) for region in UP_REGIONS[:regions] for name in replica_names(region, replicas)]
    if ports is None:
        ports = [base_port + i if base_port else 0 for i in range(len(members))]  # 0: a free port of its own
    port_of = dict(zip((name for name, _ in members), ports, strict=True))
    clustered = wan is not None or replicas > 1
    if replicas > 1 and 0 in port_of.values():
        raise ConfigError("several replicas per region link directly: their ports must be known")
    plans = []
    for name, region in members:
        local = [
            f"ws://{host}:{port_of[other]}{PEER_PATH}" for other in replica_names(region, replicas) if other != name
        ]
        remote = wan.peers_of(name, path=PEER_PATH) if wan is not None else []
        plans.append(
            ServeConfig(
                region=region,
                data=root / name,
                host=host,
                port=port_of[name],
                tokens=root / UP_TOKEN_FILE,
                cluster_secret_file=root / UP_SECRET_FILE if clustered else None,
                peers=(*local, *remote),
                region_replicas=replicas,
                # Loopback links: detect a cut quickly and reconnect quickly.
                peer_ping_interval=2.0,
                peer_ping_timeout=4.0,
                peer_backoff_max=2.0,
            )
        )
    return plans


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
    return ensure_token_of_scope(root / UP_TOKEN_FILE, Scope.ADMIN)


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
    """Run every replica as its own ``serve`` process, the emulated WAN and its admin API here."""
    root = Path(args.data).absolute()
    # Checked before anything is written (plan_up checks the same, later).
    if not 1 <= args.regions <= len(UP_REGIONS):
        raise ConfigError(f"--regions is 1 to {len(UP_REGIONS)}")
    if not 1 <= args.replicas <= UP_MAX_REPLICAS:
        raise ConfigError(f"--replicas is 1 to {UP_MAX_REPLICAS}")
    configure_logging("info")
    if not args.log_console:
        _log_to_file(root / "logs" / "up.log")  # the console keeps the table and reports of replicas that exit
    token = ensure_token(root)
    admin = ensure_admin_token(root)
    regions = UP_REGIONS[: args.regions]
    members = {name: region for region in regions for name in replica_names(region, args.replicas)}
    wan = None
    if args.regions > 1 or args.replicas > 1:
        ensure_secret(root)
    if args.regions > 1:
        try:
            wan = WanController(
                regions,
                latency=args.latency,
                jitter=args.jitter,
                base_port=args.wan_port + 1 if args.wan_port else 0,
                members=members,
            )
            wan.bind()  # the links' ports go into every node's peer list before anything runs
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--wan-port {args.wan_port}: {exc}") from None
    ports = _ports(args.port, len(members))
    plans = plan_up(
        root, host="127.0.0.1", base_port=args.port, regions=args.regions, replicas=args.replicas, wan=wan, ports=ports
    )
    logs = None if args.log_console else root / "logs"
    supervisor = Supervisor(
        [
            Child(plan, name=plan.data.name, log=logs / f"{plan.data.name}.log" if logs is not None else None)
            for plan in plans
        ]
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
                wan.set_target(plan.data.name, "127.0.0.1", plan.port)
        supervisor.start()
        write_plan(root / UP_STATE_FILE, supervisor.plan(wan_admin=wan_url[0] if wan is not None else None))
        late = await supervisor.wait_ready()
        each = "one process each" if args.replicas == 1 else f"{args.replicas} replicas each, one process per replica"
        print(f"crdtstore up: {args.regions} region(s), {each}", flush=True)
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


def _demo(args: argparse.Namespace) -> int:
    from crdtstore.demo import run_demo  # the demo's page and server load only for this command

    root = Path(args.data).absolute()
    return run_demo(args, token=ensure_token(root), admin_token=ensure_admin_token(root))


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]


def _ports(base: int, count: int) -> list[int]:
    """``count`` consecutive ports from ``base``, or (``base`` 0) free ones chosen now.

    Every port is needed before any child runs: the WAN's targets, the same-region peers' URLs and the
    table name them.
    """
    if base:
        if base + count - 1 > 65535:
            raise ConfigError(f"--port {base}: {count} ports do not fit below 65536")
        return list(range(base, base + count))
    held = [bind("127.0.0.1", 0) for _ in range(count)]
    try:
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()  # a child binds it next; on loopback nothing else is racing for it in practice


def _token_and_data(args: argparse.Namespace, needed: Scope) -> tuple[Path, str]:
    root = Path(args.data)
    return root, pick_token(args.token, env=os.environ, root=root, needed=needed)


def _link_command(args: argparse.Namespace) -> int:
    """``partition A B`` / ``isolate A`` / ``heal [A B]`` through a WAN admin API (``--wan`` or ``up``'s plan)."""
    root, token = _token_and_data(args, Scope.ADMIN)
    if args.node:
        return _cut_on_nodes(args, token)
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


def _cut_on_nodes(args: argparse.Namespace, token: str) -> int:
    """The link commands through each node's own cuts (``--node URL``...): no emulated WAN needed."""
    a = args.region if args.command == "isolate" else args.a
    b = None if args.command == "isolate" else args.b
    if args.command == "heal" and (a is None) != (b is None):
        raise ConfigError("heal takes two regions, or none to heal every link")
    try:
        changed = clusterctl.cut_on_nodes(args.command, args.node, token, a=a, b=b)
    except clusterctl.AdminError as exc:
        print(f"crdtstore {args.command}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reach a node: {exc}") from None
    for url, region, cut in changed:
        what = ", ".join([*cut["regions"], *cut["peers"]]) or "none"
        print(f"{region} {url}: cut {what}", flush=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    """Every node's links and Merkle root (URLs given, or those of ``up``'s plan), and the WAN's cut links."""
    root, token = _token_and_data(args, Scope.READ)
    wan = args.wan
    if args.urls:
        nodes = {url.rstrip("/"): url.rstrip("/") for url in args.urls}
    else:
        plan = load_plan(root)
        # Every replica; a plan from before several replicas per region has only "regions".
        replicas = plan.get("replicas")
        members: dict[str, Any] = replicas if isinstance(replicas, dict) else plan["regions"]
        nodes = {name: entry["url"] for name, entry in members.items()}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdtstore", description="A geo-replicated CRDT document store.")
    parser.add_argument("--version", action="version", version=f"crdtstore {__version__} (core: {compiled.status()})")
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
        help="run a local multi-region cluster on loopback, one process per replica (data under ./data)",
        description="Run a local cluster: one `crdtstore serve` process per replica on 127.0.0.1, an emulated "
        "WAN between them, logs under DATA/logs. Ctrl-C stops every region.",
    )
    up.add_argument("--data", default="data", help="root directory (default ./data)")
    up.add_argument("--port", type=int, default=8080, help="first port (default 8080; 0: any free ports)")
    up.add_argument("--regions", type=int, default=UP_DEFAULT_REGIONS, help="regions to run (default 3)")
    up.add_argument(
        "--replicas",
        type=int,
        default=1,
        help=f"replicas per region, each its own process (default 1, at most {UP_MAX_REPLICAS}); names us-0, us-1...",
    )
    up.add_argument("--latency", type=parse_duration, default=0.0, help="one-way latency between regions (80ms)")
    up.add_argument("--jitter", type=parse_duration, default=0.0, help="extra random one-way delay (10ms)")
    up.add_argument(
        "--wan-port",
        type=_port,
        default=0,
        help="the WAN admin API's port; its links take the next N*(N-1)*R*R ports (default 0: any free ports)",
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
        cmd.add_argument(
            "--node",
            action="append",
            default=None,
            help="a node's base URL (repeat for each): cut links on the nodes themselves, no emulated WAN needed",
        )
        cmd.set_defaults(func=_link_command)

    demo = commands.add_parser(
        "demo",
        help="run a local 3-region cluster (as `up` does) and the collaborative notes demo; prints its URL",
        description="Run `crdtstore up` with 3 regions and serve the notes demo (demo_app) on 127.0.0.1.",
    )
    demo.add_argument("--data", default="demo-data", help="root directory of the cluster (default ./demo-data)")
    demo.add_argument("--port", type=_port, default=8000, help="the demo page's port (default 8000; 0: a free port)")
    demo.add_argument("--regions-port", type=_port, default=0, help="the regions' first port (default 0: free ports)")
    demo.add_argument("--latency", type=parse_duration, default=0.05, help="one-way latency between regions (50ms)")
    demo.add_argument("--jitter", type=parse_duration, default=0.0, help="extra random one-way delay (10ms)")
    demo.set_defaults(func=_demo)

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
