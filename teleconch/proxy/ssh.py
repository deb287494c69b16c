"""The proxy's SSH server: certificate logins, routed and spliced channels.

People arrive with a certificate from ``teleconch login`` and ask for a node
in one of two ways: a ``direct-tcpip`` channel (``ssh -J``) or the subsystem
``proxy:HOST:PORT[@CLUSTER]`` (``ProxyCommand ssh -s``).  Either way the
``Router`` resolves the node and checks the roles, and a ``SplicingChannel``
moves the bytes with flow control; the SSH session with the node itself stays
end to end between the client and the node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, connection
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from teleconch.algorithms import SSHAlgorithms
from teleconch.auth.agent import AuthAgent
from teleconch.conch.certs import Certificate
from teleconch.conch.limits import (
    AdmissionMixin,
    ChannelLimitMixin,
    SSHLimits,
    StartupLimiter,
)
from teleconch.conch.server import (
    SecureConnection,
    SecureServerTransport,
    SecureSSHFactory,
)
from teleconch.conch.userauth_server import (
    CertificateChecker,
    CertificateUserAuthServer,
)
from teleconch.proxy import join_subsystem
from teleconch.proxy.joining import Joining
from teleconch.proxy.recordings_subsystem import RECORDINGS_SUBSYSTEM, serve_recordings
from teleconch.proxy.routing import Cache, Grant, OnClose, Router, RoutingError, emit
from teleconch.proxy.splice import SplicingChannel

log = Logger()

NODES_SUBSYSTEM = b"teleconch-nodes"
_PROXY_SUBSYSTEM = re.compile(
    r"proxy:(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d+)(?:@(?P<cluster>.+))?"
)


@attrs.frozen
class Session:
    """Who is connected, from their verified certificate."""

    login: str
    certificate: Certificate
    client_address: str

    @property
    def grant(self) -> Grant:
        return Grant.from_extensions(
            self.certificate.key_id, self.certificate.extensions
        )


class ProxyPolicy:
    """What the certificate userauth asks of us: trusted CAs and auditing."""

    def __init__(
        self, agent: AuthAgent, clock: Any, web_addr: Callable[[], str]
    ) -> None:
        self._agent = agent
        self._cache = Cache(clock)
        self._web_addr = web_addr

    @property
    def refusal_message(self) -> str:
        return (
            "teleconch: this proxy accepts only certificates from `teleconch login`.\n"
            f"Run: teleconch login --proxy {self._web_addr()} --user NAME"
        )

    async def trusted_user_cas(self) -> list[str]:
        cas: list[str] | None = self._cache.get("user_cas")
        if cas is None:
            cas = list((await self._agent.cluster_cas()).user_ca_keys)
            self._cache.put("user_cas", cas)
        return cas

    def on_refused(
        self,
        username: str,
        reason: str,
        client_address: str | None,
        login: str | None = None,
    ) -> None:
        emit(
            self._agent,
            "proxy.auth",
            username,
            False,
            login=login or username,
            reason=reason,
            client_addr=client_address,
        )


class ProxyAvatar(ConchUser):
    """A connected user: their session channels and direct-tcpip requests."""

    def __init__(
        self, session: Session, router: Router, joining: Joining | None = None
    ) -> None:
        super().__init__()
        self.session = session
        self.router = router
        #: Joining live sessions (`teleconch join`); None: not on this proxy.
        self.joining = joining
        self.channelLookup[b"session"] = self._session_channel
        self.channelLookup[b"direct-tcpip"] = self._direct_tcpip

    @property
    def grant(self) -> Grant:
        return self.session.grant

    @property
    def client_address(self) -> str:
        return self.session.client_address

    def _session_channel(self, **kw: Any) -> ProxySessionChannel:
        kw["avatar"] = self
        return ProxySessionChannel(**kw)

    def _direct_tcpip(
        self, remoteWindow: int, remoteMaxPacket: int, data: bytes, avatar: Any
    ) -> SplicingChannel:
        host_b, rest = common.getNS(data)
        port = int.from_bytes(rest[:4], "big")
        host = host_b.decode("utf-8", "replace")
        audit: list[OnClose] = []

        def on_close(
            bytes_up: int, bytes_down: int, reason: str, reached: bool
        ) -> None:
            for record in audit:
                record(bytes_up, bytes_down, reason, reached)

        channel = SplicingChannel(
            on_close=on_close,
            remoteWindow=remoteWindow, remoteMaxPacket=remoteMaxPacket, data=data, avatar=avatar,
        )  # fmt: skip

        async def route() -> None:
            session = self.session
            try:
                routed = await self.router.route(
                    session.grant, session.client_address, host, port, None,
                    "direct-tcpip", proxy_login=session.login,
                )  # fmt: skip
            except RoutingError as e:
                channel.abort(str(e), connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
                return
            except Exception:
                log.failure("routing {host}", host=host)
                channel.abort("the proxy could not route the request; try again")
                return
            audit.append(self.router.audit_close(routed))
            await self.router.connect(channel, routed)

        Deferred.fromCoroutine(route())
        return channel


class ProxySessionChannel(SplicingChannel):
    """``ssh proxy``: a subsystem routes to a node; anything else explains itself."""

    name = b"session"

    def __init__(self, *, avatar: ProxyAvatar, **kw: Any) -> None:
        self._avatar = avatar
        self._audit: OnClose | None = None  # set once the node connect starts
        self._requested = False  # a subsystem, shell or exec was accepted
        super().__init__(
            on_close=self._closed, confirm_after_connect=False, avatar=avatar, **kw
        )

    def _closed(
        self, bytes_up: int, bytes_down: int, reason: str, reached: bool
    ) -> None:
        if self._audit is not None:
            self._audit(bytes_up, bytes_down, reason, reached)

    def _first_request(self) -> bool:
        """Whether this is the channel's one subsystem, shell or exec (as in
        OpenSSH, any later one is refused)."""
        first, self._requested = not self._requested, True
        return first

    def request_subsystem(self, data: bytes) -> Deferred[bool] | bool:
        if not self._first_request():
            return False
        name = common.getNS(data)[0].decode("utf-8", "replace")
        if join_subsystem.handles(name):  # teleconch join / teleconch sessions ls
            return Deferred.fromCoroutine(
                join_subsystem.serve(self, name, self._avatar, self._refuse, self._exit)
            )
        if name == NODES_SUBSYSTEM.decode():
            Deferred.fromCoroutine(self._list_nodes())
            return True
        if name == RECORDINGS_SUBSYSTEM:
            return serve_recordings(
                self, self._avatar.session.certificate.key_id, self._avatar.router
            )
        # A refusal accepts the request, then explains on stderr and exits 1 (as
        # Teleport does): OpenSSH drops a channel's stderr once a request fails.
        m = _PROXY_SUBSYSTEM.fullmatch(name)
        router = self._avatar.router
        if not name.startswith("proxy:"):
            self._refuse(f"teleconch: unknown subsystem {name!r}\n")
            return True
        if m is None or (m["cluster"] and m["cluster"] != router.cluster_name):
            message = (
                f'invalid format for proxy request: "{name}", expected '
                f'"proxy:host:port@{router.cluster_name}"'
            )
            if m is None:
                host, port, reason = name, 0, "invalid proxy request"
            else:
                host, port, reason = m["host"], int(m["port"]), "another cluster"
            session = self._avatar.session
            router.refused(
                session.grant, session.client_address, host, port, session.login,
                "subsystem", RoutingError(message, reason),
            )  # fmt: skip
            self._refuse(f"teleconch: {message}\n")
            return True
        return Deferred.fromCoroutine(
            self._route(m["host"].strip("[]"), int(m["port"]))
        )

    async def _route(self, host: str, port: int) -> bool:
        session = self._avatar.session
        router = self._avatar.router
        try:
            routed = await router.route(
                session.grant, session.client_address, host, port, session.login,
                "subsystem",
            )  # fmt: skip
        except RoutingError as e:
            self._refuse(f"teleconch: {e}\n")
            return True
        except Exception:
            log.failure("routing {host}", host=host)
            self._refuse(
                "teleconch: the proxy could not route the request; try again\n"
            )
            return True
        self._audit = router.audit_close(routed)
        Deferred.fromCoroutine(router.connect(self, routed))
        return True

    async def _list_nodes(self) -> None:
        try:
            nodes = await self._avatar.router.reachable(self._avatar.session.grant)
            self.write(json.dumps(nodes).encode() + b"\n")
            self._exit(0)
        except Exception:
            log.failure("listing nodes")
            self._explain("teleconch: the proxy could not list the nodes; try again\n")

    def _refuse(self, message: str) -> None:
        """Explain once the request's success reply has gone out."""
        self._avatar.router.reactor.callLater(0, self._explain, message)

    def _explain(self, message: str) -> None:
        self.writeExtended(connection.EXTENDED_DATA_STDERR, message.encode())
        self._exit(1)

    def _exit(self, status: int) -> None:
        assert self.conn is not None
        self.conn.sendRequest(self, b"exit-status", status.to_bytes(4, "big"))
        self.send_eof()  # after whatever is queued, never before
        self.loseConnection()

    def request_pty_req(self, data: bytes) -> bool:
        return True

    def request_env(self, data: bytes) -> bool:
        return False

    def request_shell(self, data: bytes) -> bool:
        if not self._first_request():
            return False
        self._usage()
        return True

    def request_exec(self, data: bytes) -> bool:
        if not self._first_request():
            return False
        self._usage()
        return True

    def _usage(self) -> None:
        cluster = self._avatar.router.cluster_name
        login = self._avatar.session.login
        self._explain(
            f"teleconch: this is the SSH proxy of cluster {cluster}; it does not run "
            "commands itself. Reach a node through it:\n"
            f"  ssh -J {login}@<this proxy> {login}@NODE.{cluster}\n"
            f"  teleconch ssh {login}@NODE\n"
            "  teleconch ls            (the nodes you can reach)\n"
        )


