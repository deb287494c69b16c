"""The HTTP layer under the web API: the site, its channel and requests.

What twisted.web does before a resource runs is guarded here: security
headers on every answer, secrets masked in every logged path, a cap on the
connections one address holds open, and request bodies admitted (or refused)
on their headers, then held in memory and counted against one cap as they
arrive.  Nothing of a body past the cap is buffered, spooled or parsed.
"""

from __future__ import annotations

import enum
import json
from io import BytesIO
from typing import Any, Protocol, cast, runtime_checkable
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    RESPONSES,
    HTTPChannel,
    _ChunkedTransferDecoder,
    combinedLogFormatter,
)
from twisted.web.iweb import IAccessLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import provider

from teleconch.web.head import HeadChannel

log = Logger()

#: The largest request body any route takes (a login is well under 4 KiB).
MAX_BODY = 64 * 1024
TOO_LARGE = "request body too large"
#: How long a refused client may go on sending (dropped) before it is cut off.
LINGER_SECONDS = 5.0

SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; img-src 'self' data:; "
    b"style-src 'self'; script-src 'self'; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'self'",
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    # Invite links carry their token in the path: never leak it in a Referer.
    b"Referrer-Policy": b"no-referrer",
    b"Strict-Transport-Security": b"max-age=31536000",
    b"Cache-Control": b"no-store",
}

#: A path segment after which everything is a secret (``/web/invite/<token>``,
#: ``/v1/webapi/users/invite/<token>``), compared unquoted and in any case.
_SECRET_AFTER = b"invite"
REDACTED = b"<redacted>"


def redact_path(uri: bytes) -> str:
    """The request target as it may be logged: invite tokens masked.

    Everything after an ``invite`` segment goes, the query string too,
    however the segment is spelled (``%69nvite``, ``INVITE``).
    """
    path, query, _ = uri.partition(b"?")
    segments = path.split(b"/")
    for i, segment in enumerate(segments):
        more = i + 1 < len(segments) or query
        if more and unquote_to_bytes(segment).lower() == _SECRET_AFTER:
            uri = b"/".join([*segments[: i + 1], REDACTED])
            break
    return uri.decode("ascii", "backslashreplace")


class _Redacted:
    """What the access log formatter reads of a request, with paths masked."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.method = request.method
        self.uri = redact_path(request.uri).encode("ascii")
        self.clientproto = request.clientproto
        self.code = request.code
        self.sentLength = request.sentLength

    def getClientAddress(self) -> IAddress:
        return self._request.getClientAddress()

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            value = redact_path(value).encode("ascii")
        return value


@provider(IAccessLogFormatter)
def access_log_line(timestamp: str, request: Request) -> str:
    """Twisted's combined log format, with every path redacted."""
    return combinedLogFormatter(timestamp, _Redacted(request))


def client_host(request: Request) -> str:
    addr = request.getClientAddress()
    return str(getattr(addr, "host", addr))


def send_json(request: Request, status: int, payload: Any) -> None:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.write(json.dumps(payload).encode("utf-8"))
    request.finish()


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def no_body(length: int | None) -> HTTPError | None:
    """The rule for every request that takes no body (``length`` 0: none)."""
    return None if length == 0 else HTTPError(413, "this URL takes no request body")


@runtime_checkable
class Admits(Protocol):
    """A resource that says which requests it takes, on their headers alone.

    ``length`` is the Content-Length, None for a chunked body, 0 for none.
    Resources without ``admit`` take no body.
    """

    def admit(
        self, request: WebRequest, method: bytes, length: int | None
    ) -> HTTPError | None: ...


def error_json(message: str) -> bytes:
    """An error in the API's shape."""
    return json.dumps({"error": {"message": message}}).encode("utf-8")


def error_body(request: Request, status: int, message: str) -> bytes:
    """Set up an error answer in the API's shape; the body to return from render."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return error_json(message)


def error_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error answer, for a request there is no Request for:
    what ``error_body`` and ``WebSite.getResourceFor`` give a refused one."""
    body = error_json(message)
    headers = {
        b"Content-Type": b"application/json",
        b"Content-Length": b"%d" % len(body),
        **SECURITY_HEADERS,
        b"Connection": b"close",
    }
    reason = RESPONSES.get(status, b"Error")
    head = [b"HTTP/1.1 %d %s" % (status, reason)]
    head += [name + b": " + value for name, value in headers.items()]
    return b"\r\n".join([*head, b"", body])


