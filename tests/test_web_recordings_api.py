"""The recordings' web API (``teleconch.web.recordings_api``) through
``StubTreq`` against the real site, on a ``task.Clock``.

Unit tests: no socket, no global reactor.  Behind the site is the web
session double of ``test_web_session_api`` with the recordings' part of the
Auth API added (`FakeRecordingsAgent`): recordings held as the auth service
stores them (frames and a (ms, offset) index), each with an owner, and the
contract's rule (the owner, or an auditor, may see it) applied to the
viewer the proxy names.  What is pinned here is the proxy's part: who it
names as the viewer, the bounds and boundaries of ranges, the decoding, and
answers that do not tell another user's recording from none.
"""

from __future__ import annotations

import base64
import bisect
import random
from typing import Any, cast

import attrs
import pytest
from twisted.internet.task import Clock

from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent
from teleconch.web.keys import WebSessionKeys
from teleconch.web.recording_ranges import MAX_DECODED, MAX_RANGE
from teleconch.web.site import WebConfig, make_site
from teleconch.web.static_files import StaticFiles
from tests import recordings as rec
from tests.test_web_session_api import (
    CLUSTER,
    IDLE,
    NOW,
    FakeWebAgent,
    ThroughChannel,
    Web,
)

BASE = f"/v1/webapi/sites/{CLUSTER}/recordings"


@attrs.define
class Stored:
    owner: str
    data: bytes
    index: list[tuple[int, int]]
    duration_ms: int
    complete: bool = True

    def entry(self, sid: str) -> api.RecordingEntry:
        return api.RecordingEntry(
            id=sid,
            user=self.owner,
            node="web1",
            login="root",
            start=rec.START_TIME,
            duration_ms=self.duration_ms,
            size=len(self.data),
            complete=self.complete,
        )


@attrs.define
class FakeRecordingsAgent(FakeWebAgent):
    """The web sessions' double, and recordings as the auth service has them."""

    stored: dict[str, Stored] = attrs.field(factory=dict)
    auditors: set[str] = attrs.field(factory=set)
    reads: list[tuple[int, int]] = attrs.field(factory=list)

    def add(
        self, sid: str, owner: str, events: list[rec.Ev], per_frame: int = 1
    ) -> Stored:
        stream = rec.frames(events, per_frame)
        duration = max(e.ms for e in events)
        stored = Stored(owner, b"".join(stream), rec.index(stream), duration)
        self.stored[sid] = stored
        return stored

    def _visible(self, viewer: str, sid: str) -> Stored:
        found = self.stored.get(sid)
        if found is None:
            raise api.NotFoundError(f"no recording {sid!r}")
        if viewer != found.owner and viewer not in self.auditors:
            raise api.AccessDenied(f"recording {sid} is not yours; ask an auditor")
        return found

    async def search_recordings(self, query: api.RecordingQuery) -> api.Recordings:
        self._called("search_recordings", query=query)
        return api.Recordings(
            tuple(
                s.entry(sid)
                for sid, s in self.stored.items()
                if query.viewer in (s.owner, *self.auditors)
            ),
            cut_short=bool(query.text),
        )

    async def read_recording_as(
        self, viewer: str, id: str, start: int, length: int
    ) -> api.RecordingBytes:
        self._called("read_recording_as", viewer=viewer, id=id)
        found = self._visible(viewer, id)
        self.reads.append((start, length))
        data = found.data[start : start + min(length, api.RECORDING_READ)]
        return api.RecordingBytes(data, len(found.data), found.complete)

    async def seek_recording(self, viewer: str, id: str, ms: int) -> Any:
        self._called("seek_recording", viewer=viewer, id=id, ms=ms)
        found = self._visible(viewer, id)
        i = bisect.bisect_right([m for m, _ in found.index], ms) - 1
        at_ms, offset = found.index[max(i, 0)]
        return api.RecordingPosition(
            offset=offset if i >= 0 else 0,
            ms=at_ms if i >= 0 else 0,
            duration_ms=found.duration_ms,
            size=len(found.data),
        )


@attrs.define
class RecWeb:
    web: Web
    agent: FakeRecordingsAgent
    bearer: str
    cookie: str

    def get(self, path: str, *, signed_in: bool = True) -> tuple[int, Any]:
        response = self.web.request(
            "GET",
            BASE + path,
            cookie=self.cookie if signed_in else None,
            bearer=self.bearer if signed_in else None,
        )
        return response.code, self.web.json(response)


