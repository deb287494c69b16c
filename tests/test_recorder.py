"""Web terminal sessions recorded on the proxy and uploaded (recorder, spool, uploader).

Unit tests: a task.Clock, the spool in a temporary directory with its
"thread" run inline, and an auth agent that is the real
`teleconch.auth.recordings.Recordings` on a MemoryStore, but can be made to
fail (the auth service away) and recover.  The hub is the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthUnavailable
from teleconch.auth.audit import AuditLog
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.recordings import Recordings
from teleconch.auth.types import Party
from teleconch.conch.session import ExitStatus
from teleconch.proxy import recorder as rec
from teleconch.proxy.recorder import Recorder, Recorders, RecorderState
from teleconch.proxy.sessions import SessionHub, ShellEvents
from teleconch.proxy.settings import (
    SETTINGS_MAX_AGE,
    SETTINGS_TIMEOUT,
    ClusterSettingsCache,
)
from teleconch.proxy.spool import Spool
from teleconch.proxy.uploader import Uploader, UploaderState
from tests.terminal_fakes import NOW, FakeParty, FakeRegistry, FakeShell, session_record


def inline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


def done(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not finished"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class FlakyAgent:
    """The recording commands, answered by the real auth side; ``down`` makes
    the next calls fail as an unreachable auth service does."""

    def __init__(self, clock: Clock) -> None:
        self.store = MemoryStore()
        done(Deferred.fromCoroutine(self.store.open()))
        self.recordings = Recordings(self.store, clock, AuditLog(self.store, clock))
        self.down = 0
        self.appends = 0

    def _check(self) -> None:
        if self.down:
            self.down -= 1
            raise AuthUnavailable("the auth service at 127.0.0.1:3025 is away")

    async def start_recording(
        self, id: str, meta: Mapping[str, Any]
    ) -> api.RecordingState:
        self._check()
        return await self.recordings.start("proxy-a", id, meta)

    async def append_recording(self, id: str, offset: int, frame: bytes) -> int:
        self._check()
        self.appends += 1
        return await self.recordings.append("proxy-a", id, offset, frame)

    async def complete_recording(self, id: str, duration_ms: int) -> int:
        self._check()
        return await self.recordings.complete("proxy-a", id, duration_ms)

    def events(self, sid: str) -> list[fmt.Event]:
        got = done(Deferred.fromCoroutine(self.recordings.read(sid, 0, 1 << 30)))
        return list(fmt.decode_stream([got.data]))

    def listed(self) -> list[api.RecordingEntry]:
        return list(done(Deferred.fromCoroutine(self.recordings.list())))

    def uploads(self) -> int:
        d = Deferred.fromCoroutine(self.store.search_events(events=["session.upload"]))
        return len(done(d))


class Rig:
    def __init__(self, tmp_path: Path, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(NOW)
        self.spool = Spool(tmp_path / "recordings")
        self.agent = FlakyAgent(self.clock)
        self.uploader = Uploader(
            clock=self.clock, agent=self.agent, spool=self.spool, in_thread=inline
        )
        self.recorders = Recorders(
            clock=self.clock,
            spool=self.spool,
            in_thread=inline,
            settings=ClusterSettingsCache(self.clock, self.settings),
            on_closed=self.uploader.wake,
        )
        self.cluster_mode = "node"
        self.record_input = False

    async def settings(self) -> api.ClusterSettings:
        return api.ClusterSettings(
            session_recording=self.cluster_mode, record_input=self.record_input
        )

    def recorder(self) -> Recorder | None:
        return done(Deferred.fromCoroutine(self.recorders.recorder("10.0.0.9:5555")))

    def recorded_hub(self) -> tuple[SessionHub, Recorder]:
        """A hub with a recorder as its tap, no party yet, not started."""
        recorder = self.recorder()
        assert recorder is not None
        hub = SessionHub(
            clock=self.clock,
            registry=FakeRegistry(),
            record=session_record(),
            taps=(recorder,),
        )
        return hub, recorder

    def start(self, hub: SessionHub) -> FakeShell:
        shells: list[FakeShell] = []

        async def opener(events: ShellEvents) -> FakeShell:
            shells.append(FakeShell(events))
            return shells[0]

        done(Deferred.fromCoroutine(hub.start(opener)))
        return shells[0]

    def hub(self) -> tuple[SessionHub, FakeShell, Recorder]:
        hub, recorder = self.recorded_hub()
        hub.join(FakeParty())
        return hub, self.start(hub), recorder


def test_a_sessions_output_resizes_and_end_reach_the_auth_service_in_order(
    tmp_path: Path,
) -> None:
    """Through the real hub: start (size), output with ms offsets, a resize,
    the end with its exit status; uploaded, completed, listed, audited once,
    and the spool emptied.  asciicast v2 shows the output at its times."""
    rig = Rig(tmp_path)
    hub, shell, recorder = rig.hub()
    shell.events.shell_output(b"$ echo hi\r\n")
    rig.clock.advance(1.5)
    hub.resize(hub.parties[0], 100, 30)
    shell.events.shell_output(b"hi\r\n")
    rig.clock.advance(1.0)
    shell.events.shell_ended(ExitStatus(code=3))
    assert recorder.state is RecorderState.CLOSED
    events = rig.agent.events(hub.id)
    assert [e.kind for e in events] == [
        "session.start", "print", "resize", "print", "session.end"
    ]  # fmt: skip
    start = events[0].fields
    assert (start["user"], start["login"], start["node"]) == ("alice", "root", "web1")
    assert (start["cols"], start["rows"], start["client_addr"]) == (
        80,
        24,
        "10.0.0.9:5555",
    )
    assert [e.ms for e in events] == [0, 0, 1500, 1500, 2500]
    assert events[3].fields["offset"] == len(b"$ echo hi\r\n")
    assert events[-1].fields["exit_code"] == 3
    (entry,) = rig.agent.listed()
    assert entry.complete and entry.duration_ms == 2500 and entry.user == "alice"
    assert rig.agent.uploads() == 1
    assert rig.spool.sessions() == []
    cast = list(fmt.asciicast(events))
    assert '"width": 80' in cast[0]
    assert cast[1:] == [
        '[0.0, "o", "$ echo hi\\r\\n"]', '[1.5, "r", "100x30"]', '[1.5, "o", "hi\\r\\n"]'
    ]  # fmt: skip


def test_joins_and_leaves_are_recorded_with_who_and_how(tmp_path: Path) -> None:
    """A joiner's arrival and leaving are session.join / session.leave
    records, at their times, with the user, mode and address."""
    rig = Rig(tmp_path)
    hub, shell, _ = rig.hub()
    rig.clock.advance(1.0)
    bob = FakeParty(record=Party("party-2", "bob", "10.0.0.8:1", mode="observer"))
    hub.join(bob)
    rig.clock.advance(2.0)
    hub.leave(bob, "bob closed the terminal")
    shell.events.shell_ended(ExitStatus(code=0))
    events = rig.agent.events(hub.id)
    assert [e.kind for e in events] == [
        "session.start", "session.join", "session.leave", "session.end"
    ]  # fmt: skip
    join, leave = events[1], events[2]
    assert (join.ms, leave.ms) == (1000, 3000)
    assert join.fields == {
        "user": "bob", "mode": "observer", "party_id": "party-2",
        "client_addr": "10.0.0.8:1",
    }  # fmt: skip
    assert leave.fields["reason"] == "bob closed the terminal"


def test_the_auth_service_away_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Uploads during the session fail, then the auth service comes back:
    every output byte is there exactly once, in order, and the upload is
    audited once; the session never waited."""
    rig = Rig(tmp_path)
    rig.uploader.start()
    hub, shell, _ = rig.hub()
    sent = b""
    for i in range(200):  # ~ 200 KiB: several frames
        chunk = bytes([65 + i % 26]) * 1000 + b"\r\n"
        sent += chunk
        shell.events.shell_output(chunk)
        if i == 50:
            rig.agent.down = 10**6  # the auth service goes away
        rig.clock.advance(0.1)
        if i == 20:
            rig.clock.advance(5.0)  # a pass uploads the frames so far
            assert rig.agent.appends > 0
        if i == 60:
            rig.clock.advance(rec.FLUSH_EVERY)
    shell.events.shell_ended(ExitStatus(code=0))
    assert rig.spool.sessions() == [hub.id]  # kept while the auth service is away
    assert rig.agent.listed()[0].complete is False
    rig.agent.down = 1  # one more failure, then back
    for _ in range(3):
        rig.clock.advance(5.0)
    assert rig.uploader.state is UploaderState.IDLE
    events = rig.agent.events(hub.id)
    assert b"".join(fmt.text(events)) == sent
    offsets = [e.fields["offset"] for e in events if e.kind == "print"]
    assert offsets == sorted(set(offsets))
    assert rig.agent.listed()[0].complete
    assert rig.agent.uploads() == 1
    assert rig.spool.sessions() == []


