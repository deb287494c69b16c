"""The Auth API: every AMP command the auth service answers, in one place.

Each command is ``AuthCommand[Request, Response]``: two frozen attrs
records from which its AMP arguments and response are derived
(``teleconch.auth.wire``).  Each names the caller roles allowed to send it
(``roles``); the server enforces that before any argument is decoded.  A
caller's role comes from its TLS client certificate; a caller without one is
``ANONYMOUS`` and may only ping and join.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from teleconch.auth.attest import Attested
from teleconch.auth.errors import (
    ERRORS,
    AccessDenied,
    AlreadyExistsError,
    AuthAPIError,
    AuthenticationFailed,
    BadParameter,
    LockedOut,
    NotFoundError,
    RateLimited,
    SessionExpired,
)
from teleconch.auth.types import (
    ActiveSession,
    AuditEvent,
    HostSigner,
    Node,
    Role,
    RoleSpec,
    TokenEntry,
    UserEntry,
)
from teleconch.auth.wire import (
    ARGUMENT_CHUNKS,
    JSON,
    MAX_COMMAND_BYTES,
    AuthCommand,
    Empty,
)
from teleconch.pki import ROLE_ADMIN, ROLE_AUTH, ROLE_NODE, ROLE_PROXY

__all__ = [
    "ARGUMENT_CHUNKS",
    "ERRORS",
    "JSON",
    "MAX_COMMAND_BYTES",
    "AccessDenied",
    "AlreadyExistsError",
    "AuthAPIError",
    "AuthCommand",
    "AuthenticationFailed",
    "BadParameter",
    "Empty",
    "LockedOut",
    "NotFoundError",
    "RateLimited",
    "SessionExpired",
]

ANONYMOUS = "anonymous"
CLUSTER_ROLES = frozenset({ROLE_ADMIN, ROLE_PROXY, ROLE_NODE, ROLE_AUTH})


# --- the cluster


@attrs.frozen
class ClusterInfo:
    cluster_name: str
    server_version: str
    caller_role: str
    caller_name: str
    tls_ca_certs: tuple[bytes, ...]


class Ping(AuthCommand[Empty, ClusterInfo]):
    """Who the cluster is; anyone may ask.

    A joining proxy checks the TLS CA returned here against its CA pin before
    it sends its token.
    """

    roles = CLUSTER_ROLES | {ANONYMOUS}


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
class JoinResult:
    host_id: str
    cluster_name: str
    tls_cert: bytes
    tls_ca_certs: tuple[bytes, ...]
    ssh_host_cert: str


class RegisterUsingToken(AuthCommand[JoinRequest, JoinResult]):
    """A proxy or node joins with a single-use token.

    It sends only public keys: its TLS and SSH private keys never leave it.
    """

    roles = frozenset({ANONYMOUS})


@attrs.frozen
class ClusterCAs:
    cluster_name: str
    user_ca_keys: tuple[str, ...]
    host_ca_keys: tuple[str, ...]


class GetClusterCAs(AuthCommand[Empty, ClusterCAs]):
    """The public keys of the user and host CAs (never a private one)."""

    roles = CLUSTER_ROLES


@attrs.frozen
class ProxyAddresses:
    public_addr: str
    ssh_addr: str


class Heartbeat(AuthCommand[ProxyAddresses, Empty]):
    """A proxy announces where people reach it (for invite links)."""

    roles = frozenset({ROLE_PROXY})


# --- users and roles (admin)


@attrs.frozen
class NewUser:
    name: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]


@attrs.frozen
class Invite:
    user: str
    token: str = attrs.field(repr=False)
    url: str = attrs.field(repr=False)
    expires: float


@attrs.frozen
class Name:
    """The name of a user, role, token or node."""

    name: str


class CreateUser(AuthCommand[NewUser, Invite]):
    pass


class ResetUser(AuthCommand[Name, Invite]):
    """A new invite: the user sets a new password and OTP app."""


@attrs.frozen
class Unlocked:
    was_locked: bool


class UnlockUser(AuthCommand[Name, Unlocked]):
    """Lift a lock-out (and forget the failures) without a reset."""


@attrs.frozen
class Users:
    users: tuple[UserEntry, ...]


class ListUsers(AuthCommand[Empty, Users]):
    pass


class DeleteUser(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class RoleDefinition:
    role: RoleSpec


class UpsertRole(AuthCommand[RoleDefinition, Empty]):
    pass


@attrs.frozen
class Roles:
    roles: tuple[Role, ...]


class ListRoles(AuthCommand[Empty, Roles]):
    pass


class DeleteRole(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class RoleNames:
    names: tuple[str, ...]


class GetRoles(AuthCommand[RoleNames, Roles]):
    """Role definitions by name, for the proxy's access checks."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY, ROLE_NODE})


