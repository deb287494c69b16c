"""People's passwords and one-time codes: hashing (bcrypt, in a thread),
the login check with its lock-out, and completing a sign-up."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any, NoReturn

import bcrypt
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool

from teleconch import totp
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.protocol import InviteInfo
from teleconch.auth.store import Store
from teleconch.auth.tokens import Tokens, token_hash
from teleconch.auth.types import User
from teleconch.auth.validation import USER_NAME_RULE, is_user_name
from teleconch.text import printable

LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW = 10 * 60
LOCKOUT_DURATION = 20 * 60
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 4096

LOGIN_FAILED = (
    "login failed: wrong user name, password or one-time code "
    "(check that your device's clock is right)"
)


def _prehash(password: str) -> bytes:
    """bcrypt reads at most 72 bytes; hash first so every byte counts."""
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def iso_utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Passwords:
    """bcrypt off the reactor, on the reactor's thread pool."""

    def __init__(self, threads: Any, rounds: int) -> None:
        #: A reactor providing IReactorThreads and IReactorFromThreads.
        self._threads = threads
        self._rounds = rounds
        self._dummy_hash: bytes | None = None

    async def _in_thread(self, f: Any, *args: Any) -> Any:
        pool = self._threads.getThreadPool()
        return await deferToThreadPool(self._threads, pool, f, *args)

    async def hash(self, password: str) -> bytes:
        salt = bcrypt.gensalt(self._rounds)
        hashed: bytes = await self._in_thread(bcrypt.hashpw, _prehash(password), salt)
        return hashed

    async def check(self, password: str, hashed: bytes | None) -> bool:
        if hashed is None:
            # Spend the same time as for a real user, so timing does not tell.
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_hex(16))
            hashed = self._dummy_hash
        ok: bool = await self._in_thread(bcrypt.checkpw, _prehash(password), hashed)
        return ok


class Logins:
    """The one door for people: sign-up, then password + one-time code."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        log: AuditLog,
        passwords: Passwords,
        tokens: Tokens,
        cluster_name: str,
    ) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit
        self._passwords = passwords
        self._tokens = tokens
        self.cluster_name = cluster_name
        #: Names whose password is being checked now. One check at a time per
        #: name, so parallel guesses cannot all pass the lock-out check before
        #: any of their failures is counted. (Per auth process.)
        self._checking: set[str] = set()

    def _now(self) -> float:
        return self._clock.seconds()

    # --- sign-up -------------------------------------------------------------

    async def get_invite(self, token: str) -> InviteInfo:
        found = await self._tokens.live_invite(token)
        assert found.user is not None and found.totp_secret is not None
        return InviteInfo(
            user=found.user,
            totp_secret=found.totp_secret,
            otpauth_uri=totp.otpauth_uri(
                found.totp_secret, found.user, self.cluster_name
            ),
            expires=found.expires,
        )

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        found = await self._tokens.live_invite(token)
        assert found.user is not None and found.totp_secret is not None
        if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
            raise api.BadParameter(
                f"the password must be at least {MIN_PASSWORD_LENGTH} characters long"
            )
        counter = totp.match(found.totp_secret, otp_token, self._now())
        if counter is None:
            await self.audit(
                "user.invite.complete",
                user=found.user,
                success=False,
                client_addr=client_addr,
                reason="wrong one-time code",
            )
            raise api.AuthenticationFailed(
                "the one-time code is wrong: enter the current code from your "
                "authenticator app (check that your device's clock is right)"
            )
        hashed = await self._passwords.hash(password)
        user = await self.store.complete_invite(
            token_hash(token), self._now(), hashed, found.totp_secret, counter
        )
        if user is None:
            raise api.NotFoundError("this invite was used or has expired meanwhile")
        await self.store.clear_login_failures(user.name)
        await self.audit(
            "user.invite.complete", user=user.name, client_addr=client_addr
        )
        return user.name

    # --- login ---------------------------------------------------------------

    async def _fail_login(
        self, name: str, client_addr: str, reason: str, event: str = "user.login"
    ) -> NoReturn:
        now = self._now()
        await self.store.add_login_failure(name, now)
        await self.audit(
            event,
            user=name,
            success=False,
            client_addr=client_addr,
            reason=reason,
        )
        failures = await self.store.count_login_failures(name, now - LOCKOUT_WINDOW)
        if failures >= LOCKOUT_FAILURES:
            until = now + LOCKOUT_DURATION
            await self.store.set_lock(name, until)
            await self.audit(
                "user.locked",
                user=name,
                success=False,
                client_addr=client_addr,
                until=until,
                failures=failures,
            )
            raise api.LockedOut(self._locked_message(until))
        raise api.AuthenticationFailed(LOGIN_FAILED)

    @staticmethod
    def _locked_message(until: float) -> str:
        return (
            f"too many failed logins: this account is locked until {iso_utc(until)}; "
            "try again then, or ask an administrator to reset it"
        )

    async def check_login(
        self,
        name: str,
        password: str,
        otp_token: str,
        client_addr: str,
        event: str = "user.login",
    ) -> User:
        """Password and one-time code, with lock-out; the one door for people.

        ``event`` names what a refusal is audited as: a login, or an account
        change that asks for the same proof (its failures count the same).
        """
        return await self._guarded(name, password, otp_token, client_addr, event)

    async def check_password(
        self, name: str, password: str, client_addr: str, event: str
    ) -> User:
        """The password alone, with the same lock-out: for a person already
        logged in with a code who confirms an act with their password.  A
        success here does not forget earlier failures; only a full login does."""
        return await self._guarded(name, password, None, client_addr, event)

    async def _guarded(
        self,
        name: str,
        password: str,
        otp_token: str | None,
        client_addr: str,
        event: str,
    ) -> User:
        if not is_user_name(name):
            await self.audit(
                event,
                user=name,
                success=False,
                client_addr=client_addr,
                reason="invalid user name",
            )
            raise api.BadParameter(
                f"{printable(name, 80)!r} is not a valid user name: use {USER_NAME_RULE}"
            )
        now = self._now()
        until = await self.store.get_lock(name)
        if until is not None and until > now:
            await self.audit(
                event,
                user=name,
                success=False,
                client_addr=client_addr,
                reason="locked",
            )
            raise api.LockedOut(self._locked_message(until))
        if name in self._checking:
            await self.audit(
                event,
                user=name,
                success=False,
                client_addr=client_addr,
                reason="another login in progress",
            )
            raise api.RateLimited(
                "another login for this account is being checked; try again in a moment"
            )
        self._checking.add(name)
        try:
            return await self._check(name, password, otp_token, client_addr, event)
        finally:
            self._checking.discard(name)

    async def _check(
        self,
        name: str,
        password: str,
        otp_token: str | None,
        client_addr: str,
        event: str,
    ) -> User:
        user = await self.store.get_user(name)
        active = user is not None and user.status == "active"
        hashed = user.password_hash if user is not None and active else None
        ok = await self._passwords.check(password, hashed)
        if user is None or not active or not ok or user.totp_secret is None:
            reason = (
                "unknown user"
                if user is None
                else ("sign-up not completed" if not active else "wrong password")
            )
            await self._fail_login(name, client_addr, reason, event)
        if otp_token is None:
            return user
        counter = totp.match(user.totp_secret, otp_token, self._now())
        if counter is None:
            await self._fail_login(name, client_addr, "wrong one-time code", event)
        elif not await self.store.advance_totp_counter(name, counter):
            await self._fail_login(
                name, client_addr, "one-time code already used", event
            )
        await self.store.clear_login_failures(name)
        return user
