"""Single-use tokens: join tokens for proxies and nodes, invites and resets
for people.  Only a token's SHA-256 is kept."""

from __future__ import annotations

import hashlib
import secrets

from twisted.internet.interfaces import IReactorTime

from teleconch import totp
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.nodes import Proxies
from teleconch.auth.protocol import Invite, JoinToken
from teleconch.auth.store import Store
from teleconch.auth.types import Token, TokenEntry
from teleconch.pki import ROLE_NODE, ROLE_PROXY, TLSAuthority

INVITE_TTL = 3600
JOIN_TOKEN_TTL = 30 * 60


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    """Minting, listing and removing tokens; finding a live invite."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        log: AuditLog,
        tls_ca: TLSAuthority,
        auth_addr: str,
        proxies: Proxies,
    ) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit
        self._tls_ca = tls_ca
        self.auth_addr = auth_addr
        self._proxies = proxies

    def _now(self) -> float:
        return self._clock.seconds()

    async def create_token(self, kind: str, ttl: int) -> JoinToken:
        if kind not in (ROLE_PROXY, ROLE_NODE):
            raise api.BadParameter(
                f"unknown token type {kind!r}: use --type=proxy or --type=node"
            )
        if not 0 < ttl <= 7 * 86400:
            raise api.BadParameter("token TTL must be between 1 second and 7 days")
        token = secrets.token_hex(32)
        now = await self.add_token(token, kind, ttl)
        await self.audit("token.create", kind=kind, name=token[:8], ttl=ttl)
        return JoinToken(
            token=token,
            expires=now + ttl,
            ca_pin=self._tls_ca.pin,
            auth_addr=self.auth_addr,
            proxy_addr=await self._proxies.public_addr(),
        )

    async def list_tokens(self) -> list[TokenEntry]:
        now = self._now()
        return [
            TokenEntry(name=t.name, kind=t.kind, user=t.user, expires=t.expires)
            for t in await self.store.list_tokens()
            if t.expires > now
        ]

    async def delete_token(self, name: str) -> None:
        for t in await self.store.list_tokens():
            if t.name == name or t.token_hash == token_hash(name):
                await self.store.delete_token(t.token_hash)
                await self.audit("token.delete", name=t.name, kind=t.kind)
                return
        raise api.NotFoundError(
            f"no token {name!r}; list them with `teleconch-ctl tokens ls`"
        )

    async def add_token(
        self, token: str, kind: str, ttl: float, user: str | None = None
    ) -> float:
        """Keep a new single-use token (its hash only); return the time it was made."""
        now = self._now()
        await self.store.add_token(
            Token(
                token_hash=token_hash(token),
                name=token[:8],
                kind=kind,
                created=now,
                expires=now + ttl,
                user=user,
                totp_secret=totp.new_secret() if user is not None else None,
            )
        )
        return now

    async def new_invite(self, user: str, kind: str) -> Invite:
        token = secrets.token_urlsafe(32)
        now = await self.add_token(token, kind, INVITE_TTL, user)
        url = f"https://{await self._proxies.public_addr()}/web/invite/{token}"
        return Invite(user=user, token=token, url=url, expires=now + INVITE_TTL)

    async def live_invite(self, token: str) -> Token:
        found = await self.store.get_token(token_hash(token))
        if (
            found is None
            or found.kind not in ("invite", "reset")
            or found.expires <= self._now()
        ):
            raise api.NotFoundError(
                "this invite is invalid or has expired: ask your administrator for a new "
                "one (`teleconch-ctl users reset NAME`)"
            )
        return found
