"""The JSON layer every web API route stands on.

A route is a `JSONResource` whose ``get``/``post``/``put``/``delete``
coroutines return what to answer.  Errors become ``{"error": {"message":
...}}`` with a status that fits; nothing internal (a traceback, a secret) is
ever written to a client.  What a route admits (a body, a rate limit) is
decided on the request's headers, before a byte of its body is read
(`JSONResource.admit`, called by ``teleconch.web.http.WebChannel``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as CallTimedOut
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthUnavailable
from teleconch.refusals import RefusalAudit
from teleconch.web.http import (
    MAX_BODY,
    TOO_LARGE,
    ErrorResource,
    HTTPError,
    WebRequest,
    client_host,
    error_body,
    no_body,
    redact_path,
    send_json,
)

log = Logger()


STATUS = {
    api.BadParameter: 400,
    api.AuthenticationFailed: 401,
    api.AccessDenied: 403,
    api.LockedOut: 403,
    api.NotFoundError: 404,
    api.AlreadyExistsError: 409,
    api.RateLimited: 429,
    api.SessionExpired: 401,
}

#: The methods that carry a JSON body; every other one takes none.
BODY_METHODS = frozenset({b"POST", b"PUT"})
JSON_ONLY = "send the request body as application/json"


@attrs.define
class RateLimiter:
    """A token bucket per client address, against password spraying.

    The per-user lock-out in the auth service stops guessing one account;
    this slows one address guessing many.
    """

    clock: IReactorTime
    capacity: float = 10.0
    per_second: float = 0.2
    _buckets: dict[str, tuple[float, float]] = attrs.field(factory=dict)

    def allow(self, key: str) -> bool:
        now = self.clock.seconds()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.per_second)
        if len(self._buckets) > 100_000:
            self._buckets.clear()
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True


class DenialAudit:
    """Refusals the proxy makes, written to the audit log as ``web.api.denied``.

    Never waited on (the answer goes at once), and bounded per address by
    `RefusalAudit`: a burst, then a steady rate, with the rows it did not
    write counted in the next one (``suppressed``), so a flood of refused
    requests is not a flood of audit calls.
    """

    EVENT = "web.api.denied"

    def __init__(
        self,
        agent: Any,
        clock: IReactorTime,
        burst: int = 10,
        per_second: float = 1.0,
    ) -> None:
        async def write(row: dict[str, Any]) -> None:
            user = str(row.pop("user", ""))
            await agent.emit_event(self.EVENT, user=user, success=False, **row)

        self._audit = RefusalAudit(
            clock, write, burst, per_second, what="refused web API requests"
        )

    def refused(
        self, request: Request, method: bytes, error: HTTPError, user: str = ""
    ) -> None:
        host = client_host(request)
        self._audit.refused(
            host,
            {
                "user": user,
                "method": method.decode("ascii", "backslashreplace"),
                "path": redact_path(request.uri),
                "client_addr": host,
                "status": error.status,
                "reason": str(error),
            },
        )

    def stop(self) -> None:
        self._audit.stop()


Handler = Callable[[Request], Awaitable[Any]]


class UserRefused(HTTPError):
    """A refusal of a known user's request (the audit row names them)."""

    def __init__(self, status: int, message: str, user: str) -> None:
        super().__init__(status, message)
        self.user = user


def is_json(request: Request) -> bool:
    ctype = (request.getHeader("content-type") or "").split(";", 1)[0]
    return ctype.strip().lower() == "application/json"


def json_body(request: Request) -> dict[str, Any]:
    if not is_json(request):
        raise HTTPError(415, JSON_ONLY)
    assert request.content is not None
    request.content.seek(0)
    body = request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise HTTPError(413, TOO_LARGE)
    try:
        data = json.loads(body)
        _check_text(data)
    except (ValueError, RecursionError):
        raise HTTPError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return data


MAX_JSON_DEPTH = 32


