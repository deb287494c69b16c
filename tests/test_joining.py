"""Joining a live session (teleconch.proxy.joining) and the SSH joiner's
party (teleconch.proxy.join_subsystem.SSHJoinParty).

Unit tests, in memory: the real `Router` over a fake directory, the real
`Sessions` and `SessionHub` on a fake node shell; the SSH channel's splice
is a fake `NodeEvents`.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from teleconch.auth.types import ActiveSession, Party
from teleconch.proxy.join_subsystem import (
    SSHJoinParty,
    list_sessions,
    notice,
    parse_join,
)
from teleconch.proxy.joining import Joining, JoinRefused, not_here
from teleconch.proxy.routing import Grant, Router, Target
from teleconch.proxy.sessions import (
    FELL_BEHIND,
    JOINER_BUFFER,
    HubHandle,
    SessionHub,
    SessionParty,
    Sessions,
)
from tests.terminal_fakes import (
    FakeParty,
    session_record,
    start_on_fake_shell,
)
from tests.test_routing import Directory, now

NODE = {"id": "n-1", "name": "web1", "addr": "10.0.0.1:22", "labels": {"env": "dev"}}
PAIR: dict[str, Any] = {
    "name": "pair-dev",
    "logins": [],
    "node_labels": {"env": ["dev"]},
    "join_sessions": [{"roles": ["dev"], "modes": ["observer", "peer"]}],
}
WATCH: dict[str, Any] = {**PAIR, "name": "watch-dev", "join_sessions": [
    {"roles": ["dev"], "modes": ["observer"]}
]}  # fmt: skip
BOB = Grant("bob", ("pair-dev",), ())
CAROL = Grant("carol", ("access",), ())


class Cluster(Directory):
    """The auth service for joining: nodes, roles, audit, live sessions."""

    def __init__(self) -> None:
        super().__init__([NODE])
        self.roles = [PAIR, WATCH]
        self.live: list[ActiveSession] = []

    async def list_active_sessions(self) -> tuple[ActiveSession, ...]:
        return tuple(self.live)

    def audited(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@attrs.define
class FakePeers:
    joined: list[tuple[str, Party]] = attrs.field(factory=list)

    async def join(
        self, session: ActiveSession, party: SessionParty, joiner: Party
    ) -> HubHandle:
        self.joined.append((session.id, joiner))
        return "remote-hub"  # type: ignore[return-value]  # a stand-in


class Rig:
    """A hub held here (alice's, opened with role dev) and one held by proxy-b."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.cluster = Cluster()
        self.sessions = Sessions(self.clock)
        self.hub = SessionHub(
            clock=self.clock,
            registry=_NoRegistry(),
            record=session_record(id="here", node_id="n-1", owner_roles=("dev",)),
            audit=self.cluster.emit_event,
        )
        self.sessions.add(self.hub)
        self.owner = FakeParty()
        self.hub.join(self.owner)
        self.shell = start_on_fake_shell(self.hub)
        elsewhere = session_record(
            id="there", proxy="proxy-b", node_id="n-1", owner_roles=("dev",)
        )
        self.cluster.live = [self.hub.record, elsewhere]
        self.joining = Joining(
            agent=self.cluster,
            router=Router(self.cluster, self.clock, "test.example", False),
            sessions=self.sessions,
        )

    def join(self, grant: Grant, sid: str, mode: str = "observer") -> Any:
        party = FakeParty(record=Party("p-9", grant.user, "10.0.0.5", mode=mode))
        return party, now(self.joining.join(grant, sid, party, "ssh"))


class _NoRegistry:
    async def upsert_active_session(self, session: ActiveSession) -> None:
        pass

    async def end_active_session(
        self, id: str, exit_code: int | None, reason: str
    ) -> None:
        pass


def test_a_permitted_joiner_is_attached_to_the_hub_held_here() -> None:
    rig = Rig()
    party, hub = rig.join(BOB, "here", "peer")
    assert hub is rig.hub and party in rig.hub.parties
    [joined] = rig.cluster.audited("session.join")
    assert joined["user"] == "bob" and joined["success"] is True
    assert (joined["mode"], joined["session_id"], joined["node"]) == (
        "peer",
        "here",
        "web1",
    )
    assert rig.owner.notices == [("joined", "bob", "peer")]


def test_a_join_no_rule_allows_is_refused_and_audited() -> None:
    rig = Rig()
    with pytest.raises(JoinRefused, match="do not allow joining alice's sessions"):
        rig.join(CAROL, "here")
    [refused] = rig.cluster.audited("session.join")
    assert refused["success"] is False and refused["user"] == "carol"
    assert refused["reason"] == "join not allowed" and refused["session_id"] == "here"
    assert [p.record.user for p in rig.hub.parties] == ["alice"]


def test_a_mode_the_rule_does_not_give_is_refused() -> None:
    rig = Rig()
    with pytest.raises(JoinRefused, match="as peer"):
        rig.join(Grant("dave", ("watch-dev",), ()), "here", "peer")


def test_an_unknown_session_is_refused_saying_how_to_find_one() -> None:
    rig = Rig()
    with pytest.raises(JoinRefused, match="teleconch sessions ls"):
        rig.join(BOB, "nope")
    [refused] = rig.cluster.audited("session.join")
    assert refused["reason"] == "no such session" and refused["success"] is False


def test_a_session_on_another_proxy_is_refused_naming_it_without_peering() -> None:
    rig = Rig()
    with pytest.raises(JoinRefused) as e:
        rig.join(BOB, "there")
    assert str(e.value) == (
        "session there is held by proxy proxy-b; joining across proxies is not "
        "available on this proxy"
    )
    assert str(e.value) == not_here(rig.cluster.live[1])
    assert (
        rig.cluster.audited("session.join")[0]["reason"] == "session on another proxy"
    )


def test_a_session_on_another_proxy_goes_to_the_peers_after_the_check() -> None:
    """With proxy peering wired, the check is still made here (with the
    joiner's roles) and then the peers' join is called."""
    rig = Rig()
    rig.joining.peers = peers = FakePeers()
    _party, hub = rig.join(BOB, "there")
    assert hub == "remote-hub" and [sid for sid, _ in peers.joined] == ["there"]
    with pytest.raises(JoinRefused):
        rig.join(CAROL, "there")
    assert len(peers.joined) == 1


def test_only_sessions_one_may_join_are_listed_with_their_modes() -> None:
    rig = Rig()
    listed = now(rig.joining.joinable(BOB))
    assert [(s.id, modes) for s, modes in listed] == [
        ("here", ["observer", "peer"]),
        ("there", ["observer", "peer"]),
    ]
    assert now(rig.joining.joinable(CAROL)) == []
    owner = Grant("alice", ("access",), ())
    assert [s.id for s, _ in now(rig.joining.joinable(owner))] == ["here", "there"]
    assert b'"modes": ["observer", "peer"]' in now(list_sessions(rig.joining, BOB))


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("teleconch-join@abc-123", ("abc-123", "observer")),
        ("teleconch-join@abc-123:peer", ("abc-123", "peer")),
        ("teleconch-join@abc:moderator", None),
        ("teleconch-join@", None),
        ("teleconch-join@a b", None),
    ],
)
def test_the_join_subsystems_name_says_the_session_and_mode(
    name: str, parsed: tuple[str, str] | None
) -> None:
    if parsed is None:
        with pytest.raises(JoinRefused, match="expected teleconch-join@SESSION_ID"):
            parse_join(name)
    else:
        assert parse_join(name) == parsed


