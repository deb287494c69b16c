"""The session hub's life, fan-out, flow control and registration (teleconch.proxy.sessions).

Unit tests: a `task.Clock`, a fake node shell, parties and registry; the hub
is the real one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from teleconch.auth.protocol import SESSION_HEARTBEAT
from teleconch.auth.types import Party
from teleconch.proxy.session_registration import CHANGE_DELAY
from teleconch.proxy.sessions import (
    _MOVES,
    Ending,
    HubState,
    SessionHub,
    SessionOver,
    Sessions,
    ShellEvents,
)
from tests.terminal_fakes import (
    FakeParty,
    FakeRegistry,
    FakeShell,
    joiner,
    session_record,
)


class Rig:
    """A hub on a clock whose opener is held until the test says."""

    def __init__(self, registry: FakeRegistry | None = None) -> None:
        self.clock = Clock()
        self.registry = registry or FakeRegistry()
        self.sessions = Sessions(self.clock)
        self.hub = SessionHub(
            clock=self.clock,
            registry=self.registry,
            record=session_record(),
            on_end=self.sessions.remove,
        )
        self.sessions.add(self.hub)
        self.party = FakeParty()
        self.hub.join(self.party)
        self.shell: FakeShell | None = None
        self._gate: Deferred[None] = Deferred()
        self.started = Deferred.fromCoroutine(self.hub.start(self._opener))
        self.failures: list[Any] = []
        self.started.addErrback(self.failures.append)

    async def _opener(self, events: ShellEvents) -> FakeShell:
        await self._gate
        self.shell = FakeShell(events)
        return self.shell

    def node_answers(self) -> FakeShell:
        self._gate.callback(None)
        assert self.shell is not None
        return self.shell

    def node_refuses(self, error: Exception) -> None:
        self._gate.errback(error)


def running() -> tuple[Rig, FakeShell]:
    rig = Rig()
    return rig, rig.node_answers()


def test_every_state_but_ended_has_a_way_on_and_ended_has_none() -> None:
    """The table is closed: each state leads on, and ENDED is the only end."""
    assert set(_MOVES) == set(HubState)
    assert _MOVES[HubState.ENDED] == frozenset()
    for state in HubState:
        if state is not HubState.ENDED:
            assert HubState.ENDED in _MOVES[state] or HubState.ENDING in _MOVES[state]


def test_a_move_outside_the_table_is_refused() -> None:
    """ENDED -> RUNNING is no move: the hub asserts rather than carry on."""
    rig, shell = running()
    shell.exit(0)
    with pytest.raises(AssertionError, match="ended -> running"):
        rig.hub._move(HubState.RUNNING)


def test_a_session_starts_registers_and_tells_its_parties() -> None:
    """STARTING -> RUNNING: parties hear of it, the auth service gets the record."""
    rig = Rig()
    assert rig.hub.state is HubState.STARTING
    assert rig.party.hub is rig.hub and rig.party.started == []
    rig.node_answers()
    assert rig.hub.state is HubState.RUNNING
    assert [s.id for s in rig.party.started] == ["sess-1"]
    assert rig.registry.kinds() == ["upsert"]
    registered = rig.registry.calls[0][1]
    assert registered.parties == (rig.party.record,)
    assert (registered.cols, registered.rows) == (80, 24)


def test_the_shell_exiting_ends_the_session_with_its_status() -> None:
    """RUNNING -> ENDED: parties get the status, the registration ends with it."""
    rig, shell = running()
    shell.exit(3)
    assert rig.hub.state is HubState.ENDED
    [ending] = rig.party.endings
    assert ending.exit_code == 3
    assert ending.reason == "the shell exited with status 3"
    assert rig.registry.calls[-1] == ("end", ("sess-1", 3, ending.reason))
    assert rig.sessions.get("sess-1") is None
    assert rig.hub.ended.called


def test_a_signal_ends_the_session_without_an_exit_code() -> None:
    rig, shell = running()
    shell.exit(signal="KILL")
    assert rig.registry.calls[-1] == (
        "end",
        ("sess-1", None, "the shell was killed by signal KILL"),
    )


def test_the_last_party_leaving_closes_the_node_side() -> None:
    """RUNNING -> ENDING (the node is closed) -> ENDED with the party's reason."""
    rig, shell = running()
    rig.hub.leave(rig.party, "the browser closed the terminal")
    assert rig.hub.state is HubState.ENDING and shell.closed
    shell.exit()  # the node's connection went, as the close asked
    assert rig.hub.state is HubState.ENDED
    assert rig.registry.calls[-1] == (
        "end",
        ("sess-1", None, "the browser closed the terminal"),
    )
    assert rig.party.endings == []  # it had left: nobody to tell


