"""Splice an SSH channel to a TCP connection, with back-pressure both ways.

Stock Conch forwarding has no flow control (CONCH_NOTES, "Forwarding and flow
control"): ``SSHConnection.ssh_CHANNEL_DATA`` re-opens the window before the
data is delivered, and ``SSHChannel.write`` buffers whatever the peer's window
refuses with a quadratic ``buf += data``. A fast node read by a slow client
grows the proxy without bound. Here:

- `FlowControlledConnection` lets opted-in channels open their own window and
  confirm their open only once their target is reachable (so ``ssh -W`` to a
  dead port gets a real "open failed").
- `FlowControlledChannel` queues output as a deque of chunks and re-opens the
  window only when told to.
- `SplicingChannel` joins one such channel to one TCP connection: the node is
  paused while the client is behind, and the client's window is re-opened
  only for bytes the node's transport has taken.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.conch.error import ConchError
from twisted.conch.ssh import common, connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.conch.guard import PARSE_ERRORS

DEFAULT_WINDOW = 2 * 1024 * 1024
"""OpenSSH's window for TCP channels (64 packets of 32 KiB)."""
DEFAULT_MAX_PACKET = 32 * 1024

OnClose = Callable[[int, int, str], None]
"""``on_close(bytes_up, bytes_down, reason)``: called once when a splice ends."""


class NodeTransport(TypingProtocol):
    """What a splice uses of the node's TCP transport (ITCPTransport + IConsumer)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


class FlowControlledChannel(SSHChannel):
    """An SSH channel that opens its own window and queues output in chunks.

    On a `FlowControlledConnection` incoming data is not followed by an
    automatic window adjust: call `open_window` once the bytes have really
    left. Output the peer's window cannot take waits in a deque (no quadratic
    copying); `stopWriting`/`startWriting` fire when that queue starts and
    stops holding bytes. Extended data (stderr) shares the queue, in order.
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
        self.bytes_sent = 0  # CHANNEL_DATA bytes (not extended data)

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

    def open_window(self, n: int) -> None:
        """Give ``n`` consumed bytes back to the peer's sending window."""
        if n > 0 and self.conn is not None and self.confirmed:
            self.conn.adjustWindow(self, n)

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
        while self._out and self.remoteWindowLeft > 0:
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


class FlowControlledConnection(connection.SSHConnection):
    """``ssh-connection`` where `FlowControlledChannel` s manage their own window.

    Other channels (sessions, ...) keep the stock automatic window adjust.
    """

    _log = Logger()

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

    def _over_limit(self, channel: SSHChannel, declared: int, actual: int) -> bool:
        if declared == actual and declared <= min(
            channel.localWindowLeft, channel.localMaxPacket
        ):
            return False
        self._log.warn("peer overran channel {id}'s window", id=channel.id)
        self.sendClose(channel)
        return True


class SpliceState(enum.Enum):
    """Where a splice is in its life; see `SplicingChannel` for the moves."""

    CONNECTING = "connecting"  # no node yet; client bytes are held
    OPEN = "open"
    CLIENT_DONE = "client-done"  # half-closed: client sent EOF, node's write side shut
    NODE_DONE = "node-done"  # half-closed: node shut its side, client got EOF
    DRAINING = "draining"  # node gone; flushing to the client, then closing the channel
    DISCONNECTING = "disconnecting"  # waiting for the node's connection to close
    CLOSED = "closed"


_S = SpliceState
_MOVES: dict[SpliceState, frozenset[SpliceState]] = {
    _S.CONNECTING: frozenset({_S.OPEN, _S.DRAINING, _S.CLOSED}),
    _S.OPEN: frozenset({_S.CLIENT_DONE, _S.NODE_DONE, _S.DRAINING, _S.DISCONNECTING}),
    _S.CLIENT_DONE: frozenset({_S.DRAINING, _S.DISCONNECTING}),
    _S.NODE_DONE: frozenset({_S.DRAINING, _S.DISCONNECTING}),
    _S.DRAINING: frozenset({_S.CLOSED}),
    _S.DISCONNECTING: frozenset({_S.DRAINING, _S.CLOSED}),
    _S.CLOSED: frozenset(),
}
_LIVE = frozenset({_S.OPEN, _S.CLIENT_DONE, _S.NODE_DONE})


