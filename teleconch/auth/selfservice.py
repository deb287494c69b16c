"""Changes people make to their own account from a web session: a new
password, a new authenticator.

Both ask again for proof through the login check (`Logins`), so a failure
counts towards the lock-out exactly as a failed login does, and a one-time
code is good once.  The new authenticator waits on the web session that
showed it (``WebSession.pending_totp_secret``) for `ENROLMENT_TTL`: it goes
with that session, and no other session can confirm it.  Until a code from it
arrives, the old authenticator stays in force.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from teleconch import totp
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.login import (
    LOCKOUT_FAILURES,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    Logins,
    Passwords,
)
from teleconch.auth.websessions import WebSessions

#: How long a new authenticator waits for a code from it.
ENROLMENT_TTL = 10 * 60

PASSWORD_CHANGE = "user.password.change"  # noqa: S105 (an event name)
MFA_CHANGE = "user.mfa.change"


class AccountChanges:
    """A person's password and authenticator, changed by that person."""

    def __init__(
        self,
        clock: IReactorTime,
        log: AuditLog,
        logins: Logins,
        passwords: Passwords,
        sessions: WebSessions,
        cluster_name: str,
    ) -> None:
        self._clock = clock
        self.audit = log.audit
        self._logins = logins
        self._passwords = passwords
        self._sessions = sessions
        self.store = sessions.store
        self.cluster_name = cluster_name

    def _now(self) -> float:
        return self._clock.seconds()

    async def change_password(
        self,
        creds: api.WebCredentials,
        old_password: str,
        otp_token: str,
        new_password: str,
        client_addr: str,
    ) -> None:
        """The current password and a code, then the new password; the
        user's other web sessions end (whoever else held one is out)."""
        session = await self._sessions.live(creds)
        name = session.user
        if not MIN_PASSWORD_LENGTH <= len(new_password) <= MAX_PASSWORD_LENGTH:
            await self._failed(
                PASSWORD_CHANGE, name, client_addr, "new password too short"
            )
            raise api.BadParameter(
                f"the new password must be at least {MIN_PASSWORD_LENGTH} characters "
                "long; your password is unchanged"
            )
        try:
            await self._logins.check_login(
                name, old_password, otp_token, client_addr, event=PASSWORD_CHANGE
            )
        except api.AuthenticationFailed:
            raise api.AuthenticationFailed(
                "your current password or the one-time code is wrong (check that "
                "your device's clock is right); your password is unchanged, and "
                f"{LOCKOUT_FAILURES} failures in a row lock the account"
            ) from None
        hashed = await self._passwords.hash(new_password)
        if not await self.store.set_password(name, hashed):
            raise api.SessionExpired("your account has been removed meanwhile")
        await self._sessions.end_user_sessions(
            name, keep=session.id, reason="password changed"
        )
        await self.audit(
            PASSWORD_CHANGE, user=name, client_addr=client_addr, session_id=session.id
        )

    async def start_enrolment(
        self, creds: api.WebCredentials, password: str, client_addr: str
    ) -> api.PendingAuthenticator:
        """A new TOTP secret, pending on this session; the password confirms
        it is the person (a wrong one counts as a failed login)."""
        session = await self._sessions.live(creds)
        try:
            await self._logins.check_password(
                session.user, password, client_addr, event=MFA_CHANGE
            )
        except api.AuthenticationFailed:
            raise api.AuthenticationFailed(
                "your password is wrong; your authenticator is unchanged, and "
                f"{LOCKOUT_FAILURES} failures in a row lock the account"
            ) from None
        secret = totp.new_secret()
        expires = self._now() + ENROLMENT_TTL
        if not await self.store.set_pending_totp(session.id, secret, expires):
            raise api.SessionExpired("your web session ended meanwhile: log in again")
        return api.PendingAuthenticator(
            totp_secret=secret,
            otpauth_uri=totp.otpauth_uri(secret, session.user, self.cluster_name),
            expires=expires,
        )

    async def confirm_enrolment(
        self, creds: api.WebCredentials, otp_token: str, client_addr: str
    ) -> None:
        """A code from the pending authenticator makes it the user's: the old
        one stops working, and this code is spent."""
        session = await self._sessions.live(creds)
        name, secret = session.user, session.pending_totp_secret
        now = self._now()
        if secret is None or now >= session.pending_totp_expires:
            await self._failed(MFA_CHANGE, name, client_addr, "no enrolment pending")
            raise api.NotFoundError(
                "no new authenticator is waiting to be confirmed (one waits "
                f"{ENROLMENT_TTL // 60} minutes): start the enrolment again"
            )
        counter = totp.match(secret, otp_token, now)
        if counter is None:
            await self._failed(
                MFA_CHANGE, name, client_addr, "wrong code from the new authenticator"
            )
            raise api.AuthenticationFailed(
                "the code does not match the new authenticator: enter the code it "
                "shows now, and check your device's clock"
            )
        if not await self.store.set_totp(name, secret, counter):
            raise api.SessionExpired("your account has been removed meanwhile")
        await self.store.set_pending_totp(session.id, None, 0.0)
        await self.audit(
            MFA_CHANGE, user=name, client_addr=client_addr, session_id=session.id
        )

    async def _failed(
        self, event: str, user: str, client_addr: str, reason: str
    ) -> None:
        await self.audit(
            event, user=user, success=False, client_addr=client_addr, reason=reason
        )
