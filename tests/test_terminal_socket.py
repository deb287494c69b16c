"""The web terminal's socket: the upgrade's checks, the first frame, control
frames, flow control and the end (teleconch.web.terminal, terminal_party).

Unit tests, in memory: a `task.Clock`, fake auth agent and node shell, the
real `SessionHub`.  Most drive a `BrowserParty` through a fake wire; the
upgrade's refusals go through the real resource with StubTreq; the last
tests run a real Autobahn client against the real `WebSite` over
``twisted.test.iosim``, to pin the protocol's wiring (frames, close, the
HTTP channel given back).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.web.resource import Resource

from teleconch.auth import protocol as api
from teleconch.proxy.routing import AccessDenied
from teleconch.proxy.sessions import HubState
from teleconch.proxy.websession_ssh import ShellOpenFailed, WebShell
from teleconch.web import terminal_messages as msg
from teleconch.web.http import PeerCounter, WebSite
from teleconch.web.keys import WebSessionKeys
from teleconch.web.terminal import (
    AUDIT_BURST,
    AUDIT_PER_SECOND,
    PING_BURST,
    PING_RATE,
    TerminalResource,
    allowed_origins,
    refusal_audit,
)
from teleconch.web.terminal_party import (
    CHECK_EVERY,
    FIRST_FRAME_SECONDS,
    QUIET_CHECK_EVERY,
    UNACKED_LIMIT,
    BrowserParty,
    SocketState,
    TerminalServices,
    Upgrade,
)
from tests.terminal_fakes import (
    NOW,
    FakeAgent,
    FakeShell,
    FakeTerminals,
    FakeWire,
    web_session,
)

PUBLIC = "proxy.example:3080"
ORIGIN = "https://proxy.example:3080"
PARAMS = {"server_id": "web1", "login": "root", "term": {"w": 100, "h": 30}}
TOKEN = json.dumps({"token": "bearer-secret"}).encode()


class Rig:
    """Terminal sockets on one clock, sharing an agent, an opener and an audit log."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.agent = FakeAgent()
        self.terminals = FakeTerminals(self.clock)
        self.audited: list[tuple[str, dict[str, Any]]] = []
        self.keys = WebSessionKeys(self.clock)
        self.services = TerminalServices(
            clock=self.clock,
            agent=self.agent,
            terminals=self.terminals,
            idle_timeout=1800,
            audit=lambda host, fields: self.audited.append((host, fields)),
            keys=self.keys,
        )

    def socket(self) -> tuple[BrowserParty, FakeWire]:
        wire = FakeWire()
        upgrade = Upgrade(
            "cookie-secret", msg.parse_params(json.dumps(PARAMS)), "10.0.0.9"
        )
        party = BrowserParty(self.services, wire, upgrade)
        party.opened()
        return party, wire

    def open_socket(self) -> tuple[BrowserParty, FakeWire, FakeShell]:
        party, wire = self.socket()
        party.message(TOKEN, False)
        assert party.state is SocketState.OPEN, wire.texts
        return party, wire, self.terminals.shells[-1]


def control(**message: Any) -> bytes:
    return json.dumps(message).encode()


# -- the first frame ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "binary"),
    [
        (TOKEN, True),
        (b"bearer-secret", False),
        (control(token=""), False),
        (control(token="x", extra=1), False),
        (control(type="resize", cols=80, rows=24), False),
    ],
)
def test_a_first_frame_that_is_not_a_token_is_refused(
    payload: bytes, binary: bool
) -> None:
    """Closed with a reason the person can act on; the auth service and the node
    never hear of it; audited."""
    rig = Rig()
    party, wire = rig.socket()
    party.message(payload, binary)
    assert party.state is SocketState.CLOSING
    [(code, reason)] = wire.closes
    assert code == msg.CLOSE_LOGIN and "reload the page" in reason
    assert wire.of_type("error")[0]["message"].endswith("reload the page")
    assert rig.agent.seen == [] and rig.terminals.opened == []
    assert rig.audited[0][1]["reason"] == "bad first frame"


