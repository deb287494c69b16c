"""/healthz and /readyz, in memory: the real sites (the diagnostics listener's
and the proxy's web listener's) on a ``StringTransport``, probes on a
``Clock`` for their timeout and the report's cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from teleconch import config as cfg
from teleconch.auth.agent import AuthAgent
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.backends.sqlite import SQLiteStore
from teleconch.health import (
    ASKS_AUTH,
    HealthSite,
    NotReady,
    Readiness,
    Report,
    agent_probe,
    store_probe,
)
from teleconch.pki import ROLE_PROXY, TLSAuthority
from teleconch.service import TeleconchService
from tests.harness import make_settings
from tests.test_web_http import Answer, connect, site


class Counted:
    """A probe that answers as told, counting its calls; ``hold`` keeps it
    pending until the test fires ``pending``."""

    def __init__(self, fail: Exception | None = None, hold: bool = False) -> None:
        self.fail = fail
        self.hold = hold
        self.calls = 0
        self.cancelled = 0
        self.pending: list[Deferred[None]] = []

    async def __call__(self) -> None:
        self.calls += 1
        if self.hold:
            d: Deferred[None] = Deferred(lambda _: self._cancelled())
            self.pending.append(d)
            await d
        if self.fail is not None:
            raise self.fail

    def _cancelled(self) -> None:
        self.cancelled += 1


def health(clock: Clock, **probes: Any) -> tuple[HealthSite, Readiness]:
    readiness = Readiness(clock)
    for name, probe in probes.items():
        readiness.add(name, probe)
    return HealthSite(readiness, clock), readiness


def request(s: Any, method: str, path: str, extra: bytes = b"") -> Answer:
    wire = connect(s)
    wire.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n")
    [answer] = wire.answers()
    return answer


def test_healthz_answers_ok_while_the_process_runs_whatever_the_roles_say() -> None:
    """Liveness is not readiness: a role that is not ready must not make a
    load balancer or systemd restart a process that runs."""
    s, _ = health(Clock(), auth=Counted(NotReady("down")))
    answer = request(s, "GET", "/healthz")
    assert answer.status == 200
    assert answer.json() == {"status": "ok"}
    assert answer.headers[b"content-type"] == b"application/json"


def test_readyz_is_200_when_every_role_is_ready() -> None:
    """Every probe answering is the one case a load balancer sends traffic."""
    s, _ = health(Clock(), auth=Counted(), proxy=Counted())
    answer = request(s, "GET", "/readyz")
    assert answer.status == 200
    assert answer.json() == {
        "status": "ready",
        "checks": {"auth": {"ready": True}, "proxy": {"ready": True}},
    }


def test_readyz_is_503_naming_the_role_that_is_not_ready_and_why() -> None:
    """An operator reading the probe's answer learns which role and why."""
    s, _ = health(
        Clock(),
        auth=Counted(),
        proxy=Counted(NotReady("the auth service is unreachable: at x:3025")),
    )
    answer = request(s, "GET", "/readyz")
    assert answer.status == 503
    body = answer.json()
    assert body["status"] == "not ready"
    assert body["checks"]["auth"] == {"ready": True}
    assert body["checks"]["proxy"] == {
        "ready": False,
        "reason": "the auth service is unreachable: at x:3025",
    }


def test_a_probe_that_does_not_answer_counts_as_not_ready_after_its_timeout() -> None:
    """A hung backend must not hang the load balancer's probe: after the
    timeout the answer is 503, and the hung probe is cancelled."""
    clock = Clock()
    hung = Counted(hold=True)
    s, readiness = health(clock, auth=hung)
    wire = connect(s)
    wire.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.answers() == []
    clock.advance(readiness.timeout - 0.1)
    assert wire.answers() == []
    clock.advance(0.1)
    [answer] = wire.answers()
    assert answer.status == 503
    reason = answer.json()["checks"]["auth"]["reason"]
    assert reason == "the check did not answer within 2 s"
    assert hung.cancelled == 1


def test_the_report_is_cached_so_polling_costs_one_probe_per_period() -> None:
    """Many load balancers polling every second must not each cost a query."""
    clock = Clock()
    probe = Counted()
    s, readiness = health(clock, auth=probe)
    for _ in range(5):
        assert request(s, "GET", "/readyz").status == 200
    assert probe.calls == 1
    clock.advance(readiness.cache_for - 0.01)
    request(s, "GET", "/readyz")
    assert probe.calls == 1
    clock.advance(0.01)
    request(s, "GET", "/readyz")
    assert probe.calls == 2


