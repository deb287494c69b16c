"""AuthAgent: the one client of the Auth API, used by every other service.

It keeps an AMP connection over mutual TLS to the auth service, reconnecting
with backoff, and turns each API command into an ``async`` method.  ``join``
is the one call made without an identity: a proxy or node trades a token for
its identity there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives.serialization import Encoding
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
from teleconch.config import HostPort
from teleconch.pki import (
    ROLE_AUTH,
    TLSIdentity,
    anonymous_client_options,
    ca_pin,
    issued_by,
    peer_identity,
)

log = Logger()

CALL_TIMEOUT = 30.0


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


def _tls_endpoint(
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


async def _call(
    reactor: IReactorTime, proto: amp.AMP, command: type[amp.Command], **kw: Any
) -> dict[str, Any]:
    d = proto.callRemote(command, **kw)
    d.addTimeout(CALL_TIMEOUT, reactor)
    result: dict[str, Any] = await d
    return result


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
            [_tls_endpoint(reactor, a, options) for a in auth_servers]
        )
        self._client = ClientService(
            endpoint,
            Factory.forProtocol(AuthClientProtocol),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=15.0),
            clock=reactor,
        )
        self._client.setServiceParent(self)

    async def call(self, command: type[amp.Command], **kw: Any) -> dict[str, Any]:
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
        return await _call(self._reactor, proto, command, **kw)

    # --- the API -----------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self.call(api.Ping)

    async def cluster_cas(self) -> dict[str, Any]:
        return await self.call(api.GetClusterCAs)

    async def heartbeat(self, public_addr: str, ssh_addr: str) -> None:
        await self.call(api.Heartbeat, public_addr=public_addr, ssh_addr=ssh_addr)

    async def create_user(
        self, name: str, logins: Sequence[str], roles: Sequence[str]
    ) -> dict[str, Any]:
        return await self.call(
            api.CreateUser, name=name, logins=list(logins), roles=list(roles)
        )

    async def reset_user(self, name: str) -> dict[str, Any]:
        return await self.call(api.ResetUser, name=name)

    async def unlock_user(self, name: str) -> bool:
        """True if the user was locked out."""
        return bool((await self.call(api.UnlockUser, name=name))["was_locked"])

    async def list_users(self) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = (await self.call(api.ListUsers))["users"]
        return users

    async def delete_user(self, name: str) -> None:
        await self.call(api.DeleteUser, name=name)

    async def upsert_role(self, role: dict[str, Any]) -> None:
        await self.call(api.UpsertRole, role=role)

    async def list_roles(self) -> list[dict[str, Any]]:
        roles: list[dict[str, Any]] = (await self.call(api.ListRoles))["roles"]
        return roles

    async def delete_role(self, name: str) -> None:
        await self.call(api.DeleteRole, name=name)

    async def create_token(self, kind: str, ttl: int) -> dict[str, Any]:
        return await self.call(api.CreateToken, kind=kind, ttl=ttl)

    async def list_tokens(self) -> list[dict[str, Any]]:
        tokens: list[dict[str, Any]] = (await self.call(api.ListTokens))["tokens"]
        return tokens

    async def delete_token(self, name: str) -> None:
        await self.call(api.DeleteToken, name=name)

    async def export_ca(self, kind: str) -> list[str]:
        lines: list[str] = (await self.call(api.ExportCA, kind=kind))["lines"]
        return lines

    async def get_invite(self, token: str) -> dict[str, Any]:
        return await self.call(api.GetInvite, token=token)

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        result = await self.call(
            api.CompleteInvite,
            token=token,
            password=password,
            otp_token=otp_token,
            client_addr=client_addr,
        )
        return str(result["user"])

    async def authenticate_ssh_user(
        self,
        user: str,
        password: str,
        otp_token: str,
        pub_key: str,
        ttl: int,
        client_addr: str,
    ) -> dict[str, Any]:
        return await self.call(
            api.AuthenticateSSHUser,
            user=user,
            password=password,
            otp_token=otp_token,
            pub_key=pub_key,
            ttl=ttl,
            client_addr=client_addr,
        )

    async def search_events(
        self,
        since: float | None = None,
        until: float | None = None,
        events: Sequence[str] = (),
        user: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (
            await self.call(
                api.SearchEvents,
                since=since,
                until=until,
                events=list(events),
                user=user,
                limit=limit,
            )
        )["events"]
        return found

    async def upsert_node(
        self, name: str, addr: str, labels: dict[str, str]
    ) -> dict[str, Any]:
        node: dict[str, Any] = (
            await self.call(api.UpsertNode, name=name, addr=addr, labels=labels)
        )["node"]
        return node

    async def list_nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = (await self.call(api.ListNodes))["nodes"]
        return nodes

    async def delete_node(self, name: str) -> None:
        await self.call(api.DeleteNode, name=name)

    async def sign_host_certificate(
        self, public_key: str, hosts: Sequence[str], ttl: int = 0
    ) -> dict[str, Any]:
        return await self.call(
            api.SignHostCertificate, public_key=public_key, hosts=list(hosts), ttl=ttl
        )

    async def join_openssh_node(
        self,
        token: str,
        name: str,
        addr: str,
        labels: dict[str, str],
        public_key: str,
        client_addr: str,
    ) -> dict[str, Any]:
        """The attested answer to a node's join (see teleconch.auth.nodejoin)."""
        document: dict[str, Any] = (
            await self.call(
                api.JoinOpenSSHNode,
                token=token,
                name=name,
                addr=addr,
                labels=labels,
                public_key=public_key,
                client_addr=client_addr,
            )
        )["document"]
        return document

    async def renew_node_certificate(
        self, cert: str, timestamp: int, signature: str, client_addr: str
    ) -> dict[str, Any]:
        document: dict[str, Any] = (
            await self.call(
                api.RenewNodeCertificate,
                cert=cert,
                timestamp=timestamp,
                signature=signature,
                client_addr=client_addr,
            )
        )["document"]
        return document

    async def get_roles(self, names: Sequence[str]) -> list[dict[str, Any]]:
        roles: list[dict[str, Any]] = (
            await self.call(api.GetRoles, names=list(names))
        )["roles"]
        return roles

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        await self.call(
            api.EmitAuditEvent, event=event, user=user, success=success, fields=fields
        )


