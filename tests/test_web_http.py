"""The web listener's HTTP layer, driven in memory through a real HTTPChannel.

Each test builds the real site, connects a channel of it to a
``StringTransport``, writes raw HTTP bytes and reads the raw answer.
"""

from __future__ import annotations

import io
import json
import tempfile
from typing import IO, Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from teleconch.auth import protocol as api
from teleconch.web.site import RateLimiter, WebConfig, WebSite, make_site
from teleconch.web.static_files import STATIC_DIR, StaticFiles, read_static_files

TOKEN = "s3cr3t-invite-token"


class FakeAgent:
    """The three AuthAgent calls the site makes, answered at once."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def get_invite(self, token: str) -> api.InviteInfo:
        if self.fail:
            raise RuntimeError("the database is on fire")
        uri = "otpauth://totp/x:alice?secret=ABC"
        return api.InviteInfo(
            user="alice", totp_secret="ABC", otpauth_uri=uri, expires=1
        )

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        return "alice"

    async def authenticate_ssh_user(self, **kw: Any) -> api.IssuedCertificate:
        return api.IssuedCertificate(
            username="alice", cert="c", valid_before=1, host_signers=()
        )


def site(**kw: Any) -> WebSite:
    agent = kw.pop("agent", FakeAgent())
    return make_site(
        agent,
        WebConfig(cluster_name="test.example", proxy_ssh_addr="127.0.0.1:3023"),
        Clock(),
        StaticFiles(read_static_files(STATIC_DIR)),
        **kw,
    )


@attrs.frozen
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answers(data: bytes) -> list[Answer]:
    """Split raw HTTP/1.1 responses (Content-Length or chunked bodies)."""
    answers = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            body, data = data[:n], data[n:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size, _, data = data.partition(b"\r\n")
                n = int(size, 16)
                body, data = body + data[:n], data[n + 2 :]
                if n == 0:
                    break
        elif status >= 200:
            body, data = data, b""
        answers.append(Answer(status, headers, body))
    return answers


@attrs.define
class Wire:
    """One client connection to the site, in memory."""

    channel: HTTPChannel
    transport: StringTransport

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def answers(self) -> list[Answer]:
        return parse_answers(self.transport.value())

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionError("closed")))


def connect(s: WebSite, host: str = "10.0.0.1", port: int = 40000) -> Wire:
    addr = IPv4Address("TCP", host, port)
    channel = s.buildProtocol(addr)
    assert channel is not None
    transport = StringTransport(peerAddress=addr)
    channel.makeConnection(transport)
    return Wire(channel, transport)


def get(s: WebSite, path: str, headers: bytes = b"") -> Answer:
    wire = connect(s)
    wire.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + headers + b"\r\n")
    [answer] = wire.answers()
    wire.close()
    return answer


def test_invite_tokens_are_masked_in_the_access_log() -> None:
    """The access log names the invite URLs but never the token in them,
    whatever way the path is spelled."""
    s = site()
    s.logFile = io.StringIO()
    for path in [
        f"/web/invite/{TOKEN}",
        f"/v1/webapi/users/invite/{TOKEN}",
        f"/web/%69nvite/{TOKEN}?x=1",
        f"/web/invite/{TOKEN}/more",
    ]:
        assert (
            get(
                s, path, b"Referer: https://x/web/invite/" + TOKEN.encode() + b"\r\n"
            ).status
            == 200
        )
    logged = s.logFile.getvalue()
    assert TOKEN not in logged
    assert logged.count("/web/invite/") + logged.count("/users/invite/") >= 3
    assert len(logged.splitlines()) == 4


def test_invite_tokens_are_masked_in_the_sites_own_log_lines() -> None:
    """An error answering an invite URL is logged with the token masked."""
    s = site(agent=FakeAgent(fail=True))
    with capturedLogs() as events:
        assert get(s, f"/v1/webapi/users/invite/{TOKEN}").status == 500
    assert events
    for event in events:
        assert TOKEN not in formatEvent(event)
        assert TOKEN not in repr({k: v for k, v in event.items() if k != "log_failure"})


def test_redact_path_masks_whatever_follows_an_invite_segment() -> None:
    """The one redaction rule, for every spelling of the invite URLs."""
    from teleconch.web.http import redact_path

    assert redact_path(b"/web/invite/abc") == "/web/invite/<redacted>"
    assert redact_path(b"/v1/webapi/users/invite/abc?x=1") == (
        "/v1/webapi/users/invite/<redacted>"
    )
    assert redact_path(b"/web/%49NVITE/abc/def") == "/web/%49NVITE/<redacted>"
    assert redact_path(b"/v1/webapi/users/invite?token=abc") == (
        "/v1/webapi/users/invite/<redacted>"
    )
    assert redact_path(b"/v1/webapi/users/invite") == "/v1/webapi/users/invite"
    assert redact_path(b"/v1/webapi/ping?a=b") == "/v1/webapi/ping?a=b"
    assert redact_path(b"/\xff") == "/\\xff"


def _assert_our_404(answer: Answer) -> None:
    assert answer.status == 404
    assert answer.headers[b"content-type"] == b"application/json"
    assert answer.json() == {"error": {"message": "not found"}}
    assert answer.headers[b"x-frame-options"] == b"DENY"
    assert answer.headers[b"referrer-policy"] == b"no-referrer"


def test_static_directories_are_never_listed() -> None:
    """The static directory, however named, is a JSON 404, not a listing."""
    s = site()
    for path in ["/web/static/", "/web/static", "/web/static/.", "/web/static/./"]:
        _assert_our_404(get(s, path))


def test_unknown_paths_at_any_depth_get_our_json_404() -> None:
    """No path reaches Twisted's HTML error pages or a redirect (but /web
    itself, which goes to the home page: tests/test_web_session_api.py)."""
    s = site()
    for path in [
        "//etc/passwd",
        "/web/static//etc/passwd",
        "/web/static/../../etc/passwd",
        "/web/static/%2e%2e/site.py",
        "/web/static/style.css/x",
        "/web/nowhere",
        "/v1",
        "/v1/webapi",
        "/v1/webapi/users",
    ]:
        _assert_our_404(get(s, path))


def test_a_static_path_with_a_nul_or_bad_bytes_is_a_json_404_without_a_traceback() -> (
    None
):
    """Names no file can have are simply not found: nothing is logged as a failure."""
    s = site()
    with capturedLogs() as events:
        for path in ["/web/static/%00", "/web/static/a%00.css", "/web/static/%ff"]:
            _assert_our_404(get(s, path))
    assert [e for e in events if "log_failure" in e] == []


def test_static_files_are_served_with_their_type() -> None:
    """The UI's files come with a content type and the security headers."""
    s = site()
    css = get(s, "/web/static/style.css")
    assert css.status == 200
    assert css.headers[b"content-type"].startswith(b"text/css")
    assert css.body == (STATIC_DIR / "style.css").read_bytes()
    js = get(s, "/web/static/invite.js")
    assert js.headers[b"content-type"].startswith(b"text/javascript")
    assert js.headers[b"x-content-type-options"] == b"nosniff"


