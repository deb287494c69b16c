"""The service tree: built without side effects, listeners as named children.

The last test starts a real cluster (TLS listeners on 127.0.0.1) and is
marked interop; the others build or start services on a memory reactor.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import IService, IServiceCollection
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from teleconch.auth.service import AuthService
from teleconch.proxy.service import ProxyService
from teleconch.service import TeleconchService
from teleconch.startup import Listener, StartingService, StartupError, local_address
from tests.harness import make_settings, start_cluster


def _tree(service: IService) -> Iterator[IService]:
    """Every service under ``service``, depth first."""
    if IServiceCollection.providedBy(service):
        for child in service:
            yield child
            yield from _tree(child)


def test_the_tree_is_built_without_listening_or_writing(tmp_path: Path) -> None:
    """Building the all-in-one tree makes the named roles, and touches nothing."""
    reactor = MemoryReactorClock()
    service = TeleconchService(reactor, make_settings(tmp_path))

    assert [child.name for child in service] == ["auth", "proxy"]
    assert isinstance(service.getServiceNamed("auth"), AuthService)
    assert isinstance(service.getServiceNamed("proxy"), ProxyService)
    assert service.getServiceNamed("auth") is service.auth
    assert service.getServiceNamed("proxy") is service.proxy
    assert not [s for s in _tree(service) if isinstance(s, Listener)]
    assert not any(s.running for s in _tree(service))
    assert reactor.tcpServers == []
    assert reactor.tcpClients == []
    assert list(tmp_path.iterdir()) == []


def test_a_config_without_the_proxy_builds_only_the_auth_role(tmp_path: Path) -> None:
    """proxy_service.enabled: no leaves the proxy out of the tree."""
    settings = make_settings(tmp_path, {"proxy_service": {"enabled": False}})
    service = TeleconchService(MemoryReactorClock(), settings)
    assert [child.name for child in service] == ["auth"]
    assert service.proxy is None
    assert list(tmp_path.iterdir()) == []


def test_a_listener_is_a_named_service_that_binds_when_started() -> None:
    """A Listener is named after its config key; ``bound`` fires with the port."""
    reactor = MemoryReactorClock()
    factory = Factory.forProtocol(Protocol)
    listener = Listener(reactor, "proxy_service.listen_addr", "127.0.0.1:3023", factory)
    assert listener.name == "proxy_service.listen_addr"
    assert reactor.tcpServers == []
    assert listener.port is None

    listener.startService()
    bound: list[object] = []
    listener.bound.addCallback(bound.append)
    assert bound == [listener.port]
    assert reactor.tcpServers[0][:2] == (3023, factory)
    assert reactor.tcpServers[0][3] == "127.0.0.1"
    listener.stopService()
    assert not listener.running


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (errno.EADDRINUSE, "another process holds the port"),
        (errno.EACCES, "permission denied"),
        (errno.EADDRNOTAVAIL, "this machine has no such address"),
    ],
)
def test_a_port_it_cannot_take_is_one_startup_error_naming_the_key(
    code: int, why: str
) -> None:
    """No traceback logged: ``bound`` fails with the address, the key and why."""
    taken = CannotListenError("127.0.0.1", 3025, OSError(code, "no"))
    listener = Listener(
        RaisingMemoryReactor(listenException=taken),
        "auth_service.listen_addr",
        "127.0.0.1:3025",
        Factory.forProtocol(Protocol),
    )
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        listener.startService()
    finally:
        globalLogPublisher.removeObserver(observe)
    failures: list[Failure] = []
    listener.bound.addErrback(failures.append)
    [failure] = failures
    error = failure.value
    assert isinstance(error, StartupError)
    assert str(error).startswith(
        "cannot listen on 127.0.0.1:3025 (auth_service.listen_addr): " + why
    )
    assert not [e for e in events if "log_failure" in e]
    assert listener.port is None
    listener.stopService()
    assert not listener.running


class _ListensLate(StartingService):
    """Listens only once ``go`` fires, so a test can stop it first."""

    def __init__(self, reactor: MemoryReactorClock, go: Deferred[None]) -> None:
        super().__init__(reactor)
        self.go = go

    async def _start(self) -> None:
        await self.go
        await self._listen("k", "127.0.0.1:1", Factory.forProtocol(Protocol))


def test_a_role_stopped_before_it_listens_fails_ready_and_binds_nothing() -> None:
    """A stop during the start coroutine: no port left open, ``ready`` says why."""
    reactor, go = MemoryReactorClock(), Deferred[None]()
    service = _ListensLate(reactor, go)
    service.startService()
    service.stopService()
    go.callback(None)
    failures: list[Failure] = []
    service.ready.addErrback(failures.append)
    [failure] = failures
    assert failure.check(StartupError)
    assert "stopped before listening on 127.0.0.1:1 (k)" in str(failure.value)
    assert reactor.tcpServers == []
    assert list(service) == []


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_once_ready_each_role_holds_its_bound_listeners(tmp_path: Path) -> None:
    """After ``ready``, the listeners are children of their roles, and bound."""
    cluster = await start_cluster(tmp_path / "data")
    try:
        auth, proxy = cluster.service.auth, cluster.service.proxy
        assert auth is not None and proxy is not None
        auth_listener = auth.getServiceNamed("auth_service.listen_addr")
        assert isinstance(auth_listener, Listener) and auth_listener.running
        assert auth_listener.port is not None
        assert local_address(auth_listener.port) == cluster.auth_addr

        ssh = proxy.getServiceNamed("proxy_service.listen_addr")
        web = proxy.getServiceNamed("proxy_service.web_listen_addr")
        assert isinstance(ssh, Listener) and isinstance(web, Listener)
        assert ssh.port is not None and web.port is not None
        assert ssh.factory is proxy.ssh_factory
        assert local_address(ssh.port) == proxy.ssh_address
        assert local_address(web.port) == cluster.web_addr
        assert proxy.getServiceNamed("auth_agent") is proxy.agent
    finally:
        await cluster.stop()
    assert not auth_listener.running and not ssh.running and not web.running
