"""PostgreSQL connection strings (``teleconch.storage.conn_string``): checked,
and shown without their password.

Pure Python, so the configuration can be checked without psycopg installed.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

SCHEMES = ("postgresql", "postgres")
EXAMPLE = "postgresql://teleconch@db.example:5432/teleconch?sslmode=verify-full"


@attrs.frozen
class ConnInfo:
    """What a conn_string names: where the server is, and the string shown
    without its password."""

    host: str
    port: int
    shown: str

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def redact(conn_string: str) -> str:
    """``conn_string`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(conn_string)
    except ValueError:
        return "<an unreadable conn_string>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse(conn_string: str) -> ConnInfo:
    """Check a conn_string; ValueError (whose message holds no password) says
    what is wrong and shows the form expected."""
    shown = redact(conn_string)
    hint = f"expected a URI like {EXAMPLE!r}"
    try:
        parts = urlsplit(conn_string)
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown!r} is not a valid conn_string; {hint}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{shown!r} is not a postgresql:// URI; {hint}")
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host; {hint}")
    if "," in parts.netloc:
        raise ValueError(f"{shown!r}: one host only; {hint}")
    return ConnInfo(parts.hostname, port or 5432, shown)
