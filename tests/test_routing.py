"""Node lookup and role checks at the proxy, and the Router that every way in
shares: pure rules, then the Router driven as the web terminal will drive it
(a Grant and a client address, no SSH session), all in memory, no sockets."""

from __future__ import annotations

import json
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter

from teleconch.auth.rbac import BUILTIN_ROLES
from teleconch.auth.types import INTERNAL_LOGINS, Node, Role
from teleconch.proxy.routing import (
    AccessDenied,
    Cache,
    Grant,
    Router,
    RoutingError,
    Target,
    check_access,
    labels_match,
    resolve,
)

NODES = [
    Node(
        id="1111",
        name="web1",
        addr="10.0.0.1:2222",
        labels={"env": "prod", "role": "web"},
    ),
    Node(
        id="2222", name="web2", addr="10.0.0.2", labels={"env": "prod", "role": "web"}
    ),
    Node(
        id="3333", name="db1", addr="10.0.0.3:22", labels={"env": "prod", "role": "db"}
    ),
    Node(id="4444", name="dev1", addr="10.0.0.4:22", labels={"env": "dev"}),
]
ACCESS = next(r for r in BUILTIN_ROLES if r.name == "access")
AUDITOR = next(r for r in BUILTIN_ROLES if r.name == "auditor")


def test_a_node_name_routes_to_its_registered_address_whatever_port() -> None:
    """web1:22 goes to web1's registered 10.0.0.1:2222."""
    t = resolve("web1", 22, NODES, "example.com", False)
    assert (t.host, t.port, t.name) == ("10.0.0.1", 2222, "web1")


def test_the_cluster_suffix_is_optional() -> None:
    """web1.example.com is web1; a node without a port listens on 22."""
    assert resolve("web1.example.com", 3022, NODES, "example.com", False).name == "web1"
    t = resolve("web2", 3022, NODES, "example.com", False)
    assert (t.host, t.port) == ("10.0.0.2", 22)


def test_a_node_id_routes_to_the_node() -> None:
    """The id is the third name a node answers to."""
    assert resolve("3333", 22, NODES, "example.com", False).name == "db1"


def test_a_label_matching_one_node_routes_to_it() -> None:
    """role=db is db1."""
    assert resolve("role=db", 22, NODES, "example.com", False).name == "db1"


def test_an_ambiguous_label_lists_the_nodes() -> None:
    """role=web matches two nodes: the error names both."""
    with pytest.raises(RoutingError) as e:
        resolve("role=web", 22, NODES, "example.com", False)
    assert "web1, web2" in str(e.value) and e.value.reason == "ambiguous label"


def test_an_unregistered_host_is_refused_with_how_to_register_it() -> None:
    """By default only registered nodes are reachable."""
    with pytest.raises(RoutingError) as e:
        resolve("10.9.9.9", 22, NODES, "example.com", False)
    assert (
        "teleconch-ctl nodes add" in str(e.value) and e.value.reason == "unknown node"
    )
    with pytest.raises(RoutingError):
        resolve("mail.example.org", 22, NODES, "example.com", False)


def test_an_unknown_node_under_the_cluster_suggests_its_bare_name() -> None:
    """web9.example.com is reached by that name, but registered as web9."""
    with pytest.raises(RoutingError) as e:
        resolve("web9.example.com", 22, NODES, "example.com", False)
    assert "nodes add --name web9 --addr HOST:22" in str(e.value)
    with pytest.raises(RoutingError) as e:
        resolve("10.9.9.9", 2222, NODES, "example.com", False)
    assert "nodes add --name NAME --addr 10.9.9.9:2222" in str(e.value)


def test_unregistered_hosts_pass_where_allowed() -> None:
    """allow_unregistered_nodes lets DNS names and IPs through, on the port asked."""
    t = resolve("10.9.9.9", 2200, NODES, "example.com", True)
    assert (t.host, t.port, t.node) == ("10.9.9.9", 2200, None)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"*": ["*"]}, {}, True),
        ({"*": ["*"]}, {"env": "prod"}, True),
        ({"env": ["prod"]}, {"env": "prod", "role": "web"}, True),
        ({"env": ["prod"]}, {"env": "dev"}, False),
        ({"env": ["prod", "dev"]}, {"env": "dev"}, True),
        ({"env": ["*"]}, {"env": "any"}, True),
        ({"env": ["*"]}, {}, False),
        ({"env": ["prod"], "role": ["db"]}, {"env": "prod", "role": "web"}, False),
        ({}, {"env": "prod"}, False),
    ],
)
def test_labels_match(selector: dict, labels: dict, expected: bool) -> None:
    """Every selector key must match; '*' matches any value or any node."""
    assert labels_match(selector, labels) is expected


