"""Health endpoints for load balancers and systemd: ``/healthz`` and ``/readyz``.

``/healthz`` says the process runs (200 while it can answer at all).
``/readyz`` says whether every role the process runs can do its work: the
auth service when its storage backend answers a cheap read, a proxy when the
auth service answers its AuthAgent.  Each probe is bounded by ``timeout``
and the report is cached for ``cache_for`` seconds, so a load balancer
polling every second costs one probe a second whatever the number of
pollers; concurrent requests share one check.

The same `Readiness` answers on ``teleconch.diag_addr`` (`HealthSite`, off
by default) and on the proxy's web listener (`add_routes`), which load
balancers probe anyway.  Neither takes a session, a body or any method but
GET and HEAD; no answer carries a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from teleconch.auth.agent import AuthAgent, AuthUnavailable
from teleconch.auth.store import Store
from teleconch.web.http import PeerCounter, WebSite, error_body
from teleconch.web.jsonapi import Dir

if TYPE_CHECKING:
    from teleconch.auth.service import AuthService
    from teleconch.proxy.service import ProxyService

log = Logger()

#: How long one probe may take before its role counts as not ready.
PROBE_TIMEOUT = 2.0
#: How long a report is reused (a load balancer polls every second or so).
CACHE_SECONDS = 1.5
#: Open connections one address may hold on the diagnostics listener.
MAX_CONNECTIONS_PER_ADDRESS = 16

#: A probe returns when its role is ready and raises `NotReady` (or anything
#: else) saying why not.
Probe = Callable[[], Awaitable[None]]
#: What each role's probe asks, as a timeout names it.
ASKS_STORAGE = "the storage backend"
ASKS_AUTH = "the auth service"


class NotReady(Exception):
    """A role cannot do its work yet; the message says why."""


@attrs.frozen
class Check:
    """One role's readiness, as the last probe found it."""

    name: str
    ready: bool
    reason: str = ""


@attrs.frozen
class Report:
    """Every role's readiness at one moment."""

    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(c.ready for c in self.checks)

    def payload(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        for c in self.checks:
            checks[c.name] = (
                {"ready": True} if c.ready else {"ready": False, "reason": c.reason}
            )
        return {"status": "ready" if self.ready else "not ready", "checks": checks}


def _reason(name: str, failure: Failure) -> str:
    """What a failed probe tells a load balancer: its message, never a traceback."""
    e = failure.value
    if isinstance(e, NotReady | AuthUnavailable):
        return str(e)
    log.failure("readiness probe {name} failed unexpectedly", failure, name=name)
    return f"the {name} check failed ({type(e).__name__}); see the service's log"


class Readiness:
    """The roles' probes, run together, each bounded, the report cached."""

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float = PROBE_TIMEOUT,
        cache_for: float = CACHE_SECONDS,
    ) -> None:
        self._clock = clock
        self.timeout = timeout
        self.cache_for = cache_for
        self._probes: list[tuple[str, Probe, str]] = []
        self._cached: tuple[float, Report] | None = None
        self._waiting: list[Deferred[Report]] | None = None

    def add(self, name: str, probe: Probe, asks: str = "the check") -> None:
        """Check role ``name`` with ``probe`` (which ``asks`` something: what a
        timeout names) from now on."""
        self._probes.append((name, probe, asks))
        self._cached = None

    def check(self) -> Deferred[Report]:
        """The current report: the cached one while fresh, else a new check
        (shared with every caller that asks while it runs)."""
        if self._cached is not None:
            at, report = self._cached
            if self._clock.seconds() - at < self.cache_for:
                return succeed(report)
        d: Deferred[Report] = Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        Deferred.fromCoroutine(self._run()).addErrback(
            lambda f: log.failure("readiness check failed", f)
        )
        return d

    async def _run(self) -> None:
        bounded = [self._bounded(*p) for p in self._probes]
        checks = [await b for b in bounded]
        report = Report(tuple(checks))
        self._cached = (self._clock.seconds(), report)
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            d.callback(report)

    def _bounded(self, name: str, probe: Probe, asks: str) -> Deferred[Check]:
        """``probe``'s answer, or not ready once ``timeout`` has passed
        (the probe is cancelled then; whatever it does later is ignored)."""
        out: Deferred[Check] = Deferred()
        running = Deferred.fromCoroutine(_call(probe))

        def too_late() -> None:
            why = f"{asks} did not answer within {self.timeout:g} s"
            out.callback(Check(name, False, why))
            running.cancel()

        timer = self._clock.callLater(self.timeout, too_late)

        def settled(result: Failure | None) -> None:
            if out.called:
                return
            timer.cancel()
            if isinstance(result, Failure):
                out.callback(Check(name, False, _reason(name, result)))
            else:
                out.callback(Check(name, True))

        running.addBoth(settled)
        return out


