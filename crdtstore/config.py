"""Settings of ``crdtstore serve``, from flags, environment, a TOML file and defaults.

Precedence, highest first: command-line flags > ``CRDTSTORE_*`` environment
variables > the TOML file (``--config FILE`` or ``CRDTSTORE_CONFIG``) >
defaults. Every setting has the three spellings, derived mechanically from
its name: ``no_sync`` is ``--no-sync``, ``CRDTSTORE_NO_SYNC`` and
``no_sync = true`` in the file (a top-level key; unknown keys are errors, so a
typo does not silently fall back to a default). One exception: the token
file is ``--tokens`` / ``CRDTSTORE_TOKENS_FILE`` / ``tokens``, because
``CRDTSTORE_TOKENS`` holds tokens inline (``token:scope,...``, see
:mod:`crdtstore.api.auth`); both sources are merged.

Booleans in the environment are ``1/true/yes/on`` or ``0/false/no/off``.

Replication: ``--peer URL`` is repeatable (``CRDTSTORE_PEERS`` holds a
comma-separated list, the file a list of strings); each URL is a peer's
websocket endpoint, e.g. ``ws://10.0.0.2:8080/v1/peer``. The cluster secret
that peers authenticate each other with comes from
``--cluster-secret-file`` / ``CRDTSTORE_CLUSTER_SECRET_FILE`` or, inline,
``CRDTSTORE_CLUSTER_SECRET`` (environment only: a secret on the command
line would show in ``ps``). Without a secret the node accepts no peers.
A region of several replicas: each lists the others among its peers and
says how many its region has with ``--region-replicas`` (``local_quorum`` is
a majority of them; configured, so a partition cannot shrink it).

Membership from DNS: ``--peer-dns NAME[:PORT]`` is repeatable
(``CRDTSTORE_PEER_DNS``, comma-separated; ``peer_dns`` in the file). Every
address a name resolves to (A/AAAA, on PORT, by default our ``--peer-port``
or ``--port``) is a peer, dialed at ``/v1/peer`` with the name as its TLS
name; names are resolved again every ``--peer-dns-interval`` seconds, so
replicas come and go without restarts (see :mod:`crdtstore.membership`).
``--peer-hosts-file FILE`` answers those names from a hosts-style file
instead of DNS. ``--removed-peer-grace`` is how long a peer that left
membership still holds back log truncation.

Mutual TLS between regions: ``--peer-ca FILE`` (``CRDTSTORE_PEER_CA``,
``peer_ca``) names a CA bundle. It needs ``--certfile``/``--keyfile``; peers
are dialed over ``wss://`` with our certificate as the client certificate,
verifying theirs against the same CA and the host in the peer URL, and the
listener that takes peer links requires a client certificate signed by that
CA. With ``--peer-port N`` peer links have a listener of their own (on
``--host``, port N) and only it asks for client certificates; the API port
then serves no peer links. Without it there is one listener, so API clients
need such a certificate too. The HMAC handshake over the cluster secret
still runs on top.

Plaintext peer links leave loopback only when asked: ``serve`` refuses a
``ws://`` peer URL whose host is not a loopback address, and, with a
cluster secret, a listener for peer links on a non-loopback ``--host``
without TLS, unless ``--insecure-peers`` (``CRDTSTORE_INSECURE_PEERS``,
``insecure_peers``) says the network is trusted. Peer messages are
authenticated either way; without TLS anyone on the path reads them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crdtstore.membership import parse_peer_name

__all__ = [
    "SETTINGS",
    "MAX_QUORUM_TIMEOUT",
    "ConfigError",
    "ServeConfig",
    "Setting",
    "accepted_secrets",
    "check_peer_transport",
    "cluster_secret",
    "quorum_timeout",
    "peer_ssl_context",
    "resolve",
]


class ConfigError(ValueError):
    """A setting that cannot be used; the message names where it came from."""


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {raw!r}")


def _int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    return int(raw)


def _positive_int(raw: Any) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {raw!r}")
    return value


def _optional_port(raw: Any) -> int | None:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none")):
        return None
    port = _int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port")
    return port


def _path(raw: Any) -> Path:
    return Path(str(raw)).expanduser()


def _region(raw: Any) -> str:
    # The same rule as the storage layer's, checked before anything opens.
    text = _str(raw)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise ValueError(f"a region is 1-64 characters of A-Z a-z 0-9 _ -, got {text!r}")
    return text


def _replica_name(raw: Any) -> str:
    text = _str(raw)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", text):
        raise ValueError(f"a replica name is 1-32 characters of A-Z a-z 0-9 _ -, got {text!r}")
    return text


def _scope(raw: Any) -> str:
    text = _str(raw).strip().lower()
    if text not in ("read", "readwrite"):
        raise ValueError(f"expected read or readwrite, got {raw!r}")
    return text


def _log_level(raw: Any) -> str:
    text = _str(raw).strip().lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {raw!r}")
    return text


def _seconds(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected seconds, got {raw!r}")
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {raw!r}")
    return value


MAX_QUORUM_TIMEOUT = 60.0
"""Longest a quorum read or write may wait, as a setting or per request (``?timeout=``)."""


def quorum_timeout(raw: Any) -> float:
    """Seconds in ``(0, MAX_QUORUM_TIMEOUT]``: a request that waits longer holds its connection for nothing."""
    value = _seconds(raw)
    if value > MAX_QUORUM_TIMEOUT:
        raise ValueError(f"expected at most {MAX_QUORUM_TIMEOUT:g} seconds, got {raw!r}")
    return value


def _peer_url(raw: Any) -> str:
    text = _str(raw).strip()
    if not re.fullmatch(r"wss?://[^\s/]+(/\S*)?", text):
        raise ValueError(f"a peer is a ws:// or wss:// URL, got {text!r}")
    return text


def _peers(raw: Any) -> tuple[str, ...]:
    # A flag gives a list (repeatable --peer), the environment a comma-separated string, the file either.
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return tuple(dict.fromkeys(_peer_url(item) for item in items if not isinstance(item, str) or item.strip()))


def _peer_dns(raw: Any) -> tuple[str, ...]:
    # Checked here; crdtstore.server makes them PeerNames once the default port is known.
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    names = [_str(item).strip() for item in items if not isinstance(item, str) or item.strip()]
    for name in names:
        parse_peer_name(name, default_port=1)
    return tuple(dict.fromkeys(names))


def _str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its name, how to parse it, its help.

    Attributes:
        name: The dataclass field; ``--name-with-dashes``, ``CRDTSTORE_NAME``, TOML ``name``.
        parse: Turns a flag, env or TOML value into the field's type (raises ValueError).
        help: Shown by ``--help``.
        flag: Kind of flag: ``value`` takes an argument, ``switch`` is a boolean without one,
            ``list`` is repeatable (``--peer A --peer B``).
        env_name: The environment variable when it is not ``CRDTSTORE_<NAME>``.
    """

    name: str
    parse: Callable[[Any], Any]
    help: str
    flag: str = "value"
    env_name: str | None = None

    @property
    def env(self) -> str:
        return self.env_name or "CRDTSTORE_" + self.name.upper()

    @property
    def option(self) -> str:
        if self.flag == "list" and self.name.endswith("s"):
            return "--" + self.name[:-1].replace("_", "-")  # --peer, given once per peer
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``serve`` needs (see :data:`SETTINGS` for each field's meaning)."""

    region: str = "local"
    replica_name: str | None = None
    data: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080
    tokens: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    no_sync: bool = False
    public_metrics: bool = False
    anonymous: str | None = None
    max_body_bytes: int = 4 << 20
    max_map_size: int = 8 << 30
    max_document_bytes: int = 16 << 20
    max_sequence_length: int = 4 << 20
    max_batch_docs: int = 100
    max_connections: int = 4096
    timeout_keep_alive: int = 5
    timeout_request_headers: float = 10.0
    timeout_request_body: float = 30.0
    ws_max_size: int = 1 << 16
    access_log: bool = True
    log_level: str = "info"
    peers: tuple[str, ...] = ()
    peer_dns: tuple[str, ...] = ()
    peer_dns_interval: float = 10.0
    peer_hosts_file: Path | None = None
    removed_peer_grace: float = 3600.0
    region_replicas: int = 1
    cluster_secret_file: Path | None = None
    cluster_secret_accept_file: Path | None = None
    peer_max_size: int = 16 << 20
    peer_ping_interval: float = 5.0
    peer_ping_timeout: float = 10.0
    peer_backoff_max: float = 5.0
    peer_ca: Path | None = None
    peer_port: int | None = None
    anti_entropy_interval: float = 60.0
    quorum_timeout: float = 5.0
    insecure_peers: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("region", _region, "region name ([A-Za-z0-9_-], part of the replica id)"),
    Setting(
        "replica_name",
        _replica_name,
        "put into the replica id when the data directory is new, <region>-<name>-<random> (a pod's ordinal; "
        "an existing directory keeps its id)",
    ),
    Setting("data", _path, "replica data directory (LMDB)"),
    Setting("host", _str, "address to listen on (default 127.0.0.1: loopback only)"),
    Setting("port", _int, "TCP port"),
    Setting(
        "tokens",
        _path,
        "token file: one 'TOKEN SCOPE' per line (scope read, readwrite or admin)",
        # CRDTSTORE_TOKENS holds tokens themselves (crdtstore.api.auth), so the file's variable differs.
        env_name="CRDTSTORE_TOKENS_FILE",
    ),
    Setting("certfile", _path, "TLS certificate (PEM); with --keyfile, serve HTTPS"),
    Setting("keyfile", _path, "TLS private key (PEM)"),
    Setting("no_sync", _bool, "do not fsync each commit (faster; may lose the last writes on power loss)", "switch"),
    Setting("public_metrics", _bool, "serve /metrics without a token", "switch"),
    Setting("anonymous", _scope, "scope granted to requests without a token (read or readwrite; off by default)"),
    Setting("max_body_bytes", _int, "largest request body in bytes"),
    Setting("max_map_size", _int, "largest LMDB map in bytes (writes fail with 503 beyond it)"),
    Setting("max_document_bytes", _positive_int, "largest document a local write may leave, stored bytes (else 413)"),
    Setting("max_sequence_length", _positive_int, "longest text or list a local insert may leave (else 413)"),
    Setting(
        "max_batch_docs",
        _positive_int,
        "most documents in one POST /v1/batch (each takes a slot of the node's write queue, 1,024 slots)",
    ),
    Setting(
        "max_connections",
        _positive_int,
        "most open HTTP connections per listener; 1/8 of them kept for connections that carried a valid token",
    ),
    Setting("timeout_keep_alive", _int, "uvicorn: seconds an idle keep-alive connection stays open"),
    Setting("timeout_request_headers", _seconds, "seconds a client has to send a request's headers (from connect)"),
    Setting("timeout_request_body", _seconds, "seconds a client has to send a request's body (from its headers)"),
    Setting("ws_max_size", _int, "uvicorn: largest incoming websocket message in bytes"),
    Setting("access_log", _bool, "log every request (JSON lines)"),
    Setting("log_level", _log_level, "debug, info, warning or error"),
    Setting("peers", _peers, "a peer's websocket URL (repeatable; env: comma-separated)", "list"),
    Setting(
        "peer_dns",
        _peer_dns,
        "NAME[:PORT] whose every A/AAAA address is a peer, re-resolved as replicas come and go (repeatable; "
        "env: comma-separated; the port defaults to --peer-port, else --port)",
        "list",
    ),
    Setting("peer_dns_interval", _seconds, "seconds between resolutions of the --peer-dns names"),
    Setting("peer_hosts_file", _path, "answer --peer-dns names from this file ('NAME ADDRESS[:PORT]' lines), not DNS"),
    Setting(
        "removed_peer_grace",
        _seconds,
        "seconds a peer that left --peer-dns membership still holds back delta log truncation",
    ),
    Setting(
        "region_replicas",
        _positive_int,
        "replicas in this node's region, this one included, each also among the others' peers "
        "(local_quorum waits for a majority of them; default 1)",
    ),
    Setting("cluster_secret_file", _path, "file holding the secret peers authenticate each other with"),
    Setting(
        "cluster_secret_accept_file",
        _path,
        "file of further cluster secrets (one a line) peers may prove themselves with: a secret rotation",
    ),
    Setting("peer_max_size", _int, "largest peer message in bytes, once the peer authenticated (4 KiB before)"),
    Setting("peer_ping_interval", _seconds, "seconds between keepalive pings on peer links"),
    Setting("peer_ping_timeout", _seconds, "seconds without a pong before a peer link counts as dead"),
    Setting("peer_backoff_max", _seconds, "longest wait between reconnects to a peer"),
    Setting(
        "anti_entropy_interval",
        _seconds,
        "seconds between Merkle anti-entropy rounds with each peer (repairs what deltas missed)",
    ),
    Setting(
        "quorum_timeout",
        quorum_timeout,
        "default seconds a w=/r= quorum or all request waits for other regions (at most 60; per request: ?timeout=)",
    ),
    Setting(
        "peer_ca",
        _path,
        "CA bundle (PEM) for mutual TLS: require client certificates it signed on the listener of peer links "
        "(the API one too without --peer-port) and dial wss:// peers with --certfile/--keyfile, verifying them",
    ),
    Setting(
        "peer_port",
        _optional_port,
        "serve peer links (/v1/peer) on this port of --host, not on the API port; --peer-ca then applies there alone",
    ),
    Setting(
        "insecure_peers",
        _bool,
        "allow plaintext peer links off loopback (ws:// peers, a peer listener without TLS): anyone on the "
        "network path reads the replicated documents (they cannot change them)",
        "switch",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def resolve(
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    config_file: Path | None = None,
    defaults: ServeConfig | None = None,
) -> ServeConfig:
    """Merge the sources of settings; flags > env > file > defaults.

    Args:
        flags: Settings given on the command line (absent or None: not given).
        env: The environment (``os.environ``).
        config_file: A TOML file; ``CRDTSTORE_CONFIG`` in ``env`` names one otherwise.
        defaults: The lowest layer (``ServeConfig()`` if None).

    Raises:
        ConfigError: A value that does not parse, an unknown key in the file, a missing file.
    """
    values: dict[str, Any] = {}
    path = (
        config_file
        if config_file is not None
        else (_path(env["CRDTSTORE_CONFIG"]) if env.get("CRDTSTORE_CONFIG") else None)
    )
    if path is not None:
        for name, raw in _read_toml(path).items():
            values[name] = _parse(name, raw, f"{path}: {name}")
    for setting in SETTINGS:
        if setting.env in env and env[setting.env] != "":
            values[setting.name] = _parse(setting.name, env[setting.env], setting.env)
    for name, raw in flags.items():
        if raw is not None:
            values[name] = _parse(name, raw, _BY_NAME[name].option)
    config = dataclasses.replace(defaults or ServeConfig(), **values)
    if (config.certfile is None) != (config.keyfile is None):
        raise ConfigError("--certfile and --keyfile go together")
    if not config.peer_dns and config.region_replicas > 1 + len(config.peers):
        # The region's other replicas are peers too: fewer peers than that is a typo, not a smaller region.
        raise ConfigError(f"--region-replicas {config.region_replicas}: only {len(config.peers)} peers configured")
    if config.peer_port is not None and config.peer_port == config.port != 0:
        raise ConfigError("--peer-port must differ from --port (peer links get a listener of their own)")
    if config.peer_ca is not None:
        if config.certfile is None:
            # Our certificate is both the server's and the client's on peer links: without it there is no mTLS.
            raise ConfigError("--peer-ca needs --certfile and --keyfile (our certificate on peer links)")
        # (--peer-dns peers are dialed over wss:// under --peer-ca.)
        plain = [url for url in config.peers if not url.startswith("wss://")]
        if plain:
            # A ws:// link would skip TLS entirely, and the peer's listener (mTLS too) would refuse it anyway.
            raise ConfigError(f"--peer-ca: peers must be wss:// URLs, got {', '.join(plain)}")
    return config


def _parse(name: str, raw: Any, where: str) -> Any:
    try:
        return _BY_NAME[name].parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    normalized = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(normalized) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(unknown)}")
    return normalized


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere, and serve looks up nothing to check


def check_peer_transport(config: ServeConfig, *, accepts_peers: bool) -> None:
    """Refuse plaintext peer links that leave loopback, unless ``insecure_peers``.

    Every peer message is authenticated (``sync.channel``), but without TLS it
    crosses the network readable: every replicated document, to anyone on the path.

    Args:
        config: The settings.
        accepts_peers: Whether the node takes peer links (it has a cluster secret).

    Raises:
        ConfigError: A ``ws://`` peer URL whose host is not a loopback address, or a listener for
            peer links on a non-loopback ``host`` without ``--certfile``.
    """
    if config.insecure_peers:
        return
    plain = [url for url in config.peers if url.startswith("ws://") and not _is_loopback(urlsplit(url).hostname)]
    if config.peer_ca is None:
        # Without --peer-ca the names are dialed over ws://; a name may resolve anywhere.
        plain += [f"ws://{name}" for name in config.peer_dns if not _is_loopback(name.rpartition(":")[0] or name)]
    if plain:
        raise ConfigError(
            f"plaintext peer links to {', '.join(plain)}: anyone on the path would read every replicated document. "
            "Use wss:// peers with --peer-ca (mutual TLS), or --insecure-peers on a network you trust"
        )
    if accepts_peers and config.certfile is None and not _is_loopback(config.host):
        raise ConfigError(
            f"peer links would be accepted in plaintext on {config.host}: anyone on the path would read every "
            "replicated document. Give --certfile/--keyfile (and --peer-ca), or --insecure-peers on a network "
            "you trust"
        )


def cluster_secret(config: ServeConfig, *, env: Mapping[str, str]) -> bytes | None:
    """The secret peers authenticate with: the file if given, else ``CRDTSTORE_CLUSTER_SECRET``, else None.

    Raises:
        ConfigError: An unreadable file, or a secret shorter than 16 bytes (too easy to guess).
    """
    if config.cluster_secret_file is not None:
        try:
            raw = config.cluster_secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read cluster secret file {config.cluster_secret_file}: {exc.strerror}") from None
        where = str(config.cluster_secret_file)
    elif env.get("CRDTSTORE_CLUSTER_SECRET"):
        raw = env["CRDTSTORE_CLUSTER_SECRET"].strip().encode()
        where = "CRDTSTORE_CLUSTER_SECRET"
    else:
        return None
    if len(raw) < 16:
        raise ConfigError(f"{where}: a cluster secret has at least 16 bytes")
    return raw


def accepted_secrets(config: ServeConfig) -> tuple[bytes, ...]:
    """The further secrets peers may prove themselves with (``--cluster-secret-accept-file``, one a line).

    During a rotation from secret A to B every node first accepts B while it
    proves itself with A, then proves itself with B while it accepts A, then
    drops A (``sync/channel.py``): no link is cut at any step.

    Raises:
        ConfigError: An unreadable file, or a secret shorter than 16 bytes.
    """
    path = config.cluster_secret_accept_file
    if path is None:
        return ()
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster secret accept file {path}: {exc.strerror}") from None
    found = tuple(line.strip() for line in lines if line.strip() and not line.startswith(b"#"))
    if any(len(secret) < 16 for secret in found):
        raise ConfigError(f"{path}: a cluster secret has at least 16 bytes")
    return found


def peer_ssl_context(config: ServeConfig) -> ssl.SSLContext | None:
    """The TLS context of outgoing peer links under ``--peer-ca``, or None without it.

    It verifies the peer's server certificate against ``peer_ca`` only (not
    the system CAs: a certificate some public CA issued must not pass for a
    region) including the host name of the peer URL, and presents our
    ``certfile``/``keyfile`` as the client certificate. Loading it here also
    checks the files before anything starts.

    Raises:
        ConfigError: A file that cannot be read or holds no usable certificate or key.
    """
    if config.peer_ca is None:
        return None
    if config.certfile is None or config.keyfile is None:
        raise ConfigError("--peer-ca needs --certfile and --keyfile (our certificate on peer links)")
    # PROTOCOL_TLS_CLIENT: certificate and host name checks on, TLS 1.2 at least, and (unlike
    # create_default_context) no system CAs loaded.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=config.peer_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--peer-ca {config.peer_ca}: not a readable PEM CA bundle ({_ssl_reason(exc)})") from None
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--certfile {config.certfile} / --keyfile {config.keyfile}: not a usable certificate and key "
            f"({_ssl_reason(exc)})"
        ) from None
    return context


def _ssl_reason(exc: OSError) -> str:
    # ssl.SSLError carries OpenSSL's reason (e.g. KEY_VALUES_MISMATCH); other OSErrors their strerror.
    return str(getattr(exc, "reason", None) or exc.strerror or exc)
