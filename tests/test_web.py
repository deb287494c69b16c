"""The proxy's web listener: JSON errors, security headers, rate limits.

The tests on a cluster (harness.start_cluster: real TLS listeners on
127.0.0.1) are marked interop; the same routes are pinned without sockets in
tests/test_webapi_stubtreq.py and tests/test_web_http.py.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from teleconch.auth import protocol as api
from teleconch.client.webapi import _Insecure, _read_body
from teleconch.web.jsonapi import JSONResource, RateLimiter
from tests.harness import Cluster, start_cluster


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


async def _request(
    c: Cluster,
    method: bytes,
    path: str,
    body: bytes | None = None,
    ctype: bytes | None = None,
) -> tuple[int, Headers, bytes]:
    from io import BytesIO

    from twisted.web.client import FileBodyProducer

    agent = Agent(reactor, contextFactory=_Insecure())
    headers = Headers()
    if ctype:
        headers.addRawHeader(b"content-type", ctype)
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    response = await agent.request(
        method, f"https://{c.web_addr}{path}".encode(), headers, producer
    )
    return response.code, response.headers, await _read_body(response)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_every_answer_carries_security_headers(cluster: Cluster) -> None:
    """CSP, no framing, no sniffing, no referrer (invite tokens are in URLs), HSTS."""
    for path in ["/v1/webapi/ping", "/web/invite/abc", "/nowhere"]:
        _, headers, _ = await _request(cluster, b"GET", path)
        assert headers.getRawHeaders(b"x-frame-options") == [b"DENY"]
        assert headers.getRawHeaders(b"referrer-policy") == [b"no-referrer"]
        assert (
            b"default-src 'self'"
            in headers.getRawHeaders(b"content-security-policy", [b""])[0]
        )
        assert headers.getRawHeaders(b"strict-transport-security")


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_unknown_paths_get_a_json_404(cluster: Cluster) -> None:
    """A wrong URL is answered in the API's error shape, not an HTML page."""
    for path in ["/nowhere", "/v1/webapi/nothing", "/v1/webapi/users/other"]:
        code, _, body = await _request(cluster, b"GET", path)
        assert code == 404
        assert json.loads(body)["error"]["message"] == "not found"


