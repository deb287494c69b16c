"""The Auth API: every AMP command the auth service answers, in one place.

Each command names the caller roles allowed to send it (``roles``); the
server enforces that before any responder runs.  A caller's role comes from
its TLS client certificate; a caller without one is ``ANONYMOUS`` and may only
ping and join.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from twisted.protocols import amp

from teleconch.pki import ROLE_ADMIN, ROLE_AUTH, ROLE_NODE, ROLE_PROXY

ANONYMOUS = "anonymous"

#: The largest box the auth service accepts from a cluster identity (the
#: guard's default).  Its biggest commands (UpsertRole, UpsertNode,
#: EmitAuditEvent) carry one JSON argument of at most ARGUMENT_CHUNKS chunks.
MAX_COMMAND_BYTES = 1 << 20
CLUSTER_ROLES = frozenset({ROLE_ADMIN, ROLE_PROXY, ROLE_NODE, ROLE_AUTH})


# --- errors: raised on the server, re-raised with their message on the caller


class AuthAPIError(Exception):
    """Base of the errors the Auth API sends back; the text is for people."""


class AccessDenied(AuthAPIError):
    pass


class NotFoundError(AuthAPIError):
    pass


class AlreadyExistsError(AuthAPIError):
    pass


class BadParameter(AuthAPIError):
    pass


class AuthenticationFailed(AuthAPIError):
    pass


class LockedOut(AuthAPIError):
    pass


class RateLimited(AuthAPIError):
    pass


ERRORS: dict[type[Exception], bytes] = {
    AccessDenied: b"ACCESS_DENIED",
    NotFoundError: b"NOT_FOUND",
    AlreadyExistsError: b"ALREADY_EXISTS",
    BadParameter: b"BAD_PARAMETER",
    AuthenticationFailed: b"AUTHENTICATION_FAILED",
    LockedOut: b"LOCKED_OUT",
    RateLimited: b"RATE_LIMITED",
}


# --- argument types


class JSON(amp.Argument):
    """A JSON value spread over as many AMP keys as it needs.

    One AMP value holds at most 64 KiB; listings (users, events) can be
    longer, so the encoded text is cut into numbered chunks, at most
    ``max_chunks`` of them: few for a command's argument (the box it travels
    in is bounded), more for a response.  With ``object_only`` the value must
    be a JSON object.
    """

    CHUNK = 0xFF00

    def __init__(
        self, optional: bool = False, max_chunks: int = 4096, object_only: bool = False
    ) -> None:
        super().__init__(optional)
        self.max_chunks = max_chunks
        self.object_only = object_only

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        obj = self.retrieve(objects, name.decode("ascii"), proto)
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
        chunks = [data[i : i + self.CHUNK] for i in range(0, len(data), self.CHUNK)]
        if len(chunks) > self.max_chunks:
            raise ValueError(
                f"{name.decode('ascii')} is too large: {len(data)} bytes of JSON, "
                f"at most {self.max_chunks * self.CHUNK} fit"
            )
        strings[name] = str(len(chunks)).encode("ascii")
        for i, chunk in enumerate(chunks):
            strings[b"%s.%d" % (name, i)] = chunk

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        count = int(strings.pop(name))
        if not 0 < count <= self.max_chunks:
            raise ValueError(f"bad chunk count for {name!r}")
        data = b"".join(strings.pop(b"%s.%d" % (name, i)) for i in range(count))
        value = json.loads(data)
        if self.object_only and not isinstance(value, dict):
            raise ValueError(f"{name!r} is not a JSON object")
        objects[name.decode("ascii")] = value


#: The chunks of a JSON argument of a command: all of them, with room for the
#: command's other arguments, fit in MAX_COMMAND_BYTES.
ARGUMENT_CHUNKS = MAX_COMMAND_BYTES // JSON.CHUNK - 1


def _json_argument() -> JSON:
    """A command's JSON argument: an object, in at most ARGUMENT_CHUNKS chunks."""
    return JSON(max_chunks=ARGUMENT_CHUNKS, object_only=True)


# --- commands


class AuthCommand(amp.Command):
    """A command of the Auth API; ``roles`` says who may send it."""

    roles: ClassVar[frozenset[str]] = frozenset({ROLE_ADMIN})
    errors: ClassVar[dict[type[Exception], bytes]] = ERRORS
    requiresAnswer = True


