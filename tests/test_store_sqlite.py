"""The SQLite store keeps records, makes compound changes atomic, and never
blocks the reactor."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer

from teleconch.auth.backends.sqlite import SCHEMA_VERSION, SQLiteStore
from teleconch.auth.store import AlreadyExists, NotFound, StoreError
from teleconch.auth.types import AuditEvent, Node, ProxyInfo, Role, Token, User

NOW = 1_700_000_000.0


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SQLiteStore]:
    from twisted.internet import reactor

    store = SQLiteStore(str(path), reactor)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _db(tmp_path: Path) -> Path:
    return tmp_path / "teleconch.db"


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


ALICE = User(
    name="alice",
    logins=("alice", "root"),
    roles=("access", "editor"),
    status="active",
    created=NOW,
    password_hash=b"$2b$12$\x00binary\xff",
    totp_secret="JBSWY3DPEHPK3PXP",
    totp_last_counter=42,
)


def _invite(user: str, kind: str = "invite", expires: float = NOW + 3600) -> Token:
    return Token(
        token_hash=f"hash-{user}-{kind}",
        name=f"{user[:4]}",
        kind=kind,
        created=NOW,
        expires=expires,
        user=user,
        totp_secret="SECRETSECRET",
    )


@pytest_twisted.ensureDeferred
async def test_every_record_type_round_trips(tmp_path: Path) -> None:
    """What goes in comes back equal, for each kind of record."""
    role = Role(
        name="access",
        logins=("{{internal.logins}}",),
        node_labels={"env": ("prod", "staging"), "*": ("*",)},
        max_session_ttl=3600,
        rules=("node", "user"),
        builtin=True,
    )
    token = _invite("alice")
    join = Token("hash-node", "abcd", "node", NOW, NOW + 60)
    node = Node("n-1", "web1", "10.0.0.1:3022", {"env": "prod"}, NOW)
    proxy = ProxyInfo("p-1", "proxy1", "proxy.example:443", "proxy.example:3023", NOW)
    event = AuditEvent(
        "user.login", NOW, "alice", False, {"method": "local", "n": 3, "ok": None}
    )
    async with opened(_db(tmp_path)) as store:
        await store.set_setting("cluster_name", "example")
        await store.create_user(ALICE)
        await store.upsert_role(role)
        await store.add_token(token)
        await store.add_token(join)
        await store.upsert_node(node)
        await store.upsert_proxy(proxy)
        event_id = await store.append_event(event)

        assert await store.get_setting("cluster_name") == "example"
        assert await store.get_setting("missing") is None
        assert await store.get_user("alice") == ALICE
        assert await store.list_users() == [ALICE]
        assert await store.get_role("access") == role
        assert await store.list_roles() == [role]
        assert await store.get_token(token.token_hash) == token
        assert await store.list_tokens() == [join, token]  # by created, then name
        assert await store.get_node("n-1") == node
        assert await store.list_nodes() == [node]
        assert await store.list_proxies() == [proxy]
        assert await store.search_events() == [attrs.evolve(event, id=event_id)]


@pytest_twisted.ensureDeferred
async def test_upserts_replace_by_key_and_deletes_report_whether_found(
    tmp_path: Path,
) -> None:
    """Roles by name, nodes and proxies by id; a second delete finds nothing."""
    async with opened(_db(tmp_path)) as store:
        await store.upsert_role(Role("r", logins=("a",)))
        await store.upsert_role(Role("r", logins=("b",)))
        assert await store.list_roles() == [Role("r", logins=("b",))]
        await store.upsert_node(Node("n-1", "web1", "a:1"))
        await store.upsert_node(Node("n-1", "web2", "a:2"))
        assert await store.list_nodes() == [Node("n-1", "web2", "a:2")]
        await store.upsert_proxy(ProxyInfo("p", "x", "a", "b", 1.0))
        await store.upsert_proxy(ProxyInfo("p", "x", "a", "b", 2.0))
        assert [p.last_seen for p in await store.list_proxies()] == [2.0]
        await store.set_setting("k", "1")
        await store.set_setting("k", "2")
        assert await store.get_setting("k") == "2"

        assert await store.delete_role("r") is True
        assert await store.delete_role("r") is False
        await store.add_token(_invite("bob"))
        assert await store.delete_token("hash-bob-invite") is True
        assert await store.delete_token("hash-bob-invite") is False


@pytest_twisted.ensureDeferred
async def test_taken_names_and_missing_users_raise(tmp_path: Path) -> None:
    """create_user and add_token refuse duplicates; update_user needs a record."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(ALICE)
        with pytest.raises(AlreadyExists):
            await store.create_user(attrs.evolve(ALICE, status="invited"))
        assert await store.get_user("alice") == ALICE
        await store.add_token(_invite("alice"))
        with pytest.raises(AlreadyExists):
            await store.add_token(_invite("alice"))
        with pytest.raises(NotFound):
            await store.update_user(User("nobody"))


