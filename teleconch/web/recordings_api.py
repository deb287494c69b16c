"""The web API of session recordings, for the recordings page and the player.

Under ``/v1/webapi/sites/<cluster>/recordings`` (a `SessionResource`: cookie
and bearer, GET only)::

    ?user=&node=&q=&since=&limit=      the recordings this person may see
    /<sid>                             one, with its duration and size
    /<sid>/seek?ms=T                   the frame holding time T
    /<sid>/events?offset=N&max_bytes=M  events of whole frames from N
    /<sid>/events?ms=T&until=N         ... from the frame holding T, before N

Who may see a recording is decided once, by the auth service (the Auth
API's ``*As`` commands name the web session's user as the viewer).  A
recording this person may not see is the same 404 as one that does not
exist, so the answer does not tell which.  Ranges are bounded and decoded
off the reactor (`teleconch.web.recording_ranges`).
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from twisted.web.server import Request

from teleconch.auth import protocol as api
from teleconch.recording_format import BadRecording
from teleconch.text import printable
from teleconch.web.http import HTTPError
from teleconch.web.recording_ranges import (
    MAX_RANGE,
    Decoder,
    RangeError,
    first_event,
    read_range,
)
from teleconch.web.websession import Session, SessionResource, WebSessions

#: What a list answers at most, and by default (the auth service's default).
MAX_LIST, DEFAULT_LIST = 1000, 200
MAX_FILTER = 200
MAX_ID = 128
#: Times and offsets as JSON numbers a browser holds exactly.
MAX_NUMBER = 2**53 - 1
_NUMBER = re.compile(rb"[0-9]{1,16}")
_SINCE = re.compile(rb"[0-9]{1,12}(\.[0-9]{1,6})?")
UNSEEN = (
    "no recording {id!r} that you may see: it does not exist, or it is another "
    "user's (an auditor sees every recording)"
)


def _arg(request: Request, name: str) -> bytes | None:
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"give {name!r} once")
    return values[0]


def _number(request: Request, name: str, default: int | None = None) -> int:
    raw = _arg(request, name)
    if raw is None or raw == b"":
        if default is None:
            raise HTTPError(400, f"{name!r} is missing: give a whole number, e.g. 0")
        return default
    if not _NUMBER.fullmatch(raw) or int(raw) > MAX_NUMBER:
        raise HTTPError(400, f"{name!r} must be a whole number from 0 to {MAX_NUMBER}")
    return int(raw)


def _text(request: Request, name: str) -> str:
    raw = _arg(request, name) or b""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"{name!r} is not UTF-8 text") from None
    if len(value) > MAX_FILTER or not value.isprintable():
        raise HTTPError(
            400, f"{name!r} must be printable text of at most {MAX_FILTER} characters"
        )
    return value


def _since(request: Request) -> float:
    raw = _arg(request, "since") or b"0"
    if not _SINCE.fullmatch(raw):
        raise HTTPError(400, "'since' must be seconds since the epoch, e.g. 1700000000")
    return float(raw)


def _recording_id(segment: bytes) -> str:
    try:
        sid = segment.decode("utf-8")
    except UnicodeDecodeError:
        sid = ""
    if not sid or len(sid) > MAX_ID or not sid.isprintable():
        raise HTTPError(400, f"a recording id is 1 to {MAX_ID} printable characters")
    return sid


async def _as_viewer(call: Any, sid: str) -> Any:
    """An Auth API call for a recording; refused or absent are one 404."""
    try:
        return await call
    except (api.AccessDenied, api.NotFoundError):
        raise api.NotFoundError(UNSEEN.format(id=printable(sid, MAX_ID))) from None


class RecordingsResource(SessionResource):
    """GET /v1/webapi/sites/<cluster>/recordings and everything under it."""

    def __init__(self, sessions: WebSessions, decoder: Decoder) -> None:
        super().__init__(sessions)
        self._decoder = decoder

    async def on_get(self, request: Request, session: Session) -> Any:
        path = [p for p in (request.postpath or [])]
        if path and path[-1] == b"":
            path.pop()
        viewer = session.info.user
        if not path:
            return await self._list(request, viewer)
        sid = _recording_id(path[0])
        if len(path) == 1:
            return await self._one(viewer, sid)
        if len(path) == 2 and path[1] == b"seek":
            return await self._seek(request, viewer, sid)
        if len(path) == 2 and path[1] == b"events":
            return await self._events(request, viewer, sid)
        raise HTTPError(404, "not found: a recording has /seek and /events")

    async def _list(self, request: Request, viewer: str) -> Any:
        limit = _number(request, "limit", DEFAULT_LIST)
        if not 1 <= limit <= MAX_LIST:
            raise HTTPError(400, f"'limit' must be from 1 to {MAX_LIST}")
        query = api.RecordingQuery(
            viewer,
            user=_text(request, "user"),
            node=_text(request, "node"),
            since=_since(request),
            text=_text(request, "q"),
            limit=limit,
        )
        found = await self.sessions.agent.search_recordings(query)
        # cut_short: the text search stopped at its bound of work; there
        # may be more matches (the page says to narrow it).
        return {
            "recordings": [r.to_json() for r in found.recordings],
            "cut_short": found.cut_short,
        }

    async def _one(self, viewer: str, sid: str) -> Any:
        """The recording's entry, from its session.start event (the Auth
        API finds by user, node and time, not by id) and its seek answer."""
        agent = self.sessions.agent
        position = await _as_viewer(agent.seek_recording(viewer, sid, 0), sid)
        first = await _as_viewer(read_range(agent, viewer, sid, 0, 1), sid)
        try:
            start = first_event(first.frames, "session.start")
        except BadRecording:
            start = None
        fields = dict(start.fields) if start is not None else {}
        if "session_kind" in fields:
            fields["kind"] = fields.pop("session_kind")
        known = attrs.fields_dict(api.RecordingEntry)
        entry = {
            **{k: v for k, v in fields.items() if k in known},
            "id": sid,
            "start": float(fields.get("time", 0.0)),
            "duration_ms": position.duration_ms,
            "size": position.size,
            "complete": first.complete,
        }
        for key in ("user", "node", "login", "client_addr", "kind", "command"):
            if key in entry:
                entry[key] = str(entry[key])
        for key in ("user", "node", "login"):
            entry.setdefault(key, "")
        recording = api.RecordingEntry(**entry)
        return {
            "recording": recording.to_json(),
            "duration_ms": position.duration_ms,
            "size": position.size,
        }

    async def _seek(self, request: Request, viewer: str, sid: str) -> Any:
        ms = _number(request, "ms")
        agent = self.sessions.agent
        p = await _as_viewer(agent.seek_recording(viewer, sid, ms), sid)
        return {
            "offset": p.offset,
            "ms": p.ms,
            "duration_ms": p.duration_ms,
            "size": p.size,
        }

    async def _events(self, request: Request, viewer: str, sid: str) -> Any:
        """From ``offset`` (a frame boundary), or from the frame holding time
        ``ms`` (a seek and its range in one call: the answer says the
        frame's ``offset`` and ``ms``), up to ``max_bytes`` stored bytes and
        never at or past offset ``until`` (a player walking back to the
        frames before one it has)."""
        agent = self.sessions.agent
        at: dict[str, int] = {}
        if _arg(request, "ms") is not None:
            if _arg(request, "offset") is not None:
                raise HTTPError(400, "give 'offset' or 'ms', not both")
            ms = _number(request, "ms")
            p = await _as_viewer(agent.seek_recording(viewer, sid, ms), sid)
            at = {"offset": p.offset, "ms": p.ms}
            offset = p.offset
        else:
            offset = _number(request, "offset")
        max_bytes = _number(request, "max_bytes", MAX_RANGE)
        until = _number(request, "until", MAX_NUMBER)
        if until <= offset:
            if not at:
                raise HTTPError(400, "'until' must be past 'offset'")
            return {"events": [], "next_offset": offset, "end": False, **at}
        budget = min(max_bytes, until - offset)
        try:
            r = await _as_viewer(read_range(agent, viewer, sid, offset, budget), sid)
            answer = await self._decoder.decode(r, sid)
        except RangeError as e:
            raise HTTPError(400, str(e)) from None
        return {**answer, **at}
