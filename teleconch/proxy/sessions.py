"""The terminal sessions this proxy holds: one hub per session, with parties.

A `SessionHub` owns the node side of one live session (a `NodeShell`: an SSH
channel with a PTY, opened by whoever starts the hub) and fans its output
out to the session's parties.  Today a session has one, the browser that
opened it (`teleconch.web.terminal_party.BrowserParty`); a recorder and
joining parties (the recording issue) attach here the same way, so the hub
never assumes there is only one.  A recorder is a `SessionTap`: it sees the
start, the output, the resizes and the end, but is no party (it neither
holds the window nor keeps the session alive).

Flow control: the node's SSH window is given back only for bytes every
party can take (`SessionParty.wants_output`).  A party that falls behind (a
browser that has not acknowledged, a socket that backs up) keeps the window
shut, so the node's output waits in the node, not in this process.

While it lives the hub is registered with the auth service (at start, after
each change, every heartbeat: `teleconch.proxy.session_registration`), so
any proxy of the cluster lists it; its end is registered with the exit
status and the reason.  The auth service audits both, as ``session.start``
and ``session.end``.

Life (`HubState`): STARTING (the node side is opening; input, resizes and
early output are held) -> RUNNING -> ENDING (the proxy closes the node: the
last party left, or the proxy ended it) -> ENDED (the shell exited or the
node went away; parties told, registration ended).  STARTING -> ENDED when
the open fails; STARTING -> ENDING when every party leaves during the open.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch.auth.types import ActiveSession, Party
from teleconch.conch.session import ExitStatus
from teleconch.proxy.session_registration import Registration, Registry

log = Logger()

#: Input typed before the node side is open is held, up to this much.
MAX_HELD_INPUT = 64 * 1024


class HubState(enum.Enum):
    """Where a session is in its life; see the module docstring for the moves."""

    STARTING = "starting"
    RUNNING = "running"
    ENDING = "ending"
    ENDED = "ended"


_H = HubState
_MOVES: dict[HubState, frozenset[HubState]] = {
    _H.STARTING: frozenset({_H.RUNNING, _H.ENDING, _H.ENDED}),
    _H.RUNNING: frozenset({_H.ENDING, _H.ENDED}),
    _H.ENDING: frozenset({_H.ENDED}),
    _H.ENDED: frozenset(),
}


class SessionOver(Exception):
    """A party tried to join a session that has ended (or is ending)."""


@attrs.frozen
class Ending:
    """How a session ended: the shell's exit status (if it gave one) and why."""

    status: ExitStatus | None
    reason: str

    @property
    def exit_code(self) -> int | None:
        return self.status.code if self.status is not None else None


class NodeShell(Protocol):
    """The node side of a session (`teleconch.proxy.websession_ssh.WebShell`).

    It reports to the hub's `ShellEvents`; after `close` (or on its own) it
    calls ``shell_ended`` exactly once.
    """

    def write(self, data: bytes) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def consumed(self, n: int) -> None:
        """``n`` output bytes have been taken by every party: re-open the window."""
        ...

    def close(self) -> None: ...


class ShellEvents(Protocol):
    """What a `NodeShell` tells its hub."""

    def shell_output(self, data: bytes) -> None: ...

    def shell_writable(self, writable: bool) -> None: ...

    def shell_ended(self, status: ExitStatus | None) -> None: ...


class HubHandle(Protocol):
    """What a party calls on the session it is in: a `SessionHub` here, or a
    session held by another proxy and joined through it (proxy peering), which
    offers the same calls."""

    @property
    def id(self) -> str: ...

    @property
    def record(self) -> ActiveSession: ...

    def input(self, party: SessionParty, data: bytes) -> None: ...

    def resize(self, party: SessionParty, cols: int, rows: int) -> None: ...

    def leave(self, party: SessionParty, reason: str) -> None: ...

    def ready(self) -> None: ...


class SessionParty(Protocol):
    """Someone attached to a session: the browser today, later a recorder or a joiner."""

    @property
    def record(self) -> Party: ...

    def attached(self, hub: HubHandle) -> None:
        """The party joined ``hub`` (it may send input and resizes to it now)."""
        ...

    def session_started(self, session: ActiveSession) -> None:
        """The node side is open; output follows."""
        ...

    def output(self, data: bytes) -> None: ...

    def wants_output(self) -> bool:
        """Whether the party can take more output now (else the window stays shut);
        when it can again it calls `SessionHub.ready`."""
        ...

    def input_blocked(self, blocked: bool) -> None:
        """The node's window is full (True): stop reading input until False."""
        ...

    def session_ended(self, ending: Ending) -> None: ...


