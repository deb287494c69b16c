"""In-memory doubles for the web terminal's unit tests: a node shell, a
registry, a party, a wire, an auth agent and the terminals opener.

The hub (`teleconch.proxy.sessions.SessionHub`) is always the real one; these
stand where the SSH channel, the auth service and the socket would be.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from teleconch.auth import protocol as api
from teleconch.auth.types import ActiveSession, Party
from teleconch.conch.session import ExitStatus
from teleconch.proxy.sessions import Ending, HubHandle, SessionHub, ShellEvents

NOW = 1_000_000.0


def session_record(**changes: Any) -> ActiveSession:
    record = ActiveSession(
        id="sess-1",
        user="alice",
        node="web1",
        node_id="node-id-1",
        node_addr="127.0.0.1:2222",
        login="root",
        proxy="proxy-a",
        created=NOW,
        last_active=NOW,
        cols=80,
        rows=24,
    )
    return attrs.evolve(record, **changes)


@attrs.define
class FakeShell:
    """A NodeShell that records what the hub asks of it."""

    events: ShellEvents
    written: list[bytes] = attrs.field(factory=list)
    resized: list[tuple[int, int]] = attrs.field(factory=list)
    consumed_total: int = 0
    consumed_calls: int = 0
    closed: bool = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def resize(self, cols: int, rows: int) -> None:
        self.resized.append((cols, rows))

    def consumed(self, n: int) -> None:
        self.consumed_total += n
        self.consumed_calls += 1

    def close(self) -> None:
        self.closed = True

    def exit(self, code: int | None = None, signal: str | None = None) -> None:
        self.events.shell_ended(ExitStatus(code=code, signal=signal))


def start_on_fake_shell(hub: SessionHub) -> FakeShell:
    """Start ``hub`` with an opener whose FakeShell answers at once; that shell."""
    shells: list[FakeShell] = []

    async def opener(events: ShellEvents) -> FakeShell:
        shells.append(FakeShell(events))
        return shells[0]

    Deferred.fromCoroutine(hub.start(opener))
    return shells[0]


@attrs.define
class FakeRegistry:
    """The auth service's live-session calls, recorded; ``hold`` delays answers."""

    calls: list[tuple[str, Any]] = attrs.field(factory=list)
    #: Audit events (`emit_event`): (event, user, success, fields).
    events: list[tuple[str, str, bool, dict[str, Any]]] = attrs.field(factory=list)
    hold: list[Deferred[None]] | None = None
    fail: Exception | None = None

    async def _answer(self) -> None:
        if self.fail is not None:
            raise self.fail
        if self.hold is not None:
            d: Deferred[None] = Deferred()
            self.hold.append(d)
            await d

    async def upsert_active_session(self, session: ActiveSession) -> None:
        self.calls.append(("upsert", session))
        await self._answer()

    async def end_active_session(
        self, id: str, exit_code: int | None, reason: str
    ) -> None:
        self.calls.append(("end", (id, exit_code, reason)))
        await self._answer()

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        self.events.append((event, user, success, fields))

    def kinds(self) -> list[str]:
        return [name for name, _ in self.calls]


@attrs.define
class FakeParty:
    """A SessionParty that takes output while ``wants`` is set."""

    record: Party = attrs.field(
        factory=lambda: Party("party-1", "alice", "10.0.0.9", mode="owner")
    )
    wants: bool = True
    hub: HubHandle | None = None
    started: list[ActiveSession] = attrs.field(factory=list)
    received: list[bytes] = attrs.field(factory=list)
    blocked: list[bool] = attrs.field(factory=list)
    endings: list[Ending] = attrs.field(factory=list)
    #: What it was told of others, in order: ("joined"|"left", user, mode[, reason]).
    notices: list[tuple[str, ...]] = attrs.field(factory=list)
    dropped_for: list[str] = attrs.field(factory=list)

    def attached(self, hub: HubHandle) -> None:
        self.hub = hub

    def session_started(self, session: ActiveSession) -> None:
        self.started.append(session)

    def output(self, data: bytes) -> None:
        self.received.append(data)

    def wants_output(self) -> bool:
        return self.wants

    def input_blocked(self, blocked: bool) -> None:
        self.blocked.append(blocked)

    def party_joined(self, party: Party) -> None:
        self.notices.append(("joined", party.user, party.mode))

    def party_left(self, party: Party, reason: str) -> None:
        self.notices.append(("left", party.user, party.mode, reason))

    def dropped(self, reason: str) -> None:
        self.dropped_for.append(reason)

    def session_ended(self, ending: Ending) -> None:
        self.endings.append(ending)


def joiner(pid: str, user: str, mode: str = "observer", **kw: Any) -> FakeParty:
    """A party joining an open session."""
    return FakeParty(record=Party(pid, user, "10.0.0.8", mode=mode), **kw)


@attrs.define
class FakeWire:
    """What a BrowserParty sends on its socket."""

    texts: list[dict[str, Any]] = attrs.field(factory=list)
    binary: list[bytes] = attrs.field(factory=list)
    closes: list[tuple[int, str]] = attrs.field(factory=list)
    paused: bool = False

    def send_json(self, message: dict[str, Any]) -> None:
        self.texts.append(message)

    def send_bytes(self, data: bytes) -> None:
        self.binary.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [t for t in self.texts if t.get("type") == kind]


def web_session(**changes: Any) -> api.WebSessionInfo:
    info = api.WebSessionInfo(
        id="web-1",
        user="alice",
        roles=("access",),
        logins=("root",),
        created=NOW,
        last_active=NOW,
        expires=NOW + 12 * 3600,
    )
    return attrs.evolve(info, **changes)


@attrs.define
class FakeAgent:
    """The auth service's web-session check: ``refusal`` raised, else ``info``."""

    info: api.WebSessionInfo = attrs.field(factory=web_session)
    refusal: Exception | None = None
    seen: list[api.WebCredentials] = attrs.field(factory=list)
    #: Looks that are not activity (`check_web_session`).
    looked: list[api.WebCredentials] = attrs.field(factory=list)
    #: When set, the next answer waits for it.
    hold: Deferred[None] | None = None

    async def authenticate_web_session(
        self, creds: api.WebCredentials
    ) -> api.WebSessionInfo:
        self.seen.append(creds)
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold
        if self.refusal is not None:
            raise self.refusal
        return self.info

    async def check_web_session(self, creds: api.WebCredentials) -> api.WebSessionInfo:
        self.looked.append(creds)
        if self.refusal is not None:
            raise self.refusal
        return self.info


@attrs.define
class FakeTerminals:
    """Opens a real SessionHub on a FakeShell (``refusal`` raised instead, if set)."""

    clock: Clock
    registry: FakeRegistry = attrs.field(factory=FakeRegistry)
    refusal: Exception | None = None
    opened: list[dict[str, Any]] = attrs.field(factory=list)
    shells: list[FakeShell] = attrs.field(factory=list)
    hubs: list[SessionHub] = attrs.field(factory=list)

    async def open(self, *, party: Any, **request: Any) -> SessionHub:
        self.opened.append(request)
        if self.refusal is not None:
            raise self.refusal
        hub = SessionHub(
            clock=self.clock,
            registry=self.registry,
            record=session_record(
                id=f"sess-{len(self.hubs) + 1}",
                cols=request["cols"],
                rows=request["rows"],
                login=request["login"],
            ),
        )
        self.hubs.append(hub)
        hub.join(party)

        async def opener(events: ShellEvents) -> FakeShell:
            shell = FakeShell(events)
            self.shells.append(shell)
            return shell

        await hub.start(opener)
        return hub
