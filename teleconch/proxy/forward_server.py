"""Recording proxy mode: the SSH server the proxy runs over a routed channel.

In ``session_recording: proxy`` the proxy does not splice the client's bytes
to the node: after the same routing, RBAC and audit as in node mode, the
channel (``direct-tcpip`` for ``ssh -J``, a ``proxy:`` subsystem for
``ssh -s``) carries an SSH connection the proxy terminates itself.  The node
side of the splice is a `ForwardingNodeTransport`: it runs our SSH server
(`teleconch.conch` pieces) over a `ChannelTransport`, presenting a host
certificate for the target, minted by the host CA for the proxy's own key
(`ForwardingHostCerts.for_target`), so the client's ``@cert-authority`` line
trusts it; the client logs in with its user certificate, checked exactly as
at the proxy's door (same policy: the cluster's user CA, validity, the
login as a principal).  `teleconch.proxy.forward_user` takes it from there.

`ModeNodeTransport` is the node side the router hands every splice: it reads
the cluster's settings (`ClusterSettingsCache.current`, at most 10 s old) as
the channel is connected and becomes the plain TCP splice or the recording
server, so new connections follow a mode change and open ones keep theirs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import connection
from twisted.conch.ssh.common import getNS
from twisted.cred.portal import Portal
from twisted.internet import error as ierror
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleconch.auth import protocol as api
from teleconch.conch.channel_transport import ChannelTransport
from teleconch.conch.server import (
    SecureConnection,
    SecureServerTransport,
    SecureSSHFactory,
)
from teleconch.conch.userauth_server import (
    CertificateChecker,
    CertificatePolicy,
    CertificateUserAuthServer,
)
from teleconch.proxy.node import NodeEvents, NodeTransport
from teleconch.proxy.recorder import Recorders
from teleconch.proxy.routing import Route, Router, RoutingError, Target
from teleconch.proxy.sessions import Sessions
from teleconch.proxy.settings import ClusterSettingsCache

log = Logger()

#: Seconds to reach a node and log in through the client's agent.
LOGIN_TIMEOUT = 20.0


class HostCertSource(Protocol):
    """Host certificates for targets (`teleconch.proxy.forward_certs.ForwardingHostCerts`)."""

    async def for_target(self, node_name: str) -> str: ...


@attrs.define
class Forwarding:
    """What the recording proxy needs, shared by every forwarded connection."""

    reactor: Any
    clock: IReactorTime  # certificate validity and session times
    agent: Any  # the AuthAgent: cluster_cas, emit_event, live sessions
    router: Router
    policy: CertificatePolicy
    host_key: ed25519.Ed25519PrivateKey
    host_certs: HostCertSource
    settings: ClusterSettingsCache
    sessions: Sessions
    proxy_name: str
    recorders: Recorders | None = None
    connect: Callable[..., Awaitable[Any]] | None = None  # connect_ssh; tests swap it
    login_timeout: float = LOGIN_TIMEOUT
    _userauth: type[CertificateUserAuthServer] | None = None

    def node_side(self, route: Route, plain: NodeTransport) -> NodeTransport:
        """The node side of ``route``: ``plain`` or the recording server, by mode."""
        return ModeNodeTransport(self, route, plain)

    @property
    def userauth(self) -> type[CertificateUserAuthServer]:
        if self._userauth is None:

            class UserAuth(CertificateUserAuthServer):
                """Certificate validity read from the proxy's clock."""

            UserAuth.clock = self.clock
            self._userauth = UserAuth
        return self._userauth


class ModeNodeTransport:
    """A `NodeTransport` that becomes the plain one or the recording server at connect."""

    def __init__(self, forwarding: Forwarding, route: Route, plain: NodeTransport):
        self._forwarding = forwarding
        self._route = route
        self._chosen: NodeTransport = plain

    def connect(self, target: Target, events: NodeEvents) -> Deferred[None]:
        return Deferred.fromCoroutine(self._connect(target, events))

    async def _connect(self, target: Target, events: NodeEvents) -> None:
        settings = await self._forwarding.settings.current()
        if settings.session_recording == "proxy":
            self._chosen = ForwardingNodeTransport(
                self._forwarding, self._route, settings
            )
        await self._chosen.connect(target, events)

    def write(self, data: bytes) -> None:
        self._chosen.write(data)

    def write_eof(self) -> None:
        self._chosen.write_eof()

    def pauseProducing(self) -> None:
        self._chosen.pauseProducing()

    def resumeProducing(self) -> None:
        self._chosen.resumeProducing()

    def close(self) -> None:
        self._chosen.close()

    def abort(self) -> None:
        self._chosen.abort()

    @property
    def peer(self) -> str:
        return self._chosen.peer


