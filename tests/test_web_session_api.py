"""Web sessions at the proxy and the API a logged-in browser uses, through
``treq.testing.StubTreq`` against the real site.

Unit tests: no socket, no global reactor.  ``make_site`` builds the real
``WebSite`` on a ``task.Clock`` with a real `Router`; behind it is
``FakeWebAgent``, an in-memory double of the auth service at the proxy
boundary, holding web sessions as the auth service would (by their two
secrets) and answering with the typed records of
``teleconch.auth.protocol``.

``ThroughChannel`` hands each request first to the site's ``admit``, as
``WebChannel`` does when a request's headers are in (before its body is
read), then to the resource the site routes it to; so the refusals decided
on the headers are the ones a real connection gets.

The last two tests are interop tests: a real cluster and a second proxy
joined to it, over real TLS, to show that a web session lives in the auth
service and not in the proxy that made it; and a proxy started without
xterm.js installed.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request

import teleconch.proxy.service
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent
from teleconch.auth.types import INTERNAL_LOGINS, ActiveSession, Node, Party, Role
from teleconch.client.webapi import _Insecure, _read_body
from teleconch.web.http import ErrorResource
from teleconch.web.keys import WebSessionKeys
from teleconch.web.pages import HOME, safe_next
from teleconch.web.site import WebConfig, make_site
from teleconch.web.static_files import (
    VENDOR_FILES,
    XTERM_MISSING,
    StaticFile,
    StaticFiles,
    read_vendor_files,
)
from tests import webclient
from tests.harness import current_code, sign_up, start_cluster

T = TypeVar("T")

CLUSTER = "test.example"
NOW = 1_700_000_000.0
TTL = 12 * 3600
IDLE = 600
PASSWORD = "a long and memorable passphrase"
CODE = "123456"
CERT = "ssh-ed25519-cert-v01@openssh.com AAAA... alice"
LOGIN_PAGE = b'<!doctype html><body data-next="__NEXT__"><title>log in</title>'
URL = "https://proxy.test.example"

DEV = Role(
    name="dev", logins=(INTERNAL_LOGINS, "deploy"), node_labels={"env": ("dev",)}
)
NODES = (
    Node("id-db1", "db1", "10.0.0.3:22", {"env": "prod", "role": "db"}),
    Node("id-web1", "web1", "10.0.0.1:22", {"env": "dev", "role": "web"}),
    Node("id-web2", "web2", "10.0.0.2:22", {"env": "dev"}),
)


@attrs.define
class Held:
    bearer: str
    info: api.WebSessionInfo


@attrs.define
class FakeWebAgent:
    """The auth service's web sessions, in memory: a session is found by its
    cookie and must be presented with its bearer (else SessionExpired)."""

    clock: Clock
    roles: tuple[Role, ...] = (DEV,)
    sessions: dict[str, Held] = attrs.field(factory=dict)
    live: tuple[ActiveSession, ...] = ()
    refusal: Exception | None = None
    calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    events: list[dict[str, Any]] = attrs.field(factory=list)
    _minted: int = 0

    def _called(self, name: str, **args: Any) -> None:
        self.calls.append((name, args))
        if self.refusal is not None:
            raise self.refusal

    def _secrets(self) -> tuple[str, str]:
        self._minted += 1
        return f"cookie-{self._minted:02d}-abcdefghijklmnop", (
            f"bearer-{self._minted:02d}-abcdefghijklmnop"
        )

    def _held(self, creds: api.WebCredentials) -> Held:
        held = self.sessions.get(creds.cookie)
        if held is None or held.bearer != creds.bearer:
            raise api.SessionExpired("your web session has ended: log in again")
        return held

    def calls_to(self, name: str) -> list[dict[str, Any]]:
        return [args for called, args in self.calls if called == name]

    async def create_web_session(
        self, user: str, password: str, otp_token: str, pub_key: str, client_addr: str
    ) -> api.NewWebSession:
        self._called(
            "create_web_session",
            user=user,
            password=password,
            otp_token=otp_token,
            pub_key=pub_key,
            client_addr=client_addr,
        )
        if password != PASSWORD or otp_token != CODE:
            raise api.AuthenticationFailed(
                "login failed: wrong user name, password or one-time code "
                "(check that your device's clock is right)"
            )
        cookie, bearer = self._secrets()
        now = self.clock.seconds()
        info = api.WebSessionInfo(
            f"session-{self._minted}", user, ("dev",), ("alice",), now, now, now + TTL
        )
        self.sessions[cookie] = Held(bearer, info)
        return api.NewWebSession(cookie, bearer, info, CERT)

    async def authenticate_web_session(
        self, creds: api.WebCredentials
    ) -> api.WebSessionInfo:
        self._called("authenticate_web_session", creds=creds)
        return self._held(creds).info

    async def renew_web_session(
        self, creds: api.WebCredentials
    ) -> api.RenewedWebSession:
        self._called("renew_web_session", creds=creds)
        held = self._held(creds)
        del self.sessions[creds.cookie]
        cookie, bearer = self._secrets()
        self.sessions[cookie] = Held(bearer, held.info)
        return api.RenewedWebSession(cookie, bearer, held.info)

    async def delete_web_session(
        self, creds: api.WebCredentials, client_addr: str
    ) -> None:
        self._called("delete_web_session", creds=creds, client_addr=client_addr)
        self._held(creds)
        del self.sessions[creds.cookie]

    async def change_password(
        self,
        creds: api.WebCredentials,
        old_password: str,
        otp_token: str,
        new_password: str,
        client_addr: str,
    ) -> None:
        self._called(
            "change_password",
            creds=creds,
            old_password=old_password,
            otp_token=otp_token,
            new_password=new_password,
            client_addr=client_addr,
        )
        if old_password != PASSWORD:
            raise api.AuthenticationFailed("the current password or code is wrong")

    async def start_authenticator_enrolment(
        self, creds: api.WebCredentials, password: str, client_addr: str
    ) -> api.PendingAuthenticator:
        self._called("start_authenticator_enrolment", creds=creds, password=password)
        uri = f"otpauth://totp/{CLUSTER}:alice?secret=NEWSECRET&issuer={CLUSTER}"
        return api.PendingAuthenticator("NEWSECRET", uri, self.clock.seconds() + 600)

    async def confirm_authenticator_enrolment(
        self, creds: api.WebCredentials, otp_token: str, client_addr: str
    ) -> None:
        self._called(
            "confirm_authenticator_enrolment", creds=creds, otp_token=otp_token
        )

    async def list_nodes(self) -> tuple[Node, ...]:
        return NODES

    async def get_roles(self, names: list[str]) -> tuple[Role, ...]:
        return tuple(r for r in self.roles if r.name in names)

    async def list_active_sessions(self) -> tuple[ActiveSession, ...]:
        self._called("list_active_sessions")
        return self.live

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        self.events.append({"event": event, "user": user, "success": success, **fields})


class ThroughChannel(Resource):
    """A root for StubTreq's own Site: the real site's admission on the
    headers first (as ``WebChannel.allHeadersReceived``), then its routing
    and security headers (``getResourceFor``)."""

    isLeaf = True

    def __init__(self, site: Any) -> None:
        super().__init__()
        self._site = site

    def render(self, request: Request) -> Any:
        assert request.content is not None
        request.head = (request.method, request.uri)  # type: ignore[attr-defined]
        # When the headers are in, Twisted has not parsed the cookies yet.
        cookies, request.received_cookies = request.received_cookies, {}
        refusal = self._site.admit(request, len(request.content.getvalue()))
        request.received_cookies = cookies
        resource = self._site.getResourceFor(request)
        if refusal is not None:
            resource = ErrorResource(refusal.status, str(refusal))
        return resource.render(request)


@attrs.define
class Web:
    agent: FakeWebAgent
    clock: Clock
    keys: WebSessionKeys
    root: Resource
    #: The last request's StubTreq (typed Any: it sets treq's functions on
    #: itself at run time).
    treq: Any = None

    def run(self, call: Deferred[T] | Coroutine[Any, Any, T]) -> T:
        results: list[Any] = []
        ensureDeferred(call).addBoth(results.append)
        self.treq.flush()
        assert results, "the request waited on something: a unit test never should"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        result: T = results[0]
        return result

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        cookie: str | None = None,
        bearer: str | None = None,
        content_type: bytes | None = b"application/json",
    ) -> IResponse:
        headers: dict[bytes, list[bytes]] = {}
        if cookie is not None:
            headers[b"cookie"] = [b"__Host-session=" + cookie.encode()]
        if bearer is not None:
            headers[b"authorization"] = [b"Bearer " + bearer.encode()]
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            if content_type is not None:
                headers[b"content-type"] = [content_type]
        # A client of its own each time: StubTreq keeps cookies, and what a
        # request presents is the test's to say.
        self.treq = StubTreq(self.root)
        return self.run(
            self.treq.request(
                method, URL + path, data=data, headers=headers, allow_redirects=False
            )
        )

    def json(self, response: IResponse) -> Any:
        return self.run(self.treq.json_content(response))

    def text(self, response: IResponse) -> str:
        body: bytes = self.run(self.treq.content(response))
        return body.decode()

    def log_in(self) -> tuple[str, str, dict[str, Any]]:
        """A session: its cookie, bearer and the login's answer."""
        response = self.request("POST", "/v1/webapi/sessions", LOGIN)
        assert response.code == 200
        answer = self.json(response)
        cookie = set_cookie(response).split(";")[0].split("=", 1)[1]
        return cookie, answer["token"], answer