class Ping(AuthCommand):
    """Who the cluster is; anyone may ask.

    A joining proxy checks the TLS CA returned here against its CA pin before
    it sends its token.
    """

    roles = CLUSTER_ROLES | {ANONYMOUS}
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [
        (b"cluster_name", amp.Unicode()),
        (b"server_version", amp.Unicode()),
        (b"caller_role", amp.Unicode()),
        (b"caller_name", amp.Unicode()),
        (b"tls_ca_certs", amp.ListOf(amp.String())),
    ]


class RegisterUsingToken(AuthCommand):
    """A proxy or node joins with a single-use token.

    It sends only public keys: its TLS and SSH private keys never leave it.
    """

    roles = frozenset({ANONYMOUS})
    arguments = [
        (b"token", amp.Unicode()),
        (b"role", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"public_addr", amp.Unicode()),
        (b"ssh_addr", amp.Unicode()),
        (b"additional_principals", amp.ListOf(amp.Unicode())),
        (b"tls_public_key", amp.String()),
        (b"ssh_public_key", amp.Unicode()),
    ]
    response = [
        (b"host_id", amp.Unicode()),
        (b"cluster_name", amp.Unicode()),
        (b"tls_cert", amp.String()),
        (b"tls_ca_certs", amp.ListOf(amp.String())),
        (b"ssh_host_cert", amp.Unicode()),
    ]


class GetClusterCAs(AuthCommand):
    """The public keys of the user and host CAs (never a private one)."""

    roles = CLUSTER_ROLES
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [
        (b"cluster_name", amp.Unicode()),
        (b"user_ca_keys", amp.ListOf(amp.Unicode())),
        (b"host_ca_keys", amp.ListOf(amp.Unicode())),
    ]


class Heartbeat(AuthCommand):
    """A proxy announces where people reach it (for invite links)."""

    roles = frozenset({ROLE_PROXY})
    arguments = [(b"public_addr", amp.Unicode()), (b"ssh_addr", amp.Unicode())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


# users and roles (admin)

_INVITE = [
    (b"user", amp.Unicode()),
    (b"token", amp.Unicode()),
    (b"url", amp.Unicode()),
    (b"expires", amp.Float()),
]


class CreateUser(AuthCommand):
    arguments = [
        (b"name", amp.Unicode()),
        (b"logins", amp.ListOf(amp.Unicode())),
        (b"roles", amp.ListOf(amp.Unicode())),
    ]
    response = _INVITE


class ResetUser(AuthCommand):
    """A new invite: the user sets a new password and OTP app."""

    arguments = [(b"name", amp.Unicode())]
    response = _INVITE


class UnlockUser(AuthCommand):
    """Lift a lock-out (and forget the failures) without a reset."""

    arguments = [(b"name", amp.Unicode())]
    response = [(b"was_locked", amp.Boolean())]


class ListUsers(AuthCommand):
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"users", JSON())]


class DeleteUser(AuthCommand):
    arguments = [(b"name", amp.Unicode())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class UpsertRole(AuthCommand):
    arguments = [(b"role", _json_argument())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class ListRoles(AuthCommand):
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"roles", JSON())]


class DeleteRole(AuthCommand):
    arguments = [(b"name", amp.Unicode())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


# join tokens (admin)


class CreateToken(AuthCommand):
    arguments = [(b"kind", amp.Unicode()), (b"ttl", amp.Integer())]
    response = [
        (b"token", amp.Unicode()),
        (b"expires", amp.Float()),
        (b"ca_pin", amp.Unicode()),
        (b"auth_addr", amp.Unicode()),
        (b"proxy_addr", amp.Unicode()),
    ]


class ListTokens(AuthCommand):
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"tokens", JSON())]


