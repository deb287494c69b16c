"""How a recording is shown to a person, for ``teleconch-ctl recordings`` and
``teleconch recordings`` / ``teleconch play`` alike.

A listing is a table (or JSON); a recording is written an event at a time as
its frames are decoded (`teleconch.recording_format.FrameReader`), so a long
one never sits in memory whole: ``asciicast`` (asciicast v2, for ``asciinema
play`` and ``asciinema cat``), ``json`` (one event per line) or ``text`` (the
output bytes as the terminal got them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import BinaryIO

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.client.ctl import _table, _when

FORMATS = ("asciicast", "json", "text")
HEADERS = ["ID", "User", "Node", "Login", "Start", "Duration", "Size", "Complete"]


def recordings_table(entries: Sequence[api.RecordingEntry]) -> str:
    rows = [
        (r.id, r.user, r.node, r.login, _when(r.start), f"{r.duration_ms / 1000:.1f}s",
         r.size, "yes" if r.complete else "no")
        for r in entries
    ]  # fmt: skip
    return _table(HEADERS, rows)


def recordings_json(entries: Sequence[api.RecordingEntry]) -> str:
    return json.dumps([r.to_json() for r in entries], indent=2)


class EventWriter:
    """Writes events to ``out`` in one of `FORMATS`, as they come."""

    def __init__(self, format: str, out: BinaryIO) -> None:
        assert format in FORMATS, format
        self._format = format
        self._out = out
        self._cast = fmt.Asciicast()

    def write(self, event: fmt.Event) -> None:
        if self._format == "text":
            if event.kind == "print":
                self._out.write(event.data)
        elif self._format == "json":
            self._out.write(json.dumps(event.to_json()).encode("utf-8") + b"\n")
        else:
            for line in self._cast.feed(event):
                self._out.write(line.encode("utf-8") + b"\n")
