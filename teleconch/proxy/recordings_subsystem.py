"""The ``teleconch-recordings`` subsystem: recordings for ``teleconch recordings`` and ``play``.

The user's own OpenSSH asks the proxy for this subsystem (``ssh -s``) and
writes one JSON request line; the proxy asks the auth service as the
certificate's user (its verified key id), who is the viewer the auth
service decides for (`teleconch.auth.recording_access`):

- ``{"op": "ls", "user"?, "node"?, "since"?, "limit"?}`` and
  ``{"op": "search", "text", ...the same}``: one line
  ``{"recordings": [entry...], "cut_short": bool}``;
- ``{"op": "seek", "id", "ms"}``: one line ``{"offset", "ms", "duration_ms", "size"}``;
- ``{"op": "read", "id", "offset"?}``: one line ``{"size", "complete"}``, then
  the recording's raw frames from ``offset`` to the end stored so far.

A refusal or a bad request is one line ``{"error": "..."}`` and exit
status 1; a failure in the middle of a read goes to stderr, exit status 1.

The answer is the node side (`NodeTransport`) of the session channel's
splice, so it gets the splice's flow control: while the client has not
taken what was sent, the splice pauses it, and the next range is not read
from the auth service until it is resumed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs
from twisted.conch.ssh import connection
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthUnavailable
from teleconch.proxy.node import NodeEvents
from teleconch.proxy.routing import Router, Target
from teleconch.proxy.splice import SplicingChannel

log = Logger()

RECORDINGS_SUBSYSTEM = "teleconch-recordings"
#: The longest request line.
MAX_REQUEST = 4096
OPS = ("ls", "search", "seek", "read")


@runtime_checkable
class RecordingSource(Protocol):
    """What the subsystem asks of the auth service (the proxy's AuthAgent)."""

    async def search_recordings(self, query: api.RecordingQuery) -> api.Recordings: ...

    async def read_recording_as(
        self, viewer: str, id: str, start: int, length: int
    ) -> api.RecordingBytes: ...

    async def seek_recording(
        self, viewer: str, id: str, ms: int
    ) -> api.RecordingPosition: ...


class BadRequest(Exception):
    """A request line that is not one we answer; the text says what to send."""


@attrs.frozen
class Request:
    op: str
    fields: dict[str, Any]

    def text(self, key: str) -> str:
        value = self.fields.get(key, "")
        if not isinstance(value, str):
            raise BadRequest(f'"{key}" must be a string')
        return value

    def number(self, key: str, default: float = 0) -> float:
        value = self.fields.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise BadRequest(f'"{key}" must be a number')
        return value


def parse_request(line: bytes) -> Request:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        raise BadRequest(
            'the request is not JSON: send one line like {"op": "ls"}'
        ) from None
    if not isinstance(value, dict):
        raise BadRequest('the request must be a JSON object, like {"op": "ls"}')
    op = value.pop("op", None)
    if op not in OPS:
        raise BadRequest(f"unknown op {str(op)[:32]!r}: one of {', '.join(OPS)}")
    return Request(op, value)


class RecordingsAnswer:
    """Answers one request, as the node side of a session channel's splice."""

    def __init__(
        self,
        viewer: str,
        source: RecordingSource,
        clock: IReactorTime,
        exit_status: Callable[[int], None],
        stderr: Callable[[bytes], None],
    ) -> None:
        self._viewer = viewer
        self._source = source
        self._clock = clock
        self._exit_status = exit_status
        self._stderr = stderr
        self._events: NodeEvents | None = None
        self._line = b""
        self._started = False
        self._over = False
        self._paused = False
        self._resumed: Deferred[None] | None = None

    # -- NodeTransport ------------------------------------------------------

    def connect(self, target: Target, events: NodeEvents) -> Deferred[None]:
        self._events = events
        return succeed(None)

    def write(self, data: bytes) -> None:
        if self._started:
            return  # one request per channel; the rest is ignored
        self._line += data
        end = self._line.find(b"\n")
        if end >= 0:
            self._start(self._line[:end])
        elif len(self._line) > MAX_REQUEST:
            self._start(self._line)

    def write_eof(self) -> None:
        if not self._started:
            self._start(self._line)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def close(self) -> None:
        self._finish(None)

    def abort(self) -> None:
        self._finish(None)

    @property
    def peer(self) -> str:
        return RECORDINGS_SUBSYSTEM

    # -- the answer ---------------------------------------------------------

    def _start(self, line: bytes) -> None:
        """Answer on the next turn of the reactor: never inside the splice's
        own write, which an answer that ends at once would pull the node from."""
        self._started = True
        self._clock.callLater(0, lambda: Deferred.fromCoroutine(self._answer(line)))

    async def _answer(self, line: bytes) -> None:
        if len(line) > MAX_REQUEST:
            self._fail(f"the request is longer than {MAX_REQUEST} bytes")
            return
        try:
            request = parse_request(line)
            if request.op == "read":
                await self._read(request)
            else:
                self._send_line(await self._query(request))
                self._finish(0)
        except BadRequest as e:
            self._fail(str(e))
        except api.AuthAPIError as e:
            self._fail(str(e))
        except AuthUnavailable:
            self._fail("the auth service cannot be reached now; try again")
        except Exception:
            log.failure(
                "answering a recordings request for {viewer}", viewer=self._viewer
            )
            self._fail("the proxy could not answer; try again")

    async def _query(self, r: Request) -> dict[str, Any]:
        v = self._viewer
        if r.op == "seek":
            p = await self._source.seek_recording(v, r.text("id"), int(r.number("ms")))
            return attrs.asdict(p)
        text = r.text("text") if r.op == "search" else ""
        if r.op == "search" and not text:
            raise BadRequest('a search needs a "text"')
        query = api.RecordingQuery(
            viewer=v,
            user=r.text("user"),
            node=r.text("node"),
            since=float(r.number("since")),
            text=text,
            limit=int(r.number("limit", 200)),
        )
        found = await self._source.search_recordings(query)
        return {
            "recordings": [e.to_json() for e in found.recordings],
            "cut_short": found.cut_short,
        }

    async def _read(self, r: Request) -> None:
        id, at = r.text("id"), int(r.number("offset"))
        if at < 0:
            raise BadRequest('"offset" is not negative')
        first = True
        while not self._over:
            await self._room()
            if self._over:
                return
            try:
                got = await self._source.read_recording_as(
                    self._viewer, id, at, api.RECORDING_READ
                )
            except Exception:
                if first:
                    raise
                log.failure("reading recording {id} at {at}", id=id, at=at)
                self._stderr(
                    b"teleconch: the recording could not be read on; try again\n"
                )
                self._finish(1)
                return
            if first:
                self._send_line({"size": got.size, "complete": got.complete})
                first = False
            if not got.data:
                break
            at += len(got.data)
            self._data(got.data)
        self._finish(0)

    async def _room(self) -> None:
        """Return once the client has taken what was sent (the splice resumed us)."""
        while self._paused and not self._over:
            self._resumed = Deferred()
            await self._resumed

    def _wake(self) -> None:
        if self._resumed is not None:
            d, self._resumed = self._resumed, None
            d.callback(None)

    def _data(self, data: bytes) -> None:
        if self._events is not None and not self._over:
            self._events.node_data(data)

    def _send_line(self, value: dict[str, Any]) -> None:
        self._data(json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n")

    def _fail(self, message: str) -> None:
        self._send_line({"error": message})
        self._finish(1)

    def _finish(self, status: int | None) -> None:
        """The answer is over: its exit status (None: the client went), then done."""
        if self._over:
            return
        self._over = True
        self._wake()
        if status is not None:
            self._exit_status(status)
        if self._events is not None:
            self._events.node_lost(Failure(ConnectionDone()))


def serve_recordings(channel: SplicingChannel, viewer: str, router: Router) -> bool:
    """Answer the subsystem on ``channel`` for ``viewer``, through the router's
    agent (the proxy's AuthAgent)."""
    agent = router.agent
    if not isinstance(agent, RecordingSource):
        return False  # this proxy's auth side cannot answer: refuse the subsystem

    def exit_status(status: int) -> None:
        assert channel.conn is not None
        channel.conn.sendRequest(channel, b"exit-status", status.to_bytes(4, "big"))

    def stderr(data: bytes) -> None:
        channel.writeExtended(connection.EXTENDED_DATA_STDERR, data)

    answer = RecordingsAnswer(viewer, agent, router.reactor, exit_status, stderr)
    Deferred.fromCoroutine(channel.connect(answer, Target(RECORDINGS_SUBSYSTEM, 0)))
    return True
