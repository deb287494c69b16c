"""One browser on the web terminal's socket: a party of a session hub.

The Autobahn protocol (`teleconch.web.terminal`) stays thin: it hands every
frame and every change of its socket to a `BrowserParty`, and sends what
the party asks through the `Wire` it implements.  The party checks the first
frame (the bearer token, within FIRST_FRAME_SECONDS on the reactor's clock),
authenticates the web session with the auth service, has the session opened
on the node (`WebTerminals.open`), and then carries bytes and control
messages between the socket and its `SessionHub`.

Flow control: output sent to the browser but not yet acknowledged (``ack``
frames, sent as xterm.js's write callbacks run) is the party's backlog.
Past UNACKED_LIMIT, or while the socket's own buffer is full, the party
stops wanting output, and the hub stops opening the node's SSH window.

Every refusal closes only this socket, with an ``error`` frame saying what
to do and a close reason; it is audited (bounded per address) unless the
router or the node side has audited it already.

Life (`SocketState`): AWAITING_TOKEN -> AUTHENTICATING -> CONNECTING (routing
and opening the node) -> OPEN -> CLOSING (our close frame is sent) ->
CLOSED (the socket is gone); any state but CLOSED may close at once.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as CallTimedOut
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthUnavailable
from teleconch.auth.types import ActiveSession, Party
from teleconch.proxy.joining import Joining, JoinRefused
from teleconch.proxy.routing import Grant, RoutingError
from teleconch.proxy.sessions import Ending, HubHandle, SessionHub
from teleconch.proxy.websession_ssh import ShellOpenFailed
from teleconch.web import terminal_messages as msg
from teleconch.web.keys import WebSessionKeys

log = Logger()

#: The browser's first frame (the token) must come within this many seconds.
FIRST_FRAME_SECONDS = 4.0
#: Output sent but not acknowledged past which the node's window stays shut.
UNACKED_LIMIT = 256 * 1024
#: Terminal input is checked with the auth service (it renews the web
#: session's idle timer, and a logout at any proxy is learnt) at most this
#: often: the check follows input within a second, coalesced.
CHECK_EVERY = 1.0
#: A terminal looks at its web session this often, input or not (a look that
#: is not activity), so one that only shows output still ends when the
#: session goes idle or is ended at another proxy.
QUIET_CHECK_EVERY = 60.0
#: Input typed before the session is open is held, up to this much.
MAX_EARLY_INPUT = 64 * 1024

INTERNAL = "internal error; the administrator will find the details in the proxy's log"
UNAVAILABLE = "the auth service is unreachable; try again shortly"
ENDED = "your web session has reached its end; log in again"
LOGGED_OUT = "you have logged out of this web session; log in again"


class SocketState(enum.Enum):
    AWAITING_TOKEN = "awaiting-token"  # noqa: S105 - a state, not a secret
    AUTHENTICATING = "authenticating"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_S = SocketState
_MOVES: dict[SocketState, frozenset[SocketState]] = {
    _S.AWAITING_TOKEN: frozenset({_S.AUTHENTICATING, _S.CLOSING, _S.CLOSED}),
    _S.AUTHENTICATING: frozenset({_S.CONNECTING, _S.CLOSING, _S.CLOSED}),
    _S.CONNECTING: frozenset({_S.OPEN, _S.CLOSING, _S.CLOSED}),
    _S.OPEN: frozenset({_S.CLOSING, _S.CLOSED}),
    _S.CLOSING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


class Wire(Protocol):
    """What a party asks of its socket (the Autobahn protocol)."""

    def send_json(self, message: dict[str, Any]) -> None: ...

    def send_bytes(self, data: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Authenticator(Protocol):
    async def authenticate_web_session(
        self, creds: api.WebCredentials
    ) -> api.WebSessionInfo: ...

    async def check_web_session(
        self, creds: api.WebCredentials
    ) -> api.WebSessionInfo: ...


class Terminals(Protocol):
    """Opens sessions on nodes (`teleconch.proxy.websession_ssh.WebTerminals`)."""

    async def open(
        self,
        *,
        info: api.WebSessionInfo,
        creds: api.WebCredentials,
        server_id: str,
        login: str,
        cols: int,
        rows: int,
        party: Any,
        client_addr: str,
    ) -> SessionHub: ...


Audit = Callable[[str, dict[str, Any]], None]
"""``audit(client_host, fields)``: one refused terminal, written bounded."""


@attrs.frozen
class Upgrade:
    """What the HTTP upgrade carried: the cookie, the request, who asked."""

    cookie: str = attrs.field(repr=False)
    request: msg.TermRequest
    client_addr: str


@attrs.frozen
class TerminalServices:
    """What every terminal socket of a proxy shares."""

    clock: IReactorTime
    agent: Authenticator
    terminals: Terminals
    idle_timeout: int
    audit: Audit
    #: The proxy's web-session keys: a logout here forgets the session's
    #: key, which ends its terminals at once.
    keys: WebSessionKeys | None = None
    #: Joining live sessions (params ``sid``/``mode``); None: refused here.
    joining: Joining | None = None


class BrowserParty:
    """The browser's side of one terminal socket; a `SessionParty` of its hub."""

    def __init__(
        self, services: TerminalServices, wire: Wire, upgrade: Upgrade
    ) -> None:
        self._services = services
        self._clock = services.clock
        self._wire = wire
        self._upgrade = upgrade
        self._state = SocketState.AWAITING_TOKEN
        self._size = (upgrade.request.cols, upgrade.request.rows)
        self._record = Party(
            id=str(uuid.uuid4()),
            user="",
            remote_addr=upgrade.client_addr,
            mode=upgrade.request.mode,
        )
        self._creds: api.WebCredentials | None = None
        self._hub: HubHandle | None = None
        self._early: list[bytes] = []
        self._early_len = 0
        self._unacked = 0
        self._socket_full = False
        self._checked = 0.0
        self._checking = False
        self._unwatch: Callable[[], None] | None = None
        self._timers: dict[str, IDelayedCall] = {}

    @property
    def state(self) -> SocketState:
        return self._state

    @property
    def record(self) -> Party:
        return self._record

    @property
    def unacked(self) -> int:
        return self._unacked

    def _move(self, to: SocketState) -> None:
        if to not in _MOVES[self._state]:
            raise AssertionError(
                f"terminal cannot go {self._state.value} -> {to.value}"
            )
        self._state = to

    def _timer(self, name: str, delay: float, call: Callable[[], None]) -> None:
        self._timers[name] = self._clock.callLater(max(0.0, delay), call)

    def _cancel_timers(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()
        timers, self._timers = self._timers, {}
        for timer in timers.values():
            if timer.active():
                timer.cancel()

    # -- from the socket --------------------------------------------------

    def opened(self) -> None:
        """The WebSocket handshake is done: the token must follow in time."""
        self._timer("token", FIRST_FRAME_SECONDS, self._token_late)

    def message(self, payload: bytes, is_binary: bool) -> None:
        if self._state is SocketState.AWAITING_TOKEN:
            timer = self._timers.pop("token", None)
            if timer is not None and timer.active():
                timer.cancel()
            try:
                token = msg.parse_token(payload, is_binary)
            except msg.BadMessage as e:
                self.refuse(msg.CLOSE_LOGIN, f"{e}; reload the page", "bad first frame")
                return
            self._move(SocketState.AUTHENTICATING)
            d = Deferred.fromCoroutine(self._begin(token))
            d.addErrback(lambda f: log.failure("web terminal start failed", f))
        elif self._state in (_S.AUTHENTICATING, _S.CONNECTING, _S.OPEN):
            if is_binary:
                self._input(payload)
            else:
                self._control(payload)

    def socket_full(self, full: bool) -> None:
        """The socket's send buffer filled up (True) or drained (False)."""
        self._socket_full = full
        if not full and self._hub is not None:
            self._hub.ready()

    def closed(self) -> None:
        """The socket has gone (closed by either side, or lost)."""
        if self._state is SocketState.CLOSED:
            return
        self._cancel_timers()
        self._move(SocketState.CLOSED)
        self._leave("the browser closed the terminal")

    # -- starting ---------------------------------------------------------

    def _token_late(self) -> None:
        self._timers.pop("token", None)
        self.refuse(
            msg.CLOSE_TOKEN_LATE,
            f"no login token arrived within {FIRST_FRAME_SECONDS:g} seconds; "
            "reload the page",
            "token late",
        )

    async def _begin(self, token: str) -> None:
        s = self._services
        creds = api.WebCredentials(self._upgrade.cookie, token, s.idle_timeout)
        try:
            info = await s.agent.authenticate_web_session(creds)
        except Exception as e:
            self._failed(e, "web session refused")
            return
        if self._state is not SocketState.AUTHENTICATING:
            return  # the browser left meanwhile
        now = self._clock.seconds()
        self._creds, self._checked = creds, now
        self._record = attrs.evolve(self._record, user=info.user, last_active=now)
        self._timer("expiry", info.expires - now, self._session_over)
        self._timer("quiet", QUIET_CHECK_EVERY, self._quiet_check)
        if s.keys is not None:
            self._unwatch = s.keys.watch(info.id, self._logged_out)
        self._move(SocketState.CONNECTING)
        request = self._upgrade.request
        cols, rows = self._size
        try:
            if request.session_id:
                await self._join(info)
                return
            await s.terminals.open(
                info=info,
                creds=creds,
                server_id=request.server_id,
                login=request.login,
                cols=cols,
                rows=rows,
                party=self,
                client_addr=self._upgrade.client_addr,
            )
        except (RoutingError, JoinRefused) as e:  # audited where refused
            self.refuse(msg.CLOSE_DENIED, str(e), e.reason, audit=False)
        except ShellOpenFailed as e:
            self.refuse(msg.CLOSE_NODE, str(e), e.reason, audit=False)
        except Exception as e:
            self._failed(e, "could not open the session")

    async def _join(self, info: api.WebSessionInfo) -> None:
        """Join the live session the params name (`teleconch.proxy.joining`)."""
        joining = self._services.joining
        if joining is None:
            raise JoinRefused("joining sessions is not available on this proxy", "off")
        grant = Grant(info.user, info.roles, info.logins)
        await joining.join(grant, self._upgrade.request.session_id, self, "web")

    def _failed(self, e: Exception, reason: str) -> None:
        """An auth service call failed: say what to do, by kind of failure."""
        if isinstance(
            e, api.SessionExpired | api.AuthenticationFailed | api.AccessDenied
        ):
            self.refuse(msg.CLOSE_LOGIN, str(e), reason)
        elif isinstance(e, AuthUnavailable | CallTimedOut | CancelledError):
            self.refuse(
                msg.CLOSE_UNAVAILABLE, UNAVAILABLE, f"{reason}: auth unavailable"
            )
        elif isinstance(e, amp.UnknownRemoteError):
            self.refuse(msg.CLOSE_UNAVAILABLE, UNAVAILABLE, f"{reason}: auth failed")
        else:
            log.failure("web terminal: {reason}", reason=reason)
            self.refuse(msg.CLOSE_INTERNAL, INTERNAL, f"{reason}: internal error")

    def _session_over(self) -> None:
        self._timers.pop("expiry", None)
        self.refuse(msg.CLOSE_LOGIN, ENDED, "web session past its end")

    def _logged_out(self) -> None:
        self._unwatch = None  # the keys have dropped their watchers
        self.refuse(msg.CLOSE_LOGIN, LOGGED_OUT, "web session logged out")

    # -- SessionParty -----------------------------------------------------

    def attached(self, hub: HubHandle) -> None:
        self._hub = hub
        if self._state in (SocketState.CLOSING, SocketState.CLOSED):
            self._leave("the browser closed the terminal")
            return
        early, self._early, self._early_len = self._early, [], 0
        for data in early:
            hub.input(self, data)

    def session_started(self, session: ActiveSession) -> None:
        if self._state is not SocketState.CONNECTING:
            return
        self._move(SocketState.OPEN)
        self._wire.send_json(
            msg.session_message(
                session.id,
                session.node,
                session.login,
                session.cols,
                session.rows,
                self._record.mode,
            )
        )

    def output(self, data: bytes) -> None:
        if self._state is SocketState.OPEN:
            self._wire.send_bytes(data)
            self._unacked += len(data)

    def wants_output(self) -> bool:
        return self._unacked <= UNACKED_LIMIT and not self._socket_full

    def input_blocked(self, blocked: bool) -> None:
        if blocked:
            self._wire.pause_reading()
        else:
            self._wire.resume_reading()

    def party_joined(self, party: Party) -> None:
        if self._state is SocketState.OPEN:
            self._wire.send_json(msg.party_message("joined", party))

    def party_left(self, party: Party, reason: str) -> None:
        if self._state is SocketState.OPEN:
            self._wire.send_json(msg.party_message("left", party, reason))

    def dropped(self, reason: str) -> None:
        """Out of a joined session (it fell behind): say so and close; the
        hub has audited the leave."""
        self._hub = None
        if self._state in (SocketState.CONNECTING, SocketState.OPEN):
            self._cancel_timers()
            self._wire.send_json(msg.error_message(reason))
            self._wire.close(msg.CLOSE_GONE, msg.close_reason(reason))
            self._move(SocketState.CLOSING)

    def session_ended(self, ending: Ending) -> None:
        self._hub = None
        if self._state in (SocketState.CONNECTING, SocketState.OPEN):
            self._cancel_timers()
            self._wire.send_json(msg.exit_message(ending.status, ending.reason))
            self._wire.close(msg.CLOSE_NORMAL, msg.close_reason(ending.reason))
            self._move(SocketState.CLOSING)

    # -- bytes and control messages from the browser ---------------------

    def _input(self, data: bytes) -> None:
        if self._hub is None:
            if self._early_len + len(data) <= MAX_EARLY_INPUT:
                self._early.append(data)
                self._early_len += len(data)
            return
        now = self._clock.seconds()
        self._record = attrs.evolve(self._record, last_active=now)
        self._hub.input(self, data)
        self._check_soon(now)

    def _check_soon(self, now: float) -> None:
        """Have the web session checked within CHECK_EVERY of this input."""
        if (
            self._state is not SocketState.OPEN
            or self._checking
            or "check" in self._timers
        ):
            return
        self._timer("check", self._checked + CHECK_EVERY - now, self._check)

    def _check(self) -> None:
        self._timers.pop("check", None)
        self._checking, self._checked = True, self._clock.seconds()
        d = Deferred.fromCoroutine(self._touch())
        d.addErrback(lambda f: log.failure("web terminal check failed", f))

    def _quiet_check(self) -> None:
        self._timers.pop("quiet", None)
        if self._state in (SocketState.CLOSING, SocketState.CLOSED):
            return
        self._timer("quiet", QUIET_CHECK_EVERY, self._quiet_check)
        d = Deferred.fromCoroutine(self._look())
        d.addErrback(lambda f: log.failure("web terminal quiet check failed", f))

    async def _look(self) -> None:
        """No input for a while: is the web session still live (not a touch)?"""
        assert self._creds is not None
        try:
            await self._services.agent.check_web_session(self._creds)
        except (api.SessionExpired, api.AuthenticationFailed) as e:
            self.refuse(msg.CLOSE_LOGIN, str(e), "web session ended")
        except Exception as e:
            log.warn("web terminal: could not check the web session: {e}", e=str(e))

    async def _touch(self) -> None:
        """Input is activity: renew the web session's idle timer (or learn it ended)."""
        assert self._creds is not None
        try:
            await self._services.agent.authenticate_web_session(self._creds)
        except (api.SessionExpired, api.AuthenticationFailed) as e:
            self.refuse(msg.CLOSE_LOGIN, str(e), "web session ended")
        except Exception as e:
            log.warn("web terminal: could not renew the web session: {e}", e=str(e))
        finally:
            self._checking = False

    def _control(self, payload: bytes) -> None:
        try:
            message = msg.parse_control(payload)
            if isinstance(message, msg.Ack) and message.bytes > self._unacked:
                raise msg.BadMessage(
                    f"ack of {message.bytes} bytes, but {self._unacked} are unacknowledged"
                )
        except msg.BadMessage as e:
            self.refuse(
                msg.CLOSE_MALFORMED,
                f"the browser sent a malformed message ({e}); reload the page",
                "malformed control frame",
            )
            return
        if isinstance(message, msg.Resize):
            self._size = (message.cols, message.rows)
            if self._hub is not None:
                self._hub.resize(self, message.cols, message.rows)
        else:
            self._unacked -= message.bytes
            if self._hub is not None:
                self._hub.ready()

    # -- ending -----------------------------------------------------------

    def refuse(self, code: int, message: str, reason: str, audit: bool = True) -> None:
        """Close this socket: an ``error`` frame with ``message``, then the close."""
        if self._state in (SocketState.CLOSING, SocketState.CLOSED):
            return
        self._cancel_timers()
        self._wire.send_json(msg.error_message(message))
        self._wire.close(code, msg.close_reason(message))
        self._move(SocketState.CLOSING)
        request = self._upgrade.request
        if audit:
            self._services.audit(
                self._upgrade.client_addr,
                {
                    "user": self._record.user,
                    "node": request.server_id,
                    "login": request.login,
                    "reason": reason,
                    "message": message,
                },
            )
        self._leave(reason)

    def _leave(self, reason: str) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.leave(self, reason)
