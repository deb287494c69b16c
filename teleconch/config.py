"""The config file (shaped like ``teleport.yaml``) read into one typed settings object.

Every key is known: a typo or a bad value stops start-up with a message that
names the key, so a service never runs on a setting it silently ignored.
"""

from __future__ import annotations

import difflib
import re
import socket
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import yaml

# Re-exported: addresses are part of what the settings are made of.
from teleconch.addresses import HostPort as HostPort
from teleconch.addresses import listen_endpoint as listen_endpoint
from teleconch.addresses import local_dial_addr as local_dial_addr
from teleconch.addresses import parse_host_port as parse_host_port
from teleconch.algorithms import SSHAlgorithms, parse_algorithm_list
from teleconch.durations import parse_duration
from teleconch.logs import SEVERITIES, LogSettings

AUTH_PORT = 3025
PROXY_SSH_PORT = 3023
PROXY_WEB_PORT = 3080
#: Proxy peering (Teleport's 3021): proxies reach each other's sessions here.
PROXY_PEER_PORT = 3021
DEFAULT_DATA_DIR = "teleconch-data"
SESSION_RECORDING_MODES = ("node", "proxy", "off")
STORAGE_TYPES = ("sqlite", "postgresql")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


@attrs.frozen
class StorageSettings:
    """Where the auth service keeps its records (``teleconch.storage``).

    ``path`` is SQLite's file; None means ``<data_dir>/auth/teleconch.db``.
    """

    type: str = "sqlite"
    path: Path | None = None


@attrs.frozen
class GlobalSettings:
    nodename: str
    data_dir: Path
    auth_servers: tuple[HostPort, ...] = ()
    auth_token: str | None = attrs.field(default=None, repr=False)
    ca_pin: str | None = None
    log: LogSettings = attrs.field(factory=LogSettings)
    storage: StorageSettings = attrs.field(factory=StorageSettings)


@attrs.frozen
class AuthSettings:
    enabled: bool
    listen_addr: str
    cluster_name: str
    session_recording: str = "node"
    proxy_checks_host_keys: bool = True
    #: Whether what people type is recorded too (as Teleport's ``enhanced_recording``
    #: is not: input is off unless asked for).
    record_input: bool = False
    #: Lifetime of the host certificate a node gets from `teleconch join openssh`.
    node_cert_ttl: int = 30 * 86400
    #: Seconds a recording is kept after its end; None: forever.
    recordings_retention: int | None = None


@attrs.frozen
class ProxySettings:
    enabled: bool
    listen_addr: str
    web_listen_addr: str
    #: How people reach the listeners; port 0 means the port they are bound to.
    public_addr: HostPort
    ssh_public_addr: HostPort
    #: Proxy peering: where other proxies of the cluster join sessions held here
    #: (mutual TLS, cluster identities), and the address they are told.
    peer_listen_addr: str = f"0.0.0.0:{PROXY_PEER_PORT}"
    peer_public_addr: HostPort = attrs.field(factory=lambda: HostPort("", 0))
    https_cert_file: Path | None = None
    https_key_file: Path | None = None
    allow_unregistered_nodes: bool = False
    #: Open HTTPS connections one client address may hold; more are dropped.
    max_web_connections_per_address: int = 64
    #: A web session with no API call or terminal input for this long ends.
    web_idle_timeout: int = 30 * 60
    #: Limits on the SSH listener (OpenSSH's LoginGraceTime, MaxStartups,
    #: PerSourceMaxStartups, MaxSessions ideas); see etc/teleconch.yaml.
    login_grace_time: int = 30
    max_startups: int = 100
    max_startups_per_source: int = 10
    max_channels_per_connection: int = 64
    #: ``ciphers``, ``kex_algos``, ``mac_algos``: what the SSH listener offers.
    algorithms: SSHAlgorithms = attrs.field(factory=SSHAlgorithms)


@attrs.frozen
class Settings:
    """Everything a teleconch process needs to know to start."""

    teleconch: GlobalSettings
    auth: AuthSettings
    proxy: ProxySettings
    source: str = "<defaults>"

    @property
    def data_dir(self) -> Path:
        return self.teleconch.data_dir