def set_cookie(response: IResponse) -> str:
    values = response.headers.getRawHeaders(b"set-cookie") or []
    assert len(values) == 1, values
    return str(values[0].decode())


@pytest.fixture
def web() -> Web:
    clock = Clock()
    clock.advance(NOW)
    agent = FakeWebAgent(clock)
    keys = WebSessionKeys(clock)
    files = {
        "invite.html": StaticFile(b"<html>invite</html>", b"text/html"),
        "login.html": StaticFile(LOGIN_PAGE, b"text/html"),
    }
    site = make_site(
        cast(AuthAgent, agent),
        WebConfig(cluster_name=CLUSTER, proxy_ssh_addr="proxy:3023", idle_timeout=IDLE),
        clock,
        StaticFiles(files),
        keys=keys,
    )
    return Web(agent, clock, keys, ThroughChannel(site))


LOGIN = {"user": "alice", "pass": PASSWORD, "second_factor_token": CODE}


# --- logging in and out -----------------------------------------------------


def test_a_login_sets_the_session_cookie_with_exactly_its_attributes(web: Web) -> None:
    """POST /v1/webapi/sessions answers a bearer and sets __Host-session:
    HttpOnly, Secure, SameSite=Strict, Path=/, no Domain, and a Max-Age
    that ends with the session."""
    response = web.request("POST", "/v1/webapi/sessions", LOGIN)
    assert response.code == 200
    assert len(web.agent.calls_to("create_web_session")) == 1
    assert set_cookie(response) == (
        f"__Host-session=cookie-01-abcdefghijklmnop; Path=/; Max-Age={TTL}; "
        "Secure; HttpOnly; SameSite=strict"
    )
    assert web.json(response) == {
        "type": "bearer",
        "token": "bearer-01-abcdefghijklmnop",
        "expires_in": TTL,
        "user": "alice",
        "session_expires": NOW + TTL,
    }


