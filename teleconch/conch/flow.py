"""Flow-controlled SSH channels: a window opened by the consumer, output in chunks.

Stock Conch forwarding has no flow control (CONCH_NOTES, "Forwarding and flow
control"): ``SSHConnection.ssh_CHANNEL_DATA`` re-opens the window before the
data is delivered, and ``SSHChannel.write`` buffers whatever the peer's window
refuses with a quadratic ``buf += data``. Here:

- `FlowControlledConnection` lets opted-in channels open their own window and
  confirm their open only once their target is reachable (so ``ssh -W`` to a
  dead port gets a real "open failed").
- `FlowControlledChannel` queues output as a deque of chunks and re-opens the
  window only for bytes its consumer says are consumed, batched by OpenSSH's
  rule (`open_window`): every flow-controlled channel (splice, relay, web
  terminal, node channel, agent, client session) adjusts in this one place.
- Nothing on the per-packet path logs: Conch's ``adjustWindow`` emits a debug
  event per call, which twistd's observer used to format; ours does not.
- The connection is a streaming producer on the socket under its SSH
  transport: while the socket's write buffer is full it is *congested*, its
  channels send no CHANNEL_DATA and keep their output queued (so a splice
  pauses its node), however big a window the peer granted.
- A WINDOW_ADJUST taking a window past 2^32-1 (RFC 4254 5.2) is a protocol
  error: the peer is disconnected, as OpenSSH's ``fatal`` does.

The proxy's splice (`teleconch.proxy.splice`) and the finished client's
session channels build on them.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import common, connection, transport
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.conch.guard import PARSE_ERRORS

__all__ = [
    "DEFAULT_MAX_PACKET",
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "FlowControlledChannel",
    "FlowControlledConnection",
    "adjust_due",
]

DEFAULT_WINDOW = 2 * 1024 * 1024
"""OpenSSH's window for TCP channels (64 packets of 32 KiB)."""
DEFAULT_MAX_PACKET = 32 * 1024
MAX_WINDOW = 0xFFFFFFFF
"""RFC 4254 5.2: a window "MUST NOT be increased above 2^32 - 1 bytes"."""
_ADJUST = struct.Struct(">2L")


