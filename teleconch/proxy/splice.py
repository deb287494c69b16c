"""Splice an SSH channel to the node side of a route, with back-pressure both ways.

`SplicingChannel` is a `FlowControlledChannel` (teleconch/conch/flow.py, with
the connection that lets it open its own window and confirm its open late)
joined to a `NodeTransport`: a TCP connection, or a channel to the node.  The
node is paused while the client is behind, and the client's window is
re-opened only for bytes the node's transport has taken, so a fast node read
by a slow client cannot grow the proxy without bound.

A splice moves through `SpliceState`: CONNECTING (no node yet; client bytes
are held), OPEN, half-closed CLIENT_DONE or NODE_DONE, then DISCONNECTING
(closing the node) or DRAINING (flushing to the client), and CLOSED, when its
``on_close`` reports the byte counts, why it ended, and whether the node side
was ever reached.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import connection
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleconch.conch.flow import (
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    FlowControlledChannel,
)
from teleconch.proxy.node import NodeTransport, TCPNodeTransport

if TYPE_CHECKING:
    from teleconch.proxy.routing import OnClose, Target


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


class SplicingChannel(FlowControlledChannel):
    """One SSH channel spliced to the node side of a route (`NodeTransport`).

    The proxy's avatar builds it when the client opens a channel
    (``direct-tcpip``, or a session for the ``proxy:`` subsystem), and
    `Router.connect` calls `connect` once the route is checked (the avatar
    calls `abort` if it is refused); the splice is the `NodeEvents` of its
    node transport. With
    ``confirm_after_connect`` (``direct-tcpip``) the open is confirmed once
    the node answers and refused with its error otherwise; without it (a
    ``proxy:`` subsystem on an open session) client bytes are held, within
    the window, until the node answers.

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
        self._reached = False  # the node side was connected (on_close says so)
        self._reason: str | None = None
        self._node: NodeTransport | None = None
        self._connecting: Deferred[None] | None = None
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
    def ended(self) -> bool:
        """Whether the splice is over (``on_close`` has run)."""
        return self._state is SpliceState.CLOSED

    @property
    def node_transport(self) -> Any:
        """The node's TCP transport, if the node side is TCP (to measure its buffer)."""
        return (
            self._node.transport if isinstance(self._node, TCPNodeTransport) else None
        )

    # -- routing code's side --------------------------------------------

    async def connect(self, node: NodeTransport, target: Target) -> None:
        """Open the node side to ``target``; return once bytes flow, or raise why not.

        On failure the open has been refused and ``on_close`` called, or, if
        the channel was already open, it is closing and ``on_close`` follows.
        """
        if self._state is not SpliceState.CONNECTING or self._connecting is not None:
            raise SpliceClosed(f"cannot connect a splice in state {self._state.value}")
        attempt = node.connect(target, self)
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
        self._node_connected(node)

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
        if to is SpliceState.OPEN:
            self._reached = True
        if to is SpliceState.CLOSED:
            self._log.info(
                "splice closed: {reason}, {up} bytes up, {down} down, "
                "{adjusts} window adjusts",
                reason=self._reason,
                up=self.bytes_up,
                down=self.bytes_down,
                adjusts=self.adjusts_sent,
            )
            try:
                self._on_close(
                    self.bytes_up,
                    self.bytes_down,
                    self._reason or "closed",
                    self._reached,
                )
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
        self._move(SpliceState.DISCONNECTING)
        if self._node is not None:
            self._node.close()  # unregisters a producing client first

    def _update_node_reading(self) -> None:
        """Read the node only while the client keeps up (nothing queued)."""
        if self._node is None or self._state not in (_S.OPEN, _S.CLIENT_DONE):
            return
        want = self.confirmed and self.buffered == 0
        if want != self._node_reading:
            self._node_reading = want
            if want:
                self._node.resumeProducing()
            else:
                self._node.pauseProducing()

    def _maybe_reopen(self) -> None:
        """Bytes the node's transport took are consumed, unless it asked us to
        pause; `open_window` batches the adjusts (OpenSSH's rule)."""
        if self._node_full or not self._unreopened:
            return
        n, self._unreopened = self._unreopened, 0
        self.open_window(n)

    def _to_node(self, data: bytes) -> None:
        assert self._node is not None
        self._node.write(data)
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
            self._node.write_eof()
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

    # -- node side: NodeEvents -------------------------------------------

    def node_full(self) -> None:
        """The node's write buffer is full: stop re-opening the client's window."""
        self._node_full = True

    def node_drained(self) -> None:
        """The node took everything: re-open the window for it."""
        self._node_full = False
        self._maybe_reopen()

    def _node_connected(self, node: NodeTransport) -> None:
        if self._state is not SpliceState.CONNECTING:
            node.abort()
            return
        self._node = node
        self._move(SpliceState.OPEN)
        self._log.info("splice open to {peer}", peer=node.peer)
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

    def node_data(self, data: bytes) -> None:
        if self._state in (_S.OPEN, _S.CLIENT_DONE):
            self.write(data)

    def node_eof(self) -> None:
        self._node_reading = False  # at EOF: never resume reading
        if self._state is SpliceState.OPEN:
            self._move(SpliceState.NODE_DONE)
            self.send_eof()
        elif self._state is SpliceState.CLIENT_DONE:
            self._reason = self._reason or "finished"
            self.send_eof()
            self._disconnect()

    def node_lost(self, reason: Failure) -> None:
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
