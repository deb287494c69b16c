"""The terminal sessions this proxy holds: one hub per session, with parties.

A `SessionHub` owns the node side of one live session (a `NodeShell`: an SSH
channel with a PTY, opened by whoever starts the hub) and fans its output
out to the session's parties: its owner (who opened it: a browser,
`teleconch.web.terminal_party.BrowserParty`, or an SSH client's channel in
recording mode) and those who joined it (`teleconch.proxy.joining`), peers
who may type and observers whose keys are dropped.  A recorder is a
`SessionTap`: it sees the start, the output, the resizes, the joins and
leaves and the end, but is no party (it neither holds the window nor keeps
the session alive).

Flow control: the node's SSH window is given back only for bytes the owner
has taken (`SessionParty.wants_output`): an owner that falls behind keeps
the window shut, so the node's output waits in the node.  Every other party
has its own backlog of at most JOINER_BUFFER bytes; one that would overflow
it is dropped (`SessionParty.dropped`), so a slow joiner never slows the
owner or anyone else.  Without an owner (it left; peers go on) every
remaining party paces the window.  Only the owner's resizes change the
session's size (anyone's, once the owner has gone).

Each party hears who joins and leaves (``party_joined``/``party_left``); the
taps record them; the audit log gets ``session.join``/``session.leave``
from here, the hub that holds the party (refused joins are audited where
they are refused, `teleconch.proxy.joining`).  The owner's arrival and its
leaving with the session are ``session.start``/``session.end``, which the
auth service writes from the registration.

While it lives the hub is registered with the auth service (at start, after
each change, every heartbeat: `teleconch.proxy.session_registration`), so
any proxy of the cluster lists it; its end is registered with the exit
status and the reason.

Life (`HubState`): STARTING (the node side is opening; input, resizes and
early output are held) -> RUNNING -> ENDING (the proxy closes the node: the
last party who could type left, or the proxy ended it) -> ENDED (the shell
exited or the node went away; parties told, registration ended).  STARTING
-> ENDED when the open fails; STARTING -> ENDING when every party leaves
during the open.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch.auth.types import ActiveSession, Party
from teleconch.conch.session import ExitStatus
from teleconch.proxy.session_protocols import (
    FELL_BEHIND,
    JOIN_MODES,
    JOINER_BUFFER,
    OBSERVER,
    OWNER,
    PEER,
    Audit,
    Backlog,
    Ending,
    HubHandle,
    NodeShell,
    Opener,
    SessionOver,
    SessionParty,
    SessionTap,
    ShellEvents,
    describe_exit,
    joined_line,
    left_line,
)
from teleconch.proxy.session_registration import Registration, Registry

__all__ = [  # re-exported: import these from here
    "FELL_BEHIND",
    "JOINER_BUFFER",
    "JOIN_MODES",
    "OBSERVER",
    "OWNER",
    "PEER",
    "Audit",
    "Backlog",
    "Ending",
    "HubHandle",
    "HubState",
    "NodeShell",
    "Opener",
    "SessionHub",
    "SessionOver",
    "SessionParty",
    "SessionTap",
    "Sessions",
    "ShellEvents",
    "describe_exit",
    "joined_line",
    "left_line",
]

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
        audit: Audit | None = None,
    ) -> None:
        self._clock = clock
        self._taps = tuple(taps)
        self._registry = registry
        self._record = record
        self._on_end = on_end
        self._audit = audit
        self._state = HubState.STARTING
        self._parties: dict[str, SessionParty] = {}
        self._owner: str | None = None  # the owner party's id, while it is in
        self._backlogs: dict[str, Backlog] = {}  # every other party's
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
        """Output bytes held back from the node's window (the owner is behind)."""
        return self._owed

    def backlog(self, party: SessionParty) -> int:
        """Output bytes waiting for a joined party (0 for the owner)."""
        found = self._backlogs.get(party.record.id)
        return found.size if found is not None else 0

    def _move(self, to: HubState) -> None:
        if to not in _MOVES[self._state]:
            raise AssertionError(f"session cannot go {self._state.value} -> {to.value}")
        self._state = to

    # -- parties ----------------------------------------------------------

    def join(self, party: SessionParty) -> None:
        """Add ``party``: the owner if its record says so (one per session),
        else a joiner; SessionOver once the session is ending."""
        if self._state not in (HubState.STARTING, HubState.RUNNING):
            raise SessionOver(f"session {self.id} has ended")
        record = party.record
        if record.mode == OWNER:
            if self._owner is not None and self._owner != record.id:
                raise ValueError(f"session {self.id} has an owner already")
            self._owner = record.id
        else:
            self._backlogs[record.id] = Backlog()
        self._parties[record.id] = party
        party.attached(self)
        if self._state is HubState.RUNNING:
            party.session_started(self.record)
            self._registration.changed()
        if record.mode != OWNER:
            self._announce_join(record)

    def leave(self, party: SessionParty, reason: str) -> None:
        if self._parties.pop(party.record.id, None) is None:
            return
        self._gone(party.record, reason)

    def _gone(self, record: Party, reason: str) -> None:
        """``record``'s party is out: end the session if nobody left may type."""
        self._backlogs.pop(record.id, None)
        if self._owner == record.id:
            self._owner = None
        typists = [p for p in self._parties.values() if p.record.mode != OBSERVER]
        if not typists:
            watching = bool(self._parties)
            self.end(f"{record.user} left: {reason}" if watching else reason)
            if not watching:
                return
        self._registration.changed()
        self._announce_leave(record, reason)
        self._maybe_reopen()  # the one that left may have held the window

    def _drop(self, party: SessionParty) -> None:
        """A joiner overflowed its backlog: out, told why."""
        if self._parties.pop(party.record.id, None) is None:
            return
        log.info(
            "session {id}: {user} fell behind and was dropped",
            id=self.id,
            user=party.record.user,
        )
        self._backlogs.pop(party.record.id, None)
        party.dropped(FELL_BEHIND)
        self._gone(party.record, "fell too far behind")

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
        record = party.record
        if record.mode == OBSERVER or not data or record.id not in self._parties:
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
        """The terminal's size follows the owner (anyone's, once it has gone)."""
        owner = self._owner
        if party.record.id != owner and (
            owner is not None or not self._may_type(party)
        ):
            return
        if (cols, rows) == (self._record.cols, self._record.rows):
            return
        self._record = attrs.evolve(self._record, cols=cols, rows=rows)
        if self._state is HubState.RUNNING:
            assert self._shell is not None
            self._shell.resize(cols, rows)
            self._registration.changed()
            for tap in self._taps:
                tap.resized(cols, rows)

    def _may_type(self, party: SessionParty) -> bool:
        return party.record.id in self._parties and party.record.mode != OBSERVER

    def ready(self) -> None:
        """A party can take output again: hand joiners their backlogs, and
        maybe re-open the node's window."""
        for pid, backlog in list(self._backlogs.items()):
            party = self._parties.get(pid)
            if party is not None:
                backlog.drain(party)
        self._maybe_reopen()

    # -- joins and leaves, as every party, tap and the audit log see them ----

    def _announce_join(self, record: Party) -> None:
        for other in self.parties:
            if other.record.id != record.id:
                other.party_joined(record)
        if self._state is HubState.RUNNING:
            for tap in self._taps:
                tap.joined(record)
        self._emit("session.join", record)

    def _announce_leave(self, record: Party, reason: str) -> None:
        for other in self.parties:
            other.party_left(record, reason)
        if self._state is HubState.RUNNING:
            for tap in self._taps:
                tap.left(record, reason)
        self._emit("session.leave", record, reason=reason)

    def _emit(self, event: str, party: Party, **fields: str) -> None:
        if self._audit is None:
            return
        s = self._record
        d = Deferred.fromCoroutine(
            self._audit(
                event,
                user=party.user,
                success=True,
                session_id=s.id,
                session_user=s.user,
                node=s.node,
                login=s.login,
                mode=party.mode,
                party_id=party.id,
                client_addr=party.remote_addr,
                **fields,
            )
        )
        d.addErrback(lambda f: log.failure("could not audit {event}", f, event=event))

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
        backlogs, self._backlogs = self._backlogs, {}
        self._owner = None
        for party in parties:
            backlog = backlogs.get(party.record.id)
            if backlog is not None:  # its last bytes (bounded), then the end
                backlog.drain(party, force=True)
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
            backlog = self._backlogs.get(party.record.id)
            if backlog is None:
                party.output(data)  # the owner: the window paces it
            elif not backlog.offer(party, data):
                self._drop(party)

    def _maybe_reopen(self) -> None:
        if self._state is not HubState.RUNNING or not self._owed or not self._parties:
            return
        owner = self._owner
        pacers = [self._parties[owner]] if owner is not None else self.parties
        if all(p.wants_output() and not self.backlog(p) for p in pacers):
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