@pytest.fixture
def rw() -> RecWeb:
    clock = Clock()
    clock.advance(NOW)
    agent = FakeRecordingsAgent(clock)
    keys = WebSessionKeys(clock)
    site = make_site(
        cast(AuthAgent, agent),
        WebConfig(cluster_name=CLUSTER, proxy_ssh_addr="proxy:3023", idle_timeout=IDLE),
        clock,
        StaticFiles({}),
        keys=keys,
    )
    web = Web(agent, clock, keys, ThroughChannel(site))
    cookie, bearer, _ = web.log_in()
    return RecWeb(web, agent, bearer, cookie)


def _output(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["data"]) for e in events if e["type"] == "print")


def _walk(rw: RecWeb, sid: str, offset: int = 0, **query: int) -> list[dict[str, Any]]:
    """Every range from ``offset`` to the end, following next_offset."""
    ranges = []
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    while True:
        code, answer = rw.get(f"/{sid}/events?offset={offset}{extra}")
        assert code == 200, answer
        ranges.append({**answer, "offset": offset})
        if answer["end"]:
            return ranges
        assert answer["next_offset"] > offset
        offset = answer["next_offset"]


# --- the list ------------------------------------------------------------------


def test_the_list_asks_the_auth_service_as_the_web_sessions_user_with_the_search(
    rw: RecWeb,
) -> None:
    """GET .../recordings passes user, node, text (``q``), since and limit
    on to FindRecordings with the logged-in person as the viewer, and
    answers the entries as JSON, saying whether the search was cut short."""
    rw.agent.add("s-1", "alice", [rec.start("s-1", "alice"), rec.out(5, "hi")])
    code, answer = rw.get(
        "?user=alice&node=web1&q=make%20test&since=1700000000.5&limit=10"
    )
    assert code == 200
    (call,) = rw.agent.calls_to("search_recordings")
    assert call["query"] == api.RecordingQuery(
        viewer="alice",
        user="alice",
        node="web1",
        since=1700000000.5,
        text="make test",
        limit=10,
    )
    assert answer["cut_short"] is True
    (entry,) = answer["recordings"]
    assert (entry["id"], entry["user"], entry["duration_ms"]) == ("s-1", "alice", 5)


@pytest.mark.parametrize(
    "query",
    ["?limit=0", "?limit=5000", "?limit=x", "?since=yesterday", "?since=-1",
     "?q=%00", "?user=" + "u" * 201, "?limit=1&limit=2", "?q=%ff"],
)  # fmt: skip
def test_a_bad_search_is_a_400_and_the_auth_service_is_not_asked(
    rw: RecWeb, query: str
) -> None:
    code, answer = rw.get(query)
    assert code == 400 and answer["error"]["message"]
    assert rw.agent.calls_to("search_recordings") == []


def test_without_a_session_nothing_is_asked_of_the_auth_service(rw: RecWeb) -> None:
    """No cookie and bearer: a 401 saying to log in, for every route."""
    rw.agent.add("s-1", "alice", [rec.start("s-1", "alice")])
    for path in ("", "/s-1", "/s-1/seek?ms=0", "/s-1/events?offset=0"):
        code, answer = rw.get(path, signed_in=False)
        assert code == 401 and "log in" in answer["error"]["message"]
    assert rw.agent.calls_to("search_recordings") == []
    assert rw.agent.calls_to("read_recording_as") == []


# --- one recording, seek -------------------------------------------------------


def test_one_recording_answers_who_where_its_size_and_its_duration(rw: RecWeb) -> None:
    stored = rw.agent.add(
        "s-1",
        "alice",
        [rec.start("s-1", "alice", cols=120, rows=40), rec.out(10, "x"), rec.end(4000)],
    )
    code, answer = rw.get("/s-1")
    assert code == 200, answer
    assert answer["duration_ms"] == 4000 and answer["size"] == len(stored.data)
    r = answer["recording"]
    assert (r["id"], r["user"], r["node"], r["login"]) == (
        "s-1",
        "alice",
        "web1",
        "root",
    )
    assert r["start"] == rec.START_TIME and r["complete"] is True
    assert (r["cols"], r["rows"], r["client_addr"]) == (120, 40, "127.0.0.1")


