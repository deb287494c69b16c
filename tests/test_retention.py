"""Recordings past ``recordings_retention`` removed by the auth service's loop.

Unit tests: the real `Recordings` and audit log on a MemoryStore, the loop
on a ``task.Clock`` (its passes run when the clock is advanced).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from teleconch import recording_format as fmt
from teleconch.auth import retention as ret
from teleconch.auth.audit import AuditLog
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.recordings import INDEX_SUFFIX, Recordings
from teleconch.auth.retention import RETENTION_EVERY, UPLOAD_GRACE, RecordingRetention
from tests.test_cluster_settings import done

NOW = 1_700_000_000.0
DAY = 86400


class Rig:
    def __init__(self, retention: int | None) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore()
        done(self.store.open())
        self.recordings = Recordings(
            self.store, self.clock, AuditLog(self.store, self.clock)
        )
        self.retention = retention
        self.loop = RecordingRetention(self.clock, self.recordings, self._retention)

    async def _retention(self) -> int | None:
        return self.retention

    def record(
        self, id: str, start: float, seconds: int, complete: bool = True
    ) -> None:
        """A recording of ``seconds`` that started at ``start``, uploaded now."""
        r = self.recordings
        done(r.start("proxy-a", id, {"user": "alice", "start": start}))
        ms = seconds * 1000
        frame = fmt.encode_frame(ms, fmt.encode_record("print", ms, b"x", offset=0))
        done(r.append("proxy-a", id, 0, frame))
        if complete:
            done(r.complete("proxy-a", id, ms))

    def ids(self) -> list[str]:
        return [e.id for e in done(self.recordings.list())]

    def deletes(self) -> list[Any]:
        return done(self.store.search_events(events=["recording.delete"]))


def test_the_pass_at_start_removes_recordings_ended_longer_ago_than_the_retention() -> (
    None
):
    """Thirty days' retention: one that ended 31 days ago goes with its
    index, audited with reason retention; one that ended 29 days ago (it
    started 31 days ago and ran two days) stays."""
    rig = Rig(30 * DAY)
    rig.record("old", NOW - 31 * DAY, 60)
    rig.record("long", NOW - 31 * DAY, 2 * DAY)
    rig.record("new", NOW - 3600, 60)
    rig.loop.start()
    assert rig.ids() == ["long", "new"]
    assert done(rig.store.get_stream("old")) is None
    assert done(rig.store.get_stream("old" + INDEX_SUFFIX)) is None
    (event,) = rig.deletes()
    assert event.fields["session_id"] == "old"
    assert event.fields["reason"] == "retention"
    assert event.user == "alice"
    done(rig.loop.stop())


def test_an_incomplete_recording_is_kept_a_day_past_the_retention() -> None:
    """Still being uploaded (its proxy away): kept until retention plus a day."""
    rig = Rig(30 * DAY)
    rig.record("uploading", NOW - 30 * DAY - 3600, 60, complete=False)
    rig.loop.start()
    assert rig.ids() == ["uploading"]
    for _ in range(int(UPLOAD_GRACE // RETENTION_EVERY)):
        rig.clock.advance(RETENTION_EVERY)
    assert rig.ids() == []
    (event,) = rig.deletes()
    assert event.fields["reason"] == "retention"
    done(rig.loop.stop())


def test_the_loop_runs_hourly_and_reads_the_retention_at_each_pass() -> None:
    """Kept forever by default; a retention set meanwhile (``cluster set``)
    applies at the next pass; once stopped, no pass is left scheduled."""
    rig = Rig(None)
    rig.record("old", NOW - 400 * DAY, 60)
    rig.loop.start()
    rig.clock.advance(RETENTION_EVERY)
    assert rig.ids() == ["old"]
    rig.retention = 90 * DAY
    rig.clock.advance(RETENTION_EVERY - 1)
    assert rig.ids() == ["old"]
    rig.clock.advance(1)
    assert rig.ids() == []
    done(rig.loop.stop())
    assert rig.clock.getDelayedCalls() == []


def test_every_recording_is_looked_at_past_one_page_of_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More streams than one page (each recording has an index stream too)."""
    monkeypatch.setattr(ret, "PAGE", 3)
    rig = Rig(DAY)
    for i in range(5):
        rig.clock.advance(1)  # each uploaded at its own time
        rig.record(f"r{i}", NOW - 10 * DAY, 60)
    rig.record("kept", NOW, 60)
    assert done(rig.loop.sweep()) == 5
    assert rig.ids() == ["kept"]


def test_a_failing_pass_is_logged_and_the_loop_goes_on() -> None:
    rig = Rig(DAY)
    rig.record("old", NOW - 10 * DAY, 60)
    calls = []

    async def flaky() -> int | None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the store is away")
        return DAY

    rig.loop._retention = flaky
    rig.loop.start()
    assert rig.ids() == ["old"]
    rig.clock.advance(RETENTION_EVERY)
    assert rig.ids() == []
    done(rig.loop.stop())
