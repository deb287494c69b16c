"""User certificates: parsing and checking, Conch's userauth by certificate,
and the real OpenSSH client against a Conch server that uses them.

The tests that run ssh or ssh-keygen, or listen on 127.0.0.1, are marked
interop; the rest are unit tests, in memory.
"""

from __future__ import annotations

import base64
import os
import pathlib
import struct
import subprocess
from collections.abc import Sequence
from typing import Any, cast

import attrs
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    SSHCertificateBuilder,
    SSHCertificateType,
)
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import MSG_EXT_INFO
from twisted.conch.ssh.userauth import (
    MSG_USERAUTH_BANNER,
    MSG_USERAUTH_FAILURE,
    MSG_USERAUTH_PK_OK,
    MSG_USERAUTH_SUCCESS,
)
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from zope.interface import implementer

from teleconch.ca import STANDARD_USER_EXTENSIONS, SSHCertificateAuthority, fingerprint
from teleconch.conch.certs import (
    Certificate,
    CertificateError,
    CertificateRefused,
    check_host_certificate,
    check_user_certificate,
    parse_certificate,
    parse_certificate_line,
)
from teleconch.conch.hostcert import CertificateSSHFactory
from teleconch.conch.userauth_server import (
    CertificateChecker,
    CertificateCredentials,
    CertificateServerTransport,
    CertificateUserAuthServer,
)
from teleconch.conch.wire import SERVER_SIG_ALGS, verify_ssh_signature

NOW = 1_750_000_000
HOUR = 3600
REFUSAL = (
    "teleconch: this proxy accepts only certificates from `teleconch login`. "
    "Run: teleconch login --proxy proxy.example.com"
)
SSH = "/usr/bin/ssh"


# -- certificates for tests --------------------------------------------------


@attrs.frozen
class CA:
    """A CA whose private key the test can also use for unusual certificates."""

    key: Ed25519PrivateKey

    @classmethod
    def make(cls) -> CA:
        return cls(Ed25519PrivateKey.generate())

    @property
    def authority(self) -> SSHCertificateAuthority:
        return SSHCertificateAuthority(self.key)

    def line(self, comment: str = "") -> str:
        return (self.authority.public_key_line() + " " + comment).strip()

    def user(self, key: Any, principals: Sequence[str] = ("alice",), **kw: Any) -> str:
        return self.authority.sign_user_certificate(
            key.public_key(),
            kw.pop("key_id", "alice@test"),
            principals,
            kw.pop("valid_after", NOW - 60),
            kw.pop("valid_before", NOW + HOUR),
            STANDARD_USER_EXTENSIONS,
        )

    def host(self, key: Any, principals: Sequence[str] = ("node1",), **kw: Any) -> str:
        return self.authority.sign_host_certificate(
            key.public_key(),
            "host-key-id",
            principals,
            kw.pop("valid_after", NOW - 60),
            kw.pop("valid_before", NOW + HOUR),
        )

    def custom(
        self,
        key: Any,
        principals: Sequence[str] = ("alice",),
        critical: dict[bytes, bytes] | None = None,
        cert_type: SSHCertificateType = SSHCertificateType.USER,
    ) -> str:
        """What ca.py refuses to make: empty principals, critical options."""
        builder = (
            SSHCertificateBuilder()
            .public_key(key.public_key())
            .serial(7)
            .type(cert_type)
            .key_id(b"custom")
            .valid_after(NOW - 60)
            .valid_before(NOW + HOUR)
        )
        if principals:
            builder = builder.valid_principals([p.encode() for p in principals])
        else:
            builder = builder.valid_for_all_principals()
        for name, value in (critical or {}).items():
            builder = builder.add_critical_option(name, value)
        return builder.sign(self.key).public_bytes().decode()


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.make()


@pytest.fixture(scope="module")
def user_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def refused(call: Any, *args: Any, **kw: Any) -> CertificateRefused:
    with pytest.raises(CertificateRefused) as info:
        call(*args, **kw)
    return info.value


# -- parsing -----------------------------------------------------------------


def test_parse_reads_every_field_of_a_user_certificate(ca: CA, user_key: Any) -> None:
    """A certificate from our CA parses into the fields the proxy audits and checks."""
    cert = parse_certificate_line(ca.user(user_key, ["alice", "root"]))
    assert cert.key_type == "ssh-ed25519-cert-v01@openssh.com"
    assert cert.cert_type == "user"
    assert cert.principals == ("alice", "root")
    assert cert.key_id == "alice@test"
    assert (cert.valid_after, cert.valid_before) == (NOW - 60, NOW + HOUR)
    assert cert.signature_key == ca.line()
    assert dict(cert.extensions) == dict(STANDARD_USER_EXTENSIONS)
    assert cert.critical_options == {}
    assert cert.public_key == user_key.public_key()
    assert parse_certificate(cert.blob) == cert


