"""The head of each request (its request line and headers), guarded.

Twisted's HTTPChannel refuses a malformed head with a bare ``400 Bad
Request``, drops a line over its length limit without a word, and lets a
client dribble a head for ever, one byte per idle timeout.  HeadChannel
names each of these refusals (a status and a message, handed to
``refuse_head``) and gives every head a deadline: HEAD_SECONDS from the
connection's start (so a TLS handshake that never ends counts too), and on a
kept-alive connection from the end of the previous response.  Twisted's idle
timeout (60 s) still governs the rest: a slow body, a slow answer.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

log = Logger()

#: How long a request's head may take (nginx's client_header_timeout).
HEAD_SECONDS = 10.0

REQUEST_LINE = "request line"
HEADERS = "request headers"
CHUNKS = "chunked body"


class HeadChannel(HTTPChannel):
    """An HTTPChannel whose parser's refusals and slow heads go to ``refuse_head``.

    A subclass answers them (and closes); this class only says what went wrong.
    """

    head_seconds = HEAD_SECONDS

    def __init__(self) -> None:
        super().__init__()
        #: What the parser reads now: what a bad request is a bad one of.
        self._reading = REQUEST_LINE
        self._head_timer: IDelayedCall | None = None

    def refuse_head(self, status: int, message: str) -> None:
        """Answer a request refused before it could be handed over, and close."""
        raise NotImplementedError

    def _head_refused(self, status: int, message: str) -> None:
        self._stop_head_timer()
        self.refuse_head(status, message)

    # --- Twisted's refusals, named

    def lineReceived(self, line: bytes) -> None:
        # No request is open between requests: this line starts one.
        self._reading = HEADERS if self.requests else REQUEST_LINE
        super().lineReceived(line)
        if not self.line_mode:  # the head is in: a body, or the request runs
            self._stop_head_timer()

    def rawDataReceived(self, data: bytes) -> None:
        self._reading = CHUNKS
        super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver.MAX_LENGTH (16 KiB), the same as totalHeadersSize.
        if self.requests:
            self._head_refused(431, "request headers too large")
        else:
            self._head_refused(414, "request line too long")

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's one answer to every head or chunk it cannot parse, and to
        # heads over totalHeadersSize or maxHeaders (its counters say which).
        if (
            self._receivedHeaderSize > self.totalHeadersSize
            or self._receivedHeaderCount > self.maxHeaders
        ):
            self._head_refused(431, "request headers too large")
        elif self._reading == REQUEST_LINE:
            self._head_refused(
                400, "malformed request line: expected METHOD /path HTTP/1.1"
            )
        else:
            self._head_refused(400, f"malformed {self._reading}")

    # --- the deadline

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_head_timer()

    def requestDone(self, request: object) -> None:
        if self.persistent:
            # Before Twisted replays pipelined bytes, which may end the head.
            self._start_head_timer()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_head_timer()
        super().connectionLost(reason)

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.callLater(self.head_seconds, self._head_expired)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        # Whatever came of the head is a request (its line read) or a line
        # LineReceiver holds, including bytes pipelined after the last answer.
        if self.requests or self._buffer:
            self._head_refused(
                408, f"request headers not complete in {self.head_seconds:g} s"
            )
            return
        assert self.transport is not None
        log.info(
            "closed {client}: no request within {seconds:g} s",
            client=str(getattr(self.transport.getPeer(), "host", "")),
            seconds=self.head_seconds,
        )
        # Nothing to answer; TLSMemoryBIOProtocol and TCP transports both abort.
        cast(ITCPTransport, self.transport).abortConnection()
