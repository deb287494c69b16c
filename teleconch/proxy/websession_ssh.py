"""The node side of a web terminal: routed as ``ssh -J`` is, logged in as the web session.

`WebTerminals.open` takes an authenticated web session and what the browser
asked for, and:

1. routes it through the same `Router` (and RBAC) as ``ssh -J``, with
   ``how="web"``: an unknown node or a login the roles do not allow is
   refused there, with the router's message, and audited;
2. gets the web session's key and certificate for this proxy
   (`WebSessionKeys.key_for`: made here, signed by the auth service on
   first use; the private key never leaves this process);
3. connects with the finished SSH client (`teleconch.conch.client`), which
   checks the node's host certificate against the cluster's host CA (a plain
   host key is refused, with a message saying so);
4. asks for a PTY (``xterm-256color``, the browser's size) and a shell, on a
   channel whose window is opened only as the session's parties take its
   output (``auto_window=False``);

and returns the running `SessionHub` with the browser as its first party.
A failure after routing is a `ShellOpenFailed` (a message for the person)
and a failed ``proxy.connect`` audit record, as for ``ssh -J``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from twisted.conch.error import ConchError
from twisted.internet import error as ierror
from twisted.internet.defer import TimeoutError as LoginTimedOut
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch.auth import protocol as api
from teleconch.auth.types import ActiveSession
from teleconch.conch.client import (
    KeyCredentials,
    LoginRefused,
    NodeConnection,
    SessionChannel,
    connect_ssh,
)
from teleconch.conch.hostcert import HostKeyRefused
from teleconch.conch.session import ExitStatus
from teleconch.proxy.recorder import Recorders
from teleconch.proxy.routing import Grant, Route, Router, Target
from teleconch.proxy.sessions import SessionHub, SessionParty, Sessions, ShellEvents
from teleconch.web.keys import SessionKey, WebSessionKeys

log = Logger()

TERM = "xterm-256color"
#: The node's window on a web terminal channel: what it may send before the
#: proxy has forwarded (and the parties taken) any of it.  Small, because what
#: is in flight when the person presses Ctrl-C still has to be drawn: with
#: the 256 KiB a browser may leave unacknowledged, 512 KiB here kept ``yes``
#: scrolling for 4 s after Ctrl-C in Chromium; 128 KiB, about 1 s.
WINDOW = 128 * 1024
#: Seconds to reach a node and log in.
LOGIN_TIMEOUT = 20.0


class ShellOpenFailed(Exception):
    """The node side could not be opened: ``str()`` for the person, ``reason`` for the audit."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TerminalAgent(Protocol):
    """What opening a web terminal asks of the auth service (an `AuthAgent`)."""

    async def sign_web_session_key(
        self, creds: api.WebCredentials, pub_key: str
    ) -> api.WebSessionCertificate: ...

    async def cluster_cas(self) -> api.ClusterCAs: ...

    async def upsert_active_session(self, session: ActiveSession) -> None: ...

    async def end_active_session(
        self, id: str, exit_code: int | None, reason: str
    ) -> None: ...

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None: ...


Connect = Callable[..., Awaitable[NodeConnection]]


class WebShell:
    """A `NodeShell`: one SSH session channel with a PTY, and its connection."""

    def __init__(
        self, conn: NodeConnection, channel: SessionChannel, events: ShellEvents
    ) -> None:
        self._conn = conn
        self._channel = channel
        self._events = events
        channel.exit.addCallback(self._exited)

    def write(self, data: bytes) -> None:
        self._channel.write(data)

    def resize(self, cols: int, rows: int) -> None:
        self._channel.window_change(cols, rows)

    def consumed(self, n: int) -> None:
        """The browser has these bytes: give them back to the node's window
        (`open_window` batches the adjusts, OpenSSH's rule)."""
        self._channel.open_window(n)

    def close(self) -> None:
        self._conn.close()

    def _exited(self, status: ExitStatus) -> None:
        self._conn.close()
        self._events.shell_ended(status)


def _text(e: BaseException) -> str:
    """An error's message (a ConchError's ``str`` is its argument tuple)."""
    value = getattr(e, "value", None) if isinstance(e, ConchError) else None
    return value if isinstance(value, str) else str(e)


def _connect_error(e: BaseException) -> str:
    for kind, text in (
        (ierror.ConnectionRefusedError, "connection refused"),
        (ierror.TCPTimedOutError, "connection timed out"),
        (ierror.TimeoutError, "connection timed out"),
        (LoginTimedOut, "no answer to the SSH login in time"),
        (ierror.DNSLookupError, "name or service not known"),
        (ierror.NoRouteError, "no route to host"),
    ):
        if isinstance(e, kind):
            return text
    return _text(e) or type(e).__name__


