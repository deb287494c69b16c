"""The recorder: a session's start, output, input, resizes, joins and end, to the spool as it goes.

A `Recorder` is a `SessionTap` of one hub.  It turns what it sees (the
start, output, resizes, ``session.join``/``session.leave``, the end) into
`teleconch.recording_format` records, batches them (up to `MAX_BATCH`
bytes, or `FLUSH_EVERY` seconds), and hands each batch to a thread that
compresses it into a frame and appends it to the spool file
(`teleconch.proxy.spool`): the reactor never writes a file and the session
never waits on the disk or the auth service.  Writes are chained, one at a
time, in order.  Then the uploader (`teleconch.proxy.uploader`) takes it.

Life (`RecorderState`): WAITING (made; the node side is opening) ->
RECORDING (``started``) -> CLOSING (``ended``: the last batch and the
``.done`` marker are being written) -> CLOSED.  WAITING -> CLOSED when the
session never started (nothing was written).

What the parties type is recorded too (``input`` records) where the
cluster's ``record_input`` is on; the hub passes each recorder the input it
sends to the node (an observer's is dropped before).

Whether to record at all is the cluster's ``session_recording``, which
`teleconch.proxy.settings.ClusterSettingsCache` asks the auth service for, at
most every `SETTINGS_MAX_AGE` seconds (new sessions follow a change within that).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from teleconch.auth.types import ActiveSession, Party
from teleconch.proxy.sessions import Ending
from teleconch.proxy.settings import ClusterSettingsCache
from teleconch.proxy.spool import InThread, Spool
from teleconch.recording_format import MAX_BATCH, MAX_PRINT, encode_frame, encode_record

log = Logger()

FLUSH_EVERY = 1.0
#: Input typed before the session started, held for its recording, at most.
MAX_EARLY_INPUT = 64 * 1024
#: What of a long command the recording's description keeps.
MAX_COMMAND = 512


class RecorderState(enum.Enum):
    WAITING = "waiting"
    RECORDING = "recording"
    CLOSING = "closing"
    CLOSED = "closed"


_R = RecorderState
_MOVES: dict[RecorderState, frozenset[RecorderState]] = {
    _R.WAITING: frozenset({_R.RECORDING, _R.CLOSED}),
    _R.RECORDING: frozenset({_R.CLOSING}),
    _R.CLOSING: frozenset({_R.CLOSED}),
    _R.CLOSED: frozenset(),
}


class Recorder:
    """Records one session into the spool."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        spool: Spool,
        in_thread: InThread,
        client_addr: str,
        on_closed: Callable[[str], None] = lambda sid: None,
        command: str = "",
        record_input: bool = False,
    ) -> None:
        self._clock = clock
        self._record_input = record_input
        self._spool = spool
        self._in_thread = in_thread
        self._client_addr = client_addr
        self._command = command  # exec's command; "" for a shell
        self._on_closed = on_closed
        self.state = RecorderState.WAITING
        self.sid = ""
        self._t0 = 0.0
        self._offset = 0  # output bytes recorded
        self._batch = bytearray()
        self._early_input: list[bytes] = []
        self._early_len = 0
        self._batch_ms = 0
        self._timer: IDelayedCall | None = None
        self._tail: Deferred[Any] = succeed(None)
        #: Fires once the recording is all in the spool (or was never begun).
        self.closed: Deferred[None] = Deferred()

    def _move(self, to: RecorderState) -> None:
        if to not in _MOVES[self.state]:
            raise AssertionError(f"recorder cannot go {self.state.value} -> {to.value}")
        self.state = to

    def _ms(self) -> int:
        return max(0, int((self._clock.seconds() - self._t0) * 1000))

    # -- SessionTap -------------------------------------------------------

    def started(self, session: ActiveSession) -> None:
        self._move(RecorderState.RECORDING)
        self.sid = session.id
        self._t0 = self._clock.seconds()
        self._spool.writing.add(self.sid)
        meta = {
            "user": session.user,
            "login": session.login,
            "node": session.node,
            "client_addr": self._client_addr,
            "cols": session.cols,
            "rows": session.rows,
            "start": self._t0,
            "session_kind": session.kind,
        }
        if self._command:
            meta["command"] = self._command[:MAX_COMMAND]
        self._chain(self._spool.begin, self.sid, meta)
        fields: dict[str, Any] = {k: v for k, v in meta.items() if k != "start"}
        self._add(
            encode_record("session.start", 0, id=session.id, time=self._t0, **fields)
        )
        early, self._early_input = self._early_input, []
        for data in early:
            self.input(data)

    def output(self, data: bytes) -> None:
        if self.state is not RecorderState.RECORDING:
            return
        ms = self._ms()
        for piece in _pieces(data):
            self._add(encode_record("print", ms, piece, offset=self._offset))
            self._offset += len(piece)

    def input(self, data: bytes) -> None:
        """Recorded only where the cluster's ``record_input`` is on.  What is
        typed while the node side opens (a recording proxy's client sends as
        soon as it likes) is held, up to `MAX_EARLY_INPUT`, for the start."""
        if self._record_input and self.state is RecorderState.WAITING:
            if self._early_len + len(data) <= MAX_EARLY_INPUT:
                self._early_input.append(data)
                self._early_len += len(data)
            return
        if self._record_input and self.state is RecorderState.RECORDING:
            ms = self._ms()
            for piece in _pieces(data):
                self._add(encode_record("input", ms, piece))

    def resized(self, cols: int, rows: int) -> None:
        if self.state is RecorderState.RECORDING:
            self._add(encode_record("resize", self._ms(), cols=cols, rows=rows))

    def joined(self, party: Party) -> None:
        if self.state is RecorderState.RECORDING:
            self._add(encode_record("session.join", self._ms(), **_party(party)))

    def left(self, party: Party, reason: str) -> None:
        if self.state is RecorderState.RECORDING:
            fields = _party(party)
            self._add(
                encode_record("session.leave", self._ms(), reason=reason, **fields)
            )

    def ended(self, ending: Ending) -> None:
        if self.state is RecorderState.WAITING:
            self.never_started()
            return
        if self.state is not RecorderState.RECORDING:
            return
        ms = self._ms()
        self._add(
            encode_record(
                "session.end", ms, exit_code=ending.exit_code, reason=ending.reason
            )
        )
        self._move(RecorderState.CLOSING)
        self._flush()
        self._chain(self._spool.finish, self.sid, ms)
        self._tail.addBoth(self._closed)

    def never_started(self) -> None:
        """The session could not be opened: nothing to record."""
        if self.state is RecorderState.WAITING:
            self._move(RecorderState.CLOSED)
            self.closed.callback(None)

    # -- batches to the spool ---------------------------------------------

    def _add(self, record: bytes) -> None:
        if self._batch and len(self._batch) + len(record) > MAX_BATCH:
            self._flush()
        if not self._batch:
            self._batch_ms = self._ms()
            if self._timer is None and self.state is RecorderState.RECORDING:
                self._timer = self._clock.callLater(FLUSH_EVERY, self._flush)
        self._batch += record

    def _flush(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        records, self._batch = bytes(self._batch), bytearray()
        ms = self._batch_ms

        def write() -> None:
            self._spool.append(self.sid, encode_frame(ms, records))

        self._chain(write)

    def _chain(self, f: Callable[..., Any], *args: Any) -> None:
        def run(_: Any) -> Deferred[Any]:
            return self._in_thread(f, *args)

        def failed(failure: Any) -> None:
            log.failure(
                "recording {sid}: the spool write failed", failure, sid=self.sid
            )

        self._tail.addCallback(run).addErrback(failed)

    def _closed(self, _: Any) -> None:
        self._move(RecorderState.CLOSED)
        self._spool.writing.discard(self.sid)
        self._on_closed(self.sid)
        self.closed.callback(None)


def _pieces(data: bytes) -> list[bytes]:
    """``data`` in pieces one record may carry."""
    return [data[at : at + MAX_PRINT] for at in range(0, len(data), MAX_PRINT)]


def _party(party: Party) -> dict[str, Any]:
    return {
        "user": party.user,
        "mode": party.mode,
        "party_id": party.id,
        "client_addr": party.remote_addr,
    }


class Recorders:
    """Makes a recorder for each new web terminal session, unless the mode is `off`."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        spool: Spool,
        in_thread: InThread,
        settings: ClusterSettingsCache,
        on_closed: Callable[[str], None],
    ) -> None:
        self._clock = clock
        self._spool = spool
        self._in_thread = in_thread
        self._settings = settings
        self._on_closed = on_closed
        self.active: set[Recorder] = set()

    async def recorder(self, client_addr: str) -> Recorder | None:
        settings = await self._settings.current()
        if settings.session_recording == "off":
            return None
        return self.make(client_addr, record_input=settings.record_input)

    def make(
        self, client_addr: str, command: str = "", *, record_input: bool = False
    ) -> Recorder:
        """A recorder, whatever the mode (the recording proxy has decided)."""
        rec = Recorder(
            clock=self._clock,
            spool=self._spool,
            in_thread=self._in_thread,
            client_addr=client_addr,
            on_closed=self._on_closed,
            command=command,
            record_input=record_input,
        )
        self.active.add(rec)
        rec.closed.addBoth(lambda _: self.active.discard(rec))
        return rec
