"""The agent relay (teleconch.conch.agent_forwarding): a node's agent channels
relayed to the client's agent, in memory over two linked connections
(person <-> proxy, proxy <-> node), and against a real sshd with a real
ssh-agent (interop)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.conch.avatar import ConchUser
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import Protocol

from teleconch.conch.agent import AgentError
from teleconch.conch.agent_forwarding import (
    AGENT_CHANNEL,
    AGENT_REQUEST,
    AGENT_WINDOW,
    AgentRelay,
    open_agent,
    request_agent_forwarding,
)
from teleconch.conch.client import AgentClientCredentials, NodeConnection
from teleconch.conch.flow import FlowControlledChannel, FlowControlledConnection
from teleconch.conch.session import ExitStatus
from tests.ssh_link import Link
from tests.test_agent_forwarding import PersonSide, user_key_and_agent
from tests.test_conch_agent import agent_sock  # noqa: F401  (a fixture)
from tests.test_conch_client import agent_holding_a_user_cert, login_to
from tests.test_conch_hostcert import LOGIN, new_ca, start_sshd

interop = pytest.mark.interop


class NodeSession(SSHChannel):
    """The node's side of our session: agrees to agent forwarding or not."""

    name = b"session"
    allow_agent = True

    def requestReceived(self, requestType: bytes, data: bytes) -> int:
        return int(requestType == AGENT_REQUEST and self.allow_agent)


class Rig:
    """person (ssh -A, with an agent) <-> proxy <-> node (an sshd stand-in)."""

    def __init__(
        self,
        person_agent: Callable[[], Protocol] | None,
        person: FlowControlledConnection | None = None,
        allow_agent: bool = True,
    ) -> None:
        self.proxy_side = FlowControlledConnection()  # towards the person
        self.person: Any = person or PersonSide(person_agent)
        self.person_link = Link(self.proxy_side, self.person)
        self.node = FlowControlledConnection()  # the node, a server
        self.to_node = NodeConnection()  # the proxy, its client
        self.node_link = Link(self.node, self.to_node)
        avatar = cast(ConchUser, self.node.transport.avatar)  # type: ignore[union-attr]

        class Session(NodeSession):
            pass

        Session.allow_agent = allow_agent
        avatar.channelLookup[b"session"] = Session
        self.relay = AgentRelay(self.proxy_side)
        self.to_node.channel_handlers[AGENT_CHANNEL] = self.relay.channel_for

    def settle(self) -> None:
        while True:
            before = self.person_link.delivered + self.node_link.delivered
            self.person_link.flush()
            self.node_link.flush()
            if self.person_link.delivered + self.node_link.delivered == before:
                return

    def result(self, coro: Any) -> Any:
        d = coro if isinstance(coro, Deferred) else Deferred.fromCoroutine(coro)
        self.settle()
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "the Deferred has not fired"
        return out[0]

    def forward_agent(self) -> Any:
        session = self.result(self.to_node.open_session())
        return self.result(request_agent_forwarding(session))


def test_the_nodes_agent_channel_reaches_the_clients_agent() -> None:
    """After auth-agent-req, what runs on the node lists and signs with the
    person's agent through the relay, each agent connection a new channel."""
    _, agent = user_key_and_agent()
    rig = Rig(lambda: agent)
    assert rig.forward_agent() is None
    on_node = rig.result(open_agent(rig.node))
    assert len(rig.result(on_node.list_identities())) == 2
    signature = rig.result(on_node.sign(agent.identities[0][0], b"data"))
    assert signature.startswith(b"\x00\x00\x00\x0bssh-ed25519")
    second = rig.result(open_agent(rig.node))
    assert len(rig.result(second.list_identities())) == 2
    assert rig.relay.relayed == 2
    assert len(rig.person.agent_channels) == 2


def test_an_agent_channel_the_proxy_did_not_ask_for_is_refused() -> None:
    """No auth-agent-req sent: the node's agent channel is refused and the
    person's connection never sees one."""
    _, agent = user_key_and_agent()
    rig = Rig(lambda: agent)
    failure = rig.result(open_agent(rig.node))
    assert failure.check(AgentError)
    assert rig.relay.relayed == 0


