"""Web sessions and the live sessions proxies hold, on behalf of people at the web UI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from teleconch.auth.types import (
    ActiveSession,
)
from teleconch.auth.wire import (
    AuthCommand,
    Empty,
)
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY

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


class CheckWebSession(AuthCommand[WebCredentials, WebSessionInfo]):
    """The session these secrets name, if live, WITHOUT counting as activity:
    a terminal that only shows output learns that its session went idle
    (or was ended elsewhere) and closes.  Refusals as `AuthenticateWebSession`.
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
