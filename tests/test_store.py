"""The store suite: every backend keeps records, makes compound changes
atomic, and keeps byte streams, with the same semantics.

Each test runs once per backend (the ``backend`` fixture); a new backend is
one more entry in tests/store_backends.py's BACKENDS.  What only one backend has (SQLite's thread,
file modes, schema versions) is tested in that backend's own module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer

from teleconch.auth.store import AlreadyExists, NotFound, Store, StoreError
from teleconch.auth.types import (
    AuditEvent,
    JoinedIdentity,
    JoinRule,
    Node,
    ProxyInfo,
    Role,
    Token,
    User,
)
from tests.store_backends import NOW, MakeStore, backend, store

__all__ = ["backend", "store"]  # the fixtures, used by name


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
async def test_every_record_type_round_trips(store: Store) -> None:
    """What goes in comes back equal, for each kind of record."""
    role = Role(
        name="access",
        logins=("{{internal.logins}}",),
        node_labels={"env": ("prod", "staging"), "*": ("*",)},
        max_session_ttl=3600,
        rules=("node", "user"),
        builtin=True,
        join_sessions=(JoinRule(("access", "dev"), ("observer", "peer")),),
    )
    token = _invite("alice")
    join = Token("hash-node", "abcd", "node", NOW, NOW + 60)
    node = Node("n-1", "web1", "10.0.0.1:3022", {"env": "prod"}, NOW)
    proxy = ProxyInfo("p-1", "proxy1", "proxy.example:443", "proxy.example:3023", NOW)
    event = AuditEvent(
        "user.login", NOW, "alice", False, {"method": "local", "n": 3, "ok": None}
    )
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
    store: Store,
) -> None:
    """Roles by name, nodes and proxies by id; a second delete finds nothing."""
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
async def test_taken_names_and_missing_users_raise(store: Store) -> None:
    """create_user and add_token refuse duplicates; update_user needs a record."""
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
async def test_update_user_replaces_the_whole_record(store: Store) -> None:
    """Every field of the stored user is taken from the new record."""
    await store.create_user(ALICE)
    changed = attrs.evolve(
        ALICE, roles=("access",), password_hash=None, totp_secret=None
    )
    await store.update_user(changed)
    assert await store.get_user("alice") == changed


@pytest_twisted.ensureDeferred
async def test_delete_user_takes_their_tokens_with_them(store: Store) -> None:
    """Their invite goes; other users' and join tokens stay; a second delete is False."""
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
async def test_a_token_is_consumed_once(store: Store) -> None:
    """The first consume returns it, the second finds nothing."""
    token = Token("hash-node", "abcd", "node", NOW, NOW + 60)
    await store.add_token(token)
    assert await store.consume_token("hash-node", NOW + 59) == token
    assert await store.consume_token("hash-node", NOW + 59) is None
    assert await store.get_token("hash-node") is None


@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_removed_and_not_returned(store: Store) -> None:
    """At ``expires`` the token is dead, and consuming it clears it out."""
    await store.add_token(Token("hash-node", "abcd", "node", NOW, NOW + 60))
    assert await store.consume_token("hash-node", NOW + 60) is None
    assert await store.list_tokens() == []


@pytest_twisted.ensureDeferred
async def test_complete_invite_activates_the_user_once(store: Store) -> None:
    """The invite sets password and OTP and goes; the second attempt gets None."""
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
async def test_racing_complete_invites_have_one_winner(store: Store) -> None:
    """Two requests with the same invite in flight: exactly one succeeds."""
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
    store: Store,
) -> None:
    """Join tokens and orphaned invites are not spent; expired invites change nothing."""
    await store.create_user(User("bob"))
    join = Token("hash-node", "abcd", "node", NOW, NOW + 60, user="bob")
    await store.add_token(join)
    assert await store.complete_invite("hash-node", NOW, b"h", "S", 1) is None
    assert await store.get_token("hash-node") == join

    await store.add_token(_invite("ghost"))
    assert await store.complete_invite("hash-ghost-invite", NOW, b"h", "S", 1) is None

    await store.add_token(_invite("bob", expires=NOW))
    assert await store.complete_invite("hash-bob-invite", NOW, b"h", "S", 1) is None
    assert await store.get_token("hash-bob-invite") is None
    assert await store.get_user("bob") == User("bob")