def test_parse_refuses_plain_keys_and_garbage(user_key: Any) -> None:
    """Plain keys, truncated blobs and noise are CertificateErrors, not crashes."""
    line = Key(user_key).public().toString("openssh")
    blob = base64.b64decode(line.split()[1])
    for bad in (blob, b"", b"\x00\x00\x00\x05abc", os.urandom(64)):
        with pytest.raises(CertificateError):
            parse_certificate(bad)


def test_parse_refuses_a_tampered_signature_or_body(ca: CA, user_key: Any) -> None:
    """Changing one byte of the signature or of a principal breaks the CA signature."""
    blob = parse_certificate_line(ca.user(user_key)).blob
    with pytest.raises(CertificateError, match="signature does not verify"):
        parse_certificate(blob[:-1] + bytes([blob[-1] ^ 1]))
    i = blob.index(b"alice")
    with pytest.raises(CertificateError, match="signature does not verify"):
        parse_certificate(blob[:i] + b"mallo" + blob[i + 5 :])


@pytest.mark.interop
def test_parse_refuses_a_sha1_ca_signature(tmp_path: pathlib.Path) -> None:
    """An RSA CA signing with ssh-rsa (SHA-1) is refused, as OpenSSH >= 8.2 does."""
    for name, kind in (("ca", "rsa"), ("u", "ed25519")):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", tmp_path / name],
            check=True,
        )
    sign = ["-q", "-s", "ca", "-t", "ssh-rsa", "-I", "x", "-n", "alice", "u.pub"]
    subprocess.run(["ssh-keygen", *sign], cwd=tmp_path, check=True, capture_output=True)
    with pytest.raises(CertificateError, match="SHA-1"):
        parse_certificate_line((tmp_path / "u-cert.pub").read_text())


def test_parse_accepts_an_rsa_ca_signing_with_sha2(user_key: Any) -> None:
    """An RSA CA is fine as long as it signs with rsa-sha2-*."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    line = (
        SSHCertificateBuilder()
        .public_key(user_key.public_key())
        .serial(1)
        .type(SSHCertificateType.USER)
        .key_id(b"k")
        .valid_principals([b"alice"])
        .valid_after(0)
        .valid_before(2**64 - 1)
        .sign(ca_key)
        .public_bytes()
    )
    assert parse_certificate_line(line).signature_key.startswith("ssh-rsa ")


# -- checking user certificates ----------------------------------------------


def test_a_good_user_certificate_passes(ca: CA, user_key: Any) -> None:
    """Our CA, a user cert, valid now, for this principal: accepted; comments ignored."""
    cert = parse_certificate_line(ca.user(user_key))
    check_user_certificate(cert, [ca.line("user CA for example.com")], NOW, "alice")


def test_refused_when_signed_by_another_ca(ca: CA, user_key: Any) -> None:
    """A certificate is only as good as its CA: another CA's is refused."""
    cert = parse_certificate_line(CA.make().user(user_key))
    e = refused(check_user_certificate, cert, [ca.line(), "garbage"], NOW, "alice")
    assert "untrusted CA" in e.reason and "serial" in e.reason
    assert "not issued by this cluster" in e.user_message


def test_refused_when_expired_or_not_yet_valid(ca: CA, user_key: Any) -> None:
    """valid_after <= now < valid_before, to the second, as OpenSSH does."""
    cert = parse_certificate_line(ca.user(user_key))
    check_user_certificate(cert, [ca.line()], NOW - 60, "alice")
    e = refused(check_user_certificate, cert, [ca.line()], NOW + HOUR, "alice")
    assert "expired" in e.reason and "expired at" in e.user_message
    e = refused(check_user_certificate, cert, [ca.line()], NOW - 61, "alice")
    assert "not yet valid" in e.reason and "not valid until" in e.user_message


def test_refused_when_a_host_certificate_is_used_as_a_user_one(
    ca: CA, user_key: Any
) -> None:
    """A host certificate from the same CA does not log anyone in."""
    cert = parse_certificate_line(ca.host(user_key, ["alice"]))
    e = refused(check_user_certificate, cert, [ca.line()], NOW, "alice")
    assert "host certificate used as a user certificate" in e.reason


def test_refused_for_a_login_not_in_the_principals(ca: CA, user_key: Any) -> None:
    """alice's certificate does not let her log in as root."""
    cert = parse_certificate_line(ca.user(user_key, ["alice", "deploy"]))
    e = refused(check_user_certificate, cert, [ca.line()], NOW, "root")
    assert "'root'" in e.reason
    assert e.user_message == "it does not allow 'root' (it allows: alice, deploy)"


def test_refused_when_the_principal_list_is_empty(ca: CA, user_key: Any) -> None:
    """OpenSSH reads no principals as "anyone"; we refuse such a certificate."""
    cert = parse_certificate_line(ca.custom(user_key, principals=()))
    e = refused(check_user_certificate, cert, [ca.line()], NOW, "alice")
    assert "no principals" in e.reason


