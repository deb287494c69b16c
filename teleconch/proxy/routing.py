"""Where a proxied connection goes, and whether the user may go there.

A target is resolved in Teleport's order: a registered node name (with or
without the ``.<cluster>`` suffix), a node id, a ``key=value`` label that
matches exactly one node, and DNS or an IP only where the config allows
unregistered hosts.  A registered node is reached at its registered address,
whatever port the client asked for.  Access comes from the roles in the
verified certificate: a role must select the node's labels and grant the login.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from teleconch.auth.rbac import ROLES_EXTENSION, TRAITS_EXTENSION, expand_logins
from teleconch.auth.types import Node, Role
from teleconch.config import parse_host_port

#: How long the proxy trusts its copy of the node list and roles.
CACHE_TTL = 10.0


class RoutingError(Exception):
    """The target cannot be reached; ``str()`` is for the person, ``reason`` for the log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AccessDenied(RoutingError):
    pass


@attrs.frozen
class Target:
    """A resolved destination: a registered node, or an allowed unregistered host."""

    host: str
    port: int
    node: Node | None = None

    @property
    def name(self) -> str:
        return self.node.name if self.node else f"{self.host}:{self.port}"

    @property
    def labels(self) -> Mapping[str, str]:
        return self.node.labels if self.node else {}


def _strip_cluster(host: str, cluster: str) -> str:
    suffix = f".{cluster}"
    return host[: -len(suffix)] if host.endswith(suffix) else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(
    host: str,
    port: int,
    nodes: Sequence[Node],
    cluster: str,
    allow_unregistered: bool,
) -> Target:
    """Find where ``host:port`` leads; RoutingError says why not and what to do."""
    name = _strip_cluster(host, cluster)
    for matches in (
        [n for n in nodes if n.name in (host, name)],
        [n for n in nodes if n.id == host],
    ):
        if matches:
            return _target(matches[0])
    if "=" in host:
        key, value = host.split("=", 1)
        matches = [n for n in nodes if n.labels.get(key) == value]
        if len(matches) == 1:
            return _target(matches[0])
        if len(matches) > 1:
            names = ", ".join(sorted(n.name for n in matches))
            raise RoutingError(
                f"{host} matches several nodes ({names}): name one of them",
                "ambiguous label",
            )
        raise RoutingError(f"no node has the label {host}", "unknown label")
    if allow_unregistered:
        return Target(host, port)
    if _is_ip(host):
        what, add = "address", f"--name NAME --addr {host}:{port}"
    else:
        # web9.<cluster> is how people reach it; its registered name is web9.
        what, add = "node", f"--name {name} --addr HOST:{port}"
    raise RoutingError(
        f"{host} is not a registered {what} of cluster {cluster}; an administrator can "
        f"register it with `teleconch-ctl nodes add {add}` "
        "(see `teleconch ls` for the nodes you can reach)",
        "unknown node",
    )


def _target(node: Node) -> Target:
    addr = parse_host_port(node.addr, 22)
    return Target(addr.host, addr.port, node)


def labels_match(
    selector: Mapping[str, Sequence[str]], labels: Mapping[str, str]
) -> bool:
    """Every key of the role's selector must match; ``*`` is a wildcard."""
    if not selector:
        return False
    for key, allowed in selector.items():
        if key == "*":
            if "*" in allowed:
                continue
            return False
        value = labels.get(key)
        if value is None or not ("*" in allowed or value in allowed):
            return False
    return True


@attrs.frozen
class Grant:
    """What the certificate says about its holder, as the proxy needs it."""

    user: str
    roles: tuple[str, ...]
    traits_logins: tuple[str, ...]

    @classmethod
    def from_extensions(cls, user: str, extensions: Mapping[str, bytes]) -> Grant:
        def read(name: str, key: str) -> tuple[str, ...]:
            try:
                value = json.loads(extensions.get(name, b"{}"))[key]
            except (ValueError, KeyError, TypeError):
                return ()
            return tuple(str(x) for x in value) if isinstance(value, list) else ()

        return cls(
            user, read(ROLES_EXTENSION, "roles"), read(TRAITS_EXTENSION, "logins")
        )


def logins_on(target: Target, roles: Iterable[Role], grant: Grant) -> list[str]:
    """The logins the roles grant on this target."""
    selecting = [r for r in roles if labels_match(r.node_labels, target.labels)]
    return expand_logins(selecting, grant.traits_logins)


def check_access(
    target: Target, roles: Sequence[Role], grant: Grant, login: str | None
) -> None:
    """Refuse unless a role selects the node and grants ``login`` there."""
    allowed = logins_on(target, roles, grant)
    role_names = ", ".join(grant.roles) or "none"
    labels = (
        ",".join(f"{k}={v}" for k, v in sorted(target.labels.items())) or "no labels"
    )
    if not allowed:
        raise AccessDenied(
            f"access denied: your roles ({role_names}) do not allow {target.name} "
            f"({labels}); ask an administrator for a role that does",
            "roles do not select the node",
        )
    if login is not None and login not in allowed:
        raise AccessDenied(
            f"access denied: login {login!r} is not allowed on {target.name}; your "
            f"logins there: {', '.join(allowed)}",
            "login not allowed",
        )


class Cache:
    """A value fetched at most every ``ttl`` seconds; a failed fetch keeps no value."""

    def __init__(self, clock: IReactorTime, ttl: float = CACHE_TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self._values: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any | None:
        found = self._values.get(key)
        if found is None or self._clock.seconds() - found[0] > self._ttl:
            return None
        return found[1]

    def put(self, key: Any, value: Any) -> None:
        self._values[key] = (self._clock.seconds(), value)
