"""Web sessions at the proxy: log in, log out, renew, and the rule every
other call of the web API is held to.

A browser holds two secrets of one session, both minted by the auth service:
the ``__Host-session`` cookie (HttpOnly, Secure, SameSite=Strict: script
cannot read it, no other site can make the browser send it) and a bearer
token that the page sends as ``Authorization: Bearer``.  Every call but the
login needs both, and a JSON body where it takes one (a cross-site form
cannot send ``application/json``).  The session itself lives in the auth
service, so any proxy of the cluster serves it; this proxy keeps only the
session's private key and certificate (`WebSessionKeys`) for reaching nodes.

`SessionResource` is that rule, declared once: a route that needs a session
subclasses it and writes ``on_get``/``on_post``/... taking the `Session`.
The cheap checks (both secrets present, a JSON body) are made on the
headers, before a byte of the body is read and before the auth service is
asked; every refusal is audited, bounded per address (`DenialAudit`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent
from teleconch.ca import public_key_line
from teleconch.proxy.routing import Grant
from teleconch.web.http import HTTPError, WebRequest, client_host, no_body
from teleconch.web.jsonapi import (
    BODY_METHODS,
    JSON_ONLY,
    DenialAudit,
    Dir,
    Handler,
    JSONResource,
    RateLimiter,
    UserRefused,
    field,
    is_json,
    json_body,
)
from teleconch.web.keys import SessionKey, WebSessionKeys, new_private_key

COOKIE = b"__Host-session"
LOG_IN_AGAIN = "you are not logged in, or your session has ended: log in again"
#: What the auth service mints (``secrets.token_urlsafe``), with room to spare;
#: anything else is not sent on to it.
_SECRET = re.compile(rb"[A-Za-z0-9_-]{16,256}")


def session_cookie(request: Request) -> bytes | None:
    """The ``__Host-session`` cookie, read from the headers themselves: the
    rule is applied when they are in, before Twisted parses its cookies.
    Sent more than once, it is not taken."""
    found = []
    for header in request.requestHeaders.getRawHeaders(b"cookie", []):
        for pair in header.split(b";"):
            name, eq, value = pair.strip().partition(b"=")
            if eq and name == COOKIE:
                found.append(value)
    return found[0] if len(found) == 1 else None


def no_session(request: Request, message: str = LOG_IN_AGAIN) -> HTTPError:
    """The 401 for a request without a live session.

    ``WWW-Authenticate`` (RFC 6750's ``invalid_token``) tells it apart from
    the 401 of a wrong password (a login, a password change): the page goes
    to the login page on this one only.
    """
    request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
    return HTTPError(401, message)


@attrs.frozen
class Session:
    """A request's live web session: who, and the secrets that proved it."""

    info: api.WebSessionInfo
    creds: api.WebCredentials = attrs.field(repr=False)
    client: str

    @property
    def grant(self) -> Grant:
        """What the router checks, as for the user's certificate."""
        return Grant(self.info.user, self.info.roles, self.info.logins)


class WebSessions:
    """The proxy's one core for web sessions; the resources below call it."""

    def __init__(
        self,
        agent: AuthAgent,
        clock: IReactorTime,
        idle_timeout: int,
        keys: WebSessionKeys,
        denials: DenialAudit,
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.keys = keys
        self.denials = denials

    def presented(self, request: Request) -> api.WebCredentials | None:
        """The cookie and bearer of the request, if it has both, well formed."""
        cookie = session_cookie(request)
        scheme, _, bearer = (request.getHeader(b"authorization") or b"").partition(b" ")
        if scheme.lower() != b"bearer" or cookie is None:
            return None
        bearer = bearer.strip()
        if not (_SECRET.fullmatch(cookie) and _SECRET.fullmatch(bearer)):
            return None
        return api.WebCredentials(cookie.decode(), bearer.decode(), self.idle_timeout)

    async def authenticate(self, request: Request) -> Session:
        """The request's live session (an activity), or a 401 saying to log in."""
        creds = self.presented(request)
        if creds is None:
            raise no_session(request)
        try:
            info = await self.agent.authenticate_web_session(creds)
        except api.SessionExpired as e:
            self.clear_cookie(request)
            raise no_session(request, str(e)) from None
        return Session(info, creds, client_host(request))

    async def login(
        self, request: Request, user: str, password: str, code: str
    ) -> dict[str, Any]:
        key = new_private_key()
        new = await self.agent.create_web_session(
            user,
            password,
            code,
            public_key_line(key.public_key()),
            client_host(request),
        )
        self.keys.put(new.info.id, SessionKey(key, new.cert, new.info.expires))
        self._set_cookie(request, new.cookie, new.info.expires)
        return self._answer(new.bearer, new.info)

    async def renew(self, request: Request, session: Session) -> dict[str, Any]:
        renewed = await self.agent.renew_web_session(session.creds)
        self._set_cookie(request, renewed.cookie, renewed.info.expires)
        return self._answer(renewed.bearer, renewed.info)

    async def logout(self, request: Request, session: Session) -> dict[str, Any]:
        self.clear_cookie(request)
        try:
            await self.agent.delete_web_session(session.creds, session.client)
        finally:
            self.keys.forget(session.info.id)
        return {}

    def _answer(self, bearer: str, info: api.WebSessionInfo) -> dict[str, Any]:
        return {
            "type": "bearer",
            "token": bearer,
            "expires_in": self._seconds_until(info.expires),
            "user": info.user,
            "session_expires": info.expires,
        }

    def _seconds_until(self, when: float) -> int:
        return max(0, int(when - self.clock.seconds()))

    def _set_cookie(self, request: Request, value: str, expires: float) -> None:
        # __Host-: Secure, Path=/ and no Domain, so no subdomain can set or read it.
        request.addCookie(
            COOKIE,
            value.encode("ascii"),
            max_age=str(self._seconds_until(expires)).encode(),
            path=b"/",
            secure=True,
            httpOnly=True,
            sameSite="strict",
        )

    def clear_cookie(self, request: Request) -> None:
        request.addCookie(
            COOKIE,
            b"",
            max_age=b"0",
            path=b"/",
            secure=True,
            httpOnly=True,
            sameSite="strict",
        )


SessionHandler = Callable[[Request, Session], Awaitable[Any]]


class SessionResource(JSONResource):
    """A route that needs a live web session: cookie AND bearer, JSON bodies.

    Subclasses define ``on_get``, ``on_post``, ``on_put``, ``on_delete``,
    each called with the request and its `Session`.  Missing secrets (401)
    and a body that is not JSON (415) are refused on the headers, before
    the body is read or the auth service asked; then the auth service
    checks the secrets (which counts as activity).  Every refusal is
    audited.
    """

    on_get: SessionHandler | None = None
    on_post: SessionHandler | None = None
    on_put: SessionHandler | None = None
    on_delete: SessionHandler | None = None

    def __init__(self, sessions: WebSessions) -> None:
        super().__init__()
        self.sessions = sessions
        self.denials = sessions.denials

    def handler(self, method: bytes) -> Handler | None:
        if method == b"HEAD":
            method = b"GET"
        if method not in (b"GET", b"POST", b"PUT", b"DELETE"):
            return None
        found: SessionHandler | None = getattr(self, "on_" + method.decode().lower())
        return None if found is None else partial(self._with_session, method, found)

    def refusal_on_headers(
        self, request: Request, method: bytes, length: int | None
    ) -> HTTPError | None:
        if self.handler(method) is not None:
            refusal = self._refusal(request, method)
            if refusal is not None:
                return refusal
        return super().refusal_on_headers(request, method, length)

    def _refusal(self, request: Request, method: bytes) -> HTTPError | None:
        if self.sessions.presented(request) is None:
            return no_session(request)
        if method in BODY_METHODS and not is_json(request):
            return HTTPError(415, JSON_ONLY)
        return None

    async def _with_session(
        self, method: bytes, handler: SessionHandler, request: Request
    ) -> Any:
        # Again here: a request that reached this resource without the
        # channel's admission (a test's StubTreq) is held to the same rule.
        refusal = self._refusal(request, method)
        if refusal is not None:
            raise refusal
        session = await self.sessions.authenticate(request)
        try:
            return await handler(request, session)
        except HTTPError as e:
            raise UserRefused(e.status, str(e), session.info.user) from None


class LoginResource(JSONResource):
    """POST /v1/webapi/sessions ``{user, pass, second_factor_token}``: log in.

    Public, and held to the logins' rate limit per address.
    """

    too_many = "too many login attempts from your address; wait a minute"

    def __init__(self, sessions: WebSessions, limiter: RateLimiter) -> None:
        super().__init__()
        self.sessions = sessions
        self.limiter = limiter
        self.denials = sessions.denials

    async def post(self, request: Request) -> Any:
        data = json_body(request)
        return await self.sessions.login(
            request,
            field(data, "user"),
            field(data, "pass"),
            field(data, "second_factor_token"),
        )


class LogoutResource(SessionResource):
    """DELETE /v1/webapi/sessions: the session ends for every proxy."""

    async def on_delete(self, request: Request, session: Session) -> Any:
        return await self.sessions.logout(request, session)

    def _refusal(self, request: Request, method: bytes) -> HTTPError | None:
        refusal = super()._refusal(request, method)
        if refusal is not None:
            # Whatever is left of the session in this browser goes with it.
            self.sessions.clear_cookie(request)
        return refusal


class RenewResource(SessionResource):
    """POST /v1/webapi/sessions/renew: new secrets for the same session."""

    async def on_post(self, request: Request, session: Session) -> Any:
        return await self.sessions.renew(request, session)


class Methods(Dir):
    """One URL whose methods follow different rules, each its resource's own
    (``/v1/webapi/sessions``: logging in is public, logging out is not)."""

    def __init__(self, **by_method: JSONResource) -> None:
        super().__init__()
        self._by_method = {m.upper().encode(): r for m, r in by_method.items()}

    def _for(self, method: bytes) -> JSONResource | None:
        return self._by_method.get(b"GET" if method == b"HEAD" else method)

    def admit(
        self, request: WebRequest, method: bytes, length: int | None
    ) -> HTTPError | None:
        found = self._for(method)
        return (
            no_body(length) if found is None else found.admit(request, method, length)
        )

    def render(self, request: Request) -> Any:
        assert request.method is not None
        found: Resource | None = self._for(request.method)
        if found is None:
            found = _NoSuchMethod()
        return found.render(request)


class _NoSuchMethod(JSONResource):
    """Every method a 405."""