def test_seek_answers_the_frame_that_holds_a_time(rw: RecWeb) -> None:
    """The frame starting at or before ``ms``: its offset and time."""
    stored = rw.agent.add(
        "s-1",
        "alice",
        [rec.start("s-1", "alice"), rec.out(1000, "a"), rec.out(2000, "b")],
    )
    offsets = [o for _, o in stored.index]
    code, answer = rw.get("/s-1/seek?ms=1500")
    assert code == 200
    assert answer == {
        "offset": offsets[1],
        "ms": 1000,
        "duration_ms": 2000,
        "size": len(stored.data),
    }
    assert rw.get("/s-1/seek?ms=99999")[1]["offset"] == offsets[2]
    for bad in ("", "?ms=", "?ms=-5", "?ms=1.5", "?ms=abc", f"?ms={2**60}"):
        code, answer = rw.get("/s-1/seek" + bad)
        assert code == 400 and "'ms'" in answer["error"]["message"], bad


# --- events --------------------------------------------------------------------


def test_events_are_the_output_resizes_and_end_decoded_with_the_next_offset(
    rw: RecWeb,
) -> None:
    """From offset 0: session.start with its fields, output as base64 of the
    exact bytes (not decoded as text), a resize with its size, the end."""
    raw = "héllo \x1b[31mred\x1b[0m\r\n".encode() + b"\xff\xfe"
    events = [
        rec.start("s-1", "alice"),
        rec.out(7, raw),
        rec.Ev(9, "resize", fields={"cols": 100, "rows": 30}),
        rec.end(12, 3),
    ]
    stored = rw.agent.add("s-1", "alice", events, per_frame=2)
    code, answer = rw.get("/s-1/events?offset=0")
    assert code == 200
    assert answer["next_offset"] == len(stored.data) and answer["end"] is True
    got = answer["events"]
    assert [e["type"] for e in got] == [
        "session.start",
        "print",
        "resize",
        "session.end",
    ]
    assert got[0]["user"] == "alice" and got[0]["cols"] == 80
    assert base64.b64decode(got[1]["data"]) == raw and got[1]["ms"] == 7
    assert (got[2]["cols"], got[2]["rows"], got[2]["ms"]) == (100, 30, 9)
    assert got[3]["exit_code"] == 3


def test_a_long_recording_comes_in_ranges_of_at_most_256_kib_that_add_up_to_it(
    rw: RecWeb,
) -> None:
    """Followed by next_offset, ranges of whole frames give back every byte
    of output once, in order; none covers more than MAX_RANGE stored bytes,
    and no read of the auth service is larger than one AMP value."""
    noise = random.Random(7)
    chunks = [rec.out(i, noise.randbytes(12_000)) for i in range(1, 90)]
    stored = rw.agent.add("big", "alice", [rec.start("big", "alice"), *chunks])
    assert len(stored.data) > 3 * MAX_RANGE
    ranges = _walk(rw, "big")
    assert len(ranges) >= 4
    for r in ranges:
        assert r["next_offset"] - r["offset"] <= MAX_RANGE
    assert _output([e for r in ranges for e in r["events"]]) == b"".join(
        c.data for c in chunks
    )
    assert all(length <= api.RECORDING_READ for _, length in rw.agent.reads)
    assert ranges[-1]["next_offset"] == len(stored.data)


def test_a_range_smaller_than_a_frame_still_moves_on_by_one_frame(rw: RecWeb) -> None:
    stored = rw.agent.add(
        "s-1", "alice", [rec.start("s-1", "alice"), rec.out(1, "a"), rec.out(2, "b")]
    )
    ranges = _walk(rw, "s-1", max_bytes=1)
    assert [r["offset"] for r in ranges] == [o for _, o in stored.index]
    assert [len(r["events"]) for r in ranges] == [1, 1, 1]


def test_output_that_compresses_well_is_bounded_by_its_decoded_size(
    rw: RecWeb,
) -> None:
    """``yes`` output: a frame of 32 KiB is a few hundred stored bytes, so
    a range is bounded by the output it carries (MAX_DECODED), too."""
    lines = [rec.out(i, b"y\n" * 8000) for i in range(1, 400)]
    stored = rw.agent.add("yes", "alice", [rec.start("yes", "alice"), *lines])
    assert len(stored.data) < MAX_RANGE
    ranges = _walk(rw, "yes")
    assert len(ranges) > 1
    for r in ranges:
        assert len(_output(r["events"])) <= MAX_DECODED
    assert len(_output([e for r in ranges for e in r["events"]])) == 399 * 16000