class SpliceClosed(Exception):
    """`SplicingChannel.connect` was called after the channel had ended."""


_CONNECT_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (ierror.ConnectionRefusedError, "Connection refused"),
    (ierror.TCPTimedOutError, "Connection timed out"),
    (ierror.TimeoutError, "Connection timed out"),
    (ierror.DNSLookupError, "Name or service not known"),
    (ierror.NoRouteError, "No route to host"),
)


def _describe(e: BaseException) -> str:
    for kind, text in _CONNECT_ERRORS:
        if isinstance(e, kind):
            return text
    return str(e) or type(e).__name__


@implementer(IPushProducer)
class SplicingChannel(FlowControlledChannel):
    """One SSH channel spliced to one TCP connection to a node.

    The routing code builds it in ``lookupChannel`` and calls `connect` (or
    `abort`). With ``confirm_after_connect`` (``direct-tcpip``) the open is
    confirmed once the node answers and refused with its error otherwise;
    without it (a ``proxy:`` subsystem on an open session) client bytes are
    held, within the window, until the node answers.

    Life: CONNECTING -> OPEN -> CLIENT_DONE / NODE_DONE (half-closed) ->
    DISCONNECTING (channel over or both EOFs: close the node) / DRAINING (node
    gone: flush, EOF, close the channel) -> CLOSED, when ``on_close`` runs.
    """

    name = b"direct-tcpip"
    _log = Logger()

    def __init__(
        self,
        *,
        on_close: OnClose,
        window: int = DEFAULT_WINDOW,
        max_packet: int = DEFAULT_MAX_PACKET,
        confirm_after_connect: bool = True,
        remoteWindow: int = 0,
        remoteMaxPacket: int = 0,
        conn: connection.SSHConnection | None = None,
        data: bytes | None = None,
        avatar: Any = None,
    ) -> None:
        super().__init__(
            window=window,
            max_packet=max_packet,
            remoteWindow=remoteWindow,
            remoteMaxPacket=remoteMaxPacket,
            conn=conn,
            data=data,
            avatar=avatar,
        )
        self._on_close = on_close
        self._confirm_after_connect = confirm_after_connect
        self._state = SpliceState.CONNECTING
        self._reason: str | None = None
        self._node: _NodeProtocol | None = None
        self._connecting: Deferred[Protocol] | None = None
        self._gate: Deferred[None] | None = None
        self._refusal: ConchError | None = None
        self._held: deque[bytes | None] = deque()  # None marks the client's EOF
        self._unreopened = 0  # bytes handed to the node, not yet given back
        self._node_full = False  # the node's transport asked us to pause
        self._node_reading = True
        self.bytes_up = 0

    @property
    def state(self) -> SpliceState:
        return self._state

    @property
    def bytes_down(self) -> int:
        return self.bytes_sent

    @property
    def node_reading(self) -> bool:
        """False while the node's socket is left unread (client behind, or done)."""
        return self._node is not None and self._node_reading

    @property
    def node_transport(self) -> NodeTransport | None:
        return None if self._node is None else self._node.transport

    # -- routing code's side --------------------------------------------

    async def connect(self, endpoint: IStreamClientEndpoint) -> None:
        """Connect to the node; return once bytes flow, or raise why not.

        On failure the open has been refused and ``on_close`` called, or, if
        the channel was already open, it is closing and ``on_close`` follows.
        """
        if self._state is not SpliceState.CONNECTING or self._connecting is not None:
            raise SpliceClosed(f"cannot connect a splice in state {self._state.value}")
        attempt = connectProtocol(endpoint, _NodeProtocol(self))
        self._connecting = attempt
        try:
            await attempt
        except BaseException as e:
            self._connecting = None
            if self._state is SpliceState.CONNECTING:
                text = _describe(e)
                self._fail_open(
                    text, connection.OPEN_CONNECT_FAILED, f"connect failed: {text}"
                )
            raise
        self._connecting = None

    def abort(
        self, description: str, code: int = connection.OPEN_CONNECT_FAILED
    ) -> None:
        """End the splice for the routing code's reason (e.g. access denied).

        Still connecting: the open is refused with ``code`` and
        ``description``. Open: both sides are closed after their buffers.
        """
        if self._state is SpliceState.CONNECTING:
            self._fail_open(description, code, description)
            self._cancel_connect()
        elif self._state in _LIVE:
            self._reason = self._reason or description
            self._disconnect()
            self.loseConnection()

    def when_openable(self) -> Deferred[None] | None:
        if not self._confirm_after_connect:
            return None
        if self._state is SpliceState.CONNECTING:
            self._gate = Deferred()
            return self._gate
        if self._refusal is not None:
            return fail(self._refusal)
        return None

    # -- lifecycle --------------------------------------------------------

    def _move(self, to: SpliceState) -> None:
        if to not in _MOVES[self._state]:
            raise AssertionError(f"splice cannot go {self._state.value} -> {to.value}")
        self._state = to
        if to is SpliceState.CLOSED:
            self._log.info(
                "splice closed: {reason}, {up} bytes up, {down} down",
                reason=self._reason,
                up=self.bytes_up,
                down=self.bytes_down,
            )
            try:
                self._on_close(self.bytes_up, self.bytes_down, self._reason or "closed")
            except Exception:
                self._log.failure("on_close failed")

    def _fail_open(self, description: str, code: int, reason: str) -> None:
        self._reason = self._reason or reason
        refusal = ConchError(description, code)
        if self._gate is not None:
            gate, self._gate = self._gate, None
            gate.errback(refusal)
            self._move(SpliceState.CLOSED)
        elif self.confirmed or not self._confirm_after_connect:
            self._move(SpliceState.DRAINING)
            self.loseConnection()
        else:  # refused before the connection asked: when_openable will say so
            self._refusal = refusal
            self._move(SpliceState.CLOSED)

    def _cancel_connect(self) -> None:
        """Call after leaving CONNECTING, so that `connect` sees the failure is moot."""
        if self._connecting is not None:
            self._connecting.cancel()

    def _disconnect(self) -> None:
        """The channel side is over: close the node after its buffered writes."""
        producing = self._state in (_S.OPEN, _S.NODE_DONE)  # client EOF unregistered
        self._move(SpliceState.DISCONNECTING)
        if self._node is not None:
            if producing:
                self._node.transport.unregisterProducer()
            self._node.transport.loseConnection()

    def _update_node_reading(self) -> None:
        """Read the node only while the client keeps up (nothing queued)."""
        if self._node is None or self._state not in (_S.OPEN, _S.CLIENT_DONE):
            return
        want = self.confirmed and self.buffered == 0
        if want != self._node_reading:
            self._node_reading = want
            if want:
                self._node.transport.resumeProducing()
            else:
                self._node.transport.pauseProducing()

    def _maybe_reopen(self) -> None:
        """Give written bytes back to the client, in OpenSSH-sized steps."""
        if self._node_full or not self._unreopened:
            return
        if (
            self._unreopened > 3 * self.localMaxPacket
            or self.localWindowLeft < self.localWindowSize // 2
        ):
            n, self._unreopened = self._unreopened, 0
            self.open_window(n)

    def _to_node(self, data: bytes) -> None:
        assert self._node is not None
        self._node.transport.write(data)
        self.bytes_up += len(data)
        self._unreopened += len(data)

    # -- SSH side ---------------------------------------------------------

    def channelOpen(self, specificData: bytes) -> None:
        super().channelOpen(specificData)
        self._update_node_reading()

    def openFailed(self, reason: Any) -> None:
        """The SSH connection ended before the open was confirmed."""
        self._reason = self._reason or "ssh connection lost"
        self._gate = None
        if self._state is SpliceState.CONNECTING:
            self._move(SpliceState.CLOSED)
            self._cancel_connect()
        elif self._state in _LIVE:
            self.localClosed = self.remoteClosed = True
            self._disconnect()

    def dataReceived(self, data: bytes) -> None:
        if self._state is SpliceState.CONNECTING:
            self._held.append(data)
        elif self._state in (_S.OPEN, _S.NODE_DONE):
            self._to_node(data)
            self._maybe_reopen()

    def extReceived(self, dataType: int, data: bytes) -> None:
        """Extended data has no place in a TCP stream: drop it, keep the window."""
        self.open_window(len(data))

    def eofReceived(self) -> None:
        if self._state is SpliceState.CONNECTING:
            self._held.append(None)
        elif self._state is SpliceState.OPEN:
            assert self._node is not None
            self._move(SpliceState.CLIENT_DONE)
            self._node.transport.unregisterProducer()
            self._node.transport.loseWriteConnection()
        elif self._state is SpliceState.NODE_DONE:
            self._reason = self._reason or "finished"
            self._disconnect()

    def closeReceived(self) -> None:
        super().closeReceived()
        self._reason = self._reason or "client closed"
        if self._state is SpliceState.CONNECTING:
            self._move(SpliceState.DRAINING)  # closed() follows at once
            self._cancel_connect()
        elif self._state in _LIVE:
            self._disconnect()

    def closed(self) -> None:
        """Both ends closed the channel, or the SSH connection went away."""
        self._reason = self._reason or "ssh connection lost"
        if self._state is SpliceState.CONNECTING:
            self._move(SpliceState.CLOSED)
            self._cancel_connect()
        elif self._state in _LIVE:
            self._disconnect()
        elif self._state is SpliceState.DRAINING:
            self._move(SpliceState.CLOSED)
        # DISCONNECTING: the node's connectionLost finishes the splice.

    def stopWriting(self) -> None:
        self._update_node_reading()

    def startWriting(self) -> None:
        self._update_node_reading()

    # -- IPushProducer, for the node's transport --------------------------

    def pauseProducing(self) -> None:
        """The node's write buffer is full: stop re-opening the client's window."""
        self._node_full = True

    def resumeProducing(self) -> None:
        """The node took everything: re-open the window for it."""
        self._node_full = False
        self._maybe_reopen()

    def stopProducing(self) -> None:
        """The node's connection is gone; `_node_lost` handles it."""

    # -- node side --------------------------------------------------------

    def _node_connected(self, node: _NodeProtocol) -> None:
        if self._state is not SpliceState.CONNECTING:
            node.transport.abortConnection()
            return
        self._node = node
        node.transport.registerProducer(self, True)
        self._move(SpliceState.OPEN)
        self._log.info("splice open to {peer}", peer=node.transport.getPeer())
        held, self._held = self._held, deque()
        for item in held:
            if item is None:
                self.eofReceived()
            else:
                self._to_node(item)
        self._update_node_reading()
        if self._gate is not None:
            gate, self._gate = self._gate, None
            gate.callback(None)
        self._maybe_reopen()

    def _node_data(self, data: bytes) -> None:
        if self._state in (_S.OPEN, _S.CLIENT_DONE):
            self.write(data)

    def _node_eof(self) -> None:
        self._node_reading = False  # at EOF: never resume reading
        if self._state is SpliceState.OPEN:
            self._move(SpliceState.NODE_DONE)
            self.send_eof()
        elif self._state is SpliceState.CLIENT_DONE:
            self._reason = self._reason or "finished"
            self.send_eof()
            self._disconnect()

    def _node_lost(self, reason: Failure) -> None:
        self._node = None
        if reason.check(ierror.ConnectionDone):
            self._reason = self._reason or "node closed"
        else:
            self._reason = self._reason or f"node lost: {reason.getErrorMessage()}"
        if (
            self._state is SpliceState.DISCONNECTING
            and self.localClosed
            and self.remoteClosed
        ):
            self._move(SpliceState.CLOSED)
        elif self._state in _LIVE or self._state is SpliceState.DISCONNECTING:
            self._move(SpliceState.DRAINING)
            self.send_eof()
            self.loseConnection()


@implementer(IHalfCloseableProtocol)
class _NodeProtocol(Protocol):
    """The TCP side of a splice: hands every event to the channel."""

    transport: NodeTransport  # type: ignore[assignment]

    def __init__(self, channel: SplicingChannel) -> None:
        self._channel = channel

    def connectionMade(self) -> None:
        self._channel._node_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._channel._node_data(data)

    def readConnectionLost(self) -> None:
        self._channel._node_eof()

    def writeConnectionLost(self) -> None:
        """Our EOF reached the node; its replies may still come."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._channel._node_lost(reason)
