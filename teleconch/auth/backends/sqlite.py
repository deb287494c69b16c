"""The SQLite backend of the auth store.

One connection lives in one dedicated thread: SQLite blocks, the reactor must
not, and a single writer needs no locking of our own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from teleconch.auth.store import AlreadyExists, NotFound, StoreError
from teleconch.auth.types import (
    AuditEvent,
    JoinedIdentity,
    Node,
    ProxyInfo,
    Role,
    Token,
    User,
)

_T = TypeVar("_T")
_R = TypeVar("_R", bound=attrs.AttrsInstance)

#: Milliseconds to wait for another process holding the write lock.
BUSY_TIMEOUT_MS = 5000

#: Token kinds that ``complete_invite`` accepts.
_INVITE_KINDS = ("invite", "reset")

#: Schema migrations, in order; the schema version is the number applied.
#: Never edit a released entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY, logins TEXT NOT NULL, roles TEXT NOT NULL,
            status TEXT NOT NULL, created REAL NOT NULL, password_hash BLOB,
            totp_secret TEXT, totp_last_counter INTEGER NOT NULL)""",
        """CREATE TABLE roles (
            name TEXT PRIMARY KEY, logins TEXT NOT NULL, node_labels TEXT NOT NULL,
            max_session_ttl INTEGER NOT NULL, rules TEXT NOT NULL,
            builtin INTEGER NOT NULL)""",
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
            created REAL NOT NULL, expires REAL NOT NULL, user TEXT,
            totp_secret TEXT)""",
        "CREATE INDEX tokens_user ON tokens (user)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL,
            time REAL NOT NULL, user TEXT NOT NULL, success INTEGER NOT NULL,
            fields TEXT NOT NULL)""",
        "CREATE INDEX events_time ON events (time)",
        "CREATE INDEX events_user_time ON events (user, time)",
        "CREATE INDEX events_event_time ON events (event, time)",
        """CREATE TABLE login_failures (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, time REAL NOT NULL)""",
        "CREATE INDEX login_failures_name_time ON login_failures (name, time)",
        "CREATE TABLE locks (name TEXT PRIMARY KEY, until REAL NOT NULL)",
        """CREATE TABLE nodes (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, addr TEXT NOT NULL,
            labels TEXT NOT NULL, created REAL NOT NULL)""",
        "CREATE INDEX nodes_name ON nodes (name)",
        """CREATE TABLE proxies (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, public_addr TEXT NOT NULL,
            ssh_addr TEXT NOT NULL, last_seen REAL NOT NULL)""",
    ),
    (
        """CREATE TABLE identities (
            host_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL UNIQUE,
            principals TEXT NOT NULL, joined REAL NOT NULL)""",
    ),
    ("ALTER TABLE nodes ADD COLUMN cert_expires REAL NOT NULL DEFAULT 0",),
)

SCHEMA_VERSION = len(MIGRATIONS)


def _dump(value: Any) -> str:
    # default=str: an odd value in an audit field must not lose the event.
    return json.dumps(value, sort_keys=True, default=str)


class _Table(Generic[_R]):
    """Maps a record class onto the table whose columns are named after its
    fields, so that adding a field means adding a column and nothing else."""

    def __init__(
        self,
        name: str,
        cls: type[_R],
        json: tuple[str, ...] = (),
        bools: tuple[str, ...] = (),
        auto: str | None = None,
    ) -> None:
        self.cls, self.json, self.bools = cls, json, bools
        fields = [f.name for f in attrs.fields(cls)]
        self.fields = tuple(f for f in fields if f != auto)
        cols = ", ".join(self.fields)
        marks = ", ".join(f":{f}" for f in self.fields)
        # Only our own table and field names are formatted in; values are bound.
        self.insert = f"INSERT INTO {name} ({cols}) VALUES ({marks})"  # noqa: S608
        self.replace = f"INSERT OR REPLACE INTO {name} ({cols}) VALUES ({marks})"  # noqa: S608
        key, *rest = self.fields
        sets = ", ".join(f"{f} = :{f}" for f in rest)
        self.update = f"UPDATE {name} SET {sets} WHERE {key} = :{key}"  # noqa: S608

    def params(self, obj: _R) -> dict[str, Any]:
        values = attrs.asdict(obj, recurse=False)
        return {
            f: _dump(values[f]) if f in self.json else values[f] for f in self.fields
        }

    def load(self, row: sqlite3.Row) -> _R:
        values = dict(zip(row.keys(), row, strict=True))
        for k in self.json:
            values[k] = json.loads(values[k])
        for k in self.bools:
            values[k] = bool(values[k])
        return self.cls(**values)


_USERS = _Table("users", User, json=("logins", "roles"))
_ROLES = _Table(
    "roles", Role, json=("logins", "node_labels", "rules"), bools=("builtin",)
)
_TOKENS = _Table("tokens", Token)
_EVENTS = _Table("events", AuditEvent, json=("fields",), bools=("success",), auto="id")
_NODES = _Table("nodes", Node, json=("labels",))
_PROXIES = _Table("proxies", ProxyInfo)
_IDENTITIES = _Table("identities", JoinedIdentity, json=("principals",))