def test_a_token_the_auth_service_refuses_closes_the_socket_before_the_node() -> None:
    rig = Rig()
    rig.agent.refusal = api.SessionExpired("your web session has expired; log in again")
    party, wire = rig.socket()
    party.message(TOKEN, False)
    assert wire.closes == [
        (msg.CLOSE_LOGIN, "your web session has expired; log in again")
    ]
    assert rig.agent.seen[0].bearer == "bearer-secret"
    assert rig.agent.seen[0].cookie == "cookie-secret"
    assert rig.agent.seen[0].idle_timeout == 1800
    assert rig.terminals.opened == []
    assert rig.audited[0][1]["reason"] == "web session refused"


def test_the_auth_service_down_says_try_again() -> None:
    rig = Rig()
    from teleconch.auth.agent import AuthUnavailable

    rig.agent.refusal = AuthUnavailable("no auth server answered")
    party, wire = rig.socket()
    party.message(TOKEN, False)
    assert wire.closes[0][0] == msg.CLOSE_UNAVAILABLE
    assert "try again" in wire.closes[0][1]


def test_a_first_frame_later_than_four_seconds_is_too_late() -> None:
    """The deadline runs on the reactor's clock from the handshake."""
    rig = Rig()
    party, wire = rig.socket()
    rig.clock.advance(FIRST_FRAME_SECONDS - 0.01)
    assert wire.closes == []
    rig.clock.advance(0.01)
    assert party.state is SocketState.CLOSING
    assert wire.closes[0][0] == msg.CLOSE_TOKEN_LATE
    assert "4 seconds" in wire.closes[0][1]
    party.message(TOKEN, False)  # a late token changes nothing
    assert rig.agent.seen == []


def test_a_token_in_time_stops_the_deadline() -> None:
    rig = Rig()
    party, wire = rig.socket()
    rig.clock.advance(FIRST_FRAME_SECONDS - 1)
    party.message(TOKEN, False)
    rig.clock.advance(10)
    assert party.state is SocketState.OPEN and wire.closes == []


# -- the session -----------------------------------------------------------


def test_an_open_socket_names_its_session_and_carries_bytes_both_ways() -> None:
    rig = Rig()
    party, wire, shell = rig.open_socket()
    [session] = wire.of_type("session")
    assert session == {
        "type": "session",
        "id": "sess-1",
        "node": "web1",
        "login": "root",
        "cols": 100,
        "rows": 30,
        "mode": "owner",
    }
    assert rig.terminals.opened[0]["server_id"] == "web1"
    party.message(b"echo $((6*7))\r", True)
    assert shell.written == [b"echo $((6*7))\r"]
    shell.events.shell_output(b"42\r\n")
    assert wire.binary == [b"42\r\n"]


def test_routing_refusals_say_why_and_are_not_audited_twice() -> None:
    """The router audits its own refusals; the socket only passes the message on."""
    rig = Rig()
    rig.terminals.refusal = AccessDenied(
        "access denied: login 'root' is not allowed on web1", "login not allowed"
    )
    party, wire = rig.socket()
    party.message(TOKEN, False)
    assert wire.closes[0][0] == msg.CLOSE_DENIED
    assert wire.of_type("error")[0]["message"].startswith("access denied")
    assert rig.audited == []


def test_a_node_that_cannot_be_opened_says_so() -> None:
    rig = Rig()
    rig.terminals.refusal = ShellOpenFailed(
        "web1: remote host presented a public key (ssh-ed25519), expected a host "
        "certificate from the cluster's host CA; refusing to connect",
        "host certificate refused",
    )
    party, wire = rig.socket()
    party.message(TOKEN, False)
    assert wire.closes[0][0] == msg.CLOSE_NODE
    assert "expected a host certificate" in wire.of_type("error")[0]["message"]


def test_the_shell_exiting_sends_its_status_and_closes_normally() -> None:
    rig = Rig()
    party, wire, shell = rig.open_socket()
    shell.exit(3)
    assert wire.of_type("exit") == [
        {
            "type": "exit",
            "status": 3,
            "signal": None,
            "message": "the shell exited with status 3",
        }
    ]
    assert wire.closes == [(msg.CLOSE_NORMAL, "the shell exited with status 3")]
    party.closed()
    assert party.state is SocketState.CLOSED


