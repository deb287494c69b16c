"""The Auth API's AMP side: a thin protocol that names the caller and calls AuthServer.

The caller's role comes from its verified TLS client certificate; the
command's ``roles`` decide, in ``AuthAPIProtocol.locateResponder`` and only
there, whether it may proceed, before any of its arguments is decoded.  Then
one generic path answers every command: decode its request record, call the
AuthServer method ``serve`` bound it to (the request's fields as keyword
arguments), encode its response record.  The connection guards (box limits,
deadlines, caps) live in ``guard``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from teleconch.auth import protocol as api
from teleconch.auth.guard import ConnectionGuard, GuardedAMP, GuardLimits
from teleconch.auth.server import AuthServer, Identity

log = Logger()

#: Answers one decoded request for a caller on a connection.
Responder = Callable[["AuthAPIProtocol", Identity, Any], Awaitable[Any]]

#: Every command of the Auth API and its responder, by wire name.
RESPONDERS: dict[bytes, tuple[type[api.AuthCommand[Any, Any]], Responder]] = {}


def _response(command: type[api.AuthCommand[Any, Any]], result: Any) -> Any:
    """The response record from what a server method returned (see serve)."""
    kind = command.response_type
    if isinstance(result, kind):
        return result
    if result is None and kind is api.Empty:
        return api.Empty()
    (field,) = attrs.fields(kind)
    return kind(**{field.name: tuple(result) if isinstance(result, list) else result})


def serve(
    command: type[api.AuthCommand[Any, Any]],
    method: Callable[..., Any],
    *,
    caller: bool = False,
    client_addr: bool = False,
) -> None:
    """Answer ``command`` with the AuthServer ``method``; only its ``roles`` reach it.

    The method gets the request's fields as keyword arguments, and with
    ``caller`` the caller's Identity, with ``client_addr`` the peer's address.
    It returns the response record, or for a response of one field that
    field's value, or None for ``Empty``.
    """
    assert command.commandName not in RESPONDERS, command

    async def respond(proto: AuthAPIProtocol, who: Identity, request: Any) -> Any:
        kw = command.objects(request)
        if caller:
            kw["caller"] = who
        if client_addr:
            kw["client_addr"] = proto.peer()
        result = method(proto.server, **kw)
        if inspect.isawaitable(result):
            result = await result
        return _response(command, result)

    RESPONDERS[command.commandName] = (command, respond)


def _error_code(
    command: type[api.AuthCommand[Any, Any]], error: Exception
) -> bytes | None:
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
        self,
        command: type[api.AuthCommand[Any, Any]],
        fn: Responder,
        box: amp.AmpBox,
    ) -> amp.AmpBox:
        caller = self.caller()
        if caller.role not in command.roles:
            await self._refused(command, caller)
        try:
            request = command.decode_request(self._parse(command, caller, box))
            result = await fn(self, caller, request)
        except Exception as e:
            code = _error_code(command, e)
            if code is None:
                raise
            raise amp.RemoteAmpError(code, str(e)) from None
        response: amp.AmpBox = command.makeResponse(command.objects(result), self)
        return response

    async def _refused(
        self, command: type[api.AuthCommand[Any, Any]], caller: Identity
    ) -> None:
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
        self,
        command: type[api.AuthCommand[Any, Any]],
        caller: Identity,
        box: amp.AmpBox,
    ) -> dict[str, Any]:
        """The command's arguments, or a BAD_PARAMETER answer naming the bad one."""
        strings = box.copy()
        objects: dict[str, Any] = {}
        for name, argument in command.arguments:
            try:
                argument.fromBox(name, strings, objects, self)
            except api.AuthAPIError:
                raise  # a record's own refusal, as it said it
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


S = AuthServer
serve(api.Ping, S.ping, caller=True)
serve(api.RegisterUsingToken, S.register_using_token, client_addr=True)
serve(api.GetClusterCAs, S.cluster_cas)
serve(api.Heartbeat, S.heartbeat, caller=True)
serve(api.CreateUser, S.create_user)
serve(api.ResetUser, S.reset_user)
serve(api.UnlockUser, S.unlock_user)
serve(api.ListUsers, S.list_users)
serve(api.DeleteUser, S.delete_user)
serve(api.UpsertRole, S.upsert_role)
serve(api.ListRoles, S.list_roles)
serve(api.DeleteRole, S.delete_role)
serve(api.GetRoles, S.get_roles)
serve(api.CreateToken, S.create_token)
serve(api.ListTokens, S.list_tokens)
serve(api.DeleteToken, S.delete_token)
serve(api.ExportCA, S.export_ca)
serve(api.GetInvite, S.get_invite)
serve(api.CompleteInvite, S.complete_invite)
serve(api.AuthenticateSSHUser, S.authenticate_ssh_user)
serve(api.SearchEvents, S.search_events)
serve(api.EmitAuditEvent, S.emit_event, caller=True)
serve(api.UpsertNode, S.upsert_node)
serve(api.ListNodes, S.list_nodes)
serve(api.DeleteNode, S.delete_node)
serve(api.SignHostCertificate, S.sign_host_certificate)
serve(
    api.SignForwardingHostCertificate, S.sign_forwarding_host_certificate, caller=True
)
serve(api.JoinOpenSSHNode, S.join_openssh_node)
serve(api.RenewNodeCertificate, S.renew_node_certificate)
serve(api.CreateWebSession, S.create_web_session)
serve(api.AuthenticateWebSession, S.authenticate_web_session)
serve(api.CheckWebSession, S.check_web_session)
serve(api.SignWebSessionKey, S.sign_web_session_key)
serve(api.RenewWebSession, S.renew_web_session)
serve(api.DeleteWebSession, S.delete_web_session)
serve(api.ChangePassword, S.change_password)
serve(api.StartAuthenticatorEnrolment, S.start_authenticator_enrolment)
serve(api.ConfirmAuthenticatorEnrolment, S.confirm_authenticator_enrolment)
serve(api.UpsertActiveSession, S.upsert_active_session, caller=True)
serve(api.EndActiveSession, S.end_active_session, caller=True)
serve(api.ListActiveSessions, S.list_active_sessions)
serve(api.GetClusterSettings, S.cluster_settings)
serve(api.ShowClusterSettings, S.show_cluster_settings)
serve(api.SetClusterSettings, S.set_cluster_settings, caller=True)
serve(api.StartRecording, S.start_recording, caller=True)
serve(api.AppendRecording, S.append_recording, caller=True)
serve(api.CompleteRecording, S.complete_recording, caller=True)
serve(api.ListRecordings, S.list_recordings)
serve(api.ReadRecording, S.read_recording)
serve(api.DeleteRecording, S.delete_recording)
serve(api.FindRecordings, S.find_recordings)
serve(api.ReadRecordingAs, S.read_recording_as)
serve(api.SeekRecording, S.seek_recording)
del S


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