def test_a_failed_open_ends_the_session_unregistered() -> None:
    """STARTING -> ENDED: the error reaches the starter; nothing was registered."""
    rig = Rig()
    rig.node_refuses(ConnectionRefusedError("refused"))
    assert rig.hub.state is HubState.ENDED
    assert len(rig.failures) == 1
    assert rig.registry.calls == []
    assert rig.sessions.get("sess-1") is None


def test_parties_leaving_during_the_open_close_the_shell_when_it_comes() -> None:
    """STARTING -> ENDING: the shell that arrives is closed, never registered."""
    rig = Rig()
    rig.hub.leave(rig.party, "the browser closed the terminal")
    assert rig.hub.state is HubState.ENDING
    shell = rig.node_answers()
    assert shell.closed
    shell.exit()
    assert rig.hub.state is HubState.ENDED
    assert rig.registry.calls == []


def test_a_party_gone_before_the_open_begins_ends_the_session_without_opening() -> None:
    """A browser that closed while its login was checked leaves at once on
    joining; the open that follows opens nothing and is no error."""
    hub = SessionHub(clock=Clock(), registry=FakeRegistry(), record=session_record())
    party = FakeParty()
    hub.join(party)
    hub.leave(party, "the browser closed the terminal")
    opened: list[ShellEvents] = []

    async def opener(events: ShellEvents) -> FakeShell:
        opened.append(events)
        return FakeShell(events)

    d = Deferred.fromCoroutine(hub.start(opener))
    assert d.called and d.result is None
    assert opened == []
    assert hub.state is HubState.ENDED
    ending = hub.ended.result
    assert isinstance(ending, Ending)
    assert ending.reason == "the browser closed the terminal"


def test_joining_an_ended_session_is_refused() -> None:
    rig, shell = running()
    shell.exit(0)
    with pytest.raises(SessionOver):
        rig.hub.join(FakeParty(record=Party("party-2", "bob", "10.0.0.8")))


def test_input_and_a_resize_before_the_node_answers_reach_it_once_open() -> None:
    """Typed before the shell exists: held, then written in order; the size follows."""
    rig = Rig()
    rig.hub.input(rig.party, b"echo ")
    rig.hub.input(rig.party, b"hi\r")
    rig.hub.resize(rig.party, 132, 43)
    shell = rig.node_answers()
    assert shell.written == [b"echo ", b"hi\r"]
    assert shell.resized == [(132, 43)]
    assert rig.registry.calls[0][1].cols == 132


def test_output_before_the_start_reaches_parties_after_they_hear_of_it() -> None:
    """The prompt may come before the shell request's answer: held until RUNNING."""
    rig = Rig()
    rig.hub.shell_output(b"$ ")
    assert rig.party.received == []
    rig.node_answers()
    assert rig.party.started and rig.party.received == [b"$ "]


def test_the_window_opens_only_while_the_owner_keeps_up() -> None:
    """The owner that cannot take more keeps the node's window shut; `ready`
    reopens it.  A joiner that cannot take more does not (its backlog waits)."""
    rig, shell = running()
    other = joiner("party-2", "bob", "peer", wants=False)
    rig.hub.join(other)
    rig.hub.shell_output(b"x" * 1000)
    assert shell.consumed_total == 1000
    assert rig.hub.backlog(other) == 1000 and other.received == []
    rig.party.wants = False
    rig.hub.shell_output(b"y" * 500)
    rig.hub.shell_output(b"z" * 500)
    assert shell.consumed_total == 1000 and rig.hub.owed == 1000
    assert rig.party.received[-1] == b"z" * 500  # output still goes to the owner
    rig.hub.ready()
    assert shell.consumed_total == 1000  # still behind
    rig.party.wants = True
    rig.hub.ready()
    assert shell.consumed_total == 2000 and rig.hub.owed == 0
    other.wants = True
    rig.hub.ready()
    assert b"".join(other.received) == b"x" * 1000 + b"y" * 500 + b"z" * 500


def test_without_its_owner_the_remaining_peers_pace_the_window() -> None:
    """The owner left, a peer goes on: now that peer's pace is the session's."""
    rig, shell = running()
    peer = joiner("party-2", "bob", "peer")
    rig.hub.join(peer)
    rig.hub.leave(rig.party, "closed")
    assert rig.hub.state is HubState.RUNNING
    peer.wants = False
    rig.hub.shell_output(b"x" * 100)
    assert shell.consumed_total == 0 and rig.hub.backlog(peer) == 100
    peer.wants = True
    rig.hub.ready()
    assert shell.consumed_total == 100 and peer.received == [b"x" * 100]