@pytest_twisted.ensureDeferred
async def test_update_user_replaces_the_whole_record(tmp_path: Path) -> None:
    """Every field of the stored user is taken from the new record."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(ALICE)
        changed = attrs.evolve(
            ALICE, roles=("access",), password_hash=None, totp_secret=None
        )
        await store.update_user(changed)
        assert await store.get_user("alice") == changed


@pytest_twisted.ensureDeferred
async def test_delete_user_takes_their_tokens_with_them(tmp_path: Path) -> None:
    """Their invite goes; other users' and join tokens stay; a second delete is False."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(ALICE)
        await store.create_user(User("bob"))
        await store.add_token(_invite("alice"))
        await store.add_token(_invite("bob"))
        await store.add_token(Token("hash-node", "abcd", "node", NOW, NOW + 60))
        assert await store.delete_user("alice") is True
        assert await store.get_user("alice") is None
        hashes = {t.token_hash for t in await store.list_tokens()}
        assert hashes == {"hash-bob-invite", "hash-node"}
        assert await store.delete_user("alice") is False


@pytest_twisted.ensureDeferred
async def test_a_token_is_consumed_once(tmp_path: Path) -> None:
    """The first consume returns it, the second finds nothing."""
    async with opened(_db(tmp_path)) as store:
        token = Token("hash-node", "abcd", "node", NOW, NOW + 60)
        await store.add_token(token)
        assert await store.consume_token("hash-node", NOW + 59) == token
        assert await store.consume_token("hash-node", NOW + 59) is None
        assert await store.get_token("hash-node") is None


@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_removed_and_not_returned(tmp_path: Path) -> None:
    """At ``expires`` the token is dead, and consuming it clears it out."""
    async with opened(_db(tmp_path)) as store:
        await store.add_token(Token("hash-node", "abcd", "node", NOW, NOW + 60))
        assert await store.consume_token("hash-node", NOW + 60) is None
        assert await store.list_tokens() == []


@pytest_twisted.ensureDeferred
async def test_complete_invite_activates_the_user_once(tmp_path: Path) -> None:
    """The invite sets password and OTP and goes; the second attempt gets None."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(User("bob", roles=("access",), created=NOW))
        await store.add_token(_invite("bob"))
        user = await store.complete_invite("hash-bob-invite", NOW, b"hash", "OTP", 7)
        expected = User(
            "bob",
            roles=("access",),
            status="active",
            created=NOW,
            password_hash=b"hash",
            totp_secret="OTP",
            totp_last_counter=7,
        )
        assert user == expected
        assert await store.get_user("bob") == expected
        assert await store.get_token("hash-bob-invite") is None
        again = await store.complete_invite("hash-bob-invite", NOW, b"x", "Y", 8)
        assert again is None
        assert await store.get_user("bob") == expected


@pytest_twisted.ensureDeferred
async def test_racing_complete_invites_have_one_winner(tmp_path: Path) -> None:
    """Two requests with the same invite in flight: exactly one succeeds."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(User("bob"))
        await store.add_token(_invite("bob", kind="reset"))
        results = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(
                    store.complete_invite("hash-bob-reset", NOW, b"h%d" % i, "S", i)
                )
                for i in range(5)
            ]
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await store.get_user("bob") == winners[0]


