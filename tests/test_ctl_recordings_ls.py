"""``teleconch-ctl recordings ls --user --node --since``: which recordings it lists."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

import pytest
import pytest_twisted

from teleconch.auth import protocol as api
from teleconch.client import ctl_recordings
from teleconch.durations import parse_since

NOW = 1_700_000_000.0


def _entry(id: str, user: str, node: str, start: float) -> api.RecordingEntry:
    return api.RecordingEntry(id, user, node, "root", start, 1000, 10, True)


class _Agent:
    async def list_recordings(self) -> tuple[api.RecordingEntry, ...]:
        return (
            _entry("a", "alice", "web1", NOW - 3 * 86400),
            _entry("b", "bob", "web1", NOW - 3 * 3600),
            _entry("c", "alice", "db1", NOW - 600),
        )


async def _listed(capsys: Any, **filters: Any) -> list[str]:
    args = argparse.Namespace(
        format="json", now=NOW, **{"user": None, "node": None, "since": None, **filters}
    )
    await ctl_recordings.recordings_ls(_Agent(), args)  # type: ignore[arg-type]
    return [r["id"] for r in json.loads(capsys.readouterr().out)]


@pytest_twisted.ensureDeferred
async def test_ls_narrows_by_user_node_and_since_each_and_together(
    capsys: Any,
) -> None:
    assert await _listed(capsys) == ["a", "b", "c"]
    assert await _listed(capsys, user="alice") == ["a", "c"]
    assert await _listed(capsys, node="web1") == ["a", "b"]
    assert await _listed(capsys, since="4h") == ["b", "c"]
    assert await _listed(capsys, user="alice", since="1d") == ["c"]
    assert await _listed(capsys, user="alice", node="web1", since="1h") == []
    day = datetime.fromtimestamp(NOW - 86400).date().isoformat()
    assert await _listed(capsys, since=day) == ["b", "c"]


def test_since_is_a_duration_ago_or_a_date_else_an_error_with_examples() -> None:
    assert parse_since("2h", NOW) == NOW - 7200
    assert parse_since("2026-12-01T09:30:00+00:00", NOW) == 1796117400.0
    with pytest.raises(ValueError, match=r"neither a duration ago .* nor a date"):
        parse_since("yesterday", NOW)