@pytest.mark.interop
@pytest.mark.parametrize(
    ("body", "ctype", "status", "needle"),
    [
        (b"{not json", b"application/json", 400, "not valid JSON"),
        (b"[1, 2]", b"application/json", 400, "JSON object"),
        (b'{"user": "a"}', b"text/plain", 415, "application/json"),
        (b'{"user": 5}', b"application/json", 400, "'user'"),
        (b"x" * (70 * 1024), b"application/json", 413, "too large"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_login_requests_get_a_clear_400(
    cluster: Cluster, body: bytes, ctype: bytes, status: int, needle: str
) -> None:
    """Bad bodies are refused with what is wrong, and the proxy keeps serving."""
    code, _, answer = await _request(
        cluster, b"POST", "/v1/webapi/ssh/certs", body, ctype
    )
    assert code == status
    assert needle in json.loads(answer)["error"]["message"]
    code, _, _ = await _request(cluster, b"GET", "/v1/webapi/ping")
    assert code == 200


_LOGIN = b'"password": "p", "otp_token": "1", "pub_key": "k"'


@pytest.mark.interop
@pytest.mark.parametrize(
    "body",
    [
        # json.loads accepts a lone surrogate; encoding it for the auth service fails.
        b'{"user": "\\ud800", ' + _LOGIN + b"}",
        b'{"\\udfff": 1, "user": "a", ' + _LOGIN + b"}",
        # Deep nesting that still fits under the body cap: a RecursionError.
        b"[" * 30000 + b"]" * 30000,
        b'{"user": "a", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}",
    ],
    ids=["lone-surrogate-value", "lone-surrogate-key", "deep-list", "deep-in-field"],
)
@pytest_twisted.ensureDeferred
async def test_unencodable_or_deeply_nested_json_is_a_400_without_a_traceback(
    cluster: Cluster, body: bytes
) -> None:
    """Text the auth service cannot carry, and nesting past the parser's limit,
    are the client's mistake: a JSON 400, and nothing critical in the log."""
    with capturedLogs() as events:
        code, _, answer = await _request(
            cluster, b"POST", "/v1/webapi/ssh/certs", body, b"application/json"
        )
    assert code == 400
    assert "not valid JSON" in json.loads(answer)["error"]["message"]
    assert [e for e in events if "log_failure" in e] == []
    assert all(e["log_level"] < LogLevel.error for e in events)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_the_invite_page_is_served_for_any_token(cluster: Cluster) -> None:
    """The sign-up page is static HTML whatever the token; the script does the rest."""
    code, headers, body = await _request(cluster, b"GET", "/web/invite/sometoken")
    assert code == 200
    assert headers.getRawHeaders(b"content-type", [b""])[0].startswith(b"text/html")
    assert b"/web/static/invite.js" in body


class _Boom(JSONResource):
    async def get(self, request: Any) -> Any:
        raise RuntimeError("db password is hunter2")


class _Denied(JSONResource):
    async def get(self, request: Any) -> Any:
        raise api.AccessDenied("not for you")


def _render(resource: JSONResource) -> tuple[int, dict[str, Any]]:
    request = DummyRequest([b""])
    resource.render(request)  # type: ignore[arg-type]
    assert request.finished
    # DummyRequest declares responseCode None until a resource sets one.
    code = cast(int, request.responseCode)
    return code, json.loads(b"".join(request.written))


def test_an_internal_error_reveals_nothing() -> None:
    """An unexpected exception becomes a generic 500; its text stays in the log."""
    code, body = _render(_Boom())
    assert code == 500
    assert "hunter2" not in json.dumps(body)
    assert "proxy's log" in body["error"]["message"]


def test_auth_api_errors_keep_their_message_and_map_to_a_status() -> None:
    """A refusal from the auth service reaches the client as it was written."""
    code, body = _render(_Denied())
    assert code == 403
    assert body == {"error": {"message": "not for you"}}


def test_rate_limiter_refills_over_time() -> None:
    """Ten quick attempts pass, the eleventh waits, and time refills the bucket."""
    clock = Clock()
    limiter = RateLimiter(clock)
    assert all(limiter.allow("10.0.0.1") for _ in range(10))
    assert not limiter.allow("10.0.0.1")
    assert limiter.allow("10.0.0.2")
    clock.advance(5)
    assert limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1")


class _RawClient(Protocol):
    """Writes raw HTTP over TLS and keeps every byte of the answer.

    It hangs up by itself on a ``100 Continue`` (the server was wrong to send
    one, and would wait for the body).
    """

    def __init__(self, head: bytes, body: list[bytes]) -> None:
        self.head = head
        self.body = body
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.head)
        for chunk in self.body:
            self.transport.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.startswith(b"HTTP/1.1 100 "):
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.received)


async def _raw(c: Cluster, head: bytes, body: list[bytes] | None = None) -> bytes:
    port = c.web_addr.port
    endpoint = wrapClientTLS(
        _Insecure().creatorForNetloc(b"127.0.0.1", port),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    client = _RawClient(head, body or [])
    await connectProtocol(endpoint, client)
    return await client.done


async def _connections_closed(c: Cluster) -> None:
    assert c.service.proxy is not None and c.service.proxy.web_site is not None
    await c.service.proxy.web_site.connections.idle()


_CERTS = (
    b"POST /v1/webapi/ssh/certs HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\n"
)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_expect_continue_with_a_huge_length_gets_a_413_and_a_close_over_tls(
    cluster: Cluster,
) -> None:
    """A gigabyte announced with ``Expect: 100-continue`` is refused on the
    headers: no ``100 Continue``, a JSON 413, the connection closed by the
    proxy, and its connection count back to zero."""
    received = await _raw(
        cluster,
        _CERTS + b"Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n",
    )
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"request body too large" in received
    await _connections_closed(cluster)


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_a_large_chunked_upload_is_cut_off_at_the_cap_over_tls(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 MiB sent chunked, with no end: the proxy answers 413 at the cap and
    closes, without waiting for the end, and never spools it to a file."""
    spooled: list[object] = []
    real = tempfile.TemporaryFile

    def spooling(*a: object, **kw: object) -> IO[bytes]:
        spooled.append(a)
        return real()

    monkeypatch.setattr(tempfile, "TemporaryFile", spooling)
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
    received = await _raw(
        cluster, _CERTS + b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 64
    )
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"request body too large" in received
    assert spooled == []
    await _connections_closed(cluster)
    code, _, _ = await _request(cluster, b"GET", "/v1/webapi/ping")
    assert code == 200


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_connections_past_the_per_address_cap_are_dropped(tmp_path: Path) -> None:
    """proxy_service.max_web_connections_per_address holds over real TLS: with
    a cap of one, a second connection from 127.0.0.1 is dropped at once, and
    the count goes back to zero when the first one closes."""
    c = await start_cluster(
        tmp_path / "data", {"proxy_service": {"max_web_connections_per_address": 1}}
    )
    try:
        assert c.service.proxy is not None and c.service.proxy.web_site is not None
        connections = c.service.proxy.web_site.connections
        port = c.web_addr.port
        endpoint = wrapClientTLS(
            _Insecure().creatorForNetloc(b"127.0.0.1", port),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        first = _RawClient(b"", [])
        await connectProtocol(endpoint, first)
        second = _RawClient(b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\n\r\n", [])
        await connectProtocol(endpoint, second)
        assert await second.done == b""
        assert connections.count("127.0.0.1") == 1
        assert first.transport is not None
        first.transport.loseConnection()
        await first.done
        await _connections_closed(c)
        code, _, _ = await _request(c, b"GET", "/v1/webapi/ping")
        assert code == 200
    finally:
        await c.stop()