@pytest_twisted.ensureDeferred
async def test_complete_invite_leaves_other_tokens_and_users_alone(
    tmp_path: Path,
) -> None:
    """Join tokens and orphaned invites are not spent; expired invites change nothing."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(User("bob"))
        join = Token("hash-node", "abcd", "node", NOW, NOW + 60, user="bob")
        await store.add_token(join)
        assert await store.complete_invite("hash-node", NOW, b"h", "S", 1) is None
        assert await store.get_token("hash-node") == join

        await store.add_token(_invite("ghost"))
        assert (
            await store.complete_invite("hash-ghost-invite", NOW, b"h", "S", 1) is None
        )

        await store.add_token(_invite("bob", expires=NOW))
        assert await store.complete_invite("hash-bob-invite", NOW, b"h", "S", 1) is None
        assert await store.get_token("hash-bob-invite") is None
        assert await store.get_user("bob") == User("bob")


@pytest_twisted.ensureDeferred
async def test_advance_totp_counter_refuses_equal_and_lower_steps(
    tmp_path: Path,
) -> None:
    """A code's step is accepted once, and never an older one after it."""
    async with opened(_db(tmp_path)) as store:
        await store.create_user(ALICE)  # last counter 42
        assert await store.advance_totp_counter("alice", 42) is False
        assert await store.advance_totp_counter("alice", 41) is False
        assert await store.advance_totp_counter("alice", 43) is True
        assert await store.advance_totp_counter("alice", 43) is False
        assert await store.advance_totp_counter("nobody", 100) is False
        user = await store.get_user("alice")
        assert user is not None and user.totp_last_counter == 43


@pytest_twisted.ensureDeferred
async def test_search_events_filters_by_time_type_and_user(tmp_path: Path) -> None:
    """since is inclusive, until exclusive; types and user narrow further."""
    async with opened(_db(tmp_path)) as store:
        for i, (kind, user) in enumerate(
            [("login", "a"), ("login", "b"), ("exec", "a"), ("login", "a")]
        ):
            await store.append_event(AuditEvent(kind, NOW + i, user))

        async def times(**kw: Any) -> list[float]:
            return [e.time - NOW for e in await store.search_events(**kw)]

        assert await times() == [0, 1, 2, 3]
        assert await times(since=NOW + 1, until=NOW + 3) == [1, 2]
        assert await times(events=["login"]) == [0, 1, 3]
        assert await times(events=["login", "exec"], user="a") == [0, 2, 3]
        assert await times(events=[]) == []
        assert await times(user="nobody") == []


@pytest_twisted.ensureDeferred
async def test_search_events_keeps_the_newest_up_to_limit(tmp_path: Path) -> None:
    """The limit drops the oldest matches; the rest still come oldest first."""
    async with opened(_db(tmp_path)) as store:
        ids = [await store.append_event(AuditEvent("e", NOW + i)) for i in range(10)]
        assert ids == sorted(ids) and len(set(ids)) == 10
        found = await store.search_events(limit=3)
        assert [e.id for e in found] == ids[-3:]
        assert await store.search_events(limit=0) == []


@pytest_twisted.ensureDeferred
async def test_login_failures_count_since_and_clear(tmp_path: Path) -> None:
    """Failures count from ``since`` per name; locks are kept per name."""
    async with opened(_db(tmp_path)) as store:
        for t in (0, 10, 20):
            await store.add_login_failure("alice", NOW + t)
        await store.add_login_failure("bob", NOW)
        assert await store.count_login_failures("alice", NOW + 10) == 2
        await store.clear_login_failures("alice")
        assert await store.count_login_failures("alice", 0) == 0
        assert await store.count_login_failures("bob", 0) == 1

        assert await store.get_lock("alice") is None
        await store.set_lock("alice", NOW + 1200)
        await store.set_lock("alice", NOW + 2400)
        assert await store.get_lock("alice") == NOW + 2400


@pytest_twisted.ensureDeferred
async def test_nodes_are_found_and_deleted_by_id_or_name(tmp_path: Path) -> None:
    """An id wins over another node's name; deleting removes just that node."""
    async with opened(_db(tmp_path)) as store:
        web = Node("n-1", "web", "a:1")
        tricky = Node("web", "db", "a:2")  # its id is the other's name
        await store.upsert_node(web)
        await store.upsert_node(tricky)
        assert await store.get_node("n-1") == web
        assert await store.get_node("db") == tricky
        assert await store.get_node("web") == tricky
        assert await store.delete_node("web") is True
        assert await store.get_node("web") == web
        assert await store.delete_node("web") is True
        assert await store.delete_node("web") is False
        assert await store.list_nodes() == []


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
    store = SQLiteStore(str(_db(tmp_path)), reactor)
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
        await store._run(lambda c: c.set_trace_callback(None))
    assert ran_in
    assert threading.current_thread().name not in ran_in
    assert len(set(ran_in)) == 1 and "teleconch-sqlite" in ran_in[0]


@pytest_twisted.ensureDeferred
async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    """No call may follow close(); one that does fails plainly."""
    async with opened(_db(tmp_path)) as store:
        pass
    with pytest.raises(StoreError):
        await store.list_users()