class ForwardingNodeTransport:
    """The node side of a splice in proxy mode: our SSH server over the channel."""

    def __init__(
        self, forwarding: Forwarding, route: Route, settings: api.ClusterSettings
    ) -> None:
        self._forwarding = forwarding
        self._route = route
        self.settings = settings
        self._events: NodeEvents | None = None
        self.channel_transport: ChannelTransport | None = None
        self._reported = False

    def connect(self, target: Target, events: NodeEvents) -> Deferred[None]:
        return Deferred.fromCoroutine(self._connect(target, events))

    async def _connect(self, target: Target, events: NodeEvents) -> None:
        if target.node is None:
            raise RoutingError(
                f"{target.name} is not a registered node: recording proxy mode "
                "reaches registered nodes only",
                "unregistered node in proxy mode",
            )
        cert = await self._forwarding.host_certs.for_target(target.node.name)
        factory = InnerFactory(self._forwarding, self._route, self.settings, cert)
        protocol = factory.buildProtocol(None)
        client = IPv4Address("TCP", self._route.client_address or "0.0.0.0", 0)
        self._events = events
        self.channel_transport = ChannelTransport(
            self._forwarding.reactor,
            send=events.node_data,
            done=self._inner_done,
            peer=client,
            host=IPv4Address("TCP", target.host, target.port),
        )
        # Once the splice is open (it drops node bytes before): our version line.
        self._forwarding.reactor.callLater(0, self.channel_transport.attach, protocol)

    def _inner_done(self) -> None:
        """Our SSH server closed the inner connection: the channel ends."""
        self._report_lost()

    def _report_lost(self) -> None:
        if self._reported or self._events is None:
            return
        self._reported = True
        events = self._events
        why = Failure(ierror.ConnectionDone("the recording proxy's SSH session ended"))
        self._forwarding.reactor.callLater(0, events.node_lost, why)

    def _ct(self) -> ChannelTransport:
        assert self.channel_transport is not None, "not connected"
        return self.channel_transport

    def write(self, data: bytes) -> None:
        self._ct().received(data)

    def write_eof(self) -> None:
        self._ct().received_eof()

    def pauseProducing(self) -> None:
        self._ct().outer_full()

    def resumeProducing(self) -> None:
        self._ct().outer_drained()

    def close(self) -> None:
        if self.channel_transport is not None:
            self.channel_transport.outer_lost()
        self._report_lost()

    abort = close

    @property
    def peer(self) -> str:
        return f"the recording proxy's SSH server for {self._route.target.name}"


class InnerConnection(SecureConnection):
    """``ssh-connection`` of the inner server: requests may be answered later.

    Each channel learns whether the request it is handling wants a reply
    (relays pass that on); a global request's answer may be a Deferred (the
    node answers ``tcpip-forward``), and the answers go out in order.
    """

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self._global_tail: Deferred[None] = succeed(None)

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> Deferred[Any]:
        try:
            local_channel = int.from_bytes(packet[:4], "big")
            name_len = int.from_bytes(packet[4:8], "big")
            want = packet[8 + name_len]
            channel = self.channels.get(local_channel)
        except IndexError:
            channel, want = None, 0
        if channel is not None and hasattr(channel, "want_reply"):
            channel.want_reply = bool(want)
        return super().ssh_CHANNEL_REQUEST(packet)

    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:
        request_type, rest = getNS(packet)
        want = bool(rest[0])
        try:
            result = self.gotGlobalRequest(request_type, rest[1:])
        except Exception:
            log.failure("global request {r!r} failed", r=request_type)
            result = False
        answer: Deferred[Any] = (
            result if isinstance(result, Deferred) else succeed(result)
        )
        before, tail = self._global_tail, Deferred[None]()
        self._global_tail = tail

        def send(outcome: Any) -> None:
            tail.callback(None)
            if not want or self.transport is None:
                return
            if isinstance(outcome, Failure) or not outcome:
                self.transport.sendPacket(connection.MSG_REQUEST_FAILURE, b"")
            else:
                data = outcome[1] if isinstance(outcome, tuple | list) else b""
                self.transport.sendPacket(connection.MSG_REQUEST_SUCCESS, data)

        before.addCallback(lambda _: answer.addBoth(send))


class InnerTransport(SecureServerTransport):
    """The inner server's transport (no startup limits: the outer door had them)."""


class InnerFactory(SecureSSHFactory):
    """One inner connection's factory: the target's host certificate, its route."""

    protocol = InnerTransport
    primes = None  # fixed-group and elliptic-curve key exchanges only

    def __init__(
        self,
        forwarding: Forwarding,
        route: Route,
        settings: api.ClusterSettings,
        host_certificate: str,
    ) -> None:
        from teleconch.proxy.forward_user import ForwardingRealm

        realm = ForwardingRealm(forwarding, route, settings)
        super().__init__(
            Portal(realm, [CertificateChecker()]),
            forwarding.policy,
            forwarding.host_key,
            host_certificate,
        )
        self.services = {
            b"ssh-userauth": forwarding.userauth,
            b"ssh-connection": InnerConnection,
        }
