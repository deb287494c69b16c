"""AuthAgent: the one client of the Auth API, used by every other service.

It keeps an AMP connection over mutual TLS to the auth service, reconnecting
with backoff, and turns each API command into an ``async`` method.  ``join``
is the one call made without an identity: a proxy or node trades a token for
its identity there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.auth import protocol as api
from teleconch.auth.attest import Attested
from teleconch.auth.types import (
    ActiveSession,
    AuditEvent,
    Node,
    Role,
    RoleSpec,
    TokenEntry,
    UserEntry,
)
from teleconch.config import HostPort
from teleconch.pki import (
    ROLE_AUTH,
    TLSIdentity,
    peer_identity,
)

log = Logger()

CALL_TIMEOUT = 30.0
EMPTY = api.Empty()


class AuthUnavailable(Exception):
    """The auth service cannot be reached; the message says where we tried."""


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """Dial each auth server in turn until one answers."""

    def __init__(self, endpoints: Sequence[IStreamClientEndpoint]) -> None:
        self._endpoints = list(endpoints)

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        last: Exception | None = None
        for endpoint in self._endpoints:
            try:
                proto: IProtocol = await endpoint.connect(factory)
                return proto
            except Exception as e:
                last = e
        raise last or ConnectError("no auth server to dial")

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(factory))


def tls_endpoint(
    reactor: Any, addr: HostPort, options: IOpenSSLClientConnectionCreator
) -> IStreamClientEndpoint:
    return wrapClientTLS(
        options, HostnameEndpoint(reactor, addr.host, addr.port, timeout=10)
    )


class NotAnAuthServer(Exception):
    """The peer's certificate is from the cluster's CA but not an auth server's."""


