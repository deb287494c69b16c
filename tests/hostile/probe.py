"""Replay cases against live listeners: one connection per case, bounded in time and bytes.

Every case connects from its own loopback address (127.1.x.y), so the
server's per-address rate limits see each case alone and log lines that
name the peer can be traced to the case that caused them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.conch.ssh.common import NS
from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from teleconch.conch.transport import ClientTransport
from teleconch.pki import anonymous_client_options
from tests.hostile import judge
from tests.hostile.cases import (
    AMP,
    HTTP,
    PLAIN_TO_TLS,
    SSH,
    SSH_SECURE,
    UNIMPLEMENTED,
    USERAUTH_FAILURE,
    Case,
    Outcome,
    Result,
)
from tests.hostile.corpus_web import ORIGIN

BUDGET = 5.0  # seconds a case may take before it counts as "not closed"
IDLE_BUDGET = 15.0  # for idle cases: the server's own deadlines (10 s) must end them
READ_LIMIT = 1 << 20  # bytes read before a case counts as a flood
KEEP = 64 * 1024  # bytes of what the server sent kept for the verdict and report

MSG_DISCONNECT = 1
MSG_UNIMPLEMENTED = 3
MSG_SERVICE_REQUEST = 5
MSG_SERVICE_ACCEPT = 6
MSG_NEWKEYS = 21
MSG_USERAUTH_FAILURE = 51


@attrs.frozen
class Targets:
    ssh: tuple[str, int]
    auth: tuple[str, int]
    web: tuple[str, int]


def source_address(index: int) -> str:
    """A loopback address of its own for case ``index`` (up to 62500 cases)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


Done = Callable[[bytes], str | None]


class _Once:
    """Settles an Outcome once, then stops the timer and drops the connection."""

    def __init__(self, budget: float) -> None:
        self.result: defer.Deferred[Outcome] = defer.Deferred()
        self.started = reactor.seconds()
        self.transport: Any = None
        self.received = bytearray()
        self.seen: list[int] = []  # message numbers a crafting client decoded
        self._timer = reactor.callLater(budget, self._expire)

    def _expire(self) -> None:
        self.settle("timeout", "nothing ended the connection within the budget")

    def settle(self, ended: str, detail: str = "") -> None:
        if self.result.called:
            return
        if self._timer.active():
            self._timer.cancel()
        if self.transport is not None and ended != "closed":
            self.transport.abortConnection()
        seconds = reactor.seconds() - self.started
        if self.seen:
            detail += f"; under keys the server sent message types {self.seen}"
        kept = bytes(self.received[:KEEP])
        self.result.callback(Outcome(ended, kept, detail, seconds))


class RawProbe(Protocol):
    """Writes ``data`` and reads until the server closes, ``done`` says so, or the budget."""

    def __init__(self, data: bytes, done: Done | None, once: _Once) -> None:
        self._data = data
        self._done = done
        self._once = once
        self.received = once.received

    def connectionMade(self) -> None:
        self._once.transport = self.transport
        if self._data:
            self.transport.write(self._data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > READ_LIMIT:
            self._once.settle("flood", f"over {READ_LIMIT} bytes")
            return
        detail = self._done(bytes(self.received)) if self._done else None
        if detail:
            self._once.settle("answered", detail)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._once.settle("closed", reason.getErrorMessage())


class CraftingClient(ClientTransport):
    """A real Conch client that, once its keys are in use, sends crafted packets."""

    def __init__(self, case: Case, once: _Once) -> None:
        self._case = case
        self._once = once
        self._secure = False
        self._fired = False

    def connectionMade(self) -> None:
        self._once.transport = self.transport
        super().connectionMade()

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self._secure = True
        if self._case.userauth:
            self.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
        else:
            self._fire()

    def _fire(self) -> None:
        self._fired = True
        for number, payload in self._case.packets:
            seq = self.outgoingPacketSequence
            self.sendPacket(number, payload)
            if number == MSG_NEWKEYS:
                # Our own keys stay: only the server is meant to be confused.
                self._sealer = None
                self.outgoingPacketSequence = (seq + 1) & 0xFFFFFFFF

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if not self._secure:
            super().dispatchMessage(messageNum, payload)
            return
        self._once.seen.append(messageNum)
        if messageNum == MSG_DISCONNECT:
            self._once.settle(
                "answered", "DISCONNECT " + judge.disconnect_text(payload)
            )
        elif not self._fired:
            if messageNum == MSG_SERVICE_ACCEPT:
                self._fire()
        elif messageNum == MSG_UNIMPLEMENTED and UNIMPLEMENTED in self._case.answers:
            self._once.settle("answered", "UNIMPLEMENTED")
        elif (
            messageNum == MSG_USERAUTH_FAILURE
            and USERAUTH_FAILURE in self._case.answers
        ):
            self._once.settle("answered", "USERAUTH_FAILURE " + repr(payload[:80]))

    def connectionLost(self, reason: Failure | None = connectionDone) -> None:
        why = (reason or connectionDone).getErrorMessage()
        if self._secure:
            self._once.settle("closed", why)
        else:
            self._once.settle("kex-failed", why)
        super().connectionLost(reason)


# One client TLS context for every case: the probe's own memory stays flat.
_TLS = anonymous_client_options()


class _Handing(Factory):
    """Hands out one prepared protocol (connectProtocol makes a class per call)."""

    def __init__(self, proto: Protocol) -> None:
        self._proto = proto

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._proto


async def replay_one(
    case: Case, source: str, targets: Targets, budget: float
) -> Outcome:
    """Run one case from ``source``; the result says how its connection ended."""
    once = _Once(IDLE_BUDGET if case.idle else budget)
    if case.proto == SSH_SECURE:
        host, port = targets.ssh
        proto: Protocol = CraftingClient(case, once)
    else:
        data = case.data.replace(
            ORIGIN, b"https://%s:%d" % (targets.web[0].encode(), targets.web[1])
        )
        proto = RawProbe(data, judge.done_for(case), once)
        if case.proto == PLAIN_TO_TLS:
            host, port = targets.auth if case.target == "auth" else targets.web
        else:
            host, port = {SSH: targets.ssh, AMP: targets.auth, HTTP: targets.web}[
                case.proto
            ]
    endpoint: Any = TCP4ClientEndpoint(
        reactor, host, port, timeout=5, bindAddress=(source, 0)
    )
    if case.proto in (AMP, HTTP):
        endpoint = wrapClientTLS(_TLS, endpoint)
    try:
        await endpoint.connect(_Handing(proto))
    except Exception as e:
        once.settle("connect-failed", repr(e))
    return await once.result


async def replay(
    cases: Sequence[Case],
    targets: Targets,
    concurrency: int = 20,
    budget: float = BUDGET,
    first_source: int = 0,
) -> list[Result]:
    """Replay every case, ``concurrency`` at a time; judge each outcome."""
    semaphore = defer.DeferredSemaphore(concurrency)

    async def one(index: int, case: Case) -> Result:
        source = source_address(first_source + index)
        started = reactor.seconds()
        outcome = await replay_one(case, source, targets, budget)
        return Result(case, source, outcome, judge.verdict(case, outcome), started,
                      reactor.seconds())  # fmt: skip

    def run(index: int, case: Case) -> defer.Deferred[Result]:
        return semaphore.run(lambda: defer.Deferred.fromCoroutine(one(index, case)))

    results: list[Result] = await defer.gatherResults(
        [run(i, c) for i, c in enumerate(cases)], consumeErrors=True
    )
    return results
