"""The Store in memory, for unit tests: the same semantics as SQLite, no I/O.

Records are frozen, but their mappings are plain dicts: every record is
deep-copied on the way in and on the way out, so no caller shares state
with the store.  JSON-valued
fields (audit fields, stream meta) go through JSON as they do in SQLite.
Nothing here awaits, so each call is atomic, as a transaction would be.
Closing keeps the records: a reopened MemoryStore has them still.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from teleconch.auth.backends.memory_sessions import MemorySessions, SessionData
from teleconch.auth.store import (
    AlreadyExists,
    NotFound,
    Store,
    StoreError,
    append_tail,
    check_range,
)
from teleconch.auth.types import (
    AuditEvent,
    JoinedIdentity,
    Node,
    ProxyInfo,
    Role,
    SettingOverride,
    StreamInfo,
    Token,
    User,
)

_R = TypeVar("_R", bound=attrs.AttrsInstance)

#: Token kinds that ``complete_invite`` accepts.
_INVITE_KINDS = ("invite", "reset")


def _copy(record: _R) -> _R:
    """A deep copy: audit fields and stream meta may nest lists and dicts."""
    return copy.deepcopy(record)


def _json(value: Mapping[str, Any]) -> dict[str, Any]:
    # As SQLite stores it: default=str, so an odd value is kept as text.
    loaded = json.loads(json.dumps(value, sort_keys=True, default=str))
    assert isinstance(loaded, dict)
    return loaded


@attrs.define
class _Stream:
    info: StreamInfo
    starts: list[int] = attrs.Factory(list)
    chunks: list[bytes] = attrs.Factory(list)

    def read(self, start: int, length: int) -> bytes:
        end = min(self.info.size, start + length)
        if start >= end:
            return b""
        first = bisect.bisect_right(self.starts, start) - 1
        last = bisect.bisect_left(self.starts, end)
        out = b"".join(self.chunks[first:last])
        skip = start - self.starts[first]
        return out[skip : skip + end - start]


@attrs.define
class _Data:
    settings: dict[str, str] = attrs.Factory(dict)
    overrides: dict[str, SettingOverride] = attrs.Factory(dict)
    users: dict[str, User] = attrs.Factory(dict)
    roles: dict[str, Role] = attrs.Factory(dict)
    tokens: dict[str, Token] = attrs.Factory(dict)
    events: list[AuditEvent] = attrs.Factory(list)
    event_ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    failures: list[tuple[str, float]] = attrs.Factory(list)
    locks: dict[str, float] = attrs.Factory(dict)
    nodes: dict[str, Node] = attrs.Factory(dict)
    proxies: dict[str, ProxyInfo] = attrs.Factory(dict)
    identities: dict[str, JoinedIdentity] = attrs.Factory(dict)
    streams: dict[str, _Stream] = attrs.Factory(dict)
    sessions: SessionData = attrs.Factory(SessionData)


class MemoryStore(MemorySessions):
    """The Store on dicts.  Not for production: it forgets on exit."""

    def __init__(self) -> None:
        self._data = _Data()
        self._open = False

    @property
    def _d(self) -> _Data:
        if not self._open:
            raise StoreError("the store is not open")
        return self._data

    @property
    def _users(self) -> dict[str, User]:
        return self._d.users

    @property
    def _sessions(self) -> SessionData:
        return self._d.sessions

    async def open(self) -> None:
        if self._open:
            raise StoreError("the store is open already")
        self._open = True

    async def close(self) -> None:
        self._open = False

    # -- settings -------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        return self._d.settings.get(key)

    async def set_setting(self, key: str, value: str) -> None:
        self._d.settings[key] = value

    async def claim_setting(self, key: str, value: str) -> str:
        return self._d.settings.setdefault(key, value)

    async def set_setting_overrides(self, overrides: Sequence[SettingOverride]) -> None:
        for o in overrides:
            self._d.overrides[o.key] = o

    async def list_setting_overrides(self) -> list[SettingOverride]:
        return [self._d.overrides[k] for k in sorted(self._d.overrides)]

    # -- users ----------------------------------------------------------------

    async def create_user(self, user: User) -> None:
        if user.name in self._d.users:
            raise AlreadyExists(f"user {user.name!r} exists")
        self._d.users[user.name] = _copy(user)

    async def get_user(self, name: str) -> User | None:
        user = self._d.users.get(name)
        return None if user is None else _copy(user)

    async def update_user(self, user: User) -> None:
        if user.name not in self._d.users:
            raise NotFound(f"no user {user.name!r}")
        self._d.users[user.name] = _copy(user)

    async def list_users(self) -> list[User]:
        return [_copy(u) for _, u in sorted(self._d.users.items())]

    async def users_with_role(self, role: str) -> list[str]:
        return sorted(n for n, u in self._d.users.items() if role in u.roles)

    async def delete_user(self, name: str) -> bool:
        await self.delete_user_tokens(name)
        self._d.sessions.drop_user(name)
        return self._d.users.pop(name, None) is not None

    async def advance_totp_counter(self, name: str, counter: int) -> bool:
        user = self._d.users.get(name)
        if user is None or user.totp_last_counter >= counter:
            return False
        self._d.users[name] = attrs.evolve(user, totp_last_counter=counter)
        return True

    # -- roles ----------------------------------------------------------------

    async def upsert_role(self, role: Role) -> None:
        self._d.roles[role.name] = _copy(role)

    async def get_role(self, name: str) -> Role | None:
        role = self._d.roles.get(name)
        return None if role is None else _copy(role)

    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        roles = self._d.roles
        return [_copy(roles[n]) for n in dict.fromkeys(names) if n in roles]

    async def list_roles(self) -> list[Role]:
        return [_copy(r) for _, r in sorted(self._d.roles.items())]

    async def delete_role(self, name: str) -> bool:
        return self._d.roles.pop(name, None) is not None

    # -- tokens ---------------------------------------------------------------

    async def add_token(self, token: Token) -> None:
        if token.token_hash in self._d.tokens:
            raise AlreadyExists(f"token {token.name!r} exists")
        self._d.tokens[token.token_hash] = _copy(token)

    async def get_token(self, token_hash: str) -> Token | None:
        token = self._d.tokens.get(token_hash)
        return None if token is None else _copy(token)

    async def list_tokens(self) -> list[Token]:
        tokens = sorted(self._d.tokens.values(), key=lambda t: (t.created, t.name))
        return [_copy(t) for t in tokens]

    async def delete_token(self, token_hash: str) -> bool:
        return self._d.tokens.pop(token_hash, None) is not None

    async def delete_user_tokens(self, user: str) -> int:
        mine = [h for h, t in self._d.tokens.items() if t.user == user]
        for h in mine:
            del self._d.tokens[h]
        return len(mine)

    async def consume_token(self, token_hash: str, now: float) -> Token | None:
        token = self._d.tokens.pop(token_hash, None)
        return _copy(token) if token is not None and now < token.expires else None

    async def complete_invite(
        self,
        token_hash: str,
        now: float,
        password_hash: bytes,
        totp_secret: str,
        totp_counter: int,
    ) -> User | None:
        token = self._d.tokens.get(token_hash)
        # A join token, or one whose user is gone, is left alone.
        if token is None or token.kind not in _INVITE_KINDS:
            return None
        if token.user is None or token.user not in self._d.users:
            return None
        if await self.consume_token(token_hash, now) is None:
            return None
        user = attrs.evolve(
            self._d.users[token.user],
            status="active",
            password_hash=password_hash,
            totp_secret=totp_secret,
            totp_last_counter=totp_counter,
        )
        self._d.users[user.name] = user
        return _copy(user)

    # -- audit log ------------------------------------------------------------

    async def append_event(self, event: AuditEvent) -> int:
        event_id = next(self._d.event_ids)
        stored = attrs.evolve(event, id=event_id, fields=_json(event.fields))
        self._d.events.append(stored)
        return event_id

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
        found = [
            e
            for e in self._d.events
            if (since is None or e.time >= since)
            and (until is None or e.time < until)
            and (user is None or e.user == user)
            and (events is None or e.event in events)
        ]
        found.sort(key=lambda e: (e.time, e.id))
        return [_copy(e) for e in found[-limit:]]

    # -- login failures and locks ---------------------------------------------

    async def add_login_failure(self, name: str, when: float) -> None:
        self._d.failures.append((name, when))

    async def count_login_failures(self, name: str, since: float) -> int:
        return sum(1 for n, t in self._d.failures if n == name and t >= since)

    async def clear_login_failures(self, name: str) -> None:
        self._d.failures = [f for f in self._d.failures if f[0] != name]

    async def set_lock(self, name: str, until: float) -> None:
        self._d.locks[name] = until

    async def get_lock(self, name: str) -> float | None:
        return self._d.locks.get(name)

    async def user_locks(self, now: float) -> dict[str, float]:
        users = self._d.users
        return {n: t for n, t in self._d.locks.items() if n in users and t > now}

    # -- nodes and proxies ----------------------------------------------------

    def _find_node(self, id_or_name: str) -> Node | None:
        """An id match wins over a name match; among same-named nodes, the newest."""
        nodes = self._d.nodes
        if id_or_name in nodes:
            return nodes[id_or_name]
        named = [n for n in nodes.values() if n.name == id_or_name]
        named.sort(key=lambda n: (-n.created, n.id))
        return named[0] if named else None

    async def upsert_node(self, node: Node) -> None:
        self._d.nodes[node.id] = _copy(node)

    async def get_node(self, id_or_name: str) -> Node | None:
        node = self._find_node(id_or_name)
        return None if node is None else _copy(node)

    async def list_nodes(self) -> list[Node]:
        nodes = sorted(self._d.nodes.values(), key=lambda n: (n.name, n.id))
        return [_copy(n) for n in nodes]

    async def delete_node(self, id_or_name: str) -> bool:
        node = self._find_node(id_or_name)
        if node is not None:
            del self._d.nodes[node.id]
        return node is not None

    async def upsert_proxy(self, proxy: ProxyInfo) -> None:
        self._d.proxies[proxy.id] = _copy(proxy)

    async def list_proxies(self) -> list[ProxyInfo]:
        proxies = sorted(self._d.proxies.values(), key=lambda p: (p.name, p.id))
        return [_copy(p) for p in proxies]

    async def add_identity(self, identity: JoinedIdentity) -> None:
        known = self._d.identities
        if identity.host_id in known or any(
            i.name == identity.name for i in known.values()
        ):
            raise AlreadyExists(f"an identity named {identity.name!r} exists")
        known[identity.host_id] = _copy(identity)

    async def list_identities(self) -> list[JoinedIdentity]:
        found = sorted(self._d.identities.values(), key=lambda i: i.name)
        return [_copy(i) for i in found]

    async def delete_identity(self, host_id: str) -> bool:
        return self._d.identities.pop(host_id, None) is not None

    # -- byte streams ---------------------------------------------------------

    def _stream(self, stream_id: str) -> _Stream:
        stream = self._d.streams.get(stream_id)
        if stream is None:
            raise NotFound(f"no stream {stream_id!r}")
        return stream

    async def create_stream(
        self, stream_id: str, meta: Mapping[str, Any], created: float
    ) -> None:
        if stream_id in self._d.streams:
            raise AlreadyExists(f"stream {stream_id!r} exists")
        self._d.streams[stream_id] = _Stream(
            StreamInfo(stream_id, _json(meta), created)
        )

    async def get_stream(self, stream_id: str) -> StreamInfo | None:
        stream = self._d.streams.get(stream_id)
        return None if stream is None else _copy(stream.info)

    async def stream_size(self, stream_id: str) -> int:
        return self._stream(stream_id).info.size

    async def append_chunk(self, stream_id: str, offset: int, data: bytes) -> int:
        stream = self._stream(stream_id)
        info = stream.info
        tail = append_tail(info, offset, bytes(data), stream.read)
        if tail:
            stream.starts.append(info.size)
            stream.chunks.append(tail)
            stream.info = attrs.evolve(info, size=info.size + len(tail))
        return stream.info.size

    async def read_range(self, stream_id: str, start: int, length: int) -> bytes:
        check_range(start, length)
        return self._stream(stream_id).read(start, length)

    async def complete_stream(self, stream_id: str) -> int:
        stream = self._stream(stream_id)
        stream.info = attrs.evolve(stream.info, complete=True)
        return stream.info.size

    async def list_streams(
        self,
        since: float | None = None,
        until: float | None = None,
        complete: bool | None = None,
        limit: int = 1000,
    ) -> list[StreamInfo]:
        if limit <= 0:
            return []
        found = [
            s.info
            for s in self._d.streams.values()
            if (since is None or s.info.created >= since)
            and (until is None or s.info.created < until)
            and (complete is None or s.info.complete == complete)
        ]
        found.sort(key=lambda i: (i.created, i.stream_id))
        return [_copy(i) for i in found[-limit:]]

    async def delete_stream(self, stream_id: str) -> bool:
        return self._d.streams.pop(stream_id, None) is not None


if TYPE_CHECKING:  # mypy proves the class implements the whole protocol
    _: Store = MemoryStore()
