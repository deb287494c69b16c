"""Splicing SSH channels to TCP with back-pressure both ways (teleconch.proxy.splice).

Unit tests drive a `FlowControlledConnection` packet by packet through a fake
SSH transport (no sockets, no reactor) with the node on a `StringTransport`;
interop tests put the real OpenSSH client (`ssh -W`) in front of a small Conch
server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.avatar import ConchUser
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.error import ConchError
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, connection, forwarding, keys
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.portal import IRealm, Portal
from twisted.internet import error as ierror
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IPullProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.conch.flow import (
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    FlowControlledConnection,
)
from teleconch.proxy.node import TCPNodeTransport
from teleconch.proxy.routing import Target
from teleconch.proxy.splice import (
    SpliceClosed,
    SpliceState,
    SplicingChannel,
)

WINDOW = DEFAULT_WINDOW
MAX_PACKET = DEFAULT_MAX_PACKET
READ = 65536  # what one TCP read hands a protocol (Twisted's bufferSize)
CLIENT_ID = 7


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- unit rig: a FlowControlledConnection spoken to in packets ---------------


class FakeNodeTransport(StringTransport):
    """A node TCP connection that records half-closes."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """An endpoint the test connects (or fails) by hand."""

    def __init__(self) -> None:
        self.factory: Any = None
        self.attempt: Deferred[IProtocol] | None = None
        self.cancelled = False

    def connect(self, factory: Any) -> Deferred[IProtocol]:
        self.factory = factory
        self.attempt = Deferred(lambda _: setattr(self, "cancelled", True))
        return self.attempt

    def succeed(self) -> tuple[Protocol, FakeNodeTransport]:
        assert self.attempt is not None
        proto = self.factory.buildProtocol(None)
        transport = FakeNodeTransport()
        proto.makeConnection(transport)
        self.attempt.callback(proto)
        return proto, transport

    def fail(self, reason: BaseException) -> None:
        assert self.attempt is not None
        self.attempt.errback(reason)


class FakeSSHTransport:
    """Records what the connection sends; carries the avatar like Conch's.

    With a ``socket`` (the client's TCP transport, as ``transport.transport``)
    each packet is also written to it, as Conch's transport writes packets.
    """

    def __init__(self, avatar: Any, socket: Any = None) -> None:
        self.avatar = avatar
        self.packets: list[tuple[int, bytes]] = []
        self.disconnects: list[tuple[int, bytes]] = []
        if socket is not None:
            self.transport = socket

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))
        socket = getattr(self, "transport", None)
        if socket is not None:
            socket.write(bytes([kind]) + payload)

    def sendDisconnect(self, reason: int, description: bytes) -> None:
        self.disconnects.append((reason, description))


class Client:
    """The SSH client's end of one channel: sends packets, keeps the server honest."""

    def __init__(
        self, conn: FlowControlledConnection, transport: FakeSSHTransport
    ) -> None:
        self.conn, self.transport = conn, transport
        self.granted = WINDOW  # what the server may still send us
        self.unconsumed = 0
        self.received = bytearray()
        self.stderr = bytearray()
        self.send_window = 0
        self.server_id: int | None = None
        self.server_max_packet = 0
        self.failure: tuple[int, bytes] | None = None
        self.events: list[str] = []
        self.adjusts: list[int] = []
        self._seen = 0

    def open(self, kind: bytes = b"direct-tcpip") -> None:
        self.conn.packetReceived(
            connection.MSG_CHANNEL_OPEN,
            common.NS(kind) + struct.pack(">3L", CLIENT_ID, WINDOW, MAX_PACKET),
        )
        self.poll()

    def poll(self) -> None:
        for kind, body in self.transport.packets[self._seen :]:
            self._seen += 1
            if kind == connection.MSG_CHANNEL_OPEN_CONFIRMATION:
                _, self.server_id, self.send_window, self.server_max_packet = (
                    struct.unpack(">4L", body[:16])
                )
                self.events.append("confirm")
            elif kind == connection.MSG_CHANNEL_OPEN_FAILURE:
                code = struct.unpack(">2L", body[:8])[1]
                self.failure = (code, common.getNS(body[8:])[0])
            elif kind == connection.MSG_CHANNEL_WINDOW_ADJUST:
                n = struct.unpack(">2L", body[:8])[1]
                self.send_window += n
                self.adjusts.append(n)
            elif kind == connection.MSG_CHANNEL_DATA:
                data = common.getNS(body[4:])[0]
                assert "eof" not in self.events, "data after EOF"
                assert len(data) <= MAX_PACKET, "packet over our maximum"
                self.granted -= len(data)
                assert self.granted >= 0, "server overran our window"
                self.unconsumed += len(data)
                self.received += data
            elif kind == connection.MSG_CHANNEL_EXTENDED_DATA:
                data = common.getNS(body[8:])[0]
                self.granted -= len(data)
                assert self.granted >= 0, "server overran our window"
                self.unconsumed += len(data)
                self.stderr += data
            elif kind == connection.MSG_CHANNEL_EOF:
                self.events.append("eof")
            elif kind == connection.MSG_CHANNEL_CLOSE:
                self.events.append("close")

    def _send(self, kind: int, body: bytes = b"") -> None:
        assert self.server_id is not None
        self.conn.packetReceived(kind, struct.pack(">L", self.server_id) + body)
        self.poll()

    def send(self, data: bytes) -> int:
        """Send what the window allows, in packets; return how much went."""
        sent = 0
        while sent < len(data) and self.send_window > 0:
            n = min(len(data) - sent, self.send_window, self.server_max_packet)
            self.send_window -= n
            self._send(connection.MSG_CHANNEL_DATA, common.NS(data[sent : sent + n]))
            sent += n
        return sent

    def consume(self) -> None:
        """Read everything received, giving the window back."""
        if self.unconsumed:
            n, self.unconsumed = self.unconsumed, 0
            self.granted += n
            self._send(connection.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">L", n))

    def eof(self) -> None:
        self._send(connection.MSG_CHANNEL_EOF)

    def close(self) -> None:
        self._send(connection.MSG_CHANNEL_CLOSE)


