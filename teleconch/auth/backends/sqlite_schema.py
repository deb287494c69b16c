"""The SQLite schema: versioned migrations and the record-to-table mapper.

Kept apart from the store so that the schema's history reads on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from typing import Any, Generic, TypeVar

import attrs

from teleconch.auth.store import StoreError
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
    WebSession,
)

_R = TypeVar("_R", bound=attrs.AttrsInstance)

#: Schema migrations, in order; the schema version is the number applied.
#: Never edit a released entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY, logins TEXT NOT NULL, roles TEXT NOT NULL,
            status TEXT NOT NULL, created REAL NOT NULL, password_hash BLOB,
            totp_secret TEXT, totp_last_counter INTEGER NOT NULL)""",
        """CREATE TABLE roles (
            name TEXT PRIMARY KEY, logins TEXT NOT NULL, node_labels TEXT NOT NULL,
            max_session_ttl INTEGER NOT NULL, rules TEXT NOT NULL,
            builtin INTEGER NOT NULL)""",
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
            created REAL NOT NULL, expires REAL NOT NULL, user TEXT,
            totp_secret TEXT)""",
        "CREATE INDEX tokens_user ON tokens (user)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL,
            time REAL NOT NULL, user TEXT NOT NULL, success INTEGER NOT NULL,
            fields TEXT NOT NULL)""",
        "CREATE INDEX events_time ON events (time)",
        "CREATE INDEX events_user_time ON events (user, time)",
        "CREATE INDEX events_event_time ON events (event, time)",
        """CREATE TABLE login_failures (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, time REAL NOT NULL)""",
        "CREATE INDEX login_failures_name_time ON login_failures (name, time)",
        "CREATE TABLE locks (name TEXT PRIMARY KEY, until REAL NOT NULL)",
        """CREATE TABLE nodes (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, addr TEXT NOT NULL,
            labels TEXT NOT NULL, created REAL NOT NULL)""",
        "CREATE INDEX nodes_name ON nodes (name)",
        """CREATE TABLE proxies (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, public_addr TEXT NOT NULL,
            ssh_addr TEXT NOT NULL, last_seen REAL NOT NULL)""",
    ),
    (
        """CREATE TABLE identities (
            host_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL UNIQUE,
            principals TEXT NOT NULL, joined REAL NOT NULL)""",
    ),
    ("ALTER TABLE nodes ADD COLUMN cert_expires REAL NOT NULL DEFAULT 0",),
    (
        """CREATE TABLE streams (
            stream_id TEXT PRIMARY KEY, meta TEXT NOT NULL, created REAL NOT NULL,
            size INTEGER NOT NULL, complete INTEGER NOT NULL)""",
        "CREATE INDEX streams_created ON streams (created)",
        # A chunk is found by the offset of its first byte; the primary key
        # is the index read_range seeks in.
        """CREATE TABLE chunks (
            stream_id TEXT NOT NULL
                REFERENCES streams (stream_id) ON DELETE CASCADE,
            start INTEGER NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (stream_id, start))""",
    ),
    (
        # Web sessions: the hashes of the cookie and the bearer token, never
        # the secrets; found by the cookie's.  They go with their user.
        """CREATE TABLE web_sessions (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            cookie_hash TEXT NOT NULL UNIQUE, bearer_hash TEXT NOT NULL,
            roles TEXT NOT NULL, logins TEXT NOT NULL, created REAL NOT NULL,
            last_active REAL NOT NULL, expires REAL NOT NULL,
            pending_totp_secret TEXT, pending_totp_expires REAL NOT NULL)""",
        "CREATE INDEX web_sessions_user ON web_sessions (user)",
        "CREATE INDEX web_sessions_expires ON web_sessions (expires)",
        # Live sessions: the record a proxy registered, as JSON, and when the
        # auth service last heard of it.
        """CREATE TABLE live_sessions (
            id TEXT PRIMARY KEY, proxy TEXT NOT NULL, created REAL NOT NULL,
            heard REAL NOT NULL, record TEXT NOT NULL)""",
    ),
    (
        # What `teleconch-ctl cluster set` stored over the config's values.
        """CREATE TABLE setting_overrides (
            key TEXT PRIMARY KEY, value TEXT NOT NULL, set_by TEXT NOT NULL,
            set_at REAL NOT NULL)""",
    ),
    # Whose sessions a role's holders may join (teleconch.proxy.join_policy).
    ("ALTER TABLE roles ADD COLUMN join_sessions TEXT NOT NULL DEFAULT '[]'",),
)