def test_a_login_keeps_the_sessions_key_at_the_proxy_and_sends_only_its_public_half(
    web: Web,
) -> None:
    """The proxy makes the session's key, has the auth service sign its public
    key, and keeps key and certificate under the session id for the terminal;
    the answer carries neither."""
    _cookie, _bearer, answer = web.log_in()
    (sent,) = web.agent.calls_to("create_web_session")
    assert sent["client_addr"] == "127.0.0.1"
    key = web.keys.get("session-1")
    assert key is not None
    assert key.certificate == CERT and key.valid_before == NOW + TTL
    assert sent["pub_key"] == key.public_key
    assert "cert" not in answer and "PRIVATE" not in json.dumps(answer)


def test_a_wrong_login_is_a_401_with_the_auth_services_one_message(web: Web) -> None:
    """Wrong credentials: 401, the auth service's message (which says to check
    the device's clock), and no cookie."""
    response = web.request(
        "POST", "/v1/webapi/sessions", {**LOGIN, "second_factor_token": "000000"}
    )
    assert response.code == 401
    assert (
        "check that your device's clock is right"
        in (web.json(response)["error"]["message"])
    )
    assert response.headers.getRawHeaders(b"set-cookie") is None
    assert response.headers.getRawHeaders(b"www-authenticate") is None


