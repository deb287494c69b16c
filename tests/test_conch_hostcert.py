"""Host certificates on a Conch server and client, and the certificate-carrying
Conch client: in memory against our own server, and against a real sshd."""

from __future__ import annotations

import base64
import os
import pathlib
import socket
import struct
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IProcessTransport, ITransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from zope.interface import implementer

from teleconch.ca import STANDARD_USER_EXTENSIONS, SSHCertificateAuthority
from teleconch.conch.certs import CertificateError
from teleconch.conch.hostcert import (
    CertificateClientTransport,
    CertificateSSHFactory,
    HostKeyRefused,
    host_keys_with_certificate,
    verify_host_key_with_ca,
    verify_host_signature,
)
from teleconch.conch.userauth_client import CertificateUserAuthClient
from teleconch.conch.userauth_server import (
    CertificateChecker,
    CertificateCredentials,
    CertificateUserAuthServer,
)
from teleconch.conch.wire import verify_ssh_signature

NOW = 1_750_000_000
HOUR = 3600
ED_CERT = b"ssh-ed25519-cert-v01@openssh.com"
SSHD = "/usr/sbin/sshd"


def new_ca() -> SSHCertificateAuthority:
    return SSHCertificateAuthority.generate()


def host_cert(
    ca: SSHCertificateAuthority, key: Any, names: Sequence[str], now: int = NOW
) -> str:
    return ca.sign_host_certificate(
        key.public_key(), "host", names, now - 60, now + HOUR
    )


def user_cert(ca: SSHCertificateAuthority, key: Any, login: str, now: int = NOW) -> str:
    return ca.sign_user_certificate(
        key.public_key(),
        f"{login}-id",
        [login],
        now - 60,
        now + HOUR,
        STANDARD_USER_EXTENSIONS,
    )


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def refusal(d: Deferred[Any]) -> str:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    [failure] = failures
    assert failure.check(HostKeyRefused)
    return failure.getErrorMessage()


# -- presenting a host certificate -------------------------------------------


def test_host_keys_offer_the_certificate_first_and_sign_with_the_plain_key() -> None:
    """K_S is the certificate blob; the exchange hash is signed as ssh-ed25519."""
    ca, key = new_ca(), Ed25519PrivateKey.generate()
    line = host_cert(ca, key, ["node1"])
    public, private = host_keys_with_certificate(key, line)
    assert list(public) == list(private) == [ED_CERT, b"ssh-ed25519"]
    assert public[ED_CERT].blob() == blob_of(line)
    assert public[b"ssh-ed25519"].blob() == Key(key).public().blob()
    signature = private[ED_CERT].sign(b"exchange hash", signatureType=ED_CERT)
    assert getNS(signature)[0] == b"ssh-ed25519"
    assert verify_ssh_signature(
        key.public_key(), b"ssh-ed25519", signature, b"exchange hash"
    )


def test_ecdsa_host_certificates_sign_as_plain_ecdsa() -> None:
    """ecdsa-sha2-nistp256-cert-v01 signs the exchange hash as ecdsa-sha2-nistp256."""
    ca, key = new_ca(), ec.generate_private_key(ec.SECP256R1())
    _, private = host_keys_with_certificate(key, host_cert(ca, key, ["node1"]))
    cert_alg = b"ecdsa-sha2-nistp256-cert-v01@openssh.com"
    assert list(private) == [cert_alg, b"ecdsa-sha2-nistp256"]
    signature = private[cert_alg].sign(b"h", signatureType=cert_alg)
    assert verify_ssh_signature(
        key.public_key(), b"ecdsa-sha2-nistp256", signature, b"h"
    )


def test_rsa_host_certificates_are_offered_with_sha2_only() -> None:
    """An RSA host key gets rsa-sha2-512/256-cert-v01, never ssh-rsa-cert-v01."""
    ca = new_ca()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, private = host_keys_with_certificate(key, host_cert(ca, key, ["node1"]))
    assert list(private)[:2] == [
        b"rsa-sha2-512-cert-v01@openssh.com",
        b"rsa-sha2-256-cert-v01@openssh.com",
    ]
    for alg, sig_alg in (
        (b"rsa-sha2-512", b"rsa-sha2-512"),
        (b"rsa-sha2-256", b"rsa-sha2-256"),
    ):
        cert_alg = alg + b"-cert-v01@openssh.com"
        signature = private[cert_alg].sign(b"h", signatureType=cert_alg)
        assert verify_ssh_signature(key.public_key(), sig_alg, signature, b"h")


