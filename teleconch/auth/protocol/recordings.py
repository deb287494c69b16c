"""Session recordings: uploaded by proxies, read by admins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from teleconch.auth.protocol.common import Name
from teleconch.auth.wire import (
    AuthCommand,
    Empty,
)
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY

# --- session recordings (teleconch.recording_format; teleconch.auth.recordings)


@attrs.frozen
class RecordingStart:
    id: str
    #: What the recording is of: user, login, node, client_addr, cols, rows, start.
    meta: Mapping[str, Any]


@attrs.frozen
class RecordingState:
    #: Bytes stored so far: where the upload goes on.
    size: int
    complete: bool


class StartRecording(AuthCommand[RecordingStart, RecordingState]):
    """A proxy starts (or resumes) uploading a recording; again is harmless."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class RecordingFrame:
    id: str
    offset: int
    #: One whole frame of `teleconch.recording_format`.
    frame: bytes


@attrs.frozen
class RecordingSize:
    size: int


class AppendRecording(AuthCommand[RecordingFrame, RecordingSize]):
    """One frame at ``offset``; a retry of a stored frame is a no-op."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class RecordingEnd:
    id: str
    duration_ms: int


class CompleteRecording(AuthCommand[RecordingEnd, RecordingSize]):
    """Every frame is stored: audited once as ``session.upload``."""

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class RecordingEntry:
    id: str
    user: str
    node: str
    login: str
    start: float
    duration_ms: int
    size: int
    complete: bool

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> RecordingEntry:
        return cls(**value)


@attrs.frozen
class Recordings:
    recordings: tuple[RecordingEntry, ...]


class ListRecordings(AuthCommand[Empty, Recordings]):
    """Every recording, oldest first."""

    roles = frozenset({ROLE_ADMIN})


@attrs.frozen
class RecordingRange:
    id: str
    start: int
    length: int


@attrs.frozen
class RecordingBytes:
    data: bytes
    size: int
    complete: bool


class ReadRecording(AuthCommand[RecordingRange, RecordingBytes]):
    """Up to `RECORDING_READ` bytes of a recording from ``start``."""

    roles = frozenset({ROLE_ADMIN})


class DeleteRecording(AuthCommand[Name, Empty]):
    """Remove a recording and its index; audited as ``recording.delete``."""

    roles = frozenset({ROLE_ADMIN})


#: The most one ReadRecording returns (one AMP value).
RECORDING_READ = 60_000
