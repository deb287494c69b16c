"""What only the PostgreSQL backend has: migrations that two auth servers
starting together do not race, and an outage of the server that fails calls
fast with a clear error and heals by itself, with a real server."""

from __future__ import annotations

from typing import cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorFromThreads

from teleconch.auth.backends.postgresql import SCHEMA_VERSION, PostgreSQLStore
from teleconch.auth.store import StoreError, StoreUnavailable
from teleconch.auth.types import User
from tests.pg import PostgreSQLServer, running_server

pytestmark = pytest.mark.interop

NOW = 1_700_000_000.0


def _store(conn_string: str, **kw: float) -> PostgreSQLStore:
    return PostgreSQLStore(conn_string, cast(IReactorFromThreads, reactor), **kw)  # type: ignore[arg-type]


def _user(name: str) -> User:
    return User(
        name=name, logins=["root"], roles=["access"], status="active", created=NOW
    )


@pytest_twisted.ensureDeferred
async def test_two_stores_opening_a_fresh_database_together_migrate_it_once(
    pg_server: PostgreSQLServer,
) -> None:
    """Two auth servers started at once on an empty database: the advisory
    lock makes one migrate while the other waits, so neither fails on a
    table the other just made, and each migration is recorded once."""
    conn_string = pg_server.database()
    a, b = _store(conn_string), _store(conn_string)
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(s.open()) for s in (a, b)], consumeErrors=True
    )
    try:
        await a.create_user(_user("alice"))
        assert (await b.get_user("alice")) is not None
    finally:
        await a.close()
        await b.close()
    name = conn_string.rsplit("/", 1)[1].split("?")[0]
    sql = "SELECT version FROM schema_migrations ORDER BY version"
    rows = pg_server.psql(sql, database=name).split()
    assert rows == [str(v) for v in range(1, SCHEMA_VERSION + 1)]


@pytest_twisted.ensureDeferred
async def test_a_schema_from_a_later_teleconch_is_refused(
    pg_server: PostgreSQLServer,
) -> None:
    """Opening a database a newer teleconch migrated says to upgrade, rather
    than writing records in a layout it does not know."""
    conn_string = pg_server.database()
    first = _store(conn_string)
    await first.open()
    await first.close()
    db = conn_string.rsplit("/", 1)[1].split("?")[0]
    later_version = (
        f"INSERT INTO schema_migrations (version) VALUES ({SCHEMA_VERSION + 1})"  # noqa: S608
    )
    pg_server.psql(later_version, database=db)
    later = _store(conn_string)
    with pytest.raises(StoreError, match="newer than this teleconch"):
        await later.open()


@pytest_twisted.ensureDeferred
async def test_calls_fail_fast_while_postgresql_is_down_and_work_once_it_is_back() -> (
    None
):
    """PostgreSQL restarted under a running auth server: a call during the
    outage fails within its bound with a StoreUnavailable naming the server
    (no password) and saying it is retried; after the restart the same store
    answers again, with what was written before (no auth service restart)."""
    with running_server(fast_commits=False) as server:
        conn_string = server.conn_string().replace("postgres@", "postgres:s3cret@")
        store = _store(conn_string, connect_timeout=2, statement_timeout=3)
        await store.open()
        try:
            await store.create_user(_user("alice"))
            server.stop("immediate")
            started = reactor.seconds()
            with pytest.raises(StoreUnavailable) as caught:
                await store.get_user("alice")
            assert reactor.seconds() - started < 10
            message = str(caught.value)
            assert f"127.0.0.1:{server.port}" in message
            assert "retries" in message
            assert "s3cret" not in message
            server.start()
            user = None
            for _ in range(50):  # the first call after an outage may still fail
                try:
                    user = await store.get_user("alice")
                    break
                except StoreUnavailable:
                    await _sleep(0.2)
            assert user is not None and user.name == "alice"
        finally:
            await store.close()


async def _sleep(seconds: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d
