"""The SQLiteStore's web sessions, live sessions and self-service account
changes.

A mixin: SQLiteStore gives it ``_run`` (a function of the connection, in the
store's one thread) and ``_write``; nothing here touches SQLite elsewhere.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from teleconch.auth.backends.sqlite_schema import WEB_SESSIONS, dump
from teleconch.auth.store import AlreadyExists, NotFound
from teleconch.auth.types import ActiveSession, LiveSession, WebSession

_T = TypeVar("_T")


def _live(row: sqlite3.Row) -> LiveSession:
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


class SQLiteSessions:
    """Implemented by SQLiteStore: how to reach the connection."""

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        raise NotImplementedError

    async def _write(self, sql: str, args: Any = ()) -> int:
        raise NotImplementedError

    # -- account changes ------------------------------------------------------

    async def set_password(self, name: str, password_hash: bytes) -> bool:
        sql = "UPDATE users SET password_hash = ? WHERE name = ?"
        return await self._write(sql, (password_hash, name)) > 0

    async def set_totp(self, name: str, secret: str, counter: int) -> bool:
        sql = "UPDATE users SET totp_secret = ?, totp_last_counter = ? WHERE name = ?"
        return await self._write(sql, (secret, counter, name)) > 0

    # -- web sessions ---------------------------------------------------------

    async def add_web_session(self, session: WebSession) -> None:
        def op(c: sqlite3.Connection) -> None:
            with c:
                c.execute("BEGIN IMMEDIATE")
                sql = "SELECT 1 FROM users WHERE name = ?"
                if c.execute(sql, (session.user,)).fetchone() is None:
                    raise NotFound(f"no user {session.user!r}")
                insert = WEB_SESSIONS.insert + " ON CONFLICT DO NOTHING"
                if c.execute(insert, WEB_SESSIONS.params(session)).rowcount == 0:
                    raise AlreadyExists(f"web session {session.id!r} exists")

        await self._run(op)

    async def get_web_session(self, cookie_hash: str) -> WebSession | None:
        sql = "SELECT * FROM web_sessions WHERE cookie_hash = ?"
        row = await self._run(lambda c: c.execute(sql, (cookie_hash,)).fetchone())
        return None if row is None else WEB_SESSIONS.load(row)

    async def touch_web_session(self, session_id: str, when: float) -> None:
        sql = (
            "UPDATE web_sessions SET last_active = ?1"
            " WHERE id = ?2 AND last_active < ?1"
        )
        await self._write(sql, (when, session_id))

    async def renew_web_session(
        self,
        session_id: str,
        cookie_hash: str,
        new_cookie_hash: str,
        new_bearer_hash: str,
    ) -> bool:
        sql = (
            "UPDATE web_sessions SET cookie_hash = ?, bearer_hash = ?"
            " WHERE id = ? AND cookie_hash = ?"
        )
        args = (new_cookie_hash, new_bearer_hash, session_id, cookie_hash)

        def op(c: sqlite3.Connection) -> bool:
            with c:
                try:
                    return c.execute(sql, args).rowcount > 0
                except sqlite3.IntegrityError:  # cookie_hash is UNIQUE
                    raise AlreadyExists("that cookie hash is taken") from None

        return await self._run(op)

    async def set_pending_totp(
        self, session_id: str, secret: str | None, expires: float
    ) -> bool:
        sql = (
            "UPDATE web_sessions SET pending_totp_secret = ?,"
            " pending_totp_expires = ? WHERE id = ?"
        )
        return await self._write(sql, (secret, expires, session_id)) > 0

    async def delete_web_session(self, session_id: str) -> bool:
        sql = "DELETE FROM web_sessions WHERE id = ?"
        return await self._write(sql, (session_id,)) > 0

    async def delete_user_web_sessions(self, user: str, keep: str | None = None) -> int:
        sql = "DELETE FROM web_sessions WHERE user = ? AND id IS NOT ?"
        return await self._write(sql, (user, keep))

    async def purge_web_sessions(self, now: float) -> int:
        return await self._write("DELETE FROM web_sessions WHERE expires <= ?", (now,))

    # -- live sessions --------------------------------------------------------

    async def add_live_session(self, live: LiveSession) -> None:
        sql = (
            "INSERT INTO live_sessions (id, proxy, created, heard, record)"
            " VALUES (:id, :proxy, :created, :heard, :record) ON CONFLICT DO NOTHING"
        )
        if await self._write(sql, _live_params(live)) == 0:
            raise AlreadyExists(f"live session {live.session.id!r} exists")

    async def get_live_session(self, session_id: str) -> LiveSession | None:
        sql = "SELECT * FROM live_sessions WHERE id = ?"
        row = await self._run(lambda c: c.execute(sql, (session_id,)).fetchone())
        return None if row is None else _live(row)

    async def update_live_session(self, live: LiveSession) -> bool:
        sql = (
            "UPDATE live_sessions SET created = :created, heard = :heard,"
            " record = :record WHERE id = :id AND proxy = :proxy"
        )
        return await self._write(sql, _live_params(live)) > 0

    async def list_live_sessions(self) -> list[LiveSession]:
        sql = "SELECT * FROM live_sessions ORDER BY created, id"
        rows = await self._run(lambda c: c.execute(sql).fetchall())
        return [_live(r) for r in rows]

    async def delete_live_session(self, session_id: str) -> bool:
        sql = "DELETE FROM live_sessions WHERE id = ?"
        return await self._write(sql, (session_id,)) > 0