def _check_text(data: Any) -> None:
    """Refuse what json.loads accepts but nothing after it can carry.

    A lone surrogate (``"\\ud800"``) is not UTF-8 text: it would fail later,
    when encoded for the auth service.  Nesting is bounded too.
    """
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError("nested too deeply")
        if isinstance(value, str):
            value.encode("utf-8")  # UnicodeEncodeError is a ValueError
        elif isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def field(data: dict[str, Any], name: str, kind: type = str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise HTTPError(400, f"field {name!r} is missing or not a {kind.__name__}")
    return value


class JSONResource(Resource):
    """A leaf answering JSON, from coroutines; subclasses define the methods.

    A POST or PUT here takes a JSON body of up to MAX_BODY; with a
    ``limiter``, it is held to that rate limit, checked when its headers are
    in, before a byte of the body is read.  Other methods take no body.
    With ``denials``, every refusal made here is audited through it.
    """

    isLeaf = True
    get: Handler | None = None
    post: Handler | None = None
    put: Handler | None = None
    delete: Handler | None = None
    limiter: RateLimiter | None = None
    denials: DenialAudit | None = None
    too_many = "too many attempts from your address; wait a minute"

    def handler(self, method: bytes) -> Handler | None:
        if method == b"HEAD":
            method = b"GET"
        if method not in (b"GET", b"POST", b"PUT", b"DELETE"):
            return None
        found: Handler | None = getattr(self, method.decode().lower())
        return found

    def admit(
        self, request: WebRequest, method: bytes, length: int | None
    ) -> HTTPError | None:
        refusal = self.refusal_on_headers(request, method, length)
        if refusal is not None and self.denials is not None:
            self.denials.refused(request, method, refusal)
        return refusal

    def refusal_on_headers(
        self, request: Request, method: bytes, length: int | None
    ) -> HTTPError | None:
        """Why this request is refused on its headers alone, if it is."""
        if method not in BODY_METHODS or self.handler(method) is None:
            return no_body(length)
        if length is not None and length > MAX_BODY:
            return HTTPError(413, TOO_LARGE)
        if self.limiter is not None and not self.limiter.allow(client_host(request)):
            return HTTPError(429, self.too_many)
        return None

    def render(self, request: Request) -> int:
        assert request.method is not None
        handler = self.handler(request.method)
        if handler is None:
            send_json(request, 405, {"error": {"message": "method not allowed"}})
            return NOT_DONE_YET
        d = Deferred.fromCoroutine(self._answer(request, handler))
        d.addErrback(
            lambda f: log.failure("answering {uri}", f, uri=redact_path(request.uri))
        )
        return NOT_DONE_YET

    async def _answer(self, request: Request, handler: Handler) -> None:
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        try:
            status, payload = 200, await handler(request)
        except HTTPError as e:
            if self.denials is not None:
                user = e.user if isinstance(e, UserRefused) else ""
                self.denials.refused(request, request.method, e, user)
            status, payload = e.status, refusal_payload(request, e)
        except Exception:
            status, payload = failure_payload(request, Failure())
        if not gone:  # the client may have hung up while the auth service answered
            send_json(request, status, payload)


def refusal_payload(request: Request, e: HTTPError) -> dict[str, Any]:
    log.info(
        "refused {method} {path} from {client}: {status} {reason}",
        method=request.method.decode("ascii", "backslashreplace"),
        path=redact_path(request.uri),
        client=client_host(request),
        status=e.status,
        reason=str(e),
    )
    return {"error": {"message": str(e)}}


def failure_payload(request: Request, failure: Failure) -> tuple[int, dict[str, Any]]:
    """The status and answer for an exception out of a handler: the auth
    service's refusals as it wrote them, anything else without its details."""
    e = failure.value
    path = redact_path(request.uri)
    if isinstance(e, api.AuthAPIError):
        return STATUS.get(type(e), 400), {"error": {"message": str(e)}}
    if isinstance(e, AuthUnavailable | CallTimedOut | CancelledError):
        log.warn(
            "auth service unavailable answering {path}: {error}",
            path=path,
            error=str(e) or type(e).__name__,
        )
        message = "the auth service is unreachable; try again shortly"
        return 503, {"error": {"message": message}}
    if isinstance(e, amp.UnhandledCommand):
        # A proxy newer than its auth service (an upgrade half done).
        log.warn(
            "the auth service does not know the command answering {path}: {error}",
            path=path,
            error=str(e),
        )
        message = (
            "the auth service does not support this request: it is older than this "
            "proxy; the administrator should upgrade it"
        )
        return 502, {"error": {"message": message}}
    if isinstance(e, amp.UnknownRemoteError):
        # The auth service failed on its side and logged why; say where to look.
        log.warn("the auth service failed answering {path}", path=path)
        message = (
            "the auth service failed to answer; the administrator will find the "
            "details in the auth service's log"
        )
        return 502, {"error": {"message": message}}
    log.failure("internal error answering {uri}", failure, uri=path)
    message = (
        "internal error; the administrator will find the details in the proxy's log"
    )
    return 500, {"error": {"message": message}}


class Dir(Resource):
    """An inner node of the URL tree: it and its unknown children are a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return ErrorResource(404, "not found")

    def render(self, request: Request) -> bytes:
        return error_body(request, 404, "not found")
