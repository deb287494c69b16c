"""The store suite, sessions: web sessions, live sessions and the account
changes a person makes, with the same semantics on every backend.

Each test runs once per backend (tests/store_backends.py); what the auth
service builds on them is in test_web_sessions_auth.py and
test_live_sessions.py.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import pytest_twisted

from teleconch.auth.store import AlreadyExists, NotFound, Store
from teleconch.auth.types import ActiveSession, LiveSession, Party, User, WebSession
from tests.store_backends import NOW, MakeStore, backend, store

__all__ = ["backend", "store"]  # the fixtures, used by name

ALICE = User(
    name="alice",
    logins=("alice",),
    roles=("access",),
    status="active",
    created=NOW,
    password_hash=b"$2b$12$old",
    totp_secret="OLDSECRETOLDSECRET",
    totp_last_counter=42,
)


def _web(id: str = "w-1", user: str = "alice", **kw: Any) -> WebSession:
    fields: dict[str, Any] = {
        "id": id,
        "user": user,
        "cookie_hash": f"cookie-{id}",
        "bearer_hash": f"bearer-{id}",
        "roles": ("access", "auditor"),
        "logins": ("alice", "root"),
        "created": NOW,
        "last_active": NOW,
        "expires": NOW + 3600,
    }
    fields.update(kw)
    return WebSession(**fields)


def _live(id: str = "s-1", proxy: str = "proxy-a", **kw: Any) -> LiveSession:
    session = ActiveSession(
        id=id,
        user="alice",
        node="web1",
        node_id="n-1",
        node_addr="10.0.0.5:22",
        login="alice",
        proxy=proxy,
        created=NOW,
        last_active=NOW + 5,
        cols=120,
        rows=40,
        parties=(Party("p-1", "alice", "10.0.0.7:1", "peer", NOW + 5),),
        kind="web",
        proxy_addr="10.0.0.2:3021",
    )
    return LiveSession(attrs.evolve(session, **kw), NOW + 7)


# --- web sessions ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_web_session_round_trips_found_by_its_cookie_hash(store: Store) -> None:
    """What goes in comes back equal, found by the cookie's hash only."""
    await store.create_user(ALICE)
    session = _web(pending_totp_secret="NEWSECRET", pending_totp_expires=NOW + 600)
    await store.add_web_session(session)
    assert await store.get_web_session("cookie-w-1") == session
    assert await store.get_web_session("bearer-w-1") is None
    assert await store.get_web_session("w-1") is None


@pytest_twisted.ensureDeferred
async def test_a_web_session_needs_its_user_and_unique_id_and_cookie(
    store: Store,
) -> None:
    """No session for a missing user; a taken id or cookie hash is refused."""
    with pytest.raises(NotFound):
        await store.add_web_session(_web())
    await store.create_user(ALICE)
    await store.add_web_session(_web())
    with pytest.raises(AlreadyExists):
        await store.add_web_session(_web(cookie_hash="other"))
    with pytest.raises(AlreadyExists):
        await store.add_web_session(_web("w-2", cookie_hash="cookie-w-1"))
    assert await store.get_web_session("other") is None


@pytest_twisted.ensureDeferred
async def test_touching_a_web_session_only_moves_it_forward(store: Store) -> None:
    """last_active takes a later time, never an earlier one."""
    await store.create_user(ALICE)
    await store.add_web_session(_web())
    await store.touch_web_session("w-1", NOW + 60)
    await store.touch_web_session("w-1", NOW + 30)
    await store.touch_web_session("missing", NOW + 90)
    found = await store.get_web_session("cookie-w-1")
    assert found is not None and found.last_active == NOW + 60


@pytest_twisted.ensureDeferred
async def test_a_renewal_swaps_the_secrets_only_from_the_current_ones(
    store: Store,
) -> None:
    """Compare-and-set on the cookie hash: the first renewal wins, a second
    with the same old hash does nothing; the rest of the record stays."""
    await store.create_user(ALICE)
    await store.add_web_session(_web())
    assert await store.renew_web_session("w-1", "cookie-w-1", "c2", "b2")
    assert not await store.renew_web_session("w-1", "cookie-w-1", "c3", "b3")
    assert not await store.renew_web_session("missing", "c2", "c4", "b4")
    assert await store.get_web_session("cookie-w-1") is None
    assert await store.get_web_session("c3") is None
    assert await store.get_web_session("c2") == _web(cookie_hash="c2", bearer_hash="b2")


@pytest_twisted.ensureDeferred
async def test_a_pending_authenticator_is_set_and_cleared_on_its_session(
    store: Store,
) -> None:
    """set_pending_totp writes only those two fields; False for a gone session."""
    await store.create_user(ALICE)
    await store.add_web_session(_web())
    assert await store.set_pending_totp("w-1", "NEWSECRET", NOW + 600)
    found = await store.get_web_session("cookie-w-1")
    assert found == _web(
        pending_totp_secret="NEWSECRET", pending_totp_expires=NOW + 600
    )
    assert await store.set_pending_totp("w-1", None, 0.0)
    assert await store.get_web_session("cookie-w-1") == _web()
    assert not await store.set_pending_totp("missing", "X", NOW)