# --- validation helpers -------------------------------------------------


def _check_keys(section: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(
                f"unknown key {name!r}{hint} (known here: {', '.join(sorted(known))})"
            )


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name!r} must be a mapping of settings")
    return value


def _get(
    section: Mapping[str, Any],
    where: str,
    key: str,
    kind: Callable[[Any], Any],
    default: Any,
) -> Any:
    if key not in section or section[key] is None:
        return default
    try:
        return kind(section[key])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}.{key}: {e}") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not yes/no")


def _node_cert_ttl(value: Any) -> int:
    """A node host certificate's lifetime: 1h to 1 year, e.g. 30d or 720h."""
    seconds = parse_duration(str(value))
    if not 3600 <= seconds <= 366 * 86400:
        raise ValueError(f"{value!r} must be between 1h and 366d (e.g. 30d)")
    return seconds


def _str(value: Any) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value).strip()
        if text:
            return text
    raise ValueError(f"{value!r} is not a non-empty string")


def _positive_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"{value!r} is not a whole number above 0")


def _listen(value: Any) -> str:
    text = _str(value)
    listen_endpoint(text)  # validates
    return text


def _enum(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _str(value)
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return check


#: The shortest ``recordings_retention``: anything shorter would remove
#: recordings that are still being uploaded.
MIN_RETENTION = 3600


def parse_retention(value: Any) -> int | None:
    """``recordings_retention``: ``forever`` (None) or a duration of 1h or more."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    text = str(value).strip().lower()
    if text == "forever":
        return None
    seconds = parse_duration(text)
    if seconds < MIN_RETENTION:
        raise ValueError(
            f"{value!r} is shorter than 1h; write e.g. 90d or 12h, or forever"
        )
    return seconds


def _cluster_name(value: Any) -> str:
    text = _str(value)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?", text):
        raise ValueError(
            f"{text!r} is not a valid cluster name (letters, digits, '.', '-')"
        )
    return text


def _pin(value: Any) -> str:
    text = _str(value)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", text):
        raise ValueError(
            f"{text!r} is not a CA pin; copy it from `teleconch-ctl tokens add`"
        )
    return text


def _auth_servers(value: Any) -> tuple[HostPort, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a list of host:port addresses")
    return tuple(parse_host_port(_str(v), AUTH_PORT) for v in items)


def _token(value: Any) -> str:
    """A token value, or the path of a file holding it (as Teleport accepts)."""
    text = _str(value)
    if text.startswith("/"):
        try:
            text = Path(text).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read token file: {e.strerror}") from None
    return text


def _file(value: Any) -> Path:
    return Path(_str(value))


def _positive_duration(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    seconds = parse_duration(str(value))
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a duration above 0; write e.g. 30s or 2m")
    return seconds


def _size(value: Any) -> int:
    """Bytes, as people write them: 10MB, 512KB, 1GB, or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(\d+)\s*([KMG]i?B?)?", _str(value), re.IGNORECASE)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a size; write e.g. 10MB, 512KB or 1GB")
    unit = (m.group(2) or "B")[0].upper()
    return int(m.group(1)) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{value!r} is not a whole number >= 0")


def _log(value: Any) -> LogSettings:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping (severity, output, max_size, max_backups)")
    _check_keys(value, _LOG_KEYS, "teleconch.log")
    where = "teleconch.log"
    default = LogSettings()
    return LogSettings(
        severity=_get(
            value, where, "severity", lambda v: _enum(*SEVERITIES)(_str(v).lower()),
            default.severity,
        ),
        output=_get(value, where, "output", _str, None),
        max_size=_get(value, where, "max_size", _size, default.max_size),
        max_backups=_get(value, where, "max_backups", _count, default.max_backups),
    )  # fmt: skip


def _storage(value: Any) -> StorageSettings:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping (type, and path for sqlite)")
    where = "teleconch.storage"
    kind = _get(value, where, "type", _enum(*STORAGE_TYPES), "sqlite")
    if kind == "postgresql":
        raise ConfigError(
            f"{where}.type: 'postgresql' is not available yet; use 'sqlite' (the default)"
        )
    _check_keys(value, {"type", "path"}, where)
    return StorageSettings(kind, _get(value, where, "path", _file, None))


