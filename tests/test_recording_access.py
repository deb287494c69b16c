"""Who sees which recording, text search and seeking (teleconch.auth.recording_access,
recording_search), on every store backend, through the AuthServer methods the
Auth API binds.

The visibility rule: the owner sees theirs, an auditor (sessions:read) and an
admin (*) see all, another user and a deleted one see nothing, refusals are
audited as recording.denied.  Search is case-insensitive, finds a match split
across print records and frames, stops at its budget and says so.  Seek is a
binary search of the index.  Unit tests: store suite backends, a task.Clock,
decompression run by a recording thread runner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.rbac import BUILTIN_ROLES
from teleconch.auth.recording_access import RecordingAccess
from teleconch.auth.recording_search import OutputMatcher, TextSearch, on_pool
from teleconch.auth.recordings import Recordings
from teleconch.auth.store import Store
from teleconch.auth.types import User
from tests.store_backends import NOW, backend, store

__all__ = ["backend", "store"]  # the fixtures, used by name

PROXY = "proxy-a"


def record(ms: int, text: bytes, offset: int = 0) -> bytes:
    return fmt.encode_record("print", ms, text, offset=offset)


class Threads:
    """Runs the search's blocking work in place, noting that it was asked to."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: Callable[..., bool], *args: Any) -> Deferred[bool]:
        self.calls += 1
        return succeed(f(*args))


class World:
    def __init__(self, store: Store, budget: int = 64 << 20) -> None:
        self.store = store
        self.clock = Clock()
        self.clock.advance(NOW)
        log = AuditLog(store, self.clock)
        self.recordings = Recordings(store, self.clock, log)
        self.threads = Threads()
        self.search = TextSearch(store, self.threads, read_size=100)
        self.access = RecordingAccess(
            store, self.recordings, log, self.search, search_budget=budget
        )

    async def users(self) -> None:
        for role in BUILTIN_ROLES:
            await self.store.upsert_role(role)
        for name, roles in (
            ("alice", ["access"]),
            ("bob", ["access"]),
            ("audrey", ["auditor"]),
            ("root", ["admin"]),
        ):
            await self.store.create_user(User(name=name, roles=roles, status="active"))

    async def recording(
        self, sid: str, user: str, frames: list[tuple[int, bytes]], **meta: Any
    ) -> int:
        """A recording of ``frames`` (ms, records), complete; its size."""
        fields = {"user": user, "login": "root", "node": "web1", "start": NOW, **meta}
        await self.recordings.start(PROXY, sid, fields)
        at = 0
        for ms, records in frames:
            at = await self.recordings.append(
                PROXY, sid, at, fmt.encode_frame(ms, records)
            )
        await self.recordings.complete(PROXY, sid, frames[-1][0] + 500)
        return at

    async def find(self, viewer: str, **kw: Any) -> list[str]:
        found = await self.access.find(api.RecordingQuery(viewer, **kw))
        return [r.id for r in found.recordings]

    async def denials(self) -> list[tuple[str, str, str]]:
        events = await self.store.search_events(events=["recording.denied"])
        return [(e.user, e.fields["command"], e.fields["session_id"]) for e in events]


async def _two(w: World) -> None:
    await w.users()
    await w.recording("a1", "alice", [(0, record(0, b"alice was here"))])
    await w.recording(
        "b1", "bob", [(0, record(0, b"bob too"))], start=NOW + 10, node="db1"
    )


@pytest_twisted.ensureDeferred
async def test_the_owner_sees_their_own_recordings_and_not_anothers(
    store: Store,
) -> None:
    """alice lists only a1 and reads it; bob's b1 is refused to her with a
    message that says what to do, audited as recording.denied."""
    w = World(store)
    await _two(w)
    assert await w.find("alice") == ["a1"]
    got = await w.access.read(api.ViewerRange("alice", "a1", 0, 1 << 20))
    assert b"alice was here" in b"".join(fmt.text(fmt.decode_stream([got.data])))
    with pytest.raises(api.AccessDenied, match="not yours; ask an auditor"):
        await w.access.read(api.ViewerRange("alice", "b1", 0, 100))
    with pytest.raises(api.AccessDenied, match="not yours"):
        await w.access.seek(api.RecordingSeek("alice", "b1", 0))
    assert await w.denials() == [
        ("alice", "ReadRecordingAs", "b1"),
        ("alice", "SeekRecording", "b1"),
    ]