def test_source_address_is_enforced(ca: CA, user_key: Any) -> None:
    """source-address: CIDR list matched against the client; mapped IPv6 counts."""
    line = ca.custom(user_key, critical={b"source-address": b"10.0.0.0/8,192.0.2.7"})
    cert = parse_certificate_line(line)
    for ok in ("10.1.2.3", "192.0.2.7", "::ffff:10.9.9.9"):
        check_user_certificate(cert, [ca.line()], NOW, "alice", ok)
    for bad in ("127.0.0.1", "192.0.2.8", None, "not-an-address"):
        e = refused(check_user_certificate, cert, [ca.line()], NOW, "alice", bad)
        assert "source-address" in e.reason
        assert "may only be used from 10.0.0.0/8,192.0.2.7" in e.user_message


def test_a_malformed_source_address_is_refused(ca: CA, user_key: Any) -> None:
    """A source-address we cannot read restricts to nothing."""
    cert = parse_certificate_line(
        ca.custom(user_key, critical={b"source-address": b"10.0.0.0/8,nonsense"})
    )
    e = refused(check_user_certificate, cert, [ca.line()], NOW, "alice", "10.0.0.1")
    assert "malformed source-address" in e.reason


def test_force_command_is_refused(ca: CA, user_key: Any) -> None:
    """A proxy cannot run a forced command, so it must not accept the certificate."""
    cert = parse_certificate_line(
        ca.custom(user_key, critical={b"force-command": b"/bin/true"})
    )
    e = refused(check_user_certificate, cert, [ca.line()], NOW, "alice")
    assert "force-command" in e.reason and "forced command" in e.user_message


def test_unknown_critical_options_are_refused(ca: CA, user_key: Any) -> None:
    """PROTOCOL.certkeys: an unrecognised critical option means refuse."""
    cert = parse_certificate_line(
        ca.custom(user_key, critical={b"frobnicate@example.com": b"yes"})
    )
    e = refused(check_user_certificate, cert, [ca.line()], NOW, "alice")
    assert "unknown critical option 'frobnicate@example.com'" in e.reason


# -- checking host certificates ----------------------------------------------


def test_host_certificate_checks(ca: CA, user_key: Any) -> None:
    """Host certs: our CA, type host, the dialled name, no critical options."""
    good = parse_certificate_line(ca.host(user_key, ["node1", "10.0.0.5"]))
    check_host_certificate(good, [ca.line()], NOW, "10.0.0.5")
    e = refused(check_host_certificate, good, [ca.line()], NOW, "node2")
    assert "'node2'" in e.reason
    e = refused(check_host_certificate, good, [CA.make().line()], NOW, "node1")
    assert "untrusted CA" in e.reason
    user = parse_certificate_line(ca.user(user_key, ["node1"]))
    e = refused(check_host_certificate, user, [ca.line()], NOW, "node1")
    assert "user certificate used as a host certificate" in e.reason
    odd = parse_certificate_line(
        ca.custom(
            user_key,
            ["node1"],
            {b"source-address": b"10.0.0.0/8"},
            SSHCertificateType.HOST,
        )
    )
    e = refused(check_host_certificate, odd, [ca.line()], NOW, "node1")
    assert "critical options" in e.reason


# -- signatures --------------------------------------------------------------


def test_signatures_must_use_exactly_the_expected_algorithm(
    user_key: Any, rsa_key: Any
) -> None:
    """rsa-sha2-* only and as announced; SHA-1 ssh-rsa never (twisted#12496)."""
    data = b"session data"
    ed = Key(user_key).sign(data, signatureType=b"ssh-ed25519")
    assert verify_ssh_signature(user_key.public_key(), b"ssh-ed25519", ed, data)
    assert not verify_ssh_signature(user_key.public_key(), b"ssh-ed25519", ed, b"x")
    assert not verify_ssh_signature(
        user_key.public_key(), b"ssh-ed25519", ed + b"!", data
    )
    rsa_pub = rsa_key.public_key()
    for alg in (b"rsa-sha2-256", b"rsa-sha2-512"):
        sig = Key(rsa_key).sign(data, signatureType=alg)
        assert verify_ssh_signature(rsa_pub, alg, sig, data)
    sha512 = Key(rsa_key).sign(data, signatureType=b"rsa-sha2-512")
    assert not verify_ssh_signature(rsa_pub, b"rsa-sha2-256", sha512, data)
    sha1 = Key(rsa_key).sign(data, signatureType=b"ssh-rsa")
    assert Key(rsa_pub).verify(sha1, data)  # Conch would take it
    assert not verify_ssh_signature(rsa_pub, b"ssh-rsa", sha1, data)
    forged = NS(b"rsa-sha2-512") + NS(
        rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    )
    assert not verify_ssh_signature(rsa_pub, b"rsa-sha2-512", forged, data)
    p256 = ec.generate_private_key(ec.SECP256R1())
    sig = Key(p256).sign(data, signatureType=b"ecdsa-sha2-nistp256")
    assert verify_ssh_signature(p256.public_key(), b"ecdsa-sha2-nistp256", sig, data)
    assert not verify_ssh_signature(
        p256.public_key(), b"ecdsa-sha2-nistp384", sig, data
    )


