"""The storage interface of the auth service.

Every method is a coroutine: a backend does its I/O off the reactor.  The auth
server holds the rules (who may do what, lock-outs, expiry); a backend only
keeps records and makes the few compound changes atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from teleconch.auth.types import (
    AuditEvent,
    JoinedIdentity,
    LiveSession,
    Node,
    ProxyInfo,
    Role,
    SettingOverride,
    StreamInfo,
    Token,
    User,
    WebSession,
)


class StoreError(Exception):
    """Base of the errors a backend raises."""


class StoreUnavailable(StoreError):
    """The backend's server cannot be reached (or did not answer in time);
    the message says which and that the call may be retried."""


class AlreadyExists(StoreError):
    """A record with that key is there already."""


class NotFound(StoreError):
    """No record with that key."""


class StreamGap(StoreError):
    """An append starts past the stream's end; ``size`` is where it ends."""

    def __init__(self, stream_id: str, offset: int, size: int) -> None:
        super().__init__(
            f"stream {stream_id!r} holds {size} bytes; an append at {offset} "
            f"would leave a gap (resume at {size})"
        )
        self.size = size


class StreamConflict(StoreError):
    """An append would rewrite stored bytes with others, or add to a
    complete stream."""


def append_tail(
    info: StreamInfo, offset: int, data: bytes, read: Callable[[int, int], bytes]
) -> bytes:
    """The rule of ``Store.append_chunk``, for every backend: the part of
    ``data`` (at ``offset``) that is new, to be stored at ``info.size``.

    ``read(start, length)`` gives stored bytes; only the part ``data``
    overlaps is read and must be equal (a retried upload).
    """
    if offset < 0:
        raise ValueError(f"offset {offset} is negative")
    if offset > info.size:
        raise StreamGap(info.stream_id, offset, info.size)
    overlap = min(info.size, offset + len(data)) - offset
    if overlap and read(offset, overlap) != data[:overlap]:
        raise StreamConflict(
            f"stream {info.stream_id!r}: the {overlap} bytes at {offset} differ "
            "from those stored"
        )
    tail = data[overlap:]
    if tail and info.complete:
        raise StreamConflict(f"stream {info.stream_id!r} is complete")
    return tail


def check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"range ({start}, {length}) is negative")


