"""Who may see a recording, and what they see: the one place this is decided.

A proxy asks on behalf of a user it authenticated (by certificate or web
session) and names them as the ``viewer``.  The viewer's roles are looked
up here, in the store, as they are now (not as a certificate said when it
was issued): a user sees their own recordings; one holding a role with the
rule ``sessions:read`` (the built-in ``auditor``) or ``*`` (``admin``) sees
all; a user who is no longer in the cluster sees nothing.  Every refusal is
audited as ``recording.denied``.
"""

from __future__ import annotations

import attrs

from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.recording_search import MAX_TEXT, SCAN_BUDGET, Budget, TextSearch
from teleconch.auth.recordings import Recordings
from teleconch.auth.store import Store
from teleconch.auth.types import StreamInfo
from teleconch.text import printable

#: A role with one of these rules sees every recording.
SEE_ALL_RULES = frozenset({"sessions:read", "*"})
MAX_LIMIT = 1000
#: Streams a listing looks at, newest first, before filtering.
LIST_WINDOW = 10_000
#: How far a proxy's clock (a session's start) may be ahead of the auth service's.
CLOCK_SKEW = 86400.0


@attrs.frozen
class Viewer:
    name: str
    sees_all: bool

    def may_see(self, info: StreamInfo) -> bool:
        return self.sees_all or info.meta.get("user") == self.name


class RecordingAccess:
    """FindRecordings, ReadRecordingAs and SeekRecording, for a viewer."""

    def __init__(
        self,
        store: Store,
        recordings: Recordings,
        log: AuditLog,
        search: TextSearch,
        search_budget: int = SCAN_BUDGET,
    ) -> None:
        self._store = store
        self._recordings = recordings
        self._audit = log.audit
        self._search = search
        #: Stored bytes one text search may read (see recording_search).
        self._search_budget = search_budget

    async def viewer(self, name: str, command: str) -> Viewer:
        """The viewer as the store knows them now; AccessDenied if it does not."""
        user = await self._store.get_user(name) if name else None
        if user is None:
            await self._denied(name, command, "", "the viewer is not a user")
            raise api.AccessDenied(
                f"user {printable(name, 64)!r} is not a user of this cluster: "
                "only a user's recordings can be shown to them"
            )
        roles = await self._store.get_roles(user.roles)
        sees_all = any(rule in SEE_ALL_RULES for role in roles for rule in role.rules)
        return Viewer(user.name, sees_all)

    async def visible(self, name: str, id: str, command: str) -> StreamInfo:
        """The recording, if ``name`` may see it; the refusal is audited."""
        viewer = await self.viewer(name, command)
        info = await self._recordings.get(id)
        if not viewer.may_see(info):
            await self._denied(
                viewer.name, command, id, "the recording is another user's"
            )
            raise api.AccessDenied(
                f"recording {printable(id, 128)!r} is not yours; ask an auditor "
                "(a role with sessions:read) to look at it"
            )
        return info

    async def find(self, q: api.RecordingQuery) -> api.Recordings:
        viewer = await self.viewer(q.viewer, "FindRecordings")
        if not 0 < q.limit <= MAX_LIMIT:
            raise api.BadParameter(f"a limit is between 1 and {MAX_LIMIT}")
        if len(q.text) > MAX_TEXT:
            raise api.BadParameter(f"a search text is at most {MAX_TEXT} characters")
        if q.user and q.user != viewer.name and not viewer.sees_all:
            await self._denied(
                viewer.name, "FindRecordings", "", f"asked for {q.user!r}'s recordings"
            )
            raise api.AccessDenied(
                f"you may list only your own recordings, not {printable(q.user, 64)!r}'s; "
                "ask an auditor (a role with sessions:read)"
            )
        # A recording's stream is made when its upload starts, at or after the
        # session's start by the auth service's clock, give or take the proxy's skew.
        created = q.since - CLOCK_SKEW if q.since else None
        found = await self._recordings.streams(since=created, limit=LIST_WINDOW)
        candidates = sorted(
            (
                s
                for s in found
                if viewer.may_see(s)
                and (not q.user or s.meta.get("user") == q.user)
                and (not q.node or s.meta.get("node") == q.node)
                and _start(s) >= q.since
            ),
            key=lambda s: (_start(s), s.stream_id),
            reverse=True,
        )
        out: list[api.RecordingEntry] = []
        budget = Budget(self._search_budget)
        for info in candidates:
            if len(out) >= q.limit or budget.spent:
                break
            if q.text and not await self._search.contains(info, q.text, budget):
                continue
            out.append(await self._recordings.describe(info))
        cut_short = bool(q.text) and budget.spent
        return api.Recordings(tuple(out), cut_short)

    async def read(self, r: api.ViewerRange) -> api.RecordingBytes:
        info = await self.visible(r.viewer, r.id, "ReadRecordingAs")
        return await self._recordings.read_from(info, r.start, r.length)

    async def seek(self, s: api.RecordingSeek) -> api.RecordingPosition:
        info = await self.visible(s.viewer, s.id, "SeekRecording")
        if s.ms < 0:
            raise api.BadParameter("a time in a recording is not negative")
        return await self._recordings.position(info, s.ms)

    async def _denied(self, viewer: str, command: str, id: str, reason: str) -> None:
        await self._audit(
            "recording.denied",
            user=viewer,
            success=False,
            command=command,
            session_id=id,
            reason=reason,
        )


def _start(info: StreamInfo) -> float:
    try:
        return float(info.meta.get("start", info.created))
    except (TypeError, ValueError):
        return info.created