def test_a_node_refusing_agent_forwarding_raises() -> None:
    rig = Rig(None, allow_agent=False)
    failure = rig.forward_agent()
    assert failure.check(AgentError)
    assert "AllowAgentForwarding" in str(failure.value)
    assert rig.result(open_agent(rig.node)).check(AgentError)


def test_a_client_refusing_the_agent_channel_refuses_the_nodes_open() -> None:
    """The person's side refuses (no -A there): the node's open is refused too,
    and the relay holds nothing."""
    rig = Rig(None)
    rig.forward_agent()
    failure = rig.result(open_agent(rig.node))
    assert failure.check(AgentError)
    assert str(failure.value) == "the client refused the agent channel"
    assert agent_channels(rig.to_node) == []
    assert rig.proxy_side.channels == {}


class Sink(FlowControlledChannel):
    """Receives agent bytes and gives its window back only when told."""

    name = AGENT_CHANNEL

    def __init__(self, **kw: Any) -> None:
        super().__init__(window=AGENT_WINDOW, **kw)
        self.received = bytearray()
        self.given = 0
        self.closed_ = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def consume(self) -> None:
        self.open_window(len(self.received) - self.given)
        self.given = len(self.received)

    def closed(self) -> None:
        self.closed_ = True


class SlowPerson(FlowControlledConnection):
    """A person whose agent end is a Sink (a slow agent)."""

    def __init__(self) -> None:
        super().__init__()
        self.agent_channels: list[Sink] = []

    def channel_auth_agent_openssh_com(
        self, windowSize: int, maxPacket: int, data: bytes
    ) -> SSHChannel:
        sink = Sink(remoteWindow=windowSize, remoteMaxPacket=maxPacket)
        self.agent_channels.append(sink)
        return sink


def agent_channels(conn: FlowControlledConnection) -> list[Any]:
    return [c for c in conn.channels.values() if c.name == AGENT_CHANNEL]


def relayed_sinks() -> tuple[Rig, Sink, Sink]:
    """A relayed agent channel with a Sink at each end: (rig, node's, person's)."""
    rig = Rig(None, person=SlowPerson())
    rig.forward_agent()
    on_node = Sink()
    rig.node.openChannel(on_node)
    rig.settle()
    return rig, on_node, rig.person.agent_channels[0]


def relay_channels(rig: Rig) -> tuple[Any, Any]:
    (node_end,) = agent_channels(rig.to_node)
    return node_end, node_end.peer


@pytest.mark.parametrize("slow", ["person", "node"])
def test_a_slow_reader_holds_the_writer_back_with_at_most_a_window_queued(
    slow: str,
) -> None:
    """One side writes 1 MiB into a relayed agent channel while the other
    reads nothing (the person's agent, or what runs on the node): the relay
    queues at most one window and the writer is held back; as the reader
    reads, everything arrives, in order."""
    rig, on_node, on_person = relayed_sinks()
    node_end, client_end = relay_channels(rig)
    writer, reader, feeding = (
        (on_node, on_person, client_end)
        if slow == "person"
        else (on_person, on_node, node_end)
    )
    payload = os.urandom(1024 * 1024)
    writer.write(payload)
    rig.settle()
    assert len(reader.received) == AGENT_WINDOW
    assert feeding.buffered <= AGENT_WINDOW
    assert writer.buffered >= len(payload) - 3 * AGENT_WINDOW  # held back
    while len(reader.received) < len(payload):
        before = len(reader.received)
        reader.consume()
        rig.settle()
        assert len(reader.received) > before
        assert feeding.buffered <= AGENT_WINDOW
    assert bytes(reader.received) == payload


@pytest.mark.parametrize("closer", ["node", "person"])
def test_either_end_closing_closes_the_other(closer: str) -> None:
    rig, on_node, on_person = relayed_sinks()
    (on_node if closer == "node" else on_person).loseConnection()
    rig.settle()
    assert on_node.closed_ and on_person.closed_
    assert agent_channels(rig.to_node) == []
    assert rig.proxy_side.channels == {}


def test_the_client_connection_ending_closes_the_nodes_agent_channel() -> None:
    rig, on_node, _ = relayed_sinks()
    rig.person_link.lose()
    rig.settle()
    assert on_node.closed_