# -- the SSH joiner's party, on a fake splice ---------------------------------


@attrs.define
class FakeSplice:
    """What the channel's splice hears from its node side."""

    data: list[bytes] = attrs.field(factory=list)
    lost: list[Failure] = attrs.field(factory=list)
    full: list[bool] = attrs.field(factory=list)

    def node_data(self, data: bytes) -> None:
        self.data.append(data)

    def node_eof(self) -> None:
        pass

    def node_lost(self, reason: Failure) -> None:
        self.lost.append(reason)

    def node_full(self) -> None:
        self.full.append(True)

    def node_drained(self) -> None:
        self.full.append(False)

    def text(self) -> bytes:
        return b"".join(self.data)


def ssh_joiner(rig: Rig, mode: str) -> tuple[SSHJoinParty, FakeSplice, list[int]]:
    statuses: list[int] = []
    party = SSHJoinParty(Party("p-7", "bob", "10.0.0.5", mode=mode), statuses.append)
    now(rig.joining.join(BOB, "here", party, "ssh"))
    splice = FakeSplice()
    party.connect(Target("session here", 0), splice)
    party.spliced()
    return party, splice, statuses


def test_an_ssh_joiner_sees_the_session_and_who_comes_and_leaves_with_ctrl_bracket() -> (
    None
):
    """A banner, the output, a line per join; as a peer its keys reach the
    shell up to Ctrl-], which leaves: exit status 0 and the channel's end."""
    rig = Rig()
    party, splice, statuses = ssh_joiner(rig, "peer")
    assert b"you joined alice's session on root@web1 as peer" in splice.text()
    rig.hub.shell_output(b"$ ")
    rig.hub.join(FakeParty(record=Party("p-8", "carol", "x", mode="observer")))
    assert splice.text().endswith(
        b"$ " + notice("carol joined the session as observer")
    )
    party.write(b"ls\r\x1dignored")
    assert rig.shell.written == [b"ls\r"]
    assert party not in rig.hub.parties and statuses == [0] and len(splice.lost) == 1
    assert rig.owner.notices[-1] == ("left", "bob", "peer", "left with Ctrl-]")


def test_an_ssh_observers_keys_never_reach_the_shell() -> None:
    rig = Rig()
    party, _splice, _ = ssh_joiner(rig, "observer")
    party.write(b"rm -rf /\r")
    assert rig.shell.written == []


def test_an_ssh_joiner_whose_window_stays_shut_is_dropped_and_told() -> None:
    """The client stops reading (the splice pauses us): output waits in the
    hub's backlog until JOINER_BUFFER, then the joiner is dropped with the
    message and exit status 1; the owner never waited."""
    rig = Rig()
    party, splice, statuses = ssh_joiner(rig, "observer")
    party.pauseProducing()
    for _ in range(JOINER_BUFFER // 4096 + 1):
        rig.hub.shell_output(b"y" * 4096)
    assert rig.shell.consumed_total == (JOINER_BUFFER // 4096 + 1) * 4096
    assert splice.text().endswith(notice(FELL_BEHIND))
    assert statuses == [1] and len(splice.lost) == 1
    assert party not in rig.hub.parties


def test_the_session_ending_ends_the_ssh_joiners_channel_with_the_reason() -> None:
    rig = Rig()
    _party, splice, statuses = ssh_joiner(rig, "observer")
    rig.shell.exit(0)
    assert splice.text().endswith(
        notice("the session ended: the shell exited with status 0")
    )
    assert statuses == [0] and len(splice.lost) == 1


def test_the_ssh_joiners_channel_closing_leaves_the_session() -> None:
    rig = Rig()
    party, splice, _ = ssh_joiner(rig, "observer")
    party.close()
    assert party not in rig.hub.parties and len(splice.lost) == 1
    assert rig.hub.state.value == "running"