def test_closing_the_socket_ends_the_ssh_session() -> None:
    rig = Rig()
    party, _wire, shell = rig.open_socket()
    party.closed()
    hub = rig.terminals.hubs[0]
    assert shell.closed and hub.state is HubState.ENDING
    shell.exit()
    assert rig.terminals.registry.calls[-1] == (
        "end",
        ("sess-1", None, "the browser closed the terminal"),
    )


def test_a_socket_closed_while_authenticating_never_opens_a_session() -> None:
    rig = Rig()
    hold: Deferred[None] = Deferred()
    rig.agent.hold = hold
    party, _wire = rig.socket()
    party.message(TOKEN, False)
    assert party.state is SocketState.AUTHENTICATING
    party.closed()
    hold.callback(None)
    assert rig.terminals.opened == []


def test_resize_frames_reach_the_node() -> None:
    rig = Rig()
    party, _wire, shell = rig.open_socket()
    party.message(control(type="resize", cols=132, rows=43), False)
    assert shell.resized == [(132, 43)]
    assert rig.terminals.hubs[0].record.cols == 132


def test_a_resize_and_input_while_authenticating_shape_the_new_session() -> None:
    """Frames after the token but before the session: the size it opens at, the
    first input it gets."""
    rig = Rig()
    hold: Deferred[None] = Deferred()
    rig.agent.hold = hold
    party, _wire = rig.socket()
    party.message(TOKEN, False)
    party.message(control(type="resize", cols=50, rows=10), False)
    party.message(b"ls\r", True)
    hold.callback(None)
    assert party.state is SocketState.OPEN
    assert (rig.terminals.opened[0]["cols"], rig.terminals.opened[0]["rows"]) == (
        50,
        10,
    )
    assert rig.terminals.shells[0].written == [b"ls\r"]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        control(type="resize", cols=0, rows=24),
        control(type="resize", cols=80, rows=1001),
        control(type="resize", cols="80", rows=24),
        control(type="ack", bytes=-1),
        control(type="ack", bytes=1),  # nothing was sent
        control(type="shutdown"),
        b"[]",
        b"x" * (msg.MAX_CONTROL_FRAME + 1),
    ],
)
def test_a_malformed_control_frame_closes_only_that_socket(payload: bytes) -> None:
    """The bad socket is closed with the reason; another one on the proxy goes on."""
    rig = Rig()
    bad, bad_wire, bad_shell = rig.open_socket()
    good, good_wire, good_shell = rig.open_socket()
    bad.message(payload, False)
    assert bad_wire.closes[0][0] == msg.CLOSE_MALFORMED
    assert "malformed" in bad_wire.of_type("error")[0]["message"]
    assert bad_shell.closed
    assert rig.audited[-1][1]["reason"] == "malformed control frame"
    good.message(b"ls\r", True)
    good_shell.events.shell_output(b"file\r\n")
    assert good.state is SocketState.OPEN and not good_shell.closed
    assert good_shell.written == [b"ls\r"] and good_wire.binary == [b"file\r\n"]


# -- flow control ------------------------------------------------------------


class FakeChannel:
    """The parts of a SessionChannel a WebShell uses: its window, counted."""

    localMaxPacket = 32 * 1024
    localWindowSize = 512 * 1024

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        from teleconch.conch.session import ExitStatus

        self.localWindowLeft = self.localWindowSize
        self.opened = 0
        self.exit: Deferred[ExitStatus] = Deferred()
        self.sent: list[bytes] = []

    def receive(self, n: int) -> None:
        assert n <= self.localWindowLeft, "the node sent past its window"
        self.localWindowLeft -= n

    def open_window(self, n: int) -> None:
        self.opened += n
        self.localWindowLeft += n

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def window_change(self, cols: int, rows: int) -> None:
        pass


