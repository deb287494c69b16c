"""Proxy peering in memory: the wire, the holder's `PeerParty` on the real
`SessionHub`, and the joiner's `RemoteHub` (teleconch.proxy.peering).

Unit tests: both proxies' ends run over ``twisted.test.iosim`` with real TLS
in memory (certificates from a real cluster TLS CA), a `task.Clock`, and the
fakes of tests/terminal_fakes.py where the node and the auth service would be.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim

from teleconch.auth.types import Party
from teleconch.conch.session import ExitStatus
from teleconch.pki import ROLE_NODE, ROLE_PROXY, TLSAuthority, TLSIdentity
from teleconch.proxy import peering_wire as wire
from teleconch.proxy.peering import (
    JOIN_TIMEOUT,
    HolderProtocol,
    PeerParty,
    PeerService,
    PeerState,
)
from teleconch.proxy.peering_client import CheckedJoinerProtocol, RemoteHub
from teleconch.proxy.sessions import Ending, SessionHub, Sessions
from tests.terminal_fakes import (
    NOW,
    FakeParty,
    FakeRegistry,
    FakeShell,
    session_record,
)

HOLDER_ID = "host-id-a"

# One CA and the identities every test uses (ECDSA keys are quick, but not free).
_CA = TLSAuthority.generate("test.example", time.time())


def _identity(
    role: str, host_id: str, name: str, ca: TLSAuthority = _CA
) -> TLSIdentity:
    return ca.issue_identity(role, host_id, time.time(), 3600, dns_names=[name])


HOLDER = _identity(ROLE_PROXY, HOLDER_ID, "proxy-a")
JOINER = _identity(ROLE_PROXY, "host-id-b", "proxy-b")


@attrs.define
class RemoteParty(FakeParty):
    """The joining person's party on the joiner's proxy."""

    joined: list[Party] = attrs.field(factory=list)
    left: list[tuple[Party, str]] = attrs.field(factory=list)
    drops: list[str] = attrs.field(factory=list)
    readies: int = 0

    def party_joined(self, party: Party) -> None:
        self.joined.append(party)

    def party_left(self, party: Party, reason: str) -> None:
        self.left.append((party, reason))

    def dropped(self, reason: str) -> None:
        self.drops.append(reason)


def bob(mode: str = "peer", id: str = "party-bob") -> Party:
    return Party(id, "bob", "10.0.0.20", mode)


class Rig:
    """One proxy holding a running session (alice's, on a fake shell), and
    the peer connections other proxies open to it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.sessions = Sessions(self.clock)
        self.registry = FakeRegistry()
        self.audited: list[tuple[str, str, bool, dict[str, Any]]] = []
        self.hub = SessionHub(
            clock=self.clock,
            registry=self.registry,
            record=session_record(proxy=HOLDER_ID, proxy_addr="127.0.0.1:3021"),
            on_end=self.sessions.remove,
        )
        self.owner = FakeParty(Party("party-alice", "alice", "10.0.0.9", "owner"))
        self.hub.join(self.owner)
        self.sessions.add(self.hub)
        self.shells: list[FakeShell] = []

        async def opener(events: Any) -> FakeShell:
            shell = FakeShell(events)
            self.shells.append(shell)
            return shell

        Deferred.fromCoroutine(self.hub.start(opener))
        self.shell = self.shells[0]

        async def audit(event: str, user: str, success: bool, **fields: Any) -> None:
            self.audited.append((event, user, success, fields))

        self.service = PeerService(
            reactor=None,
            clock=self.clock,
            identity=HOLDER,
            sessions=self.sessions,
            audit=audit,
        )
        self.service.startService()
        self.server_factory = self.service.factory()
        self.holders: list[HolderProtocol] = []
        inner = self.server_factory.wrappedFactory
        build = inner.buildProtocol

        def recorded(addr: Any) -> HolderProtocol:
            holder = build(addr)
            self.holders.append(holder)
            return holder

        inner.buildProtocol = recorded

    def connect(
        self,
        client: Protocol,
        identity: TLSIdentity | None = JOINER,
    ) -> tuple[HolderProtocol, iosim.IOPump, iosim.FakeTransport]:
        """``client`` connected over TLS (with ``identity``'s certificate)."""
        options = (identity or HOLDER).peer_options()
        if identity is None:  # a client that presents no certificate
            from twisted.internet.ssl import CertificateOptions

            options = CertificateOptions(
                verify=True, caCerts=[c.original for c in HOLDER._ca_certificates()]
            )
        client_factory = TLSMemoryBIOFactory(
            options, True, Factory.forProtocol(lambda: client), clock=self.clock
        )
        server = self.server_factory.buildProtocol(
            IPv4Address("TCP", "10.0.0.2", 40000)
        )
        tls_client = client_factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3021))
        server_io = iosim.FakeTransport(server, isServer=True)
        client_io = iosim.FakeTransport(tls_client, isServer=False)
        pump = iosim.connect(server, server_io, tls_client, client_io, clock=self.clock)
        return self.holders[-1], pump, server_io

    def join(
        self, party: RemoteParty | None = None, joiner: Party | None = None, **kw: Any
    ) -> tuple[RemoteParty, CheckedJoinerProtocol, HolderProtocol, iosim.IOPump]:
        """``party`` joined to the session from another proxy, as ``joiner``."""
        party = party or RemoteParty(record=joiner or bob())
        record = attrs.evolve(self.hub.record, **kw)
        proto = CheckedJoinerProtocol(record, party, joiner or party.record)
        holder, pump, _ = self.connect(proto)
        pump.flush()
        return party, proto, holder, pump

    def peer_party(self) -> PeerParty:
        (party,) = [p for p in self.hub.parties if isinstance(p, PeerParty)]
        return party


