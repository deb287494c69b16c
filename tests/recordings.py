"""Recordings made to order for the player's tests and bench: events at
chosen times, in frames of `teleconch.recording_format`, stored through the
auth service's own `Recordings` (as a proxy's upload would) or kept in
memory for a double of the Auth API."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from teleconch.auth.recordings import Recordings
from teleconch.recording_format import MAX_BATCH, MAX_PRINT, encode_frame, encode_record

START_TIME = 1_700_000_000.0


@attrs.frozen
class Ev:
    """One event to record: its time, kind, output bytes and fields."""

    ms: int
    kind: str = "print"
    data: bytes = b""
    fields: dict[str, Any] = attrs.field(factory=dict)


def start(
    sid: str, user: str, node: str = "web1", cols: int = 80, rows: int = 24
) -> Ev:
    return Ev(
        0,
        "session.start",
        fields={
            "id": sid,
            "user": user,
            "login": "root",
            "node": node,
            "client_addr": "127.0.0.1",
            "cols": cols,
            "rows": rows,
            "time": START_TIME,
        },
    )


def out(ms: int, text: str | bytes) -> Ev:
    return Ev(ms, data=text.encode() if isinstance(text, str) else text)


def frames(events: Iterable[Ev], per_frame: int = 1) -> list[bytes]:
    """The events in frames of at most ``per_frame`` events (and what fits)."""
    result, records, first, count = [], b"", 0, 0
    for e in events:
        assert len(e.data) <= MAX_PRINT
        record = encode_record(e.kind, e.ms, e.data, **e.fields)
        if records and (count >= per_frame or len(records) + len(record) > MAX_BATCH):
            result.append(encode_frame(first, records))
            records, count = b"", 0
        if not records:
            first = e.ms
        records += record
        count += 1
    if records:
        result.append(encode_frame(first, records))
    return result


def end(ms: int, code: int = 0) -> Ev:
    return Ev(ms, "session.end", fields={"exit_code": code, "reason": "exit"})


def index(stream: Sequence[bytes]) -> list[tuple[int, int]]:
    """The (ms, offset) of each frame, as the auth service indexes them."""
    from teleconch.recording_format import frame_ms

    entries, at = [], 0
    for f in stream:
        entries.append((frame_ms(f), at))
        at += len(f)
    return entries


async def store(
    recordings: Recordings,
    sid: str,
    user: str,
    stream: Iterable[bytes],
    duration_ms: int,
    node: str = "web1",
    proxy: str = "testhost",
    complete: bool = True,
) -> int:
    """Upload ``stream`` to the auth service as a proxy would; its size."""
    meta = {"user": user, "login": "root", "node": node, "start": START_TIME}
    meta.update({"client_addr": "127.0.0.1", "cols": 80, "rows": 24})
    await recordings.start(proxy, sid, meta)
    at = 0
    for f in stream:
        at = await recordings.append(proxy, sid, at, f)
    if complete:
        await recordings.complete(proxy, sid, duration_ms)
    return at


def marked_screens(count: int, gap_ms: int, lines: int = 3) -> Iterator[Ev]:
    """``count`` screens, each cleared and showing ``SCREEN-<n>`` lines at
    ``n * gap_ms``: a seek to a time shows which screen it landed on."""
    for n in range(count):
        text = "\x1b[H\x1b[2J" + "".join(
            f"SCREEN-{n:04d} line {i}\r\n" for i in range(lines)
        )
        yield out(n * gap_ms, text)


LARGE_BYTES = 100 * 1024 * 1024
FRAME_GAP_MS = 100


def large_recording(sid: str, user: str, size: int = LARGE_BYTES) -> Iterator[bytes]:
    """About ``size`` stored bytes: frames every 100 ms of 30 KB of base64
    noise (which hardly compresses) ending ``AT-FRAME-<n>``, a full-screen
    clear every 24 frames."""
    noise = random.Random(1)
    yield from frames([start(sid, user, cols=120, rows=30)])
    n, stored = 0, 0
    while stored < size:
        body = base64.b64encode(noise.randbytes(22 * 1024)).decode()
        lines = "\r\n".join(body[i : i + 100] for i in range(0, len(body), 100))
        clear = "\x1b[H\x1b[2J" if n % 24 == 0 else ""
        text = f"{clear}{lines}\r\nAT-FRAME-{n:06d}\r\n"
        ms = (n + 1) * FRAME_GAP_MS
        halves = [out(ms, text[:15_000]), out(ms, text[15_000:])]
        (frame,) = frames(halves, per_frame=2)
        stored += len(frame)
        n += 1
        yield frame
