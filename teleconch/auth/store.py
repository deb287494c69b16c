"""The storage interface of the auth service.

Every method is a coroutine: a backend does its I/O off the reactor.  The auth
server holds the rules (who may do what, lock-outs, expiry); a backend only
keeps records and makes the few compound changes atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from teleconch.auth.types import (
    AuditEvent,
    JoinedIdentity,
    Node,
    ProxyInfo,
    Role,
    Token,
    User,
)


class StoreError(Exception):
    """Base of the errors a backend raises."""


class AlreadyExists(StoreError):
    """A record with that key is there already."""


class NotFound(StoreError):
    """No record with that key."""


class Store(Protocol):
    """What the auth server needs from storage."""

    async def open(self) -> None:
        """Open (creating or migrating the schema to the current version)."""

    async def close(self) -> None:
        """Release the backend; no call may follow."""

    # cluster-wide settings (cluster name, schema facts, ...)
    async def get_setting(self, key: str) -> str | None: ...
    async def set_setting(self, key: str, value: str) -> None: ...

    # users
    async def create_user(self, user: User) -> None:
        """Raise AlreadyExists when the name is taken."""

    async def get_user(self, name: str) -> User | None: ...
    async def update_user(self, user: User) -> None:
        """Replace the record with that name; raise NotFound if none."""

    async def list_users(self) -> list[User]: ...
    async def delete_user(self, name: str) -> bool:
        """Delete the user and their tokens; False when there was none."""

    async def advance_totp_counter(self, name: str, counter: int) -> bool:
        """Record ``counter`` as the last accepted OTP step of ``name``.

        Atomic compare-and-set: True only if ``counter`` is greater than the
        stored one, so two requests racing with one code cannot both win.
        """

    # roles
    async def upsert_role(self, role: Role) -> None: ...
    async def get_role(self, name: str) -> Role | None: ...
    async def list_roles(self) -> list[Role]: ...
    async def delete_role(self, name: str) -> bool: ...

    # tokens (invites, resets, join tokens)
    async def add_token(self, token: Token) -> None: ...
    async def get_token(self, token_hash: str) -> Token | None: ...
    async def list_tokens(self) -> list[Token]: ...
    async def delete_token(self, token_hash: str) -> bool: ...
    async def consume_token(self, token_hash: str, now: float) -> Token | None:
        """Atomically remove and return the token if it exists and
        ``now < expires``; an expired token is removed and None returned."""

    async def complete_invite(
        self,
        token_hash: str,
        now: float,
        password_hash: bytes,
        totp_secret: str,
        totp_counter: int,
    ) -> User | None:
        """In one transaction: consume the invite or reset token (None if it
        is gone or expired), set the user's password hash, TOTP secret and
        last OTP step, mark the user ``active``, and return the new record."""

    # audit log
    async def append_event(self, event: AuditEvent) -> int:
        """Append and return the event's id (increasing)."""

    async def search_events(
        self,
        since: float | None = None,
        until: float | None = None,
        events: Sequence[str] | None = None,
        user: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        """Events oldest first, filtered; at most ``limit`` of the newest."""

    # login failures and lock-outs, keyed by the name that was tried
    async def add_login_failure(self, name: str, when: float) -> None: ...
    async def count_login_failures(self, name: str, since: float) -> int: ...
    async def clear_login_failures(self, name: str) -> None: ...
    async def set_lock(self, name: str, until: float) -> None: ...
    async def get_lock(self, name: str) -> float | None:
        """The time the lock on ``name`` ends, or None."""

    # nodes
    async def upsert_node(self, node: Node) -> None: ...
    async def get_node(self, id_or_name: str) -> Node | None: ...
    async def list_nodes(self) -> list[Node]: ...
    async def delete_node(self, id_or_name: str) -> bool: ...

    # proxies that joined
    async def upsert_proxy(self, proxy: ProxyInfo) -> None: ...
    async def list_proxies(self) -> list[ProxyInfo]: ...

    # identities that joined with a token (their names are theirs)
    async def add_identity(self, identity: JoinedIdentity) -> None:
        """Raise AlreadyExists when the host id or the name is taken."""

    async def list_identities(self) -> list[JoinedIdentity]: ...
    async def delete_identity(self, host_id: str) -> bool:
        """Forget a joined identity (its node was removed); False if unknown."""
