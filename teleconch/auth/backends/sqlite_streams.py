"""Byte streams in SQLite: one row per chunk, keyed (stream_id, start).

These functions run in the store's thread on its connection; the caller
holds the write lock where one is needed.
"""

from __future__ import annotations

import sqlite3

from teleconch.auth.backends.sqlite_schema import STREAMS
from teleconch.auth.store import NotFound, append_tail, check_range
from teleconch.auth.types import StreamInfo

#: The chunks a range [?2, ?3) touches: from the last one starting at or
#: before ?2 to the last one starting before ?3.  Both ends are seeks in the
#: primary key, so a read never walks the whole stream.
READ_CHUNKS = (
    "SELECT start, data FROM chunks WHERE stream_id = ?1 AND start < ?3 AND"
    " start >= (SELECT max(start) FROM chunks WHERE stream_id = ?1 AND start <= ?2)"
    " ORDER BY start"
)


def find(c: sqlite3.Connection, stream_id: str) -> StreamInfo:
    row = c.execute(
        "SELECT * FROM streams WHERE stream_id = ?", (stream_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no stream {stream_id!r}")
    return STREAMS.load(row)


def read(c: sqlite3.Connection, stream_id: str, start: int, length: int) -> bytes:
    check_range(start, length)
    size = find(c, stream_id).size
    end = min(size, start + length)
    if start >= end:
        return b""
    rows = c.execute(READ_CHUNKS, (stream_id, start, end)).fetchall()
    out = b"".join(bytes(r["data"]) for r in rows)
    skip = start - rows[0]["start"]
    return out[skip : skip + end - start]


def append(c: sqlite3.Connection, stream_id: str, offset: int, data: bytes) -> int:
    """Under BEGIN IMMEDIATE: check, then add the new tail as one chunk."""
    c.execute("BEGIN IMMEDIATE")
    info = find(c, stream_id)
    tail = append_tail(info, offset, data, lambda s, n: read(c, stream_id, s, n))
    if not tail:
        return info.size
    c.execute(
        "INSERT INTO chunks (stream_id, start, data) VALUES (?, ?, ?)",
        (stream_id, info.size, tail),
    )
    size = info.size + len(tail)
    c.execute("UPDATE streams SET size = ? WHERE stream_id = ?", (size, stream_id))
    return size


def complete(c: sqlite3.Connection, stream_id: str) -> int:
    c.execute("BEGIN IMMEDIATE")
    info = find(c, stream_id)
    c.execute("UPDATE streams SET complete = 1 WHERE stream_id = ?", (stream_id,))
    return info.size