@pytest_twisted.ensureDeferred
async def test_an_auditor_and_an_admin_see_every_recording_newest_first(
    store: Store,
) -> None:
    """sessions:read (auditor) and * (admin) see all, newest first, and may
    filter by user and node; a plain user asking for another's is refused."""
    w = World(store)
    await _two(w)
    for viewer in ("audrey", "root"):
        assert await w.find(viewer) == ["b1", "a1"]
        assert await w.find(viewer, user="alice") == ["a1"]
        assert await w.find(viewer, node="db1") == ["b1"]
        assert await w.find(viewer, since=NOW + 5) == ["b1"]
        assert await w.find(viewer, limit=1) == ["b1"]
        await w.access.read(api.ViewerRange(viewer, "b1", 0, 10))
    with pytest.raises(api.AccessDenied, match="only your own recordings"):
        await w.find("alice", user="bob")
    assert await w.denials() == [("alice", "FindRecordings", "")]


@pytest_twisted.ensureDeferred
async def test_roles_are_read_from_the_store_now_and_a_deleted_user_sees_nothing(
    store: Store,
) -> None:
    """bob made an auditor sees all at once; deleted, he is refused even his own."""
    w = World(store)
    await _two(w)
    bob = await store.get_user("bob")
    assert bob is not None
    await store.update_user(User(name="bob", roles=("auditor",), status="active"))
    assert await w.find("bob") == ["b1", "a1"]
    await store.delete_user("bob")
    with pytest.raises(api.AccessDenied, match="not a user of this cluster"):
        await w.find("bob")
    with pytest.raises(api.AccessDenied):
        await w.access.read(api.ViewerRange("bob", "b1", 0, 10))
    assert [d[:2] for d in await w.denials()] == [
        ("bob", "FindRecordings"),
        ("bob", "ReadRecordingAs"),
    ]


@pytest_twisted.ensureDeferred
async def test_an_entry_carries_the_sessions_meta_and_old_recordings_still_load(
    store: Store,
) -> None:
    """cols, rows, client_addr, kind and command come from the recording's
    meta; a recording started without them lists with the defaults."""
    w = World(store)
    await w.users()
    await w.recording(
        "new", "alice", [(0, record(0, b"x"))],
        cols=132, rows=43, client_addr="198.51.100.7", session_kind="ssh",
        command="top",
    )  # fmt: skip
    await w.recording("old", "alice", [(0, record(0, b"x"))], start=NOW - 1)
    new, old = (await w.access.find(api.RecordingQuery("alice"))).recordings
    assert (new.cols, new.rows, new.client_addr, new.kind, new.command) == (
        132, 43, "198.51.100.7", "ssh", "top"
    )  # fmt: skip
    assert (old.cols, old.rows, old.client_addr, old.kind, old.command) == (
        80, 24, "", "web", ""
    )  # fmt: skip
    assert api.RecordingEntry.from_json(new.to_json()) == new


@pytest_twisted.ensureDeferred
async def test_search_finds_text_ignoring_case_across_records_and_frames(
    store: Store,
) -> None:
    """ "Needle" is found when its bytes are split between two print records
    of one frame, and between two frames; a UTF-8 character split between
    frames and different case match too; a missing word finds nothing.  The
    decompression went to the thread runner."""
    w = World(store)
    await w.users()
    await w.recording(
        "records", "alice", [(0, record(0, b"a nee") + record(1, b"DLE b"))]
    )
    await w.recording(
        "frames", "alice", [(0, record(0, b"hay ne")), (9, record(9, b"Edle"))]
    )
    cafe = "Café".encode()
    await w.recording(
        "utf8", "alice", [(0, record(0, cafe[:4])), (5, record(5, cafe[4:] + b"!"))]
    )
    await w.recording("none", "alice", [(0, record(0, b"nothing to see"))])
    assert sorted(await w.find("alice", text="needle")) == ["frames", "records"]
    assert await w.find("alice", text="CAFÉ!") == ["utf8"]
    assert await w.find("alice", text="absent") == []
    assert w.threads.calls > 0


