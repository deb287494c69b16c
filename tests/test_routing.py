"""Node lookup and role checks at the proxy: pure rules, no sockets."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from teleconch.auth.rbac import BUILTIN_ROLES
from teleconch.auth.types import INTERNAL_LOGINS, Node, Role
from teleconch.proxy.routing import (
    AccessDenied,
    Cache,
    Grant,
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