def test_host_keys_refuse_a_certificate_for_another_key_or_a_user_certificate() -> None:
    """A mismatched certificate is a configuration error, caught at start-up."""
    ca, key = new_ca(), Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    with pytest.raises(CertificateError, match="different key"):
        host_keys_with_certificate(key, host_cert(ca, other, ["node1"]))
    with pytest.raises(CertificateError, match="user certificate"):
        host_keys_with_certificate(key, user_cert(ca, key, "alice"))


# -- checking a host certificate ---------------------------------------------


def test_verify_host_key_accepts_only_a_trusted_certificate_for_the_host() -> None:
    """Our CA's host certificate for the dialled name passes; everything else is
    refused with a message saying why."""
    ca, key = new_ca(), Ed25519PrivateKey.generate()
    blob = blob_of(host_cert(ca, key, ["node1", "10.0.0.5"]))
    verify = verify_host_key_with_ca([ca.public_key_line()], "node1", NOW)
    results: list[bool] = []
    verify(blob, b"").addCallback(results.append)
    assert results == [True]
    plain = Key(key).public().blob()
    assert "remote host presented a public key, expected a host" in refusal(
        verify(plain, b"")
    )
    other = verify_host_key_with_ca([new_ca().public_key_line()], "node1", NOW)
    assert "not issued by this cluster's certificate authority" in refusal(
        other(blob, b"")
    )
    wrong = verify_host_key_with_ca([ca.public_key_line()], "node2", NOW)
    assert "does not allow 'node2'" in refusal(wrong(blob, b""))
    late = verify_host_key_with_ca([ca.public_key_line()], "node1", NOW + 2 * HOUR)
    assert "expired" in refusal(late(blob, b""))


def test_host_signature_must_match_the_negotiated_algorithm() -> None:
    """The key algorithm decides the blob type and the signature algorithm."""
    ca, key = new_ca(), Ed25519PrivateKey.generate()
    blob = blob_of(host_cert(ca, key, ["node1"]))
    signature = Key(key).sign(b"h", signatureType=b"ssh-ed25519")
    assert verify_host_signature(ED_CERT, blob, signature, b"h")
    assert not verify_host_signature(b"ssh-ed25519", blob, signature, b"h")
    plain = Key(key).public().blob()
    assert verify_host_signature(b"ssh-ed25519", plain, signature, b"h")
    assert not verify_host_signature(ED_CERT, plain, signature, b"h")
    assert not verify_host_signature(b"ssh-rsa", plain, signature, b"h")


# -- a Conch client and a Conch server, in memory ----------------------------


class ExecSession(SSHChannel):
    """Answers `exec` with "<user> <key id> <command>", scheduled on a clock."""

    name = b"session"
    avatar: Avatar  # the realm's avatar opens this channel
    conn: SSHConnection

    def request_exec(self, data: bytes) -> int:
        creds = self.avatar.credentials
        text = (
            f"{creds.username} {creds.certificate.key_id} {getNS(data)[0].decode()}\n"
        )
        self.avatar.clock.callLater(0, self._answer, text.encode())
        return 1

    def _answer(self, output: bytes) -> None:
        self.write(output)
        self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
        self.loseConnection()


class Avatar(ConchUser):
    def __init__(self, credentials: CertificateCredentials, clock: Clock) -> None:
        super().__init__()
        self.credentials, self.clock = credentials, clock
        self.channelLookup[b"session"] = ExecSession


@implementer(IRealm)
@attrs.define
class Realm:
    clock: Clock

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        return IConchUser, Avatar(mind, self.clock), lambda: None


@attrs.define
class Policy:
    cas: list[str]
    refusal_message: str = "teleconch: run teleconch login"
    refused: list[str] = attrs.Factory(list)

    async def trusted_user_cas(self) -> Sequence[str]:
        return self.cas

    def on_refused(
        self,
        username: str,
        reason: str,
        client_address: str | None,
        login: str | None = None,
    ) -> None:
        self.refused.append(reason)