def test_the_matcher_keeps_just_enough_output_between_pieces() -> None:
    """A match over three small pieces is found; a text longer than what
    was fed so far keeps everything."""
    m = OutputMatcher("abcdef")
    assert not m._feed(b"ab")
    assert not m._feed(b"cd")
    assert m._feed(b"efg")


@pytest_twisted.ensureDeferred
async def test_search_stops_at_its_budget_and_says_it_was_cut_short(
    store: Store,
) -> None:
    """With a budget smaller than the recordings, the search stops early and
    the answer says cut_short; a listing without text never is."""
    w = World(store, budget=300)
    await w.users()
    for i in range(5):
        noise = bytes(range(256)) * 4  # incompressible enough
        await w.recording(f"s{i}", "alice", [(0, record(0, noise))], start=NOW + i)
    found = await w.access.find(api.RecordingQuery("alice", text="zzz"))
    assert found.cut_short and found.recordings == ()
    listed = await w.access.find(api.RecordingQuery("alice"))
    assert not listed.cut_short and len(listed.recordings) == 5


@pytest_twisted.ensureDeferred
async def test_search_decompresses_on_a_pool_thread_not_the_reactors(
    store: Store,
) -> None:
    """on_pool runs the matcher on the reactor's thread pool."""
    seen: list[bool] = []
    pool = on_pool(reactor)

    def where(f: Callable[..., bool], *args: Any) -> Deferred[bool]:
        def run(*a: Any) -> bool:
            seen.append(threading.current_thread() is threading.main_thread())
            return f(*a)

        return pool(run, *args)

    w = World(store)
    w.access = RecordingAccess(
        store, w.recordings, AuditLog(store, w.clock), TextSearch(store, where)
    )
    await w.users()
    await w.recording("s1", "alice", [(0, record(0, b"hello"))])
    assert await w.find("alice", text="HELLO") == ["s1"]
    assert seen == [False]


@pytest_twisted.ensureDeferred
async def test_seek_finds_the_frame_at_a_time_by_the_index(store: Store) -> None:
    """The last frame starting at or before ms, its start, the duration and
    the size; a time before the first frame gives the first, one past the
    end the last frame (not the end marker)."""
    w = World(store)
    await w.users()
    frames = [(ms, record(ms, b"x" * 10)) for ms in (100, 1000, 5000, 9000)]
    offsets, at = [], 0
    for _, records in frames:
        offsets.append(at)
        at += len(fmt.encode_frame(0, records))
    size = await w.recording("s1", "alice", frames)

    async def seek(ms: int) -> tuple[int, int]:
        p = await w.access.seek(api.RecordingSeek("alice", "s1", ms))
        assert (p.duration_ms, p.size) == (9500, size)
        return p.offset, p.ms

    assert await seek(0) == (offsets[0], 100)
    assert await seek(999) == (offsets[0], 100)
    assert await seek(5000) == (offsets[2], 5000)
    assert await seek(7000) == (offsets[2], 5000)
    assert await seek(10**9) == (offsets[3], 9000)
    with pytest.raises(api.BadParameter):
        await w.access.seek(api.RecordingSeek("alice", "s1", -1))
    with pytest.raises(api.NotFoundError):
        await w.access.seek(api.RecordingSeek("alice", "nope", 0))


@pytest_twisted.ensureDeferred
async def test_seek_reads_the_index_an_entry_at_a_time(store: Store) -> None:
    """Every index read of a seek over 1000 frames is one 16-byte entry, and
    there are about log2(1000) of them, not the whole index."""
    w = World(store)
    await w.users()
    frames = [(ms * 10, record(ms * 10, b"y")) for ms in range(1000)]
    await w.recording("big", "alice", frames)
    reads: list[tuple[str, int]] = []
    real = store.read_range

    async def counting(stream_id: str, start: int, length: int) -> bytes:
        reads.append((stream_id, length))
        return await real(stream_id, start, length)

    store.read_range = counting  # type: ignore[method-assign]
    p = await w.access.seek(api.RecordingSeek("alice", "big", 4321))
    assert p.ms == 4320
    assert all(n == fmt.INDEX_ENTRY.size for _, n in reads)
    assert len(reads) <= 14
