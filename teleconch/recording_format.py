"""The session recording format: what the proxy spools and the auth service stores.

A recording is a sequence of **frames**, appended as the session goes, so
the stream can be uploaded, resumed and read in pieces::

    frame  = header body
    header = >IQ   (len(body), ms: the time of the frame's first event)
    body   = zlib(record*)
    record = >I len(json) json bytes[json["len"]]

Each record is one event, a JSON object with ``e`` (its kind) and ``ms``
(milliseconds since the session started), Teleport's names:

- ``session.start``: ``id user login node client_addr cols rows time``
  (``time``: the start, seconds since the epoch)
- ``print``: ``offset`` (of its first byte in the session's output) and
  ``len``; the output bytes follow the JSON, apart from it (never base64)
- ``input``: ``len``; what a party typed follows, as print's bytes do
  (recorded only where ``record_input`` is on)
- ``resize``: ``cols rows``
- ``session.join``, ``session.leave``: ``user mode party_id client_addr``
  (``leave``: and ``reason``): someone joined or left the session
- ``session.end``: ``exit_code`` (or null) and ``reason``

A frame holds at most `MAX_BATCH` bytes of records before compression (one
print event at most `MAX_PRINT`), so a compressed frame always fits one AMP
value.  The auth service keeps, next to each recording, an index of 16-byte
entries ``>QQ (ms, offset)``, one per frame and a last one ``(duration,
size)`` when the recording is complete: a player seeks with it to the frame
at a time without reading from the start.
"""

from __future__ import annotations

import codecs
import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

HEADER = struct.Struct(">IQ")
RECORD = struct.Struct(">I")
INDEX_ENTRY = struct.Struct(">QQ")

#: Records per frame, before compression, and the output one print event carries.
MAX_BATCH = 32 * 1024
MAX_PRINT = 16 * 1024
#: The largest frame (header + compressed body): fits one AMP value (64 KiB).
MAX_FRAME = 60_000
#: What a frame may decompress to (a bound against a zlib bomb).
MAX_BODY = 4 * MAX_BATCH


class BadRecording(ValueError):
    """Bytes that are not frames of this format."""


@attrs.frozen
class Event:
    """One recorded event: its kind, its time, its fields and (print) its bytes."""

    kind: str
    ms: int
    fields: dict[str, Any] = attrs.field(factory=dict)
    data: bytes = b""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind, "ms": self.ms, **self.fields}
        if self.kind in ("print", "input"):
            out["data"] = self.data.decode("utf-8", "replace")
        return out


def encode_record(kind: str, ms: int, data: bytes = b"", **fields: Any) -> bytes:
    head: dict[str, Any] = {"e": kind, "ms": ms, **fields}
    if data:
        head["len"] = len(data)
    text = json.dumps(head, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return RECORD.pack(len(text)) + text + data


def encode_frame(ms: int, records: bytes) -> bytes:
    body = zlib.compress(records, 6)
    frame = HEADER.pack(len(body), ms) + body
    assert len(frame) <= MAX_FRAME, len(frame)
    return frame


def frame_length(buf: bytes, at: int = 0) -> int | None:
    """The length of the whole frame starting at ``at``, or None when ``buf``
    does not hold its header yet."""
    if len(buf) - at < HEADER.size:
        return None
    body_len, _ = HEADER.unpack_from(buf, at)
    if HEADER.size + body_len > MAX_FRAME:
        raise BadRecording(f"a frame of {body_len} bytes is larger than allowed")
    return HEADER.size + int(body_len)


def frame_ms(frame: bytes) -> int:
    _, ms = HEADER.unpack_from(frame)
    return int(ms)


def decode_frame(frame: bytes) -> list[Event]:
    """The events of one whole frame; BadRecording for anything else."""
    n = frame_length(frame)
    if n is None or n != len(frame):
        raise BadRecording("not one whole frame")
    try:
        d = zlib.decompressobj()
        body = d.decompress(frame[HEADER.size :], MAX_BODY)
        if d.unconsumed_tail or not d.eof:
            raise BadRecording("a frame's body is truncated or too large")
    except zlib.error as e:
        raise BadRecording(f"a frame's body is not zlib data ({e})") from None
    events, at = [], 0
    while at < len(body):
        if len(body) - at < RECORD.size:
            raise BadRecording("a record is truncated")
        (n,) = RECORD.unpack_from(body, at)
        at += RECORD.size
        try:
            head = json.loads(body[at : at + n])
            kind, ms = str(head.pop("e")), int(head.pop("ms"))
            size = int(head.pop("len", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BadRecording("a record's header is not an event") from None
        at += n
        if size < 0 or at + size > len(body):
            raise BadRecording("a record's bytes are truncated")
        events.append(Event(kind, ms, head, bytes(body[at : at + size])))
        at += size
    return events


def split_frames(buf: bytes) -> tuple[list[bytes], int]:
    """The whole frames at the start of ``buf`` and the bytes they take."""
    frames, at = [], 0
    while (n := frame_length(buf, at)) is not None and at + n <= len(buf):
        frames.append(buf[at : at + n])
        at += n
    return frames, at


class FrameReader:
    """A stream's events as its pieces come, of any size: only the bytes of
    an unfinished frame are held between pieces."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[Event]:
        self._pending += chunk
        frames, used = split_frames(self._pending)
        self._pending = self._pending[used:]
        return [event for frame in frames for event in decode_frame(frame)]

    def end(self) -> None:
        """The stream is over: BadRecording if it stopped inside a frame."""
        if self._pending:
            raise BadRecording(
                f"the recording ends inside a frame ({len(self._pending)} bytes)"
            )


def decode_stream(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Every event of a stream read in pieces of any size."""
    reader = FrameReader()
    for chunk in chunks:
        yield from reader.feed(chunk)
    reader.end()


# --- exports


class Asciicast:
    """asciicast v2, an event at a time: a header line (from session.start),
    then ``[seconds, "o", text]``, ``[seconds, "i", text]`` (input, where it
    was recorded) and ``[seconds, "r", "COLSxROWS"]`` lines.  Output and
    input are each decoded as UTF-8 across events (a character split
    between two stays whole)."""

    def __init__(self) -> None:
        self._decoder: codecs.IncrementalDecoder | None = None
        self._input = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, event: Event) -> Iterator[str]:
        if event.kind == "session.start":
            f = event.fields
            header = {
                "version": 2,
                "width": f.get("cols", 80),
                "height": f.get("rows", 24),
                "timestamp": int(f.get("time", 0)),
                "title": f"{f.get('login', '')}@{f.get('node', '')}",
                "env": {"TERM": "xterm-256color"},
            }
            self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
            yield json.dumps(header)
        elif self._decoder is None:
            raise BadRecording("the recording does not start with session.start")
        elif event.kind == "print":
            text = self._decoder.decode(event.data)
            if text:
                yield json.dumps([event.ms / 1000, "o", text])
        elif event.kind == "input":
            typed = self._input.decode(event.data)
            if typed:
                yield json.dumps([event.ms / 1000, "i", typed])
        elif event.kind == "resize":
            size = f"{event.fields['cols']}x{event.fields['rows']}"
            yield json.dumps([event.ms / 1000, "r", size])


def asciicast(events: Iterable[Event]) -> Iterator[str]:
    """A whole recording's events as asciicast v2 lines."""
    cast = Asciicast()
    for event in events:
        yield from cast.feed(event)


def text(events: Iterable[Event]) -> Iterator[bytes]:
    """The session's output bytes, as the terminal got them."""
    for event in events:
        if event.kind == "print":
            yield event.data