def _grant(roles: tuple[str, ...], logins: tuple[str, ...]) -> Grant:
    return Grant.from_extensions(
        "alice",
        {
            "teleconch-roles": json.dumps(
                {"version": "v1", "roles": list(roles)}
            ).encode(),
            "teleconch-traits": json.dumps({"logins": list(logins)}).encode(),
        },
    )


def test_access_role_allows_the_users_own_logins_everywhere() -> None:
    """The built-in access role: any node, the user's logins."""
    grant = _grant(("access",), ("alice", "root"))
    target = resolve("db1", 22, NODES, "example.com", False)
    check_access(target, [ACCESS], grant, "root")
    with pytest.raises(AccessDenied) as e:
        check_access(target, [ACCESS], grant, "postgres")
    assert "login 'postgres' is not allowed on db1" in str(e.value)
    assert "alice, root" in str(e.value)


def test_a_role_limited_by_labels_refuses_other_nodes_saying_which() -> None:
    """dev-only role: dev1 yes, db1 no, and the message names roles and labels."""
    dev = Role(
        name="dev", logins=(INTERNAL_LOGINS, "deploy"), node_labels={"env": ["dev"]}
    )
    grant = _grant(("dev",), ("alice",))
    check_access(
        resolve("dev1", 22, NODES, "example.com", False), [dev], grant, "deploy"
    )
    with pytest.raises(AccessDenied) as e:
        check_access(
            resolve("db1", 22, NODES, "example.com", False), [dev], grant, "alice"
        )
    assert "your roles (dev) do not allow db1 (env=prod,role=db)" in str(e.value)
    assert e.value.reason == "roles do not select the node"


def test_auditor_reaches_no_node() -> None:
    """A role with no logins grants no access."""
    with pytest.raises(AccessDenied):
        check_access(
            Target("10.0.0.4", 22, NODES[3]),
            [AUDITOR],
            _grant(("auditor",), ("a",)),
            None,
        )


def test_a_certificate_without_our_extensions_grants_nothing() -> None:
    """A foreign certificate (no roles, no traits) cannot be used to reach nodes."""
    grant = Grant.from_extensions("alice", {"teleconch-roles": b"not json"})
    assert grant.roles == () and grant.traits_logins == ()
    with pytest.raises(AccessDenied):
        check_access(Target("10.0.0.4", 22, NODES[3]), [], grant, None)


def test_cache_expires_after_its_ttl() -> None:
    """The proxy's copies of nodes and roles are refreshed after the TTL."""
    clock = Clock()
    cache = Cache(clock, ttl=10)
    cache.put("nodes", [1])
    assert cache.get("nodes") == [1]
    clock.advance(11)
    assert cache.get("nodes") is None


# -- the Router, as a web-style caller uses it: a Grant, an address, no SSH ----

T = TypeVar("T")
WEB_CLIENT = "203.0.113.9"
WEB_OPS = {"name": "web-ops", "logins": ["root"], "node_labels": {"env": ["prod"]}}


