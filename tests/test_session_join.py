"""Joining a session on the real hub: owners and joiners, backlogs, notices.

Unit tests: a `task.Clock`, a fake node shell, parties, taps, registry and
audit; the hub (`teleconch.proxy.sessions.SessionHub`) is the real one.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from teleconch.auth.types import ActiveSession, Party
from teleconch.proxy.sessions import (
    FELL_BEHIND,
    JOINER_BUFFER,
    Ending,
    HubState,
    SessionHub,
)
from tests.terminal_fakes import (
    FakeParty,
    FakeRegistry,
    joiner,
    session_record,
    start_on_fake_shell,
)

CHUNK = 32 * 1024


@attrs.define
class FakeTap:
    """A SessionTap that keeps what it saw, as (kind, ...) tuples."""

    seen: list[tuple[Any, ...]] = attrs.field(factory=list)

    def started(self, session: ActiveSession) -> None:
        self.seen.append(("started", session.id))

    def output(self, data: bytes) -> None:
        self.seen.append(("output", len(data)))

    def input(self, data: bytes) -> None:
        self.seen.append(("input", len(data)))

    def resized(self, cols: int, rows: int) -> None:
        self.seen.append(("resized", cols, rows))

    def joined(self, party: Party) -> None:
        self.seen.append(("joined", party.user, party.mode))

    def left(self, party: Party, reason: str) -> None:
        self.seen.append(("left", party.user, party.mode, reason))

    def ended(self, ending: Ending) -> None:
        self.seen.append(("ended", ending.reason))

    def kinds(self) -> list[str]:
        return [s[0] for s in self.seen if s[0] != "output"]


@attrs.define
class FakeAudit:
    events: list[tuple[str, str, dict[str, Any]]] = attrs.field(factory=list)

    async def __call__(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        self.events.append((event, user, fields))


class Running:
    """A running session with its owner (alice), a tap and the audit."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.tap = FakeTap()
        self.audit = FakeAudit()
        self.registry = FakeRegistry()
        self.hub = SessionHub(
            clock=self.clock,
            registry=self.registry,
            record=session_record(owner_roles=("access",)),
            taps=(self.tap,),
            audit=self.audit,
        )
        self.owner = FakeParty()
        self.hub.join(self.owner)
        self.shell = start_on_fake_shell(self.hub)


def test_a_slow_joiner_is_dropped_while_the_owner_and_another_go_on_at_full_pace() -> (
    None
):
    """A joiner that takes nothing fills its own backlog (the node's window
    keeps opening for the owner) and is dropped with the message once it
    would pass JOINER_BUFFER; the owner and a keeping-up joiner got every
    byte, and every chunk was given back to the node at once."""
    s = Running()
    slow = joiner("party-2", "bob", "observer", wants=False)
    quick = joiner("party-3", "carol", "peer")
    s.hub.join(slow)
    s.hub.join(quick)
    chunks = JOINER_BUFFER // CHUNK + 4
    for i in range(chunks):
        s.hub.shell_output(bytes([65 + i % 26]) * CHUNK)
        assert s.shell.consumed_total == (i + 1) * CHUNK  # never held back
    sent = chunks * CHUNK
    assert sum(map(len, s.owner.received)) == sent
    assert sum(map(len, quick.received)) == sent
    assert slow.received == [] and slow.dropped_for == [FELL_BEHIND]
    assert slow not in s.hub.parties and s.hub.state is HubState.RUNNING
    assert [p.record.user for p in s.hub.parties] == ["alice", "carol"]
    assert ("left", "bob", "observer", "fell too far behind") in s.owner.notices
    assert ("left", "bob", "observer", "fell too far behind") in quick.notices
    assert ("left", "bob", "observer", "fell too far behind") in s.tap.seen
    leaves = [e for e in s.audit.events if e[0] == "session.leave"]
    assert [(u, f["reason"]) for _, u, f in leaves] == [("bob", "fell too far behind")]
    s.hub.input(slow, b"ls\r")  # a dropped party types no more
    assert s.shell.written == []


def test_a_joiner_behind_catches_up_from_its_backlog_when_ready() -> None:
    """Within its bound a joiner only waits: `ready` hands it the rest in order."""
    s = Running()
    late = joiner("party-2", "bob", wants=False)
    s.hub.join(late)
    s.hub.shell_output(b"one ")
    s.hub.shell_output(b"two")
    assert late.received == [] and s.hub.backlog(late) == 7
    late.wants = True
    s.hub.ready()
    assert late.received == [b"one ", b"two"] and s.hub.backlog(late) == 0