class RawPeer(Protocol):
    """A peer proxy that sends whatever bytes the test says."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def _join_frame(session_id: str = "sess-1", party: Party | None = None) -> bytes:
    return wire.control_frame(wire.Join(session_id, party or bob()))


def failure_of(d: Deferred[Any]) -> list[BaseException]:
    """What ``d`` failed with, once it has (a list, empty until then)."""
    failure: list[BaseException] = []

    def failed(f: Failure) -> None:
        assert f.value is not None
        failure.append(f.value)

    d.addErrback(failed)
    return failure


# -- the wire ----------------------------------------------------------------


def test_every_control_message_round_trips_through_its_frame() -> None:
    """What one side encodes the other decodes equal, and only the side it
    is meant for accepts it."""
    session = session_record(proxy_addr="10.0.0.1:3021")
    to_holder: list[wire.Message] = [
        wire.Join("s", bob()),
        wire.Resize(100, 30),
        wire.Leave("bye"),
    ]
    to_joiner: list[wire.Message] = [
        wire.Attached(session),
        wire.Started(session),
        wire.PartyJoined(bob("observer")),
        wire.PartyLeft(bob(), "left"),
        wire.InputBlocked(True),
        wire.Ended(Ending(ExitStatus(code=3), "the shell exited with status 3")),
        wire.Dropped("too slow"),
        wire.Refused("no such session"),
    ]
    for messages, allowed, other in (
        (to_holder, wire.TO_HOLDER, wire.TO_JOINER),
        (to_joiner, wire.TO_JOINER, wire.TO_HOLDER),
    ):
        for message in messages:
            frame = wire.control_frame(message)
            (length,) = struct.unpack(">I", frame[:4])
            assert length == len(frame) - 4
            kind, payload = wire.split(frame[4:])
            assert kind == wire.CONTROL
            assert wire.decode_control(payload, allowed) == message
            with pytest.raises(wire.BadFrame, match="unexpected control message"):
                wire.decode_control(payload, other)


def test_terminal_bytes_are_cut_into_frames_of_at_most_max_data() -> None:
    data = bytes(range(256)) * 300  # 76,800 bytes
    frames = list(wire.data_frames(wire.OUTPUT, data))
    assert [len(f) - 5 for f in frames] == [wire.MAX_DATA, wire.MAX_DATA, 11264]
    assert b"".join(wire.split(f[4:])[1] for f in frames) == data
    with pytest.raises(ValueError, match="over"):
        wire.frame(wire.OUTPUT, b"x" * wire.MAX_FRAME)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[1]", "JSON object"),
        (b'{"type": "join", "session_id": "", "party": {}}', "session_id"),
        (
            b'{"type": "join", "session_id": "s", "party": {"id": "p", "user": "u",'
            b' "remote_addr": "", "mode": "peer", "last_active": "soon"}}',
            "malformed",
        ),
        (b'{"type": "resize", "cols": 0, "rows": 24}', "cols"),
        (b'{"type": "resize", "cols": true, "rows": 24}', "cols"),
        (b'{"type": "leave", "reason": 7}', "reason"),
        (b'{"type": "nonsense"}', "unexpected control message"),
        (b" " * (wire.MAX_CONTROL + 1), "at most"),
    ],
)
def test_malformed_control_frames_say_why(payload: bytes, why: str) -> None:
    with pytest.raises(wire.BadFrame, match=why):
        wire.decode_control(payload, wire.TO_HOLDER)


# -- joining, output and input -----------------------------------------------------


def test_a_peer_joins_sees_the_output_and_its_input_reaches_the_shell() -> None:
    """The holder attaches a PeerParty; the joiner's party is attached to a
    RemoteHub with the session's record; output both parties see, the
    peer's keys and resize reach the node, and the join is audited with the
    peer proxy's name."""
    rig = Rig()
    party, _proto, holder, pump = rig.join()
    assert isinstance(party.hub, RemoteHub)
    assert party.hub.id == "sess-1" and party.hub.record.user == "alice"
    assert party.started and party.started[0].id == "sess-1"
    assert holder.state is PeerState.JOINED
    assert rig.peer_party().record == bob()
    rig.shell.events.shell_output(b"hello from the node\r\n")
    pump.flush()
    assert b"".join(party.received) == b"hello from the node\r\n"
    assert rig.owner.received == [b"hello from the node\r\n"]
    party.hub.input(party, b"ls\r")
    party.hub.input(party, b"x" * 70_000)  # more than one frame
    pump.flush()
    assert b"".join(rig.shell.written) == b"ls\r" + b"x" * 70_000
    (event,) = rig.audited
    assert event[:3] == ("session.peer_join", "bob", True)
    assert event[3]["peer_proxy"] == "proxy-b"
    assert event[3]["peer_proxy_id"] == "host-id-b"
    assert event[3]["session_id"] == "sess-1" and event[3]["mode"] == "peer"