def test_a_cached_not_ready_becomes_ready_once_the_cache_expires() -> None:
    """The cache is short: recovery shows within a couple of seconds."""
    clock = Clock()
    probe = Counted(NotReady("down"))
    s, readiness = health(clock, auth=probe)
    assert request(s, "GET", "/readyz").status == 503
    probe.fail = None
    assert request(s, "GET", "/readyz").status == 503
    clock.advance(readiness.cache_for)
    assert request(s, "GET", "/readyz").status == 200


def test_concurrent_requests_share_one_check() -> None:
    """Requests arriving while a probe runs wait for it rather than start more."""
    clock = Clock()
    probe = Counted(hold=True)
    s, _ = health(clock, auth=probe)
    wires = [connect(s, port=40000 + i) for i in range(3)]
    for w in wires:
        w.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert probe.calls == 1
    probe.pending[0].callback(None)
    for w in wires:
        [answer] = w.answers()
        assert answer.status == 200


def test_a_client_gone_before_the_check_ends_costs_nothing() -> None:
    """The check still completes (for the others); nothing is written to a
    closed connection, and nothing is logged as an error."""
    clock = Clock()
    probe = Counted(hold=True)
    s, readiness = health(clock, auth=probe)
    wire = connect(s)
    wire.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    wire.close()
    probe.pending[0].callback(None)
    assert wire.answers() == []
    cached = cast(Report, readiness.check().result)
    assert cached.ready


