"""TLS identities for the Auth API, over real TLS on 127.0.0.1.

The handshake tests start a real TLS listener on 127.0.0.1 (and the pin test
runs ``openssl``): they are marked interop.  The certificate contents, the
files and their round trips are unit tests.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import pathlib
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IReactorSSL,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.ca import CAKeyError
from teleconch.pki import (
    AUTH_SERVER_NAME,
    ROLE_AUTH,
    ROLE_PROXY,
    TLSAuthority,
    TLSIdentity,
    anonymous_client_options,
    ca_pin,
    generate_private_key_pem,
    issued_by,
    peer_identity,
    public_key_pem,
    self_signed_certificate,
)

NOW = 1_700_000_000.0
TIMEOUT = 10


@pytest.fixture(scope="module")
def authority() -> TLSAuthority:
    return TLSAuthority.generate("example.com", NOW)


@pytest.fixture(scope="module")
def other_authority() -> TLSAuthority:
    return TLSAuthority.generate("evil.example", NOW)


def current_time() -> float:
    """Certificates for real handshakes must be valid now, by the system clock."""
    return float(datetime.datetime.now(datetime.UTC).timestamp())


def auth_identity(authority: TLSAuthority) -> TLSIdentity:
    return authority.issue_identity(
        ROLE_AUTH, "auth-1", current_time(), 3600, dns_names=[AUTH_SERVER_NAME]
    )


# -- a tiny server that tells each client who it thinks the client is --------


@implementer(IHandshakeListener)
class WhoAmIServer(Protocol):
    """After the handshake, writes peer_identity() as a JSON line, then echoes."""

    def __init__(self, factory: WhoAmIFactory) -> None:
        self.factory = factory
        self.lost: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        identity = peer_identity(self.transport.getPeerCertificate())  # type: ignore[attr-defined]
        self.factory.seen.append(identity)
        self.transport.write(json.dumps(identity).encode() + b"\n")

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost.callback(None)


class WhoAmIFactory(ServerFactory):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str] | None] = []
        self.connections: list[WhoAmIServer] = []

    def buildProtocol(self, addr: object) -> WhoAmIServer:
        p = WhoAmIServer(self)
        self.connections.append(p)
        return p


class LineClient(Protocol):
    """Collects the server's first line and notices when the connection ends."""

    def __init__(self) -> None:
        self.buffer = b""
        self.line: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.peer: crypto.X509 | None = None

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and not self.line.called:
            assert self.transport is not None
            self.peer = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
            self.line.callback(self.buffer.split(b"\n", 1)[0])

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.reason = reason
        if not self.line.called:
            self.line.errback(reason)
            self.line.addErrback(lambda _: None)
        self.lost.callback(None)


class Server:
    def __init__(self, port: IListeningPort, factory: WhoAmIFactory) -> None:
        self.port = port
        self.factory = factory

    @property
    def number(self) -> int:
        return cast(IPv4Address, self.port.getHost()).port


StartServer = Callable[[TLSIdentity], Server]


@pytest_twisted.async_yield_fixture
async def make_server() -> AsyncIterator[StartServer]:
    """Starts TLS servers on 127.0.0.1:0 and stops them and their connections."""
    servers: list[Server] = []

    def start(identity: TLSIdentity) -> Server:
        factory = WhoAmIFactory()
        port = cast(IReactorSSL, reactor).listenSSL(
            0, factory, identity.server_options(), interface="127.0.0.1"
        )
        server = Server(port, factory)
        servers.append(server)
        return server

    yield start
    for server in servers:
        # A TCP port's stopListening always returns a Deferred.
        await cast(Deferred[None], server.port.stopListening())
        for conn in server.factory.connections:
            if conn.transport is not None:
                conn.transport.loseConnection()
        await gatherResults([c.lost for c in server.factory.connections])


async def connect(
    server: Server, options: IOpenSSLClientConnectionCreator
) -> LineClient:
    endpoint = wrapClientTLS(
        options, TCP4ClientEndpoint(reactor, "127.0.0.1", server.number)
    )
    factory = Factory.forProtocol(LineClient)
    client = await endpoint.connect(factory)
    assert isinstance(client, LineClient)
    return client


async def identity_seen(client: LineClient) -> object:
    """The server's verdict on our certificate; closes the connection."""
    client.line.addTimeout(TIMEOUT, reactor)
    line = await client.line
    assert client.transport is not None
    client.transport.loseConnection()
    await client.lost
    return json.loads(line)