def _create_private(path: str) -> None:
    """Create the file owner-only before SQLite does (it would honour umask);
    SQLite gives its -wal and -shm files the same mode."""
    if path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _migrate(conn: sqlite3.Connection) -> None:
    with conn:
        # The write lock makes a concurrent opener wait instead of migrating twice.
        conn.execute("BEGIN IMMEDIATE")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this "
                f"teleconch ({SCHEMA_VERSION}); upgrade teleconch"
            )
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql)
        # PRAGMA takes no parameters; the value is our own integer.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def _take_token(c: sqlite3.Connection, token_hash: str, now: float) -> Token | None:
    """Delete the token, returning it if unexpired.  The caller holds the write
    lock (BEGIN IMMEDIATE), so no one else can take it between the two."""
    row = c.execute(
        "SELECT * FROM tokens WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    if row is None:
        return None
    c.execute("DELETE FROM tokens WHERE token_hash = ?", (token_hash,))
    return _TOKENS.load(row) if now < row["expires"] else None


#: An id match wins over a name match; among same-named nodes, the newest.
_FIND_NODE = (
    "SELECT * FROM nodes WHERE id = ?1 OR name = ?1"
    " ORDER BY id = ?1 DESC, created DESC, id LIMIT 1"
)


class SQLiteStore:
    """The Store on one SQLite file, worked on by a one-thread pool."""

    def __init__(self, path: str, reactor: IReactorFromThreads) -> None:
        self.path = path
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing: the plain (non-async) methods run in the pool thread ------

    def _connect(self) -> None:
        _create_private(self.path)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        self._conn = conn
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn)

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

    async def _get(self, table: _Table[_R], sql: str, args: Any) -> _R | None:
        row = await self._run(lambda c: c.execute(sql, args).fetchone())
        return None if row is None else table.load(row)

    async def _list(self, table: _Table[_R], sql: str, args: Any = ()) -> list[_R]:
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

    # -- users ----------------------------------------------------------------

    async def create_user(self, user: User) -> None:
        sql = _USERS.insert + " ON CONFLICT (name) DO NOTHING"
        if await self._write(sql, _USERS.params(user)) == 0:
            raise AlreadyExists(f"user {user.name!r} exists")

    async def get_user(self, name: str) -> User | None:
        return await self._get(_USERS, "SELECT * FROM users WHERE name = ?", (name,))

    async def update_user(self, user: User) -> None:
        if await self._write(_USERS.update, _USERS.params(user)) == 0:
            raise NotFound(f"no user {user.name!r}")

    async def list_users(self) -> list[User]:
        return await self._list(_USERS, "SELECT * FROM users ORDER BY name")

    async def delete_user(self, name: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            with c:
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
        await self._write(_ROLES.replace, _ROLES.params(role))

    async def get_role(self, name: str) -> Role | None:
        return await self._get(_ROLES, "SELECT * FROM roles WHERE name = ?", (name,))

    async def list_roles(self) -> list[Role]:
        return await self._list(_ROLES, "SELECT * FROM roles ORDER BY name")

    async def delete_role(self, name: str) -> bool:
        return await self._write("DELETE FROM roles WHERE name = ?", (name,)) > 0

    # -- tokens ---------------------------------------------------------------

    async def add_token(self, token: Token) -> None:
        sql = _TOKENS.insert + " ON CONFLICT (token_hash) DO NOTHING"
        if await self._write(sql, _TOKENS.params(token)) == 0:
            raise AlreadyExists(f"token {token.name!r} exists")

    async def get_token(self, token_hash: str) -> Token | None:
        sql = "SELECT * FROM tokens WHERE token_hash = ?"
        return await self._get(_TOKENS, sql, (token_hash,))

    async def list_tokens(self) -> list[Token]:
        return await self._list(_TOKENS, "SELECT * FROM tokens ORDER BY created, name")

    async def delete_token(self, token_hash: str) -> bool:
        sql = "DELETE FROM tokens WHERE token_hash = ?"
        return await self._write(sql, (token_hash,)) > 0

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
                return _USERS.load(c.execute(sql, (token.user,)).fetchone())

        return await self._run(op)

    # -- audit log ------------------------------------------------------------

    async def append_event(self, event: AuditEvent) -> int:
        def op(c: sqlite3.Connection) -> int:
            with c:
                rowid = c.execute(_EVENTS.insert, _EVENTS.params(event)).lastrowid
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
        return (await self._list(_EVENTS, sql, [*args, limit]))[::-1]

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

    # -- nodes and proxies ----------------------------------------------------

    async def upsert_node(self, node: Node) -> None:
        await self._write(_NODES.replace, _NODES.params(node))

    async def get_node(self, id_or_name: str) -> Node | None:
        return await self._get(_NODES, _FIND_NODE, (id_or_name,))

    async def list_nodes(self) -> list[Node]:
        return await self._list(_NODES, "SELECT * FROM nodes ORDER BY name, id")

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
        await self._write(_PROXIES.replace, _PROXIES.params(proxy))

    async def list_proxies(self) -> list[ProxyInfo]:
        return await self._list(_PROXIES, "SELECT * FROM proxies ORDER BY name, id")

    async def add_identity(self, identity: JoinedIdentity) -> None:
        sql = _IDENTITIES.insert + " ON CONFLICT DO NOTHING"
        if await self._write(sql, _IDENTITIES.params(identity)) == 0:
            raise AlreadyExists(f"an identity named {identity.name!r} exists")

    async def list_identities(self) -> list[JoinedIdentity]:
        sql = "SELECT * FROM identities ORDER BY name"
        return await self._list(_IDENTITIES, sql)

    async def delete_identity(self, host_id: str) -> bool:
        sql = "DELETE FROM identities WHERE host_id = ?"
        return await self._write(sql, (host_id,)) > 0