class RunCommand(SSHChannel):
    """The client side of one `exec`: collects output and the exit status."""

    name = b"session"
    conn: SSHConnection

    def __init__(
        self, command: bytes, done: Deferred[tuple[bytes, int | None]], **kw: Any
    ):
        super().__init__(**kw)
        self.command, self.done = command, done
        self.output: list[bytes] = []
        self.status: int | None = None

    def channelOpen(self, data: bytes) -> None:
        self.conn.sendRequest(self, b"exec", NS(self.command))

    def dataReceived(self, data: bytes) -> None:
        self.output.append(data)

    def request_exit_status(self, data: bytes) -> int:
        self.status = struct.unpack(">L", data)[0]
        return 1

    def closed(self) -> None:
        self.done.callback((b"".join(self.output), self.status))


class Commander(SSHConnection):
    def __init__(
        self, command: bytes, done: Deferred[tuple[bytes, int | None]]
    ) -> None:
        super().__init__()
        self.command, self.done = command, done

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(RunCommand(self.command, self.done, conn=self))


class Client(CertificateClientTransport):
    """Runs one command as `login` with a key + certificate, checking the host CA."""

    transport: ITransport  # connected before the test touches it

    def __init__(
        self,
        login: str,
        key: Any,
        cert_line: str,
        host_ca_line: str,
        hostname: str,
        now: float,
    ) -> None:
        # Replacing the method is how CertificateClientTransport is configured.
        self.verifyHostKey = verify_host_key_with_ca(  # type: ignore[method-assign]
            [host_ca_line], hostname, now
        )
        self.result: Deferred[tuple[bytes, int | None]] = Deferred()
        self.auth = CertificateUserAuthClient(
            login, Commander(b"echo hi", self.result), key, cert_line
        )
        self.lost: Deferred[None] = Deferred()

    def connectionSecure(self) -> None:
        self.requestService(self.auth)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


def in_memory(
    host_ca: SSHCertificateAuthority, user_ca: SSHCertificateAuthority, client: Client
) -> Any:
    """A CertificateSSHFactory server and `client` joined by an IOPump."""
    clock = Clock()
    clock.advance(NOW)

    class ClockedAuth(CertificateUserAuthServer):
        pass

    ClockedAuth.clock = clock
    host_key = Ed25519PrivateKey.generate()
    factory = CertificateSSHFactory(
        Portal(Realm(clock), [CertificateChecker()]),
        Policy([user_ca.public_key_line()]),
        host_key,
        host_cert(host_ca, host_key, ["node1"]),
    )
    factory.services = {**factory.services, b"ssh-userauth": ClockedAuth}
    factory.startFactory()
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 22))
    pump = connect(
        server,
        FakeTransport(
            server, isServer=True, peerAddress=IPv4Address("TCP", "127.0.0.1", 5555)
        ),
        client,
        FakeTransport(client, isServer=False),
    )
    pump.flush()
    clock.advance(0)
    pump.flush()
    return server, pump


def test_conch_client_and_server_use_certificates_both_ways_in_memory() -> None:
    """Host certificate checked by our client, user certificate by our server."""
    host_ca, user_ca = new_ca(), new_ca()
    key = Ed25519PrivateKey.generate()
    client = Client(
        "alice",
        key,
        user_cert(user_ca, key, "alice"),
        host_ca.public_key_line(),
        "node1",
        NOW,
    )
    server, pump = in_memory(host_ca, user_ca, client)
    assert server.keyAlg == ED_CERT
    results: list[Any] = []
    client.result.addCallback(results.append)
    assert results == [(b"alice alice-id echo hi\n", 0)]
    client.transport.loseConnection()
    pump.flush()


def test_conch_client_refuses_a_host_certificate_from_another_ca_in_memory() -> None:
    """The client disconnects during key exchange and keeps the reason."""
    key = Ed25519PrivateKey.generate()
    user_ca = new_ca()
    client = Client(
        "alice",
        key,
        user_cert(user_ca, key, "alice"),
        new_ca().public_key_line(),
        "node1",
        NOW,
    )
    in_memory(new_ca(), user_ca, client)
    assert client.host_key_failure is not None
    assert (
        "not issued by this cluster's certificate authority"
        in client.host_key_failure.getErrorMessage()
    )
    assert client.lost.called and not client.result.called