def test_an_offset_that_is_not_a_frame_boundary_is_a_400_that_says_what_to_use(
    rw: RecWeb,
) -> None:
    stored = rw.agent.add(
        "s-1",
        "alice",
        [rec.start("s-1", "alice"), rec.out(1, "a" * 3000), rec.out(2, "b")],
    )
    boundaries = {o for _, o in stored.index} | {len(stored.data)}
    for offset in range(1, len(stored.data)):
        if offset in boundaries:
            continue
        code, answer = rw.get(f"/s-1/events?offset={offset}")
        assert code == 400, offset
        assert "next_offset" in answer["error"]["message"]
    code, answer = rw.get(f"/s-1/events?offset={len(stored.data) + 1}")
    assert code == 400 and "past the end" in answer["error"]["message"]
    code, answer = rw.get(f"/s-1/events?offset={len(stored.data)}")
    assert (code, answer) == (
        200, {"events": [], "next_offset": len(stored.data), "end": True},
    )  # fmt: skip
    for bad in ("", "?offset=-1", "?offset=x", "?offset=0&max_bytes=-1"):
        assert rw.get("/s-1/events" + bad)[0] == 400, bad


def test_another_users_recording_is_the_same_404_as_one_that_does_not_exist(
    rw: RecWeb,
) -> None:
    """bob's recording, asked for by alice: every route answers as for an id
    that nothing has, so the answer does not say it exists; the auth
    service was asked with alice as the viewer (and decided)."""
    rw.agent.add("bob-1", "bob", [rec.start("bob-1", "bob"), rec.out(1, "secret")])
    for path in ("", "/seek?ms=0", "/events?offset=0"):
        theirs = rw.get("/bob-1" + path)
        none = rw.get("/nope-" + path)
        assert theirs[0] == none[0] == 404
        message = theirs[1]["error"]["message"]
        assert message == none[1]["error"]["message"].replace("nope-", "bob-1")
        assert "secret" not in str(theirs)
    assert {c["viewer"] for c in rw.agent.calls_to("read_recording_as")} == {"alice"}
    rw.agent.auditors.add("alice")
    code, answer = rw.get("/bob-1/events?offset=0")
    assert code == 200 and _output(answer["events"]) == b"secret"


def test_other_paths_and_methods_under_a_recording_are_refused(rw: RecWeb) -> None:
    rw.agent.add("s-1", "alice", [rec.start("s-1", "alice")])
    assert rw.get("/s-1/frames")[0] == 404
    assert rw.get("/s-1/events/more")[0] == 404
    response = rw.web.request(
        "DELETE", BASE + "/s-1", cookie=rw.cookie, bearer=rw.bearer
    )
    assert response.code == 405


def test_events_from_a_time_are_the_seek_and_its_range_in_one_call(rw: RecWeb) -> None:
    """``events?ms=T`` starts at the frame holding T and says its offset and
    time; ``until`` stops short of a frame the player has, so a walk back
    gets exactly the frames before it."""
    events = [
        rec.start("s-1", "alice"),
        *(rec.out(100 * n, f"n{n}") for n in range(1, 9)),
    ]
    stored = rw.agent.add("s-1", "alice", events)
    offsets = [o for _, o in stored.index]
    code, answer = rw.get("/s-1/events?ms=450&max_bytes=1")
    assert code == 200
    assert (answer["offset"], answer["ms"]) == (offsets[4], 400)
    assert _output(answer["events"]) == b"n4"
    code, answer = rw.get(f"/s-1/events?ms=150&until={offsets[4]}")
    assert (answer["offset"], answer["next_offset"]) == (offsets[1], offsets[4])
    assert _output(answer["events"]) == b"n1n2n3"
    code, answer = rw.get(f"/s-1/events?ms=450&until={offsets[4]}")
    assert (code, answer["events"], answer["offset"]) == (200, [], offsets[4])
    code, answer = rw.get(f"/s-1/events?offset={offsets[2]}&until={offsets[3]}")
    assert _output(answer["events"]) == b"n2"
    assert rw.get("/s-1/events?ms=1&offset=0")[0] == 400
    assert rw.get(f"/s-1/events?offset={offsets[3]}&until={offsets[2]}")[0] == 400
    assert rw.get("/s-1/events?ms=-1")[0] == 400
