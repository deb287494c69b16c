"""Bounds on what an audit event may hold.

Fields of an event often come from outside (a name someone tried, the login
an SSH client asked for, a proxy's report): each is capped so that one event
stays small, whatever was sent.  Control characters are kept as they came,
for the record; every place that prints an event escapes them
(``teleconch.text``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch.auth.store import Store
from teleconch.auth.types import AuditEvent
from teleconch.text import clip

log = Logger()

MAX_USER = 128
MAX_STRING = 1024
MAX_ITEMS = 64
MAX_KEY = 64
MAX_DEPTH = 4


def bounded_user(user: str) -> str:
    return clip(user, MAX_USER)


def bounded(value: Any, depth: int = 0) -> Any:
    """``value`` with every string, list and mapping in it capped."""
    if isinstance(value, str):
        return clip(value, MAX_STRING)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= MAX_DEPTH:
        return clip(str(value), MAX_STRING)
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {
            clip(str(k), MAX_KEY): bounded(v, depth + 1) for k, v in items[:MAX_ITEMS]
        }
        if len(items) > MAX_ITEMS:
            out["..."] = f"{len(items) - MAX_ITEMS} more"
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        out_list = [bounded(v, depth + 1) for v in seq[:MAX_ITEMS]]
        if len(seq) > MAX_ITEMS:
            out_list.append(f"... {len(seq) - MAX_ITEMS} more")
        return out_list
    return clip(str(value), MAX_STRING)


def bounded_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = bounded(dict(fields), depth=1)
    return out


class AuditLog:
    """Writes the audit log (bounded, and as a log line) and searches it."""

    def __init__(self, store: Store, clock: IReactorTime) -> None:
        self.store = store
        self._clock = clock

    async def audit(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        user = bounded_user(user)
        fields = bounded_fields(fields)
        await self.store.append_event(
            AuditEvent(
                event=event,
                time=self._clock.seconds(),
                user=user,
                success=success,
                fields=fields,
            )
        )
        log.info(
            "audit {event} user={user} success={success} {fields}",
            event=event,
            user=user,
            success=success,
            fields=json.dumps(fields, sort_keys=True),
        )

    async def search_events(
        self,
        since: float | None,
        until: float | None,
        events: Sequence[str],
        user: str | None,
        limit: int,
    ) -> list[AuditEvent]:
        return await self.store.search_events(
            since=since,
            until=until,
            events=list(events) or None,
            user=user,
            limit=max(1, min(limit, 10000)),
        )
