"""Two channels joined end to end: what one side sends, the other gets, in order.

In recording proxy mode every channel of the client's inner SSH connection
(a session, ``ssh -L``'s ``direct-tcpip``) has a twin on the proxy's
connection to the node, and the node's channels (``ssh -R``'s
``forwarded-tcpip``, agent requests) a twin toward the client.  A
`RelayChannel` is one of the pair; `join` ties them.

Order: data, extended data (stderr stays apart), channel requests, EOF and
close pass through in the order they arrived.  A request or EOF that comes
while data still waits for the far side's window waits behind it, and data
after it waits behind the request.

Flow control, as in the plain proxy's splice: a side's window is given back
only for bytes its twin has sent on (nothing waits in the twin), so a slow
reader on one side stops the writer on the other within one window, and
the proxy never holds more than that.

Replies to requests that want one come back from the far side (the node's
answer to ``pty-req`` is the client's answer); they go out in the order the
requests came.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import connection
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from teleconch.conch.flow import (
    FlowControlledChannel,
)

__all__ = ["MAX_HELD_REQUESTS", "RelayChannel", "open_twin"]

log = Logger()

#: Requests a side may send before its twin is open; more are refused.
MAX_HELD_REQUESTS = 64

_Op = tuple[
    Any, ...
]  # ("data", kind, bytes) | ("eof",) | ("close",) | ("request", ...)


class RelayChannel(FlowControlledChannel):
    """One end of a relayed pair of channels (see the module docstring).

    Until `join`, what arrives is held (data within our window, which is not
    given back meanwhile; at most `MAX_HELD_REQUESTS` requests).  Subclasses
    handle some requests themselves with `local_request`.
    """

    def __init__(self, *, name: bytes, **kw: Any) -> None:
        """``kw``: `FlowControlledChannel`'s (window, max_packet, remote...)."""
        super().__init__(**kw)
        self.name = name
        self.twin: RelayChannel | None = None
        #: Whether the request being handled wants a reply (the connection sets it).
        self.want_reply = False
        self._held: list[_Op] = []  # inbound, before the twin is joined
        self._held_requests = 0
        self._waiting: deque[_Op] = deque()  # outbound, behind our queue
        self._waiting_bytes = 0
        self._owed = 0  # bytes passed to the twin, not yet given back to our peer
        self._reply_tail: Deferred[None] = succeed(None)
        self.bytes_in = 0  # data + extended data from our peer
        #: For a channel our peer opens: confirm the open when this fires.
        self.gate: Deferred[None] | None = None
        self._on_open: Callable[[Any], None] | None = None

    # -- joining -------------------------------------------------------------

    def join(self, twin: RelayChannel) -> None:
        """Tie this channel to ``twin`` (both ways); pass on what was held."""
        self.twin, twin.twin = twin, self
        for side in (self, twin):
            held, side._held = side._held, []
            for op in held:
                side._pass(op)

    @property
    def pending(self) -> int:
        """Bytes written to us for our peer that have not gone out yet."""
        return self.buffered + self._waiting_bytes

    # -- from our peer ---------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._pass(("data", 0, data))

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.bytes_in += len(data)
        self._pass(("data", dataType, data))

    def eofReceived(self) -> None:
        self._pass(("eof",))

    def closeReceived(self) -> None:
        super().closeReceived()  # drops our queue, closes our side now
        self._waiting.clear()
        self._waiting_bytes = 0
        self._pass(("close",))

    def closed(self) -> None:
        """Both ends closed, or the connection went: the twin closes after its queue."""
        self._pass(("close",))

    def requestReceived(self, requestType: bytes, data: bytes) -> Any:
        want = self.want_reply
        local = self.local_request(requestType, data)
        if local is not NotImplemented:
            return self._in_order(
                local if isinstance(local, Deferred) else succeed(local)
            )
        reply: Deferred[Any] = Deferred()
        self._pass(("request", requestType, data, want, reply))
        return self._in_order(reply) if want else None

    def local_request(self, requestType: bytes, data: bytes) -> Any:
        """Handle a request here (a result, or a Deferred of one); `NotImplemented`
        passes it to the twin."""
        return NotImplemented

    def _in_order(self, result: Deferred[Any]) -> Deferred[Any]:
        """A reply that goes out only once the replies before it have."""
        before, tail = self._reply_tail, Deferred[None]()
        self._reply_tail = tail
        out: Deferred[Any] = Deferred()

        def release(outcome: Any) -> None:
            tail.callback(None)
            if isinstance(outcome, BaseException):
                out.errback(outcome)
            else:
                out.callback(outcome)

        def after_before(_: None) -> None:
            result.addCallbacks(release, lambda f: release(f.value))

        before.addCallback(after_before)
        return out

    def _pass(self, op: _Op) -> None:
        twin = self.twin
        if twin is None:
            self._hold(op)
            return
        twin.relay(op)
        if op[0] == "data":
            self._owed += len(op[2])
            self._maybe_reopen()

    def _hold(self, op: _Op) -> None:
        if op[0] == "request":
            if self._held_requests >= MAX_HELD_REQUESTS:
                if op[3]:
                    op[4].callback(False)
                return
            self._held_requests += 1
        if op[0] == "close" and any(o[0] == "close" for o in self._held):
            return
        self._held.append(op)

    def _maybe_reopen(self) -> None:
        """Passed-on bytes are consumed once the twin has sent them on;
        `open_window` batches the adjusts (OpenSSH's rule)."""
        twin = self.twin
        if twin is None or twin.pending or not self._owed:
            return
        n, self._owed = self._owed, 0
        self.open_window(n)

    # -- to our peer, from the twin ---------------------------------------

    def relay(self, op: _Op) -> None:
        """Send what the twin received, in order: behind anything waiting."""
        if self._waiting or (op[0] != "data" and self.buffered):
            self._waiting.append(op)
            if op[0] == "data":
                self._waiting_bytes += len(op[2])
            return
        self._do(op)

    def _do(self, op: _Op) -> None:
        kind = op[0]
        if kind == "data":
            if op[1]:
                self.writeExtended(op[1], op[2])
            else:
                self.write(op[2])
        elif kind == "eof":
            self.send_eof()
        elif kind == "close":
            self.loseConnection()
        else:
            _, name, data, want, reply = op
            self._send_request(name, data, want, reply)

    def _send_request(
        self, name: bytes, data: bytes, want: bool, reply: Deferred[Any]
    ) -> None:
        conn = self.conn
        if conn is None or self.localClosed or not self.confirmed:
            if want:
                reply.callback(False)
            return
        sent = conn.sendRequest(self, name, data, wantReply=want)
        if not want:
            return
        assert sent is not None

        def refused(f: Any) -> bool:
            f.trap(ConchError)
            return False

        sent.addCallbacks(lambda _: True, refused).chainDeferred(reply)

    def startWriting(self) -> None:
        """Our queue drained: send what waited, then let the twin's peer go on."""
        while self._waiting and not self.buffered:
            op = self._waiting.popleft()
            if op[0] == "data":
                self._waiting_bytes -= len(op[2])
            self._do(op)
        if self.twin is not None and not self.pending:
            self.twin._maybe_reopen()

    def stopWriting(self) -> None:
        """Our peer's window is full: the twin's window stays shut meanwhile."""

    # -- opening ------------------------------------------------------------

    def when_openable(self) -> Deferred[None] | None:
        """The open (by our peer) is confirmed once `gate` fires, refused if it fails."""
        return self.gate

    def channelOpen(self, specificData: bytes) -> None:
        super().channelOpen(specificData)
        on_open, self._on_open = self._on_open, None
        if on_open is not None:
            on_open(None)

    def openFailed(self, reason: Any) -> None:
        on_open, self._on_open = self._on_open, None
        if on_open is not None:
            on_open(reason)


def open_twin(
    channel: RelayChannel,
    conn: connection.SSHConnection,
    twin: RelayChannel,
    data: bytes,
) -> Deferred[None]:
    """Open ``twin`` on ``conn`` and join ``channel`` to it once it is open;
    fail with the refusal (a `ConchError` of description and code) if not."""
    done: Deferred[None] = Deferred()

    def opened(reason: Any) -> None:
        if reason is None:
            channel.join(twin)
            done.callback(None)
            return
        args = getattr(reason, "args", ())
        text, code = [*args, "refused", connection.OPEN_CONNECT_FAILED][:2]
        if isinstance(text, int):
            text, code = code, text
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        done.errback(ConchError(str(text), code))

    twin._on_open = opened
    conn.openChannel(twin, data)
    return done