class WebTerminals:
    """Opens web terminal sessions on nodes, and keeps them in `sessions`."""

    def __init__(
        self,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
        agent: TerminalAgent,
        router: Router,
        keys: WebSessionKeys,
        sessions: Sessions,
        proxy_name: str,
        connect: Connect = connect_ssh,
        recorders: Recorders | None = None,
        peer_addr: Callable[[], str] = str,
    ) -> None:
        self._reactor = reactor
        #: Records each new session (`teleconch.proxy.recorder`); None: never.
        self._recorders = recorders
        #: Session times (created, last active) are on the cluster's clock.
        self._clock: IReactorTime = clock or reactor
        self._agent = agent
        self._router = router
        self._keys = keys
        self.sessions = sessions
        self._proxy_name = proxy_name
        #: This proxy's peer address, registered with each session (peering).
        self._peer_addr = peer_addr
        self._connect = connect

    async def open(
        self,
        *,
        info: api.WebSessionInfo,
        creds: api.WebCredentials,
        server_id: str,
        login: str,
        cols: int,
        rows: int,
        party: SessionParty,
        client_addr: str,
    ) -> SessionHub:
        """A running session of ``login`` on ``server_id`` with ``party`` in it.

        Raises `RoutingError` (refused by the router, audited there),
        `ShellOpenFailed` (audited here), or the auth service's errors
        (`SessionExpired`: the web session ended meanwhile).
        """
        grant = Grant(info.user, info.roles, info.logins)
        route = await self._router.route(
            grant, client_addr, server_id, 22, login, "web"
        )
        target = route.target
        recorder = None
        if self._recorders is not None:
            recorder = await self._recorders.recorder(client_addr)
        now = self._clock.seconds()
        hub = SessionHub(
            clock=self._clock,
            registry=self._agent,
            record=ActiveSession(
                id=str(uuid.uuid4()),
                user=info.user,
                node=target.name,
                node_id=target.node.id if target.node else "",
                node_addr=f"{target.host}:{target.port}",
                login=login,
                proxy=self._proxy_name,
                created=now,
                last_active=now,
                cols=cols,
                rows=rows,
                proxy_addr=self._peer_addr(),
                owner_roles=tuple(info.roles),
            ),
            on_end=self.sessions.remove,
            taps=(recorder,) if recorder is not None else (),
            audit=self._agent.emit_event,
        )
        hub.join(party)
        self.sessions.add(hub)

        async def opener(events: ShellEvents) -> WebShell:
            return await self._shell(route, creds, info.id, hub.record, events)

        try:
            await hub.start(opener)
        except Exception as e:
            if recorder is not None:
                recorder.never_started()
            reason = e.reason if isinstance(e, ShellOpenFailed) else type(e).__name__
            self._router.audit_close(route)(0, 0, reason, False)
            raise
        return hub

    async def _shell(
        self,
        route: Route,
        creds: api.WebCredentials,
        session_id: str,
        record: ActiveSession,
        events: ShellEvents,
    ) -> WebShell:
        target = route.target

        async def sign(pub_key: str) -> tuple[str, float]:
            signed = await self._agent.sign_web_session_key(creds, pub_key)
            return signed.cert, float(signed.valid_before)

        key = await self._keys.key_for(session_id, sign)
        host_cas = (await self._agent.cluster_cas()).host_ca_keys
        conn = await self._login(target, record.login, key_creds(key), host_cas)
        try:
            channel = await conn.open_session(
                on_data=events.shell_output,
                on_stderr=events.shell_output,
                on_writable=events.shell_writable,
                auto_window=False,
                window=WINDOW,
            )
            await channel.request_pty(TERM, record.cols, record.rows)
            await channel.shell()
        except Exception as e:
            conn.close()
            raise ShellOpenFailed(
                f"{target.name} refused a terminal for {record.login}: {_text(e)}",
                f"shell refused: {_text(e)}",
            ) from e
        return WebShell(conn, channel, events)

    async def _login(
        self,
        target: Target,
        login: str,
        credentials: KeyCredentials,
        host_cas: Sequence[str],
    ) -> NodeConnection:
        host_name = target.node.name if target.node else target.host
        try:
            return await self._connect(
                self._reactor,
                (target.host, target.port),
                login,
                credentials,
                host_ca_keys=host_cas,
                host_name=host_name,
                login_timeout=LOGIN_TIMEOUT,
            )
        except HostKeyRefused as e:
            raise ShellOpenFailed(
                f"cannot open a terminal: {_text(e)}. An administrator can give the "
                f"node a host certificate with `teleconch-ctl auth sign --host {host_name}`",
                "host certificate refused",
            ) from e
        except LoginRefused as e:
            raise ShellOpenFailed(
                f"{target.name} refused the login {login!r}: {_text(e)}",
                "login refused",
            ) from e
        except (
            ConchError,
            OSError,
            ierror.ConnectError,
            ierror.TimeoutError,
            LoginTimedOut,
        ) as e:
            text = _connect_error(e)
            raise ShellOpenFailed(
                f"could not reach {target.name} at {target.host}:{target.port} "
                f"({text}); try again, or ask an administrator whether the node is up",
                f"connect failed: {text}",
            ) from e


def key_creds(key: SessionKey) -> KeyCredentials:
    return KeyCredentials(key.private_key, key.certificate)
