"""Recording proxy mode: the logged-in client, and the proxy's login to the node as it.

`ForwardingRealm` turns the inner login (a certificate checked as at the
proxy's door) into a `ForwardedUser`.  Its `Upstream` is the proxy's own SSH
connection to the node: dialled when the client's first session channel asks
for agent forwarding (``auth-agent-req@openssh.com``, ``ssh -A``), through an
``auth-agent@openssh.com`` channel opened back to the client (`open_agent`),
logging in as the login the client asked for with the certificate in its
agent.  The node must present a host certificate from the host CA unless the
cluster says ``proxy_checks_host_keys: no`` (then a plain key is accepted
with a warning in the log, per connection).  The login is checked against
the roles first (the same `Router.route`), as at the door.

Channels: sessions are `teleconch.proxy.forward_session.ClientSessionChannel`;
``direct-tcpip`` (``ssh -L``) becomes a ``direct-tcpip`` channel to the node;
``tcpip-forward`` / ``cancel-tcpip-forward`` (``ssh -R``) go to the node, whose
``forwarded-tcpip`` channels come back; the node's agent channels (the
client's ``-A`` passed on) are relayed to new agent channels to the client.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ConchError
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection
from twisted.cred.portal import IRealm
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as LoginTimedOut
from twisted.logger import Logger
from zope.interface import implementer

from teleconch.auth import protocol as api
from teleconch.conch.agent import AgentError
from teleconch.conch.agent_forwarding import AGENT_CHANNEL, open_agent
from teleconch.conch.client import (
    AgentClientCredentials,
    LoginRefused,
    NodeConnection,
    connect_ssh,
)
from teleconch.conch.flow import DEFAULT_WINDOW
from teleconch.conch.hostcert import HostKeyRefused
from teleconch.proxy.forward_relay import RelayChannel, open_twin
from teleconch.proxy.forward_server import Forwarding
from teleconch.proxy.routing import Grant, Route, RoutingError

log = Logger()

#: What a client without ``-A`` sees on its session's stderr (Teleport's words).
AGENT_REQUIRED = (
    "agent forwarding required in proxy recording mode: use ssh -A or ForwardAgent yes"
)
_AGENT_WINDOW = 64 * 1024


class UpstreamFailed(Exception):
    """The node could not be reached as the user: ``str()`` for the person."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class Login:
    """Who logged in to the inner server, from their verified certificate."""

    login: str
    grant: Grant
    client_address: str


def _text(e: BaseException) -> str:
    value = getattr(e, "value", None) if isinstance(e, ConchError) else None
    return value if isinstance(value, str) else (str(e) or type(e).__name__)


