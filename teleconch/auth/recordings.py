"""Session recordings as the auth service keeps them.

A recording is one store stream of `teleconch.recording_format` frames (id:
the session id), compressed frame by frame by the proxy, and one index
stream beside it (id + `INDEX_SUFFIX`) of 16-byte ``(ms, offset)`` entries,
one per frame and, once complete, a last ``(duration, size)``: a player
finds the frame at a time by a binary search over it, reading 16 bytes at a
time, never the recording.

Uploads are resumable and idempotent: `start` answers where the stored
stream ends, `append` takes one whole frame at an offset (a frame stored
already is skipped, by the store's rule), and `complete` is audited once,
as ``session.upload``.  A recording belongs to the proxy that started it;
another may not add to it.

Who may see a recording is decided apart, in
`teleconch.auth.recording_access`, on top of this class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from twisted.internet.interfaces import IReactorTime

from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.store import (
    AlreadyExists,
    Store,
    StreamConflict,
    StreamGap,
)
from teleconch.auth.types import StreamInfo
from teleconch.recording_format import INDEX_ENTRY, BadRecording, decode_frame, frame_ms
from teleconch.text import printable

INDEX_SUFFIX = ".index"
KIND, INDEX_KIND = "recording", "recording-index"
MAX_ID = 128
#: The session's own kind (web | ssh) goes under this key: ``kind`` in a
#: stream's meta says what the stream is (a recording, its index).
SESSION_KIND = "session_kind"
META_KEYS = {
    "user", "login", "node", "client_addr", "cols", "rows", "start", "command",
    SESSION_KIND,
}  # fmt: skip
MAX_META_VALUE = 512


def _check_id(id: str) -> None:
    if not id or len(id) > MAX_ID or not id.isprintable() or "/" in id:
        raise api.BadParameter(
            f"a recording id must be 1 to {MAX_ID} printable characters"
        )


def _check_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(meta) - META_KEYS
    if unknown:
        raise api.BadParameter(
            f"a recording's description has unknown keys: {sorted(unknown)}"
        )
    out = {}
    for key, value in meta.items():
        if not isinstance(value, str | int | float) or len(str(value)) > MAX_META_VALUE:
            raise api.BadParameter(f"a recording's {key} is not a short value")
        out[key] = value
    return out


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class Recordings:
    """Starting, appending to, completing, listing, reading, deleting recordings."""

    def __init__(self, store: Store, clock: IReactorTime, log: AuditLog) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit

    async def _owned(self, proxy: str, id: str) -> StreamInfo:
        _check_id(id)
        info = await self.store.get_stream(id)
        if info is None or info.meta.get("kind") != KIND:
            raise api.NotFoundError(f"no recording {printable(id, MAX_ID)!r}")
        if info.meta.get("proxy") != proxy:
            await self._denied(proxy, info)
        return info

    async def start(
        self, proxy: str, id: str, meta: Mapping[str, Any]
    ) -> api.RecordingState:
        _check_id(id)
        fields = {**_check_meta(meta), "proxy": proxy, "kind": KIND}
        now = self._clock.seconds()
        try:
            await self.store.create_stream(id, fields, now)
        except AlreadyExists:
            info = await self._owned(proxy, id)
            return api.RecordingState(info.size, info.complete)
        with contextlib.suppress(AlreadyExists):  # a start retried after a crash
            await self.store.create_stream(
                id + INDEX_SUFFIX, {"kind": INDEX_KIND, "proxy": proxy}, now
            )
        return api.RecordingState(0, False)

    async def append(self, proxy: str, id: str, offset: int, frame: bytes) -> int:
        await self._owned(proxy, id)
        try:
            decode_frame(frame)
        except BadRecording as e:
            raise api.BadParameter(
                f"recording {id}: a bad frame at {offset}: {e}"
            ) from None
        try:
            size = await self.store.append_chunk(id, offset, frame)
        except StreamGap as e:
            raise api.BadParameter(str(e)) from None
        except StreamConflict as e:
            raise api.BadParameter(str(e)) from None
        if not await self._indexed(id, offset):
            await self._index(id, frame_ms(frame), offset)
        return size

    async def complete(self, proxy: str, id: str, duration_ms: int) -> int:
        info = await self._owned(proxy, id)
        if info.complete:
            return info.size
        n = await self._entries(id)
        last = (await self._entry(id, n - 1))[0] if n else 0
        # a proxy that restarted mid-session does not know the duration
        duration_ms = max(duration_ms, last)
        await self._index(id, duration_ms, info.size)
        size = await self.store.complete_stream(id)
        await self.store.complete_stream(id + INDEX_SUFFIX)
        await self.audit(
            "session.upload",
            user=str(info.meta.get("user", "")),
            session_id=id,
            node=info.meta.get("node", ""),
            login=info.meta.get("login", ""),
            proxy=proxy,
            size=size,
            duration=duration_ms / 1000,
        )
        return size

    async def _entries(self, id: str) -> int:
        return await self.store.stream_size(id + INDEX_SUFFIX) // INDEX_ENTRY.size

    async def _entry(self, id: str, i: int) -> tuple[int, int]:
        raw = await self.store.read_range(
            id + INDEX_SUFFIX, i * INDEX_ENTRY.size, INDEX_ENTRY.size
        )
        ms, offset = INDEX_ENTRY.unpack(raw)
        return int(ms), int(offset)

    async def _indexed(self, id: str, offset: int) -> bool:
        n = await self._entries(id)
        return n > 0 and (await self._entry(id, n - 1))[1] >= offset

    async def _index(self, id: str, ms: int, offset: int) -> None:
        at = await self.store.stream_size(id + INDEX_SUFFIX)
        await self.store.append_chunk(
            id + INDEX_SUFFIX, at, INDEX_ENTRY.pack(ms, offset)
        )

    async def offset_at(self, id: str, ms: int) -> int:
        """The offset of the last frame that starts at or before ``ms`` (0 for
        a time before the first): where a player seeking to ``ms`` reads."""
        return (await self.position(await self.get(id), ms)).offset

    async def position(self, info: StreamInfo, ms: int) -> api.RecordingPosition:
        """The last frame starting at or before ``ms`` (the first frame for an
        earlier time), by a binary search of the index, an entry at a time."""
        id = info.stream_id
        n = await self._entries(id)
        last = (await self._entry(id, n - 1)) if n else (0, 0)
        frames = n - 1 if info.complete and n else n  # the last entry is the end
        lo, hi = 0, frames
        while lo < hi:
            mid = (lo + hi) // 2
            if (await self._entry(id, mid))[0] <= ms:
                lo = mid + 1
            else:
                hi = mid
        if frames == 0:
            at_ms, offset = 0, 0
        else:
            at_ms, offset = await self._entry(id, max(lo - 1, 0))
        return api.RecordingPosition(
            offset=offset, ms=at_ms, duration_ms=last[0], size=info.size
        )

    async def describe(self, info: StreamInfo) -> api.RecordingEntry:
        """A recording as listings show it, from its meta (an older
        recording's missing keys take the entry's defaults)."""
        n = await self._entries(info.stream_id)
        duration = (await self._entry(info.stream_id, n - 1))[0] if n else 0
        m = info.meta
        return api.RecordingEntry(
            id=info.stream_id,
            user=str(m.get("user", "")),
            node=str(m.get("node", "")),
            login=str(m.get("login", "")),
            start=float(m.get("start", info.created)),
            duration_ms=duration,
            size=info.size,
            complete=info.complete,
            cols=_int(m.get("cols"), 80),
            rows=_int(m.get("rows"), 24),
            client_addr=str(m.get("client_addr", "")),
            kind=str(m.get(SESSION_KIND, "web")),
            command=str(m.get("command", "")),
        )

    async def list(self) -> list[api.RecordingEntry]:
        return [await self.describe(s) for s in await self.streams()]

    async def streams(
        self, since: float | None = None, limit: int = 1000
    ) -> Sequence[StreamInfo]:
        """The recordings' streams (not their indexes), oldest first, of the
        newest ``2 * limit`` streams created at or after ``since``."""
        found = await self.store.list_streams(since=since, limit=2 * limit)
        return [s for s in found if s.meta.get("kind") == KIND]

    async def get(self, id: str, hint: str = "") -> StreamInfo:
        """The recording ``id``; NotFoundError (with ``hint``) if there is none."""
        _check_id(id)
        info = await self.store.get_stream(id)
        if info is None or info.meta.get("kind") != KIND:
            raise api.NotFoundError(f"no recording {printable(id, MAX_ID)!r}{hint}")
        return info

    async def read(self, id: str, start: int, length: int) -> api.RecordingBytes:
        return await self.read_from(await self.get(id), start, length)

    async def read_from(
        self, info: StreamInfo, start: int, length: int
    ) -> api.RecordingBytes:
        if start < 0 or length < 0:
            raise api.BadParameter("a range is not negative")
        length = min(length, api.RECORDING_READ)
        data = await self.store.read_range(info.stream_id, start, length)
        return api.RecordingBytes(data, info.size, info.complete)

    async def delete(self, id: str, reason: str | None = None) -> None:
        """Remove the recording and its index; ``reason`` goes into the audit
        event (``retention`` when `teleconch.auth.retention` removes it)."""
        info = await self.get(id, " (see `teleconch-ctl recordings ls`)")
        await self.store.delete_stream(id)
        await self.store.delete_stream(id + INDEX_SUFFIX)
        why: dict[str, Any] = {"reason": reason} if reason else {}
        await self.audit(
            "recording.delete",
            user=str(info.meta.get("user", "")),
            session_id=id,
            **why,
        )

    async def _denied(self, proxy: str, info: StreamInfo) -> NoReturn:
        await self.audit(
            "auth.api.denied",
            user=proxy,
            success=False,
            command="AppendRecording",
            caller_role="proxy",
            session_id=info.stream_id,
            reason=f"the recording is uploaded by proxy {info.meta.get('proxy')!r}",
        )
        raise api.AccessDenied(
            f"recording {info.stream_id!r} is uploaded by another proxy: a proxy "
            "adds only to the recordings it started"
        )