class SessionTap(Protocol):
    """Something that sees a session without being a party of it (the
    recorder, `teleconch.proxy.recorder`): it never holds the window and
    never keeps a session alive."""

    def started(self, session: ActiveSession) -> None: ...

    def output(self, data: bytes) -> None: ...

    def input(self, data: bytes) -> None:
        """What a party typed, as it goes to the node (never an observer's)."""
        ...

    def resized(self, cols: int, rows: int) -> None: ...

    def ended(self, ending: Ending) -> None: ...


Opener = Callable[[ShellEvents], Awaitable[NodeShell]]


def describe_exit(status: ExitStatus | None) -> str:
    if status is None or (status.code is None and status.signal is None):
        return "the node closed the session"
    if status.signal is not None:
        return f"the shell was killed by signal {status.signal}"
    return f"the shell exited with status {status.code}"


class SessionHub:
    """One live terminal session: the node side, its parties, its registration."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        registry: Registry,
        record: ActiveSession,
        on_end: Callable[[SessionHub], None] | None = None,
        taps: Sequence[SessionTap] = (),
    ) -> None:
        self._clock = clock
        self._taps = tuple(taps)
        self._registry = registry
        self._record = record
        self._on_end = on_end
        self._state = HubState.STARTING
        self._parties: dict[str, SessionParty] = {}
        self._shell: NodeShell | None = None
        self._held_input: list[bytes] = []
        self._held_len = 0
        self._early_output: list[bytes] = []
        self._owed = 0  # output bytes not yet given back to the node's window
        self._reason: str | None = None  # why the proxy is ending it
        self._registration = Registration(clock, registry, lambda: self.record)
        #: Fires with the `Ending` once the session is over.
        self.ended: Deferred[Ending] = Deferred()

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def state(self) -> HubState:
        return self._state

    @property
    def record(self) -> ActiveSession:
        """The session as registered now: size, activity and parties."""
        parties = tuple(p.record for p in self._parties.values())
        return attrs.evolve(self._record, parties=parties)

    @property
    def parties(self) -> list[SessionParty]:
        return list(self._parties.values())

    @property
    def owed(self) -> int:
        """Output bytes held back from the node's window (a party is behind)."""
        return self._owed

    def _move(self, to: HubState) -> None:
        if to not in _MOVES[self._state]:
            raise AssertionError(f"session cannot go {self._state.value} -> {to.value}")
        self._state = to

    # -- parties ----------------------------------------------------------

    def join(self, party: SessionParty) -> None:
        if self._state not in (HubState.STARTING, HubState.RUNNING):
            raise SessionOver(f"session {self.id} has ended")
        self._parties[party.record.id] = party
        party.attached(self)
        if self._state is HubState.RUNNING:
            party.session_started(self.record)
            self._registration.changed()

    def leave(self, party: SessionParty, reason: str) -> None:
        if self._parties.pop(party.record.id, None) is None:
            return
        if not self._parties:
            self.end(reason)
        else:
            self._registration.changed()
            self._maybe_reopen()  # the one that left may have held the window

    def end(self, reason: str) -> None:
        """End the session from the proxy's side (its parties left, a logout)."""
        if self._state is HubState.STARTING:
            self._reason = reason
            self._move(HubState.ENDING)  # the open's shell is closed when it comes
        elif self._state is HubState.RUNNING:
            self._reason = reason
            self._move(HubState.ENDING)
            assert self._shell is not None
            self._shell.close()

    def input(self, party: SessionParty, data: bytes) -> None:
        if party.record.mode == "observer" or not data:
            return
        self._record = attrs.evolve(self._record, last_active=self._clock.seconds())
        if self._state is HubState.STARTING:
            if self._held_len + len(data) > MAX_HELD_INPUT:
                log.info(
                    "session {id}: input before the node answered dropped", id=self.id
                )
                return
            self._held_input.append(data)
            self._held_len += len(data)
        elif self._state is HubState.RUNNING:
            assert self._shell is not None
            self._shell.write(data)
            for tap in self._taps:
                tap.input(data)

    def resize(self, party: SessionParty, cols: int, rows: int) -> None:
        """The terminal's size: the last party to resize sets it."""
        if (cols, rows) == (self._record.cols, self._record.rows):
            return
        self._record = attrs.evolve(self._record, cols=cols, rows=rows)
        if self._state is HubState.RUNNING:
            assert self._shell is not None
            self._shell.resize(cols, rows)
            self._registration.changed()
            for tap in self._taps:
                tap.resized(cols, rows)

    def ready(self) -> None:
        """A party can take output again: maybe re-open the node's window."""
        self._maybe_reopen()

    # -- the node side ----------------------------------------------------

    async def start(self, opener: Opener) -> None:
        """Open the node side with ``opener``; raise why not (the session has ENDED)."""
        if self._state is HubState.ENDING and self._shell is None:
            # every party left before the open began (a browser that closed
            # while its login was checked): nothing to open, nobody to tell
            self._move(HubState.ENDED)
            self._finished(Ending(None, self._reason or "every party left"))
            return
        if self._state is not HubState.STARTING:
            raise SessionOver(f"session {self.id} has started already")
        size = (self._record.cols, self._record.rows)
        try:
            shell = await opener(self)
        except BaseException:
            self._move(HubState.ENDED)
            self._finished(Ending(None, self._reason or "could not open the node side"))
            raise
        self._shell = shell
        if self._state is HubState.ENDING:  # every party left meanwhile
            shell.close()
            return
        self._move(HubState.RUNNING)
        if (self._record.cols, self._record.rows) != size:
            shell.resize(self._record.cols, self._record.rows)
        self._registration.start()
        for tap in self._taps:
            tap.started(self.record)
        for party in self.parties:
            party.session_started(self.record)
        held, self._held_input, self._held_len = self._held_input, [], 0
        for data in held:
            shell.write(data)
            for tap in self._taps:
                tap.input(data)
        early, self._early_output = self._early_output, []
        for data in early:
            self._fan_out(data)
        self._maybe_reopen()

    def shell_output(self, data: bytes) -> None:
        self._owed += len(data)
        if self._state is HubState.STARTING:
            self._early_output.append(data)  # bounded by the node's window
        elif self._state is HubState.RUNNING:
            self._fan_out(data)
            self._maybe_reopen()

    def shell_writable(self, writable: bool) -> None:
        for party in self.parties:
            party.input_blocked(not writable)

    def shell_ended(self, status: ExitStatus | None) -> None:
        if self._state not in (HubState.RUNNING, HubState.ENDING):
            return
        self._move(HubState.ENDED)
        ending = Ending(status, self._reason or describe_exit(status))
        parties, self._parties = self.parties, {}
        for party in parties:
            party.session_ended(ending)
        for tap in self._taps:
            tap.ended(ending)
        self._finished(ending)

    async def settled(self) -> None:
        """Once the session has ended and the auth service has been told."""
        await self.ended
        await self._registration.settled()

    def _finished(self, ending: Ending) -> None:
        self._registration.end(ending.exit_code, ending.reason)
        log.info(
            "session {id} of {user} on {login}@{node} ended: {reason}",
            id=self.id,
            user=self._record.user,
            login=self._record.login,
            node=self._record.node,
            reason=ending.reason,
        )
        self.ended.callback(ending)
        if self._on_end is not None:
            self._on_end(self)

    def _fan_out(self, data: bytes) -> None:
        for tap in self._taps:
            tap.output(data)
        for party in self.parties:
            party.output(data)

    def _maybe_reopen(self) -> None:
        if self._state is not HubState.RUNNING or not self._owed or not self._parties:
            return
        if all(p.wants_output() for p in self._parties.values()):
            n, self._owed = self._owed, 0
            assert self._shell is not None
            self._shell.consumed(n)


class Sessions:
    """The hubs this proxy holds now, by session id (joining will look here)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._hubs: dict[str, SessionHub] = {}

    def add(self, hub: SessionHub) -> None:
        self._hubs[hub.id] = hub

    def remove(self, hub: SessionHub) -> None:
        if self._hubs.get(hub.id) is hub:
            del self._hubs[hub.id]

    def get(self, session_id: str) -> SessionHub | None:
        return self._hubs.get(session_id)

    def __len__(self) -> int:
        return len(self._hubs)

    def __iter__(self) -> Iterator[SessionHub]:
        return iter(list(self._hubs.values()))

    async def end_all(self, reason: str, wait: float = 5.0) -> None:
        """End every session (the proxy is stopping), and wait, up to
        ``wait`` seconds, for each to end and its end to be registered."""
        waits = []
        for hub in self:
            hub.end(reason)
            waits.append(Deferred.fromCoroutine(hub.settled()))
        if waits:
            everything = gatherResults(waits, consumeErrors=True)
            await everything.addTimeout(wait, self._clock).addErrback(
                lambda f: log.warn(
                    "sessions did not all end in time: {e}", e=str(f.value)
                )
            )
