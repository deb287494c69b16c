"""The proxy's ``teleconch-recordings`` subsystem in memory (teleconch.proxy.recordings_subsystem).

The rig of tests/test_proxy_channels.py (a session channel spoken to in
packets) with a Directory double whose recordings side is the real auth
side (`RecordingAccess` on a MemoryStore): alice, the certificate's user, is
the viewer.  Checked: what the client gets back (JSON lines, raw frames,
exit status), refusals for bad JSON, an unknown op and another's recording,
and flow control: the next range is read only once the client has room.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.conch.ssh import connection
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.rbac import BUILTIN_ROLES
from teleconch.auth.recording_access import RecordingAccess
from teleconch.auth.recording_search import TextSearch
from teleconch.auth.recordings import Recordings
from teleconch.auth.types import User
from teleconch.proxy.recordings_subsystem import RECORDINGS_SUBSYSTEM
from tests.test_proxy_channels import NODES, World
from tests.test_routing import Directory, now
from tests.test_splice import WINDOW

NOW = 1_700_000_000.0


class RecordingDirectory(Directory):
    """The Router's double, answering the recordings commands as auth would."""

    def __init__(self) -> None:
        super().__init__(NODES)
        self.store = MemoryStore()
        now(self.store.open())
        clock = Clock()
        clock.advance(NOW)
        log = AuditLog(self.store, clock)
        self.recordings = Recordings(self.store, clock, log)
        search = TextSearch(self.store, lambda f, *a: succeed(f(*a)))
        self.access = RecordingAccess(self.store, self.recordings, log, search)
        self.reads: list[int] = []
        for role in BUILTIN_ROLES:
            now(self.store.upsert_role(role))
        for name in ("alice", "bob"):
            now(self.store.create_user(User(name=name, roles=("access",))))

    def add(self, sid: str, user: str, outputs: list[bytes]) -> bytes:
        """A complete recording, one frame per output; its stored bytes."""
        meta = {"user": user, "login": "root", "node": "web1", "start": NOW}
        now(self.recordings.start("p", sid, meta))
        stream, at = b"", 0
        for i, out in enumerate(outputs):
            frame = fmt.encode_frame(i, fmt.encode_record("print", i, out, offset=0))
            at = now(self.recordings.append("p", sid, at, frame))
            stream += frame
        now(self.recordings.complete("p", sid, len(outputs)))
        return stream

    async def search_recordings(self, query: api.RecordingQuery) -> api.Recordings:
        return await self.access.find(query)

    async def read_recording_as(
        self, viewer: str, id: str, start: int, length: int
    ) -> api.RecordingBytes:
        self.reads.append(start)
        return await self.access.read(api.ViewerRange(viewer, id, start, length))

    async def seek_recording(
        self, viewer: str, id: str, ms: int
    ) -> api.RecordingPosition:
        return await self.access.seek(api.RecordingSeek(viewer, id, ms))


def send(w: World, request: bytes) -> None:
    w.client.open(b"session")
    w.subsystem(RECORDINGS_SUBSYSTEM)
    w.client.send(request)
    w.clock.advance(0)  # the answer starts on the next turn
    w.client.poll()


def lines(w: World) -> list[Any]:
    return [json.loads(line) for line in bytes(w.client.received).splitlines()]


def test_ls_answers_the_certificates_users_recordings_as_one_json_line() -> None:
    """alice's ls lists hers, not bob's; exit status 0, EOF and close follow."""
    d = RecordingDirectory()
    d.add("a1", "alice", [b"mine"])
    d.add("b1", "bob", [b"his"])
    w = World(d)
    send(w, b'{"op": "ls"}\n')
    (answer,) = lines(w)
    assert [r["id"] for r in answer["recordings"]] == ["a1"]
    assert answer["cut_short"] is False
    assert w.exit_statuses() == [0]
    assert w.client.events[-2:] == ["eof", "close"]


def test_search_and_seek_answer_one_line_each() -> None:
    """search finds by output text; seek names the frame's offset and time."""
    d = RecordingDirectory()
    stream = d.add("a1", "alice", [b"first ", b"Second"])
    w = World(d)
    send(w, b'{"op": "search", "text": "SECOND"}\n')
    assert [r["id"] for r in lines(w)[0]["recordings"]] == ["a1"]
    w2 = World(d)
    send(w2, b'{"op": "seek", "id": "a1", "ms": 1}\n')
    (pos,) = lines(w2)
    first = fmt.frame_length(stream)
    assert pos == {"offset": first, "ms": 1, "duration_ms": 2, "size": len(stream)}
    assert w2.exit_statuses() == [0]