# -- the userauth service, in memory -----------------------------------------


@attrs.define
class Policy:
    """A CertificatePolicy that records refusals and can hold its answer back."""

    cas: list[str]
    refusal_message: str = REFUSAL
    refused: list[tuple[str, str, str | None]] = attrs.Factory(list)
    gate: Deferred[None] | None = None
    fail: bool = False
    calls: int = 0

    async def trusted_user_cas(self) -> Sequence[str]:
        self.calls += 1
        if self.gate is not None:
            await self.gate
        if self.fail:
            raise ConnectionError("auth service unreachable")
        return self.cas

    logins: list[str | None] = attrs.Factory(list)

    def on_refused(
        self,
        username: str,
        reason: str,
        client_address: str | None,
        login: str | None = None,
    ) -> None:
        self.refused.append((username, reason, client_address))
        self.logins.append(login)


class ExecSession(SSHChannel):
    """Answers `exec` with "<username> <certificate key id> <command>" and exit 0."""

    name = b"session"
    avatar: Avatar  # the realm's avatar opens this channel
    conn: SSHConnection

    def request_exec(self, data: bytes) -> int:
        command = getNS(data)[0].decode()
        creds = self.avatar.credentials
        line = f"{creds.username} {creds.certificate.key_id} {command}\n"
        reactor.callLater(0, self._answer, line.encode())  # after the exec reply
        return 1

    def _answer(self, output: bytes) -> None:
        self.write(output)
        self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
        self.conn.sendEOF(self)
        self.loseConnection()


class Avatar(ConchUser):
    def __init__(self, credentials: CertificateCredentials) -> None:
        super().__init__()
        self.credentials = credentials
        self.channelLookup[b"session"] = ExecSession


@implementer(IRealm)
class Realm:
    """Gets the verified certificate as `mind` (see CertificateCredentials)."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        assert isinstance(mind, CertificateCredentials)
        assert avatarId == mind.username.encode()
        return IConchUser, Avatar(mind), lambda: None


def make_factory(
    policy: Policy, host_ca: CA | None = None, now: int = NOW
) -> CertificateSSHFactory:
    host_key = Ed25519PrivateKey.generate()
    cert = None
    if host_ca:
        cert = host_ca.host(
            host_key, ["127.0.0.1"], valid_after=now - 60, valid_before=now + HOUR
        )
    portal = Portal(Realm(), [CertificateChecker()])
    return CertificateSSHFactory(portal, policy, host_key, cert)


class FakeTransport:
    """Just enough of SSHServerTransport for the userauth service."""

    def __init__(self, factory: CertificateSSHFactory) -> None:
        self.factory = factory
        self.sessionID = b"the-session-id"
        self.packets: list[tuple[int, bytes]] = []
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "10.1.2.3", 50000)
        )
        self.service: Any = None

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def isEncrypted(self, direction: str = "out") -> bool:
        return True

    def sendDisconnect(self, code: int, reason: bytes) -> None:
        self.packets.append((1, reason))

    def setService(self, service: Any) -> None:
        if self.service:
            self.service.serviceStopped()
        self.service = service
        service.transport = self
        service.serviceStarted()

    def take(self) -> list[tuple[int, bytes]]:
        out, self.packets = self.packets, []
        return out


@pytest.fixture
def policy(ca: CA) -> Policy:
    return Policy([ca.line()])


@pytest.fixture
def server(policy: Policy) -> Any:
    transport = FakeTransport(make_factory(policy))
    service = CertificateUserAuthServer()
    service.clock = Clock()
    service.clock.advance(NOW)
    transport.setService(service)
    yield transport
    transport.service.serviceStopped()


def request(user: bytes, method: bytes, data: bytes) -> bytes:
    return NS(user) + NS(b"ssh-connection") + NS(method) + data


def publickey(
    key: Any, alg: bytes, blob: bytes, sig_alg: bytes | None, user: bytes = b"alice"
) -> bytes:
    """A publickey request: a probe when sig_alg is None, else signed with it."""
    if sig_alg is None:
        return request(user, b"publickey", b"\x00" + NS(alg) + NS(blob))
    signed = (
        NS(b"the-session-id")
        + bytes([50])
        + NS(user)
        + NS(b"ssh-connection")
        + NS(b"publickey")
        + b"\x01"
        + NS(alg)
        + NS(blob)
    )
    sig = Key(key).sign(signed, signatureType=sig_alg)
    return request(user, b"publickey", b"\x01" + NS(alg) + NS(blob) + NS(sig))


def cert_blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


ED_CERT = b"ssh-ed25519-cert-v01@openssh.com"
FAILURE = (MSG_USERAUTH_FAILURE, NS(b"publickey,keyboard-interactive") + b"\x00")


def banners(packets: list[tuple[int, bytes]]) -> list[str]:
    return [getNS(p)[0].decode() for k, p in packets if k == MSG_USERAUTH_BANNER]


def test_a_probe_for_a_trusted_certificate_gets_pk_ok(
    server: Any, ca: CA, user_key: Any, policy: Policy
) -> None:
    """The unsigned probe is answered PK_OK only once the certificate checks out."""
    blob = cert_blob(ca.user(user_key))
    server.service.ssh_USERAUTH_REQUEST(publickey(user_key, ED_CERT, blob, None))
    assert server.take() == [(MSG_USERAUTH_PK_OK, NS(ED_CERT) + NS(blob))]
    assert policy.refused == []


def test_a_signed_certificate_logs_in_and_the_realm_gets_the_certificate(
    server: Any, ca: CA, user_key: Any
) -> None:
    """The realm's avatar sees the verified Certificate and the client address."""
    blob = cert_blob(ca.user(user_key, key_id="alice-laptop"))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, ED_CERT, blob, b"ssh-ed25519")
    )
    assert server.take() == [(MSG_USERAUTH_SUCCESS, b"")]
    creds = server.avatar.credentials
    assert isinstance(creds.certificate, Certificate)
    assert (creds.username, creds.certificate.key_id) == ("alice", "alice-laptop")
    assert creds.client_address == "10.1.2.3"
    assert isinstance(server.service, SSHConnection)


