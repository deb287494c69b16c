"""The node side over an SSH channel (teleconch.proxy.nodechannel), in memory.

Two Conch connection services, ours (the client of the node) and the node's,
are joined packet by packet by a `Wire` the test pumps by hand: no sockets,
no reactor.  The node's channel is a `FlowControlledChannel` that opens its
window only when the test says it has read, so a full window is visible.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import connection, forwarding
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from teleconch.conch.flow import FlowControlledChannel, FlowControlledConnection
from teleconch.proxy.nodechannel import SSHChannelNodeTransport
from teleconch.proxy.routing import Target
from teleconch.proxy.splice import SpliceState, SplicingChannel
from tests.test_splice import WINDOW, Client, FakeSSHTransport

NODE_WINDOW = 64 * 1024  # what the node lets us send before it reads
OUR_WINDOW = 48 * 1024  # what we let the node send before we give it back
PACKET = 16 * 1024
TARGET = Target("10.0.0.7", 2222)


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class _End:
    """One side's transport: packets go on the wire, for the other side."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def sendPacket(self, kind: int, body: bytes) -> None:
        self.wire.queue.append((self, kind, body))


class _ServerEnd(_End):
    """The node's transport carries its avatar, as Conch's server transport does."""

    def __init__(self, wire: Wire, avatar: Any) -> None:
        super().__init__(wire)
        self.avatar = avatar


class Wire:
    """Our connection and the node's, delivering packets only when pumped."""

    def __init__(self) -> None:
        self.queue: list[tuple[_End, int, bytes]] = []
        self.node = NodeSide()
        self.ours = FlowControlledConnection()
        self.theirs = FlowControlledConnection()
        self._our_end = _End(self)
        self._their_end = _ServerEnd(self, self.node)
        self.ours.transport = self._our_end  # type: ignore[assignment]
        self.theirs.transport = self._their_end  # type: ignore[assignment]
        self.ours.serviceStarted()
        self.theirs.serviceStarted()

    def pump(self) -> None:
        while self.queue:
            sender, kind, body = self.queue.pop(0)
            to = self.theirs if sender is self._our_end else self.ours
            to.packetReceived(kind, body)


class NodeChannel(FlowControlledChannel):
    """The node's end: records what arrives; gives the window back on `read`."""

    name = b"direct-tcpip"

    def __init__(self, **kw: Any) -> None:
        super().__init__(window=NODE_WINDOW, max_packet=PACKET, **kw)
        self.received = bytearray()
        self.unread = 0
        self.events: list[str] = []

    def read(self) -> None:
        n, self.unread = self.unread, 0
        self.open_window(n)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.unread += len(data)

    def eofReceived(self) -> None:
        self.events.append("eof")

    def closed(self) -> None:
        self.events.append("closed")


class NodeSide:
    """The node's avatar: opens `NodeChannel` s, remembers what was asked."""

    def __init__(self) -> None:
        self.channel: NodeChannel | None = None
        self.opened: list[tuple[bytes, Any]] = []
        self.refuse = False
        self.conn: Any = None

    def lookupChannel(
        self, kind: bytes, windowSize: int, maxPacket: int, data: bytes
    ) -> NodeChannel:
        if self.refuse:
            raise ConchError("connect failed", connection.OPEN_CONNECT_FAILED)
        self.opened.append((kind, forwarding.unpackOpen_direct_tcpip(data)[0]))
        self.channel = NodeChannel(remoteWindow=windowSize, remoteMaxPacket=maxPacket)
        return self.channel


