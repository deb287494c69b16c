"""The proxy's HTTPS listener: the JSON web API and the static pages.

Resources are thin: they check the shape of a request and hand it to the
AuthAgent.  Errors become ``{"error": {"message": ...}}`` with a status that
fits; nothing internal (a traceback, a secret) is ever written to a client.
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

from teleconch import __version__
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent, AuthUnavailable
from teleconch.totp import qr_svg
from teleconch.web.http import (
    MAX_BODY,
    TOO_LARGE,
    ErrorResource,
    HTTPError,
    PeerCounter,
    WebRequest,
    WebSite,
    client_host,
    error_body,
    no_body,
    redact_path,
    send_json,
)
from teleconch.web.static_files import StaticFiles

log = Logger()


_STATUS = {
    api.BadParameter: 400,
    api.AuthenticationFailed: 401,
    api.AccessDenied: 403,
    api.LockedOut: 403,
    api.NotFoundError: 404,
    api.AlreadyExistsError: 409,
    api.RateLimited: 429,
    api.SessionExpired: 401,
}


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


#: The renewals' own bucket per address: a burst and a steady rate.
RENEW_BURST = 200.0
RENEW_PER_SECOND = 5.0


@attrs.frozen
class WebConfig:
    cluster_name: str
    proxy_ssh_addr: str
    #: ``proxy_service.web_idle_timeout``: sent with every web session call.
    idle_timeout: int = 30 * 60


Handler = Callable[[Request], Awaitable[Any]]


def _json_body(request: Request) -> dict[str, Any]:
    if not (request.getHeader("content-type") or "").startswith("application/json"):
        raise HTTPError(415, "send the request body as application/json")
    assert request.content is not None
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


def _field(data: dict[str, Any], name: str, kind: type = str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise HTTPError(400, f"field {name!r} is missing or not a {kind.__name__}")
    return value


class JSONResource(Resource):
    """A leaf answering JSON, from coroutines; subclasses define get/post.

    A POST here takes a JSON body of up to MAX_BODY; with a ``limiter``, it
    is held to that rate limit, checked when its headers are in, before a
    byte of the body is read.  Nothing else takes a body.
    """

    isLeaf = True
    get: Handler | None = None
    post: Handler | None = None
    limiter: RateLimiter | None = None
    too_many = "too many attempts from your address; wait a minute"

    def admit(
        self, request: WebRequest, method: bytes, length: int | None
    ) -> HTTPError | None:
        if method != b"POST" or self.post is None:
            return no_body(length)
        if length is not None and length > MAX_BODY:
            return HTTPError(413, TOO_LARGE)
        if self.limiter is not None and not self.limiter.allow(client_host(request)):
            return HTTPError(429, self.too_many)
        return None

    def render(self, request: Request) -> int | bytes:
        handler = {b"GET": self.get, b"HEAD": self.get, b"POST": self.post}
        return self._run(request, handler.get(request.method))

    def _run(self, request: Request, handler: Handler | None) -> int:
        if handler is None:
            send_json(request, 405, {"error": {"message": "method not allowed"}})
            return NOT_DONE_YET
        d = Deferred.fromCoroutine(_answer(request, handler))
        d.addErrback(
            lambda f: log.failure("answering {uri}", f, uri=redact_path(request.uri))
        )
        return NOT_DONE_YET


async def _answer(request: Request, handler: Handler) -> None:
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)
    try:
        payload = await handler(request)
        status = 200
    except HTTPError as e:
        status, payload = e.status, {"error": {"message": str(e)}}
        log.info(
            "refused {method} {path} from {client}: {status} {reason}",
            method=request.method.decode("ascii", "backslashreplace"),
            path=redact_path(request.uri),
            client=client_host(request),
            status=status,
            reason=str(e),
        )
    except api.AuthAPIError as e:
        status = _STATUS.get(type(e), 400)
        payload = {"error": {"message": str(e)}}
    except (AuthUnavailable, CallTimedOut, CancelledError) as e:
        log.warn(
            "auth service unavailable answering {path}: {error}",
            path=redact_path(request.uri),
            error=str(e) or type(e).__name__,
        )
        status = 503
        payload = {
            "error": {"message": "the auth service is unreachable; try again shortly"}
        }
    except amp.UnknownRemoteError:
        # The auth service failed on its side and logged why; say where to look.
        log.warn(
            "the auth service failed answering {path}", path=redact_path(request.uri)
        )
        status = 502
        payload = {
            "error": {
                "message": "the auth service failed to answer; the administrator will "
                "find the details in the auth service's log"
            }
        }
    except Exception:
        log.failure(
            "internal error answering {uri}", Failure(), uri=redact_path(request.uri)
        )
        status = 500
        payload = {
            "error": {
                "message": "internal error; the administrator will find the details "
                "in the proxy's log"
            }
        }
    if not gone:  # the client may have hung up while the auth service answered
        send_json(request, status, payload)


class PingResource(JSONResource):
    def __init__(self, config: WebConfig) -> None:
        super().__init__()
        self._config = config

    async def get(self, request: Request) -> Any:
        return {
            "cluster_name": self._config.cluster_name,
            "proxy_ssh_addr": self._config.proxy_ssh_addr,
            "server_version": __version__,
            "auth": {"second_factor": "otp", "type": "local"},
        }


class AgentResource(JSONResource):
    """A route answered through the AuthAgent, held to one rate limit."""

    def __init__(self, agent: AuthAgent, limiter: RateLimiter) -> None:
        super().__init__()
        self._agent = agent
        self.limiter = limiter


class InviteResource(AgentResource):
    """GET /v1/webapi/users/invite/<token>; POST /v1/webapi/users/invite."""

    async def get(self, request: Request) -> Any:
        if not request.postpath or not request.postpath[0]:
            raise HTTPError(404, "no invite token in the URL")
        token = request.postpath[0].decode("utf-8", "replace")
        invite = await self._agent.get_invite(token)
        return {
            "user": invite.user,
            "totp_secret": invite.totp_secret,
            "otpauth_uri": invite.otpauth_uri,
            "qr_svg": qr_svg(invite.otpauth_uri),
            "expires": invite.expires,
        }

    async def post(self, request: Request) -> Any:
        if request.postpath and request.postpath[0]:
            raise HTTPError(404, "POST the invite to /v1/webapi/users/invite")
        client = client_host(request)
        data = _json_body(request)
        user = await self._agent.complete_invite(
            _field(data, "token"),
            _field(data, "password"),
            _field(data, "otp_token"),
            client,
        )
        return {"user": user}


class SSHCertsResource(AgentResource):
    """POST /v1/webapi/ssh/certs: password + OTP for a short-lived certificate."""

    too_many = "too many login attempts from your address; wait a minute"

    async def post(self, request: Request) -> Any:
        client = client_host(request)
        data = _json_body(request)
        ttl = data.get("ttl", 0)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
            raise HTTPError(400, "field 'ttl' must be a whole number of seconds")
        issued = await self._agent.authenticate_ssh_user(
            user=_field(data, "user"),
            password=_field(data, "password"),
            otp_token=_field(data, "otp_token"),
            pub_key=_field(data, "pub_key"),
            ttl=ttl,
            client_addr=client,
        )
        return {
            "username": issued.username,
            "cert": issued.cert,
            "valid_before": issued.valid_before,
            "host_signers": [s.to_json() for s in issued.host_signers],
        }


class HostCAResource(JSONResource):
    """GET /v1/webapi/host/ca: the cluster's TLS CA, for a node to check its pin
    before it spends its token (a courtesy: anyone can relay these public
    certificates; what protects the node is the attested answer)."""

    def __init__(self, agent: AuthAgent, config: WebConfig) -> None:
        super().__init__()
        self._agent = agent
        self._config = config

    async def get(self, request: Request) -> Any:
        return {
            "cluster_name": self._config.cluster_name,
            "tls_ca_certs": [c.decode("ascii") for c in self._agent.identity.ca_pems],
        }


def _labels(data: dict[str, Any]) -> dict[str, str]:
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(v, str) for v in labels.values()
    ):
        raise HTTPError(400, "field 'labels' must be an object of strings")
    return labels


class HostCredentialsResource(AgentResource):
    """POST /v1/webapi/host/credentials: a node's public key, and its join
    token's name with a proof over the request (never the token), for its
    host certificate, the user CA and its registration (attested)."""

    too_many = "too many join attempts from your address; wait a minute"

    async def post(self, request: Request) -> Any:
        client = client_host(request)
        data = _json_body(request)
        document = await self._agent.join_openssh_node(
            token_name=_field(data, "token_name"),
            proof=_field(data, "proof"),
            name=_field(data, "node_name"),
            addr=_field(data, "addr"),
            labels=_labels(data),
            public_key=_field(data, "public_key"),
            client_addr=client,
        )
        return document.to_json()


class HostRenewResource(AgentResource):
    """POST /v1/webapi/host/renew: a joined node's certificate, signed by its key."""

    too_many = "too many renewals from your address; wait a minute"

    async def post(self, request: Request) -> Any:
        client = client_host(request)
        data = _json_body(request)
        document = await self._agent.renew_node_certificate(
            cert=_field(data, "cert"),
            timestamp=_field(data, "timestamp", int),
            signature=_field(data, "signature"),
            client_addr=client,
        )
        return document.to_json()