@pytest_twisted.ensureDeferred
async def test_web_sessions_are_deleted_one_by_user_by_end_and_with_the_user(
    store: Store,
) -> None:
    """Delete one; a user's all but one; those past their end; and every
    one of a user removed with delete_user."""
    bob = attrs.evolve(ALICE, name="bob")
    await store.create_user(ALICE)
    await store.create_user(bob)
    for session in [
        _web("a1"),
        _web("a2"),
        _web("a3", expires=NOW),
        _web("b1", "bob"),
        _web("b2", "bob", expires=NOW + 1),
    ]:
        await store.add_web_session(session)
    assert await store.delete_web_session("a2")
    assert not await store.delete_web_session("a2")
    assert await store.purge_web_sessions(NOW) == 1  # a3: ends at NOW
    assert await store.get_web_session("cookie-a3") is None
    assert await store.delete_user_web_sessions("alice", keep="a1") == 0
    await store.add_web_session(_web("a4"))
    assert await store.delete_user_web_sessions("alice", keep="a1") == 1
    assert await store.get_web_session("cookie-a1") is not None
    assert await store.delete_user_web_sessions("alice") == 1
    assert await store.delete_user("bob")
    for id in ("a1", "a4", "b1", "b2"):
        assert await store.get_web_session(f"cookie-{id}") is None
    await store.create_user(bob)  # a new bob has none of the old one's
    assert await store.get_web_session("cookie-b1") is None


@pytest_twisted.ensureDeferred
async def test_web_sessions_survive_close_and_reopen(backend: MakeStore) -> None:
    """Any auth process on the storage serves the session after a restart."""
    first = backend()
    await first.open()
    await first.create_user(ALICE)
    await first.add_web_session(_web())
    await first.add_live_session(_live())
    await first.close()
    second = backend()
    await second.open()
    try:
        assert await second.get_web_session("cookie-w-1") == _web()
        assert await second.get_live_session("s-1") == _live()
    finally:
        await second.close()


# --- account changes -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_password_and_totp_changes_write_only_their_own_fields(
    store: Store,
) -> None:
    """A new password hash, then a new TOTP secret and step: the rest of the
    user stays; False for a user that does not exist."""
    await store.create_user(ALICE)
    assert await store.set_password("alice", b"$2b$12$new\x00")
    assert await store.set_totp("alice", "NEWSECRETNEWSECRET", 99)
    assert await store.get_user("alice") == attrs.evolve(
        ALICE,
        password_hash=b"$2b$12$new\x00",
        totp_secret="NEWSECRETNEWSECRET",
        totp_last_counter=99,
    )
    assert not await store.set_password("nobody", b"x")
    assert not await store.set_totp("nobody", "X", 1)
    assert not await store.advance_totp_counter("alice", 99)


# --- live sessions -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_live_session_round_trips_with_when_it_was_heard(store: Store) -> None:
    """The whole record, parties included, and the time heard come back."""
    await store.add_live_session(_live())
    assert await store.get_live_session("s-1") == _live()
    assert await store.get_live_session("missing") is None
    with pytest.raises(AlreadyExists):
        await store.add_live_session(_live(proxy="proxy-b"))
    assert await store.get_live_session("s-1") == _live()


@pytest_twisted.ensureDeferred
async def test_a_live_session_is_updated_only_by_its_own_proxy(store: Store) -> None:
    """An update from the proxy that holds it replaces it; one naming another
    proxy, or an unknown id, changes nothing."""
    await store.add_live_session(_live())
    resized = attrs.evolve(_live(cols=80, rows=24), heard=NOW + 40)
    assert await store.update_live_session(resized)
    assert not await store.update_live_session(_live(proxy="proxy-b", cols=1))
    assert not await store.update_live_session(_live("missing"))
    assert await store.get_live_session("s-1") == resized
    assert await store.get_live_session("missing") is None


@pytest_twisted.ensureDeferred
async def test_live_sessions_are_listed_by_start_and_deleted_once(
    store: Store,
) -> None:
    """Listed oldest first (then by id); a delete says whether it found one."""
    for live in [_live("c", created=NOW + 1), _live("b"), _live("a", created=NOW + 1)]:
        await store.add_live_session(live)
    assert [s.session.id for s in await store.list_live_sessions()] == ["b", "a", "c"]
    assert await store.delete_live_session("a")
    assert not await store.delete_live_session("a")
    assert [s.session.id for s in await store.list_live_sessions()] == ["b", "c"]