@implementer(IRealm)
class ProxyRealm:
    """Turns a verified certificate login into a ProxyAvatar."""

    def __init__(self, router: Router, joining: Joining | None = None) -> None:
        self.router = router
        self.joining = joining

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: Any, *interfaces: Any
    ) -> Any:
        if IConchUser not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("only SSH avatars")
        session = Session(
            login=avatarId.decode(),
            certificate=mind.certificate,
            client_address=mind.client_address or "",
        )
        avatar = ProxyAvatar(session, self.router, self.joining)
        return IConchUser, avatar, lambda: None


class ProxyServerTransport(AdmissionMixin, SecureServerTransport):
    """The finished server transport, with the startup limits first."""


class ProxyConnection(ChannelLimitMixin, SecureConnection):
    """The finished connection, at most so many channels per connection."""


class ProxySSHFactory(SecureSSHFactory):
    protocol = ProxyServerTransport
    services = {
        b"ssh-userauth": CertificateUserAuthServer,
        b"ssh-connection": ProxyConnection,
    }

    def __init__(
        self,
        portal: Portal,
        policy: Any,
        host_key: Any,
        host_certificate: str | None,
        clock: IReactorTime,
        limits: SSHLimits,
        algorithms: SSHAlgorithms | None = None,
    ) -> None:
        super().__init__(portal, policy, host_key, host_certificate)
        self.clock = clock
        self.limits = limits
        self.startups = StartupLimiter(limits, clock)
        self.algorithms = algorithms or SSHAlgorithms()

    def buildProtocol(self, addr: Any) -> Any:
        """Conch's transport, offering the operator's algorithms (config)."""
        transport = super().buildProtocol(addr)
        if transport is not None:
            self.algorithms.apply(transport)
        return transport


def make_factory(
    router: Router,
    policy: ProxyPolicy,
    host_key: Any,
    host_certificate: str | None,
    clock: IReactorTime,
    limits: SSHLimits | None = None,
    joining: Joining | None = None,
    algorithms: SSHAlgorithms | None = None,
) -> ProxySSHFactory:
    class UserAuth(CertificateUserAuthServer):
        """Certificate validity read from the given clock."""

    UserAuth.clock = clock
    portal = Portal(ProxyRealm(router, joining), [CertificateChecker()])
    factory = ProxySSHFactory(
        portal,
        policy,
        host_key,
        host_certificate,
        clock,
        limits or SSHLimits(),
        algorithms,
    )
    factory.services = {**factory.services, b"ssh-userauth": UserAuth}
    return factory