def test_the_node_window_filling_blocks_every_partys_input() -> None:
    rig, _shell = running()
    rig.hub.shell_writable(False)
    rig.hub.shell_writable(True)
    assert rig.party.blocked == [True, False]


def test_an_observer_cannot_type() -> None:
    rig, shell = running()
    watcher = FakeParty(record=Party("party-2", "bob", "10.0.0.8", mode="observer"))
    rig.hub.join(watcher)
    rig.hub.input(watcher, b"rm -rf /\r")
    rig.hub.input(rig.party, b"ls\r")
    assert shell.written == [b"ls\r"]


def test_changes_are_registered_once_shortly_after_and_heartbeats_follow() -> None:
    """A burst of resizes is one upsert after CHANGE_DELAY; then every heartbeat."""
    rig, shell = running()
    for cols in (100, 110, 120):
        rig.hub.resize(rig.party, cols, 30)
    assert shell.resized == [(100, 30), (110, 30), (120, 30)]
    assert rig.registry.kinds() == ["upsert"]
    rig.clock.advance(CHANGE_DELAY)
    assert rig.registry.kinds() == ["upsert", "upsert"]
    assert rig.registry.calls[-1][1].cols == 120
    rig.clock.advance(SESSION_HEARTBEAT)
    assert rig.registry.kinds() == ["upsert"] * 3
    joiner = FakeParty(record=Party("party-2", "bob", "10.0.0.8"))
    rig.hub.join(joiner)
    rig.clock.advance(CHANGE_DELAY)
    assert len(rig.registry.calls[-1][1].parties) == 2


def test_no_registration_follows_the_end() -> None:
    """After ``end_active_session`` the heartbeat and pending changes are stopped."""
    rig, shell = running()
    rig.hub.resize(rig.party, 100, 30)
    shell.exit(0)
    rig.clock.advance(SESSION_HEARTBEAT * 3)
    assert rig.registry.kinds() == ["upsert", "end"]
    assert rig.clock.getDelayedCalls() == []


def test_an_end_waits_for_a_registration_still_on_its_way() -> None:
    """Registry calls go in order: a slow upsert is answered before the end is sent."""
    held: list[Deferred[None]] = []
    rig = Rig(FakeRegistry(hold=held))
    shell = rig.node_answers()
    shell.exit(0)
    assert rig.registry.kinds() == ["upsert"]  # the end waits
    held[0].callback(None)
    assert rig.registry.kinds() == ["upsert", "end"]


def test_a_registry_failure_is_logged_and_the_session_goes_on() -> None:
    rig = Rig(FakeRegistry(fail=RuntimeError("auth down")))
    shell = rig.node_answers()
    rig.hub.input(rig.party, b"ls\r")
    assert rig.hub.state is HubState.RUNNING and shell.written == [b"ls\r"]
    rig.clock.advance(SESSION_HEARTBEAT)
    assert rig.registry.kinds() == ["upsert", "upsert"]


def test_ending_every_session_closes_each_node_side_and_waits_for_the_ends() -> None:
    """`Sessions.end_all` (the proxy stopping) ends each hub, and returns once
    each end has reached the auth service."""
    clock = Clock()
    sessions = Sessions(clock)
    registry = FakeRegistry()
    shells = []
    for n in range(2):
        hub = SessionHub(
            clock=clock,
            registry=registry,
            record=session_record(id=f"s{n}"),
            on_end=sessions.remove,
        )
        hub.join(FakeParty())
        sessions.add(hub)
        opener: Callable[[ShellEvents], Awaitable[FakeShell]]

        async def opener(events: ShellEvents) -> FakeShell:
            shells.append(FakeShell(events))
            return shells[-1]

        Deferred.fromCoroutine(hub.start(opener))
    done = Deferred.fromCoroutine(sessions.end_all("the proxy is stopping"))
    assert all(s.closed for s in shells) and not done.called
    for shell in shells:
        shell.exit()
    assert done.called and len(sessions) == 0
    ends = [args for kind, args in registry.calls if kind == "end"]
    assert ends == [
        ("s0", None, "the proxy is stopping"),
        ("s1", None, "the proxy is stopping"),
    ]


def test_ending_every_session_gives_up_on_a_node_that_never_closes() -> None:
    clock = Clock()
    sessions = Sessions(clock)
    hub = SessionHub(clock=clock, registry=FakeRegistry(), record=session_record())
    hub.join(FakeParty())
    sessions.add(hub)

    async def opener(events: ShellEvents) -> FakeShell:
        return FakeShell(events)

    Deferred.fromCoroutine(hub.start(opener))
    done = Deferred.fromCoroutine(sessions.end_all("stopping", wait=5))
    clock.advance(5)
    assert done.called
