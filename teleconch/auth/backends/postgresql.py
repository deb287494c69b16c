"""The PostgreSQL backend of the auth store (psycopg 3).

Calls run in a bounded Twisted ThreadPool of the store's own, each thread on
its own connection (postgresql_conn); never on the reactor.  Several auth
servers share one database, so every compound change is atomic in it: one
statement (``ON CONFLICT``, ``UPDATE ... WHERE ... RETURNING``) or a
transaction that locks what it reads (``FOR UPDATE``), never a read then a
write in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from teleconch.auth.backends.postgresql_conn import Connections
from teleconch.auth.backends.postgresql_schema import (
    EVENTS,
    IDENTITIES,
    NODES,
    PROXIES,
    ROLES,
    SCHEMA_VERSION,
    TOKENS,
    USERS,
    Table,
    migrate,
)
from teleconch.auth.backends.postgresql_sessions import PostgreSQLSessions
from teleconch.auth.backends.postgresql_streams import PostgreSQLStreams
from teleconch.auth.store import AlreadyExists, NotFound, Store, StoreError
from teleconch.auth.types import (
    AuditEvent,
    JoinedIdentity,
    Node,
    ProxyInfo,
    Role,
    Token,
    User,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "PostgreSQLStore"]

_T = TypeVar("_T")
_R = TypeVar("_R", bound=attrs.AttrsInstance)
Conn = "psycopg.Connection[Any]"

#: Token kinds that ``complete_invite`` accepts.
_INVITE_KINDS = ("invite", "reset")

#: An id match wins over a name match; among same-named nodes, the newest.
_FIND_NODE = (
    "SELECT * FROM nodes WHERE id = %(k)s OR name = %(k)s"
    " ORDER BY (id = %(k)s) DESC, created DESC, id LIMIT 1"
)


class PostgreSQLStore(PostgreSQLSessions, PostgreSQLStreams):
    """The Store on one PostgreSQL database.

    Sessions and account changes are in ``postgresql_sessions``, byte
    streams and setting overrides in ``postgresql_streams``.
    """

    def __init__(
        self,
        conn_string: str,
        reactor: IReactorFromThreads,
        threads: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._conns = Connections(conn_string, connect_timeout, statement_timeout)
        self._reactor = reactor
        self._threads = threads
        self._pool: ThreadPool | None = None

    @property
    def where(self) -> str:
        """host:port of the server (for messages: no password)."""
        return self._conns.info.where

    # -- plumbing: the plain (non-async) functions run in a pool thread -------

    async def _run(
        self, fn: Callable[[psycopg.Connection[Any]], _T], tx: bool = True
    ) -> _T:
        """Run ``fn(connection)`` in a pool thread, in one transaction."""
        if self._pool is None:
            raise StoreError("the store is not open")
        return await deferToThreadPool(
            self._reactor, self._pool, self._conns.run, fn, tx
        )

    async def _write(self, sql: str, args: Any = ()) -> int:
        def op(c: psycopg.Connection[Any]) -> int:
            return c.execute(sql, args).rowcount

        return await self._run(op, tx=False)

    async def _one(self, sql: str, args: Any = ()) -> dict[str, Any] | None:
        def op(c: psycopg.Connection[Any]) -> dict[str, Any] | None:
            return cast(
                "dict[str, Any] | None",
                c.execute(sql, args).fetchone(),
            )

        return await self._run(op, tx=False)

    async def _all(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        def op(c: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            return cast(
                "list[dict[str, Any]]",
                c.execute(sql, args).fetchall(),
            )

        return await self._run(op, tx=False)

    async def _get(self, table: Table[_R], sql: str, args: Any) -> _R | None:
        row = await self._one(sql, args)
        return None if row is None else table.load(row)

    async def _list(self, table: Table[_R], sql: str, args: Any = ()) -> list[_R]:
        return [table.load(r) for r in await self._all(sql, args)]

    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError("the store is open already")
        self._pool = ThreadPool(
            minthreads=0, maxthreads=self._threads, name="teleconch-postgresql"
        )
        self._pool.start()
        try:
            await self._run(migrate, tx=False)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await deferToThreadPool(self._reactor, pool, self._conns.close_all)
        finally:
            pool.stop()

    # -- settings -------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM settings WHERE key = %s", (key,))
        return None if row is None else str(row["value"])

    async def set_setting(self, key: str, value: str) -> None:
        sql = (
            "INSERT INTO settings (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        await self._write(sql, (key, value))

    async def claim_setting(self, key: str, value: str) -> str:
        def op(c: psycopg.Connection[Any]) -> str:
            # A racing insert makes ours wait for its commit, then do nothing;
            # the next statement's snapshot sees the winner.
            c.execute(
                "INSERT INTO settings (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            row = c.execute("SELECT value FROM settings WHERE key = %s", (key,))
            return str(cast("dict[str, Any]", row.fetchone())["value"])

        return await self._run(op, tx=False)

    # -- users ----------------------------------------------------------------

    async def create_user(self, user: User) -> None:
        sql = USERS.insert + " ON CONFLICT (name) DO NOTHING"
        if await self._write(sql, USERS.params(user)) == 0:
            raise AlreadyExists(f"user {user.name!r} exists")

    async def get_user(self, name: str) -> User | None:
        return await self._get(USERS, "SELECT * FROM users WHERE name = %s", (name,))

    async def update_user(self, user: User) -> None:
        if await self._write(USERS.update, USERS.params(user)) == 0:
            raise NotFound(f"no user {user.name!r}")

    async def list_users(self) -> list[User]:
        return await self._list(USERS, "SELECT * FROM users ORDER BY name")

    async def users_with_role(self, role: str) -> list[str]:
        sql = (
            "SELECT name FROM users WHERE roles::jsonb @> jsonb_build_array(%s::text)"
            " ORDER BY name"
        )
        return [str(r["name"]) for r in await self._all(sql, (role,))]

    async def delete_user(self, name: str) -> bool:
        def op(c: psycopg.Connection[Any]) -> bool:
            # Its web sessions go too (ON DELETE CASCADE).
            c.execute('DELETE FROM tokens WHERE "user" = %s', (name,))
            return c.execute("DELETE FROM users WHERE name = %s", (name,)).rowcount > 0

        return await self._run(op)

    async def advance_totp_counter(self, name: str, counter: int) -> bool:
        sql = (
            "UPDATE users SET totp_last_counter = %(c)s"
            " WHERE name = %(n)s AND totp_last_counter < %(c)s"
        )
        return await self._write(sql, {"c": counter, "n": name}) > 0

    # -- roles ----------------------------------------------------------------

    async def upsert_role(self, role: Role) -> None:
        await self._write(ROLES.replace, ROLES.params(role))

    async def get_role(self, name: str) -> Role | None:
        return await self._get(ROLES, "SELECT * FROM roles WHERE name = %s", (name,))

    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        sql = "SELECT * FROM roles WHERE name = ANY(%s)"
        found = {r.name: r for r in await self._list(ROLES, sql, (list(names),))}
        return [found.pop(n) for n in names if n in found]

    async def list_roles(self) -> list[Role]:
        return await self._list(ROLES, "SELECT * FROM roles ORDER BY name")

    async def delete_role(self, name: str) -> bool:
        return await self._write("DELETE FROM roles WHERE name = %s", (name,)) > 0

    # -- tokens ---------------------------------------------------------------

    async def add_token(self, token: Token) -> None:
        sql = TOKENS.insert + " ON CONFLICT (token_hash) DO NOTHING"
        if await self._write(sql, TOKENS.params(token)) == 0:
            raise AlreadyExists(f"token {token.name!r} exists")

    async def get_token(self, token_hash: str) -> Token | None:
        sql = "SELECT * FROM tokens WHERE token_hash = %s"
        return await self._get(TOKENS, sql, (token_hash,))

    async def list_tokens(self) -> list[Token]:
        return await self._list(TOKENS, "SELECT * FROM tokens ORDER BY created, name")

    async def delete_token(self, token_hash: str) -> bool:
        sql = "DELETE FROM tokens WHERE token_hash = %s"
        return await self._write(sql, (token_hash,)) > 0

    async def delete_user_tokens(self, user: str) -> int:
        return await self._write('DELETE FROM tokens WHERE "user" = %s', (user,))

    async def consume_token(self, token_hash: str, now: float) -> Token | None:
        # One statement: of two servers racing, one gets the row.
        sql = "DELETE FROM tokens WHERE token_hash = %s RETURNING *"
        token = await self._get(TOKENS, sql, (token_hash,))
        return token if token is not None and now < token.expires else None

    async def complete_invite(
        self,
        token_hash: str,
        now: float,
        password_hash: bytes,
        totp_secret: str,
        totp_counter: int,
    ) -> User | None:
        def op(c: psycopg.Connection[Any]) -> User | None:
            # The token's row is locked: a racing completion waits, then
            # finds it gone.  A join token, or one whose user is gone, is
            # left alone.
            row = c.execute(
                'SELECT t.kind FROM tokens t JOIN users u ON u.name = t."user"'
                " WHERE t.token_hash = %s FOR UPDATE OF t",
                (token_hash,),
            ).fetchone()
            if row is None or row["kind"] not in _INVITE_KINDS:
                return None
            taken = c.execute(
                "DELETE FROM tokens WHERE token_hash = %s RETURNING *", (token_hash,)
            ).fetchone()
            if taken is None:
                return None
            token = TOKENS.load(taken)
            if not now < token.expires:
                return None
            user = c.execute(
                "UPDATE users SET status = 'active', password_hash = %s,"
                " totp_secret = %s, totp_last_counter = %s WHERE name = %s"
                " RETURNING *",
                (password_hash, totp_secret, totp_counter, token.user),
            ).fetchone()
            return None if user is None else USERS.load(user)

        return await self._run(op)

    # -- audit log ------------------------------------------------------------

    async def append_event(self, event: AuditEvent) -> int:
        row = await self._one(EVENTS.insert + " RETURNING id", EVENTS.params(event))
        assert row is not None
        return int(row["id"])

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
        sql = (
            "SELECT * FROM events WHERE (%(since)s::float8 IS NULL OR time >= %(since)s)"
            " AND (%(until)s::float8 IS NULL OR time < %(until)s)"
            ' AND (%(user)s::text IS NULL OR "user" = %(user)s)'
            " AND (%(all)s OR event = ANY(%(events)s::text[]))"
            " ORDER BY time DESC, id DESC LIMIT %(limit)s"
        )
        args = {
            "since": since,
            "until": until,
            "user": user,
            "all": events is None,
            "events": list(events or ()),
            "limit": limit,
        }
        return (await self._list(EVENTS, sql, args))[::-1]

    # -- login failures and locks ---------------------------------------------

    async def add_login_failure(self, name: str, when: float) -> None:
        sql = "INSERT INTO login_failures (name, time) VALUES (%s, %s)"
        await self._write(sql, (name, when))

    async def count_login_failures(self, name: str, since: float) -> int:
        sql = "SELECT count(*) AS n FROM login_failures WHERE name = %s AND time >= %s"
        row = await self._one(sql, (name, since))
        return 0 if row is None else int(row["n"])

    async def clear_login_failures(self, name: str) -> None:
        await self._write("DELETE FROM login_failures WHERE name = %s", (name,))

    async def set_lock(self, name: str, until: float) -> None:
        sql = (
            "INSERT INTO locks (name, until) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET until = EXCLUDED.until"
        )
        await self._write(sql, (name, until))

    async def get_lock(self, name: str) -> float | None:
        row = await self._one("SELECT until FROM locks WHERE name = %s", (name,))
        return None if row is None else float(row["until"])

    async def user_locks(self, now: float) -> dict[str, float]:
        sql = (
            "SELECT l.name, l.until FROM locks l JOIN users u ON u.name = l.name"
            " WHERE l.until > %s"
        )
        rows = await self._all(sql, (now,))
        return {str(r["name"]): float(r["until"]) for r in rows}

    # -- nodes and proxies ----------------------------------------------------

    async def upsert_node(self, node: Node) -> None:
        await self._write(NODES.replace, NODES.params(node))

    async def get_node(self, id_or_name: str) -> Node | None:
        return await self._get(NODES, _FIND_NODE, {"k": id_or_name})

    async def list_nodes(self) -> list[Node]:
        return await self._list(NODES, "SELECT * FROM nodes ORDER BY name, id")

    async def delete_node(self, id_or_name: str) -> bool:
        sql = f"DELETE FROM nodes WHERE id = ({_FIND_NODE.replace('*', 'id', 1)})"  # noqa: S608
        return await self._write(sql, {"k": id_or_name}) > 0

    async def upsert_proxy(self, proxy: ProxyInfo) -> None:
        await self._write(PROXIES.replace, PROXIES.params(proxy))

    async def list_proxies(self) -> list[ProxyInfo]:
        return await self._list(PROXIES, "SELECT * FROM proxies ORDER BY name, id")

    async def add_identity(self, identity: JoinedIdentity) -> None:
        sql = IDENTITIES.insert + " ON CONFLICT DO NOTHING"
        if await self._write(sql, IDENTITIES.params(identity)) == 0:
            raise AlreadyExists(f"an identity named {identity.name!r} exists")

    async def list_identities(self) -> list[JoinedIdentity]:
        return await self._list(IDENTITIES, "SELECT * FROM identities ORDER BY name")

    async def delete_identity(self, host_id: str) -> bool:
        sql = "DELETE FROM identities WHERE host_id = %s"
        return await self._write(sql, (host_id,)) > 0


if TYPE_CHECKING:  # mypy proves the class implements the whole protocol
    _: Store = PostgreSQLStore("", cast(IReactorFromThreads, None))
