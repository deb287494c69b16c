"""SSH agent forwarding, both ways, for the recording proxy.

draft-miller-ssh-agent ("Forwarding") and OpenSSH's ``PROTOCOL.agent``: a
client that forwards its agent sends ``auth-agent-req@openssh.com`` on a
session channel; the server then opens an ``auth-agent@openssh.com``
channel (no extra data) back to the client for each connection to the agent
it wants, and the agent protocol's framed messages flow over it.

- `open_agent`: the proxy, acting as the server for the person's ``ssh -A``,
  opens that channel back to them and gets an `AgentClient` speaking over it
  (the framing of `teleconch.conch.agent`, a channel as its transport).
- `request_agent_forwarding`: the proxy, as the client of a node, asks the
  node to forward an agent on a session channel.
- `AgentRelay`: each agent channel the node then opens is relayed, bytes
  unchanged, to a new agent channel on the person's connection, with flow
  control both ways and both ends closed together.
"""

from __future__ import annotations

from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleconch.conch.agent import AgentClient, AgentError, _AgentProtocol
from teleconch.conch.client import NodeConnection
from teleconch.conch.flow import FlowControlledChannel, FlowControlledConnection
from teleconch.conch.session import SessionChannel

__all__ = [
    "AGENT_CHANNEL",
    "AGENT_REQUEST",
    "AGENT_WINDOW",
    "AgentRelay",
    "open_agent",
    "request_agent_forwarding",
]

AGENT_REQUEST = b"auth-agent-req@openssh.com"
AGENT_CHANNEL = b"auth-agent@openssh.com"

#: Our window on an agent channel: OpenSSH gives agent channels a small one
#: too (4 packets); agent messages are small, and a reply larger than
#: MAX_MESSAGE ends the channel anyway.
AGENT_WINDOW = 64 * 1024
_AGENT_PACKET = 16 * 1024

_log = Logger()


def _give_back(channel: FlowControlledChannel, n: int) -> None:
    """Re-open ``n`` bytes of our window, where the connection leaves that to us.

    On a stock Conch connection the window is re-opened before delivery
    already; adding to it there would grant the peer more than we track.
    """
    if isinstance(channel.conn, FlowControlledConnection):
        channel.open_window(n)


# -- our agent client over a channel ------------------------------------------


class _ChannelAsTransport:
    """What `_AgentProtocol` writes to and hangs up on: one SSH channel."""

    def __init__(self, channel: SSHChannel) -> None:
        self._channel = channel
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self._channel.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._channel.writeSequence(data)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self._channel.loseConnection()

    def getPeer(self) -> Any:
        return self._channel.getPeer()

    def getHost(self) -> Any:
        return UNIXAddress(None)


class _AgentClientChannel(FlowControlledChannel):
    """An ``auth-agent@openssh.com`` channel we opened, carrying `_AgentProtocol`.

    The protocol consumes what arrives at once and refuses a frame longer
    than MAX_MESSAGE (closing this channel only), so the window is given back
    as data arrives: at most one message is ever buffered.
    """

    name = AGENT_CHANNEL

    def __init__(self, proto: _AgentProtocol, conn: connection.SSHConnection) -> None:
        super().__init__(window=AGENT_WINDOW, max_packet=_AGENT_PACKET, conn=conn)
        self.proto = proto
        self.opened: Deferred[None] = Deferred()

    def channelOpen(self, specificData: bytes) -> None:
        super().channelOpen(specificData)
        self.proto.makeConnection(_ChannelAsTransport(self))
        self.opened.callback(None)

    def openFailed(self, reason: Any) -> None:
        if isinstance(reason, ConchError):
            why = AgentError("the client refused the agent channel")
        else:
            why = AgentError("the connection closed before the agent channel opened")
        self.opened.errback(why)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return  # closing (e.g. after a bad frame): no more window either
        self.proto.dataReceived(data)
        _give_back(self, len(data))

    def extReceived(self, dataType: int, data: bytes) -> None:
        _give_back(self, len(data))  # an agent has no stderr: dropped

    def eofReceived(self) -> None:
        self.loseConnection()  # the agent will answer nothing more

    def closed(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone("agent channel closed")))


async def open_agent(conn: connection.SSHConnection) -> AgentClient:
    """Open an ``auth-agent@openssh.com`` channel on ``conn`` and talk to the agent.

    ``conn`` is our connection from a client that asked for agent forwarding
    (``ssh -A``). Raises AgentError ("the client refused the agent channel")
    if the client refuses the open. Closing the AgentClient closes the
    channel; the channel closing fails pending requests.
    """
    proto = _AgentProtocol()
    channel = _AgentClientChannel(proto, conn)
    conn.openChannel(channel)
    await channel.opened
    return AgentClient(proto)


# -- asking a node to forward an agent -----------------------------------------