class Rig:
    """One connection, one client channel, one node endpoint, and what they report."""

    def __init__(
        self,
        *,
        confirm_after_connect: bool = True,
        connect_now: bool = True,
        socket: Any = None,
    ):
        self.endpoint = FakeEndpoint()
        self.closes: list[tuple[int, int, str]] = []
        self.connect_results: list[Any] = []
        self.channel: SplicingChannel | None = None
        self._confirm_after_connect = confirm_after_connect
        self._connect_now = connect_now
        self.transport = FakeSSHTransport(self, socket)
        self.conn = FlowControlledConnection()
        self.conn.transport = self.transport  # type: ignore[assignment]
        self.conn.serviceStarted()
        self.client = Client(self.conn, self.transport)
        self.node: Protocol | None = None
        self.node_transport: FakeNodeTransport | None = None

    # the avatar's side, as the routing code would write it
    def lookupChannel(
        self, kind: bytes, windowSize: int, maxPacket: int, data: bytes
    ) -> SSHChannel:
        if kind == b"session":
            return _StockChannel(remoteWindow=windowSize, remoteMaxPacket=maxPacket)
        if kind != b"direct-tcpip":  # as ConchUser does, arguments reversed
            raise ConchError(connection.OPEN_UNKNOWN_CHANNEL_TYPE, "unknown channel")
        self.channel = SplicingChannel(
            on_close=lambda up, down, why, _reached: self.closes.append(
                (up, down, why)
            ),
            confirm_after_connect=self._confirm_after_connect,
            remoteWindow=windowSize,
            remoteMaxPacket=maxPacket,
        )
        if self._connect_now:
            self.start_connect()
        return self.channel

    def start_connect(self) -> None:
        assert self.channel is not None
        node = TCPNodeTransport(lambda _: self.endpoint)
        d = Deferred.fromCoroutine(self.channel.connect(node, Target("node", 22)))
        d.addBoth(self.connect_results.append)

    def connect_node(self) -> None:
        self.node, self.node_transport = self.endpoint.succeed()
        self.client.poll()

    @property
    def chan(self) -> SplicingChannel:
        assert self.channel is not None
        return self.channel

    @property
    def tcp(self) -> FakeNodeTransport:
        assert self.node_transport is not None
        return self.node_transport

    def node_sends(self, data: bytes, read: int = READ) -> int:
        """Feed node bytes one read at a time, as a reactor does, while it reads."""
        assert self.node is not None
        sent = 0
        while sent < len(data) and self.tcp.producerState == "producing":
            self.node.dataReceived(data[sent : sent + read])
            sent += len(data[sent : sent + read])
        self.client.poll()
        return sent

    def node_full(self) -> None:
        """The node's write buffer passed its high-water mark."""
        producer = self.tcp.producer
        assert producer is not None
        producer.pauseProducing()

    def node_drained(self) -> None:
        """The node's transport wrote out everything it held."""
        producer = self.tcp.producer
        assert producer is not None
        producer.resumeProducing()
        self.client.poll()

    def node_eof(self) -> None:
        IHalfCloseableProtocol(self.node).readConnectionLost()
        self.client.poll()

    def node_lost(self) -> None:
        assert self.node is not None
        self.node.connectionLost(Failure(ierror.ConnectionDone()))
        self.client.poll()

    def open(self) -> Rig:
        self.client.open()
        if self._connect_now:
            self.connect_node()
        return self


