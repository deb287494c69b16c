"""The web listener's HTTP layer, driven in memory through a real HTTPChannel.

Each test builds the real site, connects a channel of it to a
``StringTransport``, writes raw HTTP bytes and reads the raw answer.
"""

from __future__ import annotations

import io
import json
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from teleconch.web.site import WebConfig, WebSite, make_site
from teleconch.web.static_files import STATIC_DIR, StaticFiles, read_static_files

TOKEN = "s3cr3t-invite-token"


class FakeAgent:
    """The three AuthAgent calls the site makes, answered at once."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def get_invite(self, token: str) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("the database is on fire")
        uri = "otpauth://totp/x:alice?secret=ABC"
        return {"user": "alice", "totp_secret": "ABC", "otpauth_uri": uri, "expires": 1}

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        return "alice"

    async def authenticate_ssh_user(self, **kw: Any) -> dict[str, Any]:
        return {"username": "alice", "cert": "c", "valid_before": 1, "host_signers": []}


def site(**kw: Any) -> WebSite:
    agent = kw.pop("agent", FakeAgent())
    return make_site(
        agent,  # type: ignore[arg-type]
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
    return Wire(channel, transport)  # type: ignore[arg-type]


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
    """No path reaches Twisted's HTML error pages or a redirect."""
    s = site()
    for path in [
        "//etc/passwd",
        "/web/static//etc/passwd",
        "/web/static/../../etc/passwd",
        "/web/static/%2e%2e/site.py",
        "/web/static/style.css/x",
        "/web",
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
