"""The auth service's recordings (teleconch.auth.recordings) on every store backend.

Uploads resume where the store says and a retried frame is harmless; the
index finds the frame at a time; completion is audited once; a recording
belongs to the proxy that started it; bad frames and ids are refused.
Unit tests on the store suite's backends (SQLite, memory), a task.Clock.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.recordings import Recordings
from teleconch.auth.store import Store
from tests.store_backends import NOW, backend, store

__all__ = ["backend", "store"]  # the fixtures, used by name

META = {"user": "alice", "login": "root", "node": "web1", "cols": 80, "rows": 24}


def frame(ms: int, text: bytes, offset: int = 0) -> bytes:
    return fmt.encode_frame(ms, fmt.encode_record("print", ms, text, offset=offset))


def recordings(store: Store) -> Recordings:
    clock = Clock()
    clock.advance(NOW)
    return Recordings(store, clock, AuditLog(store, clock))


@pytest_twisted.ensureDeferred
async def test_an_upload_resumes_where_the_store_ends_and_a_retry_is_harmless(
    store: Store,
) -> None:
    """Frames appended at their offsets; a restarted upload learns the size
    from start; a retried frame is a no-op; reading back gives the events once."""
    recs = recordings(store)
    assert await recs.start("proxy-a", "s1", META) == api.RecordingState(0, False)
    one, two = frame(0, b"hello "), frame(1500, b"world", 6)
    size = await recs.append("proxy-a", "s1", 0, one)
    assert size == len(one)
    assert await recs.start("proxy-a", "s1", META) == api.RecordingState(size, False)
    assert await recs.append("proxy-a", "s1", 0, one) == size  # the retry
    size = await recs.append("proxy-a", "s1", size, two)
    assert await recs.append("proxy-a", "s1", len(one), two) == size
    got = await recs.read("s1", 0, 1 << 20)
    events = list(fmt.decode_stream([got.data]))
    assert b"".join(fmt.text(events)) == b"hello world"
    assert await recs._entries("s1") == 2  # one index entry per frame, retries or not


@pytest_twisted.ensureDeferred
async def test_the_index_finds_the_frame_at_a_time(store: Store) -> None:
    """offset_at(ms) is the start of the last frame at or before ms."""
    recs = recordings(store)
    await recs.start("proxy-a", "s1", META)
    offsets = []
    at = 0
    for ms in (0, 1000, 5000, 9000):
        offsets.append(at)
        at = await recs.append("proxy-a", "s1", at, frame(ms, b"x" * 10))
    assert await recs.offset_at("s1", 0) == offsets[0]
    assert await recs.offset_at("s1", 999) == offsets[0]
    assert await recs.offset_at("s1", 5000) == offsets[2]
    assert await recs.offset_at("s1", 7000) == offsets[2]
    assert await recs.offset_at("s1", 10**9) == offsets[3]


@pytest_twisted.ensureDeferred
async def test_completion_is_audited_once_and_listed_with_its_duration(
    store: Store,
) -> None:
    """complete marks it complete (again is harmless) and writes one
    session.upload; ls shows user, node, login, size and the duration."""
    recs = recordings(store)
    await recs.start("proxy-a", "s1", {**META, "start": NOW})
    size = await recs.append("proxy-a", "s1", 0, frame(0, b"hi"))
    assert await recs.complete("proxy-a", "s1", 4200) == size
    assert await recs.complete("proxy-a", "s1", 4200) == size
    events = await store.search_events(events=["session.upload"])
    assert len(events) == 1
    assert events[0].user == "alice" and events[0].fields["session_id"] == "s1"
    (entry,) = await recs.list()
    assert entry == api.RecordingEntry(
        "s1", "alice", "web1", "root", NOW, 4200, size, True
    )
    with pytest.raises(api.BadParameter):
        await recs.append("proxy-a", "s1", size, frame(5000, b"late"))


@pytest_twisted.ensureDeferred
async def test_another_proxy_may_not_add_to_a_recording(store: Store) -> None:
    """A recording belongs to the proxy that started it; the refusal is audited."""
    recs = recordings(store)
    await recs.start("proxy-a", "s1", META)
    with pytest.raises(api.AccessDenied, match="another proxy"):
        await recs.append("proxy-b", "s1", 0, frame(0, b"x"))
    with pytest.raises(api.AccessDenied):
        await recs.start("proxy-b", "s1", META)
    denied = await store.search_events(events=["auth.api.denied"])
    assert denied and denied[0].user == "proxy-b"


@pytest.mark.parametrize(
    "bad", [b"", b"\x00" * 12, fmt.HEADER.pack(3, 0) + b"abc", frame(0, b"x")[:-1]]
)
@pytest_twisted.ensureDeferred
async def test_a_bad_frame_is_refused_and_nothing_is_stored(
    store: Store, bad: bytes
) -> None:
    recs = recordings(store)
    await recs.start("proxy-a", "s1", META)
    with pytest.raises(api.BadParameter, match="bad frame"):
        await recs.append("proxy-a", "s1", 0, bad)
    assert (await recs.read("s1", 0, 100)).size == 0


@pytest_twisted.ensureDeferred
async def test_bad_ids_and_descriptions_are_refused(store: Store) -> None:
    recs = recordings(store)
    for bad_id in ("", "a/b", "x" * 200, "a\nb"):
        with pytest.raises(api.BadParameter):
            await recs.start("proxy-a", bad_id, META)
    with pytest.raises(api.BadParameter, match="unknown keys"):
        await recs.start("proxy-a", "s1", {"kind": "not-a-recording"})
    with pytest.raises(api.NotFoundError):
        await recs.read("nope", 0, 10)


@pytest_twisted.ensureDeferred
async def test_removing_a_recording_removes_its_index_and_is_audited(
    store: Store,
) -> None:
    recs = recordings(store)
    await recs.start("proxy-a", "s1", META)
    await recs.append("proxy-a", "s1", 0, frame(0, b"x"))
    await recs.delete("s1")
    assert await recs.list() == []
    assert await store.get_stream("s1.index") is None
    assert len(await store.search_events(events=["recording.delete"])) == 1
    with pytest.raises(api.NotFoundError, match="recordings ls"):
        await recs.delete("s1")
