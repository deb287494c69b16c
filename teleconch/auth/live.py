"""The registry of live sessions: what every proxy holds now, listed by any.

A proxy registers a session when it starts, again on each change and every
`SESSION_HEARTBEAT` seconds while it lives, and ends it when it is over.
The auth service keeps the record with the time it last heard of it (its
own clock); a session not heard of for `STALE_AFTER` is taken for gone (its
proxy died or lost the auth service) and ended on the next listing.  Each
session belongs to the proxy that registered it: another may neither
update nor end it.

Audit: the first registration of an id is ``session.start``; its end,
whichever way, is one ``session.end`` (the store's delete decides who gets
to write it, so two listings racing end a stale session once).
"""

from __future__ import annotations

from typing import NoReturn

import attrs
from twisted.internet.interfaces import IReactorTime

from teleconch.addresses import parse_host_port
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.protocol import SESSION_HEARTBEAT
from teleconch.auth.store import AlreadyExists, Store
from teleconch.auth.types import ActiveSession, LiveSession
from teleconch.text import printable

#: A session unheard of for this long is dropped from the list.
STALE_AFTER = 3 * SESSION_HEARTBEAT
STALE_REASON = "its proxy stopped reporting it"

MAX_ID = 128
MAX_PARTIES = 64
MAX_TERMINAL = 10_000
MAX_ADDR = 262  # a DNS name, a colon and a port


def _check(session: ActiveSession) -> None:
    """BadParameter for a record no proxy of ours would send."""
    if not session.id or len(session.id) > MAX_ID or not session.id.isprintable():
        raise api.BadParameter(
            f"a session id must be 1 to {MAX_ID} printable characters"
        )
    if not session.user or not session.login or not session.node:
        raise api.BadParameter("a session names its user, node and login")
    if not (0 < session.cols <= MAX_TERMINAL and 0 < session.rows <= MAX_TERMINAL):
        raise api.BadParameter(
            f"a terminal of {session.cols}x{session.rows} is out of range"
        )
    if len(session.owner_roles) > MAX_PARTIES or not all(
        r.isprintable() and len(r) <= MAX_ID for r in session.owner_roles
    ):
        raise api.BadParameter("a session's owner_roles are role names")
    if len(session.parties) > MAX_PARTIES:
        raise api.BadParameter(f"a session has at most {MAX_PARTIES} parties")
    if session.proxy_addr:
        try:
            ok = len(session.proxy_addr) <= MAX_ADDR and bool(
                parse_host_port(session.proxy_addr).port
            )
        except ValueError:
            ok = False
        if not ok:
            raise api.BadParameter(
                "a session's proxy_addr is the holding proxy's peer address, host:port"
            )


class LiveSessions:
    """Registering, ending and listing the sessions the proxies hold."""

    def __init__(self, store: Store, clock: IReactorTime, log: AuditLog) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit

    def _now(self) -> float:
        return self._clock.seconds()

    async def upsert(self, proxy: str, session: ActiveSession) -> None:
        """Register or refresh ``session`` for ``proxy`` (the caller's name:
        what the record says of its proxy is not believed)."""
        _check(session)
        live = LiveSession(attrs.evolve(session, proxy=proxy), self._now())
        if await self.store.update_live_session(live):
            return
        known = await self.store.get_live_session(session.id)
        if known is not None:
            await self._denied("UpsertActiveSession", proxy, known)
        try:
            await self.store.add_live_session(live)
        except AlreadyExists:  # registered meanwhile: by this proxy, or not
            if not await self.store.update_live_session(live):
                known = await self.store.get_live_session(session.id)
                assert known is not None
                await self._denied("UpsertActiveSession", proxy, known)
            return
        s = live.session
        await self.audit(
            "session.start",
            user=s.user,
            session_id=s.id,
            node=s.node,
            node_id=s.node_id,
            node_addr=s.node_addr,
            login=s.login,
            size=f"{s.cols}:{s.rows}",
            proxy=proxy,
            kind=s.kind,
        )

    async def end(
        self, proxy: str, id: str, exit_code: int | None, reason: str
    ) -> None:
        """The session is over; NotFoundError when it is not registered (it
        ended already, or was dropped as stale)."""
        known = await self.store.get_live_session(id)
        if known is None:
            raise api.NotFoundError(
                f"no live session {printable(id, MAX_ID)!r}: it has ended already, "
                "or was dropped when its proxy stopped reporting it"
            )
        if known.session.proxy != proxy:
            await self._denied("EndActiveSession", proxy, known)
        if await self.store.delete_live_session(id):
            await self._ended(known, exit_code, reason)

    async def current(self) -> list[ActiveSession]:
        """Every session heard of within `STALE_AFTER`; the others end here."""
        now = self._now()
        out = []
        for live in await self.store.list_live_sessions():
            if now - live.heard < STALE_AFTER:
                out.append(live.session)
            elif await self.store.delete_live_session(live.session.id):
                await self._ended(live, None, STALE_REASON)
        return out

    async def _ended(
        self, live: LiveSession, exit_code: int | None, reason: str
    ) -> None:
        s = live.session
        await self.audit(
            "session.end",
            user=s.user,
            session_id=s.id,
            node=s.node,
            login=s.login,
            proxy=s.proxy,
            exit_code=exit_code,
            duration=max(0.0, self._now() - s.created),
            reason=reason,
        )

    async def _denied(self, command: str, proxy: str, known: LiveSession) -> NoReturn:
        await self.audit(
            "auth.api.denied",
            user=proxy,
            success=False,
            command=command,
            caller_role="proxy",
            session_id=known.session.id,
            reason=f"the session is held by proxy {known.session.proxy!r}",
        )
        raise api.AccessDenied(
            f"session {known.session.id!r} is held by another proxy "
            f"({known.session.proxy}): a proxy updates and ends only the sessions "
            "it registered"
        )