class Upstream:
    """The proxy's SSH connection to the node, as the user, through their agent."""

    def __init__(
        self,
        forwarding: Forwarding,
        route: Route,
        settings: api.ClusterSettings,
        login: Login,
    ) -> None:
        self._f = forwarding
        self.route = route
        self.settings = settings
        self.login = login
        self._result: NodeConnection | UpstreamFailed | None = None
        self._waiters: list[Deferred[NodeConnection]] = []
        self.started = False
        self._closed = False
        self.node: NodeConnection | None = None

    def start(self, client_conn: connection.SSHConnection) -> None:
        """Dial the node (once), asking the client's agent over ``client_conn``."""
        if self.started:
            return
        self.started = True
        Deferred.fromCoroutine(self._dial(client_conn)).addBoth(self._settle)

    def refuse(self, failure: UpstreamFailed) -> None:
        """No dial will come (no agent): whoever waits gets ``failure``."""
        if not self.started:
            self.started = True
            self._audit_failure(failure)
            self._settle(failure)

    def wait(self) -> Deferred[NodeConnection]:
        """The logged-in connection; fails with `UpstreamFailed`."""
        d: Deferred[NodeConnection] = Deferred()
        if isinstance(self._result, NodeConnection):
            d.callback(self._result)
        elif self._result is not None:
            d.errback(self._result)
        else:
            self._waiters.append(d)
        return d

    def close(self) -> None:
        self._closed = True
        if self.node is not None:
            self.node.close()

    def _settle(self, result: Any) -> None:
        if isinstance(result, NodeConnection | UpstreamFailed):
            self._result = result
        else:  # a Failure
            value = getattr(result, "value", result)
            self._result = (
                value
                if isinstance(value, UpstreamFailed)
                else UpstreamFailed(
                    "teleconch: the proxy could not reach the node; try again",
                    f"upstream failed: {_text(value)}",
                )
            )
            if not isinstance(value, UpstreamFailed):
                log.failure("dialling the node", result)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(self._result, NodeConnection):
                d.callback(self._result)
            else:
                d.errback(self._result)

    def _audit_failure(self, failure: UpstreamFailed) -> None:
        r, login = self.route, self.login
        self._f.router.refused(
            login.grant, login.client_address, r.target.name, r.target.port,
            login.login, r.how, RoutingError(str(failure), failure.reason),
        )  # fmt: skip

    async def _dial(self, client_conn: connection.SSHConnection) -> NodeConnection:
        target, login = self.route.target, self.login
        name = target.node.name if target.node else target.host
        try:
            # The login the client asked the inner server for, checked by the roles.
            await self._f.router.route(
                login.grant, login.client_address, name, target.port, login.login,
                self.route.how,
            )  # fmt: skip
        except RoutingError as e:
            raise UpstreamFailed(f"teleconch: {e}", e.reason) from e  # audited there
        try:
            node = await self._login(client_conn)
        except UpstreamFailed as e:
            self._audit_failure(e)
            raise
        if self._closed:
            node.close()
            raise UpstreamFailed("the client left", "client left before the node")
        self.node = node
        node.channel_handlers[b"forwarded-tcpip"] = self._node_channel(
            b"forwarded-tcpip", client_conn
        )
        node.channel_handlers[AGENT_CHANNEL] = self._node_channel(
            AGENT_CHANNEL, client_conn, _AGENT_WINDOW
        )
        return node

    async def _login(self, client_conn: connection.SSHConnection) -> NodeConnection:
        target, login = self.route.target, self.login
        host_name = target.node.name if target.node else target.host
        try:
            agent = await open_agent(client_conn)
        except AgentError as e:
            raise UpstreamFailed(f"teleconch: {AGENT_REQUIRED} ({e})", str(e)) from e
        connect = self._f.connect or connect_ssh
        checks = self.settings.proxy_checks_host_keys
        try:
            host_cas = (await self._f.agent.cluster_cas()).host_ca_keys
            node: NodeConnection = await connect(
                self._f.reactor, (target.host, target.port), login.login,
                AgentClientCredentials(agent), host_ca_keys=host_cas,
                host_name=host_name, login_timeout=self._f.login_timeout,
                check_host_certificate=checks,
            )  # fmt: skip
        except HostKeyRefused as e:
            raise UpstreamFailed(
                f"teleconch: {_text(e)}. An administrator can give the node a host "
                f"certificate with `teleconch-ctl auth sign --host {host_name}`",
                "host certificate refused",
            ) from e
        except LoginRefused as e:
            raise UpstreamFailed(
                f"teleconch: {target.name} refused the login {login.login!r}: {_text(e)}",
                "login refused",
            ) from e
        except (
            ConchError, OSError, AgentError, ierror.ConnectError,
            ierror.TimeoutError, LoginTimedOut,
        ) as e:  # fmt: skip
            raise UpstreamFailed(
                f"teleconch: could not reach {target.name} at {target.host}:"
                f"{target.port} ({_text(e)}); try again, or ask an administrator "
                "whether the node is up",
                f"connect failed: {_text(e)}",
            ) from e
        finally:
            agent.close()
        if not checks and node.node_transport.host_certificate is None:
            log.warn(
                "{node} presented a plain host key, accepted because "
                "proxy_checks_host_keys is off (connection of {user} as {login})",
                node=target.name,
                user=login.grant.user,
                login=login.login,
            )
        return node

    def _node_channel(
        self, kind: bytes, client_conn: connection.SSHConnection, window: int = 0
    ) -> Any:
        """A node-opened channel: confirmed once its twin to the client is open."""

        def make(remote_window: int, remote_max_packet: int, data: bytes) -> Any:
            ours = RelayChannel(
                name=kind, window=window or DEFAULT_WINDOW,
                remoteWindow=remote_window, remoteMaxPacket=remote_max_packet,
            )  # fmt: skip
            twin = RelayChannel(name=kind, window=window or DEFAULT_WINDOW)
            ours.gate = open_twin(ours, client_conn, twin, data)
            return ours

        return make