def test_unsupported_methods_get_a_json_405() -> None:
    """A method a URL does not answer is refused in the API's error shape."""
    s = site()
    for request in [
        b"DELETE /v1/webapi/ping HTTP/1.1\r\n\r\n",
        b"PUT /web/static/style.css HTTP/1.1\r\n\r\n",
        b"OPTIONS /web/invite/x HTTP/1.1\r\n\r\n",
    ]:
        wire = connect(s)
        wire.send(request)
        [answer] = wire.answers()
        wire.close()
        assert answer.status == 405
        assert answer.json() == {"error": {"message": "method not allowed"}}


CERTS = b"POST /v1/webapi/ssh/certs HTTP/1.1\r\nHost: x\r\n"
JSON = b"Content-Type: application/json\r\n"
LOGIN = json.dumps(
    {"user": "alice", "password": "p", "otp_token": "1", "pub_key": "k"}
).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_content_length_over_the_cap_is_refused_on_the_headers() -> None:
    """413 and a close as soon as the headers are in, with or without
    ``Expect: 100-continue``; never a ``100 Continue`` for a body we refuse."""
    for expect in [b"Expect: 100-continue\r\n", b""]:
        wire = connect(site())
        wire.send(CERTS + JSON + expect + b"Content-Length: 1000000000\r\n\r\n")
        assert b"100 Continue" not in wire.transport.value()
        [answer] = wire.answers()
        assert answer.status == 413
        assert "too large" in answer.json()["error"]["message"]
        assert answer.headers[b"connection"] == b"close"
        assert answer.headers[b"x-frame-options"] == b"DENY"
        assert wire.transport.disconnecting
        wire.close()


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_cap_and_never_spooled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cap is counted as chunks arrive: the 413 goes out with the chunk that
    passes it, before the body ends, and no temporary file is ever made."""
    spooled: list[object] = []
    real = tempfile.TemporaryFile

    def spooling(*a: object, **kw: object) -> IO[bytes]:
        spooled.append(a)
        return real()

    monkeypatch.setattr(tempfile, "TemporaryFile", spooling)
    wire = connect(site())
    wire.send(CERTS + JSON + b"Transfer-Encoding: chunked\r\n\r\n")
    wire.send(_chunk(b"x" * 60_000))
    assert wire.answers() == []
    wire.send(_chunk(b"x" * 10_000))
    [answer] = wire.answers()
    assert answer.status == 413
    assert wire.transport.disconnecting
    wire.send(_chunk(b"x" * 1_000_000) + b"0\r\n\r\n")  # dropped, not parsed
    assert len(wire.answers()) == 1
    assert spooled == []
    wire.close()


def test_a_body_within_the_cap_is_still_read() -> None:
    """A login of ordinary size, by length (after ``100 Continue``) or chunked."""
    s = site()
    wire = connect(s)
    wire.send(
        CERTS
        + JSON
        + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(LOGIN)
    )
    assert wire.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    wire.transport.clear()
    wire.send(LOGIN)
    wire.send(CERTS + JSON + b"Transfer-Encoding: chunked\r\n\r\n")
    wire.send(_chunk(LOGIN[:10]) + _chunk(LOGIN[10:]) + b"0\r\n\r\n")
    answers = wire.answers()
    assert [a.status for a in answers] == [200, 200]
    assert answers[1].json()["username"] == "alice"
    wire.close()


def test_a_body_where_none_is_taken_is_refused_on_the_headers() -> None:
    """Only the POST routes take a body; anywhere else a body is a 413."""
    s = site()
    for head in [
        b"GET /v1/webapi/ping HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
        b"POST /web/static/style.css HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
        b"POST /nowhere HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]:
        wire = connect(s)
        wire.send(head)
        [answer] = wire.answers()
        assert answer.status == 413
        assert wire.transport.disconnecting
        wire.close()


def test_the_rate_limit_is_applied_before_the_body_is_read() -> None:
    """Once an address has used its attempts, the next login is refused on its
    headers: no ``100 Continue``, no body read."""
    clock = Clock()
    limiter = RateLimiter(clock, capacity=2)
    s = site(limiter=limiter)
    for _ in range(2):
        wire = connect(s)
        wire.send(CERTS + JSON + b"Content-Length: %d\r\n\r\n" % len(LOGIN) + LOGIN)
        assert [a.status for a in wire.answers()] == [200]
        wire.close()
    wire = connect(s)
    wire.send(CERTS + JSON + b"Expect: 100-continue\r\nContent-Length: 60000\r\n\r\n")
    assert b"100 Continue" not in wire.transport.value()
    [answer] = wire.answers()
    assert answer.status == 429
    assert "wait a minute" in answer.json()["error"]["message"]
    assert wire.transport.disconnecting
    wire.close()
    assert limiter.allow("10.0.0.2")  # another address is not held up


def test_a_refused_client_that_keeps_sending_is_cut_off_after_a_grace_period() -> None:
    """After a refusal the connection closes politely; bytes that keep coming
    are dropped, and the connection is aborted once the grace period is over."""
    s = site()
    wire = connect(s)
    wire.send(CERTS + JSON + b"Content-Length: 1000000000\r\n\r\n")
    assert wire.transport.disconnecting and not wire.transport.disconnected
    for _ in range(10):
        wire.send(b"x" * 100_000)
        s.reactor.advance(1)  # type: ignore[attr-defined]
    assert wire.transport.disconnected
    assert len(wire.answers()) == 1
    wire.close()


def test_connections_per_address_are_capped_and_counted_back_to_zero() -> None:
    """Past the cap an address's new connections are dropped at once; other
    addresses are unaffected; every close is counted."""
    s = site(max_connections_per_address=2)
    first = [connect(s, "10.0.0.1", port) for port in (1, 2)]
    extra = connect(s, "10.0.0.1", 3)
    assert extra.transport.disconnected
    assert not any(w.transport.disconnecting for w in first)
    other = connect(s, "10.0.0.2", 4)
    assert not other.transport.disconnecting
    assert s.connections.count("10.0.0.1") == 2
    for wire in [*first, extra, other]:
        wire.close()
    assert s.connections.count("10.0.0.1") == 0
    assert s.connections.total == 0
    again = connect(s, "10.0.0.1", 5)
    assert not again.transport.disconnecting
    again.close()


def test_a_refused_body_is_one_log_line_with_the_reason() -> None:
    """Invalid JSON is a 400 and one info line saying why, never a failure."""
    s = site()
    wire = connect(s)
    body = b'{"user": "\\ud800"}'
    with capturedLogs() as events:
        wire.send(CERTS + JSON + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    [answer] = wire.answers()
    wire.close()
    assert answer.status == 400
    [event] = events
    assert "log_failure" not in event
    assert "not valid JSON" in formatEvent(event)
