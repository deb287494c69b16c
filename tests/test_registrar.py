"""RegisterUsingToken on an AuthServer in memory: what a joiner may take,
and that a refused join costs neither its token nor its name.

Unit tests: the AuthServer of ``tests.test_auth_server_clock`` (a
MemoryStore, a Clock, no reactor).
"""

from __future__ import annotations

from typing import Any

import pytest

from teleconch.auth import protocol as api
from teleconch.pki import (
    ROLE_NODE,
    ROLE_PROXY,
    generate_private_key_pem,
    public_key_pem,
)
from tests.test_auth_server_clock import ADDR, Cluster, _ssh_pub, run


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def _join(cluster: Cluster, role: str, name: str, **kw: Any) -> api.JoinResult:
    token = run(cluster.server.create_token(role, 600)).token
    args: dict[str, Any] = {
        "token": token,
        "role": role,
        "name": name,
        "public_addr": f"{name}.example.org:3080",
        "ssh_addr": f"{name}.example.org:3023",
        "additional_principals": [],
        "tls_public_key": public_key_pem(generate_private_key_pem()),
        "ssh_public_key": _ssh_pub(),
        "client_addr": ADDR,
    }
    args.update(kw)
    return run(cluster.server.register_using_token(**args))


@pytest.mark.parametrize(
    ("name", "addr"),
    [
        ("test.example", "n1.example.org:3022"),
        ("n1", "test.example:3022"),
        ("n1", "proxy.test.example:3022"),  # the default public address
        ("n1", "p2.example.org:3022"),  # a proxy's public host (heartbeat)
        ("n1", "p2ssh.example.org:3022"),  # and its SSH host
    ],
)
def test_a_node_cannot_take_the_cluster_name_or_a_proxy_host(
    cluster: Cluster, name: str, addr: str
) -> None:
    run(
        cluster.server.proxies.heartbeat(
            "p2", "p2.example.org:3080", "p2ssh.example.org:3023"
        )
    )
    with pytest.raises(api.AccessDenied, match="reserved"):
        _join(cluster, ROLE_NODE, name, public_addr=addr, ssh_addr=addr)
    assert len(run(cluster.server.list_tokens())) == 1
    assert run(cluster.store.list_identities()) == []


def test_a_proxy_may_still_take_the_cluster_s_public_address(cluster: Cluster) -> None:
    """Proxies behind one public name (a load balancer) share it."""
    _join(cluster, ROLE_PROXY, "p3", public_addr="proxy.test.example:3080")
