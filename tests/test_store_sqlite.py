"""What only the SQLite backend has: its one thread, its file modes and its
schema versions.  Its behaviour as a Store is in the shared suite,
test_store.py."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet.interfaces import IReactorFromThreads

from teleconch.auth.backends import open_store
from teleconch.auth.backends.sqlite import SCHEMA_VERSION, SQLiteStore
from teleconch.auth.backends.sqlite_schema import MIGRATIONS
from teleconch.auth.backends.sqlite_streams import READ_CHUNKS
from teleconch.auth.store import StoreError
from teleconch.auth.types import (
    ActiveSession,
    AuditEvent,
    LiveSession,
    SettingOverride,
    User,
    WebSession,
)
from teleconch.config import StorageSettings

NOW = 1_700_000_000.0

ALICE = User(
    name="alice",
    logins=("alice",),
    roles=("access",),
    status="active",
    created=NOW,
    password_hash=b"$2b$12$\x00binary\xff",
    totp_secret="JBSWY3DPEHPK3PXP",
    totp_last_counter=42,
)


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SQLiteStore]:
    from twisted.internet import reactor

    store = SQLiteStore(str(path), cast(IReactorFromThreads, reactor))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _db(tmp_path: Path) -> Path:
    return tmp_path / "teleconch.db"


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


@pytest_twisted.ensureDeferred
async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    """A reopened file has the same records and schema version."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(ALICE)
        event_id = await store.append_event(AuditEvent("e", NOW))
    async with opened(_db(tmp_path)) as store:
        assert await store.get_user("alice") == ALICE
        assert [e.id for e in await store.search_events()] == [event_id]
        assert await store.append_event(AuditEvent("e", NOW)) > event_id
    with sqlite3.connect(_db(tmp_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused_and_the_thread_stopped(
    tmp_path: Path,
) -> None:
    """A database from a later teleconch is not touched; open() says why."""
    from twisted.internet import reactor

    conn = sqlite3.connect(_db(tmp_path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SQLiteStore(str(_db(tmp_path)), cast(IReactorFromThreads, reactor))
    with pytest.raises(StoreError) as info:
        await store.open()
    assert str(info.value) == (
        f"database schema version {SCHEMA_VERSION + 1} is newer than this "
        f"teleconch ({SCHEMA_VERSION}); upgrade teleconch"
    )
    assert not [t for t in threading.enumerate() if "teleconch-sqlite" in t.name]
    with pytest.raises(StoreError):
        await store.get_user("alice")
    await store.close()  # harmless after a failed open


@pytest_twisted.ensureDeferred
async def test_the_database_files_are_owner_only(tmp_path: Path) -> None:
    """The file holds password hashes: mode 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        async with opened(_db(tmp_path)) as store:
            await store.create_user(ALICE)
            modes = _modes(tmp_path)
        assert set(modes) == {"teleconch.db", "teleconch.db-wal", "teleconch.db-shm"}
        assert set(modes.values()) == {0o600}
    finally:
        os.umask(old)


@pytest_twisted.ensureDeferred
async def test_sqlite_runs_only_in_the_store_thread(tmp_path: Path) -> None:
    """Every statement executes in the one pool thread, never the reactor's."""
    ran_in: list[str] = []
    async with opened(_db(tmp_path)) as store:
        await store._run(
            lambda c: c.set_trace_callback(
                lambda _sql: ran_in.append(threading.current_thread().name)
            )
        )
        await store.create_user(ALICE)
        await store.consume_token("missing", NOW)
        await store.search_events(user="alice")
        await store.get_roles(["access", "editor"])
        await store.users_with_role("access")
        await store.user_locks(NOW)
        await store.delete_user_tokens("alice")
        await store.create_stream("s", {}, NOW)
        await store.append_chunk("s", 0, b"abc")
        await store.read_range("s", 1, 2)
        await store.complete_stream("s")
        await store.list_streams()
        await store.delete_stream("s")
        await store.set_password("alice", b"x")
        await store.set_totp("alice", "S", 50)
        await store.add_web_session(WebSession("w", "alice", "c", "b"))
        await store.get_web_session("c")
        await store.touch_web_session("w", NOW)
        await store.renew_web_session("w", "c", "c2", "b2")
        await store.set_pending_totp("w", "S", NOW)
        await store.delete_user_web_sessions("alice", keep="w")
        await store.purge_web_sessions(NOW)
        await store.delete_web_session("w")
        live = LiveSession(
            ActiveSession("s", "alice", "n", "", "", "a", "p", NOW, NOW, 80, 24), NOW
        )
        await store.add_live_session(live)
        await store.update_live_session(live)
        await store.get_live_session("s")
        await store.list_live_sessions()
        await store.delete_live_session("s")
        await store._run(lambda c: c.set_trace_callback(None))
    assert ran_in
    assert threading.current_thread().name not in ran_in
    assert len(set(ran_in)) == 1 and "teleconch-sqlite" in ran_in[0]


@pytest_twisted.ensureDeferred
async def test_an_older_schema_is_migrated_keeping_its_records(
    tmp_path: Path,
) -> None:
    """A database of schema 3 (before byte streams) opens at the current
    version with its users intact and streams usable."""
    conn = sqlite3.connect(_db(tmp_path))
    for statements in MIGRATIONS[:3]:
        for sql in statements:
            conn.execute(sql)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO users VALUES ('bob', '[]', '[\"access\"]', 'active', 0,"
        " NULL, NULL, -1)"
    )
    conn.commit()
    conn.close()
    async with opened(_db(tmp_path)) as store:
        assert await store.get_user("bob") == User(
            "bob", roles=("access",), status="active"
        )
        await store.create_stream("s", {}, NOW)
        assert await store.append_chunk("s", 0, b"x") == 1
    with sqlite3.connect(_db(tmp_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


@pytest_twisted.ensureDeferred
async def test_schema_4_is_migrated_keeping_its_users_and_gains_sessions(
    tmp_path: Path,
) -> None:
    """A database of schema 4 (before web and live sessions) opens at the
    current version with its users, tokens and streams intact; a web session
    can be added for an existing user and goes with them."""
    conn = sqlite3.connect(_db(tmp_path))
    for statements in MIGRATIONS[:4]:
        for sql in statements:
            conn.execute(sql)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO users VALUES ('bob', '[\"bob\"]', '[\"access\"]', 'active', 0,"
        " X'2432', 'SECRET', 7)"
    )
    conn.execute("INSERT INTO tokens VALUES ('h', 'abcd', 'node', 0, 99, NULL, NULL)")
    conn.execute("INSERT INTO streams VALUES ('s', '{}', 0, 0, 0)")
    conn.commit()
    conn.close()
    bob = User(
        "bob",
        logins=("bob",),
        roles=("access",),
        status="active",
        password_hash=b"$2",
        totp_secret="SECRET",
        totp_last_counter=7,
    )
    async with opened(_db(tmp_path)) as store:
        assert await store.get_user("bob") == bob
        assert [t.name for t in await store.list_tokens()] == ["abcd"]
        assert await store.stream_size("s") == 0
        session = WebSession("w", "bob", "c", "b", expires=NOW)
        await store.add_web_session(session)
        assert await store.get_web_session("c") == session
        assert await store.delete_user("bob")
        assert await store.get_web_session("c") is None
    with sqlite3.connect(_db(tmp_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


@pytest_twisted.ensureDeferred
async def test_read_range_seeks_the_chunk_index_and_never_scans(
    tmp_path: Path,
) -> None:
    """The chunks of a range are found by two seeks in the primary key, so a
    read costs the chunks it touches, not the length of the recording."""
    async with opened(_db(tmp_path)) as store:
        plan = await store._run(
            lambda c: c.execute(
                "EXPLAIN QUERY PLAN " + READ_CHUNKS, ("s", 10, 20)
            ).fetchall()
        )
    details = [row["detail"] for row in plan]
    assert not [d for d in details if d.startswith("SCAN")], details
    assert any("(stream_id=? AND start>? AND start<?)" in d for d in details), details


@pytest_twisted.ensureDeferred
async def test_open_store_opens_sqlite_where_the_config_says(tmp_path: Path) -> None:
    """The default is <data_dir>/auth/teleconch.db; ``path`` puts it elsewhere;
    a file that cannot be made is reported with its path."""
    from twisted.internet import reactor

    (tmp_path / "auth").mkdir()
    for settings, expected in [
        (StorageSettings(), tmp_path / "auth" / "teleconch.db"),
        (StorageSettings("sqlite", tmp_path / "my.db"), tmp_path / "my.db"),
    ]:
        store = await open_store(settings, tmp_path, cast(IReactorFromThreads, reactor))
        try:
            await store.create_user(ALICE)
        finally:
            await store.close()
        assert expected.exists()
    missing = tmp_path / "nowhere" / "t.db"
    with pytest.raises(
        StoreError, match=re.escape(f"cannot open the database {missing}")
    ):
        await open_store(
            StorageSettings("sqlite", missing),
            tmp_path,
            cast(IReactorFromThreads, reactor),
        )


@pytest_twisted.ensureDeferred
async def test_schema_5_is_migrated_keeping_its_settings_and_gains_overrides(
    tmp_path: Path,
) -> None:
    """A database of schema 5 (before ``cluster set``) opens at the current
    version with its settings intact, and stores overrides."""
    conn = sqlite3.connect(_db(tmp_path))
    for statements in MIGRATIONS[:5]:
        for sql in statements:
            conn.execute(sql)
    conn.execute("PRAGMA user_version = 5")
    conn.execute("INSERT INTO settings VALUES ('cluster_name', 'old.example')")
    conn.commit()
    conn.close()
    async with opened(_db(tmp_path)) as store:
        assert await store.get_setting("cluster_name") == "old.example"
        override = SettingOverride("record_input", "yes", "admin", NOW)
        await store.set_setting_overrides([override])
        assert await store.list_setting_overrides() == [override]
    with sqlite3.connect(_db(tmp_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
