"""Joining cannot choose a name that poses as the auth service, a node or another peer.

Interop: a whole cluster with real TLS listeners on 127.0.0.1: the join is
an anonymous AMP call, as a joining proxy makes it, and the AuthAgent test
needs a real handshake to see the peer's role.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory

from teleconch import config as cfg
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent, AuthUnavailable
from teleconch.pki import (
    AUTH_SERVER_NAME,
    ROLE_PROXY,
    TLSAuthority,
    TLSIdentity,
    anonymous_client_options,
    generate_private_key_pem,
    public_key_pem,
)
from tests.harness import Cluster, start_cluster

pytestmark = pytest.mark.interop


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


def _ssh_pub() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


async def _join(c: Cluster, name: str, **overrides: Any) -> dict[str, Any]:
    """RegisterUsingToken with a fresh proxy token, as an anonymous joiner."""
    token = (await c.admin_agent().create_token("proxy", 600)).token
    endpoint = wrapClientTLS(
        anonymous_client_options(),
        HostnameEndpoint(reactor, c.auth_addr.host, c.auth_addr.port),
    )
    proto = cast(amp.AMP, await endpoint.connect(Factory.forProtocol(amp.AMP)))
    assert proto.transport is not None  # connected
    args: dict[str, Any] = {
        "token": token,
        "role": ROLE_PROXY,
        "name": name,
        "public_addr": f"{name}.example.org:3080",
        "ssh_addr": f"{name}.example.org:3023",
        "additional_principals": [],
        "tls_public_key": public_key_pem(generate_private_key_pem()),
        "ssh_public_key": _ssh_pub(),
    }
    args.update(overrides)
    try:
        result: dict[str, Any] = await proto.callRemote(api.RegisterUsingToken, **args)
        return result
    finally:
        proto.transport.loseConnection()


def _principals(cert_line: str) -> list[str]:
    cert = serialization.load_ssh_public_identity(cert_line.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    return [p.decode() for p in cert.valid_principals]


async def _join_refusals(c: Cluster) -> list[str]:
    events = await c.admin_agent().search_events(events=["join"])
    return [e.fields["reason"] for e in events if not e.success]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("name", [AUTH_SERVER_NAME, "localhost", "teleconch-proxy"])
async def test_a_join_cannot_claim_a_reserved_name(cluster: Cluster, name: str) -> None:
    """The auth server's TLS name, localhost and teleconch-* names are not for joiners."""
    with pytest.raises(api.AccessDenied) as e:
        await _join(cluster, name)
    assert "reserved" in str(e.value)
    assert "teleconch.nodename" in str(e.value)
    assert any("reserved" in r for r in await _join_refusals(cluster))


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "name", ["*", "web*", "a b", "", "x" * 70, "127.0.0.1", "-web", "web\n1"]
)
async def test_a_join_name_must_follow_the_node_name_grammar(
    cluster: Cluster, name: str
) -> None:
    """Wildcards, addresses, blanks and over-long names are refused, saying what is allowed."""
    with pytest.raises(api.AccessDenied) as e:
        await _join(cluster, name, public_addr="", ssh_addr="")
    assert "letters, digits" in str(e.value)
    assert await _join_refusals(cluster)


@pytest_twisted.ensureDeferred
async def test_a_join_cannot_take_the_name_of_a_registered_node(
    cluster: Cluster,
) -> None:
    """A proxy token must not buy a host certificate for a node's name."""
    await cluster.admin_agent().upsert_node("web1", "127.0.0.1:22", {})
    with pytest.raises(api.AccessDenied) as e:
        await _join(cluster, "web1")
    assert "node" in str(e.value)
    assert any("node" in r for r in await _join_refusals(cluster))


@pytest_twisted.ensureDeferred
async def test_a_join_cannot_take_the_name_of_another_joined_identity(
    cluster: Cluster,
) -> None:
    """Two joiners with one name would share host principals; the second is refused."""
    await _join(cluster, "proxy2")
    with pytest.raises(api.AccessDenied) as e:
        await _join(cluster, "proxy2")
    assert "already joined" in str(e.value)
    # ... and a node cannot be registered under a joined identity's name.
    with pytest.raises(api.AlreadyExistsError):
        await cluster.admin_agent().upsert_node("proxy2", "127.0.0.1:22", {})


@pytest_twisted.ensureDeferred
async def test_host_principals_are_derived_by_the_auth_service(
    cluster: Cluster,
) -> None:
    """Principals come from the checked name and address, never from a caller's list."""
    with pytest.raises(api.AccessDenied) as e:
        await _join(cluster, "proxy3", additional_principals=["*", "web1"])
    assert "additional principals" in str(e.value)
    result = await _join(cluster, "proxy3")
    principals = _principals(result["ssh_host_cert"])
    assert principals[0] == result["host_id"]
    assert "proxy3" in principals and "proxy3.test.example" in principals
    assert "proxy3.example.org" in principals
    assert "*" not in principals


@pytest_twisted.ensureDeferred
async def test_a_join_address_cannot_name_a_node_or_a_wildcard(
    cluster: Cluster,
) -> None:
    """The advertised address becomes a principal only if it poses as nobody else."""
    await cluster.admin_agent().upsert_node("web1", "10.1.2.3:22", {})
    for addr in ("web1:3080", "web1.test.example:3080", "*:3080", "10.1.2.3:3080"):
        with pytest.raises(api.AccessDenied):
            await _join(cluster, "proxy4", public_addr=addr)
    result = await _join(cluster, "proxy4", public_addr="proxy4.example.org:443")
    assert "proxy4.example.org" in _principals(result["ssh_host_cert"])


class _Silent(Protocol):
    """A server that records what reaches it and never answers."""

    received: list[bytes]

    def connectionMade(self) -> None:
        self.received = []
        _Silent.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    instances: list[_Silent] = []


@pytest_twisted.ensureDeferred
async def test_the_auth_agent_talks_only_to_an_auth_role_certificate(
    tmp_path: Path,
) -> None:
    """A cluster peer whose certificate says proxy cannot pose as the auth service.

    Its certificate is from the cluster's CA and even names teleconch-auth, as a
    join under that name once gave; the agent must refuse it before it sends a
    command (a login would carry a password and a one-time code).
    """
    ca = TLSAuthority.generate("test.example", reactor.seconds())
    impostor = ca.issue_identity(
        ROLE_PROXY,
        "impostor",
        reactor.seconds(),
        3600,
        dns_names=[AUTH_SERVER_NAME],
        ip_addresses=["127.0.0.1"],
    )
    _Silent.instances = []
    factory = TLSMemoryBIOFactory(
        impostor.server_options(), False, Factory.forProtocol(_Silent)
    )
    # listenTCP is annotated with ServerFactory; it takes any IProtocolFactory.
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    client = ca.issue_identity("admin", "admin", reactor.seconds(), 3600)
    agent = AuthAgent(
        reactor,
        [cfg.HostPort("127.0.0.1", cast(IPv4Address, port.getHost()).port)],
        TLSIdentity(client.cert_pem, client.key_pem, (ca.cert_pem,)),
    )
    agent.startService()
    try:
        with pytest.raises(AuthUnavailable) as e:
            await agent.ping()
        assert "auth" in str(e.value)
        assert all(not s.received for s in _Silent.instances)
    finally:
        await agent.stopService()
        # A TCP port's stopListening always returns a Deferred.
        await cast(Deferred[None], port.stopListening())