# --- join tokens (admin)


@attrs.frozen
class NewToken:
    kind: str
    ttl: int


@attrs.frozen
class JoinToken:
    token: str = attrs.field(repr=False)
    expires: float
    ca_pin: str
    auth_addr: str
    proxy_addr: str


class CreateToken(AuthCommand[NewToken, JoinToken]):
    pass


@attrs.frozen
class Tokens:
    tokens: tuple[TokenEntry, ...]


class ListTokens(AuthCommand[Empty, Tokens]):
    pass


class DeleteToken(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class CAKind:
    kind: str


@attrs.frozen
class Lines:
    lines: tuple[str, ...]


class ExportCA(AuthCommand[CAKind, Lines]):
    """A CA's public key in the form sshd (user) or known_hosts (host) takes."""

    roles = CLUSTER_ROLES


# --- sign-up and login, on behalf of a person at the proxy


@attrs.frozen
class InviteToken:
    token: str = attrs.field(repr=False)


@attrs.frozen
class InviteInfo:
    user: str
    totp_secret: str = attrs.field(repr=False)
    otpauth_uri: str = attrs.field(repr=False)
    expires: float


class GetInvite(AuthCommand[InviteToken, InviteInfo]):
    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class SignUp:
    token: str = attrs.field(repr=False)
    password: str = attrs.field(repr=False)
    otp_token: str = attrs.field(repr=False)
    client_addr: str


@attrs.frozen
class UserName:
    user: str


class CompleteInvite(AuthCommand[SignUp, UserName]):
    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class Login:
    user: str
    password: str = attrs.field(repr=False)
    otp_token: str = attrs.field(repr=False)
    pub_key: str
    ttl: int
    client_addr: str


@attrs.frozen
class IssuedCertificate:
    username: str
    cert: str
    valid_before: int
    host_signers: tuple[HostSigner, ...]


class AuthenticateSSHUser(AuthCommand[Login, IssuedCertificate]):
    """Password + OTP in, a short-lived OpenSSH user certificate out."""

    roles = frozenset({ROLE_PROXY})


# --- web sessions, on behalf of a person at a proxy's web UI
#
# A web session is two secrets: the cookie (``__Host-session``, HttpOnly, so
# page scripts never see it) and the bearer token (held by the page, sent in
# ``Authorization``; a cross-site request cannot add it).  Every call needs
# both; the auth service keeps only their hashes, so any proxy of the cluster
# serves any session.  The session's user certificate is for a key the
# serving proxy made and keeps in memory: it never reaches the browser, and
# no private key is stored.


@attrs.frozen
class WebCredentials:
    """What a browser presents on every call, and the serving proxy's idle limit.

    The requests below that act on a session extend it (attrs inheritance),
    so its fields travel flat, as keyword arguments of the server's method.
    """

    cookie: str = attrs.field(repr=False)
    bearer: str = attrs.field(repr=False)
    #: ``proxy_service.web_idle_timeout`` of the proxy asking.
    idle_timeout: int


@attrs.frozen
class WebSessionInfo:
    """A live web session: who, and until when."""

    #: A public id for logs, audit and the session list (not a secret).
    id: str
    user: str
    roles: tuple[str, ...]
    #: The user's own logins (the ``{{internal.logins}}`` trait).
    logins: tuple[str, ...]
    created: float
    last_active: float
    #: The absolute end: the user's certificate TTL from login, at most 12 h.
    expires: float

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WebSessionInfo:
        return cls(
            id=str(data["id"]),
            user=str(data["user"]),
            roles=tuple(str(r) for r in data["roles"]),
            logins=tuple(str(n) for n in data["logins"]),
            created=float(data["created"]),
            last_active=float(data["last_active"]),
            expires=float(data["expires"]),
        )


@attrs.frozen
class WebLogin:
    user: str
    password: str = attrs.field(repr=False)
    otp_token: str = attrs.field(repr=False)
    #: The serving proxy's public key for this session's user certificate.
    pub_key: str
    client_addr: str


@attrs.frozen
class NewWebSession:
    cookie: str = attrs.field(repr=False)
    bearer: str = attrs.field(repr=False)
    info: WebSessionInfo
    #: A user certificate for ``pub_key``, valid until the session's end.
    cert: str


class CreateWebSession(AuthCommand[WebLogin, NewWebSession]):
    """Password + OTP in (the same checks and lock-out as `AuthenticateSSHUser`),
    a web session and its user certificate out; audited as a web login."""

    roles = frozenset({ROLE_PROXY})


class AuthenticateWebSession(AuthCommand[WebCredentials, WebSessionInfo]):
    """The session these secrets name, if live; counts as activity.

    Unknown, idle past ``idle_timeout`` or past its end: `SessionExpired`.
    """

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class WebSessionKey(WebCredentials):
    pub_key: str


@attrs.frozen
class WebSessionCertificate:
    cert: str
    valid_before: int


class SignWebSessionKey(AuthCommand[WebSessionKey, WebSessionCertificate]):
    """A user certificate for a live web session, for a key of the asking proxy
    (a proxy other than the one the person logged in at), valid until the
    session's end."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class RenewedWebSession:
    cookie: str = attrs.field(repr=False)
    bearer: str = attrs.field(repr=False)
    info: WebSessionInfo


class RenewWebSession(AuthCommand[WebCredentials, RenewedWebSession]):
    """New secrets for a live session (the old ones stop working at once); its
    absolute end stays: only a new login goes past it."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class WebLogout(WebCredentials):
    client_addr: str


class DeleteWebSession(AuthCommand[WebLogout, Empty]):
    """Log out: the session is gone for every proxy; audited."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class PasswordChange(WebCredentials):
    old_password: str = attrs.field(repr=False)
    otp_token: str = attrs.field(repr=False)
    new_password: str = attrs.field(repr=False)
    client_addr: str


class ChangePassword(AuthCommand[PasswordChange, Empty]):
    """The session's user changes their password (current one + a code, the
    same lock-out as a login); the user's other web sessions end; audited."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class EnrolmentStart(WebCredentials):
    password: str = attrs.field(repr=False)
    client_addr: str


