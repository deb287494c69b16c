"""The SQLite backend of the auth store.

One connection lives in one dedicated thread: SQLite blocks, the reactor must
not, and a single writer needs no locking of our own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from teleconch.auth.backends import sqlite_streams as streams
from teleconch.auth.backends.sqlite_overrides import SQLiteOverrides
from teleconch.auth.backends.sqlite_schema import (
    EVENTS,
    IDENTITIES,
    NODES,
    PROXIES,
    ROLES,
    SCHEMA_VERSION,
    STREAMS,
    TOKENS,
    USERS,
    Table,
    create_private,
    dump,
    migrate,
)
from teleconch.auth.backends.sqlite_sessions import SQLiteSessions
from teleconch.auth.store import AlreadyExists, NotFound, Store, StoreError
from teleconch.auth.types import (
    AuditEvent,
    JoinedIdentity,
    Node,
    ProxyInfo,
    Role,
    StreamInfo,
    Token,
    User,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_T = TypeVar("_T")
_R = TypeVar("_R", bound=attrs.AttrsInstance)

#: Milliseconds to wait for another process holding the write lock.
BUSY_TIMEOUT_MS = 5000

#: Token kinds that ``complete_invite`` accepts.
_INVITE_KINDS = ("invite", "reset")


def _take_token(c: sqlite3.Connection, token_hash: str, now: float) -> Token | None:
    """Delete the token, returning it if unexpired.  The caller holds the write
    lock (BEGIN IMMEDIATE), so no one else can take it between the two."""
    row = c.execute(
        "SELECT * FROM tokens WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    if row is None:
        return None
    c.execute("DELETE FROM tokens WHERE token_hash = ?", (token_hash,))
    return TOKENS.load(row) if now < row["expires"] else None


#: An id match wins over a name match; among same-named nodes, the newest.
_FIND_NODE = (
    "SELECT * FROM nodes WHERE id = ?1 OR name = ?1"
    " ORDER BY id = ?1 DESC, created DESC, id LIMIT 1"
)


class SQLiteStore(SQLiteSessions, SQLiteOverrides):
    """The Store on one SQLite file, worked on by a one-thread pool.

    Sessions and self-service account changes are in ``sqlite_sessions``,
    the overrides of cluster settings in ``sqlite_overrides``.
    """

    def __init__(self, path: str, reactor: IReactorFromThreads) -> None:
        self.path = path
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing: the plain (non-async) methods run in the pool thread ------

    def _connect(self) -> None:
        try:
            create_private(self.path)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        self._conn = conn
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._conn is None:
            raise StoreError("the store is not open")
        try:
            return fn(self._conn)
        except sqlite3.Error as e:
            raise StoreError(f"sqlite: {e}") from e

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` in the store's thread."""
        if self._pool is None:
            raise StoreError("the store is not open")
        return await deferToThreadPool(self._reactor, self._pool, self._call, fn)

    async def _write(self, sql: str, args: Any = ()) -> int:
        def op(c: sqlite3.Connection) -> int:
            with c:
                return c.execute(sql, args).rowcount

        return await self._run(op)

    async def _get(self, table: Table[_R], sql: str, args: Any) -> _R | None:
        row = await self._run(lambda c: c.execute(sql, args).fetchone())
        return None if row is None else table.load(row)

    async def _list(self, table: Table[_R], sql: str, args: Any = ()) -> list[_R]:
        rows = await self._run(lambda c: c.execute(sql, args).fetchall())
        return [table.load(r) for r in rows]

    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError("the store is open already")
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="teleconch-sqlite")
        self._pool.start()
        try:
            await deferToThreadPool(self._reactor, self._pool, self._connect)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await deferToThreadPool(self._reactor, pool, self._disconnect)
        finally:
            pool.stop()

    # -- settings -------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        sql = "SELECT value FROM settings WHERE key = ?"
        row = await self._run(lambda c: c.execute(sql, (key,)).fetchone())
        return None if row is None else str(row["value"])

    async def set_setting(self, key: str, value: str) -> None:
        sql = "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)"
        await self._write(sql, (key, value))

    async def claim_setting(self, key: str, value: str) -> str:
        def op(c: sqlite3.Connection) -> str:
            with c:
                c.execute(
                    "INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)",
                    (key, value),
                )
                row = c.execute(
                    "SELECT value FROM settings WHERE key = ?", (key,)
                ).fetchone()
            return str(row["value"])

        return await self._run(op)

    # -- users ----------------------------------------------------------------

    async def create_user(self, user: User) -> None:
        sql = USERS.insert + " ON CONFLICT (name) DO NOTHING"
        if await self._write(sql, USERS.params(user)) == 0:
            raise AlreadyExists(f"user {user.name!r} exists")

    async def get_user(self, name: str) -> User | None:
        return await self._get(USERS, "SELECT * FROM users WHERE name = ?", (name,))

    async def update_user(self, user: User) -> None:
        if await self._write(USERS.update, USERS.params(user)) == 0:
            raise NotFound(f"no user {user.name!r}")

    async def list_users(self) -> list[User]:
        return await self._list(USERS, "SELECT * FROM users ORDER BY name")

    async def users_with_role(self, role: str) -> list[str]:
        sql = (
            "SELECT name FROM users WHERE EXISTS"
            " (SELECT 1 FROM json_each(users.roles) WHERE value = ?) ORDER BY name"
        )
        rows = await self._run(lambda c: c.execute(sql, (role,)).fetchall())
        return [str(r["name"]) for r in rows]

    async def delete_user(self, name: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            with c:
                # Its web sessions go too (ON DELETE CASCADE).
                c.execute("DELETE FROM tokens WHERE user = ?", (name,))
                return (
                    c.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0
                )

        return await self._run(op)

    async def advance_totp_counter(self, name: str, counter: int) -> bool:
        sql = (
            "UPDATE users SET totp_last_counter = ?1"
            " WHERE name = ?2 AND totp_last_counter < ?1"
        )
        return await self._write(sql, (counter, name)) > 0

    # -- roles ----------------------------------------------------------------

    async def upsert_role(self, role: Role) -> None:
        await self._write(ROLES.replace, ROLES.params(role))

    async def get_role(self, name: str) -> Role | None:
        return await self._get(ROLES, "SELECT * FROM roles WHERE name = ?", (name,))

    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        # One bound JSON array, however many names: no limit on variables.
        sql = "SELECT * FROM roles WHERE name IN (SELECT value FROM json_each(?))"
        found = {r.name: r for r in await self._list(ROLES, sql, (dump(list(names)),))}
        return [found.pop(n) for n in names if n in found]

    async def list_roles(self) -> list[Role]:
        return await self._list(ROLES, "SELECT * FROM roles ORDER BY name")

    async def delete_role(self, name: str) -> bool:
        return await self._write("DELETE FROM roles WHERE name = ?", (name,)) > 0

    # -- tokens ---------------------------------------------------------------

    async def add_token(self, token: Token) -> None:
        sql = TOKENS.insert + " ON CONFLICT (token_hash) DO NOTHING"
        if await self._write(sql, TOKENS.params(token)) == 0:
            raise AlreadyExists(f"token {token.name!r} exists")

    async def get_token(self, token_hash: str) -> Token | None:
        sql = "SELECT * FROM tokens WHERE token_hash = ?"
        return await self._get(TOKENS, sql, (token_hash,))

    async def list_tokens(self) -> list[Token]:
        return await self._list(TOKENS, "SELECT * FROM tokens ORDER BY created, name")

    async def delete_token(self, token_hash: str) -> bool:
        sql = "DELETE FROM tokens WHERE token_hash = ?"
        return await self._write(sql, (token_hash,)) > 0

    async def delete_user_tokens(self, user: str) -> int:
        return await self._write("DELETE FROM tokens WHERE user = ?", (user,))

    async def consume_token(self, token_hash: str, now: float) -> Token | None:
        def op(c: sqlite3.Connection) -> Token | None:
            with c:
                c.execute("BEGIN IMMEDIATE")
                return _take_token(c, token_hash, now)

        return await self._run(op)

    async def complete_invite(
        self,
        token_hash: str,
        now: float,
        password_hash: bytes,
        totp_secret: str,
        totp_counter: int,
    ) -> User | None:
        def op(c: sqlite3.Connection) -> User | None:
            with c:
                c.execute("BEGIN IMMEDIATE")
                # A join token, or one whose user is gone, is left alone.
                row = c.execute(
                    "SELECT t.kind FROM tokens t JOIN users u ON u.name = t.user"
                    " WHERE t.token_hash = ?",
                    (token_hash,),
                ).fetchone()
                if row is None or row["kind"] not in _INVITE_KINDS:
                    return None
                token = _take_token(c, token_hash, now)
                if token is None:
                    return None
                c.execute(
                    "UPDATE users SET status = 'active', password_hash = ?,"
                    " totp_secret = ?, totp_last_counter = ? WHERE name = ?",
                    (password_hash, totp_secret, totp_counter, token.user),
                )
                sql = "SELECT * FROM users WHERE name = ?"
                return USERS.load(c.execute(sql, (token.user,)).fetchone())

        return await self._run(op)

    # -- audit log ------------------------------------------------------------

    async def append_event(self, event: AuditEvent) -> int:
        def op(c: sqlite3.Connection) -> int:
            with c:
                rowid = c.execute(EVENTS.insert, EVENTS.params(event)).lastrowid
            assert rowid is not None
            return rowid

        return await self._run(op)

    async def search_events(
        self,
        since: float | None = None,
        until: float | None = None,
        events: Sequence[str] | None = None,
        user: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        """An empty ``events`` matches nothing; None matches every type."""
        if limit <= 0:
            return []
        where = ["1"]
        args: list[Any] = []
        for cond, value in (
            ("time >= ?", since),
            ("time < ?", until),
            ("user = ?", user),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        if events is not None:
            where.append(f"event IN ({', '.join('?' * len(events))})")
            args.extend(events)
        # Only the fixed fragments above are formatted in; values are bound.
        sql = (
            f"SELECT * FROM events WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY time DESC, id DESC LIMIT ?"
        )
        return (await self._list(EVENTS, sql, [*args, limit]))[::-1]

    # -- login failures and locks ---------------------------------------------

    async def add_login_failure(self, name: str, when: float) -> None:
        sql = "INSERT INTO login_failures (name, time) VALUES (?, ?)"
        await self._write(sql, (name, when))

    async def count_login_failures(self, name: str, since: float) -> int:
        sql = "SELECT count(*) FROM login_failures WHERE name = ? AND time >= ?"
        row = await self._run(lambda c: c.execute(sql, (name, since)).fetchone())
        return int(row[0])

    async def clear_login_failures(self, name: str) -> None:
        await self._write("DELETE FROM login_failures WHERE name = ?", (name,))

    async def set_lock(self, name: str, until: float) -> None:
        sql = "INSERT OR REPLACE INTO locks (name, until) VALUES (?, ?)"
        await self._write(sql, (name, until))

    async def get_lock(self, name: str) -> float | None:
        sql = "SELECT until FROM locks WHERE name = ?"
        row = await self._run(lambda c: c.execute(sql, (name,)).fetchone())
        return None if row is None else float(row["until"])

    async def user_locks(self, now: float) -> dict[str, float]:
        sql = (
            "SELECT l.name, l.until FROM locks l JOIN users u ON u.name = l.name"
            " WHERE l.until > ?"
        )
        rows = await self._run(lambda c: c.execute(sql, (now,)).fetchall())
        return {str(r["name"]): float(r["until"]) for r in rows}

    # -- nodes and proxies ----------------------------------------------------

    async def upsert_node(self, node: Node) -> None:
        await self._write(NODES.replace, NODES.params(node))

    async def get_node(self, id_or_name: str) -> Node | None:
        return await self._get(NODES, _FIND_NODE, (id_or_name,))

    async def list_nodes(self) -> list[Node]:
        return await self._list(NODES, "SELECT * FROM nodes ORDER BY name, id")

    async def delete_node(self, id_or_name: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            with c:
                c.execute("BEGIN IMMEDIATE")
                row = c.execute(_FIND_NODE, (id_or_name,)).fetchone()
                if row is not None:
                    c.execute("DELETE FROM nodes WHERE id = ?", (row["id"],))
                return row is not None

        return await self._run(op)

    async def upsert_proxy(self, proxy: ProxyInfo) -> None:
        await self._write(PROXIES.replace, PROXIES.params(proxy))

    async def list_proxies(self) -> list[ProxyInfo]:
        return await self._list(PROXIES, "SELECT * FROM proxies ORDER BY name, id")

    async def add_identity(self, identity: JoinedIdentity) -> None:
        sql = IDENTITIES.insert + " ON CONFLICT DO NOTHING"
        if await self._write(sql, IDENTITIES.params(identity)) == 0:
            raise AlreadyExists(f"an identity named {identity.name!r} exists")

    async def list_identities(self) -> list[JoinedIdentity]:
        sql = "SELECT * FROM identities ORDER BY name"
        return await self._list(IDENTITIES, sql)

    async def delete_identity(self, host_id: str) -> bool:
        sql = "DELETE FROM identities WHERE host_id = ?"
        return await self._write(sql, (host_id,)) > 0

    # -- byte streams ---------------------------------------------------------

    async def create_stream(
        self, stream_id: str, meta: Mapping[str, Any], created: float
    ) -> None:
        info = StreamInfo(stream_id, meta, created)
        sql = STREAMS.insert + " ON CONFLICT (stream_id) DO NOTHING"
        if await self._write(sql, STREAMS.params(info)) == 0:
            raise AlreadyExists(f"stream {stream_id!r} exists")

    async def get_stream(self, stream_id: str) -> StreamInfo | None:
        sql = "SELECT * FROM streams WHERE stream_id = ?"
        return await self._get(STREAMS, sql, (stream_id,))

    async def stream_size(self, stream_id: str) -> int:
        return (await self._run(lambda c: streams.find(c, stream_id))).size

    async def append_chunk(self, stream_id: str, offset: int, data: bytes) -> int:
        def op(c: sqlite3.Connection) -> int:
            with c:
                return streams.append(c, stream_id, offset, bytes(data))

        return await self._run(op)

    async def read_range(self, stream_id: str, start: int, length: int) -> bytes:
        def op(c: sqlite3.Connection) -> bytes:
            # One read transaction: the size and the chunks agree.
            with c:
                c.execute("BEGIN")
                return streams.read(c, stream_id, start, length)

        return await self._run(op)

    async def complete_stream(self, stream_id: str) -> int:
        def op(c: sqlite3.Connection) -> int:
            with c:
                return streams.complete(c, stream_id)

        return await self._run(op)

    async def list_streams(
        self,
        since: float | None = None,
        until: float | None = None,
        complete: bool | None = None,
        limit: int = 1000,
    ) -> list[StreamInfo]:
        if limit <= 0:
            return []
        sql = (
            "SELECT * FROM streams WHERE (?1 IS NULL OR created >= ?1)"
            " AND (?2 IS NULL OR created < ?2) AND (?3 IS NULL OR complete = ?3)"
            " ORDER BY created DESC, stream_id DESC LIMIT ?4"
        )
        args = (since, until, complete, limit)
        return (await self._list(STREAMS, sql, args))[::-1]

    async def delete_stream(self, stream_id: str) -> bool:
        # The chunks go with it (ON DELETE CASCADE).
        sql = "DELETE FROM streams WHERE stream_id = ?"
        return await self._write(sql, (stream_id,)) > 0


if TYPE_CHECKING:  # mypy proves the class implements the whole protocol
    _: Store = SQLiteStore("", cast(IReactorFromThreads, None))
