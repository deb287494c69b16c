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


def _join(
    cluster: Cluster, role: str, name: str, token: str = "", **kw: Any
) -> api.JoinResult:
    token = token or run(cluster.server.create_token(role, 600)).token
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


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("tls_public_key", b"garbage", "bad TLS key"),
        (
            "tls_public_key",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "bad TLS key",
        ),
        ("ssh_public_key", "ssh-ed25519 garbage", "bad host key"),
    ],
)
def test_a_bad_public_key_costs_neither_the_token_nor_the_name(
    cluster: Cluster, field: str, value: object, reason: str
) -> None:
    """Both keys are read before the token is spent: the refusal is a
    BadParameter, audited, and the same token then joins under that name."""
    token = run(cluster.server.create_token(ROLE_PROXY, 600)).token
    with pytest.raises(api.BadParameter):
        _join(cluster, ROLE_PROXY, "p2", token=token, **{field: value})
    assert cluster.reasons("join") == [reason]
    assert run(cluster.store.list_identities()) == []
    assert _join(cluster, ROLE_PROXY, "p2", token=token).cluster_name == "test.example"


def test_a_failure_after_the_identity_is_written_frees_the_name(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If signing fails once the identity is written, the identity goes (the
    name is free again) and the failure is audited."""

    def broken(*args: Any, **kw: Any) -> str:
        raise ValueError("the host CA is broken")

    registrar = cluster.server.registrar
    monkeypatch.setattr(registrar._host_ca, "sign_host_certificate", broken)
    with pytest.raises(ValueError, match="broken"):
        _join(cluster, ROLE_PROXY, "p2")
    assert run(cluster.store.list_identities()) == []
    assert cluster.reasons("join") == ["signing failed"]
    monkeypatch.undo()
    _join(cluster, ROLE_PROXY, "p2")