@attrs.frozen
class PendingAuthenticator:
    totp_secret: str = attrs.field(repr=False)
    otpauth_uri: str = attrs.field(repr=False)
    #: Until when a code from it confirms it.
    expires: float


class StartAuthenticatorEnrolment(AuthCommand[EnrolmentStart, PendingAuthenticator]):
    """A new TOTP secret for the session's user (their password confirms it is
    them), pending until a code from it arrives; the old one stays in force."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class EnrolmentConfirmation(WebCredentials):
    otp_token: str = attrs.field(repr=False)
    client_addr: str


class ConfirmAuthenticatorEnrolment(AuthCommand[EnrolmentConfirmation, Empty]):
    """A code from the pending authenticator makes it the user's (the old one
    stops working); audited."""

    roles = frozenset({ROLE_PROXY})


# --- live sessions the proxies hold (listed by any proxy; joined later)


@attrs.frozen
class SessionRegistration:
    session: ActiveSession


class UpsertActiveSession(AuthCommand[SessionRegistration, Empty]):
    """A proxy registers a live session, and again on each change (size,
    parties) and every `SESSION_HEARTBEAT` seconds while it lives.  The first
    registration is audited as ``session.start``."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class SessionEnd:
    id: str
    #: The exit status, or None when the shell ended without one (a signal, a lost node).
    exit_code: int | None
    reason: str


class EndActiveSession(AuthCommand[SessionEnd, Empty]):
    """The session is over; audited as ``session.end`` (exit status, duration)."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class ActiveSessions:
    sessions: tuple[ActiveSession, ...]


class ListActiveSessions(AuthCommand[Empty, ActiveSessions]):
    """Every live session of the cluster, whichever proxy holds it."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY})


#: How often a proxy re-registers a live session; one unheard of for three
#: times as long is dropped from the list.
SESSION_HEARTBEAT = 30


# --- audit


@attrs.frozen
class EventQuery:
    since: float | None = None
    until: float | None = None
    events: tuple[str, ...] = ()
    user: str | None = None
    limit: int = 1000


@attrs.frozen
class Events:
    events: tuple[AuditEvent, ...]


class SearchEvents(AuthCommand[EventQuery, Events]):
    pass


@attrs.frozen
class Report:
    event: str
    user: str
    success: bool
    #: Free-form, bounded on the server (teleconch.auth.audit).
    fields: Mapping[str, Any]


class EmitAuditEvent(AuthCommand[Report, Empty]):
    """A proxy or node reports what it did or refused."""

    roles = frozenset({ROLE_PROXY, ROLE_NODE})


# --- nodes


