"""The web API's routes, driven through ``treq.testing.StubTreq`` against the
real site: JSON answers, status codes for refusals, security headers.

Unit tests: no socket, no global reactor.  ``make_site`` builds the real
``WebSite`` (``teleconch.web.http``) on a ``task.Clock``; the AuthAgent
behind it is ``FakeAuthAgent``, an in-memory double of the auth service at
the proxy boundary that answers the routes' few calls with the typed records
of ``teleconch.auth.protocol`` (or raises its errors).

StubTreq serves a resource from a stock ``Site`` of its own, so the root it
is given is ``ThroughSite``: a leaf that asks the real ``WebSite`` for the
resource (its routing, and the security headers it sets on every answer)
and renders that.  What StubTreq does not reach is the ``WebChannel``
(``teleconch.web.http``, ``teleconch.web.head``): refusing a body on its
headers, the body cap as it arrives, the connections per address.  Those
stay covered by ``tests/test_web_http.py``, which writes raw HTTP to a real
channel.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as CallTimedOut
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request

from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent
from teleconch.auth.types import HostSigner
from teleconch.web.site import WebConfig, make_site
from teleconch.web.static_files import StaticFile, StaticFiles

T = TypeVar("T")

TOKEN = "invite-token-0123456789"
INVITE_PAGE = b"<!doctype html><title>invite</title>"
CERT = "ssh-ed25519-cert-v01@openssh.com AAAA... alice"
PUB_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk alice@laptop"
SIGNER = HostSigner("test.example", ("ssh-ed25519 AAAAhostca",))


@attrs.define
class FakeAuthAgent:
    """The AuthAgent calls the routes make, answered at once from memory.

    ``refusal``, when set, is raised by every call, as the auth service's
    error would be re-raised by the real agent.  ``calls`` records what the
    routes passed on.
    """

    refusal: Exception | None = None
    invites: dict[str, api.InviteInfo] = attrs.field(factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    def _called(self, name: str, **args: Any) -> None:
        self.calls.append((name, args))
        if self.refusal is not None:
            raise self.refusal

    async def authenticate_ssh_user(
        self,
        user: str,
        password: str,
        otp_token: str,
        pub_key: str,
        ttl: int,
        client_addr: str,
    ) -> api.IssuedCertificate:
        self._called(
            "authenticate_ssh_user",
            user=user,
            password=password,
            otp_token=otp_token,
            pub_key=pub_key,
            ttl=ttl,
            client_addr=client_addr,
        )
        return api.IssuedCertificate(user, CERT, 1_700_003_600, (SIGNER,))

    async def get_invite(self, token: str) -> api.InviteInfo:
        self._called("get_invite", token=token)
        if token not in self.invites:
            raise api.NotFoundError("this invite is invalid or has expired")
        return self.invites[token]

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        self._called(
            "complete_invite",
            token=token,
            password=password,
            otp_token=otp_token,
            client_addr=client_addr,
        )
        if token not in self.invites:
            raise api.NotFoundError("this invite is invalid or has expired")
        return self.invites.pop(token).user


class ThroughSite(Resource):
    """A root for StubTreq's own Site that hands each request to the real
    WebSite: its ``getResourceFor`` routes it and sets the security headers."""

    isLeaf = True

    def __init__(self, site: Any) -> None:
        super().__init__()
        self._site = site

    def render(self, request: Request) -> Any:
        return self._site.getResourceFor(request).render(request)


@attrs.define
class Web:
    """The real site on a Clock, its fake agent, and a StubTreq client."""

    agent: FakeAuthAgent
    #: A StubTreq; typed Any because it sets treq's functions on itself at run time.
    treq: Any

    def run(self, call: Deferred[T] | Coroutine[Any, Any, T]) -> T:
        """The call's result, once the in-memory connections are pumped;
        it must be done by then, without the reactor."""
        results: list[Any] = []
        ensureDeferred(call).addBoth(results.append)
        self.treq.flush()
        assert results, "the request waited on something: a unit test never should"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        result: T = results[0]
        return result

    def get(self, path: str) -> IResponse:
        return self.run(self.treq.get(f"https://proxy.test.example{path}"))

    def post(
        self, path: str, body: Any, content_type: bytes = b"application/json"
    ) -> IResponse:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        return self.run(
            self.treq.post(
                f"https://proxy.test.example{path}",
                data=data,
                headers={b"content-type": [content_type]},
            )
        )

    def json(self, response: IResponse) -> Any:
        return self.run(self.treq.json_content(response))

    def content(self, response: IResponse) -> bytes:
        body: bytes = self.run(self.treq.content(response))
        return body


@pytest.fixture
def web() -> Web:
    agent = FakeAuthAgent()
    site = make_site(
        cast(AuthAgent, agent),
        WebConfig(cluster_name="test.example", proxy_ssh_addr="proxy:3023"),
        Clock(),
        StaticFiles({"invite.html": StaticFile(INVITE_PAGE, b"text/html")}),
    )
    return Web(agent, StubTreq(ThroughSite(site)))


LOGIN = {
    "user": "alice",
    "password": "correct horse battery staple",
    "otp_token": "123456",
    "pub_key": PUB_KEY,
    "ttl": 3600,
}


def test_ping_says_the_cluster_and_its_second_factor(web: Web) -> None:
    """GET /v1/webapi/ping: the cluster name, the proxy's SSH address, the
    version and OTP as second factor, as JSON."""
    response = web.get("/v1/webapi/ping")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    ping = web.json(response)
    assert ping["cluster_name"] == "test.example"
    assert ping["proxy_ssh_addr"] == "proxy:3023"
    assert ping["auth"] == {"second_factor": "otp", "type": "local"}
    assert isinstance(ping["server_version"], str)


def test_a_good_login_body_gets_the_certificate_json(web: Web) -> None:
    """POST /v1/webapi/ssh/certs with every field hands them, and the client's
    address, to the agent, and answers its certificate and host signers."""
    response = web.post("/v1/webapi/ssh/certs", LOGIN)
    assert response.code == 200
    assert web.json(response) == {
        "username": "alice",
        "cert": CERT,
        "valid_before": 1_700_003_600,
        "host_signers": [SIGNER.to_json()],
    }
    assert web.agent.calls == [
        ("authenticate_ssh_user", {**LOGIN, "client_addr": "127.0.0.1"})
    ]


def test_a_login_body_that_is_not_json_is_refused_with_415(web: Web) -> None:
    """A body sent as a form is refused before the agent is asked."""
    response = web.post(
        "/v1/webapi/ssh/certs", b"user=alice", b"application/x-www-form-urlencoded"
    )
    assert response.code == 415
    assert web.json(response) == {
        "error": {"message": "send the request body as application/json"}
    }
    assert web.agent.calls == []


def test_a_failed_login_is_a_401_with_the_auth_service_s_message(web: Web) -> None:
    """AuthenticationFailed from the agent becomes 401 and its one message,
    nothing else."""
    web.agent.refusal = api.AuthenticationFailed("login failed: check your code")
    response = web.post("/v1/webapi/ssh/certs", LOGIN)
    assert response.code == 401
    assert web.json(response) == {"error": {"message": "login failed: check your code"}}


def test_a_locked_out_login_is_a_403(web: Web) -> None:
    """LockedOut from the agent becomes 403, with its message (until when)."""
    web.agent.refusal = api.LockedOut("this account is locked until 12:00 UTC")
    response = web.post("/v1/webapi/ssh/certs", LOGIN)
    assert response.code == 403
    assert web.json(response) == {
        "error": {"message": "this account is locked until 12:00 UTC"}
    }


def test_an_auth_service_failure_is_a_502_pointing_at_its_log(web: Web) -> None:
    """An error the auth service did not expect (AMP's UnknownRemoteError) is
    its bug, logged there: 502, and the message says where to look."""
    web.agent.refusal = amp.UnknownRemoteError("Unknown Error")
    response = web.post("/v1/webapi/ssh/certs", LOGIN)
    assert response.code == 502
    assert "auth service's log" in web.json(response)["error"]["message"]


def test_an_auth_call_that_times_out_is_a_503(web: Web) -> None:
    """A call the auth service did not answer in time: unreachable, try again."""
    web.agent.refusal = CallTimedOut(30.0, "Deferred")
    response = web.post("/v1/webapi/ssh/certs", LOGIN)
    assert response.code == 503
    assert web.json(response) == {
        "error": {"message": "the auth service is unreachable; try again shortly"}
    }


@pytest.mark.parametrize("path", ["/nowhere", "/v1/webapi/nothing", "/v1/webapi/"])
def test_an_unknown_path_is_a_json_404_with_the_security_headers(
    web: Web, path: str
) -> None:
    """A wrong URL is answered in the API's error shape, and carries CSP,
    nosniff, no-referrer and HSTS like every answer."""
    response = web.get(path)
    assert response.code == 404
    assert web.json(response) == {"error": {"message": "not found"}}
    header = response.headers.getRawHeaders
    csp = header(b"content-security-policy")
    assert (
        csp and b"default-src 'self'" in csp[0] and b"frame-ancestors 'none'" in csp[0]
    )
    assert header(b"x-content-type-options") == [b"nosniff"]
    assert header(b"referrer-policy") == [b"no-referrer"]
    assert header(b"strict-transport-security") == [b"max-age=31536000"]
    assert header(b"x-frame-options") == [b"DENY"]


def test_the_invite_page_is_served_for_any_token(web: Web) -> None:
    """GET /web/invite/<token> is the static sign-up page, as HTML."""
    response = web.get(f"/web/invite/{TOKEN}")
    assert response.code == 200
    assert web.content(response) == INVITE_PAGE
    assert response.headers.getRawHeaders(b"referrer-policy") == [b"no-referrer"]


def test_get_invite_answers_the_user_secret_and_a_qr_code(web: Web) -> None:
    """GET /v1/webapi/users/invite/<token>: the invite's user, TOTP secret,
    otpauth URI and expiry from the agent, and an SVG QR code of the URI."""
    uri = "otpauth://totp/test.example:alice?secret=ABCDEF&issuer=test.example"
    web.agent.invites[TOKEN] = api.InviteInfo("alice", "ABCDEF", uri, 1_700_000_000)
    response = web.get(f"/v1/webapi/users/invite/{TOKEN}")
    assert response.code == 200
    invite = web.json(response)
    assert {k: v for k, v in invite.items() if k != "qr_svg"} == {
        "user": "alice",
        "totp_secret": "ABCDEF",
        "otpauth_uri": uri,
        "expires": 1_700_000_000,
    }
    assert invite["qr_svg"].lstrip().startswith(("<?xml", "<svg"))
    assert web.agent.calls == [("get_invite", {"token": TOKEN})]


def test_get_invite_for_an_unknown_token_is_a_404(web: Web) -> None:
    """NotFoundError from the agent becomes a JSON 404 with its message."""
    response = web.get("/v1/webapi/users/invite/no-such-token")
    assert response.code == 404
    assert web.json(response) == {
        "error": {"message": "this invite is invalid or has expired"}
    }


def test_posting_an_invite_completes_it_and_names_the_user(web: Web) -> None:
    """POST /v1/webapi/users/invite with token, password and code completes
    the sign-up through the agent and answers the user's name."""
    web.agent.invites[TOKEN] = api.InviteInfo("alice", "ABCDEF", "otpauth://x", 1)
    body = {"token": TOKEN, "password": "a long password", "otp_token": "654321"}
    response = web.post("/v1/webapi/users/invite", body)
    assert response.code == 200
    assert web.json(response) == {"user": "alice"}
    assert web.agent.calls == [
        ("complete_invite", {**body, "client_addr": "127.0.0.1"})
    ]


def test_posting_an_invite_without_a_field_is_a_400(web: Web) -> None:
    """A sign-up missing its one-time code is refused, naming the field,
    before the agent is asked."""
    body = {"token": TOKEN, "password": "a long password"}
    response = web.post("/v1/webapi/users/invite", body)
    assert response.code == 400
    assert web.json(response) == {
        "error": {"message": "field 'otp_token' is missing or not a str"}
    }
    assert web.agent.calls == []
