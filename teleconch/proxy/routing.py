"""Where a proxied connection goes, and whether the user may go there.

A target is resolved in Teleport's order: a registered node name (with or
without the ``.<cluster>`` suffix), a node id, a ``key=value`` label that
matches exactly one node, and DNS or an IP only where the config allows
unregistered hosts.  A registered node is reached at its registered address,
whatever port the client asked for.  Access comes from the roles in the
verified certificate: a role must select the node's labels and grant the login.

`Router` is the one core every way in shares (``direct-tcpip``, the ``proxy:``
subsystem, the web terminal, the recording proxy): it takes a `Grant` and the
client's address, never a protocol's session, resolves and checks, audits
every refusal and every routed connection, and opens the node side through a
`NodeTransport`.  The rules above it are pure functions.
"""

from __future__ import annotations

import ipaddress
import json
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch.addresses import parse_host_port
from teleconch.auth.rbac import ROLES_EXTENSION, TRAITS_EXTENSION, expand_logins
from teleconch.auth.types import Node, Role
from teleconch.proxy.node import NodeEvents, NodeTransport, TCPNodeTransport

log = Logger()

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


# -- the router: one core for every way to a node ----------------------------

OnClose = Callable[[int, int, str, bool], None]
"""``on_close(bytes_up, bytes_down, reason, connected)``: called once when a
connection ends; ``connected`` says whether the node side was ever reached."""

#: The person-facing refusal when the auth service cannot answer a routing question.
BACKEND_DOWN = (
    "the proxy could not reach the auth service to route the request; try again"
)


class Directory(Protocol):
    """What the router asks of the auth service (an `AuthAgent`, or a test's double)."""

    async def list_nodes(self) -> Sequence[Node]: ...

    async def get_roles(self, names: Sequence[str]) -> Sequence[Role]: ...

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None: ...


class Splice(Protocol):
    """A client joined to a node side (the SSH proxy's `SplicingChannel`)."""

    @property
    def ended(self) -> bool: ...

    async def connect(self, node: NodeTransport, target: Target) -> None: ...


@attrs.frozen
class Route:
    """A checked way to a node for one caller, and what its audit records say."""

    target: Target
    grant: Grant
    client_address: str
    login: str  # the login recorded: the one asked for, else the one at the proxy
    how: str


def emit(agent: Directory, event: str, user: str, success: bool, **fields: Any) -> None:
    """Write one audit event without waiting; a failure to write is logged."""
    d = Deferred.fromCoroutine(
        agent.emit_event(event, user=user, success=success, **fields)
    )
    d.addErrback(
        lambda f: log.failure("could not write audit event {event}", f, event=event)
    )