class FakeConnection:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_ssh_window_stops_opening_past_256_kib_unacknowledged() -> None:
    """A node that writes as fast as it may fills the window, then waits for acks."""
    rig = Rig()
    party, wire, fake = rig.open_socket()
    hub = rig.terminals.hubs[0]
    channel = FakeChannel()
    hub._shell = WebShell(FakeConnection(), channel, hub)  # type: ignore[arg-type]
    packet = b"y\n" * 16 * 1024  # 32 KiB, as OpenSSH sends them
    sent = 0
    for _ in range(1000):  # the node writes while its window lets it
        if channel.localWindowLeft < len(packet):
            break
        channel.receive(len(packet))
        hub.shell_output(packet)
        sent += len(packet)
    assert party.unacked == sent == sum(len(b) for b in wire.binary)
    assert party.unacked > UNACKED_LIMIT
    assert sent <= UNACKED_LIMIT + channel.localWindowSize  # memory is bounded
    assert not party.wants_output()
    stalled = channel.opened
    party.message(control(type="ack", bytes=32 * 1024), False)
    assert channel.opened == stalled  # still over the limit
    party.message(control(type="ack", bytes=party.unacked - UNACKED_LIMIT), False)
    assert party.unacked == UNACKED_LIMIT and channel.opened > stalled
    party.message(control(type="ack", bytes=party.unacked), False)
    assert party.unacked == 0
    assert (
        channel.localWindowLeft >= channel.localWindowSize - 3 * channel.localMaxPacket
    )
    del fake


def test_a_browser_socket_backing_up_stops_the_window_too() -> None:
    """The transport's pause counts like missing acks; its resume reopens."""
    rig = Rig()
    party, _wire, shell = rig.open_socket()
    party.socket_full(True)
    shell.events.shell_output(b"x" * 1000)
    assert shell.consumed_total == 0
    party.message(control(type="ack", bytes=1000), False)
    assert shell.consumed_total == 0  # acked, but the socket is still full
    party.socket_full(False)
    assert shell.consumed_total == 1000


def test_input_waits_while_the_nodes_window_is_full() -> None:
    rig = Rig()
    _party, wire, shell = rig.open_socket()
    shell.events.shell_writable(False)
    assert wire.paused
    shell.events.shell_writable(True)
    assert not wire.paused


# -- the web session's life ----------------------------------------------------


def test_terminal_input_checks_the_web_session_at_most_once_a_second() -> None:
    """Typing is activity and a chance to learn of a logout: one check a second,
    coalesced, and none without input."""
    rig = Rig()
    party, _wire, _shell = rig.open_socket()
    assert len(rig.agent.seen) == 1
    for _ in range(10):
        rig.clock.advance(CHECK_EVERY / 20)
        party.message(b"x", True)
    assert len(rig.agent.seen) == 1  # half a second of typing: one check due
    rig.clock.advance(CHECK_EVERY)
    assert len(rig.agent.seen) == 2
    rig.clock.advance(CHECK_EVERY * 300)  # no input, no check
    assert len(rig.agent.seen) == 2


def test_a_web_session_ended_elsewhere_closes_the_terminal_at_the_next_input() -> None:
    """A logout at another proxy: the next keystroke, however soon after the
    last check, ends the terminal within a second (it used to take a minute)."""
    rig = Rig()
    party, wire, shell = rig.open_socket()
    rig.clock.advance(5)
    rig.agent.refusal = api.SessionExpired("you have logged out; log in again")
    party.message(b"x", True)
    rig.clock.advance(CHECK_EVERY)
    assert wire.closes == [(msg.CLOSE_LOGIN, "you have logged out; log in again")]
    assert shell.closed


def test_a_terminal_without_input_ends_when_its_web_session_goes_idle() -> None:
    """A terminal that only shows output (``tail -f``) looks at its web session
    once a minute, with the check that is not activity, and closes when the
    auth service says the session went idle or ended elsewhere."""
    rig = Rig()
    _party, wire, shell = rig.open_socket()
    authenticated = len(rig.agent.seen)
    rig.clock.advance(QUIET_CHECK_EVERY)
    assert len(rig.agent.looked) == 1 and wire.closes == []
    rig.agent.refusal = api.SessionExpired(
        "your web session ended after 30 minutes without activity; log in again"
    )
    rig.clock.advance(QUIET_CHECK_EVERY)
    assert wire.closes and wire.closes[0][0] == msg.CLOSE_LOGIN
    assert "without activity" in wire.of_type("error")[0]["message"]
    assert shell.closed
    assert len(rig.agent.seen) == authenticated  # no look counted as activity
    rig.clock.advance(10 * QUIET_CHECK_EVERY)
    assert len(rig.agent.looked) == 2  # and none after the close


