"""Back-pressure from the client's socket, and the 2^32-1 window ceiling (conch.flow).

The splice rig of `tests.test_splice` speaks packets to a
`FlowControlledConnection`; here its SSH transport also writes every packet to
a fake client socket that treats a registered producer as Twisted's TCP
transport does: ``pauseProducing`` once more than ``bufferSize`` bytes are
buffered, ``resumeProducing`` once the buffer has been written out.
"""

from __future__ import annotations

import struct

from twisted.conch.ssh import common, connection, transport
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport

from tests.test_splice import CLIENT_ID, MAX_PACKET, READ, Rig, payload

MAX_WINDOW = 0xFFFFFFFF
PACKET_OVERHEAD = 9  # our fake's framing of CHANNEL_DATA: kind, channel, length


class ClientSocket(StringTransport):
    """The client's TCP connection, pausing and resuming a producer as Twisted's does."""

    bufferSize = 65536  # twisted.internet.abstract.FileDescriptor.bufferSize

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.high_water = 0  # the most bytes ever buffered

    def write(self, data: bytes) -> None:
        super().write(data)
        self.high_water = max(self.high_water, len(self.value()))
        full = len(self.value()) > self.bufferSize
        if self.producer is not None and self.streaming and full:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        """The kernel took everything: like ``doWrite`` with an emptied buffer."""
        self.clear()
        if self.producer is not None and self.paused:
            self.paused = False
            self.producer.resumeProducing()


def huge_window_rig() -> tuple[Rig, ClientSocket]:
    """A client that opens ``direct-tcpip`` with the largest window RFC 4254 allows."""
    socket = ClientSocket()
    rig = Rig(socket=socket)
    rig.client.granted = MAX_WINDOW
    rig.conn.packetReceived(
        connection.MSG_CHANNEL_OPEN,
        common.NS(b"direct-tcpip")
        + struct.pack(">3L", CLIENT_ID, MAX_WINDOW, MAX_PACKET),
    )
    rig.connect_node()
    return rig, socket


def held_by_proxy(rig: Rig, socket: ClientSocket) -> int:
    """Bytes the proxy holds: queued on the channel, or (framed) in the socket."""
    return rig.chan.buffered + len(socket.value())


# Once congested, at most the one packet that crossed bufferSize is added, and
# the channel queues at most the node read in progress before the node pauses.
SOCKET_BOUND = ClientSocket.bufferSize + MAX_PACKET + PACKET_OVERHEAD
HELD_BOUND = SOCKET_BOUND + READ


def test_the_connection_registers_a_streaming_producer_on_the_socket_while_started() -> (
    None
):
    """serviceStarted registers a push producer on transport.transport; serviceStopped
    unregisters it."""
    socket = ClientSocket()
    rig = Rig(socket=socket)
    assert socket.producer is not None and socket.streaming is True
    assert IPushProducer.providedBy(socket.producer)
    rig.conn.serviceStopped()
    assert socket.producer is None


def test_a_client_with_a_huge_window_that_stops_reading_pauses_the_node() -> None:
    """A 4 GiB window and no reading: the node is paused with bounded buffering.

    Before the fix the proxy pulled all 64 MiB from the node into the socket's
    write buffer and kept reading the node.
    """
    rig, socket = huge_window_rig()
    data = payload(64 * 1024 * 1024)
    pulled = rig.node_sends(data)
    assert rig.tcp.producerState == "paused" and not rig.chan.node_reading
    assert socket.high_water <= SOCKET_BOUND
    assert pulled <= HELD_BOUND and held_by_proxy(rig, socket) <= HELD_BOUND
    assert rig.chan.buffered == pulled - len(rig.client.received) <= READ
    assert rig.node_sends(data[pulled:]) == 0  # still paused


def test_a_stalled_client_that_reads_again_gets_everything_in_order() -> None:
    """Draining the socket resumes the flush and the node; bytes arrive whole, in order,
    and the proxy never holds more than the bound along the way."""
    rig, socket = huge_window_rig()
    data = payload(8 * 1024 * 1024, seed=5)
    pulled = rig.node_sends(data)
    assert not rig.chan.node_reading
    while pulled < len(data):
        socket.drain()
        assert held_by_proxy(rig, socket) <= HELD_BOUND
        if rig.chan.buffered == 0:
            assert rig.tcp.producerState == "producing" and rig.chan.node_reading
        pulled += rig.node_sends(data[pulled:])
        assert pulled - len(rig.client.received) == rig.chan.buffered <= READ
        assert socket.high_water <= SOCKET_BOUND
    while rig.chan.buffered:
        socket.drain()
    socket.drain()
    rig.client.poll()
    assert bytes(rig.client.received) == data
    assert rig.tcp.producerState == "producing" and rig.chan.node_reading


def test_a_congested_socket_holds_eof_and_close_behind_queued_bytes() -> None:
    """The node hangs up while the client is stalled: EOF and CLOSE wait for the data."""
    rig, socket = huge_window_rig()
    data = payload(1024 * 1024, seed=6)
    pulled = rig.node_sends(data)
    assert pulled < len(data)
    rig.node_lost()
    assert "eof" not in rig.client.events
    while "close" not in rig.client.events:
        socket.drain()
        rig.client.poll()
    assert bytes(rig.client.received) == data[:pulled]
    assert rig.client.events == ["confirm", "eof", "close"]


def test_resuming_a_socket_that_is_closing_unregisters_so_it_can_close() -> None:
    """A paused producer holds a closing TCP transport open; on resume we let go."""
    rig, socket = huge_window_rig()
    rig.node_sends(payload(1024 * 1024))
    assert socket.paused
    socket.loseConnection()
    socket.drain()
    assert socket.producer is None
    rig.conn.serviceStopped()  # connectionLost follows: nothing left to unregister


def _adjust(rig: Rig, n: int) -> None:
    rig.client._send(connection.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">L", n))


def test_a_window_adjust_up_to_the_ceiling_is_accepted() -> None:
    """Adjusts that take the window to exactly 2^32-1 are within RFC 4254."""
    rig = Rig().open()
    left = rig.chan.remoteWindowLeft
    _adjust(rig, MAX_WINDOW - left)
    assert rig.chan.remoteWindowLeft == MAX_WINDOW
    assert rig.transport.disconnects == []


def test_a_window_adjust_past_two_to_the_32_disconnects_with_protocol_error() -> None:
    """The reviewer's three adjusts of 2^32-1 on a 2^32-1 window: the first one is
    refused with DISCONNECT_PROTOCOL_ERROR "window overflow", and the window is left
    as it was (OpenSSH treats this as fatal, too)."""
    rig, _ = huge_window_rig()
    before = rig.chan.remoteWindowLeft
    _adjust(rig, MAX_WINDOW)
    assert rig.transport.disconnects == [
        (transport.DISCONNECT_PROTOCOL_ERROR, b"window overflow")
    ]
    assert rig.chan.remoteWindowLeft == before <= MAX_WINDOW


def test_a_window_adjust_of_one_past_the_ceiling_disconnects() -> None:
    """The ceiling is exact: 2^32-1 is fine, 2^32 is a protocol error."""
    rig = Rig().open()
    _adjust(rig, MAX_WINDOW - rig.chan.remoteWindowLeft)
    _adjust(rig, 1)
    assert rig.transport.disconnects == [
        (transport.DISCONNECT_PROTOCOL_ERROR, b"window overflow")
    ]
    assert rig.chan.remoteWindowLeft == MAX_WINDOW
