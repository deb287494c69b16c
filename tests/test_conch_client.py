"""The finished SSH client (teleconch.conch.client): in memory against our own
finished server, and against a real OpenSSH sshd (interop)."""

from __future__ import annotations

import pathlib
import struct
from typing import Any, cast

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.cred.portal import IRealm, Portal
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorUNIX,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from teleconch.ca import SSHCertificateAuthority
from teleconch.conch.agent import AgentClient, certificate_blob, connect_agent
from teleconch.conch.client import (
    AgentClientCredentials,
    AgentCredentials,
    CommandResult,
    ExitStatus,
    KeyCredentials,
    LoginRefused,
    NodeConnection,
    connect_ssh,
)
from teleconch.conch.flow import FlowControlledChannel
from teleconch.conch.hostcert import HostKeyRefused
from teleconch.conch.server import SecureSSHFactory
from teleconch.conch.userauth_server import (
    CertificateChecker,
    CertificateUserAuthServer,
)
from tests.fake_agent import FakeAgent, loopback_agent
from tests.test_conch_agent import agent_sock  # noqa: F401  (a fixture)
from tests.test_conch_hostcert import (
    ED_CERT,
    LOGIN,
    NOW,
    Policy,
    host_cert,
    new_ca,
    start_sshd,
    user_cert,
)

interop = pytest.mark.interop


# -- in memory: the finished client against the finished server --------------


class EchoSession(FlowControlledChannel):
    """Answers `exec` with the command on stdout, "err" on stderr, exit 3."""

    name = b"session"
    conn: SSHConnection

    def request_exec(self, data: bytes) -> int:
        command = getNS(data)[0]
        assert self.conn.transport is not None
        clock: Clock = self.conn.transport.factory.clock  # set by in_memory_login
        clock.callLater(0, self._answer, command)
        return 1

    def _answer(self, command: bytes) -> None:
        self.write(command + b"\n")
        self.writeExtended(1, b"err\n")
        self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 3))
        self.loseConnection()


class Avatar(ConchUser):
    def __init__(self) -> None:
        super().__init__()
        self.channelLookup[b"session"] = EchoSession


@implementer(IRealm)
class Realm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        return IConchUser, Avatar(), lambda: None


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """A client endpoint that joins the client to `server` through an IOPump."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.pump: IOPump | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 22))
        assert client is not None  # connect_ssh's factory always builds one
        self.pump = connect(
            self.server,
            FakeTransport(
                self.server,
                isServer=True,
                peerAddress=IPv4Address("TCP", "127.0.0.1", 5555),
            ),
            client,
            FakeTransport(client, isServer=False),
            greet=False,
        )
        return succeed(client)


def in_memory_login(
    host_ca: SSHCertificateAuthority,
    user_ca: SSHCertificateAuthority,
    key: Any,
    host_name: str = "node1",
    signing_ca: SSHCertificateAuthority | None = None,
    *,
    credentials: AgentClientCredentials | None = None,
    present_certificate: bool = True,
    check_host_certificate: bool = True,
    host_signing_ca: SSHCertificateAuthority | None = None,
) -> tuple[Deferred[NodeConnection], MemoryEndpoint, Clock]:
    clock = Clock()
    clock.advance(NOW)

    class ClockedAuth(CertificateUserAuthServer):
        pass

    ClockedAuth.clock = clock
    host_key = Ed25519PrivateKey.generate()
    factory = SecureSSHFactory(
        Portal(Realm(), [CertificateChecker()]),
        Policy([user_ca.public_key_line()]),
        host_key,
        (
            host_cert(host_signing_ca or host_ca, host_key, ["node1"])
            if present_certificate
            else None
        ),
    )
    factory.clock = clock  # type: ignore[attr-defined]  # for EchoSession
    factory.services = {**factory.services, b"ssh-userauth": ClockedAuth}
    factory.startFactory()
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 22))
    endpoint = MemoryEndpoint(server)
    d = Deferred.fromCoroutine(
        connect_ssh(
            clock,
            endpoint,
            "alice",
            credentials
            or KeyCredentials(key, user_cert(signing_ca or user_ca, key, "alice")),
            [host_ca.public_key_line()],
            host_name,
            check_host_certificate=check_host_certificate,
        )
    )
    settle(endpoint, clock)
    return d, endpoint, clock


def settle(endpoint: MemoryEndpoint, clock: Clock) -> None:
    if endpoint.pump is None:
        return  # connect_ssh failed before it dialled
    for _ in range(5):
        endpoint.pump.flush()
        clock.advance(0)


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_the_client_logs_in_with_strict_kex_and_a_checked_host_certificate() -> None:
    """connect_ssh against our finished server: curve25519, an AEAD cipher,
    strict KEX both ways, the host certificate kept, and a command's output,
    stderr and exit status come back."""
    host_ca, user_ca = new_ca(), new_ca()
    d, endpoint, clock = in_memory_login(host_ca, user_ca, Ed25519PrivateKey.generate())
    conn = result_of(d)
    assert isinstance(conn, NodeConnection)
    transport = conn.node_transport
    assert transport.strictKex and endpoint.server.strictKex
    assert transport.keyAlg == ED_CERT
    assert transport.host_certificate is not None
    assert transport.host_certificate.principals == ("node1",)
    run = Deferred.fromCoroutine(conn.run("hello"))
    settle(endpoint, clock)
    assert result_of(run) == CommandResult(b"hello\n", b"err\n", ExitStatus(code=3))
    conn.close()
    settle(endpoint, clock)


def test_the_client_refuses_a_host_certificate_for_another_name() -> None:
    """The node's certificate is for node1; dialling it as node2 fails with a
    HostKeyRefused that names what the certificate allows."""
    d, _, _ = in_memory_login(new_ca(), new_ca(), Ed25519PrivateKey.generate(), "node2")
    failure = result_of(d)
    assert failure.check(HostKeyRefused)
    assert "does not allow 'node2' (it allows: node1)" in failure.getErrorMessage()


def test_a_refused_user_certificate_raises_login_refused_with_the_banner() -> None:
    """A user certificate from a CA the node does not trust: LoginRefused,
    carrying the node's explanation."""
    key = Ed25519PrivateKey.generate()
    d, _, _ = in_memory_login(new_ca(), new_ca(), key, signing_ca=new_ca())
    failure = result_of(d)
    assert failure.check(LoginRefused), failure
    assert "not issued by this cluster's certificate authority" in str(
        failure.value.banners
    )


