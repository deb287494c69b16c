"""The finished SSH client: log in to a node with a user certificate.

`connect_ssh` dials a node, checks its host certificate against the host CA
(no trust on first use), logs in with a user certificate whose key is in
memory (`KeyCredentials`), in an ssh-agent on a socket (`AgentCredentials`)
or in an agent already connected, e.g. forwarded over SSH
(`AgentClientCredentials`), and returns a `NodeConnection`. On it,
`open_session` opens `SessionChannel` s (pty, exec or shell, window-change,
exit status) whose bytes flow with flow control: set ``auto_window=False``
and call ``open_window`` once the bytes have been forwarded, so a slow reader
throttles the node. The node may open channels back (agent forwarding) only
of the types the caller registered and asked for (`NodeConnection`). The web
terminal and the recording proxy use it.

    conn = await connect_ssh(
        reactor, ("10.0.0.5", 22), "alice",
        KeyCredentials(private_key, certificate_line),
        host_ca_keys=[host_ca_line], host_name="node1",
    )
    result = await conn.run("uname -a")   # CommandResult(stdout, stderr, status)
    session = await conn.open_session(on_data=forward, auto_window=False)
    await session.request_pty("xterm-256color", 80, 24)
    await session.shell()
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives.serialization import SSHCertPrivateKeyTypes
from twisted.conch.error import ConchError
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import OPEN_UNKNOWN_CHANNEL_TYPE
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure

from teleconch.conch.agent import AgentClient, connect_agent
from teleconch.conch.certs import Certificate, CertificateError, parse_certificate
from teleconch.conch.flow import FlowControlledConnection
from teleconch.conch.hostcert import (
    CertificateClientTransport,
    HostKeyRefused,
    is_plain_host_key,
    verify_host_key_with_ca,
)
from teleconch.conch.session import CommandResult, ExitStatus, SessionChannel
from teleconch.conch.transport import ModernTransportMixin
from teleconch.conch.userauth_client import (
    AgentCertificateUserAuthClient,
    CertificateUserAuthClient,
    _OneCertificateClient,
)

__all__ = [
    "AgentClientCredentials",
    "AgentCredentials",
    "ChannelFactory",
    "CommandResult",
    "ExitStatus",
    "KeyCredentials",
    "LoginRefused",
    "NodeClientTransport",
    "NodeConnection",
    "SessionChannel",
    "connect_ssh",
]


@attrs.frozen
class KeyCredentials:
    """A user key in memory and its OpenSSH certificate line."""

    private_key: SSHCertPrivateKeyTypes = attrs.field(repr=False)
    certificate: str


@attrs.frozen
class AgentCredentials:
    """An ssh-agent holding the key (``$SSH_AUTH_SOCK``) and the certificate.

    Without `certificate`, the agent's first user certificate that allows the
    login is used.
    """

    socket_path: str
    certificate: str | None = None


@attrs.frozen
class AgentClientCredentials:
    """An agent already connected (e.g. the client's, forwarded over SSH).

    `connect_ssh` signs with it and leaves it open: it belongs to the caller.
    Without `certificate`, the agent's first user certificate that allows the
    login is used.
    """

    agent: AgentClient = attrs.field(repr=False)
    certificate: str | None = None


#: Makes the channel for a channel the node opens: (its window, its max packet,
#: the open's type-specific data) -> our channel. Raise ConchError to refuse.
ChannelFactory = Callable[[int, int, bytes], SSHChannel]


class LoginRefused(ConchError):
    """The node refused our user certificate; `banners` holds what it said."""

    def __init__(self, message: str, banners: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.banners = list(banners)


class NodeClientTransport(ModernTransportMixin, CertificateClientTransport):
    """The finished client transport: modern algorithms, strict KEX, host
    certificates checked against the host CA, login with one user certificate."""

    def __init__(
        self,
        userauth: _OneCertificateClient,
        connection: NodeConnection,
        host_ca_keys: Sequence[str],
        host_name: str,
        now: float,
        check_host_certificate: bool = True,
    ) -> None:
        self._check_host_key = verify_host_key_with_ca(
            host_ca_keys, host_name, now, require_certificate=check_host_certificate
        )
        #: The node's host certificate, once key exchange has checked it; None
        #: if it presented a plain key (only with check_host_certificate=False).
        self.host_certificate: Certificate | None = None
        #: The host key blob the node presented (a certificate or a plain key).
        self.host_key: bytes | None = None
        self.userauth = userauth
        self.connection = connection
        self.lost: Deferred[None] = Deferred()

    def connectionSecure(self) -> None:
        self.requestService(self.userauth)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.connection.ready_failed(self._why_lost())
        self.lost.callback(None)

    def _why_lost(self) -> Exception:
        if self.host_key_failure is not None:
            value = self.host_key_failure.value
            return value if isinstance(value, Exception) else HostKeyRefused(value)
        auth = self.userauth
        if auth.sign_failure is not None:
            return LoginRefused(
                f"could not sign the login: {auth.sign_failure.getErrorMessage()}",
                auth.banners,
            )
        if auth.refused:
            said = "".join(f"\n{b.rstrip()}" for b in auth.banners)
            return LoginRefused(
                f"the node refused the user certificate "
                f"({auth.certificate.describe()}){said}",
                auth.banners,
            )
        return ConchError("the SSH connection closed before login finished")

    def verifyHostKey(self, pubKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        def checked(ok: bool) -> bool:
            self.host_key = pubKey
            if not is_plain_host_key(pubKey):
                self.host_certificate = parse_certificate(pubKey)
            return ok

        return self._check_host_key(pubKey, fingerprint).addCallback(checked)


class NodeConnection(FlowControlledConnection):
    """``ssh-connection`` to a node once logged in: open sessions on it.

    The node may open channels towards us only of a type registered in
    `channel_handlers` and only once we asked for them (`accept_channels`,
    which e.g. `teleconch.conch.agent_forwarding.request_agent_forwarding`
    calls after the node agreed); anything else is refused as an unknown
    channel type, as a client that never asked would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[NodeConnection] = Deferred()
        #: What makes our end of a channel the node opens, by channel type
        #: (e.g. ``auth-agent@openssh.com``: ``AgentRelay.channel_for``).
        self.channel_handlers: dict[bytes, ChannelFactory] = {}
        self._accepting: set[bytes] = set()

    def accept_channels(self, channel_type: bytes) -> None:
        """From now on the node may open ``channel_type`` channels (we asked)."""
        self._accepting.add(channel_type)

    def getChannel(
        self, channelType: bytes, windowSize: int, maxPacket: int, data: bytes
    ) -> SSHChannel:
        handler = self.channel_handlers.get(channelType)
        if handler is None or channelType not in self._accepting:
            self._log.info(
                "the node opened a {kind!r} channel we did not ask for: refused",
                kind=channelType[:64],
            )
            raise ConchError("unknown channel", OPEN_UNKNOWN_CHANNEL_TYPE)
        channel = handler(windowSize, maxPacket, data)
        channel.conn = self
        return channel

    def serviceStarted(self) -> None:
        super().serviceStarted()
        if not self.ready.called:
            self.ready.callback(self)

    def ready_failed(self, reason: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(reason)

    @property
    def node_transport(self) -> NodeClientTransport:
        assert isinstance(self.transport, NodeClientTransport)
        return self.transport

    async def open_session(self, **kwargs: Any) -> SessionChannel:
        """Open a session channel; keyword arguments go to `SessionChannel`."""
        channel = SessionChannel(conn=self, **kwargs)
        self.openChannel(channel)
        await channel.opened
        return channel

    async def run(self, command: str | bytes) -> CommandResult:
        """Run one command (no pty); its output and exit status."""
        session = await self.open_session()
        await session.exec(command)
        status = await session.exit
        return CommandResult(session.stdout(), session.stderr(), status)

    def close(self) -> None:
        """Disconnect from the node."""
        if self.transport is not None:
            self.transport.loseConnection()

    async def wait_closed(self) -> None:
        await self.node_transport.lost


async def _agent_certificate(agent: AgentClient, login: str) -> str:
    for identity in await agent.list_identities():
        try:
            cert = parse_certificate(identity.blob)
        except CertificateError:
            continue
        if cert.cert_type == "user" and login in cert.principals:
            return f"{cert.key_type} {base64.b64encode(cert.blob).decode()}"
    raise LoginRefused(f"the ssh-agent holds no user certificate for {login!r}")


async def connect_ssh(
    reactor: Any,
    endpoint: IStreamClientEndpoint | tuple[str, int],
    login: str,
    credentials: KeyCredentials | AgentCredentials | AgentClientCredentials,
    host_ca_keys: Sequence[str],
    host_name: str,
    login_timeout: float = 30,
    *,
    check_host_certificate: bool = True,
) -> NodeConnection:
    """Connect and log in to a node; the logged-in connection.

    Raises `HostKeyRefused` (the node's host certificate is missing, from
    another CA, or not for `host_name`), `LoginRefused` (our certificate was
    turned down, with the node's banners), or a connection error. With
    ``check_host_certificate=False`` a plain host key is accepted (the
    transport's ``host_certificate`` is then None: the caller warns), but a
    certificate, if presented, must still be valid.
    """
    if isinstance(endpoint, tuple):
        endpoint = HostnameEndpoint(reactor, *endpoint, timeout=int(login_timeout))
    connection = NodeConnection()
    agent: AgentClient | None = None  # ours to close
    userauth: _OneCertificateClient
    if isinstance(credentials, KeyCredentials):
        userauth = CertificateUserAuthClient(
            login, connection, credentials.private_key, credentials.certificate
        )
    elif isinstance(credentials, AgentClientCredentials):
        given = credentials.agent
        line = credentials.certificate or await _agent_certificate(given, login)
        userauth = AgentCertificateUserAuthClient(login, connection, given, line)
    else:
        agent = await connect_agent(reactor, credentials.socket_path)
        try:
            line = credentials.certificate or await _agent_certificate(agent, login)
            userauth = AgentCertificateUserAuthClient(login, connection, agent, line)
        except BaseException:
            agent.close()
            raise
    clock: IReactorTime = reactor
    transport = NodeClientTransport(
        userauth,
        connection,
        host_ca_keys,
        host_name,
        clock.seconds(),
        check_host_certificate,
    )
    try:
        await connectProtocol(endpoint, transport)
        return await connection.ready.addTimeout(login_timeout, clock)
    except BaseException:
        if transport.transport is not None:
            transport.transport.loseConnection()
        raise
    finally:
        if agent is not None:
            agent.close()