def test_an_observers_keys_are_dropped_and_a_peers_reach_the_shell() -> None:
    s = Running()
    watcher = joiner("party-2", "bob", "observer")
    peer = joiner("party-3", "carol", "peer")
    s.hub.join(watcher)
    s.hub.join(peer)
    s.hub.input(watcher, b"rm -rf /\r")
    s.hub.input(peer, b"uptime\r")
    s.hub.input(s.owner, b"ls\r")
    assert s.shell.written == [b"uptime\r", b"ls\r"]


def test_the_sessions_size_follows_the_owner_alone() -> None:
    """A joiner's resize changes nothing; the owner's reaches the node and the tap."""
    s = Running()
    peer = joiner("party-2", "bob", "peer")
    s.hub.join(peer)
    s.hub.resize(peer, 200, 60)
    assert s.shell.resized == [] and (s.hub.record.cols, s.hub.record.rows) == (80, 24)
    s.hub.resize(s.owner, 120, 40)
    assert s.shell.resized == [(120, 40)]
    assert ("resized", 120, 40) in s.tap.seen


def test_each_party_sees_joins_and_leaves_and_the_tap_records_them() -> None:
    """Every other party hears of a join and a leave; the tap and the audit
    log get them; the joiner itself starts with the session's record."""
    s = Running()
    bob = joiner("party-2", "bob", "observer")
    s.hub.join(bob)
    assert [x.id for x in bob.started] == ["sess-1"]
    assert [p.user for p in bob.started[0].parties] == ["alice", "bob"]
    carol = joiner("party-3", "carol", "peer")
    s.hub.join(carol)
    s.hub.leave(bob, "bob closed the terminal")
    assert s.owner.notices == [
        ("joined", "bob", "observer"),
        ("joined", "carol", "peer"),
        ("left", "bob", "observer", "bob closed the terminal"),
    ]
    assert bob.notices == [("joined", "carol", "peer")]
    assert carol.notices == [("left", "bob", "observer", "bob closed the terminal")]
    assert s.tap.kinds() == ["started", "joined", "joined", "left"]
    audited = [(e, u, f["mode"], f["session_id"]) for e, u, f in s.audit.events]
    assert audited == [
        ("session.join", "bob", "observer", "sess-1"),
        ("session.join", "carol", "peer", "sess-1"),
        ("session.leave", "bob", "observer", "sess-1"),
    ]
    assert s.audit.events[0][2]["node"] == "web1"


def test_the_owners_arrival_and_its_end_are_no_join_or_leave() -> None:
    """session.start/session.end say those: the owner alone makes no join or
    leave event, in the tap or the audit log."""
    s = Running()
    s.hub.leave(s.owner, "closed")
    s.shell.exit()
    assert s.tap.kinds() == ["started", "ended"]
    assert s.audit.events == []


def test_observers_alone_do_not_keep_a_session_alive() -> None:
    """The owner leaves and only an observer is left: the session ends, and
    the observer hears who left and then the end."""
    s = Running()
    bob = joiner("party-2", "bob", "observer")
    s.hub.join(bob)
    s.hub.leave(s.owner, "the browser closed the terminal")
    assert s.hub.state is HubState.ENDING and s.shell.closed
    s.shell.exit()
    assert bob.notices == [
        ("left", "alice", "owner", "the browser closed the terminal")
    ]
    [ending] = bob.endings
    assert ending.reason == "alice left: the browser closed the terminal"


def test_a_peer_keeps_the_session_after_its_owner_leaves_and_may_resize() -> None:
    s = Running()
    carol = joiner("party-2", "carol", "peer")
    s.hub.join(carol)
    s.hub.leave(s.owner, "closed")
    assert s.hub.state is HubState.RUNNING
    s.hub.resize(carol, 100, 30)
    assert s.shell.resized == [(100, 30)]


def test_a_second_owner_is_refused() -> None:
    s = Running()
    with pytest.raises(ValueError, match="has an owner"):
        s.hub.join(FakeParty(record=Party("party-9", "mallory", "x", mode="owner")))


def test_the_registered_record_lists_the_parties_with_their_modes() -> None:
    s = Running()
    s.hub.join(joiner("party-2", "bob", "observer"))
    assert [(p.user, p.mode) for p in s.hub.record.parties] == [
        ("alice", "owner"),
        ("bob", "observer"),
    ]
    assert s.hub.record.owner_roles == ("access",)