@pytest.mark.parametrize("alg", [b"rsa-sha2-512", b"rsa-sha2-256"])
def test_rsa_certificates_log_in_with_sha2(
    server: Any, ca: CA, rsa_key: Any, alg: bytes
) -> None:
    """rsa-sha2-{256,512}-cert-v01: the blob says ssh-rsa-cert, the signature sha2."""
    blob = cert_blob(ca.user(rsa_key))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(rsa_key, alg + b"-cert-v01@openssh.com", blob, alg)
    )
    assert server.take() == [(MSG_USERAUTH_SUCCESS, b"")]


@pytest.mark.parametrize("sig_alg", [b"ssh-rsa", b"rsa-sha2-256"])
def test_the_signature_algorithm_must_match_the_request(
    server: Any, ca: CA, rsa_key: Any, policy: Policy, sig_alg: bytes
) -> None:
    """A request for rsa-sha2-512 signed with SHA-1 (or SHA-256) fails (twisted#12496)."""
    blob = cert_blob(ca.user(rsa_key))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(rsa_key, b"rsa-sha2-512-cert-v01@openssh.com", blob, sig_alg)
    )
    assert server.take()[-1] == FAILURE
    assert "bad rsa-sha2-512-cert-v01@openssh.com signature" in policy.refused[0][1]


def test_sha1_rsa_certificates_are_refused(
    server: Any, ca: CA, rsa_key: Any, policy: Policy
) -> None:
    """ssh-rsa-cert-v01 means SHA-1 signatures: refused, and the person told why."""
    blob = cert_blob(ca.user(rsa_key))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(rsa_key, b"ssh-rsa-cert-v01@openssh.com", blob, b"ssh-rsa")
    )
    packets = server.take()
    assert packets[-1] == FAILURE
    assert "SHA-1" in banners(packets)[0]
    assert "SHA-1" in policy.refused[0][1]


def test_a_signature_by_another_key_is_refused(
    server: Any, ca: CA, user_key: Any, policy: Policy
) -> None:
    """Holding a copy of the certificate is not enough: the key must sign."""
    blob = cert_blob(ca.user(user_key))
    thief = Ed25519PrivateKey.generate()
    server.service.ssh_USERAUTH_REQUEST(publickey(thief, ED_CERT, blob, b"ssh-ed25519"))
    assert server.take()[-1] == FAILURE
    assert "bad ssh-ed25519-cert-v01@openssh.com signature" in policy.refused[0][1]


def test_a_refused_certificate_is_explained_and_audited(
    server: Any, user_key: Any, policy: Policy
) -> None:
    """Another CA's certificate: FAILURE(publickey), a banner why, an audit entry."""
    blob = cert_blob(CA.make().user(user_key))
    server.service.ssh_USERAUTH_REQUEST(publickey(user_key, ED_CERT, blob, None))
    packets = server.take()
    assert packets[-1] == FAILURE
    assert banners(packets) == [
        "teleconch: your certificate was refused: it was not issued by this "
        "cluster's certificate authority.\n" + REFUSAL + "\n"
    ]
    [(user, reason, address)] = policy.refused
    assert (user, address) == ("alice", "10.1.2.3")
    assert reason.startswith("certificate signed by an untrusted CA")


def test_the_wrong_login_is_explained(server: Any, ca: CA, user_key: Any) -> None:
    """Logging in as a principal the certificate lacks says which ones it has."""
    blob = cert_blob(ca.user(user_key))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, ED_CERT, blob, b"ssh-ed25519", user=b"root")
    )
    packets = server.take()
    assert packets[-1] == FAILURE
    assert "it does not allow 'root' (it allows: alice)" in banners(packets)[0]


