"""Recording proxy mode: one session channel of the client, relayed to the node and recorded.

A `ClientSessionChannel` is the client's session on the inner server; once
the proxy is logged in to the node (`Upstream`) it opens a twin session
channel there (`NodeSessionChannel`) and every request, byte, EOF and close
passes through (`RelayChannel`).  Before that, what arrives is held, in order.

The session's first ``shell`` or ``exec`` (not ``scp``/``sftp``, which are
``exec`` / ``subsystem`` audit events, not recordings) makes it a
`SessionHub` (`teleconch.proxy.sessions`) registered in the proxy's
`Sessions` with ``kind="ssh"``: the client channel is its owner party, the
node channel its `NodeShell`, and a recorder its tap, so the recording is in
the web terminal's format, spool and upload path, and others can join.  The
bytes themselves flow straight between the two channels (stderr apart, EOF,
exit-signal); the hub gets a copy of the output to fan out and record, the
resizes, and the exit status.

Without ``-A`` the shell or exec is accepted and then explained: the
`AGENT_REQUIRED` line on stderr and exit status 1, as Teleport does (OpenSSH
drops a channel's stderr once a request fails).
"""

from __future__ import annotations

import shlex
import struct
import uuid
from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import connection
from twisted.conch.ssh.common import getNS
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from teleconch.auth.types import ActiveSession, Party
from teleconch.conch.agent_forwarding import AGENT_CHANNEL, AGENT_REQUEST
from teleconch.conch.session import ExitStatus
from teleconch.conch.wire import take_string
from teleconch.proxy.forward_relay import RelayChannel, open_twin
from teleconch.proxy.forward_user import AGENT_REQUIRED, ForwardedUser, UpstreamFailed
from teleconch.proxy.join_subsystem import notice
from teleconch.proxy.routing import emit
from teleconch.proxy.session_protocols import joined_line, left_line
from teleconch.proxy.sessions import HubHandle, SessionHub, ShellEvents

log = Logger()

_STARTS = (b"shell", b"exec", b"subsystem")
#: Commands that move files: audited as ``exec``, never recorded as a screen.
_FILE_COMMANDS = frozenset({"scp", "sftp", "sftp-server", "rsync"})


def _is_file_transfer(command: str) -> bool:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return bool(words) and words[0].rsplit("/", 1)[-1] in _FILE_COMMANDS


