"""Agent forwarding over SSH channels (teleconch.conch.agent_forwarding), in
memory: our AgentClient over an ``auth-agent@openssh.com`` channel opened to a
client, and the relay of a node's agent channels to the client's agent."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import SSHConnection
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from teleconch.conch.agent import MAX_MESSAGE, AgentError, public_key_blob
from teleconch.conch.agent_forwarding import (
    AGENT_CHANNEL,
    AGENT_WINDOW,
    _ChannelAsTransport,
    open_agent,
)
from teleconch.conch.flow import FlowControlledConnection
from teleconch.conch.wire import take_string
from tests.fake_agent import FakeAgent
from tests.ssh_link import Link, pumped
from tests.test_conch_hostcert import new_ca, user_cert


class AgentEndChannel(SSHChannel):
    """The person's side of an agent channel: hands the bytes to a protocol
    (their agent), as ``ssh -A`` hands them to $SSH_AUTH_SOCK."""

    name = AGENT_CHANNEL

    def __init__(self, agent: Protocol, **kw: Any) -> None:
        super().__init__(**kw)
        self.agent = agent

    def channelOpen(self, specificData: bytes) -> None:
        self.agent.makeConnection(_ChannelAsTransport(self))

    def dataReceived(self, data: bytes) -> None:
        self.agent.dataReceived(data)

    def closed(self) -> None:
        self.agent.connectionLost()


class PersonSide(SSHConnection):
    """The client that asked ``-A``: accepts agent channels if it has an agent."""

    def __init__(self, agents: Callable[[], Protocol] | None) -> None:
        super().__init__()
        self.agents = agents
        self.agent_channels: list[AgentEndChannel] = []

    def channel_auth_agent_openssh_com(
        self, windowSize: int, maxPacket: int, data: bytes
    ) -> SSHChannel | None:
        if self.agents is None:
            return None  # Conch refuses as an unknown channel type
        channel = AgentEndChannel(
            self.agents(), remoteWindow=windowSize, remoteMaxPacket=maxPacket
        )
        self.agent_channels.append(channel)
        return channel


def person_with_agent(
    agents: Callable[[], Protocol] | None,
) -> tuple[Link, FlowControlledConnection, PersonSide]:
    proxy = FlowControlledConnection()
    person = PersonSide(agents)
    return Link(proxy, person), proxy, person


def user_key_and_agent() -> tuple[Ed25519PrivateKey, FakeAgent]:
    key = Ed25519PrivateKey.generate()
    return key, FakeAgent([(key, user_cert(new_ca(), key, "alice"))])


def run(link: Link, coro: Any) -> Any:
    return pumped(link, Deferred.fromCoroutine(coro))


def test_an_agent_client_over_an_agent_channel_lists_and_signs() -> None:
    """open_agent opens auth-agent@openssh.com (no extra data) to the client;
    the AgentClient on it lists the key and its certificate and signs."""
    key, agent = user_key_and_agent()
    link, proxy, person = person_with_agent(lambda: agent)
    client = run(link, open_agent(proxy))
    identities = run(link, client.list_identities())
    assert [i.key_type for i in identities] == [
        "ssh-ed25519",
        "ssh-ed25519-cert-v01@openssh.com",
    ]
    signature = run(link, client.sign(public_key_blob(key), b"to sign"))
    name, rest = take_string(signature)
    assert name == b"ssh-ed25519"
    key.public_key().verify(take_string(rest)[0], b"to sign")
    client.close()
    run(link, client.wait_closed())
    assert person.agent_channels[0].localClosed


def test_a_client_that_refuses_the_agent_channel_gets_a_clear_error() -> None:
    """A client without -A refuses the open: AgentError saying so."""
    link, proxy, _ = person_with_agent(None)
    failure = run(link, open_agent(proxy))
    assert failure.check(AgentError)
    assert str(failure.value) == "the client refused the agent channel"


def test_the_connection_ending_before_the_open_fails_open_agent() -> None:
    link, proxy, _ = person_with_agent(None)
    d = Deferred.fromCoroutine(open_agent(proxy))
    link.lose()
    failure = pumped(link, d)
    assert failure.check(AgentError)
    assert "closed before the agent channel opened" in str(failure.value)


class Hostile(Protocol):
    """Answers the first request with a frame header claiming a huge message,
    and goes on sending."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(struct.pack("!L", MAX_MESSAGE + 1) + b"x" * 1000)
        self.transport.write(b"y" * (4 * AGENT_WINDOW))


def test_an_oversize_agent_message_closes_only_that_channel() -> None:
    """A frame longer than AGENT_MAX_LEN (256 KiB): the pending request fails,
    that agent channel closes, and the connection goes on (a new agent
    channel works)."""
    _, agent = user_key_and_agent()
    peers: list[Protocol] = [Hostile(), agent]
    link, proxy, person = person_with_agent(lambda: peers.pop(0))
    hostile = run(link, open_agent(proxy))
    failure = run(link, hostile.list_identities())
    assert failure.check(AgentError)
    assert "bad frame length" in str(failure.value)
    ours = next(c for c in proxy.channels.values() if c.name == AGENT_CHANNEL)
    assert ours.localClosed  # we sent CHANNEL_CLOSE
    assert ours.localWindowLeft <= 0  # what followed got no window back
    assert person.agent_channels[0].buf  # and waits at the sender
    assert hostile._proto._buffer == b""  # nor was it kept
    assert not link.lost
    honest = run(link, open_agent(proxy))
    assert len(run(link, honest.list_identities())) == 2


def test_the_channel_closing_fails_pending_requests() -> None:
    """The client closes the agent channel while a request waits: AgentError."""

    class Silent(Protocol):
        pass

    link, proxy, person = person_with_agent(Silent)
    client = run(link, open_agent(proxy))
    pending = Deferred.fromCoroutine(client.list_identities())
    person.agent_channels[0].loseConnection()
    failure = pumped(link, pending)
    assert failure.check(AgentError)
    assert "closed the connection" in str(failure.value)
    assert run(link, client.wait_closed()) is None


def test_the_agent_window_is_given_back_as_replies_are_read() -> None:
    """Many replies in a row never exhaust our window on the agent channel:
    the protocol reads each at once, so the window is re-opened as they come."""
    _, agent = user_key_and_agent()
    link, proxy, person = person_with_agent(lambda: agent)
    client = run(link, open_agent(proxy))
    for _ in range(200):  # 200 replies of ~400 bytes: more than the window
        assert len(run(link, client.list_identities())) == 2
    assert agent.requests == 200
    assert person.agent_channels[0].remoteWindowLeft > 0
