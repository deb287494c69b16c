"""The web UI's half of the HTTP corpus: the terminal's upgrade and the
web-session JSON routes, raw HTTP/1.1 inside TLS like the rest.

A terminal case that must get past the ``Origin`` check carries ``ORIGIN``,
which the probe replaces with the proxy's own origin (its port is only known
once it listens).  Cookies and bearers here are well formed but unknown, so
a case that reaches the auth service is refused there (401), never served.
"""

from __future__ import annotations

import json
import random
from urllib.parse import quote

from tests.hostile.cases import HTTP, Case
from tests.hostile.corpus_http import JSON_TYPE, request, with_raw

#: Replaced by the probe with ``https://127.0.0.1:<web port>``.
ORIGIN = b"@ORIGIN@"
CONNECT = b"/v1/webapi/sites/test.example/connect"
SESSIONS = b"/v1/webapi/sessions"
GOOD_PARAMS = {
    "server_id": "web1.test.example",
    "login": "root",
    "term": {"w": 80, "h": 24},
}
COOKIE = (b"Cookie", b"__Host-session=" + b"c" * 43)
BEARER = (b"Authorization", b"Bearer " + b"b" * 43)
KEY = (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")
UPGRADE = ((b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"))


def connect_path(params: str | bytes | None) -> bytes:
    if params is None:
        return CONNECT
    raw = params if isinstance(params, bytes) else quote(params).encode()
    return CONNECT + b"?params=" + raw


def upgrade(
    params: str | bytes | None = json.dumps(GOOD_PARAMS),
    origin: tuple[bytes, ...] = (ORIGIN,),
    cookie: bool = True,
    version: bytes | None = b"13",
    key: bool = True,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    method: bytes = b"GET",
    up: tuple[tuple[bytes, bytes], ...] = UPGRADE,
) -> bytes:
    headers = list(up) + [(b"Origin", o) for o in origin]
    if cookie:
        headers.append(COOKIE)
    if version is not None:
        headers.append((b"Sec-WebSocket-Version", version))
    if key:
        headers.append(KEY)
    return request(method, connect_path(params), tuple(headers) + extra)


def _terminal_cases() -> list[tuple[str, bytes]]:
    sized = {**GOOD_PARAMS}
    return [
        ("no-upgrade-headers", request(path=connect_path(json.dumps(GOOD_PARAMS)))),
        ("upgrade-without-connection", upgrade(up=((b"Upgrade", b"websocket"),))),
        ("upgrade-not-websocket", upgrade(up=((b"Upgrade", b"h2c"), UPGRADE[1]))),
        ("post-upgrade", upgrade(method=b"POST")),
        ("foreign-origin", upgrade(origin=(b"https://evil.example",))),
        ("origin-null", upgrade(origin=(b"null",))),
        ("no-origin", upgrade(origin=())),
        ("two-origins", upgrade(origin=(ORIGIN, b"https://evil.example"))),
        ("origin-http-scheme", upgrade(origin=(b"http://127.0.0.1",))),
        ("no-cookie", upgrade(cookie=False)),
        ("no-params", upgrade(params=None)),
        ("params-not-json", upgrade(params="{server_id: web1")),
        ("params-array", upgrade(params="[]")),
        ("params-huge", upgrade(params=json.dumps({**sized, "pad": "x" * 60000}))),
        ("params-invalid-utf8", upgrade(params=b"%ff%fe")),
        ("params-nested", upgrade(params="[" * 3000)),
        (
            "params-size-0x0",
            upgrade(params=json.dumps({**sized, "term": {"w": 0, "h": 0}})),
        ),
        (
            "params-size-100000",
            upgrade(params=json.dumps({**sized, "term": {"w": 100000, "h": 100000}})),
        ),
        (
            "params-size-strings",
            upgrade(params=json.dumps({**sized, "term": {"w": "80", "h": "24"}})),
        ),
        (
            "params-login-control",
            upgrade(params=json.dumps({**sized, "login": "ro\nt"})),
        ),
        ("params-server-empty", upgrade(params=json.dumps({**sized, "server_id": ""}))),
        ("version-8", upgrade(version=b"8")),
        ("version-junk", upgrade(version=b"thirteen")),
        ("version-missing", upgrade(version=None)),
        ("key-missing", upgrade(key=False)),
        ("key-junk", upgrade(key=False, extra=((b"Sec-WebSocket-Key", b"!!"),))),
        ("token-in-query", upgrade(params=json.dumps(GOOD_PARAMS) + "&access_token=x")),
    ]


def _route_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    login = {"user": "nobody", "pass": "x", "second_factor_token": "000000"}
    both = (COOKIE, BEARER)
    json_ct = ((b"Content-Type", JSON_TYPE),)

    def body(
        method: bytes,
        path: bytes,
        data: bytes,
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> bytes:
        return request(method, path, headers, data)

    password = b"/v1/webapi/users/password"
    authenticator = b"/v1/webapi/mfa/authenticator"
    return [
        (
            "login/text-plain",
            body(
                b"POST",
                SESSIONS,
                json.dumps(login).encode(),
                ((b"Content-Type", b"text/plain"),),
            ),
        ),
        (
            "login/form",
            body(
                b"POST",
                SESSIONS,
                b"user=a&pass=b",
                ((b"Content-Type", b"application/x-www-form-urlencoded"),),
            ),
        ),
        ("login/nested", body(b"POST", SESSIONS, b"[" * 100000, json_ct)),
        (
            "login/lone-surrogate",
            body(b"POST", SESSIONS, with_raw(login, "user", '"\\ud800"'), json_ct),
        ),
        (
            "login/user-number",
            body(b"POST", SESSIONS, json.dumps({**login, "user": 5}).encode(), json_ct),
        ),
        (
            "login/missing-code",
            body(
                b"POST",
                SESSIONS,
                json.dumps({"user": "a", "pass": "b"}).encode(),
                json_ct,
            ),
        ),
        ("login/random-bytes", body(b"POST", SESSIONS, rng.randbytes(300), json_ct)),
        (
            "login/body-70k",
            body(b"POST", SESSIONS, b'{"user": "' + b"u" * 70000 + b'"}', json_ct),
        ),
        ("login/put", body(b"PUT", SESSIONS, b"{}", json_ct)),
        ("logout/no-session", request(b"DELETE", SESSIONS)),
        ("logout/cookie-only", request(b"DELETE", SESSIONS, (COOKIE,))),
        ("logout/bearer-only", request(b"DELETE", SESSIONS, (BEARER,))),
        ("logout/unknown-session", request(b"DELETE", SESSIONS, both)),
        ("renew/no-session", body(b"POST", SESSIONS + b"/renew", b"{}", json_ct)),
        (
            "renew/text-plain",
            body(
                b"POST",
                SESSIONS + b"/renew",
                b"{}",
                (*both, (b"Content-Type", b"text/plain")),
            ),
        ),
        ("sites/no-session", request(path=b"/v1/webapi/sites")),
        ("sites/unknown-session", request(path=b"/v1/webapi/sites", headers=both)),
        (
            "sites/two-cookies",
            request(path=b"/v1/webapi/sites", headers=(COOKIE, COOKIE, BEARER)),
        ),
        (
            "sites/bearer-junk",
            request(
                path=b"/v1/webapi/sites",
                headers=(COOKIE, (b"Authorization", b"Bearer \xff\x00<script>")),
            ),
        ),
        (
            "sites/basic-auth",
            request(
                path=b"/v1/webapi/sites",
                headers=(COOKIE, (b"Authorization", b"Basic YTpi")),
            ),
        ),
        (
            "sites/cookie-64k",
            request(
                path=b"/v1/webapi/sites",
                headers=((b"Cookie", b"__Host-session=" + b"c" * 65536), BEARER),
            ),
        ),
        ("nodes/no-session", request(path=b"/v1/webapi/sites/test.example/nodes")),
        (
            "nodes/other-cluster",
            request(path=b"/v1/webapi/sites/%2e%2e/nodes", headers=both),
        ),
        (
            "live-sessions/no-session",
            request(path=b"/v1/webapi/sites/test.example/sessions"),
        ),
        ("password/no-session", body(b"PUT", password, b"{}", json_ct)),
        (
            "password/text-plain",
            body(b"PUT", password, b"{}", (*both, (b"Content-Type", b"text/plain"))),
        ),
        ("password/no-content-type", body(b"PUT", password, b"{}", both)),
        (
            "password/unknown-session",
            body(b"PUT", password, b'{"old_password": 1}', both + json_ct),
        ),
        ("password/get", request(path=password, headers=both)),
        ("authenticator/no-session", body(b"POST", authenticator, b"{}", json_ct)),
        (
            "authenticator/form",
            body(
                b"POST",
                authenticator,
                b"password=x",
                (*both, (b"Content-Type", b"application/x-www-form-urlencoded")),
            ),
        ),
        (
            "authenticator/put-unknown",
            body(
                b"PUT", authenticator, b'{"second_factor_token": "1"}', both + json_ct
            ),
        ),
    ]


def web_cases(rng: random.Random) -> list[Case]:
    cases = [Case(f"http/terminal/{cid}", HTTP, data=d) for cid, d in _terminal_cases()]
    cases += [Case(f"http/web/{cid}", HTTP, data=d) for cid, d in _route_cases(rng)]
    return cases