def test_an_agent_already_connected_signs_the_login_and_stays_open() -> None:
    """AgentClientCredentials: the certificate is found in the agent, the agent
    signs the login, and connect_ssh leaves the agent open for its owner."""
    host_ca, user_ca = new_ca(), new_ca()
    key = Ed25519PrivateKey.generate()
    agent_end = FakeAgent([(key, user_cert(user_ca, key, "alice"))])
    agent = loopback_agent(agent_end)
    d, endpoint, clock = in_memory_login(
        host_ca, user_ca, key, credentials=AgentClientCredentials(agent)
    )
    conn = result_of(d)
    assert isinstance(conn, NodeConnection), conn
    assert len(agent_end.signed) == 1
    assert agent_end.transport is not None
    assert not agent_end.transport.disconnecting  # type: ignore[attr-defined]
    listed = Deferred.fromCoroutine(agent.list_identities())
    assert len(result_of(listed)) == 2
    conn.close()
    settle(endpoint, clock)


def test_an_agent_without_a_certificate_for_the_login_is_refused() -> None:
    """An agent that holds only a plain key: LoginRefused naming the login."""
    key = Ed25519PrivateKey.generate()
    agent = loopback_agent(FakeAgent([(key, None)]))
    d, _, _ = in_memory_login(
        new_ca(), new_ca(), key, credentials=AgentClientCredentials(agent)
    )
    failure = result_of(d)
    assert failure.check(LoginRefused)
    assert "holds no user certificate for 'alice'" in failure.getErrorMessage()


def test_a_plain_host_key_is_refused_when_host_certificates_are_checked() -> None:
    """The default: a plain key is HostKeyRefused, with the message the
    recording proxy shows."""
    d, _, _ = in_memory_login(
        new_ca(), new_ca(), Ed25519PrivateKey.generate(), present_certificate=False
    )
    failure = result_of(d)
    assert failure.check(HostKeyRefused)
    assert (
        "node1: remote host presented a public key, expected a host certificate"
        in failure.getErrorMessage()
    )


def test_without_host_certificate_checks_a_plain_key_is_accepted_and_flagged() -> None:
    """check_host_certificate=False: a plain host key logs in, and the
    transport says there was no certificate (host_certificate is None) while
    keeping the key it presented."""
    host_ca, user_ca = new_ca(), new_ca()
    d, endpoint, clock = in_memory_login(
        host_ca,
        user_ca,
        Ed25519PrivateKey.generate(),
        present_certificate=False,
        check_host_certificate=False,
    )
    conn = result_of(d)
    assert isinstance(conn, NodeConnection), conn
    transport = conn.node_transport
    assert transport.host_certificate is None
    assert transport.keyAlg == b"ssh-ed25519"
    assert (
        transport.host_key == endpoint.server.factory.publicKeys[b"ssh-ed25519"].blob()
    )
    run = Deferred.fromCoroutine(conn.run("hi"))
    settle(endpoint, clock)
    assert result_of(run).status == ExitStatus(code=3)
    conn.close()
    settle(endpoint, clock)