def test_a_login_the_certificate_lacks_is_one_message_audited_under_its_user(
    server: Any, ca: CA, user_key: Any, policy: Policy
) -> None:
    """`teleconch ssh bob@web1` with alice's certificate: one banner naming the
    allowed logins, no "run teleconch login" after the agent's plain key, and
    the audit entry names the certificate's user and the login asked for."""
    blob = cert_blob(ca.user(user_key, key_id="alice"))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, ED_CERT, blob, b"ssh-ed25519", user=b"bob")
    )
    plain = Key(user_key).public().blob()
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, b"ssh-ed25519", plain, None, user=b"bob")
    )
    server.service.ssh_USERAUTH_REQUEST(
        request(b"bob", b"keyboard-interactive", NS(b"") + NS(b""))
    )
    packets = server.take()
    assert banners(packets) == [
        "teleconch: your certificate was refused: it does not allow 'bob' "
        "(it allows: alice).\n"
    ]
    assert policy.refused[0][0] == "alice" and policy.logins[0] == "bob"
    assert "'bob'" in policy.refused[0][1]


def test_plain_keys_are_refused_quietly_and_audited_if_the_login_fails(
    server: Any, user_key: Any, policy: Policy
) -> None:
    """OpenSSH offers the plain key before its certificate: no banner for it, and
    an audit entry only once the connection ends without a login."""
    plain = Key(user_key).public().blob()
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, b"ssh-ed25519", plain, None)
    )
    assert server.take() == [FAILURE]
    assert policy.refused == []
    server.service.serviceStopped()
    assert policy.refused == [
        (
            "alice",
            f"plain public keys refused: ssh-ed25519 {fingerprint(user_key.public_key())}",
            "10.1.2.3",
        )
    ]


def test_a_plain_key_before_a_good_certificate_leaves_no_audit_entry(
    server: Any, ca: CA, user_key: Any, policy: Policy
) -> None:
    """The usual OpenSSH sequence, plain key then certificate, is a clean login."""
    plain = Key(user_key).public().blob()
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, b"ssh-ed25519", plain, None)
    )
    blob = cert_blob(ca.user(user_key))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, ED_CERT, blob, b"ssh-ed25519")
    )
    assert server.take() == [FAILURE, (MSG_USERAUTH_SUCCESS, b"")]
    assert policy.refused == []


def test_password_and_keyboard_interactive_get_the_banner_once(
    server: Any, policy: Policy
) -> None:
    """Anything but a key is told what to run instead, once per connection."""
    server.service.ssh_USERAUTH_REQUEST(
        request(b"alice", b"keyboard-interactive", NS(b"") + NS(b""))
    )
    assert server.take() == [
        (MSG_USERAUTH_BANNER, NS((REFUSAL + "\n").encode()) + NS(b"")),
        FAILURE,
    ]
    server.service.ssh_USERAUTH_REQUEST(
        request(b"alice", b"password", b"\x00" + NS(b"hunter2"))
    )
    assert server.take() == [FAILURE]
    assert [r for _, r, _ in policy.refused] == [
        "keyboard-interactive authentication refused",
        "password authentication refused",
    ]


def test_keyboard_interactive_can_be_left_out_of_the_list(
    policy: Policy,
) -> None:
    """explain_with_keyboard_interactive = False lists publickey alone."""

    class Strict(CertificateUserAuthServer):
        explain_with_keyboard_interactive = False

    transport = FakeTransport(make_factory(policy))
    service = Strict()
    service.clock = Clock()
    transport.setService(service)
    service.ssh_USERAUTH_REQUEST(request(b"alice", b"none", b""))
    assert transport.take() == [(MSG_USERAUTH_FAILURE, NS(b"publickey") + b"\x00")]
    service.serviceStopped()


def test_none_is_answered_quietly(server: Any, policy: Policy) -> None:
    """The "none" opener gets the method list, with no banner and no audit entry."""
    server.service.ssh_USERAUTH_REQUEST(request(b"alice", b"none", b""))
    assert server.take() == [FAILURE]
    assert policy.refused == []


def test_checks_wait_for_the_policy_and_requests_stay_in_order(
    server: Any, ca: CA, user_key: Any, policy: Policy
) -> None:
    """While the CA lookup is pending nothing is answered, and a pipelined
    request waits its turn instead of changing the state under it."""
    policy.gate = Deferred()
    blob = cert_blob(ca.user(user_key))
    server.service.ssh_USERAUTH_REQUEST(publickey(user_key, ED_CERT, blob, None))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, ED_CERT, blob, b"ssh-ed25519")
    )
    assert server.take() == [] and policy.calls == 1
    policy.gate.callback(None)
    assert server.take() == [
        (MSG_USERAUTH_PK_OK, NS(ED_CERT) + NS(blob)),
        (MSG_USERAUTH_SUCCESS, b""),
    ]


def test_nothing_is_sent_after_the_connection_is_gone(
    server: Any, ca: CA, user_key: Any, policy: Policy
) -> None:
    """A lookup that finishes after disconnect sends no packets."""
    policy.gate = Deferred()
    blob = cert_blob(ca.user(user_key))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, ED_CERT, blob, b"ssh-ed25519")
    )
    server.service.serviceStopped()
    policy.gate.callback(None)
    assert server.take() == []


