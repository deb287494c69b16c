"""The uploader: the spool's recordings to the auth service, frame by frame.

A pass goes over the spool (`teleconch.proxy.spool`), oldest first.  For
each recording it asks the auth service where the stored stream ends
(``StartRecording``: it creates it the first time), reads the spool file
from there (`READ_AHEAD` bytes at a time, in a thread, so a recording never
sits in memory whole) and appends its whole frames at their offsets
(``AppendRecording``: a frame stored already is a no-op, so a pass cut
short by a lost connection just runs again).  A finished recording, once
all its frames are stored, is completed (``CompleteRecording``, audited
``session.upload``) and its files removed.  A recording that nobody
writes and that has no end marker (its proxy stopped mid-session) is
finished with its whole frames; a torn last frame is dropped.

A pass runs every `PASS_EVERY` seconds and when a recorder flushes or ends
(`wake`); passes never overlap, and a failure (the auth service away) only
ends the pass: the next one resumes where the auth service says.

Life of a pass (`UploaderState`): IDLE -> RUNNING -> IDLE, or RUNNING ->
AGAIN (woken meanwhile: run once more) -> RUNNING.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from teleconch.auth import protocol as api
from teleconch.proxy.spool import InThread, Spool
from teleconch.recording_format import BadRecording, split_frames

log = Logger()

PASS_EVERY = 5.0
READ_AHEAD = 256 * 1024


class RecordingAgent(Protocol):
    """The part of `AuthAgent` the uploader uses."""

    async def start_recording(
        self, id: str, meta: Mapping[str, Any]
    ) -> api.RecordingState: ...

    async def append_recording(self, id: str, offset: int, frame: bytes) -> int: ...

    async def complete_recording(self, id: str, duration_ms: int) -> int: ...


class UploaderState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    AGAIN = "again"


_U = UploaderState
_MOVES: dict[UploaderState, frozenset[UploaderState]] = {
    _U.IDLE: frozenset({_U.RUNNING}),
    _U.RUNNING: frozenset({_U.IDLE, _U.AGAIN}),
    _U.AGAIN: frozenset({_U.RUNNING}),
}


class Uploader:
    """Streams the spool's recordings to the auth service, resumably."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        agent: RecordingAgent,
        spool: Spool,
        in_thread: InThread,
    ) -> None:
        self._clock = clock
        self._agent = agent
        self._spool = spool
        self._in_thread = in_thread
        self.state = UploaderState.IDLE
        self._loop: LoopingCall | None = None
        self._pass: Deferred[None] | None = None

    def _move(self, to: UploaderState) -> None:
        if to not in _MOVES[self.state]:
            raise AssertionError(f"uploader cannot go {self.state.value} -> {to.value}")
        self.state = to

    def start(self) -> None:
        """A pass now (what an earlier process left is uploaded), then one
        every `PASS_EVERY` seconds."""
        self._loop = LoopingCall(self.wake)
        self._loop.clock = self._clock
        self._loop.start(PASS_EVERY, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def wake(self, *_: Any) -> None:
        """Run a pass now, or once more after the one running."""
        if self.state is UploaderState.IDLE:
            self._move(UploaderState.RUNNING)
            self._pass = Deferred.fromCoroutine(self._passes())
        elif self.state is UploaderState.RUNNING:
            self._move(UploaderState.AGAIN)

    async def settled(self) -> None:
        """Once no pass is running (tests; the proxy stopping)."""
        while self._pass is not None and self.state is not UploaderState.IDLE:
            await self._pass

    async def _passes(self) -> None:
        while True:
            try:
                await self.upload_all()
            except Exception as e:
                log.warn(
                    "recording upload paused ({error}); it resumes on the next pass",
                    error=str(e) or type(e).__name__,
                )
            if self.state is UploaderState.AGAIN:
                self._move(UploaderState.RUNNING)
                continue
            self._move(UploaderState.IDLE)
            return

    async def upload_all(self) -> None:
        """One pass over the spool; raises at the first failure."""
        for sid in await self._in_thread(self._spool.sessions):
            await self.upload(sid)

    async def upload(self, sid: str) -> None:
        spool = self._spool
        meta = await self._in_thread(spool.meta, sid)
        writing = sid in spool.writing
        duration = None if writing else await self._in_thread(spool.done, sid)
        state = await self._agent.start_recording(sid, meta)
        offset = state.size
        if state.complete:
            await self._in_thread(spool.remove, sid)
            return
        while True:
            data = await self._in_thread(spool.read, sid, offset, READ_AHEAD)
            try:
                frames, _ = split_frames(data)
            except BadRecording as e:
                log.warn("recording {sid}: spool corrupt at {at}: {e}", sid=sid,
                         at=offset, e=str(e))  # fmt: skip
                frames = []
            for frame in frames:
                offset = await self._agent.append_recording(sid, offset, frame)
            if not frames or len(data) < READ_AHEAD:
                break  # the end of the file (a torn frame stays for later)
        if writing:
            return
        if duration is None:  # left by a proxy that stopped mid-session
            log.info("recording {sid}: finished after a proxy restart", sid=sid)
            duration = 0
        await self._agent.complete_recording(sid, duration)
        await self._in_thread(spool.remove, sid)
        log.info("recording {sid} uploaded ({size} bytes)", sid=sid, size=offset)