def test_a_locked_out_login_is_a_403_saying_until_when(web: Web) -> None:
    web.agent.refusal = api.LockedOut(
        "too many failed logins: this account is locked until 2023-11-14 22:28 UTC"
    )
    response = web.request("POST", "/v1/webapi/sessions", LOGIN)
    assert response.code == 403
    assert "locked until 2023-11-14 22:28 UTC" in web.json(response)["error"]["message"]


def test_logins_are_rate_limited_per_address_before_the_auth_service_is_asked(
    web: Web,
) -> None:
    """Ten quick logins from one address reach the auth service; the next is
    a 429 that does not, and is audited."""
    codes = [web.request("POST", "/v1/webapi/sessions", LOGIN).code for _ in range(11)]
    assert codes == [200] * 10 + [429]
    assert len(web.agent.calls_to("create_web_session")) == 10
    assert [e["status"] for e in web.agent.events] == [429]
    web.clock.advance(5)
    assert web.request("POST", "/v1/webapi/sessions", LOGIN).code == 200


def test_an_auth_service_older_than_the_proxy_is_a_502_saying_to_upgrade_it(
    web: Web,
) -> None:
    """A command the auth service does not know (an upgrade half done) is
    not an internal error of the proxy: a 502 saying what to do."""
    web.agent.refusal = amp.UnhandledCommand(b"UNHANDLED", "Unhandled Command")
    response = web.request("POST", "/v1/webapi/sessions", LOGIN)
    assert response.code == 502
    assert "upgrade" in web.json(response)["error"]["message"]


def test_a_login_body_that_is_not_json_is_a_415(web: Web) -> None:
    response = web.request(
        "POST",
        "/v1/webapi/sessions",
        b"user=alice&pass=x",
        content_type=b"application/x-www-form-urlencoded",
    )
    assert response.code == 415
    assert web.agent.calls == []


def test_logout_ends_the_session_clears_the_cookie_and_forgets_the_key(
    web: Web,
) -> None:
    """DELETE /v1/webapi/sessions: the auth service deletes it (for every
    proxy), the cookie is cleared (Max-Age=0), the proxy's key is gone, and
    the old secrets no longer work."""
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "DELETE", "/v1/webapi/sessions", cookie=cookie, bearer=bearer
    )
    assert response.code == 200
    assert set_cookie(response) == (
        "__Host-session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=strict"
    )
    (deleted,) = web.agent.calls_to("delete_web_session")
    assert deleted["creds"] == api.WebCredentials(cookie, bearer, IDLE)
    assert web.keys.get("session-1") is None
    after = web.request("GET", "/v1/webapi/sites", cookie=cookie, bearer=bearer)
    assert after.code == 401


def test_renewing_gives_new_secrets_and_the_old_ones_stop(web: Web) -> None:
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "POST", "/v1/webapi/sessions/renew", {}, cookie=cookie, bearer=bearer
    )
    assert response.code == 200
    renewed = web.json(response)
    new_cookie = set_cookie(response).split(";")[0].split("=", 1)[1]
    assert new_cookie != cookie and renewed["token"] != bearer
    assert renewed["type"] == "bearer" and renewed["user"] == "alice"
    ok = web.request(
        "GET", "/v1/webapi/sites", cookie=new_cookie, bearer=renewed["token"]
    )
    assert ok.code == 200
    assert (
        web.request("GET", "/v1/webapi/sites", cookie=cookie, bearer=bearer).code == 401
    )


# --- the session rule: cookie AND bearer, JSON bodies, audited refusals ------


