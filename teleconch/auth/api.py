"""The Auth API's AMP side: a thin protocol that names the caller and calls AuthServer.

The caller's role comes from its verified TLS client certificate; the
command's ``roles`` decide, in ``AuthAPIProtocol.locateResponder`` and only
there, whether it may proceed, before any of its arguments is decoded.  The
connection guards (box limits, deadlines, caps) live in ``guard``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from teleconch.auth import nodejoin
from teleconch.auth import protocol as api
from teleconch.auth.guard import ConnectionGuard, GuardedAMP, GuardLimits
from teleconch.auth.nodes import node_to_json
from teleconch.auth.server import AuthServer, Identity

log = Logger()

_R = TypeVar("_R")
Responder = Callable[..., Awaitable[_R]]

#: Every command of the Auth API and its responder, by wire name.
RESPONDERS: dict[bytes, tuple[type[api.AuthCommand], Responder[Any]]] = {}


def serve(command: type[api.AuthCommand]) -> Callable[[Responder[_R]], Responder[_R]]:
    """Make ``fn`` the responder of ``command``; only its ``roles`` reach it."""

    def decorate(fn: Responder[_R]) -> Responder[_R]:
        assert command.commandName not in RESPONDERS, command
        RESPONDERS[command.commandName] = (command, fn)
        return fn

    return decorate


def _error_code(command: type[api.AuthCommand], error: Exception) -> bytes | None:
    for kind, code in command.errors.items():
        if isinstance(error, kind):
            return code
    return None


class AuthAPIProtocol(GuardedAMP):
    """One connection to the Auth API."""

    def __init__(self, server: AuthServer, guard: ConnectionGuard) -> None:
        super().__init__(guard)
        self.server = server

    def caller(self) -> Identity:
        if self.identity is None:
            return Identity(api.ANONYMOUS, "")
        return Identity(*self.identity)

    def locateResponder(
        self, name: bytes
    ) -> Callable[[amp.AmpBox], Deferred[amp.AmpBox]] | None:
        found = RESPONDERS.get(name)
        if found is None:
            log.info(
                "auth API: unknown command {name!r} from {peer}",
                name=name[:64],
                peer=self.peer(),
            )
            return None
        command, fn = found

        def respond(box: amp.AmpBox) -> Deferred[amp.AmpBox]:
            return Deferred.fromCoroutine(self._respond(command, fn, box))

        return respond

    async def _respond(
        self, command: type[api.AuthCommand], fn: Responder[Any], box: amp.AmpBox
    ) -> amp.AmpBox:
        caller = self.caller()
        if caller.role not in command.roles:
            await self._refused(command, caller)
        kw = self._parse(command, caller, box)
        try:
            result = await fn(self, caller, **kw)
        except Exception as e:
            code = _error_code(command, e)
            if code is None:
                raise
            raise amp.RemoteAmpError(code, str(e)) from None
        response: amp.AmpBox = command.makeResponse(result, self)
        return response

    async def _refused(self, command: type[api.AuthCommand], caller: Identity) -> None:
        fields = {
            "user": caller.name,
            "command": command.__name__,
            "caller_role": caller.role,
            "client_addr": self.peer(),
        }
        if caller.role == api.ANONYMOUS:
            await self.guard.refusals.refused(self.host, fields)
            message = (
                f"{command.__name__} needs a client certificate of this cluster; "
                "join with a token (`teleconch-ctl tokens add`) or use the "
                "admin identity on the auth server"
            )
        else:
            await self.server.audit("auth.api.denied", success=False, **fields)
            message = f"{command.__name__} is not allowed for a {caller.role} identity"
        raise amp.RemoteAmpError(api.ERRORS[api.AccessDenied], message)

    def _parse(
        self, command: type[api.AuthCommand], caller: Identity, box: amp.AmpBox
    ) -> dict[str, Any]:
        """The command's arguments, or a BAD_PARAMETER answer naming the bad one."""
        strings = box.copy()
        objects: dict[str, Any] = {}
        for name, argument in command.arguments:
            try:
                argument.fromBox(name, strings, objects, self)
            except Exception as e:  # any failure to decode a peer's bytes
                arg = name.decode("ascii")
                log.warn(
                    "auth API: {command} from {role} {peer}: argument {arg} is "
                    "missing or malformed ({error})",
                    command=command.__name__,
                    role=caller.role,
                    peer=self.peer(),
                    arg=arg,
                    error=type(e).__name__,
                )
                raise amp.RemoteAmpError(
                    api.ERRORS[api.BadParameter],
                    f"{command.__name__}: argument {arg} is missing or malformed",
                ) from None
        return objects

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

    @serve(api.UnlockUser)
    async def unlock_user(self, caller: Identity, name: str) -> dict[str, Any]:
        return {"was_locked": await self.server.unlock_user(name)}

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

    @serve(api.JoinOpenSSHNode)
    async def join_openssh_node(self, caller: Identity, **kw: Any) -> dict[str, Any]:
        return {"document": await nodejoin.join_node(self.server, **kw)}

    @serve(api.RenewNodeCertificate)
    async def renew_node_certificate(
        self, caller: Identity, **kw: Any
    ) -> dict[str, Any]:
        return {"document": await nodejoin.renew_node(self.server, **kw)}

    @serve(api.GetRoles)
    async def get_roles(self, caller: Identity, names: list[str]) -> dict[str, Any]:
        return {"roles": await self.server.get_roles(names)}


class AuthAPIFactory(Factory):
    """Makes one AuthAPIProtocol per connection, all sharing one AuthServer
    and one ConnectionGuard (per-address caps, the refusal audit's rate)."""

    def __init__(
        self,
        server: AuthServer,
        clock: IReactorTime,
        limits: GuardLimits | None = None,
    ) -> None:
        self.server = server
        self.guard = ConnectionGuard(
            clock, limits or GuardLimits(), self._audit_refusal
        )

    async def _audit_refusal(self, row: dict[str, Any]) -> None:
        await self.server.audit("auth.api.denied", success=False, **row)

    def stopFactory(self) -> None:
        self.guard.refusals.stop()

    def buildProtocol(self, addr: IAddress | None) -> AuthAPIProtocol:
        return AuthAPIProtocol(self.server, self.guard)