def test_without_host_certificate_checks_a_presented_certificate_is_still_checked() -> (
    None
):
    """check_host_certificate=False does not wave a bad certificate through: one
    from another CA, or for another name, is still HostKeyRefused."""
    d, _, _ = in_memory_login(
        new_ca(),
        new_ca(),
        Ed25519PrivateKey.generate(),
        check_host_certificate=False,
        host_signing_ca=new_ca(),
    )
    failure = result_of(d)
    assert failure.check(HostKeyRefused)
    assert "not issued by this cluster's certificate authority" in str(failure.value)
    d, _, _ = in_memory_login(
        new_ca(),
        new_ca(),
        Ed25519PrivateKey.generate(),
        "node2",
        check_host_certificate=False,
    )
    failure = result_of(d)
    assert failure.check(HostKeyRefused)
    assert "does not allow 'node2'" in failure.getErrorMessage()


# -- against a real OpenSSH sshd ---------------------------------------------


async def login_to(
    sshd: Any,
    credentials: KeyCredentials | AgentCredentials | AgentClientCredentials,
    host_ca: SSHCertificateAuthority,
    host_name: str = "127.0.0.1",
    check_host_certificate: bool = True,
) -> NodeConnection:
    return await connect_ssh(
        reactor,
        ("127.0.0.1", sshd.port),
        LOGIN,
        credentials,
        [host_ca.public_key_line()],
        host_name,
        login_timeout=15,
        check_host_certificate=check_host_certificate,
    )


