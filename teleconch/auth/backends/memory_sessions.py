"""The MemoryStore's web sessions, live sessions and self-service account
changes: the same semantics as ``sqlite_sessions``, on dicts.

A mixin: MemoryStore gives it its users and its session dicts (both checked
open); every record is copied in and out, and a live session goes through
JSON as it does in SQLite.
"""

from __future__ import annotations

import copy
import json

import attrs

from teleconch.auth.store import AlreadyExists, NotFound
from teleconch.auth.types import ActiveSession, LiveSession, User, WebSession


@attrs.define
class SessionData:
    web: dict[str, WebSession] = attrs.Factory(dict)  # by id
    live: dict[str, LiveSession] = attrs.Factory(dict)  # by id

    def drop_user(self, user: str, keep: str | None = None) -> int:
        gone = [i for i, s in self.web.items() if s.user == user and i != keep]
        for i in gone:
            del self.web[i]
        return len(gone)


def _as_stored(live: LiveSession) -> LiveSession:
    """The record as SQLite would give it back: through its JSON form."""
    data = json.loads(json.dumps(live.session.to_json(), sort_keys=True))
    return LiveSession(ActiveSession.from_json(data), float(live.heard))


class MemorySessions:
    """Implemented by MemoryStore: where the records are."""

    @property
    def _users(self) -> dict[str, User]:
        raise NotImplementedError

    @property
    def _sessions(self) -> SessionData:
        raise NotImplementedError

    # -- account changes ------------------------------------------------------

    async def set_password(self, name: str, password_hash: bytes) -> bool:
        user = self._users.get(name)
        if user is None:
            return False
        self._users[name] = attrs.evolve(user, password_hash=bytes(password_hash))
        return True

    async def set_totp(self, name: str, secret: str, counter: int) -> bool:
        user = self._users.get(name)
        if user is None:
            return False
        self._users[name] = attrs.evolve(
            user, totp_secret=secret, totp_last_counter=counter
        )
        return True

    # -- web sessions ---------------------------------------------------------

    def _by_cookie(self, cookie_hash: str) -> WebSession | None:
        for session in self._sessions.web.values():
            if session.cookie_hash == cookie_hash:
                return session
        return None

    async def add_web_session(self, session: WebSession) -> None:
        if session.user not in self._users:
            raise NotFound(f"no user {session.user!r}")
        web = self._sessions.web
        if session.id in web or self._by_cookie(session.cookie_hash) is not None:
            raise AlreadyExists(f"web session {session.id!r} exists")
        web[session.id] = copy.deepcopy(session)

    async def get_web_session(self, cookie_hash: str) -> WebSession | None:
        return copy.deepcopy(self._by_cookie(cookie_hash))

    async def touch_web_session(self, session_id: str, when: float) -> None:
        session = self._sessions.web.get(session_id)
        if session is not None and when > session.last_active:
            self._sessions.web[session_id] = attrs.evolve(session, last_active=when)

    async def renew_web_session(
        self,
        session_id: str,
        cookie_hash: str,
        new_cookie_hash: str,
        new_bearer_hash: str,
    ) -> bool:
        session = self._sessions.web.get(session_id)
        if session is None or session.cookie_hash != cookie_hash:
            return False
        if self._by_cookie(new_cookie_hash) is not None:
            raise AlreadyExists("that cookie hash is taken")
        self._sessions.web[session_id] = attrs.evolve(
            session, cookie_hash=new_cookie_hash, bearer_hash=new_bearer_hash
        )
        return True

    async def set_pending_totp(
        self, session_id: str, secret: str | None, expires: float
    ) -> bool:
        session = self._sessions.web.get(session_id)
        if session is None:
            return False
        self._sessions.web[session_id] = attrs.evolve(
            session, pending_totp_secret=secret, pending_totp_expires=expires
        )
        return True

    async def delete_web_session(self, session_id: str) -> bool:
        return self._sessions.web.pop(session_id, None) is not None

    async def delete_user_web_sessions(self, user: str, keep: str | None = None) -> int:
        return self._sessions.drop_user(user, keep)

    async def purge_web_sessions(self, now: float) -> int:
        web = self._sessions.web
        ended = [i for i, s in web.items() if s.expires <= now]
        for i in ended:
            del web[i]
        return len(ended)

    # -- live sessions --------------------------------------------------------

    async def add_live_session(self, live: LiveSession) -> None:
        if live.session.id in self._sessions.live:
            raise AlreadyExists(f"live session {live.session.id!r} exists")
        self._sessions.live[live.session.id] = _as_stored(live)

    async def get_live_session(self, session_id: str) -> LiveSession | None:
        live = self._sessions.live.get(session_id)
        return None if live is None else _as_stored(live)

    async def update_live_session(self, live: LiveSession) -> bool:
        known = self._sessions.live.get(live.session.id)
        if known is None or known.session.proxy != live.session.proxy:
            return False
        self._sessions.live[live.session.id] = _as_stored(live)
        return True

    async def list_live_sessions(self) -> list[LiveSession]:
        found = sorted(
            self._sessions.live.values(),
            key=lambda s: (s.session.created, s.session.id),
        )
        return [_as_stored(s) for s in found]

    async def delete_live_session(self, session_id: str) -> bool:
        return self._sessions.live.pop(session_id, None) is not None