@pytest.mark.parametrize(
    ("cookie", "bearer"),
    [
        (None, "bearer-01-abcdefghijklmnop"),
        ("cookie-01-abcdefghijklmnop", None),
        (None, None),
        ("cookie-01-abcdefghijklmnop", "short"),
        ("cookie-01-abcdefghijklmnop", "bearer-01-abcdefghijk\nlmnop"),
    ],
    ids=["bearer-only", "cookie-only", "neither", "malformed-bearer", "bearer-newline"],
)
def test_a_call_without_both_secrets_is_a_401_without_asking_the_auth_service(
    web: Web, cookie: str | None, bearer: str | None
) -> None:
    """Every call but the login needs the cookie and the bearer; with one of
    them, or a malformed one, it is a 401 saying to log in again, and the
    auth service is not asked."""
    web.log_in()
    web.agent.calls.clear()
    response = web.request(
        "GET", f"/v1/webapi/sites/{CLUSTER}/nodes", cookie=cookie, bearer=bearer
    )
    assert response.code == 401
    assert web.json(response) == {
        "error": {
            "message": "you are not logged in, or your session has ended: log in again"
        }
    }
    assert response.headers.getRawHeaders(b"www-authenticate") == [
        b'Bearer error="invalid_token"'
    ]
    assert web.agent.calls == []


def test_a_wrong_bearer_is_a_401_that_tells_nothing_of_the_session(web: Web) -> None:
    """The cookie of a live session with another session's bearer: the auth
    service refuses it; the answer has its message only, no user or node."""
    cookie, _bearer, _ = web.log_in()
    _other_cookie, other_bearer, _ = web.log_in()
    response = web.request(
        "GET", f"/v1/webapi/sites/{CLUSTER}/nodes", cookie=cookie, bearer=other_bearer
    )
    assert response.code == 401
    body = web.json(response)
    assert body == {"error": {"message": "your web session has ended: log in again"}}
    assert "alice" not in json.dumps(body)
    assert set_cookie(response).startswith("__Host-session=; Path=/; Max-Age=0;")


def test_a_body_that_is_not_json_is_a_415_before_the_auth_service_is_asked(
    web: Web,
) -> None:
    """A form-encoded password change, with both secrets, is refused on its
    headers: the session is not even looked up."""
    cookie, bearer, _ = web.log_in()
    web.agent.calls.clear()
    response = web.request(
        "PUT",
        "/v1/webapi/users/password",
        b"old_password=x&new_password=y",
        cookie=cookie,
        bearer=bearer,
        content_type=b"application/x-www-form-urlencoded",
    )
    assert response.code == 415
    assert web.json(response) == {
        "error": {"message": "send the request body as application/json"}
    }
    assert web.agent.calls == []


def test_every_refusal_is_audited_but_a_flood_is_bounded(web: Web) -> None:
    """Each refusal is a ``web.api.denied`` row, or counted in one: a burst
    of ten rows per address, then a steady rate, the rest counted in the next
    row's ``suppressed``."""
    for _ in range(25):
        assert web.request("GET", "/v1/webapi/sites").code == 401
    assert len(web.agent.events) == 10
    web.clock.advance(1)
    rows = web.agent.events
    assert len(rows) == 11
    assert sum(1 + row.get("suppressed", 0) for row in rows) == 25
    assert {row["event"] for row in rows} == {"web.api.denied"}
    first = rows[0]
    assert first["success"] is False
    assert first["status"] == 401 and first["client_addr"] == "127.0.0.1"
    assert first["method"] == "GET" and first["path"] == "/v1/webapi/sites"
    assert "log in again" in first["reason"]


def test_a_refusal_after_the_session_is_known_names_its_user(web: Web) -> None:
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "PUT",
        "/v1/webapi/users/password",
        {"old_password": 1},
        cookie=cookie,
        bearer=bearer,
    )
    assert response.code == 400
    (row,) = web.agent.events
    assert row["user"] == "alice" and row["status"] == 400


def test_every_authenticated_call_sends_the_proxys_idle_timeout(web: Web) -> None:
    """The auth service counts each call as activity against the serving
    proxy's ``web_idle_timeout``."""
    cookie, bearer, _ = web.log_in()
    web.request("GET", "/v1/webapi/sites", cookie=cookie, bearer=bearer)
    web.request(
        "GET", f"/v1/webapi/sites/{CLUSTER}/nodes", cookie=cookie, bearer=bearer
    )
    creds = [c["creds"] for c in web.agent.calls_to("authenticate_web_session")]
    assert creds == [api.WebCredentials(cookie, bearer, IDLE)] * 2


# --- the cluster -------------------------------------------------------------


