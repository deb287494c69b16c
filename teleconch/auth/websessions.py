"""Web sessions: a login at a proxy's web UI, kept by the auth service so
that any proxy of the cluster serves it.

A session is two secrets (``secrets.token_urlsafe(32)`` each): the cookie,
which page scripts never see, and the bearer token, which a cross-site
request cannot add; every call needs both.  Only their SHA-256 hashes are
stored; a session is found by its cookie's hash and its bearer's is then
compared in constant time.  A session ends at its absolute end (the user
certificate's TTL, at most 12 hours, fixed at login: a renewal never moves
it), when it has been idle for the serving proxy's ``idle_timeout``, at
logout, or when its user is removed or reset (the store deletes them with
the user) or changes their password in another session.  Every call that
finds a session live counts as activity.

Each session has a user certificate for a key of the proxy serving it (the
key never leaves that proxy), valid until the session's end; another proxy
asks for one of its own with `sign_key`.
"""

from __future__ import annotations

import enum
import hmac
import secrets
import uuid

import attrs
from twisted.internet.interfaces import IReactorTime

from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.certs import Certificates, session_ttl_limit, user_public_key
from teleconch.auth.login import Logins
from teleconch.auth.store import Store
from teleconch.auth.tokens import token_hash
from teleconch.auth.types import WebSession

#: A touch of ``last_active`` less than this after the last is skipped: a page
#: making several calls at once costs one write, not one each.
TOUCH_INTERVAL = 1.0

#: What every refusal of a session tells the person to do.
LOG_IN_AGAIN = "log in again"


class Verdict(enum.Enum):
    """What a session's secrets and times say, before any write."""

    LIVE = "live"
    #: The cookie names a session but the bearer is not its (a cross-site
    #: request, or a stolen cookie): refused, the session left alone.
    MISMATCH = "bearer token does not match the session"
    IDLE = "idle too long"
    ENDED = "past its end"


def judge(session: WebSession, bearer: str, now: float, idle_timeout: int) -> Verdict:
    """The verdict on a stored session for these secrets at ``now``."""
    if not hmac.compare_digest(session.bearer_hash, token_hash(bearer)):
        return Verdict.MISMATCH
    if now >= session.expires:
        return Verdict.ENDED
    if now - session.last_active >= idle_timeout:
        return Verdict.IDLE
    return Verdict.LIVE


def info_of(session: WebSession) -> api.WebSessionInfo:
    return api.WebSessionInfo(
        id=session.id,
        user=session.user,
        roles=session.roles,
        logins=session.logins,
        created=session.created,
        last_active=session.last_active,
        expires=session.expires,
    )


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@attrs.frozen
class _Secrets:
    cookie: str = attrs.field(repr=False)
    bearer: str = attrs.field(repr=False)

    @classmethod
    def new(cls) -> _Secrets:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32))