def test_an_unexpected_probe_error_is_named_without_its_message_or_traceback() -> None:
    """A bug in a probe must not leak internals to whoever can reach the port."""
    s, _ = health(Clock(), auth=Counted(RuntimeError("secret at /etc/x")))
    answer = request(s, "GET", "/readyz")
    assert answer.status == 503
    reason = answer.json()["checks"]["auth"]["reason"]
    assert "RuntimeError" in reason and "secret" not in reason
    assert b"Traceback" not in answer.body


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_answers_the_status_without_a_body(path: str) -> None:
    """Some load balancers probe with HEAD."""
    s, _ = health(Clock(), auth=Counted(NotReady("down")))
    wire = connect(s)
    wire.send(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = wire.transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert status == (200 if path == "/healthz" else 503)
    assert body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_methods_other_than_get_and_head_get_a_json_405(method: str, path: str) -> None:
    """The endpoints change nothing; anything but a read is refused, saying so."""
    probe = Counted()
    s, _ = health(Clock(), auth=probe)
    answer = request(s, method, path)
    assert answer.status == 405
    assert answer.headers[b"allow"] == b"GET, HEAD"
    assert "GET and HEAD" in answer.json()["error"]["message"]
    assert probe.calls == 0


def test_a_body_is_refused_on_its_headers() -> None:
    """Nothing on the diagnostics port reads a body."""
    s, _ = health(Clock(), auth=Counted())
    answer = request(s, "POST", "/readyz", b"Content-Length: 5\r\n")
    assert answer.status == 413


@pytest.mark.parametrize(
    "path", ["/", "/health", "/healthz/x", "/readyz/", "/v1/webapi/ping", "/%00"]
)
def test_other_paths_are_a_json_404(path: str) -> None:
    """Only the two endpoints exist on the diagnostics listener."""
    s, _ = health(Clock(), auth=Counted())
    answer = request(s, "GET", path)
    assert answer.status == 404
    assert answer.json() == {"error": {"message": "not found"}}


def test_the_web_listener_answers_both_without_a_session_or_csrf_token() -> None:
    """Load balancers probe the web port: no cookie, no bearer token."""
    clock = Clock()
    probe = Counted(NotReady("the auth service is unreachable"))
    readiness = Readiness(clock)
    readiness.add("proxy", probe)
    s = site(readiness=readiness)
    assert request(s, "GET", "/healthz").json() == {"status": "ok"}
    answer = request(s, "GET", "/readyz")
    assert answer.status == 503
    assert "unreachable" in answer.json()["checks"]["proxy"]["reason"]
    assert request(s, "POST", "/readyz").status == 405


def test_the_web_listener_without_a_checker_has_no_such_routes() -> None:
    """A site built without one (unit tests of the API) answers 404 there."""
    assert request(site(), "GET", "/readyz").status == 404


@pytest_twisted.ensureDeferred
async def test_the_store_probe_reads_the_backend() -> None:
    """The auth role is ready when its store answers a cheap read."""
    store = MemoryStore()
    await store.open()
    current: list[Any] = [None]
    readiness = Readiness(Clock(), cache_for=0)
    readiness.add("auth", store_probe(lambda: current[0]))
    report: Report = await readiness.check()
    assert report.checks[0].reason == "the auth service is starting or stopping"
    current[0] = store
    report = await readiness.check()
    assert report.ready


@pytest_twisted.ensureDeferred
async def test_a_store_that_cannot_answer_makes_the_auth_role_not_ready(
    tmp_path: Path,
) -> None:
    """A closed (or broken) SQLite store: not ready, with the backend's error."""
    from twisted.internet import reactor

    store = SQLiteStore(
        str(tmp_path / "teleconch.db"), cast(IReactorFromThreads, reactor)
    )
    await store.open()
    readiness = Readiness(Clock(), cache_for=0)
    readiness.add("auth", store_probe(lambda: store))
    assert (await readiness.check()).ready
    await store.close()
    report = await readiness.check()
    assert not report.ready
    assert report.checks[0].reason == (
        "the storage backend does not answer: StoreError: the store is not open"
    )


def test_the_agent_probe_is_not_ready_while_the_auth_service_does_not_answer() -> None:
    """A real AuthAgent whose connection never completes: the ping is cut
    off at the timeout, and the report says no answer."""
    reactor = MemoryReactorClock()
    ca = TLSAuthority.generate("test.example", reactor.seconds())
    identity = ca.issue_identity(ROLE_PROXY, "p", reactor.seconds(), 3600)
    agent = AuthAgent(reactor, [cfg.HostPort("127.0.0.1", 3025)], identity)
    agent.startService()
    try:
        readiness = Readiness(reactor)
        readiness.add("proxy", agent_probe(lambda: agent), ASKS_AUTH)
        d = readiness.check()
        assert not d.called
        reactor.advance(readiness.timeout)
        report = cast(Report, d.result)
        assert not report.ready
        assert report.checks[0].reason == "the auth service did not answer within 2 s"
    finally:
        agent.stopService()


def test_diag_addr_is_off_by_default_and_a_listener_when_set(tmp_path: Path) -> None:
    """teleconch.diag_addr (Teleport's key) adds the diagnostics listener to
    the process's services, with one checker for every role it runs."""
    reactor = MemoryReactorClock()
    plain = TeleconchService(reactor, make_settings(tmp_path))
    assert plain.diag is None
    settings = make_settings(tmp_path, {"teleconch": {"diag_addr": "127.0.0.1:3000"}})
    assert settings.teleconch.diag_addr == "127.0.0.1:3000"
    service = TeleconchService(reactor, settings)
    assert service.diag is not None
    assert service.diag.name == "teleconch.diag_addr"
    assert service.diag.parent is service
    assert isinstance(service.diag.factory, HealthSite)
    assert [p[0] for p in service.readiness._probes] == ["auth", "proxy"]
    assert service.proxy is not None and service.proxy.readiness is service.readiness


@pytest_twisted.ensureDeferred
async def test_roles_not_started_yet_are_not_ready(tmp_path: Path) -> None:
    """Before a role serves (or once it stops), /readyz says so for each,
    without touching a store or an agent that is not there."""
    service = TeleconchService(MemoryReactorClock(), make_settings(tmp_path))
    report = await service.readiness.check()
    assert report.payload() == {
        "status": "not ready",
        "checks": {
            "auth": {
                "ready": False,
                "reason": "the auth service is starting or stopping",
            },
            "proxy": {
                "ready": False,
                "reason": "the proxy is starting (joining the cluster) or stopping",
            },
        },
    }


def test_a_bad_diag_addr_is_refused_naming_the_key(tmp_path: Path) -> None:
    """A typo stops start-up with the key named, as for every other key."""
    with pytest.raises(cfg.ConfigError, match=r"teleconch\.diag_addr"):
        make_settings(tmp_path, {"teleconch": {"diag_addr": "127.0.0.1:notaport"}})