async def handshake_failure(client: LineClient) -> Failure:
    """The connection ended without a line; returns why."""
    client.lost.addTimeout(TIMEOUT, reactor)
    await client.lost
    assert client.buffer == b""
    assert client.reason is not None
    return client.reason


# -- mutual TLS -----------------------------------------------------------------


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_client_certificate_from_cluster_ca_names_the_peer(
    authority: TLSAuthority, make_server: StartServer
) -> None:
    """The server reads (role, name) from a client certificate the CA issued;
    the client verifies the server as AUTH_SERVER_NAME on 127.0.0.1."""
    server = make_server(auth_identity(authority))
    proxy = authority.issue_identity(ROLE_PROXY, "p1", current_time(), 3600)
    client = await connect(server, proxy.client_options())
    assert await identity_seen(client) == ["proxy", "p1"]
    assert server.factory.seen == [("proxy", "p1")]


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_client_without_certificate_is_anonymous(
    authority: TLSAuthority, make_server: StartServer
) -> None:
    """No client certificate is allowed; the server sees None.

    The anonymous client can then check the server's CA against the pin, as a
    joining proxy does."""
    server = make_server(auth_identity(authority))
    client = await connect(server, anonymous_client_options())
    assert await identity_seen(client) is None
    assert server.factory.seen == [None]

    assert client.peer is not None
    leaf_pem = client.peer.to_cryptography().public_bytes(Encoding.PEM)
    assert issued_by(leaf_pem, authority.cert_pem)
    assert ca_pin(authority.cert_pem) == authority.pin


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_client_certificate_from_another_ca_fails_the_handshake(
    authority: TLSAuthority, other_authority: TLSAuthority, make_server: StartServer
) -> None:
    """A certificate the cluster CA did not issue is not anonymous: it is refused."""
    server = make_server(auth_identity(authority))
    forged = other_authority.issue_identity(ROLE_PROXY, "p1", current_time(), 3600)
    # Trust the real CA so that only the client certificate is wrong.
    options = TLSIdentity(
        forged.cert_pem, forged.key_pem, (authority.cert_pem,)
    ).client_options()
    reason = await handshake_failure(await connect(server, options))
    assert reason.check(SSL.Error)
    assert "unknown ca" in str(reason.value)  # the server's alert
    assert server.factory.seen == []


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_server_certificate_from_another_ca_fails_verification(
    authority: TLSAuthority, other_authority: TLSAuthority, make_server: StartServer
) -> None:
    """A client refuses an auth server whose certificate another CA issued."""
    server = make_server(auth_identity(other_authority))
    proxy = authority.issue_identity(ROLE_PROXY, "p1", current_time(), 3600)
    reason = await handshake_failure(await connect(server, proxy.client_options()))
    assert reason.check(SSL.Error)
    assert "certificate verify failed" in str(reason.value)
    assert server.factory.seen == []


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_server_certificate_without_the_name_fails_verification(
    authority: TLSAuthority, make_server: StartServer
) -> None:
    """The client checks the name, not just the CA."""
    server = make_server(auth_identity(authority))
    proxy = authority.issue_identity(ROLE_PROXY, "p1", current_time(), 3600)
    client = await connect(server, proxy.client_options("not-the-auth-server"))
    reason = await handshake_failure(client)
    assert reason.check(VerificationError)


# -- certificates and files -----------------------------------------------------


def openssl(*args: str, data: bytes) -> bytes:
    return subprocess.run(
        ["openssl", *args], input=data, check=True, capture_output=True
    ).stdout


@pytest.mark.interop
def test_ca_pin_matches_openssl_and_is_stable(
    authority: TLSAuthority, tmp_path: pathlib.Path
) -> None:
    """ca_pin is sha256 over the SPKI DER, as openssl computes it."""
    pubkey = openssl("x509", "-pubkey", "-noout", data=authority.cert_pem)
    der = openssl("pkey", "-pubin", "-outform", "der", data=pubkey)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert ca_pin(authority.cert_pem) == expected
    assert authority.pin == expected
    saved = TLSAuthority.load_or_create(tmp_path, "example.com", NOW)
    assert TLSAuthority.load_or_create(tmp_path, "example.com", NOW).pin == saved.pin


def test_issued_by(authority: TLSAuthority, other_authority: TLSAuthority) -> None:
    """issued_by checks the signature and issuer; junk is simply False."""
    leaf = authority.issue(
        public_key_pem(generate_private_key_pem()), ROLE_PROXY, "p1", NOW, 60
    )
    assert issued_by(leaf, authority.cert_pem)
    assert not issued_by(leaf, other_authority.cert_pem)
    assert issued_by(authority.cert_pem, authority.cert_pem)
    assert not issued_by(b"junk", authority.cert_pem)


