"""Session recordings: uploaded by proxies, read by admins, and by the people
who may see them (``FindRecordings``, ``ReadRecordingAs``, ``SeekRecording``:
a proxy asks for a ``viewer`` it authenticated; the auth service decides,
in `teleconch.auth.recording_access`)."""

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
    cols: int = 80
    rows: int = 24
    client_addr: str = ""
    #: How the session was opened: web (the web terminal) | ssh (the recording proxy).
    kind: str = "web"
    #: The command it ran; empty for a shell.
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> RecordingEntry:
        return cls(**value)


@attrs.frozen
class Recordings:
    recordings: tuple[RecordingEntry, ...]
    #: A text search stopped at its bound of work before looking at every
    #: recording: there may be more matches (narrow it by user, node or since).
    cut_short: bool = False


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

# --- for the people who may see them (teleconch.auth.recording_access) ------

VIEWER_ROLES = frozenset({ROLE_PROXY, ROLE_ADMIN})


@attrs.frozen
class RecordingQuery:
    #: The user asking, as the proxy authenticated them.
    viewer: str
    user: str = ""  # only this user's
    node: str = ""  # only on this node (name)
    since: float = 0.0  # started at or after (epoch seconds)
    #: Only sessions whose output contains this text (case-insensitive).
    text: str = ""
    limit: int = 200  # at most; newest first


class FindRecordings(AuthCommand[RecordingQuery, Recordings]):
    """The recordings ``viewer`` may see, newest first, filtered."""

    roles = VIEWER_ROLES


@attrs.frozen
class ViewerRange:
    viewer: str
    id: str
    start: int
    length: int  # at most RECORDING_READ


class ReadRecordingAs(AuthCommand[ViewerRange, RecordingBytes]):
    """A range of a recording, if ``viewer`` may see it."""

    roles = VIEWER_ROLES


@attrs.frozen
class RecordingSeek:
    viewer: str
    id: str
    ms: int


@attrs.frozen
class RecordingPosition:
    #: The byte offset of the frame holding time ``ms`` (the last frame
    #: starting at or before it).
    offset: int
    ms: int  # that frame's start time
    duration_ms: int  # the recording's duration (so far, if incomplete)
    size: int  # bytes stored (so far)


class SeekRecording(AuthCommand[RecordingSeek, RecordingPosition]):
    """Where a player reads to show time ``ms``: a binary search of the index."""

    roles = VIEWER_ROLES