def test_conch_client_keeps_the_servers_banner_when_refused_in_memory() -> None:
    """A user certificate our server does not trust: the client records why."""
    key = Ed25519PrivateKey.generate()
    host_ca = new_ca()
    client = Client(
        "alice",
        key,
        user_cert(new_ca(), key, "alice"),
        host_ca.public_key_line(),
        "node1",
        NOW,
    )
    in_memory(host_ca, new_ca(), client)
    assert client.host_key_failure is None
    assert client.lost.called and not client.result.called
    assert (
        "not issued by this cluster's certificate authority" in client.auth.banners[0]
    )


def test_the_client_checks_that_its_certificate_matches_its_key() -> None:
    """Offering a certificate for another key would only fail later, confusingly."""
    ca = new_ca()
    cert = user_cert(ca, Ed25519PrivateKey.generate(), "alice")
    with pytest.raises(CertificateError, match="different key"):
        CertificateUserAuthClient(
            "alice", SSHConnection(), Ed25519PrivateKey.generate(), cert
        )


# -- the Conch client against a real sshd ------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshdProcess(ProcessProtocol):
    transport: IProcessTransport  # set by spawnProcess before any callback

    def __init__(self) -> None:
        self.listening: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.log: list[bytes] = []

    def errReceived(self, data: bytes) -> None:
        self.log.append(data)
        if not self.listening.called and b"Server listening on" in b"".join(self.log):
            self.listening.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(b"".join(self.log).decode()))
        self.ended.callback(None)


def write_private_key(path: pathlib.Path, key: Any) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@attrs.define
class Sshd:
    port: int
    process: SshdProcess

    async def stop(self) -> None:
        if not self.process.ended.called:
            self.process.transport.signalProcess("TERM")
        await self.process.ended


