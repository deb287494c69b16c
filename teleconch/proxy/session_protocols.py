"""What a session hub, its node side, its parties and its taps say to each other.

`teleconch.proxy.sessions` (the hub) re-exports every name here; import
them from there.  They live apart so the hub's module holds the hub alone.

A party's record (`teleconch.auth.types.Party`) says its ``mode``: the
``owner`` (who opened the session: its pace is the session's), a ``peer``
(joined, may type) or an ``observer`` (joined, watches: its keys are
dropped).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import attrs

from teleconch.auth.types import ActiveSession, Party
from teleconch.conch.session import ExitStatus

#: Output a joined party may be behind by; one more byte and it is dropped.
JOINER_BUFFER = 1024 * 1024
FELL_BEHIND = (
    "you fell too far behind the session's output and were disconnected; join again"
)

OWNER = "owner"
PEER = "peer"
OBSERVER = "observer"
#: The modes one may join an existing session in.
JOIN_MODES = (OBSERVER, PEER)


class SessionOver(Exception):
    """A party tried to join a session that has ended (or is ending)."""


@attrs.frozen
class Ending:
    """How a session ended: the shell's exit status (if it gave one) and why."""

    status: ExitStatus | None
    reason: str

    @property
    def exit_code(self) -> int | None:
        return self.status.code if self.status is not None else None


class NodeShell(Protocol):
    """The node side of a session (`teleconch.proxy.websession_ssh.WebShell`).

    It reports to the hub's `ShellEvents`; after `close` (or on its own) it
    calls ``shell_ended`` exactly once.
    """

    def write(self, data: bytes) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def consumed(self, n: int) -> None:
        """``n`` output bytes have been taken by the session: re-open the window."""
        ...

    def close(self) -> None: ...


class ShellEvents(Protocol):
    """What a `NodeShell` tells its hub."""

    def shell_output(self, data: bytes) -> None: ...

    def shell_writable(self, writable: bool) -> None: ...

    def shell_ended(self, status: ExitStatus | None) -> None: ...


class HubHandle(Protocol):
    """What a party calls on the session it is in: a `SessionHub` here, or a
    session held by another proxy and joined through it (proxy peering), which
    offers the same calls."""

    @property
    def id(self) -> str: ...

    @property
    def record(self) -> ActiveSession: ...

    def input(self, party: SessionParty, data: bytes) -> None: ...

    def resize(self, party: SessionParty, cols: int, rows: int) -> None: ...

    def leave(self, party: SessionParty, reason: str) -> None: ...

    def ready(self) -> None: ...


class SessionParty(Protocol):
    """Someone attached to a session: its owner, or a peer or observer who joined.

    After `session_ended` or `dropped` the hub calls nothing more, and the
    party calls nothing more on the hub.
    """

    @property
    def record(self) -> Party: ...

    def attached(self, hub: HubHandle) -> None:
        """The party joined ``hub`` (it may send input and resizes to it now)."""
        ...

    def session_started(self, session: ActiveSession) -> None:
        """The node side is open; output follows."""
        ...

    def output(self, data: bytes) -> None: ...

    def wants_output(self) -> bool:
        """Whether the party can take more output now; when it can again it
        calls `HubHandle.ready`.  The owner's answer opens and shuts the
        node's window; a joiner's output waits in its own bounded backlog."""
        ...

    def input_blocked(self, blocked: bool) -> None:
        """The node's window is full (True): stop reading input until False."""
        ...

    def party_joined(self, party: Party) -> None:
        """Someone else joined the session: show it."""
        ...

    def party_left(self, party: Party, reason: str) -> None:
        """Someone else left the session (or was dropped): show it."""
        ...

    def dropped(self, reason: str) -> None:
        """This party fell too far behind and is out of the session (``reason``
        is for the person); nothing more follows."""
        ...

    def session_ended(self, ending: Ending) -> None: ...


class SessionTap(Protocol):
    """Something that sees a session without being a party of it (the
    recorder, `teleconch.proxy.recorder`): it never holds the window and
    never keeps a session alive.  It hears of joins and leaves once the
    session runs (not of the owner's arrival: that is the start)."""

    def started(self, session: ActiveSession) -> None: ...

    def output(self, data: bytes) -> None: ...

    def input(self, data: bytes) -> None:
        """What an owner or peer typed (recorded where ``record_input`` is on)."""
        ...

    def resized(self, cols: int, rows: int) -> None: ...

    def joined(self, party: Party) -> None: ...

    def left(self, party: Party, reason: str) -> None: ...

    def ended(self, ending: Ending) -> None: ...


Opener = Callable[[ShellEvents], Awaitable[NodeShell]]

#: ``audit(event, user=..., success=..., **fields)``: the agent's ``emit_event``.
Audit = Callable[..., Coroutine[Any, Any, None]]


def describe_exit(status: ExitStatus | None) -> str:
    if status is None or (status.code is None and status.signal is None):
        return "the node closed the session"
    if status.signal is not None:
        return f"the shell was killed by signal {status.signal}"
    return f"the shell exited with status {status.code}"


def joined_line(party: Party) -> str:
    """What a terminal party shows when ``party`` joins (Teleport's wording)."""
    return f"{party.user} joined the session as {party.mode}"


def left_line(party: Party, reason: str) -> str:
    return f"{party.user} left the session ({reason})"


class Backlog:
    """A joined party's output that it could not take yet, bounded."""

    def __init__(self, limit: int = JOINER_BUFFER) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self.size = 0

    def offer(self, party: SessionParty, data: bytes) -> bool:
        """Give ``data`` to ``party`` now or later; False: it would overflow."""
        if not self._chunks and party.wants_output():
            party.output(data)
            return True
        if self.size + len(data) > self._limit:
            return False
        self._chunks.append(data)
        self.size += len(data)
        return True

    def drain(self, party: SessionParty, force: bool = False) -> None:
        """Hand ``party`` what it can take now (everything, with ``force``)."""
        while self._chunks and (force or party.wants_output()):
            data = self._chunks.popleft()
            self.size -= len(data)
            party.output(data)