SCHEMA_VERSION = len(MIGRATIONS)


def _plain(value: Any) -> Any:
    """A record with ``to_json`` (a role's join rule) as its JSON; else its str."""
    to_json = getattr(value, "to_json", None)
    return to_json() if callable(to_json) else str(value)


def dump(value: Any) -> str:
    # default=str: an odd value in an audit field must not lose the event.
    return json.dumps(value, sort_keys=True, default=_plain)


class Table(Generic[_R]):
    """Maps a record class onto the table whose columns are named after its
    fields, so that adding a field means adding a column and nothing else."""

    def __init__(
        self,
        name: str,
        cls: type[_R],
        json: tuple[str, ...] = (),
        bools: tuple[str, ...] = (),
        auto: str | None = None,
    ) -> None:
        self.cls, self.json, self.bools = cls, json, bools
        fields = [f.name for f in attrs.fields(cls)]
        self.fields = tuple(f for f in fields if f != auto)
        cols = ", ".join(self.fields)
        marks = ", ".join(f":{f}" for f in self.fields)
        # Only our own table and field names are formatted in; values are bound.
        self.insert = f"INSERT INTO {name} ({cols}) VALUES ({marks})"  # noqa: S608
        self.replace = f"INSERT OR REPLACE INTO {name} ({cols}) VALUES ({marks})"  # noqa: S608
        key, *rest = self.fields
        sets = ", ".join(f"{f} = :{f}" for f in rest)
        self.update = f"UPDATE {name} SET {sets} WHERE {key} = :{key}"  # noqa: S608

    def params(self, obj: _R) -> dict[str, Any]:
        values = attrs.asdict(obj, recurse=False)
        return {
            f: dump(values[f]) if f in self.json else values[f] for f in self.fields
        }

    def load(self, row: sqlite3.Row) -> _R:
        values = dict(zip(row.keys(), row, strict=True))
        for k in self.json:
            values[k] = json.loads(values[k])
        for k in self.bools:
            values[k] = bool(values[k])
        return self.cls(**values)


USERS = Table("users", User, json=("logins", "roles"))
ROLES = Table(
    "roles",
    Role,
    json=("logins", "node_labels", "rules", "join_sessions"),
    bools=("builtin",),
)
TOKENS = Table("tokens", Token)
EVENTS = Table("events", AuditEvent, json=("fields",), bools=("success",), auto="id")
NODES = Table("nodes", Node, json=("labels",))
PROXIES = Table("proxies", ProxyInfo)
IDENTITIES = Table("identities", JoinedIdentity, json=("principals",))
STREAMS = Table("streams", StreamInfo, json=("meta",), bools=("complete",))
WEB_SESSIONS = Table("web_sessions", WebSession, json=("roles", "logins"))
OVERRIDES = Table("setting_overrides", SettingOverride)


def create_private(path: str) -> None:
    """Create the file owner-only before SQLite does (it would honour umask);
    SQLite gives its -wal and -shm files the same mode."""
    if path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION; refuse one from a later teleconch."""
    with conn:
        # The write lock makes a concurrent opener wait instead of migrating twice.
        conn.execute("BEGIN IMMEDIATE")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this "
                f"teleconch ({SCHEMA_VERSION}); upgrade teleconch"
            )
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql)
        # PRAGMA takes no parameters; the value is our own integer.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
