"""``teleconch join`` and ``teleconch sessions ls`` on the proxy's SSH listener.

Two subsystems of the proxy's session channel
(`teleconch.proxy.ssh.ProxySessionChannel`), for the user's own OpenSSH:

- ``teleconch-sessions``: the live sessions this person may join (any
  proxy's), as JSON, with the modes allowed;
- ``teleconch-join@SID[:MODE]`` (``ssh -t ... -s``): the channel becomes a
  party of that session (`SSHJoinParty`): the session's output goes to the
  channel, paced by the client's SSH window; keys go to the session (an
  observer's are dropped there).  Ctrl-] or OpenSSH's ``~.`` leaves.

`SSHJoinParty` is a `SessionParty` for the hub and a `NodeTransport` for
the channel (a `SplicingChannel`): the splice's flow control, EOF and close
carry a joined session exactly as they carry a node.  Joins and their
refusals go through `teleconch.proxy.joining.Joining`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleconch.auth.types import ActiveSession, Party
from teleconch.proxy.joining import Joining, JoinRefused
from teleconch.proxy.node import NodeEvents
from teleconch.proxy.routing import Grant, Target
from teleconch.proxy.sessions import (
    JOIN_MODES,
    OBSERVER,
    Ending,
    HubHandle,
    joined_line,
    left_line,
)

if TYPE_CHECKING:
    from teleconch.proxy.splice import SplicingChannel

log = Logger()

SESSIONS_SUBSYSTEM = "teleconch-sessions"
JOIN_SUBSYSTEM = "teleconch-join"
_JOIN = re.compile(r"teleconch-join@(?P<sid>[^:@\s]{1,128})(?::(?P<mode>[a-z]+))?")
#: The key that leaves a joined session (Ctrl-], as telnet's escape).
LEAVE_KEY = b"\x1d"
#: Notices shown before the session's first output, at most this many bytes.
MAX_EARLY_NOTICES = 16 * 1024


def handles(name: str) -> bool:
    """Whether the subsystem ``name`` is one of ours."""
    return name == SESSIONS_SUBSYSTEM or name.startswith(JOIN_SUBSYSTEM + "@")


def notice(text: str) -> bytes:
    """A line on a joined terminal, as Teleport shows them."""
    return f"\r\n[teleconch] {text}\r\n".encode()


def session_entry(session: ActiveSession, modes: list[str]) -> dict[str, Any]:
    """A live session as ``teleconch sessions ls --format json`` prints it."""
    return {
        "id": session.id,
        "user": session.user,
        "login": session.login,
        "node": session.node,
        "proxy": session.proxy,
        "kind": session.kind,
        "created": session.created,
        "last_active": session.last_active,
        "size": f"{session.cols}x{session.rows}",
        "parties": [{"user": p.user, "mode": p.mode} for p in session.parties],
        "modes": modes,
    }


class SSHJoinParty:
    """One SSH channel in a joined session: a party of the hub, and the node
    side of its splice."""

    def __init__(
        self,
        record: Party,
        exit_status: Callable[[int], None],
    ) -> None:
        self._record = record
        self._exit_status = exit_status
        self._hub: HubHandle | None = None
        self._splice: NodeEvents | None = None  # given at connect
        self._events: NodeEvents | None = None  # once the splice is open
        self._producing = True  # as a splice takes a node side at first
        self._early: list[bytes] = []
        self._early_len = 0
        self._over = False  # the session ended, or we were dropped or left

    @property
    def record(self) -> Party:
        return self._record

    # -- SessionParty -----------------------------------------------------

    def attached(self, hub: HubHandle) -> None:
        self._hub = hub

    def session_started(self, session: ActiveSession) -> None:
        keys = "your keys are not sent" if self._record.mode == OBSERVER else "you type"
        self._show(
            notice(
                f"you joined {session.user}'s session on {session.login}@"
                f"{session.node} as {self._record.mode} ({keys}); Ctrl-] leaves"
            )
        )

    def output(self, data: bytes) -> None:
        self._show(data)

    def wants_output(self) -> bool:
        return self._events is not None and self._producing and not self._over

    def input_blocked(self, blocked: bool) -> None:
        if self._events is not None:
            if blocked:
                self._events.node_full()
            else:
                self._events.node_drained()

    def party_joined(self, party: Party) -> None:
        self._show(notice(joined_line(party)))

    def party_left(self, party: Party, reason: str) -> None:
        self._show(notice(left_line(party, reason)))

    def dropped(self, reason: str) -> None:
        self._hub = None
        self._finish(notice(reason), 1)

    def session_ended(self, ending: Ending) -> None:
        self._hub = None
        self._finish(notice(f"the session ended: {ending.reason}"), 0)

    def _show(self, data: bytes) -> None:
        if self._over:
            return
        if self._events is not None:
            self._events.node_data(data)
        elif self._early_len + len(data) <= MAX_EARLY_NOTICES:
            self._early.append(data)
            self._early_len += len(data)

    def _finish(self, last: bytes, status: int) -> None:
        self._show(last)
        self._over = True
        if self._events is not None:
            self._exit_status(status)
            self._events.node_lost(Failure(ierror.ConnectionDone()))

    # -- NodeTransport: what the channel's splice asks ---------------------

    def connect(self, target: Target, events: NodeEvents) -> Deferred[None]:
        self._splice = events
        return succeed(None)

    def spliced(self) -> None:
        """The channel's splice is open: what waited goes out, then the session."""
        self._events = self._splice
        assert self._events is not None
        early, self._early = self._early, []
        for data in early:
            self._events.node_data(data)
        if self._over:  # it ended before the channel was joined to us
            self._over = False
            self._finish(b"", 0)
        elif self._hub is not None:
            self._hub.ready()

    def write(self, data: bytes) -> None:
        """Keys from the joiner: to the session, up to Ctrl-] (which leaves)."""
        before, leave, _ = data.partition(LEAVE_KEY)
        if before and self._hub is not None:
            self._hub.input(self, before)
        if leave:
            self._leave("left with Ctrl-]")
            self._finish(notice("you left the session"), 0)

    def write_eof(self) -> None:
        self._leave("the joiner closed its input")
        self._finish(b"", 0)

    def pauseProducing(self) -> None:
        self._producing = False

    def resumeProducing(self) -> None:
        self._producing = True
        if self._hub is not None:
            self._hub.ready()

    def close(self) -> None:
        self._leave("the joiner closed the connection")
        if self._events is not None and not self._over:
            self._over = True
            self._events.node_lost(Failure(ierror.ConnectionDone()))

    def abort(self) -> None:
        self.close()

    @property
    def peer(self) -> str:
        hub = self._hub
        return f"session {hub.id}" if hub is not None else "a joined session"

    def _leave(self, reason: str) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.leave(self, reason)