class Router:
    """Node lookup, access checks and the audit of every routed connection.

    ``node_side`` makes the transport a route's node side goes over (TCP to
    the target by default); the web terminal and the recording proxy pass
    their own, or call `open` with one.
    """

    def __init__(
        self,
        agent: Directory,
        reactor: Any,
        cluster_name: str,
        allow_unregistered: bool,
        node_side: Callable[[Route], NodeTransport] | None = None,
    ) -> None:
        self.agent = agent
        self.reactor = reactor
        self.cluster_name = cluster_name
        self.allow_unregistered = allow_unregistered
        self._node_side = node_side or (
            lambda route: TCPNodeTransport.hostname(self.reactor)
        )
        self._cache = Cache(reactor)
        self._splices: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def active(self) -> list[Any]:
        """The splices moving bytes now (to list sessions; to watch memory)."""
        return [c for c in self._splices if not c.ended]

    async def _nodes(self) -> list[Node]:
        nodes = self._cache.get("nodes")
        if nodes is None:
            nodes = list(await self.agent.list_nodes())
            self._cache.put("nodes", nodes)
        return list(nodes)

    async def _roles(self, names: tuple[str, ...]) -> list[Role]:
        roles = self._cache.get(("roles", names))
        if roles is None:
            roles = list(await self.agent.get_roles(list(names)))
            self._cache.put(("roles", names), roles)
        return list(roles)

    async def roles_of(self, grant: Grant) -> list[Role]:
        """The grant's roles (cached as routing's), for checks beyond routing:
        who may join a session (`teleconch.proxy.joining`)."""
        return await self._roles(grant.roles)

    async def node_by_id(self, node_id: str) -> Node | None:
        """The registered node with this id (cached), or None."""
        return next((n for n in await self._nodes() if n.id == node_id), None)

    async def route(
        self,
        grant: Grant,
        client_address: str,
        host: str,
        port: int,
        login: str | None,
        how: str,
        *,
        proxy_login: str = "",
    ) -> Route:
        """Where ``host:port`` leads for this grant; a refusal is audited, once.

        ``login`` is checked when given (``None``: any login the roles allow
        there will do, as for ``direct-tcpip``); ``proxy_login``, the login
        given to the proxy, is what the audit records when it is not.
        """
        recorded = login or proxy_login
        try:
            target = resolve(
                host,
                port,
                await self._nodes(),
                self.cluster_name,
                self.allow_unregistered,
            )
            check_access(target, await self._roles(grant.roles), grant, login)
        except RoutingError as e:
            self.refused(grant, client_address, host, port, recorded, how, e)
            raise
        except Exception as e:
            log.failure("routing {host} for {user}", host=host, user=grant.user)
            error = RoutingError(BACKEND_DOWN, "routing backend error")
            self.refused(grant, client_address, host, port, recorded, how, error)
            raise error from e
        return Route(target, grant, client_address, recorded, how)

    def refused(
        self,
        grant: Grant,
        client_address: str,
        host: str,
        port: int,
        login: str,
        how: str,
        error: RoutingError,
    ) -> None:
        """Audit one refused request (also one refused before routing, e.g. malformed)."""
        emit(
            self.agent, "proxy.connect", grant.user, False,
            login=login, node=host, port=port, how=how,
            client_addr=client_address, reason=error.reason, message=str(error),
        )  # fmt: skip

    async def reachable(self, grant: Grant) -> list[dict[str, Any]]:
        """The nodes this grant's roles allow, with the logins they allow there."""
        roles = await self._roles(grant.roles)
        out = []
        for node in await self._nodes():
            target = Target(node.addr, 0, node)
            logins = logins_on(target, roles, grant)
            if logins:
                out.append(
                    {"name": node.name, "id": node.id, "addr": node.addr,
                     "labels": dict(node.labels), "logins": logins}
                )  # fmt: skip
        return sorted(out, key=lambda n: n["name"])

    def audit_close(self, route: Route) -> OnClose:
        """What to call when a routed connection ends: its one audit record.

        A connection that reached the node is a ``proxy.session``; one that
        never did (the connect failed, the client left first) is a failed
        ``proxy.connect`` with the reason.
        """
        started = self.reactor.seconds()
        target = route.target

        def on_close(
            bytes_up: int, bytes_down: int, reason: str, connected: bool
        ) -> None:
            if not connected:
                emit(
                    self.agent, "proxy.connect", route.grant.user, False,
                    login=route.login, node=target.name,
                    addr=f"{target.host}:{target.port}", how=route.how,
                    client_addr=route.client_address, reason=reason,
                )  # fmt: skip
                return
            emit(
                self.agent, "proxy.session", route.grant.user, True,
                login=route.login, node=target.name,
                addr=f"{target.host}:{target.port}", how=route.how,
                client_addr=route.client_address, start=started,
                end=self.reactor.seconds(), bytes_up=bytes_up, bytes_down=bytes_down,
                reason=reason,
            )  # fmt: skip

        return on_close

    def node_side(self, route: Route) -> NodeTransport:
        """A new, unconnected transport for the route's node side."""
        return self._node_side(route)

    async def open(self, route: Route, events: NodeEvents) -> NodeTransport:
        """Open the route's node side reporting to ``events``; raise why not."""
        node = self.node_side(route)
        await node.connect(route.target, events)
        return node

    async def connect(self, splice: Splice, route: Route) -> None:
        """Join ``splice`` to the route's node side; a failure is the splice's to tell.

        The caller has made the splice's ``on_close`` record the route
        (`audit_close`); a splice already over (its client left while the
        route was checked) never calls it again, so its record is written here.
        """
        if splice.ended:
            self.audit_close(route)(0, 0, "client left before connecting", False)
            return
        self._splices.add(splice)
        try:
            await splice.connect(self.node_side(route), route.target)
        except Exception as e:
            log.info(
                "could not reach {target}: {e}", target=route.target.name, e=str(e)
            )
