"""The replay harness itself: a pass is a protocol error, a hang is caught, a traceback seen.

Interop only in that it starts a real cluster on 127.0.0.1 (no OpenSSH here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from tests.harness import Cluster, start_cluster
from tests.hostile.cases import AMP, HTTP, SSH, SSH_SECURE, Case
from tests.hostile.corpus_amp import ask
from tests.hostile.corpus_http import request
from tests.hostile.corpus_ssh import (
    MSG_IGNORE,
    MSG_SERVICE_REQUEST,
    VERSION,
    kexinit,
    ns,
    packet,
)
from tests.hostile.logwatch import LogWatch, attribute
from tests.hostile.probe import READ_LIMIT, Targets, replay

pytestmark = pytest.mark.interop


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    try:
        yield c
    finally:
        await c.stop()


def targets(c: Cluster) -> Targets:
    assert c.service.proxy is not None and c.service.proxy.ssh_address is not None
    ssh = c.service.proxy.ssh_address
    return Targets(
        ssh=(ssh.host, ssh.port),
        auth=(c.auth_addr.host, c.auth_addr.port),
        web=(c.web_addr.host, c.web_addr.port),
    )


VALID = [
    Case("ok/http-ping", HTTP, data=request(path=b"/v1/webapi/ping")),
    Case("ok/amp-ping", AMP, data=ask(b"Ping")),
    Case("ok/ssh-kexinit-then-wait", SSH, data=VERSION + packet(kexinit())),
    Case("ok/ssh-secure-ignore", SSH_SECURE, packets=((MSG_IGNORE, ns(b"hello")),)),
]
ERRORS = [
    Case("err/http-404", HTTP, data=request(path=b"/v1/webapi/nothing")),
    Case("err/amp-unknown-command", AMP, data=ask(b"NoSuchCommand")),
    Case("err/ssh-bad-version", SSH, data=b"SSH-1.0-old\r\n"),
    Case(
        "err/ssh-secure-bogus-service",
        SSH_SECURE,
        packets=((MSG_SERVICE_REQUEST, ns(b"ssh-bogus")),),
    ),
]


@pytest_twisted.ensureDeferred
async def test_valid_inputs_fail_and_real_protocol_errors_pass(
    cluster: Cluster,
) -> None:
    """A well-behaved client is never counted as having hit a protocol error."""
    results = {
        r.case.id: r for r in await replay(VALID + ERRORS, targets(cluster), budget=1.0)
    }
    verdicts = {cid: r.verdict for cid, r in results.items()}
    assert "HTTP 200" in (verdicts["ok/http-ping"] or ""), verdicts
    assert "answered as if valid" in (verdicts["ok/amp-ping"] or ""), verdicts
    assert "not closed" in (verdicts["ok/ssh-kexinit-then-wait"] or ""), verdicts
    secure = results["ok/ssh-secure-ignore"].outcome
    # The crafting client got its keys in use (EXT_INFO came under them), then waited.
    assert secure.ended == "timeout" and "[7]" in secure.detail, secure
    for case in ERRORS:
        assert verdicts[case.id] is None, (case.id, results[case.id].outcome)
    assert results["err/ssh-bad-version"].outcome.detail.startswith("DISCONNECT 8")
    bogus = results["err/ssh-secure-bogus-service"].outcome
    assert bogus.detail.startswith("DISCONNECT 7"), bogus


class _Silent(Protocol):
    pass


class _Flood(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"SSH-2.0-flood\r\n" + b"x" * (READ_LIMIT + 4096))  # type: ignore[union-attr]


class _Crash(Protocol):
    def dataReceived(self, data: bytes) -> None:
        raise ZeroDivisionError("injected by the harness self-check")


def _listen(protocol: type[Protocol]) -> tuple[IListeningPort, tuple[str, int]]:
    # forProtocol is typed to return a Factory whatever class it is called on.
    factory = cast(ServerFactory, ServerFactory.forProtocol(protocol))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, ("127.0.0.1", cast(IPv4Address, port.getHost()).port)


@pytest_twisted.ensureDeferred
async def test_the_budget_ends_hung_and_flooding_servers() -> None:
    """A server that never closes, or never stops talking, fails the case in bounded time."""
    silent, silent_addr = _listen(_Silent)
    flood, flood_addr = _listen(_Flood)
    try:
        case = Case("hang", SSH, data=VERSION)
        started = reactor.seconds()
        [hung] = await replay(
            [case], Targets(silent_addr, silent_addr, silent_addr), budget=0.5
        )
        [flooded] = await replay(
            [case], Targets(flood_addr, flood_addr, flood_addr), budget=5
        )
        assert reactor.seconds() - started < 4
    finally:
        # A TCP port's stopListening always returns a Deferred.
        await cast(Deferred[None], silent.stopListening())
        await cast(Deferred[None], flood.stopListening())
    assert hung.outcome.ended == "timeout" and "not closed" in (hung.verdict or ""), (
        hung
    )
    assert flooded.outcome.ended == "flood" and flooded.verdict, flooded


@pytest_twisted.ensureDeferred
async def test_the_log_watch_sees_tracebacks_and_names_the_case() -> None:
    """An unhandled error in a server protocol is caught and traced to the case's address."""
    port, addr = _listen(_Crash)
    try:
        with LogWatch() as watch:
            [result] = await replay(
                [Case("crash", SSH, data=b"boom")], Targets(addr, addr, addr)
            )
            Logger().failure(
                "injected", Failure(ValueError("a traceback from nowhere"))
            )
    finally:
        await cast(Deferred[None], port.stopListening())
    by_case, unplaced = attribute(watch.bad(), [result])
    assert result.verdict is None  # the server closed: only the log shows the crash
    assert any("ZeroDivisionError" in r.text for r in by_case["crash"]), watch.records
    assert [r.text.splitlines()[0] for r, _ in unplaced] == ["injected"], unplaced