@pytest_twisted.ensureDeferred
async def test_advance_totp_counter_refuses_equal_and_lower_steps(store: Store) -> None:
    """A code's step is accepted once, and never an older one after it."""
    await store.create_user(ALICE)  # last counter 42
    assert await store.advance_totp_counter("alice", 42) is False
    assert await store.advance_totp_counter("alice", 41) is False
    assert await store.advance_totp_counter("alice", 43) is True
    assert await store.advance_totp_counter("alice", 43) is False
    assert await store.advance_totp_counter("nobody", 100) is False
    user = await store.get_user("alice")
    assert user is not None and user.totp_last_counter == 43


@pytest_twisted.ensureDeferred
async def test_claim_setting_keeps_the_first_value_offered(store: Store) -> None:
    """Two auth servers offering their own CA for one key both get the first:
    a claim never replaces, and says what is stored."""
    assert await store.claim_setting("ca.user", "first") == "first"
    assert await store.claim_setting("ca.user", "second") == "first"
    assert await store.get_setting("ca.user") == "first"


@pytest_twisted.ensureDeferred
async def test_racing_claims_have_one_winner(store: Store) -> None:
    """Claims made at once all return the one value that was stored."""
    results = await defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(store.claim_setting("ca.host", f"v{i}"))
            for i in range(8)
        ]
    )
    assert len(set(results)) == 1
    assert await store.get_setting("ca.host") == results[0]


@pytest_twisted.ensureDeferred
async def test_search_events_filters_by_time_type_and_user(store: Store) -> None:
    """since is inclusive, until exclusive; types and user narrow further."""
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
async def test_search_events_keeps_the_newest_up_to_limit(store: Store) -> None:
    """The limit drops the oldest matches; the rest still come oldest first."""
    ids = [await store.append_event(AuditEvent("e", NOW + i)) for i in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10
    found = await store.search_events(limit=3)
    assert [e.id for e in found] == ids[-3:]
    assert await store.search_events(limit=0) == []


@pytest_twisted.ensureDeferred
async def test_login_failures_count_since_and_clear(store: Store) -> None:
    """Failures count from ``since`` per name; locks are kept per name."""
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
async def test_nodes_are_found_and_deleted_by_id_or_name(store: Store) -> None:
    """An id wins over another node's name; deleting removes just that node."""
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
async def test_records_survive_close_and_reopen(backend: MakeStore) -> None:
    """A store reopened on the same storage has the records, and event ids
    keep increasing."""
    store = backend()
    await store.open()
    await store.create_user(ALICE)
    event_id = await store.append_event(AuditEvent("e", NOW))
    await store.create_stream("s", {}, NOW)
    await store.append_chunk("s", 0, b"kept")
    await store.close()
    store = backend()
    await store.open()
    try:
        assert await store.get_user("alice") == ALICE
        assert [e.id for e in await store.search_events()] == [event_id]
        assert await store.append_event(AuditEvent("e", NOW)) > event_id
        assert await store.read_range("s", 0, 10) == b"kept"
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_closed_store_refuses_calls(store: Store) -> None:
    """No call may follow close(); one that does fails plainly."""
    await store.close()
    with pytest.raises(StoreError):
        await store.list_users()
    with pytest.raises(StoreError):
        await store.read_range("s", 0, 1)


@pytest_twisted.ensureDeferred
async def test_records_handed_out_are_not_the_stored_ones(store: Store) -> None:
    """Changing a mapping in a record a caller passed in or got back does
    not change what the store holds."""
    labels = {"env": ("prod",)}
    role = Role("r", node_labels=labels)
    await store.upsert_role(role)
    role.node_labels["env"] = ("dev",)  # type: ignore[index]
    got = await store.get_role("r")
    assert got is not None and got.node_labels == {"env": ("prod",)}
    got.node_labels.clear()  # type: ignore[attr-defined]
    assert await store.get_roles(["r"]) == [Role("r", node_labels=labels)]

    await store.append_event(AuditEvent("e", NOW, fields={"list": [1]}))
    (event,) = await store.search_events()
    event.fields["list"].append(2)
    (again,) = await store.search_events()
    assert again.fields == {"list": [1]}


@pytest_twisted.ensureDeferred
async def test_json_fields_come_back_as_json(store: Store) -> None:
    """Audit fields and stream meta keep JSON values: tuples come back as
    lists, and a value JSON cannot hold as its text."""
    await store.append_event(
        AuditEvent("e", NOW, fields={"t": ("a", 1), "p": Path("/x")})
    )
    (event,) = await store.search_events()
    assert event.fields == {"t": ["a", 1], "p": "/x"}
    await store.create_stream("s", {"node": "web1", "size": (80, 24)}, NOW)
    info = await store.get_stream("s")
    assert info is not None and info.meta == {"node": "web1", "size": [80, 24]}


# --- identities ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_identities_keep_their_host_ids_and_names_unique(store: Store) -> None:
    """A second identity with a taken host id or a taken name is refused;
    deleting one frees its name."""
    proxy = JoinedIdentity("h-1", "proxy", "proxy1", ("proxy1", "p.example"), NOW)
    node = JoinedIdentity("h-2", "node", "alpha", ("alpha",), NOW)
    await store.add_identity(proxy)
    await store.add_identity(node)
    with pytest.raises(AlreadyExists):
        await store.add_identity(attrs.evolve(proxy, name="other"))
    with pytest.raises(AlreadyExists):
        await store.add_identity(attrs.evolve(node, host_id="h-3"))
    assert await store.list_identities() == [node, proxy]  # by name
    assert await store.delete_identity("h-2") is True
    assert await store.delete_identity("h-2") is False
    await store.add_identity(attrs.evolve(node, host_id="h-3"))
    assert [i.host_id for i in await store.list_identities()] == ["h-3", "h-1"]


# --- batch queries -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_roles_keeps_the_order_asked_and_skips_missing(
    store: Store,
) -> None:
    """Roles come back in the order of the names, each once; unknown names
    are left out; no names gives no roles."""
    for name in ("access", "editor", "auditor"):
        await store.upsert_role(Role(name, logins=(name,)))
    found = await store.get_roles(["editor", "ghost", "access", "editor"])
    assert [r.name for r in found] == ["editor", "access"]
    assert found[0] == Role("editor", logins=("editor",))
    assert await store.get_roles([]) == []