def test_an_avatar_made_after_disconnect_is_logged_out(
    server: Any, ca: CA, user_key: Any
) -> None:
    """A slow realm that answers after the client left: its logout still runs."""
    gate: Deferred[None] = Deferred()
    logouts: list[str] = []

    @implementer(IRealm)
    class SlowRealm:
        def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
            return gate.addCallback(
                lambda _: (IConchUser, Avatar(mind), lambda: logouts.append("out"))
            )

    server.factory.portal = Portal(SlowRealm(), [CertificateChecker()])
    server.service.portal = server.factory.portal
    blob = cert_blob(ca.user(user_key))
    server.service.ssh_USERAUTH_REQUEST(
        publickey(user_key, ED_CERT, blob, b"ssh-ed25519")
    )
    server.service.serviceStopped()
    gate.callback(None)
    assert logouts == ["out"] and server.take() == []


def test_the_checker_accepts_only_verified_certificate_logins(
    ca: CA, user_key: Any
) -> None:
    """Passwords, or credentials naming a login outside the principals, fail."""
    cert = parse_certificate_line(ca.user(user_key))
    checker = CertificateChecker()
    ids: list[Any] = []
    checker.requestAvatarId(CertificateCredentials("alice", cert, None)).addCallback(
        ids.append
    )
    assert ids == [b"alice"]
    for creds in (
        CertificateCredentials("root", cert, None),
        UsernamePassword(b"alice", b"pw"),
    ):
        failures: list[Any] = []
        checker.requestAvatarId(creds).addErrback(failures.append)
        assert failures[0].check(UnauthorizedLogin)


def test_an_unreachable_auth_service_is_a_retryable_refusal(
    server: Any, ca: CA, user_key: Any, policy: Policy
) -> None:
    """If the CA keys cannot be fetched the person is told to try again."""
    policy.fail = True
    blob = cert_blob(ca.user(user_key))
    server.service.ssh_USERAUTH_REQUEST(publickey(user_key, ED_CERT, blob, None))
    packets = server.take()
    assert packets[-1] == FAILURE
    assert "try again in a minute" in banners(packets)[0]
    assert "auth service unreachable" in policy.refused[0][1]


def test_server_sig_algs_lists_user_algorithms_not_host_keys() -> None:
    """ext-info advertises what we verify; KEXINIT offers only our host keys."""
    factory = make_factory(Policy([]), host_ca=CA.make())
    factory.startFactory()
    transport = factory.buildProtocol(None)
    assert isinstance(transport, CertificateServerTransport)
    assert transport.supportedPublicKeys == [ED_CERT, b"ssh-ed25519"]
    sent: list[tuple[int, bytes]] = []
    transport.sendPacket = lambda kind, payload: sent.append((kind, payload))  # type: ignore[method-assign]
    transport._peerSupportsExtensions = True
    transport.sendExtInfo([(b"server-sig-algs", b"ssh-ed25519"), (b"other", b"x")])
    expected = (
        struct.pack(">L", 2) + NS(b"server-sig-algs") + NS(b",".join(SERVER_SIG_ALGS))
    )
    assert sent == [(MSG_EXT_INFO, expected + NS(b"other") + NS(b"x"))]


# -- the real OpenSSH client against a Conch server --------------------------


class TrackedTransport(CertificateServerTransport):
    """Lets the test wait until every server-side connection is gone."""

    transport: ITransport  # the listening port connects it

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)  # type: ignore[attr-defined]  # hung on by `served`
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


@attrs.define
class Served:
    port: int
    policy: Policy
    known_hosts: pathlib.Path
    directory: pathlib.Path
    connections: list[TrackedTransport]

    async def settled(self) -> None:
        """Wait until the server has seen every connection close."""
        await defer.gatherResults([c.lost for c in self.connections])

    def key_files(self, name: str, key: Any, cert_line: str | None) -> pathlib.Path:
        """Write key, key.pub and (when given) key-cert.pub, as `teleconch login` does."""
        path = self.directory / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        path.with_name(name + ".pub").write_text(
            Key(key).public().toString("openssh").decode()
        )
        if cert_line:
            path.with_name(name + "-cert.pub").write_text(cert_line + "\n")
        return path

    async def ssh(
        self, *options: str, user: str = "alice", env: dict[str, str] | None = None
    ) -> tuple[str, str, int]:
        argv = [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentityAgent=none",
            "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=20",
            *options,
            "-p", str(self.port), f"{user}@127.0.0.1", "echo hi",
        ]  # fmt: skip
        base = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        out, err, code = await getProcessOutputAndValue(
            SSH, argv, env={**base, **(env or {})}
        )
        return out.decode(), err.decode(), code