class NodeSessionChannel(RelayChannel):
    """The proxy's session channel to the node: the exit status, a copy of the output."""

    def __init__(self, session: ClientSessionChannel) -> None:
        super().__init__(name=b"session")
        self._session = session
        self.status = ExitStatus()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._session.node_output(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        super().extReceived(dataType, data)
        self._session.node_output(data)

    def local_request(self, requestType: bytes, data: bytes) -> Any:
        try:
            if requestType == b"exit-status":
                self.status = ExitStatus(code=struct.unpack(">L", data[:4])[0])
            elif requestType == b"exit-signal":
                name, _ = take_string(data)
                self.status = ExitStatus(signal=name.decode("ascii", "replace"))
        except (struct.error, ValueError):
            pass  # passed on as it came; the client judges it
        return NotImplemented

    def closed(self) -> None:
        super().closed()
        self._session.node_closed(self.status)


class _Owner:
    """The client's channel as the hub's owner party (its bytes flow directly;
    who joins and leaves is said on its stderr, which never mixes into an
    exec's output)."""

    def __init__(
        self, user: str, remote_addr: str, now: float, say: Callable[[bytes], None]
    ) -> None:
        self.record = Party(str(uuid.uuid4()), user, remote_addr, "owner", now)
        self.hub: HubHandle | None = None
        self._say = say

    def party_joined(self, party: Party) -> None:
        self._say(notice(joined_line(party)))

    def party_left(self, party: Party, reason: str) -> None:
        self._say(notice(left_line(party, reason)))

    def dropped(self, reason: str) -> None:
        """The owner paces the session: it is never dropped."""

    def attached(self, hub: HubHandle) -> None:
        self.hub = hub

    def session_started(self, session: ActiveSession) -> None:
        """The client already sees the node's output: nothing to do."""

    def output(self, data: bytes) -> None:
        """Sent to the client by the relay, with its own flow control."""

    def wants_output(self) -> bool:
        return True

    def input_blocked(self, blocked: bool) -> None:
        """The client's input is throttled by its channel's window."""

    def session_ended(self, ending: Any) -> None:
        """The relay closes the client's channel after the node's."""


class _Shell:
    """The node channel as the hub's `NodeShell` (for joiners' input and the end)."""

    def __init__(self, channel: ClientSessionChannel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> None:
        node = self._channel.twin
        if node is not None:
            node.relay(("data", 0, data))

    def resize(self, cols: int, rows: int) -> None:
        """The size follows the owner, whose window-change goes to the node itself."""

    def consumed(self, n: int) -> None:
        """The node's window follows the client's channel (the relay), not the hub."""

    def close(self) -> None:
        self._channel.end("the session was ended by the proxy")


class ClientSessionChannel(RelayChannel):
    """A client's session channel on the inner server (see the module docstring)."""

    def __init__(self, *, user: ForwardedUser, **kw: Any) -> None:
        kw.pop("avatar", None)
        super().__init__(name=b"session", avatar=user, **kw)
        self._user = user
        self._first = not user.session_channels
        user.session_channels += 1
        self._started: bytes | None = None  # shell, exec or subsystem, once asked
        self._command = ""
        self._term_size = (80, 24)
        self._hub: SessionHub | None = None
        self._hub_events: ShellEvents | None = None
        self._opened_at = user.forwarding.clock.seconds()
        self._failed = False
        self._recorder: Any = None

    def dataReceived(self, data: bytes) -> None:
        """What the owner types: to the node, and to the recording where the
        cluster records input (the recorder decides; it keeps nothing else)."""
        if self._recorder is not None:
            self._recorder.input(data)
        super().dataReceived(data)

    # -- opening the twin ---------------------------------------------------

    def channelOpen(self, specificData: bytes) -> None:
        super().channelOpen(specificData)
        Deferred.fromCoroutine(self._open_twin())

    async def _open_twin(self) -> None:
        try:
            node = await self._user.upstream.wait()
            await open_twin(self, node, NodeSessionChannel(self), b"")
        except UpstreamFailed as e:
            self._fail(str(e))
        except Exception as e:
            log.info("session channel to the node: {e}", e=str(e))
            self._fail("teleconch: the node refused a session channel; try again")

    def _fail(self, message: str) -> None:
        """Answer what was held, explain on stderr, exit 1, close."""
        if self._failed or self.localClosed:
            return
        self._failed = True
        held, self._held = self._held, []
        for op in held:
            if op[0] == "request" and op[3]:
                op[4].callback(op[1] in _STARTS or op[1] == b"pty-req")
        self.writeExtended(connection.EXTENDED_DATA_STDERR, message.encode() + b"\n")
        assert self.conn is not None
        self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 1))
        self.send_eof()
        self.loseConnection()

    def end(self, reason: str) -> None:
        log.info("ending a forwarded session: {reason}", reason=reason)
        if self.twin is not None:
            self.twin.loseConnection()
        self.loseConnection()

    # -- requests -------------------------------------------------------------

    def requestReceived(self, requestType: bytes, data: bytes) -> Any:
        if self._failed:
            return False
        if requestType == AGENT_REQUEST:
            self._user.upstream.start(self.conn)  # type: ignore[arg-type]
        elif requestType in _STARTS and not self._user.upstream.started:
            self._user.upstream.refuse(
                UpstreamFailed(AGENT_REQUIRED, "no agent forwarded")
            )
        elif requestType == b"pty-req":
            self._read_size(getNS(data)[1])
        elif requestType == b"window-change":
            self._resized(data)
        first_start = requestType in _STARTS and self._started is None
        if first_start:
            self._begin(requestType, data)
        result = super().requestReceived(requestType, data)
        if requestType == AGENT_REQUEST:
            self._accept_agent_channels()
        if first_start and isinstance(result, Deferred):
            result.addCallback(self._began)
        return result

    def _read_size(self, rest: bytes) -> None:
        try:
            cols, rows = struct.unpack(">2L", rest[:8])
        except struct.error:
            return
        self._term_size = (cols or 80, rows or 24)

    def _resized(self, data: bytes) -> None:
        self._read_size(data)
        hub = self._hub
        if hub is not None and self._owner is not None:
            hub.resize(self._owner, *self._term_size)
            cols, rows = self._term_size
            self._emit("resize", session_id=hub.id, size=f"{cols}:{rows}")

    def _accept_agent_channels(self) -> None:
        """The client's ``-A`` goes on to the node: take its agent channels."""

        def accept(node: Any) -> None:
            node.accept_channels(AGENT_CHANNEL)

        self._user.upstream.wait().addCallbacks(accept, lambda f: None)

    # -- the session: audit, hub, recording ---------------------------------

    _owner: _Owner | None = None

    def _begin(self, kind: bytes, data: bytes) -> None:
        self._started = kind
        if kind != b"shell":
            try:
                self._command = getNS(data)[0].decode("utf-8", "replace")
            except (struct.error, ValueError, IndexError):
                self._command = ""
        if kind == b"subsystem" or (
            kind == b"exec" and _is_file_transfer(self._command)
        ):
            return
        f, user = self._user.forwarding, self._user
        target = user.upstream.route.target
        now = f.clock.seconds()
        self._owner = _Owner(
            user.login.grant.user,
            user.login.client_address,
            now,
            lambda text: self.writeExtended(connection.EXTENDED_DATA_STDERR, text),
        )
        recorder = None
        if f.recorders is not None:
            recorder = f.recorders.make(
                user.login.client_address,
                self._command,
                record_input=user.upstream.settings.record_input,
            )
        cols, rows = self._term_size
        hub = SessionHub(
            clock=f.clock,
            registry=f.agent,
            record=ActiveSession(
                id=str(uuid.uuid4()), user=user.login.grant.user, node=target.name,
                node_id=target.node.id if target.node else "",
                node_addr=f"{target.host}:{target.port}", login=user.login.login,
                proxy=f.proxy_name, created=now, last_active=now, cols=cols,
                rows=rows, kind="ssh", owner_roles=tuple(user.login.grant.roles),
            ),
            on_end=f.sessions.remove,
            audit=f.agent.emit_event,
            taps=(recorder,) if recorder is not None else (),
        )  # fmt: skip
        hub.join(self._owner)
        f.sessions.add(hub)
        self._hub = hub
        self._recorder = recorder

    def _began(self, accepted: Any) -> Any:
        """The node answered the shell/exec/subsystem: audit it, start the hub."""
        kind = self._started
        if kind == b"subsystem" and accepted:
            self._emit("subsystem", name=self._command)
        hub = self._hub
        if hub is not None:
            if accepted and not self._failed:

                async def opener(events: ShellEvents) -> _Shell:
                    self._hub_events = events
                    return _Shell(self)

                Deferred.fromCoroutine(hub.start(opener)).addErrback(
                    lambda f: log.failure("starting a forwarded session", f)
                )
            else:
                self._abandon_hub("the node refused the session")
        return accepted

    def _abandon_hub(self, reason: str) -> None:
        """The session never ran: its hub ends unstarted, its recorder empty."""
        hub, self._hub = self._hub, None
        if hub is None:
            return
        if self._recorder is not None:
            self._recorder.never_started()

        async def refused(events: ShellEvents) -> _Shell:
            raise RuntimeError(reason)

        Deferred.fromCoroutine(hub.start(refused)).addErrback(lambda f: None)

    def node_output(self, data: bytes) -> None:
        if self._hub_events is not None:
            self._hub_events.shell_output(data)

    def node_closed(self, status: ExitStatus) -> None:
        """The node's channel is over: the session ends with its status."""
        if self._hub_events is not None:
            self._hub_events.shell_ended(status)
            self._hub_events = None
        if self._started == b"exec":
            self._emit(
                "exec", command=self._command, exit_code=status.code,
                signal=status.signal, session_id=self._hub.id if self._hub else "",
            )  # fmt: skip
        node = self.twin
        if self._started is not None and node is not None:
            f = self._user.forwarding
            self._emit(
                "session.data", session_id=self._hub.id if self._hub else "",
                tx=node.bytes_in, rx=self.bytes_in,
                duration=max(0.0, f.clock.seconds() - self._opened_at),
            )  # fmt: skip

    def _emit(self, event: str, **fields: Any) -> None:
        user = self._user
        target = user.upstream.route.target
        emit(
            user.forwarding.agent, event, user.login.grant.user, True,
            login=user.login.login, node=target.name,
            client_addr=user.login.client_address, **fields,
        )  # fmt: skip

    def closed(self) -> None:
        super().closed()
        if self.twin is None:  # never reached the node
            self._abandon_hub("the client left")