class Events:
    """What the node transport reports (a splice stands here in the proxy)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.log: list[str] = []
        self.lost: Failure | None = None

    def node_data(self, data: bytes) -> None:
        self.data += data

    def node_eof(self) -> None:
        self.log.append("eof")

    def node_lost(self, reason: Failure) -> None:
        self.log.append("lost")
        self.lost = reason

    def node_full(self) -> None:
        self.log.append("full")

    def node_drained(self) -> None:
        self.log.append("drained")


def connected() -> tuple[Wire, SSHChannelNodeTransport, Events, NodeChannel]:
    wire, events = Wire(), Events()
    node = SSHChannelNodeTransport(wire.ours, window=OUR_WINDOW, max_packet=PACKET)
    results: list[Any] = []
    node.connect(TARGET, events).addBoth(results.append)
    assert results == []  # not before the node confirms
    wire.pump()
    assert results == [None]
    assert wire.node.channel is not None
    return wire, node, events, wire.node.channel


def test_connect_opens_a_direct_tcpip_channel_to_the_target_and_fires_on_confirm() -> (
    None
):
    """The node is asked for a direct-tcpip channel to the target's host and port;
    the connect fires only once the node has confirmed it."""
    wire, _node, events, _channel = connected()
    assert wire.node.opened == [(b"direct-tcpip", ("10.0.0.7", 2222))]
    assert events.log == []


def test_bytes_flow_both_ways_intact_and_in_order() -> None:
    """Many writes each way, larger than both windows, arrive whole and in order."""
    wire, node, events, channel = connected()
    up, down = payload(300_001, seed=2), payload(250_003, seed=3)
    for i in range(0, len(up), 7_001):
        node.write(up[i : i + 7_001])
    for i in range(0, len(down), 9_999):
        channel.write(down[i : i + 9_999])
    for _ in range(100):
        wire.pump()
        channel.read()
    wire.pump()
    assert bytes(channel.received) == up and bytes(events.data) == down


def test_a_node_that_stops_reading_fills_its_window_and_says_full() -> None:
    """We may send the node one window; the rest waits in our queue with
    node_full said once, and node_drained comes when the node has read it all."""
    wire, node, events, channel = connected()
    data = payload(3 * NODE_WINDOW)
    node.write(data)
    wire.pump()
    assert len(channel.received) == NODE_WINDOW  # exactly its window, no more
    assert events.log == ["full"]
    channel.read()
    wire.pump()
    assert len(channel.received) == 2 * NODE_WINDOW and events.log == ["full"]
    channel.read()
    wire.pump()
    assert bytes(channel.received) == data and events.log == ["full", "drained"]


def test_a_paused_transport_delivers_nothing_and_stops_the_node_within_a_window() -> (
    None
):
    """pauseProducing: what arrives is held, no window goes back, and the node
    is left with its bytes queued; resumeProducing delivers them all in order."""
    wire, node, events, channel = connected()
    node.pauseProducing()
    data = payload(10 * OUR_WINDOW)
    channel.write(data)
    wire.pump()
    assert events.data == b""  # nothing delivered while paused
    assert channel.buffered == len(data) - OUR_WINDOW  # the node holds the rest
    wire.pump()
    assert channel.buffered == len(data) - OUR_WINDOW  # and still does
    node.resumeProducing()
    wire.pump()
    assert bytes(events.data) == data and channel.buffered == 0


def test_pausing_midway_holds_the_nodes_eof_and_close_behind_its_bytes() -> None:
    """Bytes, EOF and the close that arrive while paused are reported in that
    order once resumed."""
    wire, node, events, channel = connected()
    node.pauseProducing()
    channel.write(b"last words")
    channel.send_eof()
    channel.loseConnection()
    wire.pump()
    assert events.data == b"" and events.log == []
    node.resumeProducing()
    assert bytes(events.data) == b"last words" and events.log == ["eof", "lost"]
    assert events.lost is not None and events.lost.check(ierror.ConnectionDone)


def test_write_eof_half_closes_and_the_node_still_replies() -> None:
    """write_eof sends EOF after queued bytes; the node's reply still arrives."""
    wire, node, events, channel = connected()
    node.write(b"request")
    node.write_eof()
    wire.pump()
    assert bytes(channel.received) == b"request" and channel.events == ["eof"]
    channel.write(b"reply")
    wire.pump()
    assert bytes(events.data) == b"reply" and events.log == []


def test_close_closes_the_channel_after_queued_bytes_then_reports_lost() -> None:
    """close(): queued bytes go out first, then CLOSE; node_lost is a clean end."""
    wire, node, events, channel = connected()
    node.write(payload(NODE_WINDOW + 100))
    node.close()
    wire.pump()
    assert channel.events == [] and events.log == ["full"]
    channel.read()
    wire.pump()
    assert len(channel.received) == NODE_WINDOW + 100
    assert channel.events == ["closed"] and events.log[-1] == "lost"
    assert events.lost is not None and events.lost.check(ierror.ConnectionDone)