def adjust_due(window: int, left: int, max_packet: int, consumed: int) -> bool:
    """Whether a WINDOW_ADJUST for ``consumed`` bytes should go out now.

    OpenSSH's ``channel_check_window`` (channels.c) adjusts once more than
    three packets' worth is outstanding or less than half the window is
    left, and runs once per poll loop, after a whole read's packets: that
    batches its adjusts.  We check per consumption, so the "less than
    half left" arm would send one adjust per chunk whenever the consumer
    lags (the node slow, a browser acking in small pieces).  Here the
    amount consumed decides: three packets' worth (``local_maxpacket*3``)
    or half the window, whichever is smaller; a 2 MiB window with 32 KiB
    packets takes one adjust per 96 KiB.  And so that batching never
    stalls the peer (a consumer holding a partial message waits for more
    input): once the peer cannot send a full packet, whatever was
    consumed goes back at once.
    """
    if consumed <= 0:
        return False
    return consumed >= min(window // 2, 3 * max_packet) or left < max_packet


class FlowControlledChannel(SSHChannel):
    """An SSH channel that opens its own window and queues output in chunks.

    On a `FlowControlledConnection` incoming data is not followed by an
    automatic window adjust: call `open_window` once the bytes have really
    left. Output the peer's window cannot take waits in a deque (no quadratic
    copying); `stopWriting`/`startWriting` fire when that queue starts and
    stops holding bytes. Extended data (stderr) shares the queue, in order.
    While the connection is congested (its socket's buffer is full) nothing
    is sent, so the queue holds the bytes and `stopWriting` fires.
    """

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        max_packet: int = DEFAULT_MAX_PACKET,
        remoteWindow: int = 0,
        remoteMaxPacket: int = 0,
        conn: connection.SSHConnection | None = None,
        data: bytes | None = None,
        avatar: Any = None,
    ) -> None:
        super().__init__(
            localWindow=window,
            localMaxPacket=max_packet,
            remoteWindow=remoteWindow,
            remoteMaxPacket=remoteMaxPacket,
            conn=conn,
            data=data,
            avatar=avatar,
        )
        self._out: deque[tuple[int, bytes]] = deque()  # (0 or ext type, bytes)
        self._out_offset = 0  # bytes of _out[0] already sent
        self._out_len = 0  # bytes queued, not counting _out_offset
        self._eof_queued = False
        self._eof_sent = False
        self._unadjusted = 0  # consumed, not yet given back to the peer's window
        self.bytes_sent = 0  # CHANNEL_DATA bytes (not extended data)
        self.adjusts_sent = 0  # WINDOW_ADJUST packets (for tests and benchmarks)

    def when_openable(self) -> Deferred[None] | None:
        """None to confirm the open now; else confirm when this fires, refuse if it fails.

        A failure carrying ``ConchError(description, code)`` becomes the
        CHANNEL_OPEN_FAILURE the client sees.
        """
        return None

    @property
    def confirmed(self) -> bool:
        """Whether the open has been confirmed and data may be sent."""
        conn = self.conn
        return conn is not None and self in conn.channelsToRemoteChannel

    @property
    def buffered(self) -> int:
        """Bytes written to the channel that the peer's window has not taken yet."""
        return self._out_len

    def channelOpen(self, specificData: bytes) -> None:
        self._flush()

    @property
    def unadjusted(self) -> int:
        """Bytes consumed that the peer's window has not been given back yet."""
        return self._unadjusted

    def open_window(self, n: int) -> None:
        """``n`` received bytes are consumed: give them back to the peer's window.

        The one place every flow-controlled channel re-opens its window: the
        bytes are counted and a WINDOW_ADJUST goes out when `adjust_due` says
        so (OpenSSH's rule), carrying everything consumed so far.
        """
        if n > 0:
            self._unadjusted += n
        consumed = self._unadjusted
        conn = self.conn
        if (
            conn is None
            or self.localClosed
            or not adjust_due(
                self.localWindowSize,
                self.localWindowLeft,
                self.localMaxPacket,
                consumed,
            )
            or not self.confirmed
        ):
            return
        self._unadjusted = 0
        self.adjusts_sent += 1
        conn.adjustWindow(self, consumed)

    def write(self, data: bytes) -> None:
        self._queue(0, data)

    def writeSequence(self, data: Any) -> None:
        for chunk in data:
            self._queue(0, chunk)

    def writeExtended(self, dataType: int, data: bytes) -> None:
        self._queue(dataType, data)

    def _queue(self, kind: int, data: bytes) -> None:
        if self._eof_queued or self.localClosed or not data:
            return
        self._out.append((kind, data))
        self._out_len += len(data)
        self._flush()

    def send_eof(self) -> None:
        """Send EOF once everything queued has gone out."""
        self._eof_queued = True
        self._flush()

    def addWindowBytes(self, data: int) -> None:
        self.remoteWindowLeft += data
        self._flush()

    def loseConnection(self) -> None:
        """Close once everything queued (and a queued EOF) has gone out."""
        self.closing = 1
        self._flush()

    def closeReceived(self) -> None:
        """The peer takes nothing more: drop the queue and close now."""
        self._out.clear()
        self._out_len = self._out_offset = 0
        self.closing = 1
        if self.conn is not None:
            self.conn.sendClose(self)

    def _flush(self) -> None:
        conn = self.conn
        if conn is None or not self.confirmed or self.localClosed:
            return
        packet = max(1, self.remoteMaxPacket)
        while (
            self._out
            and self.remoteWindowLeft > 0
            # sendData may congest the socket at once: re-check every packet
            and not (isinstance(conn, FlowControlledConnection) and conn.congested)
        ):
            (kind, head), start = self._out[0], self._out_offset
            n = min(len(head) - start, self.remoteWindowLeft, packet)
            piece = head if n == len(head) else head[start : start + n]
            if kind:
                conn.sendExtendedData(self, kind, piece)
            else:
                conn.sendData(self, piece)
                self.bytes_sent += n
            self.remoteWindowLeft -= n
            self._out_len -= n
            if start + n == len(head):
                self._out.popleft()
                self._out_offset = 0
            else:
                self._out_offset = start + n
        if self._out:
            if self.areWriting:
                self.areWriting = False
                self.stopWriting()
            return
        if self._eof_queued and not self._eof_sent:
            self._eof_sent = True
            conn.sendEOF(self)
        if self.closing:
            conn.sendClose(self)
        elif not self.areWriting:
            self.areWriting = True
            self.startWriting()