class ForwardedUser(ConchUser):
    """The client on the inner server: its channels and global requests."""

    def __init__(self, forwarding: Forwarding, login: Login, upstream: Upstream):
        super().__init__()
        from teleconch.proxy.forward_session import ClientSessionChannel

        self.forwarding = forwarding
        self.login = login
        self.upstream = upstream
        self.session_channels = 0

        def session(**kw: Any) -> ClientSessionChannel:
            return ClientSessionChannel(user=self, **kw)

        self.channelLookup[b"session"] = session
        self.channelLookup[b"direct-tcpip"] = self._direct_tcpip

    def _direct_tcpip(
        self, remoteWindow: int, remoteMaxPacket: int, data: bytes, avatar: Any
    ) -> RelayChannel:
        """``ssh -L``: a ``direct-tcpip`` channel to the node (which dials)."""
        ours = RelayChannel(
            name=b"direct-tcpip",
            remoteWindow=remoteWindow,
            remoteMaxPacket=remoteMaxPacket,
        )
        if not self.upstream.started:
            self.upstream.refuse(UpstreamFailed(AGENT_REQUIRED, "no agent forwarded"))
        ours.gate = self.upstream.wait().addCallback(
            lambda node: open_twin(ours, node, RelayChannel(name=b"direct-tcpip"), data)
        )
        ours.gate.addErrback(self._refused_open)
        return ours

    @staticmethod
    def _refused_open(f: Any) -> None:
        if f.check(UpstreamFailed):
            raise ConchError(str(f.value), connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        f.raiseException()

    def _global(self, name: bytes, data: bytes) -> Deferred[Any]:
        async def ask() -> Any:
            node = await self.upstream.wait()
            reply = await node.sendGlobalRequest(name, data, wantReply=True)
            node.accept_channels(b"forwarded-tcpip")
            return (True, reply)

        d = Deferred.fromCoroutine(ask())
        return d.addErrback(lambda f: False)

    def global_tcpip_forward(self, data: bytes) -> Deferred[Any]:
        """``ssh -R``: the node listens; its connections come back as channels."""
        return self._global(b"tcpip-forward", data)

    def global_cancel_tcpip_forward(self, data: bytes) -> Deferred[Any]:
        return self._global(b"cancel-tcpip-forward", data)

    def logout(self) -> None:
        self.upstream.close()


@implementer(IRealm)
class ForwardingRealm:
    """The inner login (a verified certificate) -> a `ForwardedUser`."""

    def __init__(
        self, forwarding: Forwarding, route: Route, settings: api.ClusterSettings
    ) -> None:
        self._forwarding = forwarding
        self._route = route
        self._settings = settings

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: Any, *interfaces: Any
    ) -> Any:
        if IConchUser not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("only SSH avatars")
        cert = mind.certificate
        login = Login(
            login=avatarId.decode(),
            grant=Grant.from_extensions(cert.key_id, cert.extensions),
            client_address=self._route.client_address,
        )
        upstream = Upstream(self._forwarding, self._route, self._settings, login)
        user = ForwardedUser(self._forwarding, login, upstream)
        return IConchUser, user, user.logout