class Store(Protocol):
    """What the auth server needs from storage."""

    async def open(self) -> None:
        """Open (creating or migrating the schema to the current version)."""

    async def close(self) -> None:
        """Release the backend; no call may follow."""

    # cluster-wide settings (cluster name, schema facts, ...)
    async def get_setting(self, key: str) -> str | None: ...
    async def set_setting(self, key: str, value: str) -> None: ...

    async def claim_setting(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there already, in one
        atomic step; return the value stored (ours or the earlier one).

        How several auth servers starting together on one backend agree on
        the cluster's CAs: each offers its own, one wins, all use the winner's.
        """
        ...

    # overrides of the config's cluster settings (``teleconch-ctl cluster set``)
    async def set_setting_overrides(self, overrides: Sequence[SettingOverride]) -> None:
        """Store each (replacing one of the same key), all in one transaction."""

    async def list_setting_overrides(self) -> list[SettingOverride]:
        """Every override, by key."""

    # users
    async def create_user(self, user: User) -> None:
        """Raise AlreadyExists when the name is taken."""

    async def get_user(self, name: str) -> User | None: ...
    async def update_user(self, user: User) -> None:
        """Replace the record with that name; raise NotFound if none."""

    async def list_users(self) -> list[User]: ...
    async def users_with_role(self, role: str) -> list[str]:
        """The names of the users holding ``role``, in name order."""

    async def delete_user(self, name: str) -> bool:
        """Delete the user, their tokens and their web sessions; False when
        there was none."""

    async def advance_totp_counter(self, name: str, counter: int) -> bool:
        """Record ``counter`` as the last accepted OTP step of ``name``.

        Atomic compare-and-set: True only if ``counter`` is greater than the
        stored one, so two requests racing with one code cannot both win.
        """

    # Changes a person makes to their own account.  Each writes only its own
    # columns, so a login advancing the OTP step meanwhile is never undone.
    async def set_password(self, name: str, password_hash: bytes) -> bool:
        """Replace the user's password hash; False when there is no such user."""

    async def set_totp(self, name: str, secret: str, counter: int) -> bool:
        """Replace the user's TOTP secret and set its last accepted step;
        False when there is no such user."""

    # roles
    async def upsert_role(self, role: Role) -> None: ...
    async def get_role(self, name: str) -> Role | None: ...
    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        """The roles of those names that exist, in the order of ``names``;
        a name given twice gives its role once."""

    async def list_roles(self) -> list[Role]: ...
    async def delete_role(self, name: str) -> bool: ...

    # tokens (invites, resets, join tokens)
    async def add_token(self, token: Token) -> None: ...
    async def get_token(self, token_hash: str) -> Token | None: ...
    async def list_tokens(self) -> list[Token]: ...
    async def delete_token(self, token_hash: str) -> bool: ...
    async def delete_user_tokens(self, user: str) -> int:
        """Delete every token of ``user`` (of any kind); return how many."""

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

    async def user_locks(self, now: float) -> dict[str, float]:
        """The locks on existing users that end after ``now``: name -> end.
        (Names that are not users, locked by someone guessing, are left out.)"""

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

    # web sessions, found by the hash of their cookie
    async def add_web_session(self, session: WebSession) -> None:
        """Raise AlreadyExists when the id or the cookie hash is taken, NotFound
        when the user does not exist."""

    async def get_web_session(self, cookie_hash: str) -> WebSession | None: ...
    async def touch_web_session(self, session_id: str, when: float) -> None:
        """Move ``last_active`` forward to ``when`` (never back)."""

    async def renew_web_session(
        self,
        session_id: str,
        cookie_hash: str,
        new_cookie_hash: str,
        new_bearer_hash: str,
    ) -> bool:
        """Atomic compare-and-set: give the session new secrets only if its
        cookie hash is still ``cookie_hash``, so of two renewals racing with
        the same secrets one wins; False otherwise."""

    async def set_pending_totp(
        self, session_id: str, secret: str | None, expires: float
    ) -> bool:
        """Set (or, with None, clear) the authenticator the session is
        enrolling; False when the session is gone."""

    async def delete_web_session(self, session_id: str) -> bool: ...
    async def delete_user_web_sessions(self, user: str, keep: str | None = None) -> int:
        """Delete the user's web sessions but the one with id ``keep``; return
        how many went."""

    async def purge_web_sessions(self, now: float) -> int:
        """Delete the sessions past their end (``expires <= now``); how many."""

    # live sessions the proxies hold, by id
    async def add_live_session(self, live: LiveSession) -> None:
        """Raise AlreadyExists when the id is taken."""

    async def get_live_session(self, session_id: str) -> LiveSession | None: ...
    async def update_live_session(self, live: LiveSession) -> bool:
        """Replace the record of that id if the same proxy holds it; False
        when there is none or another proxy's."""

    async def list_live_sessions(self) -> list[LiveSession]:
        """Every one, by ``created`` then id."""

    async def delete_live_session(self, session_id: str) -> bool:
        """False when it was gone already: whoever gets True ends it."""

    # byte streams (session recordings): chunks appended in order, read by range
    #
    # Chunks are stored as given: compressing them is the writer's choice (a
    # recording compresses its own frames), so offsets count stored bytes.
    async def create_stream(
        self, stream_id: str, meta: Mapping[str, Any], created: float
    ) -> None:
        """Start an empty stream; raise AlreadyExists when the id is taken."""

    async def get_stream(self, stream_id: str) -> StreamInfo | None: ...
    async def stream_size(self, stream_id: str) -> int:
        """The bytes stored so far, where a resumed upload goes on; NotFound
        for an unknown stream."""

    async def append_chunk(self, stream_id: str, offset: int, data: bytes) -> int:
        """Store ``data`` at ``offset`` and return the stream's new size.

        Idempotent for a retried upload: bytes that are stored already with
        the same content are skipped (so a retry at the same offset is a
        no-op), and only what lies past the end is added.  Raise StreamGap
        when ``offset`` is past the end, StreamConflict when ``data`` differs
        from stored bytes or new bytes would go to a complete stream,
        NotFound for an unknown stream.  Atomic.
        """

    async def read_range(self, stream_id: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start``: fewer at the end of the
        stream, none past it.  Reads only the chunks the range touches.
        NotFound for an unknown stream; ValueError for a negative argument."""

    async def complete_stream(self, stream_id: str) -> int:
        """Mark the stream complete (again is harmless); return its size.
        NotFound for an unknown stream."""

    async def list_streams(
        self,
        since: float | None = None,
        until: float | None = None,
        complete: bool | None = None,
        limit: int = 1000,
    ) -> list[StreamInfo]:
        """Streams by ``created`` (since inclusive, until exclusive), oldest
        first, at most ``limit`` of the newest; ``complete`` narrows to the
        complete (True) or unfinished (False) ones."""

    async def delete_stream(self, stream_id: str) -> bool:
        """Delete the stream and its chunks; False when there was none."""