async def list_sessions(joining: Joining, grant: Grant) -> bytes:
    """The ``teleconch-sessions`` answer: one JSON line."""
    joinable = await joining.joinable(grant)
    return json.dumps([session_entry(s, modes) for s, modes in joinable]).encode()


def parse_join(name: str) -> tuple[str, str]:
    """``teleconch-join@SID[:MODE]`` -> (sid, mode); JoinRefused if malformed."""
    m = _JOIN.fullmatch(name)
    mode = (m["mode"] or OBSERVER) if m else ""
    if m is None or mode not in JOIN_MODES:
        raise JoinRefused(
            f"invalid join request {name!r}: expected "
            f"{JOIN_SUBSYSTEM}@SESSION_ID[:{'|'.join(JOIN_MODES)}]",
            "malformed join request",
        )
    return m["sid"], mode


class Caller(Protocol):
    """Who asks (the proxy's `ProxyAvatar`): their certificate's grant, where
    they connect from, and this proxy's `Joining` (None: no joining here)."""

    @property
    def joining(self) -> Joining | None: ...

    @property
    def grant(self) -> Grant: ...

    @property
    def client_address(self) -> str: ...


async def serve(
    channel: SplicingChannel,
    name: str,
    caller: Caller,
    refuse: Callable[[str], None],
    exit_with: Callable[[int], None],
) -> bool:
    """Answer the subsystem request ``name`` on ``channel`` (accepted: a
    refusal is explained on stderr, as for ``proxy:`` requests)."""
    joining, grant = caller.joining, caller.grant
    client_addr = caller.client_address
    if joining is None:
        refuse("teleconch: joining sessions is not available on this proxy\n")
        return True
    if name == SESSIONS_SUBSYSTEM:
        try:
            channel.write(await list_sessions(joining, grant) + b"\n")
            exit_with(0)
        except Exception:
            log.failure("listing live sessions")
            refuse("teleconch: the proxy could not list the sessions; try again\n")
        return True
    try:
        sid, mode = parse_join(name)
    except JoinRefused as e:
        refuse(f"teleconch: {e}\n")
        return True
    party = SSHJoinParty(
        Party(str(uuid.uuid4()), grant.user, client_addr, mode=mode),
        lambda status: _send_exit(channel, status),
    )
    try:
        await joining.join(grant, sid, party, "ssh")
    except JoinRefused as e:
        refuse(f"teleconch: {e}\n")
        return True
    except Exception:
        log.failure("joining session {sid}", sid=sid)
        refuse("teleconch: the proxy could not join the session; try again\n")
        return True
    Deferred.fromCoroutine(_splice(channel, party, sid))
    return True


async def _splice(channel: SplicingChannel, party: SSHJoinParty, sid: str) -> None:
    try:
        await channel.connect(party, Target(f"session {sid}", 0))
    except Exception as e:  # the client left meanwhile
        party.close()
        log.info("join of {sid} ended before it began: {e}", sid=sid, e=str(e))
        return
    party.spliced()


def _send_exit(channel: SplicingChannel, status: int) -> None:
    if channel.conn is not None and not channel.closing:
        channel.conn.sendRequest(channel, b"exit-status", status.to_bytes(4, "big"))