def test_issued_certificate_contents(authority: TLSAuthority) -> None:
    """A leaf names role and identity, is backdated a minute, and works both ways."""
    leaf_pem = authority.issue(
        public_key_pem(generate_private_key_pem()),
        ROLE_AUTH,
        "auth-1",
        NOW,
        3600,
        dns_names=[AUTH_SERVER_NAME],
        ip_addresses=["127.0.0.1"],
    )
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    assert peer_identity(leaf) == ("auth", "auth-1")
    assert leaf.not_valid_before_utc.timestamp() == NOW - 60
    assert leaf.not_valid_after_utc.timestamp() == NOW + 3600
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [AUTH_SERVER_NAME]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1")
    ]
    with pytest.raises(ValueError, match="unknown role"):
        authority.issue(public_key_pem(generate_private_key_pem()), "root", "x", NOW, 1)


def test_authority_is_a_ten_year_ca_saved_privately(tmp_path: pathlib.Path) -> None:
    """The CA is made once (key 0600, directory 0700) and reloaded after."""
    directory = tmp_path / "tls"
    made = TLSAuthority.load_or_create(directory, "example.com", NOW)
    assert stat.S_IMODE((directory / "tls-ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert TLSAuthority.load_or_create(directory, "other", NOW + 5) == made
    cert = x509.load_pem_x509_certificate(made.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1


def test_authority_key_readable_by_others_is_refused(tmp_path: pathlib.Path) -> None:
    """Like the SSH CA, a 0644 TLS CA key is refused with advice."""
    TLSAuthority.load_or_create(tmp_path, "example.com", NOW)
    (tmp_path / "tls-ca.key").chmod(0o644)
    with pytest.raises(CAKeyError, match="chmod 600"):
        TLSAuthority.load_or_create(tmp_path, "example.com", NOW)


def test_identity_save_load_round_trip(
    authority: TLSAuthority, tmp_path: pathlib.Path
) -> None:
    """An identity survives a restart; its files are 0600 in a 0700 directory."""
    directory = tmp_path / "identity"
    assert TLSIdentity.load(directory) is None
    identity = authority.issue_identity(ROLE_PROXY, "p1", NOW, 3600)
    identity.save(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("tls.crt", "tls.key", "tls-ca.crt"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    loaded = TLSIdentity.load(directory)
    assert loaded == identity
    assert loaded is not None
    assert (loaded.role, loaded.name, loaded.not_after) == ("proxy", "p1", NOW + 3600)
    assert "PRIVATE" not in repr(loaded)


def test_identity_with_several_cas_round_trips(
    authority: TLSAuthority, other_authority: TLSAuthority, tmp_path: pathlib.Path
) -> None:
    """During a CA rotation tls-ca.crt holds both CAs."""
    identity = authority.issue_identity(ROLE_PROXY, "p1", NOW, 3600)
    both = TLSIdentity(
        identity.cert_pem,
        identity.key_pem,
        (authority.cert_pem, other_authority.cert_pem),
    )
    both.save(tmp_path)
    assert TLSIdentity.load(tmp_path) == both


def test_identity_with_missing_key_is_an_error(
    authority: TLSAuthority, tmp_path: pathlib.Path
) -> None:
    """A half-present identity is reported, not mistaken for none."""
    authority.issue_identity(ROLE_PROXY, "p1", NOW, 3600).save(tmp_path)
    (tmp_path / "tls.key").unlink()
    with pytest.raises(ValueError, match=r"tls\.key is missing"):
        TLSIdentity.load(tmp_path)


def test_identity_refuses_a_key_that_does_not_match(
    authority: TLSAuthority,
) -> None:
    """A certificate paired with the wrong key is caught at construction."""
    identity = authority.issue_identity(ROLE_PROXY, "p1", NOW, 3600)
    with pytest.raises(ValueError, match="does not match"):
        TLSIdentity(identity.cert_pem, generate_private_key_pem(), identity.ca_pems)


def test_peer_identity_none_without_certificate() -> None:
    """A connection that showed no certificate has no identity: anonymous."""
    assert peer_identity(None) is None


def test_self_signed_certificate_has_the_sans() -> None:
    """DNS names and IP addresses go to the right SAN types; CN is the first."""
    cert_pem, key_pem = self_signed_certificate(
        ["proxy.example.com", "localhost", "127.0.0.1", "::1"], NOW, days=30
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "proxy.example.com"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["proxy.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.not_valid_after_utc.timestamp() == NOW + 30 * 86400
    assert public_key_pem(key_pem) == cert.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