def test_logging_out_at_this_proxy_closes_that_sessions_terminals_at_once() -> None:
    """A logout forgets the web session's key here: its terminals end with no
    input needed (a quiet `tail -f` would otherwise run on until the session's
    end), and a terminal of another web session is untouched."""
    rig = Rig()
    party, wire, shell = rig.open_socket()
    rig.agent.info = web_session(id="web-2")
    other, other_wire, other_shell = rig.open_socket()
    rig.keys.forget("web-1")
    assert wire.closes and wire.closes[0][0] == msg.CLOSE_LOGIN
    assert "log" in wire.of_type("error")[0]["message"]
    assert shell.closed and party.state is SocketState.CLOSING
    assert other_wire.closes == [] and not other_shell.closed
    party.closed()
    rig.keys.forget("web-1")  # a second forget finds nobody watching
    assert other.state is SocketState.OPEN


def test_the_terminal_closes_when_the_web_session_reaches_its_end() -> None:
    rig = Rig()
    rig.agent.info = web_session(expires=NOW + 600)
    _party, wire, shell = rig.open_socket()
    rig.clock.advance(599)
    assert wire.closes == []
    rig.clock.advance(1)
    assert wire.closes[0][0] == msg.CLOSE_LOGIN and shell.closed


# -- the upgrade, through the real resource ---------------------------------


def _tree(rig: Rig) -> Resource:
    root = Resource()
    root.putChild(b"connect", TerminalResource(rig.services, lambda: PUBLIC))
    return root


HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def _get(
    rig: Rig,
    headers: dict[str, str],
    params: Any = PARAMS,
    handshake: dict[str, str] = HANDSHAKE,
    seen: dict[str, Any] | None = None,
    query: str | None = None,
) -> tuple[int, Any]:
    if query is None:
        query = "" if params is None else "?params=" + quote(json.dumps(params))

    async def go() -> tuple[int, Any]:
        treq: Any = StubTreq(_tree(rig))
        response = await treq.get(
            f"https://proxy.example:3080/connect{query}",
            headers={**handshake, **headers},
        )
        if seen is not None:
            seen["headers"] = response.headers
        return response.code, json.loads(await treq.content(response))

    d = ensureDeferred(go())
    results: list[tuple[int, Any]] = []
    d.addCallback(results.append)
    assert results, "the refusal should be answered at once"
    return results[0]


GOOD_HEADERS = {"Origin": ORIGIN, "Cookie": "__Host-session=cookie-secret"}


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"Connection": "keep-alive"}, 400, "no connection upgrade"),
        ({"Sec-WebSocket-Version": "8"}, 426, "websocket version"),
        ({"Sec-WebSocket-Version": None}, 426, "websocket version"),
        ({"Sec-WebSocket-Key": None}, 400, "bad websocket key"),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "bad websocket key"),
        ({"Sec-WebSocket-Key": "!!not base64!!"}, 400, "bad websocket key"),
    ],
)
def test_a_broken_websocket_handshake_gets_a_json_refusal_not_autobahns_empty_400(
    change: dict[str, str | None], status: int, reason: str
) -> None:
    """Autobahn answers a bad handshake (or accepts the hybi-08 draft) with an
    empty 400; the resource refuses it first, saying what is wrong, audited."""
    rig = Rig()
    handshake = {k: v for k, v in {**HANDSHAKE, **change}.items() if v is not None}
    seen: dict[str, Any] = {}
    got, body = _get(rig, GOOD_HEADERS, handshake=handshake, seen=seen)
    assert got == status and body["error"]["message"]
    assert rig.audited[0][1]["reason"] == reason
    if status == 426:
        assert seen["headers"].getRawHeaders("sec-websocket-version") == ["13"]


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://proxy.example:3080",
        "https://proxy.example:3081",
        None,
    ],
)
def test_a_socket_from_a_foreign_origin_is_refused_at_the_handshake(
    origin: str | None,
) -> None:
    rig = Rig()
    headers = {k: v for k, v in GOOD_HEADERS.items() if k != "Origin"}
    if origin is not None:
        headers["Origin"] = origin
    status, body = _get(rig, headers)
    assert status == 403
    assert "proxy's own pages" in body["error"]["message"]
    assert rig.audited[0][1]["reason"] == "foreign origin"
    assert rig.audited[0][0] == "127.0.0.1"  # StubTreq's client address