@interop
@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
@pytest_twisted.ensureDeferred
async def test_the_client_logs_in_to_sshd_with_a_key_in_memory_and_runs_a_command(
    tmp_path: pathlib.Path, kind: str
) -> None:
    """OpenSSH sshd: host certificate checked, user certificate accepted, a
    command's stdout, stderr and exit status come back over strict KEX."""
    host_ca, user_ca = new_ca(), new_ca()
    sshd = await start_sshd(tmp_path, host_ca, user_ca, LOGIN)
    try:
        key: Any = (
            Ed25519PrivateKey.generate()
            if kind == "ed25519"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        cert = user_cert(user_ca, key, LOGIN, int(reactor.seconds()))
        conn = await login_to(sshd, KeyCredentials(key, cert), host_ca)
        try:
            assert conn.node_transport.strictKex
            assert conn.node_transport.keyAlg == ED_CERT
            result = await conn.run("echo hi; echo oops >&2; exit 7")
            assert result == CommandResult(b"hi\n", b"oops\n", ExitStatus(code=7))
        finally:
            conn.close()
            await conn.wait_closed()
    finally:
        await sshd.stop()
    log = b"".join(sshd.process.log).decode()
    assert f"Accepted publickey for {LOGIN}" in log


@interop
@pytest_twisted.ensureDeferred
async def test_the_client_logs_in_to_sshd_through_an_agent_holding_key_and_cert(
    tmp_path: pathlib.Path,
    agent_sock: str,  # noqa: F811  (the fixture)
) -> None:
    """A real ssh-agent holds the key and its certificate; the client finds the
    certificate there, the agent signs, and a pty session reports a terminal."""
    host_ca, user_ca = new_ca(), new_ca()
    sshd = await start_sshd(tmp_path, host_ca, user_ca, LOGIN)
    try:
        key = Ed25519PrivateKey.generate()
        cert = user_cert(user_ca, key, LOGIN, int(reactor.seconds()))
        agent = await connect_agent(cast(IReactorUNIX, reactor), agent_sock)
        await agent.add_key(key, "alice", certificate=certificate_blob(cert))
        agent.close()
        conn = await login_to(sshd, AgentCredentials(agent_sock), host_ca)
        try:
            output: list[bytes] = []
            session = await conn.open_session(on_data=output.append)
            await session.request_pty("xterm", 100, 30)
            session.window_change(120, 40)
            await session.exec("test -t 0 && stty size")
            assert await session.exit == ExitStatus(code=0)
            assert b"".join(output).strip() in (b"30 100", b"40 120")
        finally:
            conn.close()
            await conn.wait_closed()
    finally:
        await sshd.stop()


async def agent_holding_a_user_cert(
    socket_path: str, user_ca: SSHCertificateAuthority, comment: str
) -> AgentClient:
    """Connected to the real ssh-agent at ``socket_path``, which now holds a new
    key and its user certificate for LOGIN from ``user_ca``."""
    agent = await connect_agent(cast(IReactorUNIX, reactor), socket_path)
    key = Ed25519PrivateKey.generate()
    cert = user_cert(user_ca, key, LOGIN, int(reactor.seconds()))
    await agent.add_key(key, comment, certificate=certificate_blob(cert))
    return agent


@interop
@pytest_twisted.ensureDeferred
async def test_a_connected_agent_logs_in_to_sshd_with_a_plain_key_when_not_checking(
    tmp_path: pathlib.Path,
    agent_sock: str,  # noqa: F811  (the fixture)
) -> None:
    """A real ssh-agent, already connected, signs the login (AgentClientCredentials)
    to an sshd with a plain host key (check_host_certificate=False); the agent
    stays open afterwards and host_certificate says there was none."""
    user_ca = new_ca()
    sshd = await start_sshd(tmp_path, None, user_ca, LOGIN)
    agent = await agent_holding_a_user_cert(agent_sock, user_ca, "alice")
    try:
        conn = await login_to(
            sshd, AgentClientCredentials(agent), new_ca(), check_host_certificate=False
        )
        try:
            assert conn.node_transport.host_certificate is None
            assert (await conn.run("echo ok")).stdout == b"ok\n"
        finally:
            conn.close()
            await conn.wait_closed()
        assert len(await agent.list_identities()) == 2
    finally:
        agent.close()
        await agent.wait_closed()
        await sshd.stop()


@interop
@pytest_twisted.ensureDeferred
async def test_the_client_refuses_sshd_whose_host_certificate_is_from_another_ca(
    tmp_path: pathlib.Path,
) -> None:
    """HostKeyRefused before any login: the certificate is not our host CA's."""
    user_ca = new_ca()
    sshd = await start_sshd(tmp_path, new_ca(), user_ca, LOGIN)
    try:
        key = Ed25519PrivateKey.generate()
        cert = user_cert(user_ca, key, LOGIN, int(reactor.seconds()))
        with pytest.raises(HostKeyRefused) as caught:
            await login_to(sshd, KeyCredentials(key, cert), new_ca())
        message = str(caught.value)
        assert "127.0.0.1's host certificate was refused" in message
        assert "not issued by this cluster's certificate authority" in message
    finally:
        await sshd.stop()


@interop
@pytest_twisted.ensureDeferred
async def test_the_client_refuses_sshd_presenting_a_plain_host_key(
    tmp_path: pathlib.Path,
) -> None:
    """No trust on first use: a plain host key is refused, and the message says so."""
    user_ca = new_ca()
    sshd = await start_sshd(tmp_path, None, user_ca, LOGIN)
    try:
        key = Ed25519PrivateKey.generate()
        cert = user_cert(user_ca, key, LOGIN, int(reactor.seconds()))
        with pytest.raises(HostKeyRefused) as caught:
            await login_to(sshd, KeyCredentials(key, cert), new_ca())
        assert "remote host presented a public key, expected a host certificate" in str(
            caught.value
        )
    finally:
        await sshd.stop()


@interop
@pytest_twisted.ensureDeferred
async def test_the_client_refuses_sshd_whose_host_certificate_names_another_host(
    tmp_path: pathlib.Path,
) -> None:
    """The certificate is from our CA but for 127.0.0.1, and we dialled node7."""
    host_ca, user_ca = new_ca(), new_ca()
    sshd = await start_sshd(tmp_path, host_ca, user_ca, LOGIN)
    try:
        key = Ed25519PrivateKey.generate()
        cert = user_cert(user_ca, key, LOGIN, int(reactor.seconds()))
        with pytest.raises(HostKeyRefused) as caught:
            await login_to(sshd, KeyCredentials(key, cert), host_ca, "node7")
        assert "does not allow 'node7' (it allows: 127.0.0.1)" in str(caught.value)
    finally:
        await sshd.stop()


@interop
@pytest_twisted.ensureDeferred
async def test_sshd_refusing_the_user_certificate_raises_login_refused(
    tmp_path: pathlib.Path,
) -> None:
    """A user certificate sshd does not trust: LoginRefused, no hang."""
    host_ca = new_ca()
    sshd = await start_sshd(tmp_path, host_ca, new_ca(), LOGIN)
    try:
        key = Ed25519PrivateKey.generate()
        cert = user_cert(new_ca(), key, LOGIN, int(reactor.seconds()))
        with pytest.raises(LoginRefused, match="refused the user certificate"):
            await login_to(sshd, KeyCredentials(key, cert), host_ca)
    finally:
        await sshd.stop()
