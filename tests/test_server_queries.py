"""The auth server asks the store a fixed number of questions per request,
however many users, roles or tokens there are (no N+1 queries).

An AuthServer runs on a MemoryStore that counts the calls made to it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from teleconch.auth import protocol as api
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.server import AuthServer
from teleconch.auth.types import Role, Token, User
from teleconch.ca import SSHCertificateAuthority
from teleconch.pki import TLSAuthority

NOW = 1_700_000_000.0


class CountingStore:
    """A MemoryStore whose every call is counted by method name."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await method(*args, **kwargs)

        return counted


async def _server(users: int) -> tuple[AuthServer, CountingStore]:
    store = CountingStore()
    await store.inner.open()
    clock = Clock()
    clock.advance(NOW)
    server = AuthServer(
        clock=clock,
        threads=None,
        store=store,
        cluster_name="test.example",
        user_ca=SSHCertificateAuthority.generate(),
        host_ca=SSHCertificateAuthority.generate(),
        tls_ca=TLSAuthority.generate("test.example", NOW - 60),
        default_public_addr="127.0.0.1:3080",
        auth_addr="127.0.0.1:3025",
    )
    await server.start()
    inner = store.inner
    await inner.upsert_role(Role("dev", logins=("dev",)))
    for i in range(users):
        name = f"user{i:03d}"
        await inner.create_user(User(name, roles=("access", "dev")))
        await inner.set_lock(name, NOW + 600 if i % 2 else NOW - 600)
        for kind in ("invite", "reset"):
            await inner.add_token(
                Token(f"h-{name}-{kind}", name[:4], kind, NOW, NOW + 60, user=name)
            )
    store.calls.clear()
    return server, store


async def _calls(users: int, request: Callable[[AuthServer], Any]) -> Counter[str]:
    server, store = await _server(users)
    with contextlib.suppress(api.BadParameter):  # a refusal asks its questions too
        await request(server)
    return store.calls


REQUESTS: dict[str, Callable[[AuthServer], Any]] = {
    "list_users": lambda s: s.list_users(),
    "delete_role": lambda s: s.delete_role("dev"),
    "reset_user": lambda s: s.reset_user("user000"),
    "get_roles": lambda s: s.get_roles(["access", "dev", "ghost"] * 10),
}


@pytest.mark.parametrize("request_name", sorted(REQUESTS))
@pytest_twisted.ensureDeferred
async def test_store_calls_do_not_grow_with_the_number_of_users(
    request_name: str,
) -> None:
    """The same store calls with 2 users as with 40: no lock, role or token
    looked up one at a time."""
    few = await _calls(2, REQUESTS[request_name])
    many = await _calls(40, REQUESTS[request_name])
    assert few == many
    assert not {"get_lock", "list_tokens", "delete_token"} & set(many)
    assert many["get_role"] <= 1  # delete_role looks up the role itself


@pytest_twisted.ensureDeferred
async def test_list_users_shows_the_locks_in_force() -> None:
    """A user whose lock ends later is ``locked`` with its end; one whose
    lock ended shows its own status."""
    server, _ = await _server(2)
    found = {u.name: u for u in await server.list_users()}
    assert found["user000"].status == "invited"
    assert found["user000"].locked_until is None
    assert found["user001"].status == "locked"
    assert found["user001"].locked_until == NOW + 600


@pytest_twisted.ensureDeferred
async def test_delete_role_names_its_holders_and_reset_clears_their_tokens() -> None:
    """A held role is not removed and the refusal names who holds it; a
    reset leaves the user exactly one token, the new reset invite."""
    server, store = await _server(2)
    with pytest.raises(api.BadParameter, match="held by user000, user001"):
        await server.delete_role("dev")
    await server.reset_user("user000")
    tokens = [t for t in await store.inner.list_tokens() if t.user == "user000"]
    assert [t.kind for t in tokens] == ["reset"]
    assert tokens[0].token_hash not in ("h-user000-invite", "h-user000-reset")