def test_a_spooled_recording_left_by_a_stopped_proxy_is_uploaded_on_restart(
    tmp_path: Path,
) -> None:
    """The proxy stops mid-session with the auth service away (a torn last
    frame on disk, no end marker); the next process's uploader finishes it
    from the spool with its whole frames."""
    first = Rig(tmp_path)
    first.agent.down = 10**6
    hub, shell, _ = first.hub()
    shell.events.shell_output(b"before the restart\r\n")
    first.clock.advance(rec.FLUSH_EVERY)
    shell.events.shell_output(b"lost with the process")  # still in memory
    path = first.spool.path / f"{hub.id}.rec"
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:20])  # a frame torn by the crash

    second = Rig(tmp_path, first.clock)
    second.agent.store = first.agent.store  # the same auth service
    second.agent.recordings = first.agent.recordings
    second.uploader.start()
    events = second.agent.events(hub.id)
    assert b"".join(fmt.text(events)) == b"before the restart\r\n"
    (entry,) = second.agent.listed()
    assert entry.complete
    assert second.spool.sessions() == []


def test_mode_off_records_nothing_and_the_mode_is_asked_at_most_every_ten_seconds(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    asked: list[float] = []

    async def settings() -> api.ClusterSettings:
        asked.append(rig.clock.seconds())
        return api.ClusterSettings(session_recording=rig.cluster_mode)

    rig.recorders._settings = ClusterSettingsCache(rig.clock, settings)
    assert rig.recorder() is not None
    rig.cluster_mode = "off"
    assert rig.recorder() is not None  # the answer is 0 s old
    rig.clock.advance(SETTINGS_MAX_AGE)
    assert rig.recorder() is None
    assert len(asked) == 2


def test_an_auth_service_that_does_not_answer_keeps_the_last_mode(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)

    async def never() -> api.ClusterSettings:
        return await Deferred()

    cache = ClusterSettingsCache(rig.clock, never)
    d = Deferred.fromCoroutine(cache.current())
    rig.clock.advance(SETTINGS_TIMEOUT)
    assert done(d).session_recording == "node"


def test_a_session_that_never_opens_leaves_nothing_in_the_spool(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    hub, recorder = rig.recorded_hub()
    hub.join(FakeParty())

    async def refuse(events: ShellEvents) -> FakeShell:
        raise ConnectionRefusedError()

    with pytest.raises(ConnectionRefusedError):
        done(Deferred.fromCoroutine(hub.start(refuse)))
    recorder.never_started()
    assert recorder.state is RecorderState.CLOSED
    assert rig.spool.sessions() == []
    assert rig.recorders.active == set()


def test_long_output_is_cut_into_print_events_and_frames_that_fit_one_amp_value(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    hub, shell, _ = rig.hub()
    blob = bytes(range(256)) * 1024  # 256 KiB, incompressible enough
    shell.events.shell_output(blob)
    shell.events.shell_ended(ExitStatus(code=0))
    data = (
        (rig.spool.path / f"{hub.id}.rec").read_bytes() if rig.spool.sessions() else b""
    )
    assert data == b""  # uploaded and removed
    events = rig.agent.events(hub.id)
    prints = [e for e in events if e.kind == "print"]
    assert max(len(e.data) for e in prints) <= fmt.MAX_PRINT
    assert b"".join(e.data for e in prints) == blob
    assert rig.agent.appends >= len(blob) // fmt.MAX_BATCH


def _typed_in_a_session(rig: Rig) -> list[fmt.Event]:
    """The owner types before the node answers and after; an observer types
    too; the recording's events once it is uploaded."""
    hub, _ = rig.recorded_hub()
    owner = FakeParty()
    observer = FakeParty(record=Party("party-2", "bob", "10.0.0.8", mode="observer"))
    hub.join(owner)
    hub.join(observer)
    hub.input(owner, b"early ")
    shell = rig.start(hub)
    rig.clock.advance(0.5)
    hub.input(owner, b"ls\r")
    hub.input(observer, b"rm -rf /\r")
    shell.events.shell_output(b"file\r\n")
    rig.clock.advance(0.5)
    shell.events.shell_ended(ExitStatus(code=0))
    assert shell.written == [b"early ", b"ls\r"]
    return rig.agent.events(hub.id)


def test_with_record_input_on_what_the_owner_types_is_recorded_but_no_observers(
    tmp_path: Path,
) -> None:
    """Input records at their times (what was typed before the node answered
    at the start), in order with the output; the observer's keys, dropped by
    the hub, are not in it; asciicast shows them as "i" events, json as
    input events."""
    rig = Rig(tmp_path)
    rig.record_input = True
    events = _typed_in_a_session(rig)
    assert [(e.kind, e.ms) for e in events] == [
        ("session.start", 0), ("input", 0), ("input", 500), ("print", 500),
        ("session.end", 1000),
    ]  # fmt: skip
    assert [e.data for e in events if e.kind == "input"] == [b"early ", b"ls\r"]
    assert events[2].to_json() == {"event": "input", "ms": 500, "data": "ls\r"}
    cast = list(fmt.asciicast(events))
    assert cast[1:] == [
        '[0.0, "i", "early "]', '[0.5, "i", "ls\\r"]', '[0.5, "o", "file\\r\\n"]'
    ]  # fmt: skip
    assert b"".join(fmt.text(events)) == b"file\r\n"


def test_with_record_input_off_nothing_typed_is_recorded(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    events = _typed_in_a_session(rig)
    assert [e.kind for e in events] == ["session.start", "print", "session.end"]
