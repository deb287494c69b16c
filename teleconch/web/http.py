"""The HTTP layer under the web API: the site, its channel and requests.

What twisted.web does before a resource runs is guarded here: security
headers on every answer, secrets masked in every logged path.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import provider

log = Logger()

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


def error_body(request: Request, status: int, message: str) -> bytes:
    """Set up an error answer in the API's shape; the body to return from render."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": {"message": message}}).encode("utf-8")


class ErrorResource(Resource):
    """A leaf that answers every method with one JSON error."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Request) -> bytes:
        return error_body(request, self.status, self.message)


class WebRequest(Request):
    """A request whose description never names a secret in its path."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method!r} {redact_path(self.uri)}>"


class WebSite(Site):
    """The proxy's site: security headers on every answer, no tracebacks,
    an access log without secrets."""

    displayTracebacks = False
    requestFactory = WebRequest

    def __init__(self, root: Resource, reactor: IReactorTime) -> None:
        super().__init__(root, logFormatter=access_log_line, reactor=reactor)

    def getResourceFor(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return super().getResourceFor(request)