class WebSessions:
    """Creating, checking, renewing and ending web sessions."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        log: AuditLog,
        logins: Logins,
        certs: Certificates,
    ) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit
        self._logins = logins
        self._certs = certs

    def _now(self) -> float:
        return self._clock.seconds()

    async def create(
        self,
        *,
        user: str,
        password: str,
        otp_token: str,
        pub_key: str,
        client_addr: str,
    ) -> api.NewWebSession:
        """A login at the web UI: the checks and lock-out of ``teleconch login``."""
        key = user_public_key(pub_key)
        account = await self._logins.check_login(user, password, otp_token, client_addr)
        roles = await self.store.get_roles(account.roles)
        now = self._now()
        # The table holds no session past its end for long: each login sweeps.
        await self.store.purge_web_sessions(now)
        expires = int(now) + session_ttl_limit(roles)
        fresh = _Secrets.new()
        session = WebSession(
            id=str(uuid.uuid4()),
            user=account.name,
            cookie_hash=token_hash(fresh.cookie),
            bearer_hash=token_hash(fresh.bearer),
            roles=tuple(r.name for r in roles),
            logins=account.logins,
            created=now,
            last_active=now,
            expires=float(expires),
        )
        await self.store.add_web_session(session)
        await self.audit(
            "user.login",
            user=account.name,
            client_addr=client_addr,
            method="password+otp",
            via="web",
            session_id=session.id,
        )
        cert = await self._certs.issue_user_certificate(
            key,
            account.name,
            roles,
            account.logins,
            expires,
            client_addr,
            via="web",
            session_id=session.id,
        )
        return api.NewWebSession(fresh.cookie, fresh.bearer, info_of(session), cert)

    async def live(self, creds: api.WebCredentials, touch: bool = True) -> WebSession:
        """The live session these secrets name, or SessionExpired saying why.

        An idle or ended session is deleted; with ``touch`` the call counts
        as activity.
        """
        if creds.idle_timeout <= 0:
            raise api.BadParameter("idle_timeout must be a positive number of seconds")
        now = self._now()
        session = await self.store.get_web_session(token_hash(creds.cookie))
        if session is None:
            # Not audited here: no session, no user, nothing the proxy's own
            # audit of the refused request lacks, and a stranger's random
            # cookies must not each write a row.
            raise api.SessionExpired(
                f"your web session has ended or is unknown: {LOG_IN_AGAIN}"
            )
        verdict = judge(session, creds.bearer, now, creds.idle_timeout)
        if verdict is Verdict.MISMATCH:
            await self._refused(verdict.value, session)
            raise api.SessionExpired(
                f"this request does not carry your web session's token: {LOG_IN_AGAIN}"
            )
        if verdict is not Verdict.LIVE:
            await self.store.delete_web_session(session.id)
            await self._refused(verdict.value, session)
            if verdict is Verdict.IDLE:
                raise api.SessionExpired(
                    f"your web session ended after {_minutes(creds.idle_timeout)} "
                    f"without activity: {LOG_IN_AGAIN}"
                )
            hours = (session.expires - session.created) / 3600
            raise api.SessionExpired(
                f"your web session reached its end ({hours:.3g} hours after you "
                f"logged in): {LOG_IN_AGAIN}"
            )
        if touch and now - session.last_active >= TOUCH_INTERVAL:
            await self.store.touch_web_session(session.id, now)
            session = attrs.evolve(session, last_active=now)
        return session

    async def _refused(self, reason: str, session: WebSession) -> None:
        await self.audit(
            "web.session.refused",
            user=session.user,
            success=False,
            reason=reason,
            session_id=session.id,
        )

    async def authenticate(self, creds: api.WebCredentials) -> api.WebSessionInfo:
        return info_of(await self.live(creds))

    async def check(self, creds: api.WebCredentials) -> api.WebSessionInfo:
        """As `authenticate`, but a look, not activity."""
        return info_of(await self.live(creds, touch=False))

    async def sign_key(
        self, creds: api.WebCredentials, pub_key: str
    ) -> api.WebSessionCertificate:
        """A certificate for the asking proxy's key, until the session's end."""
        key = user_public_key(pub_key)
        session = await self.live(creds)
        roles = await self.store.get_roles(session.roles)
        valid_before = int(session.expires)
        cert = await self._certs.issue_user_certificate(
            key,
            session.user,
            roles,
            session.logins,
            valid_before,
            "",
            via="web",
            session_id=session.id,
        )
        return api.WebSessionCertificate(cert, valid_before)

    async def renew(self, creds: api.WebCredentials) -> api.RenewedWebSession:
        """New secrets, the same session: its id and its end stay."""
        session = await self.live(creds)
        fresh = _Secrets.new()
        renewed = await self.store.renew_web_session(
            session.id,
            session.cookie_hash,
            token_hash(fresh.cookie),
            token_hash(fresh.bearer),
        )
        if not renewed:  # another request renewed it or ended it meanwhile
            await self._refused("renewed or ended meanwhile", session)
            raise api.SessionExpired(
                f"your web session was renewed or ended by another request: "
                f"{LOG_IN_AGAIN}"
            )
        return api.RenewedWebSession(fresh.cookie, fresh.bearer, info_of(session))

    async def delete(self, creds: api.WebCredentials, client_addr: str) -> None:
        """Log out: gone for every proxy at once."""
        session = await self.live(creds, touch=False)
        if not await self.store.delete_web_session(session.id):
            raise api.SessionExpired(f"your web session has ended: {LOG_IN_AGAIN}")
        await self.audit(
            "user.logout",
            user=session.user,
            client_addr=client_addr,
            via="web",
            session_id=session.id,
        )

    async def end_user_sessions(
        self, user: str, keep: str | None = None, reason: str = ""
    ) -> int:
        """End every web session of ``user`` but ``keep``; audited when any went."""
        ended = await self.store.delete_user_web_sessions(user, keep)
        if ended:
            await self.audit("web.session.end", user=user, count=ended, reason=reason)
        return ended