async def start_sshd(
    directory: pathlib.Path,
    host_ca: SSHCertificateAuthority | None,
    user_ca: SSHCertificateAuthority,
    login: str,
) -> Sshd:
    """sshd on 127.0.0.1 trusting `user_ca`, with a host cert from `host_ca`."""
    os.makedirs("/run/sshd", exist_ok=True)
    now = int(reactor.seconds())
    host_key = Ed25519PrivateKey.generate()
    write_private_key(directory / "host_ed25519", host_key)
    config = [
        f"HostKey {directory}/host_ed25519",
        f"TrustedUserCAKeys {directory}/user_ca.pub",
        "AuthorizedKeysFile none",
        "AuthorizedPrincipalsFile none",
        "UsePAM no",
        "PermitRootLogin yes",
        f"AllowUsers {login}",
        "StrictModes no",
        "PidFile none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "ListenAddress 127.0.0.1",
        "LogLevel VERBOSE",
    ]
    if host_ca is not None:
        cert = host_cert(host_ca, host_key, ["127.0.0.1"], now)
        (directory / "host_ed25519-cert.pub").write_text(cert + "\n")
        config.append(f"HostCertificate {directory}/host_ed25519-cert.pub")
    (directory / "user_ca.pub").write_text(user_ca.public_key_line() + "\n")
    port = free_port()
    (directory / "sshd_config").write_text("\n".join([f"Port {port}", *config]) + "\n")
    process = SshdProcess()
    reactor.spawnProcess(
        process, SSHD, [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")], env={}
    )
    sshd = Sshd(port, process)
    try:
        await process.listening.addTimeout(15, reactor)
    except BaseException:
        await sshd.stop()
        raise
    return sshd


async def run_against(sshd: Sshd, client: Client) -> tuple[bytes, int | None] | None:
    """Connect, wait for the command's result or the connection's end, disconnect."""
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", sshd.port), client)
    waits: list[Deferred[Any]] = [client.result, client.lost]
    first = await defer.DeferredList(waits, fireOnOneCallback=True)
    if not client.lost.called:
        client.transport.loseConnection()
    await client.lost
    return first[0] if first[1] == 0 else None


LOGIN = os.environ.get("USER") or "root"
interop = pytest.mark.interop


@interop
@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
@pytest_twisted.ensureDeferred
async def test_conch_client_logs_in_to_sshd_with_a_certificate(
    tmp_path: pathlib.Path, kind: str
) -> None:
    """Against OpenSSH sshd: host certificate verified, user certificate accepted
    (RSA signs rsa-sha2-512), `echo hi` comes back."""
    host_ca, user_ca = new_ca(), new_ca()
    sshd = await start_sshd(tmp_path, host_ca, user_ca, LOGIN)
    try:
        key: Any = (
            Ed25519PrivateKey.generate()
            if kind == "ed25519"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        now = reactor.seconds()
        cert = user_cert(user_ca, key, LOGIN, int(now))
        client = Client(LOGIN, key, cert, host_ca.public_key_line(), "127.0.0.1", now)
        result = await run_against(sshd, client)
        assert result == (b"hi\n", 0), b"".join(sshd.process.log).decode()
        assert client.keyAlg == ED_CERT
    finally:
        await sshd.stop()
    log = b"".join(sshd.process.log).decode()
    assert f"Accepted publickey for {LOGIN}" in log
    assert ("ED25519-CERT" if kind == "ed25519" else "RSA-CERT") in log


@interop
@pytest_twisted.ensureDeferred
async def test_conch_client_refuses_sshd_with_a_host_certificate_from_another_ca(
    tmp_path: pathlib.Path,
) -> None:
    """A node whose host certificate our host CA did not sign is refused before login."""
    user_ca = new_ca()
    sshd = await start_sshd(tmp_path, new_ca(), user_ca, LOGIN)
    try:
        key = Ed25519PrivateKey.generate()
        now = reactor.seconds()
        client = Client(
            LOGIN,
            key,
            user_cert(user_ca, key, LOGIN, int(now)),
            new_ca().public_key_line(),
            "127.0.0.1",
            now,
        )
        assert await run_against(sshd, client) is None
        assert client.host_key_failure is not None
        message = client.host_key_failure.getErrorMessage()
        assert "127.0.0.1's host certificate was refused" in message
        assert "not issued by this cluster's certificate authority" in message
    finally:
        await sshd.stop()


@interop
@pytest_twisted.ensureDeferred
async def test_conch_client_refuses_sshd_with_a_plain_host_key(
    tmp_path: pathlib.Path,
) -> None:
    """No trust on first use: a node without a host certificate is refused."""
    user_ca = new_ca()
    sshd = await start_sshd(tmp_path, None, user_ca, LOGIN)
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        now = reactor.seconds()
        client = Client(
            LOGIN,
            key,
            user_cert(user_ca, key, LOGIN, int(now)),
            new_ca().public_key_line(),
            "127.0.0.1",
            now,
        )
        assert await run_against(sshd, client) is None
        assert client.host_key_failure is not None
        assert (
            "127.0.0.1: remote host presented a public key, expected a host "
            "certificate from the cluster's host CA (its key is a plain "
            "ssh-ed25519); refusing to connect"
        ) in client.host_key_failure.getErrorMessage()
    finally:
        await sshd.stop()


@interop
@pytest_twisted.ensureDeferred
async def test_sshd_refusing_our_user_certificate_ends_the_connection(
    tmp_path: pathlib.Path,
) -> None:
    """A user certificate sshd does not trust: no hang, the connection just ends."""
    host_ca = new_ca()
    sshd = await start_sshd(tmp_path, host_ca, new_ca(), LOGIN)
    try:
        key = Ed25519PrivateKey.generate()
        now = reactor.seconds()
        client = Client(
            LOGIN,
            key,
            user_cert(new_ca(), key, LOGIN, int(now)),
            host_ca.public_key_line(),
            "127.0.0.1",
            now,
        )
        assert await run_against(sshd, client) is None
        assert client.host_key_failure is None
    finally:
        await sshd.stop()
    log = b"".join(sshd.process.log).decode()  # complete: children share the pipe
    assert f"Failed publickey for {LOGIN}" in log and "ED25519-CERT" in log
