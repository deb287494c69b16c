"""A browser's calls of the web API, over real HTTPS, for interop tests:
the session cookie and the bearer are the test's to send (or not)."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from teleconch.client.webapi import _Insecure, _read_body
from teleconch.config import HostPort

COOKIE = "__Host-session"


@attrs.frozen
class Answer:
    code: int
    headers: Headers
    body: Any

    def cookie(self) -> str | None:
        """The value the answer sets the session cookie to, if it does."""
        for line in self.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = line.decode().partition("=")
            if name == COOKIE:
                return rest.split(";", 1)[0]
        return None


@attrs.frozen
class Secrets:
    """What a logged-in browser holds: the cookie (HttpOnly) and the bearer."""

    cookie: str = attrs.field(repr=False)
    bearer: str = attrs.field(repr=False)


async def call(
    proxy: HostPort,
    method: str,
    path: str,
    body: Any = None,
    secrets: Secrets | None = None,
) -> Answer:
    headers = Headers({b"accept": [b"application/json"]})
    if secrets is not None:
        headers.addRawHeader(b"cookie", f"{COOKIE}={secrets.cookie}".encode())
        headers.addRawHeader(b"authorization", f"Bearer {secrets.bearer}".encode())
    producer = None
    if body is not None:
        headers.addRawHeader(b"content-type", b"application/json")
        producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
    agent = Agent(reactor, contextFactory=_Insecure())
    url = f"https://{proxy}{path}".encode()
    response = await agent.request(method.encode(), url, headers, producer)
    data = await _read_body(response)
    return Answer(response.code, response.headers, json.loads(data) if data else None)


async def log_in(proxy: HostPort, user: str, password: str, code: str) -> Secrets:
    """POST /v1/webapi/sessions as the login page does."""
    answer = await call(
        proxy,
        "POST",
        "/v1/webapi/sessions",
        {"user": user, "pass": password, "second_factor_token": code},
    )
    assert answer.code == 200, answer.body
    cookie = answer.cookie()
    assert cookie, answer.headers
    return Secrets(cookie, answer.body["token"])
