"""The web half of the probe: raw HTTP/1.1 inside TLS to the proxy's web port."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.hostile.cases import HTTP, Case

CERTS = b"/v1/webapi/ssh/certs"
INVITE = b"/v1/webapi/users/invite"
JSON_TYPE = b"application/json"


def request(
    method: bytes = b"GET",
    path: bytes = b"/",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
    version: bytes = b"HTTP/1.1",
    length: bool = True,
) -> bytes:
    lines = [method + b" " + path + b" " + version, b"Host: 127.0.0.1"]
    lines += [k + b": " + v for k, v in headers]
    if body and length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(path: bytes, body: bytes, ctype: bytes | None = JSON_TYPE) -> bytes:
    headers = ((b"Content-Type", ctype),) if ctype is not None else ()
    return request(b"POST", path, headers, body)


def chunked(path: bytes, chunks: list[bytes], tail: bytes = b"0\r\n\r\n") -> bytes:
    head = request(
        b"POST",
        path,
        ((b"Content-Type", JSON_TYPE), (b"Transfer-Encoding", b"chunked")),
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + body + tail


def public_key_line(rng: random.Random) -> str:
    """A real (seeded) OpenSSH ed25519 public key line."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)).public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def with_raw(doc: Mapping[str, object], key: str, raw: str) -> bytes:
    """``doc`` as JSON with ``key`` set to ``raw`` JSON text (which json.dumps won't write)."""
    rest = json.dumps({k: v for k, v in doc.items() if k != key})
    return f'{{"{key}": {raw}, {rest[1:]}'.encode()


def _http(cid: str, data: bytes, idle: bool = False) -> Case:
    return Case(f"http/{cid}", HTTP, data=data, idle=idle)


PING = b"/v1/webapi/ping"  # answers 200: a case aimed here passes only if refused


