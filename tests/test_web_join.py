"""Joining a live session from the web terminal's socket (params ``sid`` and
``mode``): BrowserParty through teleconch.proxy.joining to the real hub.

Unit tests: the terminal socket's rig (tests/test_terminal_socket.py), the
real `Joining`, `Router` (over a fake directory) and `SessionHub`.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from teleconch.auth.types import ActiveSession
from teleconch.proxy.joining import Joining
from teleconch.proxy.routing import Router
from teleconch.proxy.sessions import Sessions
from teleconch.web import terminal_messages as msg
from teleconch.web.terminal_party import BrowserParty, SocketState, Upgrade
from tests.terminal_fakes import FakeWire, web_session
from tests.test_routing import Directory
from tests.test_terminal_socket import TOKEN, Rig

NODE = {"id": "node-id-1", "name": "web1", "addr": "10.0.0.1:22", "labels": {}}


class Live(Directory):
    def __init__(self, sessions: Sessions) -> None:
        super().__init__([NODE])
        self._sessions = sessions

    async def list_active_sessions(self) -> tuple[ActiveSession, ...]:
        return tuple(hub.record for hub in self._sessions)


class JoinRig(Rig):
    """alice's session open on one socket; more sockets may join it."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions = Sessions(self.clock)
        self.directory = Live(self.sessions)
        joining = Joining(
            agent=self.directory,
            router=Router(self.directory, self.clock, "test.example", False),
            sessions=self.sessions,
        )
        self.services = attrs.evolve(self.services, joining=joining)
        self.owner, self.owner_wire, self.shell = self.open_socket()
        self.hub = self.terminals.hubs[0]
        self.sessions.add(self.hub)

    def joiner(self, mode: str, sid: str = "") -> tuple[BrowserParty, FakeWire]:
        params = {"sid": sid or self.hub.id, "mode": mode, "term": {"w": 80, "h": 24}}
        wire = FakeWire()
        upgrade = Upgrade("cookie-2", msg.parse_params(json.dumps(params)), "10.0.0.7")
        party = BrowserParty(self.services, wire, upgrade)
        party.opened()
        party.message(TOKEN, False)
        return party, wire


def test_a_browser_joins_as_observer_sees_the_output_and_cannot_type() -> None:
    """The owner may join her own session from another tab: the joiner's
    ``session`` frame says its mode, the owner's socket gets a ``party``
    frame, output reaches both, the observer's keys and resizes go nowhere."""
    rig = JoinRig()
    party, wire = rig.joiner("observer")
    assert party.state is SocketState.OPEN, wire.texts
    [session] = wire.of_type("session")
    assert session["mode"] == "observer" and session["id"] == rig.hub.id
    [notice] = rig.owner_wire.of_type("party")
    assert notice == {
        "type": "party", "action": "joined", "user": "alice", "mode": "observer",
        "message": "alice joined the session as observer",
    }  # fmt: skip
    rig.shell.events.shell_output(b"hello")
    assert wire.binary == [b"hello"] and rig.owner_wire.binary[-1] == b"hello"
    party.message(b"rm -rf /\r", True)
    party.message(
        json.dumps({"type": "resize", "cols": 200, "rows": 50}).encode(), False
    )
    assert rig.shell.written == [] and rig.shell.resized == []
    party.closed()
    assert rig.owner_wire.of_type("party")[-1]["action"] == "left"
    assert rig.hub.state.value == "running"  # the owner's session goes on


def test_a_refused_web_join_closes_with_4003_saying_why_and_is_audited() -> None:
    rig = JoinRig()
    rig.agent.info = web_session(user="carol", roles=("access",))
    party, wire = rig.joiner("peer")
    assert party.state is SocketState.CLOSING
    assert wire.closes[0][0] == msg.CLOSE_DENIED
    assert (
        "do not allow joining alice's sessions as peer"
        in wire.of_type("error")[0]["message"]
    )
    [refused] = [e for e in rig.directory.events if e["event"] == "session.join"]
    assert refused["user"] == "carol" and refused["success"] is False
    assert rig.audited == []  # audited once, as a session.join, not twice
    assert [p.record.user for p in rig.hub.parties] == ["alice"]


def test_a_browser_too_far_behind_is_dropped_with_the_message() -> None:
    """A joined browser that acknowledges nothing: once past its backlog it
    gets the error and a 4410 close; the owner keeps every byte."""
    rig = JoinRig()
    _party, wire = rig.joiner("observer")
    for _ in range(1024 + 512):
        rig.shell.events.shell_output(b"x" * 1024)
        rig.owner.message(json.dumps({"type": "ack", "bytes": 1024}).encode(), False)
    assert wire.closes and wire.closes[0][0] == msg.CLOSE_GONE
    assert "fell too far behind" in wire.of_type("error")[0]["message"]
    assert sum(map(len, rig.owner_wire.binary)) == (1024 + 512) * 1024


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sid": "s", "mode": "moderator", "term": {"w": 80, "h": 24}}, "params.mode"),
        ({"sid": 5, "term": {"w": 80, "h": 24}}, "params.sid"),
    ],
)
def test_bad_join_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(msg.BadMessage, match=message):
        msg.parse_params(json.dumps(params))
