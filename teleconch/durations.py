"""Durations as people type them: ``8h``, ``30m``, ``1h30m``, ``90s`` or seconds;
and a moment (``--since``) as a duration ago or a date."""

from __future__ import annotations

import re
from datetime import datetime

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([dhms])")


def parse_duration(text: str) -> int:
    """Seconds in ``text``; ValueError with an example when it cannot be read."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(
            f"{text!r} is not a duration; write e.g. 8h, 30m, 1h30m or 90s"
        )
    return sum(int(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    out: list[str] = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not out):
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)


def parse_since(text: str, now: float) -> float:
    """The moment ``text`` names, in seconds since the epoch: a duration ago
    (``2h``, ``7d``) or a date, ISO 8601 (``2026-12-01``, ``2026-12-01T09:30``,
    local time unless it says its offset)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration ago (e.g. 2h, 7d) nor a date "
            "(e.g. 2026-12-01 or 2026-12-01T09:30)"
        ) from None
