"""The head of a request (request line and headers), guarded, in memory.

Every way Twisted's parser refuses a request gets our JSON error with the
security headers and a close, not Twisted's bare ``400 Bad Request``; a head
that takes too long is cut off.  Driven like ``test_web_http``: the real
site, a real channel of it on a ``StringTransport``, the site's ``Clock``.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.basic import LineReceiver
from twisted.web import http as twisted_http
from twisted.web.http import HTTPChannel

from teleconch.web.head import HEAD_SECONDS
from teleconch.web.http import LINGER_SECONDS, MAX_BODY, SECURITY_HEADERS
from tests.test_web_http import CERTS, JSON, LOGIN, Answer, Wire, connect, site

PING = b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\n"


def clock_of(wire: Wire) -> Clock:
    return wire.channel.site.reactor  # type: ignore[attr-defined]  # set by Site.buildProtocol


def refused(data: bytes | list[bytes], status: int) -> tuple[Answer, Wire]:
    """Send ``data`` on a new connection: it gets one JSON ``status`` and a close."""
    wire = connect(site())
    for piece in [data] if isinstance(data, bytes) else data:
        wire.send(piece)
    [answer] = wire.answers()
    assert answer.status == status, (answer, data[:80])
    assert answer.headers[b"content-type"] == b"application/json"
    assert int(answer.headers[b"content-length"]) == len(answer.body)
    assert answer.json()["error"]["message"]
    assert answer.headers[b"connection"] == b"close"
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name.lower()] == value
    assert wire.transport.disconnecting
    return answer, wire


REQUEST_LINES = [
    b"GET\r\n\r\n",
    b"GET /v1/webapi/ping\r\nHost: x\r\n\r\n",
    b"GET /v1/webapi/ping HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/webapi/ping FTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /v1/webapi/ping HTTP/1.1 x\r\nHost: x\r\n\r\n",
    b"\x00\x01\x02\x03 /v1/webapi/ping HTTP/1.1\r\n\r\n",
    b"GET  /v1/webapi/ping  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET\t/v1/webapi/ping\tHTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("line", REQUEST_LINES)
def test_a_malformed_request_line_gets_our_json_400_and_a_close(line: bytes) -> None:
    """Not Twisted's bare 400: our JSON error, security headers, a close;
    what the client sends after it is dropped unread."""
    answer, wire = refused(line, 400)
    assert "request line" in answer.json()["error"]["message"]
    wire.send(PING + b"\r\n")
    assert len(wire.answers()) == 1
    wire.close()


HEADERS = [
    b"NoColon\r\n",
    b"Bad Name: v\r\n",
    b": v\r\n",
    b"X-A: a\x00b\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: ten\r\n",
    b"Content-Length: 2\r\nContent-Length: 5\r\n",
    b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: bogus\r\n",
]


@pytest.mark.parametrize("header", HEADERS)
def test_a_malformed_header_or_length_gets_our_json_400_and_a_close(
    header: bytes,
) -> None:
    """Bad names, NULs, lengths and transfer codings Twisted refuses."""
    answer, wire = refused(CERTS + JSON + header + b"\r\n{}", 400)
    assert "header" in answer.json()["error"]["message"]
    wire.close()


def test_a_malformed_chunk_size_gets_our_json_400_and_a_close() -> None:
    """A chunk size that is not hex is our JSON 400 naming the chunk, then a close."""
    head = CERTS + JSON + b"Transfer-Encoding: chunked\r\n\r\n"
    answer, wire = refused([head, b"zz\r\n{}\r\n0\r\n\r\n"], 400)
    assert "chunk" in answer.json()["error"]["message"]
    wire.close()


def test_a_chunk_announced_over_the_body_cap_is_refused_at_once() -> None:
    """A chunk size past MAX_BODY is a 413 when it is read, not a wait for
    bytes that would be refused anyway."""
    head = CERTS + JSON + b"Transfer-Encoding: chunked\r\n\r\n"
    for size in [b"ffffffffffffffffffff", b"%x" % (MAX_BODY + 1)]:
        answer, wire = refused([head, size + b"\r\n{}"], 413)
        assert "too large" in answer.json()["error"]["message"]
        wire.close()


@pytest.mark.parametrize("size", [20_000, 100_000])
def test_a_request_line_over_the_line_limit_gets_a_json_414(size: int) -> None:
    """Twisted's LineReceiver just drops an overlong line: we answer it."""
    target = b"/" + b"a" * size
    answer, wire = refused(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)
    assert "too long" in answer.json()["error"]["message"]
    wire.close()
    # Sent in pieces, without a line end yet: refused once past the limit.
    refused([b"GET " + target[:10_000], target[10_000:]], 414)[1].close()


HUGE_HEADS = {
    "a 100 KB value": b"X-Big: " + b"v" * 100_000 + b"\r\n",
    "a 64 KB cookie": b"Cookie: a=" + b"c" * 65_536 + b"\r\n",
    "1000 headers": b"".join(b"X-H%d: v\r\n" % i for i in range(1000)),
    "200 headers of 400 bytes": b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 400) for i in range(200)
    ),
}