def test_sites_lists_this_cluster_as_online(web: Web) -> None:
    cookie, bearer, _ = web.log_in()
    response = web.request("GET", "/v1/webapi/sites", cookie=cookie, bearer=bearer)
    assert web.json(response) == {"sites": [{"name": CLUSTER, "status": "online"}]}


def test_the_node_list_is_what_the_roles_allow_with_their_logins(web: Web) -> None:
    """The dev role selects env=dev: web1 and web2, not db1; each with the
    logins the role grants (the user's own and ``deploy``), labels as tags."""
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "GET", f"/v1/webapi/sites/{CLUSTER}/nodes", cookie=cookie, bearer=bearer
    )
    assert response.code == 200
    assert web.json(response) == {
        "items": [
            {
                "id": "id-web1",
                "hostname": "web1",
                "addr": "10.0.0.1:22",
                "tags": [
                    {"name": "env", "value": "dev"},
                    {"name": "role", "value": "web"},
                ],
                "logins": ["alice", "deploy"],
            },
            {
                "id": "id-web2",
                "hostname": "web2",
                "addr": "10.0.0.2:22",
                "tags": [{"name": "env", "value": "dev"}],
                "logins": ["alice", "deploy"],
            },
        ]
    }


def test_a_user_whose_roles_select_no_node_sees_none(web: Web) -> None:
    web.agent.roles = ()
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "GET", f"/v1/webapi/sites/{CLUSTER}/nodes", cookie=cookie, bearer=bearer
    )
    assert web.json(response) == {"items": []}


def test_another_clusters_name_is_a_404_naming_this_one(web: Web) -> None:
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "GET", "/v1/webapi/sites/other.example/nodes", cookie=cookie, bearer=bearer
    )
    assert response.code == 404
    message = web.json(response)["error"]["message"]
    assert "'other.example'" in message and f"'{CLUSTER}'" in message


def test_the_session_list_shows_live_sessions_on_reachable_nodes_only(web: Web) -> None:
    """Sessions of the cluster (any proxy's) on nodes the roles select, in
    Teleport's shape; one on db1 (env=prod) is left out, and the holding
    proxy's peer address (proxy_addr) is not shown to browsers."""
    party = Party("party-1", "bob", "192.0.2.9", last_active=NOW + 5)
    web.agent.live = (
        ActiveSession("s-db", "carol", "db1", "id-db1", "10.0.0.3:22", "root",
                      "proxy-a", NOW, NOW, 80, 24),
        ActiveSession("s-web", "bob", "web1", "id-web1", "10.0.0.1:22", "deploy",
                      "proxy-b", NOW + 1, NOW + 5, 120, 40, (party,),
                      proxy_addr="10.0.0.2:3021"),
    )  # fmt: skip
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "GET", f"/v1/webapi/sites/{CLUSTER}/sessions", cookie=cookie, bearer=bearer
    )
    assert web.json(response) == {
        "sessions": [
            {
                "id": "s-web",
                "user": "bob",
                "login": "deploy",
                "created": NOW + 1,
                "last_active": NOW + 5,
                "server_id": "id-web1",
                "server_hostname": "web1",
                "server_addr": "10.0.0.1:22",
                "parties": [
                    {
                        "id": "party-1",
                        "user": "bob",
                        "remote_addr": "192.0.2.9",
                        "last_active": NOW + 5,
                        "mode": "peer",
                    }
                ],
                "terminal_params": {"w": 120, "h": 40},
                "join_modes": [],
            }
        ]
    }


def test_the_terminal_socket_without_a_terminal_is_a_503_saying_so(web: Web) -> None:
    cookie, bearer, _ = web.log_in()
    response = web.request(
        "GET", f"/v1/webapi/sites/{CLUSTER}/connect", cookie=cookie, bearer=bearer
    )
    assert response.code == 503
    assert web.json(response) == {
        "error": {"message": "the web terminal is not available on this proxy"}
    }


# --- the account ---------------------------------------------------------------