@implementer(IPushProducer)
class _SocketProducer:
    """What the socket under the SSH transport pauses and resumes: a connection."""

    def __init__(self, conn: FlowControlledConnection) -> None:
        self._conn = conn

    def pauseProducing(self) -> None:
        self._conn._socket_full()

    def resumeProducing(self) -> None:
        self._conn._socket_drained()

    def stopProducing(self) -> None:
        self._conn._socket_lost()


class FlowControlledConnection(connection.SSHConnection):
    """``ssh-connection`` where `FlowControlledChannel` s manage their own window.

    Other channels (sessions, ...) keep the stock automatic window adjust.

    While started, the connection is a streaming producer on the socket under
    its SSH transport (``transport.transport``, TCP or TLS): Twisted's TCP
    transport pauses it once more than ``bufferSize`` bytes wait to be sent
    and resumes it once they are out. In between the connection is
    `congested`: its `FlowControlledChannel` s send no data (control packets
    and key exchange still go), so the socket holds at most ``bufferSize``
    plus one packet per connection, and each channel's queue what its source
    wrote before `stopWriting` paused it.
    """

    _log = Logger()
    congested = False
    """Whether the socket's write buffer is full (channels hold their data)."""
    _socket: Any = None  # where our producer is registered
    _flush_turn = 0  # which channel flushes first on resume, in turn

    def serviceStarted(self) -> None:
        super().serviceStarted()
        socket = getattr(self.transport, "transport", None)
        if socket is None or not hasattr(socket, "registerProducer"):
            return  # no socket (a test's fake transport): no back-pressure from it
        try:
            socket.registerProducer(_SocketProducer(self), True)
        except RuntimeError:
            self._log.warn("the SSH socket has a producer already: not watching it")
            return
        self._socket = socket

    def serviceStopped(self) -> None:
        self._release_socket()
        super().serviceStopped()

    def _release_socket(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.unregisterProducer()

    def _socket_full(self) -> None:
        self.congested = True

    def _socket_drained(self) -> None:
        if self._socket is None:
            return
        self.congested = False
        if getattr(self._socket, "disconnecting", False):
            # loseConnection was called (e.g. sendDisconnect): TCP and TLS
            # transports close only once their producer is unregistered.
            self._release_socket()
            return
        flows = [
            c for c in self.channels.values() if isinstance(c, FlowControlledChannel)
        ]
        if not flows:
            return
        turn = self._flush_turn % len(flows)
        self._flush_turn += 1
        for channel in flows[turn:] + flows[:turn]:  # in turn: no channel starves
            channel._flush()  # sends while the socket takes it; startWriting if drained

    def _socket_lost(self) -> None:
        self.congested = True  # the socket is gone: nothing more to send into it

    def adjustWindow(self, channel: SSHChannel, bytesToAdd: int) -> None:
        """Conch's, without the debug event it emits on every call.

        Stock channels on this connection get it from Conch's automatic
        re-open (once per CHANNEL_DATA), ours from `open_window`: either way
        it is on the per-packet path, where nothing may log.
        """
        if channel.localClosed:
            return
        assert self.transport is not None
        self.transport.sendPacket(
            connection.MSG_CHANNEL_WINDOW_ADJUST,
            _ADJUST.pack(self.channelsToRemoteChannel[channel], bytesToAdd),
        )
        channel.localWindowLeft += bytesToAdd

    def ssh_CHANNEL_WINDOW_ADJUST(self, packet: bytes) -> None:
        """Add to a channel's window, never past 2^32-1: beyond is a protocol error.

        An initial window (CHANNEL_OPEN, OPEN_CONFIRMATION) is a uint32 and so
        within the limit; only adjusts can overflow. OpenSSH's
        ``channel_input_window_adjust`` makes the overflow fatal, and so do
        we, rather than clamp: a peer that miscounts its window by 4 GiB is
        broken or hostile, and clamping would leave it believing it may send
        what we never granted it to expect.
        """
        localChannel, bytesToAdd = _ADJUST.unpack(packet[:8])
        channel = self.channels[localChannel]
        if channel.remoteWindowLeft + bytesToAdd > MAX_WINDOW:
            self._log.warn(
                "peer overflowed channel {id}'s window ({left} + {add} > 2^32-1): "
                "disconnecting",
                id=localChannel,
                left=channel.remoteWindowLeft,
                add=bytesToAdd,
            )
            assert self.transport is not None
            self.transport.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR, b"window overflow"
            )
            return
        channel.addWindowBytes(bytesToAdd)

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        """Like the stock one, but an opted-in channel may delay its confirmation."""
        channelType, rest = common.getNS(packet)
        senderChannel, windowSize, maxPacket = struct.unpack(">3L", rest[:12])
        extra = rest[12:]
        try:
            channel: SSHChannel = self.getChannel(
                channelType, windowSize, maxPacket, extra
            )
        except PARSE_ERRORS:
            raise  # the transport disconnects: a malformed CHANNEL_OPEN
        except Exception as e:
            if not isinstance(e, ConchError):
                self._log.failure("channel open failed")
            self._send_open_failure(senderChannel, e)
            return
        gate = (
            channel.when_openable()
            if isinstance(channel, FlowControlledChannel)
            else None
        )
        localChannel = self.localChannelID
        self.localChannelID += 1
        channel.id = localChannel  # type: ignore[assignment]  # None until opened
        self.channels[localChannel] = channel
        if gate is None:
            self._confirm(channel, senderChannel, extra)
            return

        def opened(_: None) -> None:
            if self.channels.get(localChannel) is channel:
                self._confirm(channel, senderChannel, extra)

        def refused(reason: Failure) -> None:
            if self.channels.get(localChannel) is channel:
                del self.channels[localChannel]
                self._send_open_failure(senderChannel, reason.value)

        gate.addCallbacks(opened, refused)

    def _confirm(self, channel: SSHChannel, senderChannel: int, extra: bytes) -> None:
        assert self.transport is not None
        self.channelsToRemoteChannel[channel] = senderChannel
        self.localToRemoteChannel[channel.id] = senderChannel
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_CONFIRMATION,
            struct.pack(
                ">4L",
                senderChannel,
                channel.id,
                channel.localWindowSize,
                channel.localMaxPacket,
            )
            + channel.specificData,
        )
        try:
            channel.channelOpen(extra)
        except Exception:
            self._log.failure("channelOpen failed; closing the channel")
            self.sendClose(channel)

    def _send_open_failure(
        self, senderChannel: int, reason: BaseException | None
    ) -> None:
        code, text = connection.OPEN_CONNECT_FAILED, "unknown failure"
        if isinstance(reason, ConchError):
            text, code = reason.args
            if isinstance(text, int):  # Conch raises both argument orders
                text, code = code, text
            code = code if isinstance(code, int) else connection.OPEN_CONNECT_FAILED
        description = text if isinstance(text, bytes) else str(text).encode("utf-8")
        assert self.transport is not None
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", senderChannel, code)
            + common.NS(description)
            + common.NS(b""),
        )

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        """Deliver data to opted-in channels without re-opening their window."""
        localChannel, dataLength = struct.unpack(">2L", packet[:8])
        channel = self.channels[localChannel]
        if not isinstance(channel, FlowControlledChannel):
            super().ssh_CHANNEL_DATA(packet)
            return
        data = packet[8 : 8 + dataLength]
        if self._over_limit(channel, dataLength, len(data)):
            return
        channel.localWindowLeft -= dataLength
        channel.dataReceived(data)
        if channel.localWindowLeft < channel.localMaxPacket and channel.unadjusted:
            channel.open_window(0)  # the peer is nearly shut out: give back now

    def ssh_CHANNEL_EXTENDED_DATA(self, packet: bytes) -> None:
        """Opted-in channels get extended data without a window re-open, too."""
        localChannel, typeCode, dataLength = struct.unpack(">3L", packet[:12])
        channel = self.channels[localChannel]
        if not isinstance(channel, FlowControlledChannel):
            super().ssh_CHANNEL_EXTENDED_DATA(packet)
            return
        data = packet[12 : 12 + dataLength]
        if self._over_limit(channel, dataLength, len(data)):
            return
        channel.localWindowLeft -= dataLength
        channel.extReceived(typeCode, data)
        if channel.localWindowLeft < channel.localMaxPacket and channel.unadjusted:
            channel.open_window(0)

    def _over_limit(self, channel: SSHChannel, declared: int, actual: int) -> bool:
        if declared == actual and declared <= min(
            channel.localWindowLeft, channel.localMaxPacket
        ):
            return False
        self._log.warn("peer overran channel {id}'s window", id=channel.id)
        self.sendClose(channel)
        return True