class ErrorResource(Resource):
    """A leaf that answers every method with one JSON error."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Request) -> bytes:
        return error_body(request, self.status, self.message)


@attrs.define
class PeerCounter:
    """Open connections per client address, against one cap."""

    limit: int
    total: int = attrs.field(default=0, init=False)
    _counts: dict[str, int] = attrs.field(factory=dict, init=False)
    _idle: list[Deferred[None]] = attrs.field(factory=list, init=False)

    def acquire(self, host: str) -> bool:
        count = self._counts.get(host, 0)
        if count >= self.limit:
            return False
        self._counts[host] = count + 1
        self.total += 1
        return True

    def release(self, host: str) -> None:
        count = self._counts.pop(host) - 1
        if count:
            self._counts[host] = count
        self.total -= 1
        if not self.total:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def count(self, host: str) -> int:
        return self._counts.get(host, 0)

    def idle(self) -> Deferred[None]:
        """Fires when no connection is open."""
        if not self.total:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


class WebRequest(Request):
    """A request that keeps its body in memory, up to MAX_BODY, and whose
    description never names a secret in its path."""

    def __init__(self, channel: HTTPChannel, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        #: The method and target of the request line, known before the headers.
        self.head = (b"", b"")
        #: Why the request is refused, decided before its body is read.
        self.refusal: HTTPError | None = None

    def refuse(self, error: HTTPError) -> None:
        self.refusal = error
        self.content = BytesIO()

    def gotLength(self, length: int | None) -> None:
        # Never Twisted's temporary file: the channel refused anything
        # longer than MAX_BODY, and chunks are counted as they come.
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > MAX_BODY:
            assert isinstance(self.channel, WebChannel)
            self.channel.body_over_cap(self)
            return
        self.content.write(data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method!r} {redact_path(self.uri)}>"


class _Intake(enum.Enum):
    """What a channel does with the bytes it is sent."""

    OPEN = "parsing requests, as Twisted does"
    REFUSING = "a refusal is decided; the request goes on with an empty body"
    DRAINING = "the refusal is answered; every byte is dropped until the close"


_MOVES = {
    _Intake.OPEN: {_Intake.REFUSING, _Intake.DRAINING},
    _Intake.REFUSING: {_Intake.DRAINING},
    _Intake.DRAINING: set(),
}


class WebChannel(HeadChannel):
    """HTTP/1.1 with each request admitted on its headers, and a connection cap.

    A refused request is answered at once, with an empty body, by the
    ordinary resource path (so with the security headers and the access
    log); one the parser refused, or whose head came too late, is answered
    from here by ``refuse_head``, in the same shape.  Either way the channel
    then closes, dropping whatever else the client sends for up to
    LINGER_SECONDS so it can read the answer.
    """

    site: WebSite

    def __init__(self) -> None:
        super().__init__()
        self._intake = _Intake.OPEN
        #: The address counted against the cap while this connection is open.
        self._peer: str | None = None
        self._lost = False

    def _move(self, to: _Intake) -> None:
        assert to in _MOVES[self._intake], (self._intake, to)
        self._intake = to

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        host = str(getattr(self.transport.getPeer(), "host", ""))
        if not self.site.connections.acquire(host):
            log.warn(
                "refused a web connection from {client}: {limit} already open",
                client=host,
                limit=self.site.connections.limit,
            )
            self._abort()
            return
        self._peer = host

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._peer is not None:
            self.site.connections.release(self._peer)
            self._peer = None
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._peer is None or self._intake is _Intake.DRAINING:
            return  # dropped unread, and not a sign of life
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._intake is _Intake.DRAINING:
            return
        super().rawDataReceived(data)
        decoder = self._transferDecoder
        if (
            self._intake is _Intake.OPEN
            and isinstance(decoder, _ChunkedTransferDecoder)
            and decoder.state == "BODY"
        ):
            request = self.requests[-1]
            assert request.content is not None
            if request.content.tell() + decoder.length > MAX_BODY:
                self.body_over_cap(request)  # a chunk that would pass the cap

    def lineReceived(self, line: bytes) -> None:
        if self._intake is _Intake.DRAINING:
            return
        known = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > known:  # that was a request line
            parts = line.split()
            if len(parts) == 3:
                self.requests[-1].head = (parts[0], parts[1])

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        refusal = self.site.admit(request, self.length)
        if refusal is None:
            super().allHeadersReceived()  # and `100 Continue` if asked for
            return
        self._refuse(request, refusal)
        self.length = 0  # so the request is handed over now, without its body

    def body_over_cap(self, request: WebRequest) -> None:
        """A body grew past MAX_BODY: refuse it now, mid-body."""
        self._refuse(request, HTTPError(413, TOO_LARGE))
        self.allContentReceived()

    def _refuse(self, request: WebRequest, error: HTTPError) -> None:
        self._move(_Intake.REFUSING)
        request.refuse(error)
        self.persistent = False
        method, target = request.head
        log.info(
            "refused {method} {path} from {client}: {status} {reason}",
            method=method.decode("ascii", "backslashreplace"),
            path=redact_path(target),
            client=self._peer,
            status=error.status,
            reason=str(error),
        )

    def refuse_head(self, status: int, message: str) -> None:
        if self._intake is not _Intake.OPEN:
            return
        self._move(_Intake.DRAINING)
        self.persistent = False
        log.info(
            "refused a request from {client}: {status} {reason}",
            client=self._peer,
            status=status,
            reason=message,
        )
        assert self.transport is not None
        self.transport.write(error_response(status, message))
        self.loseConnection()
        self.setTimeout(LINGER_SECONDS)

    def allContentReceived(self) -> None:
        if self._intake is _Intake.DRAINING:
            return  # the end of a refused body
        if self._intake is _Intake.OPEN:
            super().allContentReceived()
            return
        self._move(_Intake.DRAINING)
        super().allContentReceived()  # answers the refusal, then closes
        if not self._lost:
            self.setTimeout(LINGER_SECONDS)

    def timeoutConnection(self) -> None:
        if self._intake is not _Intake.DRAINING:
            super().timeoutConnection()
            return
        log.info("cut off {client}: still sending after a refusal", client=self._peer)
        self._abort()

    def _abort(self) -> None:
        # TLSMemoryBIOProtocol and TCP transports both abort.
        cast(ITCPTransport, self.transport).abortConnection()


class WebSite(Site):
    """The proxy's site: security headers on every answer, no tracebacks,
    an access log without secrets, requests admitted on their headers."""

    displayTracebacks = False
    protocol = WebChannel  # type: ignore[assignment]  # HTTP/1.1, not H2
    requestFactory = WebRequest

    def __init__(
        self, root: Resource, reactor: IReactorTime, connections: PeerCounter
    ) -> None:
        super().__init__(root, logFormatter=access_log_line, reactor=reactor)
        self.connections = connections

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]  # WebChannel speaks HTTP/1.1 only

    def admit(self, request: WebRequest, length: int | None) -> HTTPError | None:
        """The route's own rule for a request whose headers are in."""
        method, target = request.head
        resource = self._route(target, request)
        if isinstance(resource, Admits):
            return resource.admit(request, method, length)
        return no_body(length)

    def _route(self, target: bytes, request: WebRequest) -> Resource:
        # As Request.process and getChildForRequest will walk it later.
        resource = self.resource
        for segment in target.split(b"?", 1)[0][1:].split(b"/"):
            if resource.isLeaf:
                break
            resource = resource.getChildWithDefault(unquote_to_bytes(segment), request)
        return resource

    def getResourceFor(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if isinstance(request, WebRequest) and request.refusal is not None:
            request.setHeader(b"connection", b"close")
            return ErrorResource(request.refusal.status, str(request.refusal))
        return super().getResourceFor(request)
