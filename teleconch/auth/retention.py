"""Recordings removed once they are older than ``recordings_retention``.

A pass runs at start and then every `RETENTION_EVERY` seconds on the auth
service's clock.  A recording's age counts from its end (start + duration);
one still being uploaded (not complete: its proxy may be away, with the rest
in its spool) is kept `UPLOAD_GRACE` longer, so a late upload is not cut
short.  Each removal goes through `teleconch.auth.recordings.Recordings`
(the recording and its index) and is audited as ``recording.delete`` with
``reason: retention``.  The retention is read at each pass, so a
``teleconch-ctl cluster set recordings_retention=...`` applies at the next.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from teleconch.auth import protocol as api
from teleconch.auth.recordings import KIND, Recordings

log = Logger()

RETENTION_EVERY = 3600.0
UPLOAD_GRACE = 86400.0
#: Streams asked of the store at a time.
PAGE = 500


class RecordingRetention:
    """The retention loop of one auth service."""

    def __init__(
        self,
        clock: IReactorTime,
        recordings: Recordings,
        retention: Callable[[], Awaitable[int | None]],
    ) -> None:
        self._clock = clock
        self._recordings = recordings
        self._retention = retention
        self._loop = LoopingCall(self._pass)
        self._loop.clock = clock
        self._current: Deferred[int] | None = None

    def start(self) -> None:
        self._loop.start(RETENTION_EVERY, now=True)

    async def stop(self) -> None:
        """Stop the loop and let a pass under way finish (the store stays open)."""
        if self._loop.running:
            self._loop.stop()
        if self._current is not None:
            await self._current

    def _pass(self) -> Deferred[int]:
        d = Deferred.fromCoroutine(self.sweep())
        self._current = d
        d.addBoth(self._done)
        return d

    def _done(self, result: int) -> int:
        self._current = None
        return result

    async def _entries(self) -> AsyncIterator[api.RecordingEntry]:
        """Every recording, a page of streams at a time, newest pages first.  A page
        ends inside the streams made at one instant (a recording and its
        index are): those are asked for on their own (up to `PAGE` of them)."""
        store = self._recordings.store
        until: float | None = None
        while True:
            page = await store.list_streams(until=until, limit=PAGE)
            full = len(page) == PAGE
            if full:  # oldest first: page[0] is the instant it may end inside
                t = page[0].created
                ties = await store.list_streams(
                    since=t, until=math.nextafter(t, math.inf), limit=PAGE
                )
                page = [*ties, *(i for i in page if i.created != t)]
            for info in page:
                if info.meta.get("kind") == KIND:
                    yield await self._recordings.describe(info)
            if not full:
                return
            until = t

    async def sweep(self) -> int:
        """One pass: remove what is past the retention; how many.  Never
        raises: a failure is logged and the next pass tries again."""
        try:
            retention = await self._retention()
            if retention is None:
                return 0
            now = self._clock.seconds()
            expired = [
                entry.id
                async for entry in self._entries()
                if _expired(entry, retention, now)
            ]
            for id in expired:
                # one removed meanwhile (``teleconch-ctl recordings rm``) is gone
                with contextlib.suppress(api.NotFoundError):
                    await self._recordings.delete(id, reason="retention")
        except Exception:
            log.failure("recordings retention: the pass failed; next in an hour")
            return 0
        if expired:
            log.info(
                "recordings retention: removed {n} recording(s) older than {days:g} days",
                n=len(expired),
                days=retention / 86400,
            )
        return len(expired)


def _expired(entry: api.RecordingEntry, retention: int, now: float) -> bool:
    end = entry.start + entry.duration_ms / 1000
    keep = retention if entry.complete else retention + UPLOAD_GRACE
    return end + keep < now