def test_bad_json_an_unknown_op_and_bad_fields_are_one_error_line_and_exit_1() -> None:
    """Each bad request gets {"error": ...} saying what to send, exit status 1,
    and no trace."""
    for request, says in (
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"op": "drop-tables"}\n', "unknown op"),
        (b'{"op": "seek", "id": "a1", "ms": "soon"}\n', '"ms" must be a number'),
        (b'{"op": "search"}\n', 'needs a "text"'),
        (b'{"op": "read", "id": "a1", "offset": -5}\n', "not negative"),
        (b"x" * 5000, "longer than"),
        (b"[" * 4000 + b"\n", "not JSON"),
    ):
        d = RecordingDirectory()
        d.add("a1", "alice", [b"x"])
        w = World(d)
        send(w, request)
        (answer,) = lines(w)
        assert says in answer["error"], (request, answer)
        assert "Traceback" not in answer["error"]
        assert w.exit_statuses() == [1]


def test_another_users_recording_is_refused_and_audited() -> None:
    """alice reading bob's recording gets the auth service's refusal."""
    d = RecordingDirectory()
    d.add("b1", "bob", [b"secret"])
    w = World(d)
    send(w, b'{"op": "read", "id": "b1"}\n')
    (answer,) = lines(w)
    assert "not yours; ask an auditor" in answer["error"]
    assert b"secret" not in bytes(w.client.received)
    assert w.exit_statuses() == [1]
    (denied,) = now(d.store.search_events(events=["recording.denied"]))
    assert denied.user == "alice"


def test_a_read_streams_the_frames_and_reads_on_only_as_the_client_takes_them() -> None:
    """A recording larger than the client's window: reads stop while the
    window is full (the channel holds at most one range beyond it) and go on
    as the client consumes; the bytes after the header line are the stored
    stream, whole."""
    d = RecordingDirectory()
    rng = random.Random(7)
    stream = d.add("big", "alice", [rng.randbytes(16_000) for _ in range(300)])
    assert len(stream) > 2 * WINDOW
    w = World(d)
    send(w, b'{"op": "read", "id": "big"}\n')
    stalled = len(d.reads)
    assert stalled * api.RECORDING_READ < WINDOW + 2 * api.RECORDING_READ
    assert len(w.client.received) <= WINDOW
    w.client.poll()
    assert len(d.reads) == stalled  # nothing more until the client takes some
    rounds = 0
    while "close" not in w.client.events:
        w.client.consume()
        rounds += 1
        assert rounds < 1000
    header, _, body = bytes(w.client.received).partition(b"\n")
    assert json.loads(header) == {"size": len(stream), "complete": True}
    assert body == stream
    assert w.exit_statuses() == [0]


def test_a_client_that_goes_away_mid_read_stops_the_reading() -> None:
    """Closing the channel while the answer waits for room ends it: no more reads."""
    d = RecordingDirectory()
    rng = random.Random(3)
    d.add("big", "alice", [rng.randbytes(16_000) for _ in range(300)])
    w = World(d)
    send(w, b'{"op": "read", "id": "big"}\n')
    reads = len(d.reads)
    w.client._send(connection.MSG_CHANNEL_CLOSE)
    assert "close" in w.client.events
    assert len(d.reads) == reads


def test_bytes_sent_before_the_subsystem_request_are_the_request() -> None:
    """A client that writes before asking for the subsystem (two packets of
    garbage) gets one error line and exit status 1; the proxy's channel
    machinery is not upset by an answer that ends at once."""
    d = RecordingDirectory()
    w = World(d)
    w.client.open(b"session")
    w.client.send(b"garbage\n")
    w.client.send(b"more garbage\n")
    w.subsystem(RECORDINGS_SUBSYSTEM)
    w.clock.advance(0)
    w.client.poll()
    (answer,) = lines(w)
    assert "not JSON" in answer["error"]
    assert w.exit_statuses() == [1]
    assert "close" in w.client.events