_LOG_KEYS = {"severity", "output", "max_size", "max_backups"}
_GLOBAL_KEYS = {
    *("nodename", "data_dir", "auth_servers", "auth_token", "ca_pin", "log"),
    "storage",
}
_AUTH_KEYS = {
    "enabled",
    "listen_addr",
    "cluster_name",
    "session_recording",
    "proxy_checks_host_keys",
    "record_input",
    "node_cert_ttl",
    "recordings_retention",
}
_PROXY_KEYS = {
    "enabled",
    "listen_addr",
    "web_listen_addr",
    "public_addr",
    "ssh_public_addr",
    "peer_listen_addr",
    "peer_public_addr",
    "https_cert_file",
    "https_key_file",
    "allow_unregistered_nodes",
    "max_web_connections_per_address",
    "web_idle_timeout",
    "login_grace_time",
    "max_startups",
    "max_startups_per_source",
    "max_channels_per_connection",
    "ciphers",
    "kex_algos",
    "mac_algos",
}


_SSH_LIMIT_KEYS = [
    ("login_grace_time", _positive_duration, 30),
    ("max_startups", _positive_int, 100),
    ("max_startups_per_source", _positive_int, 10),
    ("max_channels_per_connection", _positive_int, 64),
]


def parse(
    raw: Mapping[str, Any] | None,
    source: str = "<config>",
    data_dir: str | None = None,
) -> Settings:
    """Validate a loaded YAML document.  With nothing in it: the all-in-one."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping")
    _check_keys(raw, {"teleconch", "auth_service", "proxy_service", "version"}, "")
    g, a, p = (_section(raw, n) for n in ("teleconch", "auth_service", "proxy_service"))
    _check_keys(g, _GLOBAL_KEYS, "teleconch")
    _check_keys(a, _AUTH_KEYS, "auth_service")
    _check_keys(p, _PROXY_KEYS, "proxy_service")

    nodename = _get(g, "teleconch", "nodename", _str, None) or socket.gethostname()
    glob = GlobalSettings(
        nodename=nodename,
        data_dir=Path(
            data_dir or _get(g, "teleconch", "data_dir", _str, DEFAULT_DATA_DIR)
        ),
        auth_servers=_get(g, "teleconch", "auth_servers", _auth_servers, ()),
        auth_token=_get(g, "teleconch", "auth_token", _token, None),
        ca_pin=_get(g, "teleconch", "ca_pin", _pin, None),
        log=_get(g, "teleconch", "log", _log, LogSettings()),
        storage=_get(g, "teleconch", "storage", _storage, StorageSettings()),
    )
    auth = AuthSettings(
        enabled=_get(a, "auth_service", "enabled", _bool, True),
        listen_addr=_get(
            a, "auth_service", "listen_addr", _listen, f"0.0.0.0:{AUTH_PORT}"
        ),
        cluster_name=_get(a, "auth_service", "cluster_name", _cluster_name, nodename),
        session_recording=_get(
            a,
            "auth_service",
            "session_recording",
            _enum(*SESSION_RECORDING_MODES),
            "node",
        ),
        proxy_checks_host_keys=_get(
            a, "auth_service", "proxy_checks_host_keys", _bool, True
        ),
        record_input=_get(a, "auth_service", "record_input", _bool, False),
        node_cert_ttl=_get(
            a, "auth_service", "node_cert_ttl", _node_cert_ttl, 30 * 86400
        ),
        recordings_retention=_get(
            a, "auth_service", "recordings_retention", parse_retention, None
        ),
    )

    def addr(key: str) -> HostPort:
        # Port 0: whatever port the listener is bound to.
        return _get(
            p,
            "proxy_service",
            key,
            lambda v: parse_host_port(_str(v), 0),
            HostPort(nodename, 0),
        )

    # The all-in-one (no config at all) has no peers: its peer listener stays
    # on loopback, on any free port.
    peer_listen = _get(
        p,
        "proxy_service",
        "peer_listen_addr",
        _listen,
        "127.0.0.1:0" if not raw else f"0.0.0.0:{PROXY_PEER_PORT}",
    )
    proxy = ProxySettings(
        enabled=_get(p, "proxy_service", "enabled", _bool, True),
        listen_addr=_get(
            p, "proxy_service", "listen_addr", _listen, f"0.0.0.0:{PROXY_SSH_PORT}"
        ),
        web_listen_addr=_get(
            p, "proxy_service", "web_listen_addr", _listen, f"0.0.0.0:{PROXY_WEB_PORT}"
        ),
        public_addr=addr("public_addr"),
        # People reach both listeners by the same name unless told otherwise.
        ssh_public_addr=_get(
            p,
            "proxy_service",
            "ssh_public_addr",
            lambda v: parse_host_port(_str(v), 0),
            HostPort(addr("public_addr").host, 0),
        ),
        peer_listen_addr=peer_listen,
        peer_public_addr=_get(
            p,
            "proxy_service",
            "peer_public_addr",
            lambda v: parse_host_port(_str(v), 0),
            HostPort(_advertised_host(peer_listen, addr("public_addr").host), 0),
        ),
        https_cert_file=_get(p, "proxy_service", "https_cert_file", _file, None),
        https_key_file=_get(p, "proxy_service", "https_key_file", _file, None),
        allow_unregistered_nodes=_get(
            p, "proxy_service", "allow_unregistered_nodes", _bool, False
        ),
        max_web_connections_per_address=_get(
            p, "proxy_service", "max_web_connections_per_address", _positive_int, 64
        ),
        web_idle_timeout=_get(
            p, "proxy_service", "web_idle_timeout", _positive_duration, 30 * 60
        ),
        **{
            key: _get(p, "proxy_service", key, kind, default)
            for key, kind, default in _SSH_LIMIT_KEYS
        },
        algorithms=SSHAlgorithms(
            **{
                key: _get(
                    p, "proxy_service", key, partial(parse_algorithm_list, key), None
                )
                for key in ("ciphers", "kex_algos", "mac_algos")
            }
        ),
    )
    settings = Settings(teleconch=glob, auth=auth, proxy=proxy, source=source)
    _check_consistency(settings)
    return settings


def _advertised_host(listen_addr: str, public_host: str) -> str:
    """The host other proxies are told: the listen address's, unless it is a
    wildcard or not TCP (then the proxy's public host, as for the other listeners)."""
    m = re.match(r"^tcp6?:\d+(?::interface=(.*))?$", listen_addr)
    if m:
        host = (m.group(1) or "").replace("\\:", ":")
    elif re.match(r"^(unix|systemd):", listen_addr):
        host = ""
    else:
        host = parse_host_port(listen_addr).host
    return public_host if host in ("", "0.0.0.0", "::") else host


#: Recognised keys whose feature has not landed: refused rather than ignored.
def _check_consistency(s: Settings) -> None:
    if not (s.auth.enabled or s.proxy.enabled):
        raise ConfigError(
            f"{s.source}: no service is enabled; set auth_service.enabled or "
            "proxy_service.enabled to yes"
        )
    if (s.proxy.https_cert_file is None) != (s.proxy.https_key_file is None):
        raise ConfigError(
            "proxy_service.https_cert_file and https_key_file go together: set both or neither"
        )
    if s.proxy.max_startups_per_source > s.proxy.max_startups:
        raise ConfigError(
            "proxy_service.max_startups_per_source cannot be above max_startups "
            f"({s.proxy.max_startups_per_source} > {s.proxy.max_startups})"
        )
    if s.proxy.enabled and not s.auth.enabled and not s.teleconch.auth_servers:
        raise ConfigError(
            "teleconch.auth_servers: a proxy without a local auth service must name "
            "the auth servers to join (host:3025)"
        )


def load(path: str | Path | None, data_dir: str | None = None) -> Settings:
    """Read a config file; ``None`` gives the all-in-one defaults."""
    if path is None:
        return parse({}, "<defaults>", data_dir)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    try:
        return parse(raw, str(path), data_dir)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