@implementer(IHandshakeListener)
class AuthClientProtocol(amp.AMP):
    """An AMP client that sends nothing until the peer is shown to be an auth server.

    TLS verification proves the peer is of this cluster and names itself
    teleconch-auth; only the role in its certificate proves it is the auth
    service rather than a proxy or node that joined under that name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.verified: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        found = peer_identity(self.transport.getPeerCertificate())  # type: ignore[attr-defined]
        if found is not None and found[0] == ROLE_AUTH:
            self.verified.callback(None)
            return
        role = found[0] if found else "none"
        log.error(
            "refusing {peer}: its certificate is for role {role}, not auth; is "
            "auth_servers pointing at the auth service?",
            peer=str(self.transport.getPeer()),
            role=role,
        )
        self.verified.errback(
            NotAnAuthServer(
                f"the server's certificate is for a {role} of the cluster, not the "
                "auth service"
            )
        )
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.verified.called:
            self.verified.errback(reason)
        self.verified.addErrback(lambda _: None)
        super().connectionLost(reason)


Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def call_command(
    reactor: IReactorTime,
    proto: amp.AMP,
    command: type[api.AuthCommand[Req, Resp]],
    request: Req,
) -> Resp:
    """One command on one connection: the request encoded, the response decoded."""
    d = proto.callRemote(command, **command.objects(request))
    d.addTimeout(CALL_TIMEOUT, reactor)
    result: dict[str, Any] = await d
    return command.decode_response(result)


class AuthAgent(MultiService):
    """The Auth API as async methods, over one kept-up connection."""

    def __init__(
        self,
        reactor: Any,
        auth_servers: Sequence[HostPort],
        identity: TLSIdentity,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.identity = identity
        self.auth_servers = tuple(auth_servers)
        options = identity.client_options()
        endpoint = FailoverEndpoint(
            [tls_endpoint(reactor, a, options) for a in auth_servers]
        )
        self._client = ClientService(
            endpoint,
            Factory.forProtocol(AuthClientProtocol),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=15.0),
            clock=reactor,
        )
        self._client.setServiceParent(self)

    async def call(
        self, command: type[api.AuthCommand[Req, Resp]], request: Req
    ) -> Resp:
        """Send one command; raise AuthUnavailable if no auth server answers."""
        where = ", ".join(str(a) for a in self.auth_servers)
        try:
            proto = await self._client.whenConnected(failAfterFailures=3)
            assert isinstance(proto, AuthClientProtocol)
            await proto.verified
        except NotAnAuthServer as e:
            raise AuthUnavailable(f"refusing {where}: {e}") from None
        except Exception as e:
            raise AuthUnavailable(
                f"cannot reach the auth service at {where}: {e}; is it running, and "
                "is this identity issued by its cluster?"
            ) from None
        return await call_command(self._reactor, proto, command, request)

    # --- the API, one thin typed method per command ----------------------

    async def ping(self) -> api.ClusterInfo:
        return await self.call(api.Ping, EMPTY)

    async def cluster_cas(self) -> api.ClusterCAs:
        return await self.call(api.GetClusterCAs, EMPTY)

    async def heartbeat(self, public_addr: str, ssh_addr: str) -> None:
        await self.call(api.Heartbeat, api.ProxyAddresses(public_addr, ssh_addr))

    async def create_user(
        self, name: str, logins: Sequence[str], roles: Sequence[str]
    ) -> api.Invite:
        return await self.call(
            api.CreateUser, api.NewUser(name, tuple(logins), tuple(roles))
        )

    async def reset_user(self, name: str) -> api.Invite:
        return await self.call(api.ResetUser, api.Name(name))

    async def unlock_user(self, name: str) -> bool:
        """True if the user was locked out."""
        return (await self.call(api.UnlockUser, api.Name(name))).was_locked

    async def list_users(self) -> tuple[UserEntry, ...]:
        return (await self.call(api.ListUsers, EMPTY)).users

    async def delete_user(self, name: str) -> None:
        await self.call(api.DeleteUser, api.Name(name))

    async def upsert_role(self, role: RoleSpec) -> None:
        await self.call(api.UpsertRole, api.RoleDefinition(role))

    async def list_roles(self) -> tuple[Role, ...]:
        return (await self.call(api.ListRoles, EMPTY)).roles

    async def delete_role(self, name: str) -> None:
        await self.call(api.DeleteRole, api.Name(name))

    async def get_roles(self, names: Sequence[str]) -> tuple[Role, ...]:
        return (await self.call(api.GetRoles, api.RoleNames(tuple(names)))).roles

    async def create_token(self, kind: str, ttl: int) -> api.JoinToken:
        return await self.call(api.CreateToken, api.NewToken(kind, ttl))

    async def list_tokens(self) -> tuple[TokenEntry, ...]:
        return (await self.call(api.ListTokens, EMPTY)).tokens

    async def delete_token(self, name: str) -> None:
        await self.call(api.DeleteToken, api.Name(name))

    async def export_ca(self, kind: str) -> tuple[str, ...]:
        return (await self.call(api.ExportCA, api.CAKind(kind))).lines

    async def get_invite(self, token: str) -> api.InviteInfo:
        return await self.call(api.GetInvite, api.InviteToken(token))

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        signup = api.SignUp(token, password, otp_token, client_addr)
        return (await self.call(api.CompleteInvite, signup)).user

    async def authenticate_ssh_user(
        self,
        user: str,
        password: str,
        otp_token: str,
        pub_key: str,
        ttl: int,
        client_addr: str,
    ) -> api.IssuedCertificate:
        login = api.Login(user, password, otp_token, pub_key, ttl, client_addr)
        return await self.call(api.AuthenticateSSHUser, login)

    # web sessions: ``creds`` is what the browser presented (cookie, bearer)
    # and this proxy's idle limit.

    async def create_web_session(
        self, user: str, password: str, otp_token: str, pub_key: str, client_addr: str
    ) -> api.NewWebSession:
        login = api.WebLogin(user, password, otp_token, pub_key, client_addr)
        return await self.call(api.CreateWebSession, login)

    async def authenticate_web_session(
        self, creds: api.WebCredentials
    ) -> api.WebSessionInfo:
        return await self.call(api.AuthenticateWebSession, creds)

    async def check_web_session(self, creds: api.WebCredentials) -> api.WebSessionInfo:
        """The session, if live, without counting as activity."""
        return await self.call(api.CheckWebSession, creds)

    async def sign_web_session_key(
        self, creds: api.WebCredentials, pub_key: str
    ) -> api.WebSessionCertificate:
        key = api.WebSessionKey(*_creds(creds), pub_key)
        return await self.call(api.SignWebSessionKey, key)

    async def renew_web_session(
        self, creds: api.WebCredentials
    ) -> api.RenewedWebSession:
        return await self.call(api.RenewWebSession, creds)

    async def delete_web_session(
        self, creds: api.WebCredentials, client_addr: str
    ) -> None:
        await self.call(
            api.DeleteWebSession, api.WebLogout(*_creds(creds), client_addr)
        )

    async def change_password(
        self,
        creds: api.WebCredentials,
        old_password: str,
        otp_token: str,
        new_password: str,
        client_addr: str,
    ) -> None:
        change = api.PasswordChange(
            *_creds(creds), old_password, otp_token, new_password, client_addr
        )
        await self.call(api.ChangePassword, change)

    async def start_authenticator_enrolment(
        self, creds: api.WebCredentials, password: str, client_addr: str
    ) -> api.PendingAuthenticator:
        start = api.EnrolmentStart(*_creds(creds), password, client_addr)
        return await self.call(api.StartAuthenticatorEnrolment, start)

    async def confirm_authenticator_enrolment(
        self, creds: api.WebCredentials, otp_token: str, client_addr: str
    ) -> None:
        confirm = api.EnrolmentConfirmation(*_creds(creds), otp_token, client_addr)
        await self.call(api.ConfirmAuthenticatorEnrolment, confirm)

    # live sessions

    async def upsert_active_session(self, session: ActiveSession) -> None:
        await self.call(api.UpsertActiveSession, api.SessionRegistration(session))

    async def end_active_session(
        self, id: str, exit_code: int | None, reason: str
    ) -> None:
        await self.call(api.EndActiveSession, api.SessionEnd(id, exit_code, reason))

    async def list_active_sessions(self) -> tuple[ActiveSession, ...]:
        return (await self.call(api.ListActiveSessions, EMPTY)).sessions

    async def cluster_settings(self) -> api.ClusterSettings:
        return await self.call(api.GetClusterSettings, EMPTY)

    async def show_cluster_settings(self) -> api.ClusterSettingsView:
        return await self.call(api.ShowClusterSettings, EMPTY)

    async def set_cluster_settings(
        self, values: Mapping[str, str]
    ) -> api.ClusterSettingsView:
        request = api.ClusterSettingsChange(values)
        return await self.call(api.SetClusterSettings, request)

    async def start_recording(
        self, id: str, meta: Mapping[str, Any]
    ) -> api.RecordingState:
        return await self.call(api.StartRecording, api.RecordingStart(id, meta))

    async def append_recording(self, id: str, offset: int, frame: bytes) -> int:
        request = api.RecordingFrame(id, offset, frame)
        return (await self.call(api.AppendRecording, request)).size

    async def complete_recording(self, id: str, duration_ms: int) -> int:
        request = api.RecordingEnd(id, duration_ms)
        return (await self.call(api.CompleteRecording, request)).size

    async def list_recordings(self) -> tuple[api.RecordingEntry, ...]:
        return (await self.call(api.ListRecordings, EMPTY)).recordings

    async def read_recording(
        self, id: str, start: int, length: int
    ) -> api.RecordingBytes:
        return await self.call(api.ReadRecording, api.RecordingRange(id, start, length))

    async def delete_recording(self, id: str) -> None:
        await self.call(api.DeleteRecording, api.Name(id))

    async def find_recordings(
        self,
        viewer: str,
        *,
        user: str = "",
        node: str = "",
        since: float = 0.0,
        text: str = "",
        limit: int = 200,
    ) -> tuple[api.RecordingEntry, ...]:
        """The recordings ``viewer`` may see, newest first (see search_recordings
        to learn whether a text search was cut short)."""
        query = api.RecordingQuery(viewer, user, node, since, text, limit)
        return (await self.search_recordings(query)).recordings

    async def search_recordings(self, query: api.RecordingQuery) -> api.Recordings:
        """FindRecordings with its whole answer, ``cut_short`` included."""
        return await self.call(api.FindRecordings, query)

    async def read_recording_as(
        self, viewer: str, id: str, start: int, length: int
    ) -> api.RecordingBytes:
        request = api.ViewerRange(viewer, id, start, length)
        return await self.call(api.ReadRecordingAs, request)

    async def seek_recording(
        self, viewer: str, id: str, ms: int
    ) -> api.RecordingPosition:
        return await self.call(api.SeekRecording, api.RecordingSeek(viewer, id, ms))

    async def search_events(
        self,
        since: float | None = None,
        until: float | None = None,
        events: Sequence[str] = (),
        user: str | None = None,
        limit: int = 1000,
    ) -> tuple[AuditEvent, ...]:
        query = api.EventQuery(since, until, tuple(events), user, limit)
        return (await self.call(api.SearchEvents, query)).events

    async def upsert_node(self, name: str, addr: str, labels: dict[str, str]) -> Node:
        registration = api.NodeRegistration(name, addr, labels)
        return (await self.call(api.UpsertNode, registration)).node

    async def list_nodes(self) -> tuple[Node, ...]:
        return (await self.call(api.ListNodes, EMPTY)).nodes

    async def delete_node(self, name: str) -> None:
        await self.call(api.DeleteNode, api.Name(name))

    async def sign_host_certificate(
        self, public_key: str, hosts: Sequence[str], ttl: int = 0
    ) -> api.HostCertificate:
        key = api.HostKey(public_key, tuple(hosts), ttl)
        return await self.call(api.SignHostCertificate, key)

    async def sign_forwarding_host_certificate(
        self, public_key: str, target: str
    ) -> api.ForwardingHostCertificate:
        """A host certificate for our key naming the registered node ``target``."""
        key = api.ForwardingHostKey(public_key, target)
        return await self.call(api.SignForwardingHostCertificate, key)

    async def join_openssh_node(
        self,
        token_name: str,
        proof: str,
        name: str,
        addr: str,
        labels: dict[str, str],
        public_key: str,
        client_addr: str,
    ) -> Attested:
        """The attested answer to a node's join (see teleconch.auth.nodejoin)."""
        join = api.NodeJoin(
            token_name, proof, name, addr, labels, public_key, client_addr
        )
        return (await self.call(api.JoinOpenSSHNode, join)).document

    async def renew_node_certificate(
        self, cert: str, timestamp: int, signature: str, client_addr: str
    ) -> Attested:
        renewal = api.Renewal(cert, timestamp, signature, client_addr)
        return (await self.call(api.RenewNodeCertificate, renewal)).document

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        await self.call(api.EmitAuditEvent, api.Report(event, user, success, fields))


def _creds(creds: api.WebCredentials) -> tuple[str, str, int]:
    return creds.cookie, creds.bearer, creds.idle_timeout