def _request_line_cases() -> list[Case]:
    items = [
        ("request-line-method-only", b"GET\r\n\r\n"),
        ("request-line-no-version", b"GET /v1/webapi/ping\r\nHost: x\r\n\r\n"),
        ("request-line-http-9.9", request(path=PING, version=b"HTTP/9.9")),
        ("request-line-not-http", request(path=PING, version=b"FTP/1.0")),
        (
            "request-line-extra-token",
            b"GET /v1/webapi/ping HTTP/1.1 x\r\nHost: x\r\n\r\n",
        ),
        ("request-line-binary", b"\x00\x01\x02\x03 /v1/webapi/ping HTTP/1.1\r\n\r\n"),
        (
            "request-line-double-spaces",
            b"GET  /v1/webapi/ping  HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "request-line-tab-separated",
            b"GET\t/v1/webapi/ping\tHTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        ("request-line-uri-20k", request(path=b"/" + b"a" * 20000)),
        ("request-line-uri-100k", request(path=b"/v1/" + b"a" * 100000)),
        ("request-line-unknown-method", request(b"BREW", PING)),
        ("request-line-lowercase-method", request(b"get", b"/v1/webapi/ping")),
        ("request-line-put-certs", request(b"PUT", CERTS, body=b"{}")),
        ("request-line-delete-certs", request(b"DELETE", CERTS)),
        ("request-line-options-certs", request(b"OPTIONS", CERTS)),
        ("request-line-trace", request(b"TRACE", PING)),
        ("request-line-connect", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("request-line-unterminated", b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x"),
    ]
    cases = [_http(cid, data) for cid, data in items]
    cases[-1] = _http(items[-1][0], items[-1][1], idle=True)
    return cases


def _header_cases() -> list[Case]:
    ping = PING
    items = [
        (
            "header-without-colon",
            b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
        ),
        (
            "header-name-with-space",
            b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        ),
        (
            "header-empty-name",
            b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
        ),
        (
            "header-nul-byte",
            b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        ),
        ("header-value-100k", request(path=ping, headers=((b"X-Big", b"v" * 100000),))),
        (
            "header-cookie-64k",
            request(path=ping, headers=((b"Cookie", b"a=" + b"c" * 65536),)),
        ),
        (
            "headers-1000",
            request(
                path=ping, headers=tuple((b"X-H%d" % i, b"v") for i in range(1000))
            ),
        ),
        (
            "headers-200-total-80k",
            request(
                path=ping, headers=tuple((b"X-H%d" % i, b"v" * 400) for i in range(200))
            ),
        ),
        (
            "content-length-negative",
            request(b"POST", CERTS, ((b"Content-Length", b"-1"),)),
        ),
        (
            "content-length-not-a-number",
            request(b"POST", CERTS, ((b"Content-Length", b"ten"),)),
        ),
        (
            "content-length-conflicting",
            request(
                b"POST",
                CERTS,
                ((b"Content-Length", b"2"), (b"Content-Length", b"5")),
                b"{}",
                length=False,
            ),
        ),
        (
            "content-length-and-chunked",
            request(
                b"POST",
                CERTS,
                ((b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked")),
                b"2\r\n{}\r\n0\r\n\r\n",
                length=False,
            ),
        ),
        (
            "content-length-huge-no-body",
            request(
                b"POST",
                CERTS,
                ((b"Content-Type", JSON_TYPE), (b"Content-Length", b"10000000000")),
            ),
        ),
        (
            "content-length-huge-with-1mib",
            request(
                b"POST",
                CERTS,
                ((b"Content-Type", JSON_TYPE), (b"Content-Length", b"10000000000")),
                b"[" * (1 << 20),
                length=False,
            ),
        ),
        (
            "expect-100-continue-huge",
            request(
                b"POST",
                CERTS,
                (
                    (b"Content-Type", JSON_TYPE),
                    (b"Content-Length", b"10000000000"),
                    (b"Expect", b"100-continue"),
                ),
            ),
        ),
        (
            "expect-100-continue-invite-huge",
            request(
                b"POST",
                INVITE,
                (
                    (b"Content-Type", JSON_TYPE),
                    (b"Content-Length", b"1073741824"),
                    (b"Expect", b"100-continue"),
                ),
            ),
        ),
        (
            "transfer-encoding-gzip",
            request(
                b"POST", CERTS, ((b"Transfer-Encoding", b"gzip"),), b"{}", length=False
            ),
        ),
        (
            "transfer-encoding-unknown",
            request(
                b"POST", CERTS, ((b"Transfer-Encoding", b"bogus"),), b"{}", length=False
            ),
        ),
        ("chunked-bad-size", chunked(CERTS, [], tail=b"zz\r\n{}\r\n0\r\n\r\n")),
        (
            "chunked-size-overflow",
            chunked(CERTS, [], tail=b"ffffffffffffffffffff\r\n{}"),
        ),
        ("chunked-200k", chunked(CERTS, [b"[" * 8192] * 25)),
        ("chunked-80k-invite", chunked(INVITE, [b" " * 16384] * 5)),
        ("chunked-1mib-unfinished", chunked(CERTS, [b"x" * 65536] * 16, tail=b"")),
    ]
    return [_http(cid, data) for cid, data in items]


def _json_cases(rng: random.Random) -> list[Case]:
    # Complete, well-typed bodies (a real public key, a user that does not
    # exist), so that each case differs from a plain failed login in one way.
    good = {
        "user": "nobody",
        "password": "x",
        "otp_token": "000000",
        "pub_key": public_key_line(rng),
        "ttl": 60,
    }
    invite = {"token": "no-such-invite", "password": "x" * 12, "otp_token": "000000"}
    bodies: list[tuple[str, bytes | None, bytes]] = [
        ("lone-surrogate-user", JSON_TYPE, with_raw(good, "user", '"\\ud800"')),
        (
            "lone-surrogate-password",
            JSON_TYPE,
            with_raw(good, "password", '"a\\udfff"'),
        ),
        ("lone-surrogate-otp", JSON_TYPE, with_raw(good, "otp_token", '"\\udc00"')),
        ("lone-surrogate-pub-key", JSON_TYPE, with_raw(good, "pub_key", '"\\ud83d"')),
        ("surrogate-in-key", JSON_TYPE, with_raw(good, "\\ud83d", "1")),
        ("nested-100000-arrays", JSON_TYPE, b"[" * 100000),
        ("nested-arrays-closed", JSON_TYPE, b"[" * 30000 + b"]" * 30000),
        ("nested-objects", JSON_TYPE, b'{"a":' * 20000 + b"1" + b"}" * 20000),
        ("nested-objects-closed", JSON_TYPE, b'{"a":' * 10000 + b"1" + b"}" * 10000),
        ("array", JSON_TYPE, b"[]"),
        ("string", JSON_TYPE, b'"hello"'),
        ("number", JSON_TYPE, b"42"),
        ("null", JSON_TYPE, b"null"),
        ("true", JSON_TYPE, b"true"),
        ("empty-body", JSON_TYPE, b""),
        ("trailing-garbage", JSON_TYPE, b"{} trailing"),
        ("invalid-utf8", JSON_TYPE, b'{"user": "\xff\xfe"}'),
        ("utf8-bom", JSON_TYPE, b"\xef\xbb\xbf{}"),
        ("nan", JSON_TYPE, b'{"ttl": NaN}'),
        ("big-float", JSON_TYPE, b'{"ttl": 1e400}'),
        ("int-5000-digits", JSON_TYPE, b'{"ttl": ' + b"9" * 5000 + b"}"),
        ("duplicate-keys", JSON_TYPE, b'{"user": "a", "user": 5}'),
        ("random-bytes", JSON_TYPE, rng.randbytes(512)),
        ("body-70k", JSON_TYPE, b'{"user": "' + b"u" * 70000 + b'"}'),
        ("text-plain", b"text/plain", json.dumps(good).encode()),
        ("no-content-type", None, json.dumps(good).encode()),
        ("form-urlencoded", b"application/x-www-form-urlencoded", b"user=a&password=b"),
        ("multipart", b"multipart/form-data; boundary=x", b"--x\r\n\r\nhi\r\n--x--"),
        (
            "json-charset-latin1",
            b"application/json; charset=latin-1",
            b'{"user": "\xe9"}',
        ),
    ]
    wrong: list[tuple[str, object]] = [
        ("user-number", {**good, "user": 1}),
        ("user-null", {**good, "user": None}),
        ("password-list", {**good, "password": []}),
        ("otp-object", {**good, "otp_token": {}}),
        ("pub-key-bool", {**good, "pub_key": True}),
        ("ttl-string", {**good, "ttl": "60"}),
        ("ttl-negative", {**good, "ttl": -1}),
        ("ttl-bool", {**good, "ttl": True}),
        ("ttl-float", {**good, "ttl": 1.5}),
        ("ttl-huge", {**good, "ttl": 10**30}),
        ("missing-user", {k: v for k, v in good.items() if k != "user"}),
        ("missing-everything", {}),
        ("user-10k", {**good, "user": "u" * 10000}),
        ("user-nul", {**good, "user": "a\u0000b"}),
        ("pub-key-garbage", {**good, "pub_key": "\u0000" * 100}),
    ]
    cases = [
        _http(f"certs/{cid}", post(CERTS, body, ctype)) for cid, ctype, body in bodies
    ]
    for cid, data in wrong:
        cases.append(_http(f"certs/{cid}", post(CERTS, json.dumps(data).encode())))
    invite_wrong = [
        ("token-number", {**invite, "token": 5}),
        ("password-null", {**invite, "password": None}),
        ("otp-list", {**invite, "otp_token": ["1"]}),
        ("missing-token", {k: v for k, v in invite.items() if k != "token"}),
        ("array", [invite]),
    ]
    for cid, data in invite_wrong:
        cases.append(_http(f"invite/{cid}", post(INVITE, json.dumps(data).encode())))
    invite_raw = [
        ("lone-surrogate-token", with_raw(invite, "token", '"\\ud800"')),
        ("lone-surrogate-password", with_raw(invite, "password", '"pass\\udfffword1"')),
        ("nested-100000-arrays", b"[" * 100000),
        ("nested-arrays-closed", b"[" * 30000 + b"]" * 30000),
        ("nested-objects-closed", b'{"a":' * 10000 + b"1" + b"}" * 10000),
    ]
    for cid, body in invite_raw:
        cases.append(_http(f"invite/{cid}", post(INVITE, body)))
    cases.append(_http("invite/post-with-token-in-path", post(INVITE + b"/abc", b"{}")))
    return cases


def _path_cases() -> list[Case]:
    paths = [
        b"/web/static/",
        b"/web/static/%00",
        b"/web/static/%00.js",
        b"/web/static/..%2f..%2f..%2fetc%2fpasswd",
        b"/web/static/%2e%2e/%2e%2e/etc/passwd",
        b"/web/static/../../../etc/passwd",
        b"/web/static/nonexistent.js",
        b"//etc/passwd",
        b"/../../etc/passwd",
        b"/%2e%2e/%2e%2e/etc/passwd",
        b"/%ff%fe%fd",
        b"/%",
        b"/%zz",
        b"/v1/webapi/ping%00",
        b"/v1/webapi/users/invite/%ff%00%c0",
        b"/v1/webapi/users/invite/" + b"t" * 5000,
        b"/v1/webapi/users/invite/%2e%2e%2f%2e%2e",
        b"/v1/webapi/nothing-here",
        b"/v1/",
        b"/web/no-such-page/",  # /web/ itself goes to the home page (a 302)
        b"/;jsessionid=1",
        b"/?" + b"q=" * 5000,
    ]
    cases = [_http(f"path/{p[:48].decode('latin-1')}", request(path=p)) for p in paths]
    cases.append(_http("path/get-certs", request(path=CERTS)))
    cases.append(_http("path/post-ping", post(b"/v1/webapi/ping", b"{}")))
    return cases


def http_cases(rng: random.Random) -> list[Case]:
    return _request_line_cases() + _header_cases() + _json_cases(rng) + _path_cases()