@pytest.mark.parametrize("headers", HUGE_HEADS.values(), ids=HUGE_HEADS.keys())
def test_headers_over_the_size_or_count_limits_get_a_json_431(headers: bytes) -> None:
    """Headers too long or too many are a JSON 431 saying they are too large."""
    answer, wire = refused(PING + headers + b"\r\n", 431)
    assert "too large" in answer.json()["error"]["message"]
    wire.close()


def test_a_refused_client_that_never_closes_is_aborted_after_the_linger() -> None:
    """Over TLS a close waits for the client's close_notify: a client that
    never sends one (or keeps sending) is aborted after LINGER_SECONDS."""
    for data in [REQUEST_LINES[0], b"GET /" + b"a" * 20_000]:
        wire = connect(site())
        wire.send(data)
        assert wire.transport.disconnecting and not wire.transport.disconnected
        clock_of(wire).advance(LINGER_SECONDS - 0.1)
        wire.send(b"x" * 1000)
        assert not wire.transport.disconnected
        clock_of(wire).advance(0.2)
        assert wire.transport.disconnected
        wire.close()


def test_each_refusal_by_the_parser_is_one_info_line_without_a_traceback() -> None:
    """A header line the parser refuses is logged once, at info, naming the
    client, with no traceback."""
    wire = connect(site())
    with capturedLogs() as events:
        wire.send(b"GET /v1/webapi/ping HTTP/1.1\r\nNoColon\r\n\r\n")
    [event] = events
    assert "log_failure" not in event
    assert event["log_level"].name == "info"
    assert "10.0.0.1" in formatEvent(event)
    assert "400" in formatEvent(event)
    wire.close()


# --- the head's deadline


def test_a_head_not_complete_within_the_deadline_gets_a_json_408() -> None:
    """A slowloris dribbling its head (each byte a sign of life to Twisted's
    idle timeout) gets HEAD_SECONDS from the connection's start, then 408."""
    wire = connect(site())
    clock = clock_of(wire)
    for byte in PING[:30]:
        wire.send(bytes([byte]))
        clock.advance(HEAD_SECONDS / 40)
    assert wire.answers() == []
    clock.advance(HEAD_SECONDS / 4)
    [answer] = wire.answers()
    assert answer.status == 408
    assert answer.headers[b"connection"] == b"close"
    assert wire.transport.disconnecting
    clock.advance(LINGER_SECONDS)
    assert wire.transport.disconnected
    wire.close()
    assert clock.getDelayedCalls() == []


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline() -> None:
    """Nothing to answer (a TLS handshake never finished, or no request):
    the connection is aborted, without a word, after HEAD_SECONDS."""
    wire = connect(site())
    clock_of(wire).advance(HEAD_SECONDS - 0.1)
    assert not wire.transport.disconnecting
    clock_of(wire).advance(0.2)
    assert wire.transport.disconnected
    assert wire.transport.value() == b""
    wire.close()


def test_the_deadline_ends_with_the_head_and_restarts_after_each_response() -> None:
    """A request whose headers are in is not cut (a slow body is the idle
    timeout's business); on a kept-alive connection the next head has
    HEAD_SECONDS from the end of the response; an idle one is then closed."""
    s = site()
    wire = connect(s)
    clock = clock_of(wire)
    wire.send(CERTS + JSON + b"Content-Length: %d\r\n\r\n" % len(LOGIN))
    clock.advance(HEAD_SECONDS * 2)
    assert not wire.transport.disconnecting
    wire.send(LOGIN)
    assert [a.status for a in wire.answers()] == [200]
    clock.advance(HEAD_SECONDS / 2)
    wire.send(PING[:10])
    clock.advance(HEAD_SECONDS / 2 - 0.1)
    assert not wire.transport.disconnecting
    clock.advance(0.2)
    assert [a.status for a in wire.answers()] == [200, 408]
    wire.close()
    idle = connect(s)
    idle.send(PING + b"\r\n")
    clock.advance(HEAD_SECONDS + 0.1)
    assert [a.status for a in idle.answers()] == [200]
    assert idle.transport.disconnected
    idle.close()
    assert clock.getDelayedCalls() == []


def test_a_pipelined_request_is_timed_from_the_end_of_the_response_before_it() -> None:
    """A second request's head deadline starts when the first is answered: a
    partial head pipelined behind it gets a 408 once that deadline passes."""
    s = site()
    wire = connect(s)
    wire.send(PING + b"\r\n" + PING[:10])
    assert [a.status for a in wire.answers()] == [200]
    clock_of(wire).advance(HEAD_SECONDS + 0.1)
    assert [a.status for a in wire.answers()] == [200, 408]
    wire.close()


def test_the_private_twisted_names_we_rely_on_still_exist() -> None:
    """An upgrade of Twisted that renames these must fail here, loudly:
    our channel overrides or reads each of them."""
    assert callable(HTTPChannel._respondToBadRequestAndDisconnect)
    assert isinstance(HTTPChannel._receivedHeaderSize, int)
    assert isinstance(HTTPChannel._receivedHeaderCount, int)
    assert HTTPChannel().__dict__.keys() >= {"_transferDecoder"}
    assert LineReceiver._buffer == b""  # what a head has sent of a line so far
    decoder = twisted_http._ChunkedTransferDecoder(lambda d: None, lambda d: None)
    decoder.dataReceived(b"10\r\n")
    assert (decoder.state, decoder.length) == ("BODY", 16)