class _StockChannel(SSHChannel):
    def dataReceived(self, data: bytes) -> None:
        pass


def test_confirms_the_open_only_once_the_node_answers() -> None:
    """direct-tcpip is confirmed after the TCP connect, with our 2 MiB window."""
    rig = Rig()
    rig.client.open()
    assert rig.client.events == [] and rig.chan.state is SpliceState.CONNECTING
    rig.connect_node()
    assert rig.client.events == ["confirm"] and rig.chan.state is SpliceState.OPEN
    assert (
        rig.client.send_window == WINDOW and rig.client.server_max_packet == MAX_PACKET
    )
    assert rig.connect_results == [None]


def test_bytes_flow_both_ways_intact_and_in_order_and_are_counted() -> None:
    """Uneven chunks both ways arrive whole and in order; on_close gets the counts."""
    rig = Rig().open()
    up, down = payload(3_000_001, seed=2), payload(2_500_003, seed=3)
    rng = random.Random(4)
    sent_up = sent_down = 0
    while sent_up < len(up) or sent_down < len(down):
        n = rng.randint(1, 200_000)
        sent_up += rig.client.send(up[sent_up : sent_up + n])
        sent_down += rig.node_sends(
            down[sent_down : sent_down + n], read=rng.randint(1, READ)
        )
        rig.client.consume()
    assert rig.tcp.value() == up and bytes(rig.client.received) == down
    rig.client.eof()
    rig.node_eof()
    assert rig.tcp.disconnecting and rig.chan.state is SpliceState.DISCONNECTING
    rig.node_lost()
    assert rig.client.events == ["confirm", "eof", "close"]
    rig.client.close()
    assert rig.closes == [(len(up), len(down), "finished")]
    assert rig.chan.state is SpliceState.CLOSED


def test_a_client_that_stops_reading_pauses_the_node_with_bounded_buffering() -> None:
    """Fast node, stalled client: the proxy holds at most window + one read, exactly."""
    rig = Rig().open()
    data = payload(20 * WINDOW)
    read = 50_000  # not a divisor of the window: the last read only partly fits
    pulled = rig.node_sends(data, read=read)
    assert rig.tcp.producerState == "paused" and not rig.chan.node_reading
    assert len(rig.client.received) == WINDOW  # the client's whole window, no more
    assert rig.chan.buffered == pulled - WINDOW <= read
    assert pulled <= WINDOW + MAX_PACKET + read
    assert rig.node_sends(data[pulled:], read=read) == 0  # still paused
    rig.client.consume()  # the client catches up: everything moves again
    assert rig.tcp.producerState == "producing" and rig.chan.buffered == 0
    while pulled < len(data):
        pulled += rig.node_sends(data[pulled:], read=read)
        assert pulled - len(rig.client.received) <= WINDOW + MAX_PACKET + read
        rig.client.consume()
    assert bytes(rig.client.received) == data


