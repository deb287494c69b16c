"""A recording read in bounded ranges for the browser's player.

The player never holds a whole recording, and neither does the proxy for it:
each call of the events route reads whole frames from one frame boundary
(an offset that seek or the previous range gave), through the Auth API's
`ReadRecordingAs` in `RECORDING_READ` pieces, at most `MAX_RANGE` stored bytes
and `MAX_DECODED` bytes of output (a frame of ``yes`` output is a few
hundred stored bytes for 32 KiB of output), and decodes them into the events
the page plays.  At least one frame always comes back, so a range always
moves on.

Decoding a full range (zlib, then base64 for JSON) takes 1.5 to 2.3 ms
(bench/bench_player.py prints it), at the reactor's bound of about 2 ms, so
it runs on the thread pool given, or inline where none is (unit tests).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

import attrs
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.threads import deferToThreadPool

from teleconch.auth import protocol as api
from teleconch.recording_format import (
    HEADER,
    MAX_FRAME,
    BadRecording,
    Event,
    decode_frame,
    frame_length,
)

#: The most stored bytes one range reads (about four AMP reads).
MAX_RANGE = 256 * 1024
#: The most output bytes one range carries (past its first frame).
MAX_DECODED = 512 * 1024

NOT_A_FRAME = (
    "offset {offset} is not the start of a frame of recording {id}: use an "
    "offset that seek or the previous range's next_offset gave"
)


#: A reactor that runs work on its thread pool (IReactorThreads, which
#: includes hearing back from it).
ThreadedReactor = IReactorThreads


class Reader(Protocol):
    """The part of `AuthAgent` a range is read through."""

    async def read_recording_as(
        self, viewer: str, id: str, start: int, length: int
    ) -> api.RecordingBytes: ...


@attrs.frozen
class Range:
    """Whole frames of a recording, from ``offset`` to ``next_offset``."""

    frames: tuple[bytes, ...]
    offset: int
    next_offset: int
    size: int
    complete: bool

    @property
    def end(self) -> bool:
        return self.complete and self.next_offset >= self.size


class RangeError(ValueError):
    """An offset that is not a frame boundary of the recording (a 400)."""


async def read_range(
    agent: Reader, viewer: str, id: str, offset: int, max_bytes: int
) -> Range:
    """Whole frames from ``offset``: at least one, then as many as fit
    ``max_bytes`` (capped at `MAX_RANGE`) of stored bytes.

    The first read (one AMP value, so it holds the first frame whole) says
    the size; the reads for the rest of the range go out together."""
    budget = max(1, min(max_bytes, MAX_RANGE))
    first = await agent.read_recording_as(viewer, id, offset, api.RECORDING_READ)
    if offset > first.size:
        raise RangeError(
            f"offset {offset} is past the end of recording {id} ({first.size} bytes)"
        )
    end = min(first.size, offset + budget + MAX_FRAME)
    starts = range(offset + len(first.data), end, api.RECORDING_READ)
    rest = await gatherResults(
        [
            ensureDeferred(
                agent.read_recording_as(
                    viewer, id, at, min(api.RECORDING_READ, end - at)
                )
            )
            for at in starts
        ],
        consumeErrors=True,
    )
    buf = first.data + b"".join(r.data for r in rest)
    last = rest[-1] if rest else first
    frames: list[bytes] = []
    used = 0
    while (n := _whole_frame(buf, used, not frames, offset, id)) is not None:
        if frames and used + n > budget:
            break
        frames.append(buf[used : used + n])
        used += n
    if not frames and buf:
        raise RangeError(NOT_A_FRAME.format(offset=offset, id=id))
    return Range(tuple(frames), offset, offset + used, last.size, last.complete)


def _whole_frame(buf: bytes, at: int, first: bool, offset: int, id: str) -> int | None:
    """The length of the frame at ``at`` in ``buf`` if it is all there.

    The first frame of a range is where the caller said a frame starts: a
    header that cannot be one is a `RangeError`.  The frames after it were
    checked when they were stored."""
    try:
        n = frame_length(buf, at)
    except BadRecording:
        if first:
            raise RangeError(NOT_A_FRAME.format(offset=offset, id=id)) from None
        raise
    if first and not _plausible(buf):
        raise RangeError(NOT_A_FRAME.format(offset=offset, id=id))
    return n if n is not None and at + n <= len(buf) else None


def _plausible(buf: bytes) -> bool:
    """Whether ``buf`` starts like a frame: a zlib header after ours (the
    first frame of a range is checked before more is read for it)."""
    body = buf[HEADER.size : HEADER.size + 2]
    if len(body) < 2:
        return True
    return body[0] & 0x0F == 8 and ((body[0] << 8) | body[1]) % 31 == 0


def event_json(event: Event) -> dict[str, Any]:
    """One event as the player takes it: output as base64, sizes as numbers."""
    if event.kind == "print":
        return {
            "ms": event.ms,
            "type": "print",
            "data": base64.b64encode(event.data).decode("ascii"),
        }
    fields = {k: v for k, v in event.fields.items() if k not in ("ms", "type")}
    return {**fields, "ms": event.ms, "type": event.kind}


def decode_range(r: Range, id: str) -> dict[str, Any]:
    """The events route's answer for a range: events of whole frames, up to
    `MAX_DECODED` bytes of output past the first frame.  Blocking (zlib)."""
    events: list[dict[str, Any]] = []
    decoded, at = 0, r.offset
    for i, frame in enumerate(r.frames):
        try:
            frame_events = decode_frame(frame)
        except BadRecording:
            if i == 0:
                raise RangeError(NOT_A_FRAME.format(offset=r.offset, id=id)) from None
            raise
        output = sum(len(e.data) for e in frame_events)
        if i > 0 and decoded + output > MAX_DECODED:
            break
        decoded += output
        events.extend(event_json(e) for e in frame_events if e.kind != "input")
        at += len(frame)
    end = r.complete and at >= r.size
    return {"events": events, "next_offset": at, "end": end}


Blocking = Callable[[Range, str], dict[str, Any]]


class Decoder:
    """Runs `decode_range` on the reactor's thread pool (inline without one)."""

    def __init__(self, threads: ThreadedReactor | None) -> None:
        self._threads = threads

    async def decode(self, r: Range, id: str) -> dict[str, Any]:
        if self._threads is None:
            return decode_range(r, id)
        pool = self._threads.getThreadPool()
        answer: dict[str, Any] = await deferToThreadPool(
            cast(IReactorFromThreads, self._threads), pool, decode_range, r, id
        )
        return answer


def first_event(frames: Iterable[bytes], kind: str) -> Event | None:
    """The first event of ``kind`` in the first frame (a session.start)."""
    for frame in frames:
        for event in decode_frame(frame):
            if event.kind == kind:
                return event
        return None
    return None