def test_a_password_change_hands_the_session_and_fields_to_the_auth_service(
    web: Web,
) -> None:
    cookie, bearer, _ = web.log_in()
    body = {
        "old_password": PASSWORD,
        "new_password": "another long passphrase",
        "second_factor_token": "654321",
    }
    response = web.request(
        "PUT", "/v1/webapi/users/password", body, cookie=cookie, bearer=bearer
    )
    assert response.code == 200
    assert web.agent.calls_to("change_password") == [
        {
            "creds": api.WebCredentials(cookie, bearer, IDLE),
            "old_password": PASSWORD,
            "otp_token": "654321",
            "new_password": "another long passphrase",
            "client_addr": "127.0.0.1",
        }
    ]


def test_a_wrong_current_password_is_a_401_that_does_not_send_the_page_to_log_in(
    web: Web,
) -> None:
    """The refusal of a wrong password has no ``WWW-Authenticate``: the page
    tells it from a session that has ended, and stays."""
    cookie, bearer, _ = web.log_in()
    body = {
        "old_password": "wrong",
        "new_password": "x" * 12,
        "second_factor_token": CODE,
    }
    response = web.request(
        "PUT", "/v1/webapi/users/password", body, cookie=cookie, bearer=bearer
    )
    assert response.code == 401
    assert response.headers.getRawHeaders(b"www-authenticate") is None
    assert web.json(response) == {
        "error": {"message": "the current password or code is wrong"}
    }


def test_enrolling_an_authenticator_shows_its_secret_and_qr_then_a_code_confirms(
    web: Web,
) -> None:
    cookie, bearer, _ = web.log_in()
    started = web.request(
        "POST",
        "/v1/webapi/mfa/authenticator",
        {"password": PASSWORD},
        cookie=cookie,
        bearer=bearer,
    )
    assert started.code == 200
    pending = web.json(started)
    assert pending["totp_secret"] == "NEWSECRET"
    assert pending["otpauth_uri"].startswith("otpauth://totp/")
    assert pending["qr_svg"].lstrip().startswith(("<?xml", "<svg"))
    assert pending["expires"] == NOW + 600
    confirmed = web.request(
        "PUT",
        "/v1/webapi/mfa/authenticator",
        {"second_factor_token": "111111"},
        cookie=cookie,
        bearer=bearer,
    )
    assert confirmed.code == 200
    (call,) = web.agent.calls_to("confirm_authenticator_enrolment")
    assert call["otp_token"] == "111111"


# --- the pages ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "goes_to"),
    [
        ("/web/sessions", "/web/sessions"),
        ("/web/console/web1/root", "/web/console/web1/root"),
        ("//evil.example", HOME),
        ("//evil.example/web/nodes", HOME),
        ("https://evil.example/web/nodes", HOME),
        ("/\\evil.example", HOME),
        ("/web/\\evil.example", HOME),
        ("/web//evil.example", HOME),
        ("/web/../v1/webapi/sites", HOME),
        ("/web/%2e%2e/v1", HOME),
        ("/web/login", HOME),
        ('/web/x"><script>', HOME),
        ("javascript:alert(1)", HOME),
        ("", HOME),
    ],
)
def test_the_login_page_sends_on_only_to_a_page_of_this_ui(
    web: Web, asked: str, goes_to: str
) -> None:
    """``/web/login?next=`` is checked on the server: a path under /web/ is
    kept, anything that could leave the site (``//host``, a URL, a
    backslash, ``..``) becomes the nodes page."""
    from urllib.parse import quote

    response = web.request("GET", "/web/login?next=" + quote(asked, safe=""))
    assert response.code == 200
    assert f'data-next="{goes_to}"' in web.text(response)
    assert safe_next(asked) == goes_to


@pytest.mark.parametrize("path", ["/web", "/web/"])
def test_web_and_web_slash_go_to_the_nodes_page(web: Web, path: str) -> None:
    response = web.request("GET", path)
    assert response.code == 302
    assert response.headers.getRawHeaders(b"location") == [b"/web/nodes"]


def test_the_xterm_files_are_read_from_node_modules(tmp_path: Path) -> None:
    """Only the three files the console needs, served under vendor/xterm/."""
    for installed in VENDOR_FILES.values():
        path = tmp_path / installed
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"/* {installed} */")
    (tmp_path / "@xterm/xterm/lib/xterm.js").write_text("not served")
    files, missing = read_vendor_files(tmp_path)
    assert missing == []
    assert sorted(files) == sorted(VENDOR_FILES)
    assert files["vendor/xterm/xterm.mjs"].body == b"/* @xterm/xterm/lib/xterm.mjs */"
    assert files["vendor/xterm/xterm.mjs"].content_type.startswith(b"text/javascript")
    assert files["vendor/xterm/xterm.css"].content_type.startswith(b"text/css")