def test_an_observers_keys_are_dropped_at_the_holder() -> None:
    """Input an observer's proxy sends (even a raw INPUT frame) never reaches
    the node; the owner's still does."""
    rig = Rig()
    party, proto, _holder, pump = rig.join(joiner=bob("observer"))
    assert party.hub is not None
    party.hub.input(party, b"rm -rf /\r")
    proto.transport.write(wire.frame(wire.INPUT, b"more\r"))  # type: ignore[union-attr]
    pump.flush()
    assert rig.shell.written == []
    assert rig.hub.parties[1].record.mode == "observer"
    rig.hub.input(rig.owner, b"echo ok\r")
    assert rig.shell.written == [b"echo ok\r"]


def test_leaving_from_the_joiner_takes_the_peer_out_and_the_session_goes_on() -> None:
    rig = Rig()
    party, proto, holder, pump = rig.join()
    assert party.hub is not None
    party.hub.leave(party, "bob closed the terminal")
    pump.flush()
    assert [p.record.id for p in rig.hub.parties] == ["party-alice"]
    assert holder.state is PeerState.DONE and proto.done
    assert not rig.shell.closed
    rig.shell.events.shell_output(b"after\r\n")
    pump.flush()
    assert party.received == [] and rig.owner.received == [b"after\r\n"]


def test_the_session_ending_at_the_holder_ends_it_for_the_joiner() -> None:
    """The shell's exit status and the reason reach the remote party; the
    peer connection closes."""
    rig = Rig()
    party, proto, holder, pump = rig.join()
    rig.shell.exit(3)
    pump.flush()
    (ending,) = party.endings
    assert ending.exit_code == 3 and ending.reason == "the shell exited with status 3"
    assert proto.done and holder.state is PeerState.DONE
    assert party.drops == []


def test_a_lost_peer_connection_takes_the_party_out_at_both_ends() -> None:
    rig = Rig()
    party, _proto, _holder, pump = rig.join()
    pump.serverIO.loseConnection()
    pump.flush()
    assert [p.record.id for p in rig.hub.parties] == ["party-alice"]
    (ending,) = party.endings
    assert "connection to the proxy holding the session was lost" in ending.reason


def test_a_peers_resize_reaches_the_holders_hub_whose_rule_decides() -> None:
    """A resize from the joiner's proxy reaches the hub at the holder, whose
    rule decides the session's size: the owner's, while the owner is there;
    a peer's once the owner has left."""
    rig = Rig()
    party, _proto, _holder, pump = rig.join()
    assert party.hub is not None
    party.hub.resize(party, 132, 43)
    pump.flush()
    assert rig.shell.resized == []
    rig.hub.leave(rig.owner, "the owner left")
    party.hub.resize(party, 100, 30)
    pump.flush()
    assert rig.shell.resized == [(100, 30)]


# -- refusals ------------------------------------------------------------------------


def test_a_session_not_held_here_is_refused_with_a_message_and_audited() -> None:
    rig = Rig()
    party, proto, holder, _pump = rig.join(id="sess-elsewhere")
    failure = failure_of(proto.attached)
    assert "is not running on proxy host-id-a" in str(failure[0])
    assert party.hub is None and holder.state is PeerState.DONE
    (event,) = rig.audited
    assert event[:3] == ("session.peer_join", "bob", False)
    assert event[3]["reason"] == "session not held here"


@pytest.mark.parametrize(
    ("joiner", "why"),
    [
        (bob("owner"), "cannot join as owner"),
        (bob("moderator"), "cannot join as moderator"),
        (bob(id="party-alice"), "party id is taken"),
    ],
)
def test_a_join_as_owner_or_with_a_taken_party_id_is_refused(
    joiner: Party, why: str
) -> None:
    rig = Rig()
    _party, proto, _holder, _pump = rig.join(joiner=joiner)
    failure = failure_of(proto.attached)
    assert why in str(failure[0])
    assert [p.record.id for p in rig.hub.parties] == ["party-alice"]


