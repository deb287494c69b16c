"""The web terminal's socket: ``/v1/webapi/sites/<cluster>/connect``.

`TerminalResource` is the route in the proxy's Site.  It checks the upgrade
on its headers before a WebSocket exists: the ``Origin`` must be the
proxy's public web address (so another site's page cannot open a terminal
with the person's cookie), the ``__Host-session`` cookie must be there, and
``params`` must name a node, a login and a size.  A refusal is the API's
JSON error (403, or 400 for bad params) with the security headers, and is
audited; the token itself is never in the URL: it is the first frame.

Then Autobahn's `WebSocketResource` takes the connection over, and
`TerminalProtocol` (thin) hands everything to a `BrowserParty`
(`teleconch.web.terminal_party`): frames, the socket's back-pressure (a
producer on the transport: a browser whose TCP connection backs up stops
the node's window as surely as one that stops acknowledging), and its end.

The HTTP channel the upgrade came through is given back its end when the
socket ends (its connection counts against the per-address cap until then),
and its idle timeout, which would otherwise cut a quiet terminal, is off.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from teleconch.addresses import parse_host_port
from teleconch.proxy.joining import Joining
from teleconch.proxy.recorder import Recorders
from teleconch.proxy.routing import Router
from teleconch.proxy.sessions import Sessions
from teleconch.proxy.websession_ssh import WebTerminals
from teleconch.refusals import RefusalAudit
from teleconch.web import terminal_messages as msg
from teleconch.web.http import client_host, error_body
from teleconch.web.keys import WebSessionKeys
from teleconch.web.terminal_party import (
    BrowserParty,
    TerminalServices,
    Upgrade,
)

log = Logger()

SESSION_COOKIE = b"__Host-session"
#: Seconds between pings on a quiet socket (load balancers drop idle ones),
#: and how long a pong may take before the socket is dropped.
PING_INTERVAL = 30
PING_TIMEOUT = 30
#: Pings a browser may send: a burst, then this many a second on average
#: (each is answered with a pong; a flood of them is a 4429 close).
PING_BURST = 20
PING_RATE = 1.0
#: The largest message the browser may send (a paste is cut into pieces).
MAX_MESSAGE = 1024 * 1024
#: Refused terminals audited per address: a burst, then a steady rate.
PING_FLOOD = "the browser sent too many pings; reload the page"
AUDIT_BURST = 10
AUDIT_PER_SECOND = 0.2


def allowed_origins(public_addr: str) -> set[str]:
    """The ``Origin`` a page served by the proxy sends, for ``host:port``."""
    addr = parse_host_port(public_addr, 443)
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    origins = {f"https://{host}:{addr.port}".lower()}
    if addr.port == 443:
        origins.add(f"https://{host}".lower())
    return origins


def _cookie(request: Request) -> str:
    value = request.getCookie(SESSION_COOKIE)
    return value.decode("utf-8", "replace") if value else ""


class TerminalProtocol(WebSocketServerProtocol):
    """One terminal socket; everything it hears goes to its `BrowserParty`."""

    factory: TerminalFactory
    upgrade: Upgrade | None = None
    channel: Any = None  # the HTTP channel the upgrade came through
    party: BrowserParty | None = None
    _ping_budget: tuple[float, float] | None = None  # (pings left, when)

    def onConnect(self, request: Any) -> None:
        return None  # accepted: the resource has checked the upgrade

    def onOpen(self) -> None:
        assert self.upgrade is not None
        try:
            self._socket().registerProducer(_Backpressure(self), True)
        except RuntimeError:  # a producer is there already: acks alone pace it
            log.warn("web terminal: the socket has a producer already")
        self.party = BrowserParty(self.factory.services, self, self.upgrade)
        self.party.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.party is not None:
            self.party.message(payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        """Answer pings, up to PING_BURST and then PING_RATE a second."""
        now = self.factory.services.clock.seconds()
        if self._ping_budget is None:
            self._ping_budget = (float(PING_BURST), now)
        budget, then = self._ping_budget
        budget = min(float(PING_BURST), budget + (now - then) * PING_RATE)
        if budget < 1.0:
            self._ping_budget = (budget, now)
            if self.party is not None:
                self.party.refuse(msg.CLOSE_FLOOD, PING_FLOOD, "ping flood")
            else:
                self.close(msg.CLOSE_FLOOD, PING_FLOOD)
            return
        self._ping_budget = (budget - 1.0, now)
        super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.party is not None:
            self.party.closed()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.party is not None:
            self.party.closed()
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.connectionLost(reason)

    # -- Wire: what the party sends ---------------------------------------

    def _open(self) -> bool:
        return bool(self.state == self.STATE_OPEN)

    def send_json(self, message: dict[str, Any]) -> None:
        if self._open():
            self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def send_bytes(self, data: bytes) -> None:
        if self._open():
            self.sendMessage(data, isBinary=True)

    def close(self, code: int, reason: str) -> None:
        if self._open():
            self.sendClose(code, reason)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self._socket().pauseProducing()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self._socket().resumeProducing()

    def _socket(self) -> Any:
        """The TLS (or TCP) transport: a consumer, and a producer we may pause."""
        return self.transport


@implementer(IPushProducer)
class _Backpressure:
    """What the socket pauses when its send buffer fills: the party's output."""

    def __init__(self, protocol: TerminalProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        if self._protocol.party is not None:
            self._protocol.party.socket_full(True)

    def resumeProducing(self) -> None:
        if self._protocol.party is not None:
            self._protocol.party.socket_full(False)

    def stopProducing(self) -> None:
        pass  # connectionLost follows


class TerminalFactory(WebSocketServerFactory):
    """Builds a `TerminalProtocol` for each upgrade the resource lets through."""

    protocol = TerminalProtocol  # type: ignore[assignment]  # autobahn is untyped

    def __init__(self, services: TerminalServices) -> None:
        super().__init__(reactor=services.clock)
        self.services = services
        self.setProtocolOptions(
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            versions=[13],  # RFC 6455 only, not the drafts
            # A frame the protocol forbids gets a close frame with its code
            # (1002, 1007, 1009), so the page can say why; not a bare drop.
            failByDrop=False,
            maxMessagePayloadSize=MAX_MESSAGE,
            maxFramePayloadSize=MAX_MESSAGE,
            perMessageCompressionAccept=lambda offers: None,
        )
        self._next: tuple[Upgrade, Any] | None = None

    def upgrading(self, upgrade: Upgrade, channel: Any) -> None:
        """What the next protocol built is for (set just before it is built)."""
        self._next = (upgrade, channel)

    def upgrading_done(self) -> None:
        self._next = None

    def buildProtocol(self, addr: Any) -> Any:
        protocol: Any = super().buildProtocol(addr)
        if self._next is not None:
            protocol.upgrade, protocol.channel = self._next
            self._next = None
        return protocol


class TerminalResource(Resource):
    """``GET .../connect?params=...`` with an upgrade: the checks, then the socket."""

    isLeaf = True

    def __init__(
        self,
        services: TerminalServices,
        public_addr: Callable[[], str],
    ) -> None:
        super().__init__()
        self._factory = TerminalFactory(services)
        self._socket = WebSocketResource(self._factory)
        self._public_addr = public_addr
        self._audit = services.audit

    def render(self, request: Request) -> Any:
        try:
            upgrade = self._check(request)
        except _Refused as e:
            self._audit(
                client_host(request),
                {"user": "", "reason": e.reason, "message": str(e)},
            )
            return error_body(request, e.status, str(e))
        channel: Any = request.channel
        transport: Any = channel.transport
        # The socket is the terminal's now: not the HTTP channel's producer,
        # and no HTTP idle timeout (the terminal pings instead).
        transport.unregisterProducer()
        channel.setTimeout(None)
        self._factory.upgrading(upgrade, channel)
        try:
            return self._socket.render(request)
        finally:
            self._factory.upgrading_done()

    def _check(self, request: Request) -> Upgrade:
        if request.method != b"GET":
            raise _Refused(405, "open the terminal with GET", "method not allowed")
        if (request.getHeader("upgrade") or "").lower() != "websocket":
            raise _Refused(
                426,
                "this URL is the web terminal's WebSocket: open a node from /web/nodes",
                "not a websocket upgrade",
            )
        self._check_handshake(request)
        origins = request.requestHeaders.getRawHeaders(b"origin") or []
        expected = allowed_origins(self._public_addr())
        if (
            len(origins) != 1
            or origins[0].decode("ascii", "replace").lower() not in expected
        ):
            raise _Refused(
                403,
                "the terminal can only be opened from the proxy's own pages "
                f"({sorted(expected)[0]}/web/nodes)",
                "foreign origin",
            )
        cookie = _cookie(request)
        if not cookie:
            raise _Refused(
                403, "you are not logged in: log in again", "no session cookie"
            )
        raw = request.args.get(b"params", [None])[0]
        try:
            text = raw.decode("utf-8") if raw is not None else None
        except UnicodeDecodeError:
            raise _Refused(
                400, "bad terminal request: params is not UTF-8", "bad params"
            ) from None
        try:
            term = msg.parse_params(text)
        except msg.BadMessage as e:
            raise _Refused(400, f"bad terminal request: {e}", "bad params") from None
        return Upgrade(cookie, term, client_host(request))

    def _check_handshake(self, request: Request) -> None:
        """RFC 6455 4.2.1's headers, refused here with a JSON error a person
        can read (Autobahn's own refusal is an empty 400)."""
        connection = (request.getHeader("connection") or "").lower()
        if "upgrade" not in (t.strip() for t in connection.split(",")):
            raise _Refused(
                400,
                "the upgrade needs Connection: Upgrade; open a node from /web/nodes",
                "no connection upgrade",
            )
        if request.requestHeaders.getRawHeaders(b"sec-websocket-version") != [b"13"]:
            request.setHeader(b"sec-websocket-version", b"13")
            raise _Refused(
                426,
                "the terminal speaks WebSocket version 13 (RFC 6455); "
                "use a current browser",
                "websocket version",
            )
        keys = request.requestHeaders.getRawHeaders(b"sec-websocket-key") or []
        try:
            valid = (
                len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
            )
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise _Refused(
                400,
                "the upgrade needs one Sec-WebSocket-Key (16 bytes, base64); "
                "open a node from /web/nodes",
                "bad websocket key",
            )


class _Refused(Exception):
    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def make_terminal(
    *,
    reactor: Any,
    clock: IReactorTime,
    agent: Any,
    router: Router,
    keys: WebSessionKeys,
    sessions: Sessions,
    proxy_name: str,
    idle_timeout: int,
    public_addr: Callable[[], str],
    recorders: Recorders | None = None,
    peer_addr: Callable[[], str] = str,
    joining: Joining | None = None,
) -> TerminalResource:
    """The ``connect`` route of a proxy, with everything its sockets share."""
    terminals = WebTerminals(
        reactor=reactor,
        clock=clock,
        agent=agent,
        router=router,
        keys=keys,
        sessions=sessions,
        proxy_name=proxy_name,
        recorders=recorders,
        peer_addr=peer_addr,
    )
    services = TerminalServices(
        clock=clock,
        agent=agent,
        terminals=terminals,
        idle_timeout=idle_timeout,
        audit=refusal_audit(clock, agent.emit_event),
        joining=joining,
    )
    return TerminalResource(services, public_addr)


def refusal_audit(
    clock: IReactorTime, emit: Callable[..., Any]
) -> Callable[[str, dict[str, Any]], None]:
    """``audit(host, fields)`` writing ``web.terminal.refused`` events, bounded per address."""

    async def write(row: dict[str, Any]) -> None:
        fields = dict(row)
        user = str(fields.pop("user", ""))
        await emit("web.terminal.refused", user=user, success=False, **fields)

    audit = RefusalAudit(
        clock,
        write,
        AUDIT_BURST,
        AUDIT_PER_SECOND,
        what="refused web terminal sockets",
    )

    def refused(host: str, fields: dict[str, Any]) -> None:
        audit.refused(host, {**fields, "client_addr": host})

    return refused
