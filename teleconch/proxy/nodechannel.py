"""The node side as a channel on an SSH client connection to the node.

The web terminal and the recording proxy hold an SSH connection to the node
themselves; a `SSHChannelNodeTransport` opens one channel on it and offers it
as a `NodeTransport`, so a splice or a terminal moves bytes through it exactly
as through a TCP connection.  Back-pressure is the SSH window's:

- node to us: a paused transport holds what arrives and gives the node no
  window back, so the node stops within one window;
- us to the node: what the node's window refuses waits in the channel's
  queue, and ``node_full`` / ``node_drained`` say when it starts and stops.

The connection must be a `FlowControlledConnection` (or subclass), so that it
leaves the channel's window to the channel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh import connection, forwarding
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from teleconch.conch.flow import (
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    FlowControlledChannel,
)
from teleconch.proxy.node import NodeEvents

if TYPE_CHECKING:
    from teleconch.proxy.routing import Target


def direct_tcpip(target: Target) -> bytes:
    """The CHANNEL_OPEN data of a ``direct-tcpip`` channel to the target."""
    return forwarding.packOpen_direct_tcpip(
        (target.host, target.port), ("127.0.0.1", 0)
    )


class SSHChannelNodeTransport:
    """A `NodeTransport` over one channel of an SSH connection to the node.

    ``kind`` and ``open_data`` say what channel to open (by default a
    ``direct-tcpip`` channel to the target's host and port; a ``session``
    channel for a shell).  Extended data (stderr) joins the node's bytes, as
    a terminal shows it.
    """

    def __init__(
        self,
        conn: connection.SSHConnection,
        *,
        kind: bytes = b"direct-tcpip",
        open_data: Callable[[Target], bytes] = direct_tcpip,
        window: int = DEFAULT_WINDOW,
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> None:
        self._conn = conn
        self._kind = kind
        self._open_data = open_data
        self._window = window
        self._max_packet = max_packet
        self.channel: NodeChannel | None = None

    def connect(self, target: Target, events: NodeEvents) -> Deferred[None]:
        def cancel(_: Deferred[None]) -> None:
            if self.channel is not None:
                self.channel.abandon()

        ready: Deferred[None] = Deferred(cancel)
        self.channel = NodeChannel(
            events,
            ready,
            kind=self._kind,
            window=self._window,
            max_packet=self._max_packet,
            conn=self._conn,
        )
        self._conn.openChannel(self.channel, self._open_data(target))
        return ready

    def _channel(self) -> NodeChannel:
        assert self.channel is not None, "not connected"
        return self.channel

    def write(self, data: bytes) -> None:
        self._channel().write(data)

    def write_eof(self) -> None:
        self._channel().send_eof()

    def pauseProducing(self) -> None:
        self._channel().pause()

    def resumeProducing(self) -> None:
        self._channel().resume()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.loseConnection()

    def abort(self) -> None:
        if self.channel is not None:
            self.channel.abort()

    @property
    def peer(self) -> str:
        try:
            where = str(self._conn.transport.transport.getPeer())  # type: ignore[union-attr]
        except AttributeError:  # not on a socket (tests)
            where = "the node"
        return f"a {self._kind.decode()} channel over SSH to {where}"


_EOF = None  # marks the node's EOF among held bytes


class NodeChannel(FlowControlledChannel):
    """The channel a `SSHChannelNodeTransport` opens; reports to its events."""

    def __init__(
        self,
        events: NodeEvents,
        ready: Deferred[None],
        *,
        kind: bytes,
        window: int,
        max_packet: int,
        conn: connection.SSHConnection,
    ) -> None:
        super().__init__(window=window, max_packet=max_packet, conn=conn)
        self.name = kind
        self._events = events
        self._ready: Deferred[None] | None = ready
        self._paused = False
        self._held: deque[bytes | None] = deque()  # while paused; None is EOF
        self._lost: Failure | None = None  # the end, once the held bytes are out
        self._consumed = 0  # bytes delivered, not yet given back to the node
        self._done = False  # node_lost reported, or the connect abandoned

    # -- the transport's side ---------------------------------------------

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        while self._held and not self._paused:
            item = self._held.popleft()
            if item is _EOF:
                self._events.node_eof()
            else:
                self._deliver(item)
        if self._held or self._paused:
            return
        if self._lost is not None:
            self._report_lost(self._lost)
        else:
            self._maybe_reopen()

    def abandon(self) -> None:
        """The connect was cancelled: close the channel once it opens, quietly."""
        self._ready = None
        self._done = True
        if self.confirmed and not self.localClosed:
            self.abort()

    def abort(self) -> None:
        """Close now, dropping what is held or queued either way."""
        self._held.clear()
        if self.confirmed and not self.localClosed:
            super().closeReceived()  # drops our queue and sends CLOSE at once

    def _deliver(self, data: bytes) -> None:
        self._events.node_data(data)
        self._consumed += len(data)
        self._maybe_reopen()

    def _maybe_reopen(self) -> None:
        """Delivered bytes are consumed unless paused; `open_window` batches
        the adjusts (OpenSSH's rule)."""
        if self._paused or not self._consumed:
            return
        n, self._consumed = self._consumed, 0
        self.open_window(n)

    def _report_lost(self, reason: Failure) -> None:
        if not self._done:
            self._done = True
            self._events.node_lost(reason)

    # -- Conch's side -------------------------------------------------------

    def channelOpen(self, specificData: bytes) -> None:
        super().channelOpen(specificData)
        ready, self._ready = self._ready, None
        if ready is None:  # abandoned while opening
            self.abort()
            return
        ready.callback(None)

    def openFailed(self, reason: Any) -> None:
        ready, self._ready = self._ready, None
        self._done = True
        if ready is not None:
            ready.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._paused or self._held:
            self._held.append(data)
        else:
            self._deliver(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.dataReceived(data)

    def eofReceived(self) -> None:
        if self._paused or self._held:
            self._held.append(_EOF)
        elif not self._done:
            self._events.node_eof()

    def closed(self) -> None:
        """Both ends closed the channel (done), or the SSH connection went (lost)."""
        if self.closing:  # a CLOSE from either end: closeReceived or loseConnection
            reason = Failure(ierror.ConnectionDone("the channel was closed"))
        else:
            reason = Failure(ierror.ConnectionLost("the SSH connection was lost"))
        if self._held and not self._done:
            self._lost = reason  # after the held bytes, once resumed
        else:
            self._report_lost(reason)

    def stopWriting(self) -> None:
        """The node's window refuses what we write: it is full."""
        if not self._done:
            self._events.node_full()

    def startWriting(self) -> None:
        """Our queue to the node has drained."""
        if not self._done:
            self._events.node_drained()