def test_a_server_that_is_not_the_holding_proxy_is_not_asked() -> None:
    """The joiner checks the server's certificate names the host id the
    session was registered by; another proxy is told nothing."""
    rig = Rig()
    _party, proto, holder, _pump = rig.join(proxy="host-id-someone-else")
    failure = failure_of(proto.attached)
    assert "another proxy answers" in str(failure[0])
    assert holder.state is not PeerState.JOINED and rig.audited == []


def test_a_client_certificate_of_a_node_is_refused_before_any_message() -> None:
    rig = Rig()
    raw = RawPeer()
    node = _identity(ROLE_NODE, "node-id", "web1")
    holder, pump, _ = rig.connect(raw, node)
    pump.flush()
    raw.transport.write(_join_frame())  # type: ignore[union-attr]
    pump.flush()
    assert raw.lost and holder.state is PeerState.DONE
    assert rig.hub.parties == [rig.owner] and rig.audited == []


def test_a_client_without_a_certificate_fails_the_handshake() -> None:
    rig = Rig()
    raw = RawPeer()
    holder, pump, _ = rig.connect(raw, None)
    pump.flush()
    assert raw.lost and holder.peer is None and holder.state is PeerState.DONE


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack(">I", wire.MAX_FRAME + 1),  # over the cap, before its body
        struct.pack(">I", 0),  # an empty frame
        wire.frame(0x7F, b"?"),  # an unknown type
        wire.frame(wire.OUTPUT, b"output is the holder's to send"),
        wire.frame(wire.CONTROL, b"{not json"),
        wire.control_frame(wire.Attached(session_record())),  # the joiner's message
        wire.frame(wire.INPUT, b"input before a join"),
        wire.control_frame(wire.Resize(80, 24)),  # before a join
        _join_frame() + _join_frame(party=bob(id="second")),
    ],
)
def test_a_malformed_frame_closes_only_that_connection(bad: bytes) -> None:
    """The connection that sent it is closed; another peer's, joined to the
    same session, goes on; the hub keeps its parties but that one."""
    rig = Rig()
    party, _proto, _holder, good_pump = rig.join()
    raw = RawPeer()
    holder, pump, _ = rig.connect(raw)
    pump.flush()
    raw.transport.write(bad)  # type: ignore[union-attr]
    pump.flush()
    assert raw.lost and holder.state is PeerState.DONE
    assert not any(p.record.id == "second" for p in rig.hub.parties)
    rig.shell.events.shell_output(b"still here")
    good_pump.flush()
    assert b"".join(party.received) == b"still here"


def test_a_peer_that_never_asks_is_closed_after_the_join_timeout() -> None:
    rig = Rig()
    raw = RawPeer()
    holder, pump, _ = rig.connect(raw)
    pump.flush()
    rig.clock.advance(JOIN_TIMEOUT - 1)
    pump.flush()
    assert not raw.lost
    rig.clock.advance(1)
    pump.flush()
    assert raw.lost and holder.state is PeerState.DONE


# -- flow control ----------------------------------------------------------------


def test_a_joiner_that_takes_no_more_output_stops_reading_until_ready() -> None:
    """The remote party wanting no more pauses the peer connection's reading
    (so TCP backs up to the holder); ``ready`` resumes it and the rest arrives."""
    rig = Rig()
    party, proto, _holder, pump = rig.join()
    party.wants = False
    rig.shell.events.shell_output(b"one")
    pump.flush()
    assert proto.paused
    assert party.hub is not None
    party.wants = True
    party.hub.ready()
    assert not proto.paused
    rig.shell.events.shell_output(b"two")
    pump.flush()
    assert b"".join(party.received) == b"onetwo"


def test_the_peer_connection_backing_up_means_the_peer_party_takes_no_output() -> None:
    """While the holder's send buffer to the peer is full the PeerParty says
    it wants no output; when it drains, the hub is told it is ready."""
    rig = Rig()
    _party, _proto, holder, _pump = rig.join()
    peer = rig.peer_party()
    holder.backpressure.pauseProducing()
    assert not peer.wants_output()
    holder.backpressure.resumeProducing()
    assert peer.wants_output()


def test_stopping_the_service_closes_the_peer_connections() -> None:
    rig = Rig()
    party, _proto, holder, pump = rig.join()
    stopped = rig.service.stopService()
    pump.flush()
    assert holder.state is PeerState.DONE
    assert [p.record.id for p in rig.hub.parties] == ["party-alice"]
    assert party.drops == ["the proxy holding the session is stopping"]
    done: list[object] = []
    stopped.addBoth(done.append)
    assert done == [None]
