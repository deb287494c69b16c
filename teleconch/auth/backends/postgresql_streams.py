"""The PostgreSQLStore's byte streams (recordings' chunks, one row per
chunk keyed by its first byte's offset) and the overrides of the config's
cluster settings.

A mixin, as ``postgresql_sessions``.  An append locks the stream's row
(``FOR UPDATE``), so two proxies or auth servers appending to one stream
take turns and the size and the chunks always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from teleconch.auth.backends.postgresql_schema import OVERRIDES, STREAMS
from teleconch.auth.store import AlreadyExists, NotFound, append_tail, check_range
from teleconch.auth.types import SettingOverride, StreamInfo

if TYPE_CHECKING:
    import psycopg

_T = TypeVar("_T")

#: The chunks a range [s, e) touches: from the last one starting at or
#: before s to the last one starting before e (seeks in the primary key).
_READ_CHUNKS = (
    "SELECT start, data FROM chunks WHERE stream_id = %(id)s AND start < %(e)s AND"
    " start >= (SELECT max(start) FROM chunks WHERE stream_id = %(id)s"
    " AND start <= %(s)s) ORDER BY start"
)


_FIND = "SELECT * FROM streams WHERE stream_id = %s"
_FIND_LOCKED = _FIND + " FOR UPDATE"


def _find(c: psycopg.Connection[Any], stream_id: str, lock: bool = False) -> StreamInfo:
    sql = _FIND_LOCKED if lock else _FIND
    row = c.execute(sql, (stream_id,)).fetchone()
    if row is None:
        raise NotFound(f"no stream {stream_id!r}")
    return STREAMS.load(row)


def _read(
    c: psycopg.Connection[Any], info: StreamInfo, start: int, length: int
) -> bytes:
    check_range(start, length)
    end = min(info.size, start + length)
    if start >= end:
        return b""
    args = {"id": info.stream_id, "s": start, "e": end}
    rows = c.execute(_READ_CHUNKS, args).fetchall()
    out = b"".join(bytes(r["data"]) for r in rows)
    skip = start - int(rows[0]["start"])
    return out[skip : skip + end - start]


class PostgreSQLStreams:
    """Implemented by PostgreSQLStore: how to reach a connection."""

    async def _run(
        self, fn: Callable[[psycopg.Connection[Any]], _T], tx: bool = True
    ) -> _T:
        raise NotImplementedError

    async def _write(self, sql: str, args: Any = ()) -> int:
        raise NotImplementedError

    async def _all(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    # -- setting overrides ----------------------------------------------------

    async def set_setting_overrides(self, overrides: Sequence[SettingOverride]) -> None:
        rows = [OVERRIDES.params(o) for o in overrides]

        def op(c: psycopg.Connection[Any]) -> None:
            with c.cursor() as cur:
                cur.executemany(OVERRIDES.replace, rows)

        await self._run(op)

    async def list_setting_overrides(self) -> list[SettingOverride]:
        rows = await self._all("SELECT * FROM setting_overrides ORDER BY key")
        return [OVERRIDES.load(r) for r in rows]

    # -- byte streams ---------------------------------------------------------

    async def create_stream(
        self, stream_id: str, meta: Mapping[str, Any], created: float
    ) -> None:
        info = StreamInfo(stream_id, meta, created)
        sql = STREAMS.insert + " ON CONFLICT (stream_id) DO NOTHING"
        if await self._write(sql, STREAMS.params(info)) == 0:
            raise AlreadyExists(f"stream {stream_id!r} exists")

    async def get_stream(self, stream_id: str) -> StreamInfo | None:
        def op(c: psycopg.Connection[Any]) -> StreamInfo | None:
            try:
                return _find(c, stream_id)
            except NotFound:
                return None

        return await self._run(op, tx=False)

    async def stream_size(self, stream_id: str) -> int:
        return (await self._run(lambda c: _find(c, stream_id), tx=False)).size

    async def append_chunk(self, stream_id: str, offset: int, data: bytes) -> int:
        data = bytes(data)

        def op(c: psycopg.Connection[Any]) -> int:
            info = _find(c, stream_id, lock=True)
            tail = append_tail(info, offset, data, lambda s, n: _read(c, info, s, n))
            if not tail:
                return info.size
            c.execute(
                "INSERT INTO chunks (stream_id, start, data) VALUES (%s, %s, %s)",
                (stream_id, info.size, tail),
            )
            size = info.size + len(tail)
            c.execute(
                "UPDATE streams SET size = %s WHERE stream_id = %s", (size, stream_id)
            )
            return size

        return await self._run(op)

    async def read_range(self, stream_id: str, start: int, length: int) -> bytes:
        check_range(start, length)

        def op(c: psycopg.Connection[Any]) -> bytes:
            # One transaction (REPEATABLE READ would not be needed: chunks
            # below the size read are never changed).
            return _read(c, _find(c, stream_id), start, length)

        return await self._run(op)

    async def complete_stream(self, stream_id: str) -> int:
        def op(c: psycopg.Connection[Any]) -> int:
            info = _find(c, stream_id, lock=True)
            c.execute(
                "UPDATE streams SET complete = true WHERE stream_id = %s", (stream_id,)
            )
            return info.size

        return await self._run(op)

    async def list_streams(
        self,
        since: float | None = None,
        until: float | None = None,
        complete: bool | None = None,
        limit: int = 1000,
    ) -> list[StreamInfo]:
        if limit <= 0:
            return []
        sql = (
            "SELECT * FROM streams WHERE (%(s)s::float8 IS NULL OR created >= %(s)s)"
            " AND (%(u)s::float8 IS NULL OR created < %(u)s)"
            " AND (%(c)s::boolean IS NULL OR complete = %(c)s)"
            " ORDER BY created DESC, stream_id DESC LIMIT %(n)s"
        )
        args = {"s": since, "u": until, "c": complete, "n": limit}
        return [STREAMS.load(r) for r in await self._all(sql, args)][::-1]

    async def delete_stream(self, stream_id: str) -> bool:
        # The chunks go with it (ON DELETE CASCADE).
        sql = "DELETE FROM streams WHERE stream_id = %s"
        return await self._write(sql, (stream_id,)) > 0