async def request_agent_forwarding(channel: SessionChannel) -> None:
    """Ask the node to forward an agent on ``channel`` (a session we opened).

    Sends ``auth-agent-req@openssh.com`` with want-reply; raises AgentError
    if the node refuses (sshd with ``AllowAgentForwarding no``). Once it
    agreed, a `NodeConnection` accepts the node's agent channels (register
    `AgentRelay.channel_for` in its ``channel_handlers[AGENT_CHANNEL]``).
    """
    conn = channel.conn
    assert conn is not None, "the session channel is not open"
    reply = conn.sendRequest(channel, AGENT_REQUEST, b"", wantReply=True)
    if reply is None:
        raise AgentError("the session channel is closed: cannot forward the agent")
    try:
        await reply
    except ConchError:
        raise AgentError(
            "the node refused agent forwarding (is AllowAgentForwarding off?)"
        ) from None
    if isinstance(conn, NodeConnection):
        conn.accept_channels(AGENT_CHANNEL)


# -- relaying a node's agent channels to the client ------------------------------


class _RelayChannel(FlowControlledChannel):
    """One end of a relayed agent channel; `peer` is the other end.

    What arrives is written to the peer, and our window re-opens only once
    the peer has sent it on: so at most one window of bytes waits in the
    relay, however slow either side reads. EOF passes through; when either
    end closes, the other closes after sending what it holds.
    """

    name = AGENT_CHANNEL

    def __init__(self, **kw: Any) -> None:
        super().__init__(window=AGENT_WINDOW, max_packet=_AGENT_PACKET, **kw)
        self.peer: _RelayChannel | None = None
        self._owed = 0  # bytes received, written to the peer, window not re-opened
        self.opened: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.peer is None:
            return
        self.peer.write(data)
        self._owed += len(data)
        self._settle()

    def extReceived(self, dataType: int, data: bytes) -> None:
        _give_back(self, len(data))  # agents have no stderr: dropped

    def _settle(self) -> None:
        """Re-open our window for what the peer has sent on."""
        if self.peer is not None and self.peer.buffered == 0 and self._owed:
            owed, self._owed = self._owed, 0
            _give_back(self, owed)

    def startWriting(self) -> None:
        if self.peer is not None:
            self.peer._settle()  # our queue drained: the peer may take more

    def channelOpen(self, specificData: bytes) -> None:
        super().channelOpen(specificData)
        if not self.opened.called:
            self.opened.callback(None)

    def openFailed(self, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(reason)
            self.opened.addErrback(lambda _: None)  # the node's end has no waiter
        self._close_peer()

    def eofReceived(self) -> None:
        if self.peer is not None:
            self.peer.send_eof()

    def closeReceived(self) -> None:
        super().closeReceived()
        self._close_peer()

    def closed(self) -> None:
        self._close_peer()

    def _close_peer(self) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            peer.loseConnection()


class _NodeAgentChannel(_RelayChannel):
    """The node's end: confirmed only once the client's end is open."""

    def when_openable(self) -> Deferred[None] | None:
        assert self.peer is not None
        d: Deferred[None] = Deferred()

        def refused(reason: Failure) -> None:
            why = reason.value
            said = why.value if isinstance(why, ConchError) else str(why)
            _log.info(
                "the client refused an agent channel the node opened: {why}",
                why=said.decode("utf-8", "replace")
                if isinstance(said, bytes)
                else str(said),
            )
            d.errback(
                ConchError(
                    "the client refused the agent channel",
                    connection.OPEN_CONNECT_FAILED,
                )
            )

        self.peer.opened.addCallbacks(d.callback, refused)
        return d


class AgentRelay:
    """Relays the node's ``auth-agent@openssh.com`` channels to the client.

    Register `channel_for` as the node connection's handler for AGENT_CHANNEL
    (``node_conn.channel_handlers[AGENT_CHANNEL] = relay.channel_for``); the
    node may use it once `request_agent_forwarding` succeeded. Each channel
    the node opens is confirmed only when a new agent channel to the client
    (``client_conn``, the person's ``ssh -A`` connection) is open, and refused
    if the client refuses that one. Bytes pass unchanged with flow control
    both ways (the client's connection should be a FlowControlledConnection
    for back-pressure towards the client); both ends close together.
    """

    def __init__(self, client_conn: connection.SSHConnection) -> None:
        self._client_conn = client_conn
        self.relayed = 0

    def channel_for(
        self, remoteWindow: int, remoteMaxPacket: int, data: bytes
    ) -> SSHChannel:
        node_end = _NodeAgentChannel(
            remoteWindow=remoteWindow, remoteMaxPacket=remoteMaxPacket
        )
        client_end = _RelayChannel(conn=self._client_conn)
        node_end.peer, client_end.peer = client_end, node_end
        self._client_conn.openChannel(client_end)
        self.relayed += 1
        return node_end