def test_a_slow_node_stops_window_adjusts_so_the_client_must_wait() -> None:
    """While the node's transport has us paused, only bytes it took before
    are given back (once the client's window shuts): nothing it has not taken."""
    rig = Rig().open()
    data = payload(3 * WINDOW)
    sent = rig.client.send(data[:400_000])
    assert rig.client.adjusts, "a keeping-up node re-opens the window"
    assert rig.chan.node_transport is rig.tcp
    rig.node_full()
    adjusts_before = list(rig.client.adjusts)
    taken_before_pause = rig.chan.unadjusted
    sent += rig.client.send(data[sent:])
    late = rig.client.adjusts[len(adjusts_before) :]
    assert sum(late) == taken_before_pause and len(late) <= 1
    sent += rig.client.send(data[sent:])
    assert rig.client.send_window == 0
    assert rig.client.send(data[sent:]) == 0
    assert rig.tcp.value() == data[:sent]  # at most a window in the node's buffer
    rig.node_drained()
    assert rig.client.send_window == WINDOW  # the window is fully open again
    while sent < len(data):
        sent += rig.client.send(data[sent:])
    assert rig.tcp.value() == data


def test_client_bytes_and_eof_before_the_node_answers_are_held_within_the_window() -> (
    None
):
    """Subsystem style: open first, connect later; held bytes, then EOF, reach the node."""
    rig = Rig(confirm_after_connect=False, connect_now=False)
    rig.client.open()
    assert rig.client.events == ["confirm"]
    data = payload(WINDOW + 1000)
    assert rig.client.send(data) == WINDOW  # the window bounds what is held
    rig.client.eof()
    assert rig.client.adjusts == []
    rig.start_connect()
    rig.connect_node()
    assert rig.tcp.value() == data[:WINDOW] and rig.tcp.write_closed
    assert rig.client.adjusts == [WINDOW] and rig.chan.state is SpliceState.CLIENT_DONE


def test_client_eof_half_closes_the_node_and_node_bytes_still_flow() -> None:
    """SSH EOF -> loseWriteConnection; the node's reply still reaches the client."""
    rig = Rig().open()
    rig.client.send(b"request")
    rig.client.eof()
    assert rig.tcp.write_closed and not rig.tcp.disconnecting
    assert rig.tcp.producer is None  # nothing more to produce into the node
    rig.node_sends(b"reply")
    assert bytes(rig.client.received) == b"reply"
    assert rig.chan.state is SpliceState.CLIENT_DONE


def test_node_eof_reaches_the_client_after_queued_bytes_and_client_bytes_still_flow() -> (
    None
):
    """readConnectionLost -> channel EOF, sent only once the queue has drained."""
    rig = Rig().open()
    data = payload(WINDOW + 10_000)
    rig.node_sends(data)
    rig.node_eof()
    assert "eof" not in rig.client.events and rig.chan.state is SpliceState.NODE_DONE
    rig.client.consume()
    assert bytes(rig.client.received) == data and rig.client.events[-1] == "eof"
    rig.client.send(b"still talking")
    assert rig.tcp.value() == b"still talking"


def test_node_close_closes_the_channel_after_flushing() -> None:
    """The node hangs up: queued bytes, EOF, then CLOSE reach the client."""
    rig = Rig().open()
    data = payload(WINDOW + 10_000)
    rig.node_sends(data)
    rig.node_lost()
    assert rig.chan.state is SpliceState.DRAINING and "close" not in rig.client.events
    rig.client.consume()
    assert bytes(rig.client.received) == data
    assert rig.client.events == ["confirm", "eof", "close"]
    rig.client.close()
    assert rig.closes == [(0, len(data), "node closed")]