class DeleteToken(AuthCommand):
    arguments = [(b"name", amp.Unicode())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class ExportCA(AuthCommand):
    """A CA's public key in the form sshd (user) or known_hosts (host) takes."""

    roles = CLUSTER_ROLES
    arguments = [(b"kind", amp.Unicode())]
    response = [(b"lines", amp.ListOf(amp.Unicode()))]


# sign-up and login, on behalf of a person at the proxy


class GetInvite(AuthCommand):
    roles = frozenset({ROLE_PROXY})
    arguments = [(b"token", amp.Unicode())]
    response = [
        (b"user", amp.Unicode()),
        (b"totp_secret", amp.Unicode()),
        (b"otpauth_uri", amp.Unicode()),
        (b"expires", amp.Float()),
    ]


class CompleteInvite(AuthCommand):
    roles = frozenset({ROLE_PROXY})
    arguments = [
        (b"token", amp.Unicode()),
        (b"password", amp.Unicode()),
        (b"otp_token", amp.Unicode()),
        (b"client_addr", amp.Unicode()),
    ]
    response = [(b"user", amp.Unicode())]


class AuthenticateSSHUser(AuthCommand):
    """Password + OTP in, a short-lived OpenSSH user certificate out."""

    roles = frozenset({ROLE_PROXY})
    arguments = [
        (b"user", amp.Unicode()),
        (b"password", amp.Unicode()),
        (b"otp_token", amp.Unicode()),
        (b"pub_key", amp.Unicode()),
        (b"ttl", amp.Integer()),
        (b"client_addr", amp.Unicode()),
    ]
    response = [
        (b"username", amp.Unicode()),
        (b"cert", amp.Unicode()),
        (b"valid_before", amp.Integer()),
        (b"host_signers", JSON()),
    ]


# audit


class SearchEvents(AuthCommand):
    arguments = [
        (b"since", amp.Float(optional=True)),
        (b"until", amp.Float(optional=True)),
        (b"events", amp.ListOf(amp.Unicode())),
        (b"user", amp.Unicode(optional=True)),
        (b"limit", amp.Integer()),
    ]
    response = [(b"events", JSON())]


class EmitAuditEvent(AuthCommand):
    """A proxy or node reports what it did or refused."""

    roles = frozenset({ROLE_PROXY, ROLE_NODE})
    arguments = [
        (b"event", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"success", amp.Boolean()),
        (b"fields", _json_argument()),
    ]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


# nodes


class UpsertNode(AuthCommand):
    """Register a server (an OpenSSH sshd or a teleconch node) by name and address."""

    arguments = [
        (b"name", amp.Unicode()),
        (b"addr", amp.Unicode()),
        (b"labels", _json_argument()),
    ]
    response = [(b"node", JSON())]


class ListNodes(AuthCommand):
    """Every registered node; the proxy filters by the user's roles."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY})
    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"nodes", JSON())]


class DeleteNode(AuthCommand):
    arguments = [(b"name", amp.Unicode())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class SignHostCertificate(AuthCommand):
    """An OpenSSH host certificate for a node's own key (``auth sign --host``).

    The node's private key is made where it will live; only its public key
    travels here.
    """

    arguments = [
        (b"public_key", amp.Unicode()),
        (b"hosts", amp.ListOf(amp.Unicode())),
        (b"ttl", amp.Integer()),
    ]
    response = [(b"cert", amp.Unicode()), (b"principals", amp.ListOf(amp.Unicode()))]


class JoinOpenSSHNode(AuthCommand):
    """An OpenSSH node joins itself with a node token, through the proxy's web API.

    Only the node's public host key travels; the answer (host certificate,
    user CA) is attested by the auth service, bound to the token.
    """

    roles = frozenset({ROLE_PROXY})
    arguments = [
        (b"token", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"addr", amp.Unicode()),
        (b"labels", _json_argument()),
        (b"public_key", amp.Unicode()),
        (b"client_addr", amp.Unicode()),
    ]
    response = [(b"document", JSON())]


class RenewNodeCertificate(AuthCommand):
    """A joined node renews its host certificate, signing it with its host key."""

    roles = frozenset({ROLE_PROXY})
    arguments = [
        (b"cert", amp.Unicode()),
        (b"timestamp", amp.Integer()),
        (b"signature", amp.Unicode()),
        (b"client_addr", amp.Unicode()),
    ]
    response = [(b"document", JSON())]


class GetRoles(AuthCommand):
    """Role definitions by name, for the proxy's access checks."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY, ROLE_NODE})
    arguments = [(b"names", amp.ListOf(amp.Unicode()))]
    response = [(b"roles", JSON())]