def test_losing_the_ssh_connection_reports_the_node_lost() -> None:
    """The SSH connection to the node goes: node_lost, not a clean end."""
    wire, _node, events, _channel = connected()
    wire.ours.serviceStopped()
    assert events.log == ["lost"]
    assert events.lost is not None and events.lost.check(ierror.ConnectionLost)


def test_a_refused_channel_fails_the_connect_with_the_nodes_reason() -> None:
    """The node refuses the open: connect fails with its ConchError."""
    wire, events = Wire(), Events()
    wire.node.refuse = True
    results: list[Any] = []
    node = SSHChannelNodeTransport(wire.ours)
    node.connect(TARGET, events).addBoth(results.append)
    wire.pump()
    [failure] = results
    assert isinstance(failure, Failure) and failure.check(ConchError)
    assert events.log == []


def test_a_cancelled_connect_closes_the_channel_once_it_opens() -> None:
    """Cancelling before the node answers: CancelledError, and the channel the
    node then confirms is closed again at once, with nothing reported."""
    wire, events = Wire(), Events()
    node = SSHChannelNodeTransport(wire.ours)
    d: Deferred[None] = node.connect(TARGET, events)
    results: list[Any] = []
    d.addBoth(results.append)
    d.cancel()
    [failure] = results
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    wire.pump()
    assert wire.node.channel is not None and wire.node.channel.events == ["closed"]
    assert events.log == []


# -- a splice whose node side is an SSH channel ------------------------------


class SplicingProxy:
    """The proxy's avatar: direct-tcpip becomes a splice to the node over SSH."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.splice: SplicingChannel | None = None
        self.closes: list[tuple[int, int, str]] = []
        self.conn: Any = None

    def lookupChannel(
        self, kind: bytes, windowSize: int, maxPacket: int, data: bytes
    ) -> SplicingChannel:
        self.splice = SplicingChannel(
            on_close=lambda up, down, why, _reached: self.closes.append(
                (up, down, why)
            ),
            remoteWindow=windowSize,
            remoteMaxPacket=maxPacket,
        )
        node = SSHChannelNodeTransport(self.wire.ours)
        Deferred.fromCoroutine(self.splice.connect(node, TARGET))
        return self.splice


def test_a_splice_over_an_ssh_channel_moves_bytes_with_back_pressure_both_ways() -> (
    None
):
    """The client's direct-tcpip is confirmed once the node's channel is; bytes
    flow both ways; a node that stops reading stops the client's window until it
    reads again; the node's close ends the splice after its bytes."""
    wire = Wire()
    proxy_side = SplicingProxy(wire)
    transport = FakeSSHTransport(proxy_side)
    proxy = FlowControlledConnection()
    proxy.transport = transport  # type: ignore[assignment]
    proxy.serviceStarted()
    client = Client(proxy, transport)
    client.open()
    assert client.events == []  # not before the node's channel is open
    wire.pump()
    client.poll()
    assert client.events == ["confirm"]
    splice, node_channel = proxy_side.splice, wire.node.channel
    assert splice is not None and node_channel is not None
    assert splice.state is SpliceState.OPEN

    up = payload(WINDOW, seed=5)
    assert client.send(up) == WINDOW
    wire.pump()
    client.poll()
    assert len(node_channel.received) == NODE_WINDOW  # the node's window, no more
    # The client waits: it gets back at most what the node's channel took
    # (bytes consumed before the node stopped go back once its window shuts).
    assert sum(client.adjusts) <= NODE_WINDOW
    assert client.send_window == sum(client.adjusts)
    while len(node_channel.received) < len(up):
        node_channel.read()
        wire.pump()
    client.poll()
    assert bytes(node_channel.received) == up and client.send_window == WINDOW

    down = payload(3 * WINDOW, seed=6)
    node_channel.write(down)
    node_channel.loseConnection()
    wire.pump()
    client.poll()
    assert len(client.received) == WINDOW  # the client's window, no more
    while len(client.received) < len(down):
        client.consume()
        wire.pump()
        client.poll()
    assert bytes(client.received) == down
    assert client.events == ["confirm", "eof", "close"]
    client.close()
    assert proxy_side.closes == [(len(up), len(down), "node closed")]