# --- joining ---------------------------------------------------------------


@attrs.frozen
class JoinRequest:
    token: str = attrs.field(repr=False)
    role: str
    name: str
    public_addr: str
    ssh_addr: str
    tls_public_key: bytes
    ssh_public_key: str
    additional_principals: tuple[str, ...] = ()


@attrs.frozen
class JoinResponse:
    host_id: str
    cluster_name: str
    tls_cert: bytes
    tls_ca_certs: tuple[bytes, ...]
    ssh_host_cert: str


class JoinRefused(Exception):
    """The auth service would not let us join, or could not be trusted."""


def _peer_cert_pem(proto: amp.AMP) -> bytes:
    cert = proto.transport.getPeerCertificate()  # type: ignore[union-attr]
    if cert is None:
        raise JoinRefused("the auth server presented no TLS certificate")
    return cert.to_cryptography().public_bytes(Encoding.PEM)


async def join(
    reactor: Any,
    auth_servers: Sequence[HostPort],
    pin: str | None,
    request: JoinRequest,
) -> JoinResponse:
    """Trade a join token for an identity, trusting the auth server by its CA pin.

    The token is sent only after the server's certificate is shown to be
    issued by a CA with the expected pin; with no pin the CA is trusted on
    first use, as Teleport does, and a warning says so.
    """
    endpoint = FailoverEndpoint(
        [_tls_endpoint(reactor, a, anonymous_client_options()) for a in auth_servers]
    )
    where = ", ".join(str(a) for a in auth_servers)
    try:
        proto = await endpoint.connect(Factory.forProtocol(amp.AMP))
    except Exception as e:
        raise AuthUnavailable(
            f"cannot reach the auth service at {where}: {e}"
        ) from None
    assert isinstance(proto, amp.AMP)
    try:
        info = await _call(reactor, proto, api.Ping)
        leaf = _peer_cert_pem(proto)
        cas = [bytes(c) for c in info["tls_ca_certs"]]
        trusted = [ca for ca in cas if issued_by(leaf, ca)]
        identity = peer_identity(proto.transport.getPeerCertificate())  # type: ignore[union-attr]
        if not trusted or identity is None or identity[0] != ROLE_AUTH:
            raise JoinRefused(f"{where} did not present an auth server certificate")
        if pin is None:
            log.warn(
                "joining {where} without teleconch.ca_pin: trusting its CA {pin} on first "
                "use; set ca_pin to the value `teleconch-ctl tokens add` prints",
                where=where,
                pin=ca_pin(trusted[0]),
            )
        elif not any(ca_pin(ca) == pin for ca in trusted):
            raise JoinRefused(
                f"the auth server at {where} has CA pin {ca_pin(trusted[0])}, not the "
                f"configured {pin}: check teleconch.ca_pin, or that you dial the right "
                "auth server"
            )
        try:
            result = await _call(
                reactor,
                proto,
                api.RegisterUsingToken,
                token=request.token,
                role=request.role,
                name=request.name,
                public_addr=request.public_addr,
                ssh_addr=request.ssh_addr,
                additional_principals=list(request.additional_principals),
                tls_public_key=request.tls_public_key,
                ssh_public_key=request.ssh_public_key,
            )
        except api.AuthAPIError as e:
            raise JoinRefused(str(e)) from None
        return JoinResponse(
            host_id=result["host_id"],
            cluster_name=result["cluster_name"],
            tls_cert=result["tls_cert"],
            tls_ca_certs=tuple(result["tls_ca_certs"]),
            ssh_host_cert=result["ssh_host_cert"],
        )
    finally:
        proto.transport.loseConnection()  # type: ignore[union-attr]