def test_client_close_closes_the_node_after_its_buffered_writes() -> None:
    """SSH CLOSE -> unregister, loseConnection (which flushes); on_close once."""
    rig = Rig().open()
    rig.client.send(b"last words")
    rig.node_sends(payload(WINDOW + 10_000))  # queued for a client that leaves
    rig.client.close()
    assert rig.client.events[-1] == "close" and rig.chan.buffered == 0
    assert rig.tcp.disconnecting and rig.tcp.producer is None
    assert rig.chan.state is SpliceState.DISCONNECTING and rig.closes == []
    rig.node_lost()
    assert rig.closes == [(len(b"last words"), WINDOW, "client closed")]


def test_a_refused_connect_refuses_the_open_and_reports() -> None:
    """The client sees CHANNEL_OPEN_FAILURE 'connect failed' with the reason."""
    rig = Rig()
    rig.client.open()
    rig.endpoint.fail(ierror.ConnectionRefusedError())
    rig.client.poll()
    assert rig.client.failure == (connection.OPEN_CONNECT_FAILED, b"Connection refused")
    assert rig.closes == [(0, 0, "connect failed: Connection refused")]
    [result] = rig.connect_results
    assert isinstance(result, Failure) and result.check(ierror.ConnectionRefusedError)
    assert rig.conn.channels == {}