def test_missing_xterm_files_are_named_and_stand_ins_say_to_run_npm_ci(
    tmp_path: Path,
) -> None:
    """Without ``npm ci`` the proxy knows what is missing (to warn at start)
    and serves modules that import cleanly and carry the message."""
    files, missing = read_vendor_files(tmp_path / "nothing-here")
    assert sorted(missing) == sorted(VENDOR_FILES)
    assert "npm ci" in XTERM_MISSING and "scripts/start" in XTERM_MISSING
    module = files["vendor/xterm/xterm.mjs"].body.decode()
    assert json.dumps(XTERM_MISSING) in module
    assert "export class Terminal" in module and "teleconchXtermMissing" in module
    assert "export class FitAddon" in files["vendor/xterm/addon-fit.mjs"].body.decode()


# --- any proxy serves any session (interop) ----------------------------------------


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_a_web_session_made_at_one_proxy_is_served_by_another(
    tmp_path: Path,
) -> None:
    """A cluster (auth service and a proxy) and a second proxy joined by
    token: a login at the first lists the nodes at the second, with the
    same cookie and bearer; a logout at the first is seen at the second."""
    first = await start_cluster(tmp_path / "first")
    try:
        admin = first.admin_agent()
        token = await admin.create_token("proxy", 600)
        second = await start_cluster(
            tmp_path / "second",
            {
                "teleconch": {
                    "nodename": "proxy2",
                    "auth_servers": [str(first.auth_addr)],
                    "auth_token": token.token,
                    "ca_pin": token.ca_pin,
                },
                "auth_service": {"enabled": False},
            },
            clock=first.clock,
        )
        try:
            await admin.upsert_node("web1", "127.0.0.1:2201", {"env": "dev"})
            alice = await sign_up(first, logins=("alice",))
            code = current_code(alice.totp_secret, first.clock)
            secrets = await webclient.log_in(
                first.web_addr, "alice", alice.password, code
            )
            nodes_path = "/v1/webapi/sites/test.example/nodes"

            there = await webclient.call(
                second.web_addr, "GET", nodes_path, None, secrets
            )
            assert there.code == 200, there.body
            assert [n["hostname"] for n in there.body["items"]] == ["web1"]
            assert there.body["items"][0]["logins"] == ["alice"]

            out = await webclient.call(
                first.web_addr, "DELETE", "/v1/webapi/sessions", None, secrets
            )
            assert out.code == 200, out.body
            assert out.cookie() == ""
            after = await webclient.call(
                second.web_addr, "GET", nodes_path, None, secrets
            )
            assert after.code == 401
            assert "log in again" in after.body["error"]["message"]
        finally:
            await second.stop()
    finally:
        await first.stop()


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_a_proxy_without_xterm_installed_warns_once_and_serves_stand_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No node_modules: one warning at start-up saying to run npm ci, and
    the console's module is a stand-in carrying that message."""
    monkeypatch.setattr(teleconch.proxy.service, "NODE_MODULES", tmp_path / "none")
    with capturedLogs() as events:
        cluster = await start_cluster(tmp_path / "data")
    try:
        warnings = [formatEvent(e) for e in events if "npm ci" in formatEvent(e)]
        assert len(warnings) == 1, warnings
        assert "npm ci in teleconch/web" in warnings[0]
        assert "vendor/xterm/xterm.mjs" in warnings[0]
        agent = Agent(reactor, contextFactory=_Insecure())
        url = f"https://{cluster.web_addr}/web/static/vendor/xterm/xterm.mjs"
        response = await agent.request(b"GET", url.encode())
        body = (await _read_body(response)).decode()
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [
            b"text/javascript; charset=utf-8"
        ]
        assert XTERM_MISSING in json.loads(body.split("=", 1)[1].split(";\n")[0])
    finally:
        await cluster.stop()