async def _call(probe: Probe) -> None:
    await probe()


# --- the roles' probes --------------------------------------------------


def store_probe(current: Callable[[], Store | None]) -> Probe:
    """Ready when the store ``current()`` gives answers a point read
    (None: the auth service is not serving yet, or any more)."""

    async def probe() -> None:
        store = current()
        if store is None:
            raise NotReady("the auth service is starting or stopping")
        try:
            await store.get_setting("cluster_name")
        except Exception as e:
            raise NotReady(
                f"the storage backend does not answer: {type(e).__name__}: {e}"
            ) from None

    return probe


def agent_probe(current: Callable[[], AuthAgent | None]) -> Probe:
    """Ready when the auth service answers a ping through ``current()``
    (None: the proxy has not joined the cluster yet, or is stopping)."""

    async def probe() -> None:
        agent = current()
        if agent is None:
            raise NotReady("the proxy is starting (joining the cluster) or stopping")
        try:
            await agent.ping()
        except AuthUnavailable as e:
            raise NotReady(f"the auth service is unreachable: {e}") from None

    return probe


def auth_probe(auth: AuthService) -> Probe:
    """The auth role: its storage, once it serves."""

    def current() -> Store | None:
        serving = auth.running and auth.ready.called and auth.server is not None
        return auth.server.store if serving and auth.server else None

    return store_probe(current)


def proxy_probe(proxy: ProxyService) -> Probe:
    """The proxy role: the auth service through its AuthAgent, once it serves."""

    def current() -> AuthAgent | None:
        return proxy.agent if proxy.running and proxy.ready.called else None

    return agent_probe(current)


# --- HTTP ---------------------------------------------------------------

_ALLOWED = b"GET, HEAD"


def _json(request: Request, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload).encode("utf-8")


class _Endpoint(Resource):
    """GET and HEAD only (anything else a JSON 405); no children (a JSON 404)."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return Dir().getChild(path, request)

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", _ALLOWED)
            return error_body(request, 405, "only GET and HEAD are allowed here")
        return self.answer(request)

    def answer(self, request: Request) -> bytes | int:
        raise NotImplementedError


class LivenessResource(_Endpoint):
    """``/healthz``: 200 while the process answers at all."""

    def answer(self, request: Request) -> bytes:
        return _json(request, 200, {"status": "ok"})


class ReadinessResource(_Endpoint):
    """``/readyz``: 200 when every role is ready, else 503 naming which and why."""

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def answer(self, request: Request) -> int:
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def send(report: Report) -> None:
            if finished:
                return  # the client has gone
            status = 200 if report.ready else 503
            request.write(_json(request, status, report.payload()))
            request.finish()

        self._readiness.check().addCallback(send).addErrback(
            lambda f: log.failure("answering /readyz failed", f)
        )
        return NOT_DONE_YET


def add_routes(root: Resource, readiness: Readiness) -> None:
    """``/healthz`` and ``/readyz`` under ``root`` (the proxy's web listener)."""
    root.putChild(b"healthz", LivenessResource())
    root.putChild(b"readyz", ReadinessResource(readiness))


class HealthSite(WebSite):
    """The diagnostics listener: ``/healthz`` and ``/readyz``, and a JSON 404
    for every other path (the web listener's guards: no body, no traceback,
    a cap on connections per address), without an access log."""

    def __init__(self, readiness: Readiness, reactor: IReactorTime) -> None:
        root = Dir()
        add_routes(root, readiness)
        super().__init__(root, reactor, PeerCounter(MAX_CONNECTIONS_PER_ADDRESS))

    def log(self, request: Request) -> None:  # type: ignore[override]
        """No access log: a load balancer polling every second would fill it."""