def test_abort_refuses_the_open_with_the_routing_codes_reason() -> None:
    """Routing that fails before connect() refuses with its own code and text."""
    rig = Rig(connect_now=False)
    rig.client.open()
    rig.chan.abort("access denied", connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
    rig.client.poll()
    assert rig.client.failure == (
        connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
        b"access denied",
    )
    assert rig.closes == [(0, 0, "access denied")]
    rig.start_connect()
    [result] = rig.connect_results
    assert isinstance(result, Failure) and result.check(SpliceClosed)


def test_losing_the_ssh_connection_while_connecting_cancels_the_connect() -> None:
    """serviceStopped -> openFailed: the TCP attempt is cancelled, reported once."""
    rig = Rig()
    rig.client.open()
    rig.conn.serviceStopped()
    assert rig.endpoint.cancelled
    [result] = rig.connect_results
    assert isinstance(result, Failure) and result.check(CancelledError)
    assert rig.closes == [(0, 0, "ssh connection lost")]


def test_losing_the_ssh_connection_when_open_closes_the_node() -> None:
    """serviceStopped -> closed(): the node is closed, then on_close."""
    rig = Rig().open()
    rig.conn.serviceStopped()
    assert rig.tcp.disconnecting
    rig.node_lost()
    assert rig.closes == [(0, 0, "ssh connection lost")]


def test_abort_when_open_closes_both_sides_after_their_buffers() -> None:
    """The routing code ends a live splice (say, the session was revoked)."""
    rig = Rig().open()
    data = payload(WINDOW + 10_000)
    rig.node_sends(data)
    rig.chan.abort("session revoked")
    assert rig.tcp.disconnecting and "close" not in rig.client.events
    rig.node_lost()
    rig.client.consume()
    assert bytes(rig.client.received) == data and rig.client.events[-1] == "close"
    rig.client.close()
    assert rig.closes == [(0, len(data), "session revoked")]


def test_extended_data_shares_the_window_and_the_queue_in_order() -> None:
    """writeExtended (a session explaining itself on stderr) obeys the window too."""
    rig = Rig(confirm_after_connect=False, connect_now=False)
    rig.client.open()
    rig.chan.write(payload(WINDOW - 10))
    rig.chan.writeExtended(connection.EXTENDED_DATA_STDERR, b"no such node\n")
    rig.chan.send_eof()
    rig.chan.loseConnection()
    rig.client.poll()
    assert bytes(rig.client.stderr) == b"no such no" and rig.client.events == [
        "confirm"
    ]
    rig.client.consume()
    assert bytes(rig.client.stderr) == b"no such node\n"
    assert rig.client.events == ["confirm", "eof", "close"]
    assert rig.chan.bytes_down == WINDOW - 10


def test_a_client_overrunning_its_window_gets_the_channel_closed() -> None:
    """More data than granted is a protocol error: the channel is closed."""
    rig = Rig().open()
    rig.node_full()
    rig.client.send(payload(WINDOW))
    rig.client.send_window = MAX_PACKET  # lie about the window
    rig.client.send(b"x")
    assert rig.client.events[-1] == "close" and rig.tcp.value() == payload(WINDOW)


def test_unknown_channel_types_are_refused_as_conch_does() -> None:
    """getChannel's ConchError (either argument order) becomes OPEN_FAILURE."""
    rig = Rig()
    rig.client.open(b"x11")
    assert rig.client.failure == (
        connection.OPEN_UNKNOWN_CHANNEL_TYPE,
        b"unknown channel",
    )
    assert rig.conn.channels == {} and rig.closes == []


def test_other_channels_keep_conchs_automatic_window() -> None:
    """Channels that don't opt in (sessions) are re-opened by the connection itself."""
    rig = Rig()
    rig.client.open(b"session")
    assert rig.client.events == ["confirm"]
    rig.client.send(payload(rig.client.send_window // 2 + 1))
    assert rig.client.adjusts  # stock behaviour: adjusted on receipt


# -- interop: real OpenSSH `ssh -W` against a Conch server --------------------


class _Lost(Protocol):
    """A server protocol whose end the test can wait for."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class _ServerTransport(SSHServerTransport):
    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class _Gateway(SSHFactory):
    """The smallest SSH proxy: public-key login, direct-tcpip -> SplicingChannel."""

    protocol = _ServerTransport
    services = {
        b"ssh-userauth": SSHUserAuthServer,
        b"ssh-connection": FlowControlledConnection,
    }

    def __init__(self, host_key: keys.Key, user_key: keys.Key) -> None:
        self.publicKeys = {b"ssh-ed25519": host_key.public()}
        self.privateKeys = {b"ssh-ed25519": host_key}
        db = InMemorySSHKeyDB({b"tester": [user_key]})
        self.portal = Portal(_Realm(self), [SSHPublicKeyChecker(db)])
        self.channels: list[SplicingChannel] = []
        self.windows: list[int] = []
        self.closes: list[tuple[int, int, str]] = []
        self.transports: list[_ServerTransport] = []

    def buildProtocol(self, addr: Any) -> Any:
        t = cast(_ServerTransport, super().buildProtocol(addr))
        self.transports.append(t)
        return t

    def direct_tcpip(
        self, remoteWindow: int, remoteMaxPacket: int, data: bytes, avatar: Any
    ) -> SplicingChannel:
        """What the routing code does: build the splice, start its connect."""
        (host, port), _ = forwarding.unpackOpen_direct_tcpip(data)
        chan = SplicingChannel(
            on_close=lambda up, down, why, _reached: self.closes.append(
                (up, down, why)
            ),
            remoteWindow=remoteWindow,
            remoteMaxPacket=remoteMaxPacket,
            avatar=avatar,
        )
        self.channels.append(chan)
        self.windows.append(remoteWindow)
        node = TCPNodeTransport(lambda t: TCP4ClientEndpoint(reactor, t.host, t.port))
        d = Deferred.fromCoroutine(chan.connect(node, Target(host, port)))
        d.addErrback(lambda _: None)  # the refused open and on_close report it
        return chan


@implementer(IRealm)
class _Realm:
    def __init__(self, gateway: _Gateway) -> None:
        self._gateway = gateway

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: Any, *interfaces: Any
    ) -> Any:
        user = ConchUser()
        user.channelLookup[b"direct-tcpip"] = self._gateway.direct_tcpip
        return IConchUser, user, lambda: None


class _Sink(_Lost):
    def __init__(self) -> None:
        super().__init__()
        self.sha = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.sha.update(data)
        self.count += len(data)


@implementer(IHalfCloseableProtocol, IPullProducer)
class _Source(_Lost):
    """Sends ``total`` bytes as fast as its transport takes them, then hangs up."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.sent = 0
        self.block = os.urandom(1 << 20)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        n = min(len(self.block), self.total - self.sent)
        self.transport.write(self.block[:n])  # type: ignore[union-attr]
        self.sent += n
        if self.sent == self.total:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        pass

    def readConnectionLost(self) -> None:
        """The client's stdin EOF: keep sending."""

    def writeConnectionLost(self) -> None:
        pass

    def expected_sha(self) -> str:
        sha = hashlib.sha256()
        for _ in range(self.total // len(self.block)):
            sha.update(self.block)
        sha.update(self.block[: self.total % len(self.block)])
        return sha.hexdigest()


@implementer(IHalfCloseableProtocol)
class _Echo(_Lost):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


class _Servers(Factory):
    def __init__(self, make: Callable[[], _Lost]) -> None:
        self.make = make
        self.built: list[_Lost] = []

    def buildProtocol(self, addr: Any) -> _Lost:
        p = self.make()
        self.built.append(p)
        return p


class _SSH(ProcessProtocol):
    """An `ssh` child: optional stdin bytes, collected output, exit code."""

    def __init__(self, stdin: bytes | None = b"") -> None:
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)  # type: ignore[union-attr]
            self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", 0) or 0)


@implementer(IPullProducer)
class _Upload(_SSH):
    """Feeds ``total`` random bytes to ssh's stdin as fast as the pipe takes them."""

    def __init__(self, total: int) -> None:
        super().__init__(stdin=None)
        self.total, self.sent, self.sha = total, 0, hashlib.sha256()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        chunk = os.urandom(min(1 << 20, self.total - self.sent))
        self.sha.update(chunk)
        self.sent += len(chunk)
        self.transport.write(chunk)  # type: ignore[union-attr]
        if self.sent == self.total:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.closeStdin()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        pass


class _Download(_SSH):
    """Hashes ssh's stdout, and stops reading it after ``pause_after`` bytes."""

    def __init__(self, pause_after: int) -> None:
        super().__init__(stdin=b"")
        self.sha, self.count = hashlib.sha256(), 0
        self.pause_after = pause_after
        self.paused: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.sha.update(data)
        self.count += len(data)
        if self.count >= self.pause_after and not self.paused.called:
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.paused.callback(None)


P = TypeVar("P", bound=_SSH)


class Interop:
    """A running gateway and the TCP servers behind it; `stop` ends everything."""

    def __init__(self, directory: Path) -> None:
        user = ed25519.Ed25519PrivateKey.generate()
        self.key_path = directory / "id_ed25519"
        self.key_path.write_bytes(
            user.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        self.key_path.chmod(0o600)
        self.home = directory
        self.gateway = _Gateway(
            keys.Key(ed25519.Ed25519PrivateKey.generate()), keys.Key(user.public_key())
        )
        self.ports: list[IListeningPort] = []
        self.factories: list[_Servers] = []
        self.processes: list[_SSH] = []

    def listen(self, factory: Any) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        if isinstance(factory, _Servers):
            self.factories.append(factory)
        return cast(IPv4Address, port.getHost()).port

    def start(self) -> None:
        self.ssh_port = self.listen(self.gateway)

    def ssh(self, proto: P, target_port: int, log_level: str = "ERROR") -> P:
        argv = [
            "ssh",
            *("-F", "/dev/null", "-i", str(self.key_path), "-p", str(self.ssh_port)),
            *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", f"LogLevel={log_level}", "-W", f"127.0.0.1:{target_port}"),
            "tester@127.0.0.1",
        ]
        env = {"PATH": os.environ["PATH"], "HOME": str(self.home)}
        reactor.spawnProcess(proto, "/usr/bin/ssh", argv, env=env)
        self.processes.append(proto)
        return proto

    async def echo(self, port: int, text: bytes = b"ping\n") -> None:
        """A short second session through the gateway completes."""
        proto = await self.ssh(_SSH(text), port).ended
        assert proto == 0, self.processes[-1].err.decode()
        assert bytes(self.processes[-1].out) == text

    async def stop(self) -> None:
        for proto in self.processes:
            if not proto.ended.called:
                # A paused stdout pipe would never see its EOF: processEnded
                # waits for every pipe.
                proto.transport.resumeProducing()  # type: ignore[union-attr]
                proto.transport.signalProcess("KILL")  # type: ignore[union-attr]
                await proto.ended
        for port in self.ports:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        for t in self.gateway.transports:
            if not t.lost.called:
                t.transport.abortConnection()  # type: ignore[union-attr]
                await t.lost
        for f in self.factories:
            for p in f.built:
                if not p.lost.called:
                    p.transport.abortConnection()  # type: ignore[union-attr]
                    await p.lost


@pytest_twisted.async_yield_fixture
async def interop(tmp_path: Path) -> AsyncIterator[Interop]:
    env = Interop(tmp_path)
    env.start()
    yield env
    await env.stop()


def _write_buffered(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds for writing."""
    if transport is None:
        return 0
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_ssh_w_uploads_50mb_intact(interop: Interop) -> None:
    """ssh -W stdin -> sink: same sha256, all bytes counted, clean exit."""
    sinks = _Servers(_Sink)
    sink_port = interop.listen(sinks)
    upload = interop.ssh(_Upload(50 * 1024 * 1024), sink_port)
    code = await upload.ended
    assert code == 0, upload.err.decode()
    [sink] = sinks.built
    await sink.lost
    assert isinstance(sink, _Sink)
    assert sink.count == upload.total and sink.sha.hexdigest() == upload.sha.hexdigest()
    while not interop.gateway.closes:
        await deferLater(reactor, 0.02)
    [(up, down, _)] = interop.gateway.closes
    assert (up, down) == (upload.total, 0)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_ssh_w_stalled_download_is_bounded_and_others_still_log_in(
    interop: Interop,
) -> None:
    """100 MB to a client that stops reading: bounded buffers, node paused, no stall."""
    total = 100 * 1024 * 1024
    sources = _Servers(lambda: _Source(total))
    source_port = interop.listen(sources)
    echo_port = interop.listen(_Servers(_Echo))
    download = interop.ssh(_Download(pause_after=8 * 1024 * 1024), source_port)
    await download.paused
    chan = interop.gateway.channels[0]
    peak = 0

    def sample() -> None:
        nonlocal peak
        if chan.conn is None or chan.conn.transport is None:
            return
        held = (
            chan.buffered
            + _write_buffered(chan.conn.transport.transport)
            + _write_buffered(chan.node_transport)
        )
        peak = max(peak, held)

    sampler = LoopingCall(sample)
    sampler.start(0.005)
    for _ in range(3000):  # wait for the client's window to run dry
        if not chan.node_reading:
            break
        await deferLater(reactor, 0.01)
    assert not chan.node_reading, "the node is never paused"
    await interop.echo(echo_port)  # (c) another login completes meanwhile
    await deferLater(reactor, 1.0)  # stay stalled a while longer
    # ssh's stdin was closed at once: the upstream half is shut, downstream flows.
    assert not chan.node_reading and chan.state is SpliceState.CLIENT_DONE
    [source] = sources.built
    assert isinstance(source, _Source) and source.sent < total
    sampler.stop()
    window = interop.gateway.windows[0]
    assert peak <= window + MAX_PACKET + READ, (peak, window)
    download.transport.resumeProducing()  # type: ignore[union-attr]
    code = await download.ended
    assert code == 0, download.err.decode()
    assert download.count == total and download.sha.hexdigest() == source.expected_sha()


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_ssh_w_to_a_dead_port_fails_cleanly(interop: Interop) -> None:
    """The client gets 'open failed: connect failed'; the gateway keeps serving."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = int(s.getsockname()[1])
    failed = interop.ssh(_SSH(b""), dead, log_level="INFO")  # where ssh logs it
    code = await failed.ended
    err = failed.err.decode()
    assert code == 255 and "open failed: connect failed: Connection refused" in err, err
    assert interop.gateway.closes == [(0, 0, "connect failed: Connection refused")]
    await interop.echo(interop.listen(_Servers(_Echo)))