class _Page(Resource):
    """One static HTML page, whatever the rest of the path (the token).

    Read once at start (off the reactor, by the caller), not per request.
    """

    isLeaf = True

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self._html = html

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return error_body(request, 405, "method not allowed")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self._html


class _Dir(Resource):
    """An inner node of the URL tree: it and its unknown children are a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return ErrorResource(404, "not found")

    def render(self, request: Request) -> bytes:
        return error_body(request, 404, "not found")


def make_site(
    agent: AuthAgent,
    config: WebConfig,
    clock: IReactorTime,
    static: StaticFiles,
    limiter: RateLimiter | None = None,
    max_connections_per_address: int = 64,
    renew_limiter: RateLimiter | None = None,
    *,
    terminal: Resource | None = None,
) -> WebSite:
    limiter = limiter or RateLimiter(clock)
    # Renewals are signed by a node's own key (nothing to guess), and many
    # nodes behind one address renew at once: a bucket of their own, larger.
    renew_limiter = renew_limiter or RateLimiter(
        clock, capacity=RENEW_BURST, per_second=RENEW_PER_SECOND
    )
    root, v1, webapi, users, ssh, web, host = (_Dir() for _ in range(7))
    root.putChild(b"v1", v1)
    v1.putChild(b"webapi", webapi)
    webapi.putChild(b"ping", PingResource(config))
    webapi.putChild(b"users", users)
    users.putChild(b"invite", InviteResource(agent, limiter))
    webapi.putChild(b"ssh", ssh)
    ssh.putChild(b"certs", SSHCertsResource(agent, limiter))
    webapi.putChild(b"host", host)
    host.putChild(b"ca", HostCAResource(agent, config))
    host.putChild(b"credentials", HostCredentialsResource(agent, limiter))
    host.putChild(b"renew", HostRenewResource(agent, renew_limiter))

    # The web terminal: its socket, and the page that opens it.
    sites, cluster = _Dir(), _Dir()
    webapi.putChild(b"sites", sites)
    sites.putChild(config.cluster_name.encode(), cluster)
    cluster.putChild(
        b"connect",
        terminal
        or ErrorResource(503, "the web terminal is not available on this proxy"),
    )
    if static.has("console.html"):
        web.putChild(b"console", _Page(static.file("console.html").body))

    root.putChild(b"web", web)
    web.putChild(b"invite", _Page(static.file("invite.html").body))
    web.putChild(b"static", static)
    return WebSite(root, clock, PeerCounter(max_connections_per_address))