@pytest_twisted.async_yield_fixture
async def served(tmp_path: pathlib.Path, ca: CA) -> Any:
    """A Conch server with a host certificate, trusting `ca` for users."""
    policy = Policy([ca.line()])
    host_ca = CA.make()
    factory = make_factory(policy, host_ca, int(reactor.seconds()))
    factory.protocol = TrackedTransport
    connections: list[TrackedTransport] = []
    factory.connections = connections  # type: ignore[attr-defined]  # TrackedTransport's list
    # listenTCP is annotated with ServerFactory; it takes any IProtocolFactory.
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"@cert-authority * {host_ca.line()}\n")
    yield Served(
        cast(IPv4Address, listening.getHost()).port,
        policy,
        known_hosts,
        tmp_path,
        connections,
    )
    # A TCP port's stopListening always returns a Deferred.
    await cast(Deferred[None], listening.stopListening())
    for connection in connections:
        connection.transport.loseConnection()
    await defer.gatherResults([c.lost for c in connections])


def fresh_user_certificate(ca: CA, key: Any, **kw: Any) -> str:
    """A certificate valid around the real clock (the server uses the reactor's)."""
    now = int(reactor.seconds())
    return ca.user(key, valid_after=now - 60, valid_before=now + HOUR, **kw)


interop = pytest.mark.interop


@interop
@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
@pytest_twisted.ensureDeferred
async def test_openssh_logs_in_with_a_certificate_and_trusts_the_host_certificate(
    served: Served, ca: CA, kind: str
) -> None:
    """ssh -i key (+ key-cert.pub): no host key prompt, certificate login, exec.

    RSA proves server-sig-algs: without rsa-sha2-* there OpenSSH 9.2 would
    not offer the RSA certificate at all.
    """
    key: Any = {
        "ed25519": Ed25519PrivateKey.generate,
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
    }[kind]()
    cert = fresh_user_certificate(ca, key, key_id=f"alice-{kind}")
    path = served.key_files(kind, key, cert)
    out, err, code = await served.ssh("-o", "BatchMode=yes", "-i", str(path))
    assert (out, code) == (f"alice alice-{kind} echo hi\n", 0), err
    assert "teleconch:" not in err  # no banner on a good login
    await served.settled()
    assert served.policy.refused == []


@interop
@pytest_twisted.ensureDeferred
async def test_openssh_shows_why_another_cas_certificate_is_refused(
    served: Served,
) -> None:
    """A certificate from another CA: the banner explains, and says what to run."""
    key = Ed25519PrivateKey.generate()
    path = served.key_files("k", key, fresh_user_certificate(CA.make(), key))
    out, err, code = await served.ssh("-o", "BatchMode=yes", "-i", str(path))
    assert code == 255 and out == ""
    assert "it was not issued by this cluster's certificate authority" in err
    assert "Run: teleconch login --proxy proxy.example.com" in err
    assert "Permission denied (publickey,keyboard-interactive)" in err


@interop
@pytest_twisted.ensureDeferred
async def test_openssh_shows_that_the_certificate_expired(
    served: Served, ca: CA
) -> None:
    """An expired certificate: the banner gives the expiry time."""
    key = Ed25519PrivateKey.generate()
    now = int(reactor.seconds())
    cert = ca.user(key, valid_after=now - 2 * HOUR, valid_before=now - HOUR)
    path = served.key_files("k", key, cert)
    _, err, code = await served.ssh("-o", "BatchMode=yes", "-i", str(path))
    assert code == 255
    assert "your certificate was refused: it expired at" in err
    assert any("expired" in reason for _, reason, _ in served.policy.refused)


@interop
@pytest_twisted.ensureDeferred
async def test_openssh_with_a_plain_key_is_told_to_run_teleconch_login(
    served: Served,
) -> None:
    """A plain key only: once it is refused OpenSSH tries keyboard-interactive,
    and that refusal carries the banner saying what to run."""
    path = served.key_files("plain", Ed25519PrivateKey.generate(), None)
    _, err, code = await served.ssh("-i", str(path))
    assert code == 255
    assert REFUSAL in err
    assert "Permission denied (publickey,keyboard-interactive)" in err
    await served.settled()
    reasons = sorted(r for _, r, _ in served.policy.refused)
    assert reasons[0] == "keyboard-interactive authentication refused"
    assert reasons[1].startswith("plain public keys refused: ssh-ed25519 SHA256:")


@interop
@pytest_twisted.ensureDeferred
async def test_openssh_asked_for_a_password_gets_the_banner_and_never_sends_one(
    served: Served,
) -> None:
    """PreferredAuthentications=password,...: the server offers no password
    method, OpenSSH falls to keyboard-interactive, which is refused with the
    banner before any prompt, so askpass never runs."""
    marker = served.directory / "askpass-ran"
    askpass = served.directory / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {marker}\necho hunter2\n")
    askpass.chmod(0o700)
    _, err, code = await served.ssh(
        "-o", "PreferredAuthentications=password,keyboard-interactive",
        "-o", "PubkeyAuthentication=no",
        env={
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
        },
    )  # fmt: skip
    assert code == 255
    assert REFUSAL in err
    assert "Permission denied (publickey,keyboard-interactive)" in err
    assert not marker.exists()
