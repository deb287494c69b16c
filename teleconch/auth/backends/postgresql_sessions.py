"""The PostgreSQLStore's web sessions, live sessions and self-service
account changes.

A mixin, as ``sqlite_sessions`` is for SQLite: PostgreSQLStore gives it
``_run`` (a function of a connection, in a pool thread) and ``_write``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from teleconch.auth.backends.postgresql_schema import WEB_SESSIONS
from teleconch.auth.backends.sqlite_schema import dump
from teleconch.auth.store import AlreadyExists, NotFound
from teleconch.auth.types import ActiveSession, LiveSession, WebSession

if TYPE_CHECKING:
    import psycopg

_T = TypeVar("_T")


def _live(row: Mapping[str, Any]) -> LiveSession:
    record = ActiveSession.from_json(json.loads(row["record"]))
    return LiveSession(record, float(row["heard"]))


def _live_params(live: LiveSession) -> dict[str, Any]:
    s = live.session
    return {
        "id": s.id,
        "proxy": s.proxy,
        "created": s.created,
        "heard": live.heard,
        "record": dump(s.to_json()),
    }


class PostgreSQLSessions:
    """Implemented by PostgreSQLStore: how to reach a connection."""

    async def _run(
        self, fn: Callable[[psycopg.Connection[Any]], _T], tx: bool = True
    ) -> _T:
        raise NotImplementedError

    async def _write(self, sql: str, args: Any = ()) -> int:
        raise NotImplementedError

    async def _one(self, sql: str, args: Any = ()) -> dict[str, Any] | None:
        raise NotImplementedError

    async def _all(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    # -- account changes ------------------------------------------------------

    async def set_password(self, name: str, password_hash: bytes) -> bool:
        sql = "UPDATE users SET password_hash = %s WHERE name = %s"
        return await self._write(sql, (password_hash, name)) > 0

    async def set_totp(self, name: str, secret: str, counter: int) -> bool:
        sql = (
            "UPDATE users SET totp_secret = %s, totp_last_counter = %s WHERE name = %s"
        )
        return await self._write(sql, (secret, counter, name)) > 0

    # -- web sessions ---------------------------------------------------------

    async def add_web_session(self, session: WebSession) -> None:
        def op(c: psycopg.Connection[Any]) -> None:
            # The user's row is locked, so a racing delete_user waits: the
            # session is never left without its user (the foreign key would
            # refuse it anyway).
            sql = "SELECT 1 FROM users WHERE name = %s FOR SHARE"
            if c.execute(sql, (session.user,)).fetchone() is None:
                raise NotFound(f"no user {session.user!r}")
            insert = WEB_SESSIONS.insert + " ON CONFLICT DO NOTHING"
            if c.execute(insert, WEB_SESSIONS.params(session)).rowcount == 0:
                raise AlreadyExists(f"web session {session.id!r} exists")

        await self._run(op)

    async def get_web_session(self, cookie_hash: str) -> WebSession | None:
        sql = "SELECT * FROM web_sessions WHERE cookie_hash = %s"
        row = await self._one(sql, (cookie_hash,))
        return None if row is None else WEB_SESSIONS.load(row)

    async def touch_web_session(self, session_id: str, when: float) -> None:
        sql = (
            "UPDATE web_sessions SET last_active = %(w)s"
            " WHERE id = %(id)s AND last_active < %(w)s"
        )
        await self._write(sql, {"w": when, "id": session_id})

    async def renew_web_session(
        self,
        session_id: str,
        cookie_hash: str,
        new_cookie_hash: str,
        new_bearer_hash: str,
    ) -> bool:
        def op(c: psycopg.Connection[Any]) -> bool:
            import psycopg

            sql = (
                "UPDATE web_sessions SET cookie_hash = %s, bearer_hash = %s"
                " WHERE id = %s AND cookie_hash = %s"
            )
            args = (new_cookie_hash, new_bearer_hash, session_id, cookie_hash)
            try:
                return c.execute(sql, args).rowcount > 0
            except psycopg.errors.UniqueViolation:  # cookie_hash is UNIQUE
                raise AlreadyExists("that cookie hash is taken") from None

        return await self._run(op)

    async def set_pending_totp(
        self, session_id: str, secret: str | None, expires: float
    ) -> bool:
        sql = (
            "UPDATE web_sessions SET pending_totp_secret = %s,"
            " pending_totp_expires = %s WHERE id = %s"
        )
        return await self._write(sql, (secret, expires, session_id)) > 0

    async def delete_web_session(self, session_id: str) -> bool:
        sql = "DELETE FROM web_sessions WHERE id = %s"
        return await self._write(sql, (session_id,)) > 0

    async def delete_user_web_sessions(self, user: str, keep: str | None = None) -> int:
        sql = 'DELETE FROM web_sessions WHERE "user" = %s AND id IS DISTINCT FROM %s'
        return await self._write(sql, (user, keep))

    async def purge_web_sessions(self, now: float) -> int:
        return await self._write("DELETE FROM web_sessions WHERE expires <= %s", (now,))

    # -- live sessions --------------------------------------------------------

    async def add_live_session(self, live: LiveSession) -> None:
        sql = (
            "INSERT INTO live_sessions (id, proxy, created, heard, record)"
            " VALUES (%(id)s, %(proxy)s, %(created)s, %(heard)s, %(record)s)"
            " ON CONFLICT DO NOTHING"
        )
        if await self._write(sql, _live_params(live)) == 0:
            raise AlreadyExists(f"live session {live.session.id!r} exists")

    async def get_live_session(self, session_id: str) -> LiveSession | None:
        row = await self._one(
            "SELECT * FROM live_sessions WHERE id = %s", (session_id,)
        )
        return None if row is None else _live(row)

    async def update_live_session(self, live: LiveSession) -> bool:
        sql = (
            "UPDATE live_sessions SET created = %(created)s, heard = %(heard)s,"
            " record = %(record)s WHERE id = %(id)s AND proxy = %(proxy)s"
        )
        return await self._write(sql, _live_params(live)) > 0

    async def list_live_sessions(self) -> list[LiveSession]:
        rows = await self._all("SELECT * FROM live_sessions ORDER BY created, id")
        return [_live(r) for r in rows]

    async def delete_live_session(self, session_id: str) -> bool:
        sql = "DELETE FROM live_sessions WHERE id = %s"
        return await self._write(sql, (session_id,)) > 0