@pytest_twisted.ensureDeferred
async def test_get_roles_takes_more_names_than_a_query_has_variables(
    store: Store,
) -> None:
    """Forty thousand names are one call (SQLite binds at most 32766)."""
    await store.upsert_role(Role("r39999"))
    names = [f"r{i}" for i in range(40_000)]
    assert [r.name for r in await store.get_roles(names)] == ["r39999"]


@pytest_twisted.ensureDeferred
async def test_users_with_role_match_the_whole_role_name(store: Store) -> None:
    """Holders come by name; a role whose name contains another's is not it."""
    await store.create_user(User("carol", roles=("access", "editor")))
    await store.create_user(User("alice", roles=("editor",)))
    await store.create_user(User("bob", roles=("access-extra", "edit")))
    assert await store.users_with_role("editor") == ["alice", "carol"]
    assert await store.users_with_role("access") == ["carol"]
    assert await store.users_with_role("ghost") == []


@pytest_twisted.ensureDeferred
async def test_user_locks_are_the_users_locks_still_in_force(store: Store) -> None:
    """Only locks ending after ``now`` on names that are users come back."""
    await store.create_user(User("alice"))
    await store.create_user(User("bob"))
    await store.create_user(User("carol"))
    await store.set_lock("alice", NOW + 60)
    await store.set_lock("bob", NOW)  # ends now: not in force
    await store.set_lock("mallory", NOW + 60)  # someone guessing a name
    assert await store.user_locks(NOW) == {"alice": NOW + 60}
    assert await store.user_locks(NOW - 1) == {"alice": NOW + 60, "bob": NOW}


@pytest_twisted.ensureDeferred
async def test_delete_user_tokens_takes_only_that_users(store: Store) -> None:
    """Every token of the user goes, of any kind; the count says how many."""
    await store.add_token(_invite("bob"))
    await store.add_token(_invite("bob", kind="reset"))
    await store.add_token(_invite("alice"))
    join = Token("hash-node", "abcd", "node", NOW, NOW + 60)
    await store.add_token(join)
    assert await store.delete_user_tokens("bob") == 2
    assert await store.delete_user_tokens("bob") == 0
    assert {t.token_hash for t in await store.list_tokens()} == {
        "hash-alice-invite",
        "hash-node",
    }