def test_a_socket_without_the_session_cookie_is_refused() -> None:
    rig = Rig()
    status, body = _get(rig, {"Origin": ORIGIN})
    assert status == 403 and "log in" in body["error"]["message"]
    assert rig.audited[0][1]["reason"] == "no session cookie"


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"server_id": "web1", "login": "root"},
        {"server_id": "", "login": "root", "term": {"w": 80, "h": 24}},
        {"server_id": "web1", "login": "root", "term": {"w": 0, "h": 24}},
        {"server_id": "web1", "login": "root", "term": {"w": 80, "h": 100000}},
        {"server_id": "web1", "login": "ro\not", "term": {"w": 80, "h": 24}},
    ],
)
def test_bad_terminal_params_are_refused_with_the_reason(params: Any) -> None:
    rig = Rig()
    status, body = _get(rig, GOOD_HEADERS, params)
    assert status == 400
    assert body["error"]["message"].startswith("bad terminal request: ")


def test_params_that_are_not_utf8_are_refused_without_pythons_codec_text() -> None:
    rig = Rig()
    status, body = _get(rig, GOOD_HEADERS, query="?params=%ff%fe")
    assert status == 400
    assert body["error"]["message"] == "bad terminal request: params is not UTF-8"


def test_refused_terminals_are_audited_but_a_flood_is_not_a_flood_of_events() -> None:
    """`refusal_audit`: a burst per address, then a steady rate; the rest counted."""
    clock = Clock()
    written: list[tuple[str, str, dict[str, Any]]] = []

    async def emit(event: str, user: str, success: bool, **fields: Any) -> None:
        assert success is False
        written.append((event, user, fields))

    audit = refusal_audit(clock, emit)
    for _ in range(100):
        audit("10.0.0.9", {"user": "", "reason": "foreign origin", "message": "m"})
    assert len(written) == AUDIT_BURST
    assert written[0][0] == "web.terminal.refused"
    assert written[0][2]["client_addr"] == "10.0.0.9"
    clock.advance(1 / AUDIT_PER_SECOND)
    # The flushed row is the last refusal; it counts the others it stands for.
    assert len(written) == AUDIT_BURST + 1
    assert written[-1][2]["suppressed"] == 100 - AUDIT_BURST - 1
    audit("10.0.0.7", {"user": "bob", "reason": "bad params", "message": "m"})
    assert written[-1][1] == "bob"


def test_the_allowed_origin_is_the_public_address_and_a_bare_443() -> None:
    assert allowed_origins("Proxy.Example:3080") == {"https://proxy.example:3080"}
    assert allowed_origins("proxy.example:443") == {
        "https://proxy.example:443",
        "https://proxy.example",
    }
    assert allowed_origins("[::1]:3080") == {"https://[::1]:3080"}


# -- a real Autobahn client against the real site, in memory --------------------


