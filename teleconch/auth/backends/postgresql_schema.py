"""The PostgreSQL schema: versioned migrations (recorded in
``schema_migrations``, applied under an advisory lock) and the
record-to-table mapper.

Columns mirror SQLite's (sqlite_schema.py): JSON kept as text, times as
double precision, so that both backends load records the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from teleconch.auth.backends.sqlite_schema import dump
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

if TYPE_CHECKING:
    import psycopg

_R = TypeVar("_R", bound=attrs.AttrsInstance)

#: The key of the advisory lock openers take to migrate one at a time
#: (any fixed 64-bit number; this one spells "tlcnch").
MIGRATION_LOCK = 0x746C636E6368

#: Migrations, in order; version n is MIGRATIONS[n - 1].  Never edit a
#: released entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY, logins TEXT NOT NULL, roles TEXT NOT NULL,
            status TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
            password_hash BYTEA, totp_secret TEXT,
            totp_last_counter BIGINT NOT NULL)""",
        """CREATE TABLE roles (
            name TEXT PRIMARY KEY, logins TEXT NOT NULL, node_labels TEXT NOT NULL,
            max_session_ttl BIGINT NOT NULL, rules TEXT NOT NULL,
            builtin BOOLEAN NOT NULL, join_sessions TEXT NOT NULL DEFAULT '[]')""",
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION NOT NULL,
            "user" TEXT, totp_secret TEXT)""",
        'CREATE INDEX tokens_user ON tokens ("user")',
        """CREATE TABLE events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event TEXT NOT NULL, time DOUBLE PRECISION NOT NULL,
            "user" TEXT NOT NULL, success BOOLEAN NOT NULL, fields TEXT NOT NULL)""",
        "CREATE INDEX events_time ON events (time)",
        'CREATE INDEX events_user_time ON events ("user", time)',
        "CREATE INDEX events_event_time ON events (event, time)",
        """CREATE TABLE login_failures (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name TEXT NOT NULL, time DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX login_failures_name_time ON login_failures (name, time)",
        "CREATE TABLE locks (name TEXT PRIMARY KEY, until DOUBLE PRECISION NOT NULL)",
        """CREATE TABLE nodes (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, addr TEXT NOT NULL,
            labels TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
            cert_expires DOUBLE PRECISION NOT NULL DEFAULT 0)""",
        "CREATE INDEX nodes_name ON nodes (name)",
        """CREATE TABLE proxies (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, public_addr TEXT NOT NULL,
            ssh_addr TEXT NOT NULL, last_seen DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE identities (
            host_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL UNIQUE,
            principals TEXT NOT NULL, joined DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE streams (
            stream_id TEXT PRIMARY KEY, meta TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL, size BIGINT NOT NULL,
            complete BOOLEAN NOT NULL)""",
        "CREATE INDEX streams_created ON streams (created)",
        # A chunk is found by the offset of its first byte; the primary key
        # is the index read_range seeks in.
        """CREATE TABLE chunks (
            stream_id TEXT NOT NULL
                REFERENCES streams (stream_id) ON DELETE CASCADE,
            start BIGINT NOT NULL, data BYTEA NOT NULL,
            PRIMARY KEY (stream_id, start))""",
        # Web sessions: the hashes of the cookie and the bearer token, never
        # the secrets; found by the cookie's.  They go with their user.
        """CREATE TABLE web_sessions (
            id TEXT PRIMARY KEY,
            "user" TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            cookie_hash TEXT NOT NULL UNIQUE, bearer_hash TEXT NOT NULL,
            roles TEXT NOT NULL, logins TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            last_active DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL, pending_totp_secret TEXT,
            pending_totp_expires DOUBLE PRECISION NOT NULL)""",
        'CREATE INDEX web_sessions_user ON web_sessions ("user")',
        "CREATE INDEX web_sessions_expires ON web_sessions (expires)",
        """CREATE TABLE live_sessions (
            id TEXT PRIMARY KEY, proxy TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL, heard DOUBLE PRECISION NOT NULL,
            record TEXT NOT NULL)""",
        """CREATE TABLE setting_overrides (
            key TEXT PRIMARY KEY, value TEXT NOT NULL, set_by TEXT NOT NULL,
            set_at DOUBLE PRECISION NOT NULL)""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def _q(name: str) -> str:
    return f'"{name}"'


class Table(Generic[_R]):
    """Maps a record class onto the table whose columns are named after its
    fields (quoted: ``user`` is reserved in PostgreSQL)."""

    def __init__(
        self,
        name: str,
        cls: type[_R],
        json: tuple[str, ...] = (),
        auto: str | None = None,
    ) -> None:
        self.cls, self.json = cls, json
        fields = [f.name for f in attrs.fields(cls)]
        self.fields = tuple(f for f in fields if f != auto)
        cols = ", ".join(_q(f) for f in self.fields)
        marks = ", ".join(f"%({f})s" for f in self.fields)
        key, *rest = self.fields
        # Only our own table and field names are formatted in; values are bound.
        self.insert = f"INSERT INTO {name} ({cols}) VALUES ({marks})"  # noqa: S608
        sets = ", ".join(f"{_q(f)} = EXCLUDED.{_q(f)}" for f in rest)
        self.replace = f"{self.insert} ON CONFLICT ({_q(key)}) DO UPDATE SET {sets}"
        sets = ", ".join(f"{_q(f)} = %({f})s" for f in rest)
        self.update = f"UPDATE {name} SET {sets} WHERE {_q(key)} = %({key})s"  # noqa: S608

    def params(self, obj: _R) -> dict[str, Any]:
        values = attrs.asdict(obj, recurse=False)
        return {
            f: dump(values[f]) if f in self.json else values[f] for f in self.fields
        }

    def load(self, row: Mapping[str, Any]) -> _R:
        values = dict(row)
        for k in self.json:
            values[k] = json.loads(values[k])
        return self.cls(**values)


USERS = Table("users", User, json=("logins", "roles"))
ROLES = Table("roles", Role, json=("logins", "node_labels", "rules", "join_sessions"))
TOKENS = Table("tokens", Token)
EVENTS = Table("events", AuditEvent, json=("fields",), auto="id")
NODES = Table("nodes", Node, json=("labels",))
PROXIES = Table("proxies", ProxyInfo)
IDENTITIES = Table("identities", JoinedIdentity, json=("principals",))
STREAMS = Table("streams", StreamInfo, json=("meta",))
WEB_SESSIONS = Table("web_sessions", WebSession, json=("roles", "logins"))
OVERRIDES = Table("setting_overrides", SettingOverride)


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to SCHEMA_VERSION in one transaction, under an
    advisory lock (a second opener waits, then finds nothing to do); refuse
    a schema from a later teleconch.  Returns the version found."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute(
            "SELECT coalesce(max(version), 0) AS v FROM schema_migrations"
        ).fetchone()
        found = int(row["v"]) if row is not None else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {found} is newer than this "
                f"teleconch ({SCHEMA_VERSION}); upgrade teleconch"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for sql in MIGRATIONS[version - 1]:
                conn.execute(sql)  # our own literals
            conn.execute(
                "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
            )
    return found