def test_the_node_going_away_while_the_client_opens_closes_the_clients_channel() -> (
    None
):
    """The node's connection ends before the person confirmed the agent
    channel: once it is confirmed, the relay closes it at once."""
    rig = Rig(None, person=SlowPerson())
    rig.forward_agent()
    rig.node.openChannel(Sink())
    rig.node_link.flush()  # the proxy opens towards the person; not yet delivered
    assert len(rig.proxy_side.channels) == 1
    rig.node_link.lose()
    rig.settle()
    (on_person,) = rig.person.agent_channels
    assert on_person.closed_
    assert rig.proxy_side.channels == {}


# -- interop: a real sshd node, a real ssh-agent ----------------------------------


class AgentSocketChannel(SSHChannel):
    """The person's side, for real: an agent channel spliced to $SSH_AUTH_SOCK,
    as ``ssh -A`` does."""

    name = AGENT_CHANNEL

    def __init__(self, socket_path: str, **kw: Any) -> None:
        super().__init__(**kw)
        self._path = socket_path
        self._proto: Protocol | None = None
        self._early: list[bytes] = []

    def channelOpen(self, specificData: bytes) -> None:
        channel = self

        class ToAgent(Protocol):
            def dataReceived(self, data: bytes) -> None:
                channel.write(data)

            def connectionLost(self, reason: Any = None) -> None:
                channel.loseConnection()

        def connected(proto: Protocol) -> None:
            self._proto = proto
            for data in self._early:
                assert proto.transport is not None
                proto.transport.write(data)

        endpoint = UNIXClientEndpoint(cast(IReactorUNIX, reactor), self._path)
        connectProtocol(endpoint, ToAgent()).addCallback(connected)

    def dataReceived(self, data: bytes) -> None:
        if self._proto is None or self._proto.transport is None:
            self._early.append(data)
        else:
            self._proto.transport.write(data)

    def closed(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.loseConnection()


class RealPerson(FlowControlledConnection):
    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.socket_path = socket_path

    def channel_auth_agent_openssh_com(
        self, windowSize: int, maxPacket: int, data: bytes
    ) -> SSHChannel:
        return AgentSocketChannel(
            self.socket_path, remoteWindow=windowSize, remoteMaxPacket=maxPacket
        )


@interop
@pytest_twisted.ensureDeferred
async def test_ssh_add_on_a_real_sshd_lists_the_key_in_our_ssh_agent(
    tmp_path: pathlib.Path,
    agent_sock: str,  # noqa: F811  (the fixture)
) -> None:
    """The recording proxy's path, with a real sshd and a real ssh-agent: the
    agent reached over an SSH channel (open_agent) signs connect_ssh's login
    (AgentClientCredentials); after request_agent_forwarding, `ssh-add -L` on
    the node goes through the relay, over a second agent channel, to the same
    ssh-agent and lists its key and certificate."""
    host_ca, user_ca = new_ca(), new_ca()
    sshd = await start_sshd(tmp_path, host_ca, user_ca, LOGIN)
    local = await agent_holding_a_user_cert(agent_sock, user_ca, "relayed-key")
    local.close()
    proxy_side = FlowControlledConnection()
    link = Link(proxy_side, RealPerson(agent_sock), reactor)
    try:
        agent = await open_agent(proxy_side)
        conn = await login_to(sshd, AgentClientCredentials(agent), host_ca)
        relay = AgentRelay(proxy_side)
        conn.channel_handlers[AGENT_CHANNEL] = relay.channel_for
        try:
            session = await conn.open_session()
            await request_agent_forwarding(session)
            await session.exec("ssh-add -L")
            assert await session.exit == ExitStatus(code=0), session.stderr()
            listed = session.stdout().decode()
            assert "ssh-ed25519-cert-v01@openssh.com" in listed
            assert "relayed-key" in listed
            assert relay.relayed >= 1
        finally:
            conn.close()
            await conn.wait_closed()
        assert len(await agent.list_identities()) == 2  # still ours, still open
        agent.close()
        await agent.wait_closed()
    finally:
        link.lose()
        await sshd.stop()
    assert "agent forwarding disabled" not in b"".join(sshd.process.log).decode()