class Browser(WebSocketClientProtocol):
    """Sends the token at open; records what the proxy sends."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[dict[str, Any]] = []
        self.binary: list[bytes] = []
        self.closed_with: tuple[int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.sendMessage(TOKEN, isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.binary.append(payload)
        else:
            self.texts.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed_with = (code, reason)


def _connect(
    rig: Rig, origin: str = ORIGIN
) -> tuple[Browser, iosim.IOPump, WebSite, iosim.FakeTransport]:
    site = WebSite(_tree(rig), rig.clock, PeerCounter(4))
    url = "ws://proxy.example:3080/connect?params=" + quote(json.dumps(PARAMS))
    factory = WebSocketClientFactory(
        url, origin=origin, headers={"Cookie": "__Host-session=cookie-secret"}
    )
    factory.protocol = Browser
    server = site.buildProtocol(IPv4Address("TCP", "10.0.0.9", 50000))
    client: Any = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3080))
    server_io = iosim.FakeTransport(server, isServer=True)
    client_io = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(server, server_io, client, client_io, clock=rig.clock)
    return client, pump, site, server_io


def test_a_real_websocket_carries_the_session_bytes_and_exit_status() -> None:
    """The thin protocol over the real Site: token, session frame, binary both
    ways, the exit status, a normal close, and the HTTP connection given back."""
    rig = Rig()
    browser, pump, site, _socket = _connect(rig)
    pump.flush()
    assert browser.texts[0]["type"] == "session", browser.texts
    assert site.connections.total == 1
    shell = rig.terminals.shells[0]
    browser.sendMessage(b"echo hi\r", isBinary=True)
    shell.events.shell_output("h\u00e9\u2603".encode()[:3])  # a split character
    shell.events.shell_output("h\u00e9\u2603".encode()[3:])
    pump.flush()
    assert shell.written == [b"echo hi\r"]
    assert b"".join(browser.binary).decode() == "h\u00e9\u2603"
    shell.exit(3)
    pump.flush()
    assert browser.texts[-1]["type"] == "exit" and browser.texts[-1]["status"] == 3
    assert browser.closed_with == (1000, "the shell exited with status 3")
    assert site.connections.total == 0


def test_a_real_websocket_from_a_foreign_origin_gets_a_403() -> None:
    rig = Rig()
    browser, pump, site, _socket = _connect(rig, origin="https://evil.example")
    pump.flush()
    assert browser.texts == [] and rig.terminals.opened == []
    assert browser.closed_with is not None
    assert rig.audited[0][1]["reason"] == "foreign origin"
    assert site.connections.total == 0


def test_a_real_websocket_closed_by_the_browser_ends_the_session() -> None:
    rig = Rig()
    browser, pump, site, _socket = _connect(rig)
    pump.flush()
    browser.sendClose(1000)
    pump.flush()
    shell = rig.terminals.shells[0]
    assert shell.closed
    assert site.connections.total == 0


def test_a_real_websocket_whose_socket_backs_up_stops_the_nodes_window() -> None:
    """The protocol is the socket's producer: the transport pausing it (its send
    buffer full) holds the node's window shut until it resumes."""
    rig = Rig()
    browser, pump, _site, socket = _connect(rig)
    pump.flush()
    shell = rig.terminals.shells[0]
    assert socket.producer is not None and socket.streamingProducer
    socket.producer.pauseProducing()
    shell.events.shell_output(b"x" * 1000)
    pump.flush()
    assert shell.consumed_total == 0
    browser.sendMessage(json.dumps({"type": "ack", "bytes": 1000}).encode())
    pump.flush()
    assert shell.consumed_total == 0  # acknowledged, but the socket is still full
    socket.producer.resumeProducing()
    assert shell.consumed_total == 1000


def test_a_ping_flood_closes_the_socket_as_too_many_requests() -> None:
    """Pings are answered (a load balancer's keep-alive), but a flood of them
    (each a pong written back) is a 4429 close, audited, and the session ends."""
    rig = Rig()
    browser, pump, _site, _socket = _connect(rig)
    pump.flush()
    assert browser.texts[0]["type"] == "session"
    for _ in range(PING_BURST):
        browser.sendPing(b"keep-alive")
    pump.flush()
    assert browser.closed_with is None  # a burst is fine
    rig.clock.advance(PING_BURST / PING_RATE)
    for _ in range(PING_BURST * 50):
        browser.sendPing(b"p" * 125)
    pump.flush()
    assert browser.closed_with is not None and browser.closed_with[0] == msg.CLOSE_FLOOD
    assert "pings" in browser.texts[-1]["message"]
    assert rig.terminals.shells[0].closed
    assert [f["reason"] for _, f in rig.audited] == ["ping flood"]