@attrs.frozen
class NodeRegistration:
    name: str
    addr: str
    labels: Mapping[str, str]


@attrs.frozen
class NodeRecord:
    node: Node


class UpsertNode(AuthCommand[NodeRegistration, NodeRecord]):
    """Register a server (an OpenSSH sshd or a teleconch node) by name and address."""


@attrs.frozen
class Nodes:
    nodes: tuple[Node, ...]


class ListNodes(AuthCommand[Empty, Nodes]):
    """Every registered node; the proxy filters by the user's roles."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY})


class DeleteNode(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class HostKey:
    public_key: str
    hosts: tuple[str, ...]
    ttl: int


@attrs.frozen
class HostCertificate:
    cert: str
    principals: tuple[str, ...]


class SignHostCertificate(AuthCommand[HostKey, HostCertificate]):
    """An OpenSSH host certificate for a node's own key (``auth sign --host``).

    The node's private key is made where it will live; only its public key
    travels here.
    """


@attrs.frozen
class NodeJoin:
    """A node's join: the token's public name and a proof, never the token."""

    token_name: str
    proof: str = attrs.field(repr=False)
    name: str
    addr: str
    labels: Mapping[str, str]
    public_key: str
    client_addr: str


@attrs.frozen
class Document:
    """An answer the auth service signed, for the node to check."""

    document: Attested


class JoinOpenSSHNode(AuthCommand[NodeJoin, Document]):
    """An OpenSSH node joins itself with a node token, through the proxy's web API.

    The token never travels: the node names it (its public name) and proves
    it holds it with an HMAC over what it asks for (name, address, labels,
    public host key; ``teleconch.auth.attest.join_proof``), so whoever relays
    the request cannot change it.  The answer (host certificate, user CA) is
    attested by the auth service, bound to that proof.
    """

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class Renewal:
    cert: str
    timestamp: int
    signature: str
    client_addr: str


class RenewNodeCertificate(AuthCommand[Renewal, Document]):
    """A joined node renews its host certificate, signing it with its host key."""

    roles = frozenset({ROLE_PROXY})


# --- session recordings (teleconch.recording_format; teleconch.auth.recordings)


@attrs.frozen
class RecordingMode:
    #: `node` or `proxy`: web terminal sessions are recorded; `off`: not.
    mode: str


class GetRecordingMode(AuthCommand[Empty, RecordingMode]):
    """The cluster's ``auth_service.session_recording``, which proxies follow."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY})


@attrs.frozen
class RecordingStart:
    id: str
    #: What the recording is of: user, login, node, client_addr, cols, rows, start.
    meta: Mapping[str, Any]


@attrs.frozen
class RecordingState:
    #: Bytes stored so far: where the upload goes on.
    size: int
    complete: bool


class StartRecording(AuthCommand[RecordingStart, RecordingState]):
    """A proxy starts (or resumes) uploading a recording; again is harmless."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class RecordingFrame:
    id: str
    offset: int
    #: One whole frame of `teleconch.recording_format`.
    frame: bytes


@attrs.frozen
class RecordingSize:
    size: int


class AppendRecording(AuthCommand[RecordingFrame, RecordingSize]):
    """One frame at ``offset``; a retry of a stored frame is a no-op."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class RecordingEnd:
    id: str
    duration_ms: int


class CompleteRecording(AuthCommand[RecordingEnd, RecordingSize]):
    """Every frame is stored: audited once as ``session.upload``."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class RecordingEntry:
    id: str
    user: str
    node: str
    login: str
    start: float
    duration_ms: int
    size: int
    complete: bool

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> RecordingEntry:
        return cls(**value)


@attrs.frozen
class Recordings:
    recordings: tuple[RecordingEntry, ...]


class ListRecordings(AuthCommand[Empty, Recordings]):
    """Every recording, oldest first."""

    roles = frozenset({ROLE_ADMIN})


@attrs.frozen
class RecordingRange:
    id: str
    start: int
    length: int


@attrs.frozen
class RecordingBytes:
    data: bytes
    size: int
    complete: bool


class ReadRecording(AuthCommand[RecordingRange, RecordingBytes]):
    """Up to `RECORDING_READ` bytes of a recording from ``start``."""

    roles = frozenset({ROLE_ADMIN})


class DeleteRecording(AuthCommand[Name, Empty]):
    """Remove a recording and its index; audited as ``recording.delete``."""

    roles = frozenset({ROLE_ADMIN})


#: The most one ReadRecording returns (one AMP value).
RECORDING_READ = 60_000