class Directory:
    """The auth service as the Router sees it: nodes, roles, an audit log."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self.roles = [WEB_OPS]
        self.events: list[dict[str, Any]] = []

    async def list_nodes(self) -> list[Node]:
        return [Node.from_json(n) for n in self.nodes]

    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        return [Role.from_json(r) for r in self.roles if r["name"] in names]

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        self.events.append({"event": event, "user": user, "success": success, **fields})


def now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that waits on nothing and return its result (or raise)."""
    results: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Events:
    """A web terminal's end of the node side: what the node sent, how it ended."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.log: list[str] = []

    def node_data(self, data: bytes) -> None:
        self.data += data

    def node_eof(self) -> None:
        self.log.append("eof")

    def node_lost(self, reason: Failure) -> None:
        self.log.append("lost")

    def node_full(self) -> None:
        self.log.append("full")

    def node_drained(self) -> None:
        self.log.append("drained")


def web_router() -> tuple[Router, Directory, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    directory = Directory(
        [{"id": "n1", "name": "web1", "addr": "web1.internal:2222",
          "labels": {"env": "prod"}},
         {"id": "n2", "name": "db1", "addr": "db1.internal:22",
          "labels": {"env": "secret"}}]
    )  # fmt: skip
    return Router(directory, reactor, "example.com", False), directory, reactor


def test_a_web_caller_routes_with_a_grant_and_talks_to_the_node_over_tcp() -> None:
    """No SSH session, no certificate: a Grant and a client address route to
    web1, the Router opens the node side over TCP (in memory), bytes go there
    and back, and the close is audited as a web connection."""
    router, directory, reactor = web_router()
    reactor.listenTCP(2222, Factory.forProtocol(Echo))
    grant = Grant("alice", ("web-ops",), ())
    route = now(router.route(grant, WEB_CLIENT, "web1", 22, "root", "web"))
    assert (route.target.name, route.target.port, route.how) == ("web1", 2222, "web")
    events = Events()
    opened: list[Any] = []
    Deferred.fromCoroutine(router.open(route, events)).addBoth(opened.append)
    reactor.advance(0)
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    [node] = opened
    on_close = router.audit_close(route)
    node.write(b"hello, node\n")
    pump.flush()
    assert bytes(events.data) == b"hello, node\n"
    node.close()
    pump.flush()
    assert events.log == ["lost"]
    on_close(12, 12, "finished", True)
    [closed] = directory.events
    assert closed == {
        "event": "proxy.session", "user": "alice", "success": True, "login": "root",
        "node": "web1", "addr": "web1.internal:2222", "how": "web",
        "client_addr": WEB_CLIENT, "start": 0.0, "end": 0.0, "bytes_up": 12,
        "bytes_down": 12, "reason": "finished",
    }  # fmt: skip


def test_a_web_callers_refusal_is_audited_once_with_how_web() -> None:
    """A login the roles do not grant, and a node they do not select: each is
    refused with the person's message and audited once, as a web connection."""
    router, directory, _reactor = web_router()
    grant = Grant("alice", ("web-ops",), ())
    with pytest.raises(AccessDenied) as e:
        now(router.route(grant, WEB_CLIENT, "web1", 22, "admin", "web"))
    assert "login 'admin' is not allowed on web1" in str(e.value)
    with pytest.raises(AccessDenied):
        now(router.route(grant, WEB_CLIENT, "db1", 22, "root", "web"))
    assert [(ev["event"], ev["success"], ev["how"], ev["client_addr"], ev["login"],
             ev["node"], ev["reason"]) for ev in directory.events] == [
        ("proxy.connect", False, "web", WEB_CLIENT, "admin", "web1",
         "login not allowed"),
        ("proxy.connect", False, "web", WEB_CLIENT, "root", "db1",
         "roles do not select the node"),
    ]  # fmt: skip


def test_without_a_login_the_audit_records_the_login_given_to_the_proxy() -> None:
    """direct-tcpip checks no login; its records carry the proxy login instead."""
    router, directory, _reactor = web_router()
    grant = Grant("alice", ("web-ops",), ())
    route = now(
        router.route(grant, WEB_CLIENT, "web1", 22, None, "direct-tcpip",
                     proxy_login="root")
    )  # fmt: skip
    assert route.login == "root"
    with pytest.raises(RoutingError):
        now(router.route(grant, WEB_CLIENT, "nope", 22, None, "direct-tcpip",
                         proxy_login="root"))  # fmt: skip
    [refused] = directory.events
    assert refused["login"] == "root" and refused["reason"] == "unknown node"


def test_reachable_lists_the_nodes_a_grant_allows_with_their_logins() -> None:
    """A listing from a Grant alone: web1 with root; db1 is not selected."""
    router, _directory, _reactor = web_router()
    assert now(router.reachable(Grant("alice", ("web-ops",), ()))) == [
        {"name": "web1", "id": "n1", "addr": "web1.internal:2222",
         "labels": {"env": "prod"}, "logins": ["root"]}
    ]  # fmt: skip


class DownDirectory(Directory):
    """The auth service is unreachable."""

    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        raise ConnectionError("auth service unreachable")


def test_a_backend_failure_is_refused_with_a_person_facing_message_and_audited() -> (
    None
):
    """The roles cannot be fetched: a RoutingError the person can read, and
    one audited refusal saying why."""
    reactor = MemoryReactorClock()
    directory = DownDirectory(web_router()[1].nodes)
    router = Router(directory, reactor, "example.com", False)
    with pytest.raises(RoutingError) as e:
        now(router.route(Grant("alice", ("web-ops",), ()), WEB_CLIENT, "web1", 22,
                         "root", "web"))  # fmt: skip
    assert str(e.value) == (
        "the proxy could not reach the auth service to route the request; try again"
    )
    [refused] = directory.events
    assert (refused["event"], refused["success"], refused["reason"]) == (
        "proxy.connect", False, "routing backend error",
    )  # fmt: skip


def test_a_connect_that_never_reached_the_node_is_audited_as_a_failure() -> None:
    """One record per attempt: a session if the node was reached, else a
    failed proxy.connect with the reason."""
    router, directory, _reactor = web_router()
    route = now(router.route(Grant("alice", ("web-ops",), ()), WEB_CLIENT, "web1", 22,
                             "root", "web"))  # fmt: skip
    router.audit_close(route)(0, 0, "connect failed: Connection refused", False)
    [failed] = directory.events
    assert (failed["event"], failed["success"], failed["node"], failed["reason"]) == (
        "proxy.connect", False, "web1", "connect failed: Connection refused",
    )  # fmt: skip
