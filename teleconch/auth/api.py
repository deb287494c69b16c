"""The Auth API's AMP side: a thin protocol that names the caller and calls AuthServer.

The caller's role comes from its verified TLS client certificate; the
command's ``roles`` decide, here and only here, whether it may proceed.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.interfaces import IAddress, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from teleconch.auth import protocol as api
from teleconch.auth.server import AuthServer, Identity, node_to_json
from teleconch.pki import peer_identity

log = Logger()

_R = TypeVar("_R")
Responder = Callable[..., Awaitable[_R]]


def _addr(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def serve(command: type[api.AuthCommand]) -> Callable[[Responder[_R]], Responder[_R]]:
    """Register a responder for ``command`` that only the allowed roles reach."""

    def decorate(fn: Responder[_R]) -> Responder[_R]:
        @functools.wraps(fn)
        async def responder(self: AuthAPIProtocol, **kw: Any) -> _R:
            caller = self.caller()
            if caller.role not in command.roles:
                await self.server.audit(
                    "auth.api.denied",
                    user=caller.name,
                    success=False,
                    command=command.__name__,
                    caller_role=caller.role,
                    client_addr=self.peer(),
                )
                if caller.role == api.ANONYMOUS:
                    raise api.AccessDenied(
                        f"{command.__name__} needs a client certificate of this cluster; "
                        "join with a token (`teleconch-ctl tokens add`) or use the "
                        "admin identity on the auth server"
                    )
                raise api.AccessDenied(
                    f"{command.__name__} is not allowed for a {caller.role} identity"
                )
            return await fn(self, caller, **kw)

        return command.responder(responder)

    return decorate


class AuthAPIProtocol(amp.AMP):
    """One connection to the Auth API."""

    def __init__(self, server: AuthServer) -> None:
        super().__init__()
        self.server = server

    def caller(self) -> Identity:
        transport = self.transport
        cert: Any = None
        if ISSLTransport.providedBy(transport):
            cert = transport.getPeerCertificate()
        found = peer_identity(cert)
        if found is None:
            return Identity(api.ANONYMOUS, "")
        return Identity(*found)

    def peer(self) -> str:
        return _addr(self.transport.getPeer()) if self.transport else "?"

    @serve(api.Ping)
    async def ping(self, caller: Identity) -> dict[str, Any]:
        return self.server.ping(caller)

    @serve(api.RegisterUsingToken)
    async def register(self, caller: Identity, **kw: Any) -> dict[str, Any]:
        result = await self.server.register_using_token(client_addr=self.peer(), **kw)
        return {
            "host_id": result.host_id,
            "cluster_name": self.server.cluster_name,
            "tls_cert": result.tls_cert,
            "tls_ca_certs": result.tls_ca_certs,
            "ssh_host_cert": result.ssh_host_cert,
        }

    @serve(api.GetClusterCAs)
    async def cluster_cas(self, caller: Identity) -> dict[str, Any]:
        return self.server.cluster_cas()

    @serve(api.Heartbeat)
    async def heartbeat(
        self, caller: Identity, public_addr: str, ssh_addr: str
    ) -> dict[str, Any]:
        await self.server.heartbeat(caller, public_addr, ssh_addr)
        return {}

    @serve(api.CreateUser)
    async def create_user(
        self, caller: Identity, name: str, logins: list[str], roles: list[str]
    ) -> dict[str, Any]:
        invite = await self.server.create_user(name, logins, roles)
        return {
            "user": invite.user,
            "token": invite.token,
            "url": invite.url,
            "expires": invite.expires,
        }

    @serve(api.ResetUser)
    async def reset_user(self, caller: Identity, name: str) -> dict[str, Any]:
        invite = await self.server.reset_user(name)
        return {
            "user": invite.user,
            "token": invite.token,
            "url": invite.url,
            "expires": invite.expires,
        }

    @serve(api.ListUsers)
    async def list_users(self, caller: Identity) -> dict[str, Any]:
        return {"users": await self.server.list_users()}

    @serve(api.DeleteUser)
    async def delete_user(self, caller: Identity, name: str) -> dict[str, Any]:
        await self.server.delete_user(name)
        return {}

    @serve(api.UpsertRole)
    async def upsert_role(
        self, caller: Identity, role: dict[str, Any]
    ) -> dict[str, Any]:
        await self.server.upsert_role(role)
        return {}

    @serve(api.ListRoles)
    async def list_roles(self, caller: Identity) -> dict[str, Any]:
        return {"roles": await self.server.list_roles()}

    @serve(api.DeleteRole)
    async def delete_role(self, caller: Identity, name: str) -> dict[str, Any]:
        await self.server.delete_role(name)
        return {}

    @serve(api.CreateToken)
    async def create_token(
        self, caller: Identity, kind: str, ttl: int
    ) -> dict[str, Any]:
        return await self.server.create_token(kind, ttl)

    @serve(api.ListTokens)
    async def list_tokens(self, caller: Identity) -> dict[str, Any]:
        return {"tokens": await self.server.list_tokens()}

    @serve(api.DeleteToken)
    async def delete_token(self, caller: Identity, name: str) -> dict[str, Any]:
        await self.server.delete_token(name)
        return {}

    @serve(api.ExportCA)
    async def export_ca(self, caller: Identity, kind: str) -> dict[str, Any]:
        return {"lines": self.server.export_ca(kind)}

    @serve(api.GetInvite)
    async def get_invite(self, caller: Identity, token: str) -> dict[str, Any]:
        return await self.server.get_invite(token)

    @serve(api.CompleteInvite)
    async def complete_invite(self, caller: Identity, **kw: Any) -> dict[str, Any]:
        return {"user": await self.server.complete_invite(**kw)}

    @serve(api.AuthenticateSSHUser)
    async def authenticate_ssh_user(
        self, caller: Identity, **kw: Any
    ) -> dict[str, Any]:
        issued = await self.server.authenticate_ssh_user(**kw)
        return {
            "username": issued.username,
            "cert": issued.cert,
            "valid_before": issued.valid_before,
            "host_signers": issued.host_signers,
        }

    @serve(api.SearchEvents)
    async def search_events(
        self,
        caller: Identity,
        since: float | None,
        until: float | None,
        events: list[str],
        user: str | None,
        limit: int,
    ) -> dict[str, Any]:
        return {
            "events": await self.server.search_events(since, until, events, user, limit)
        }

    @serve(api.EmitAuditEvent)
    async def emit_event(
        self,
        caller: Identity,
        event: str,
        user: str,
        success: bool,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        fields = dict(fields, reported_by=f"{caller.role}:{caller.name}")
        await self.server.audit(event, user=user, success=success, **fields)
        return {}

    @serve(api.UpsertNode)
    async def upsert_node(
        self, caller: Identity, name: str, addr: str, labels: dict[str, Any]
    ) -> dict[str, Any]:
        node = await self.server.upsert_node(name, addr, labels)
        return {"node": node_to_json(node)}

    @serve(api.ListNodes)
    async def list_nodes(self, caller: Identity) -> dict[str, Any]:
        return {"nodes": await self.server.list_nodes()}

    @serve(api.DeleteNode)
    async def delete_node(self, caller: Identity, name: str) -> dict[str, Any]:
        await self.server.delete_node(name)
        return {}

    @serve(api.SignHostCertificate)
    async def sign_host_certificate(
        self, caller: Identity, public_key: str, hosts: list[str], ttl: int
    ) -> dict[str, Any]:
        cert, principals = await self.server.sign_host_certificate(
            public_key, hosts, ttl
        )
        return {"cert": cert, "principals": principals}

    @serve(api.GetRoles)
    async def get_roles(self, caller: Identity, names: list[str]) -> dict[str, Any]:
        return {"roles": await self.server.get_roles(names)}


class AuthAPIFactory(Factory):
    """Makes one AuthAPIProtocol per connection, all sharing one AuthServer."""

    def __init__(self, server: AuthServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> AuthAPIProtocol:
        return AuthAPIProtocol(self.server)
