"""What the role services share: a start that is a coroutine, and listening.

A role (auth, proxy) is a ``StartingService``.  Constructing one touches
nothing; ``startService`` runs its ``_start`` coroutine (open the data
directory, make keys on first start, listen), and ``ready`` fires once it
is serving, or fails with what went wrong, so a test or the all-in-one
banner can wait for it.  Each port it listens on is a ``Listener``, a child
service named after the config key that sets its address.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from teleconch import config as cfg


class StartupError(Exception):
    """A service cannot start; the message says why and what to change."""


def _cannot_listen(key: str, address: str, e: CannotListenError) -> str:
    err = e.socketError
    code = getattr(err, "errno", None)
    if code == errno.EADDRINUSE:
        why = "another process holds the port"
    elif code == errno.EACCES:
        why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif code == errno.EADDRNOTAVAIL:
        why = "this machine has no such address"
    else:
        why = str(getattr(err, "strerror", None) or err)
    return (
        f"cannot listen on {address} ({key}): {why}; stop what holds it, or set "
        f"{key} to another address"
    )


def local_address(
    port: IListeningPort, fallback_host: str = "127.0.0.1"
) -> cfg.HostPort:
    """Where a client on this machine reaches a port we listen on."""
    addr = port.getHost()
    host = getattr(addr, "host", fallback_host)
    if host in ("0.0.0.0", "::", ""):
        host = fallback_host
    return cfg.HostPort(host, getattr(addr, "port", 0))


def listening_address(port: IListeningPort) -> str:
    """The address a port is bound to, as the kernel says (0.0.0.0 included)."""
    addr = port.getHost()
    host, number = getattr(addr, "host", None), getattr(addr, "port", None)
    if host is None or number is None:
        return str(addr)
    return str(cfg.HostPort(host, number))


def advertised_address(configured: cfg.HostPort, bound_port: int) -> cfg.HostPort:
    """The configured public address; without a port, the port we are bound to."""
    return configured if configured.port else cfg.HostPort(configured.host, bound_port)


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """Listens through ``endpoint`` and tells ``bound`` how it went.

    ``StreamServerEndpointService`` logs a failed listen as a traceback and
    carries on; here the failure goes to ``bound`` instead (a port that is
    taken as one ``StartupError`` naming the config key), and the service is
    left with no port to stop.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, key: str, address: str) -> None:
        self._endpoint = endpoint
        self._key = key
        self._address = address
        self.bound: Deferred[IListeningPort] = Deferred()
        self.port: IListeningPort | None = None

    # None when the listen failed, as StreamServerEndpointService's own
    # error handler leaves it; its stopService stops no port then.
    def listen(  # type: ignore[override]
        self, protocolFactory: IProtocolFactory
    ) -> Deferred[IListeningPort | None]:
        return Deferred.fromCoroutine(self._listen(protocolFactory))

    async def _listen(self, factory: IProtocolFactory) -> IListeningPort | None:
        try:
            port: IListeningPort = await self._endpoint.listen(factory)
        except CannotListenError as e:
            why = _cannot_listen(self._key, self._address, e)
            self.bound.errback(StartupError(why))
            return None
        except Exception as e:
            self.bound.errback(e)
            return None
        self.port = port
        self.bound.callback(port)
        return port


class Listener(StreamServerEndpointService):
    """A listening port: a child of its role's service, named after its config key.

    ``bound`` fires with the port once it listens, or fails with a
    ``StartupError`` that names the key and the address.
    """

    def __init__(
        self, reactor: Any, key: str, address: str, factory: IProtocolFactory
    ) -> None:
        endpoint = serverFromString(reactor, cfg.listen_endpoint(address))
        self._reporting = _ReportingEndpoint(endpoint, key, address)
        super().__init__(self._reporting, factory)
        self.setName(key)
        self.address = address
        self.bound = self._reporting.bound

    @property
    def port(self) -> IListeningPort | None:
        """The port, once bound."""
        return self._reporting.port


class StartingService(MultiService):
    """A service whose start is a coroutine; ``ready`` tells how it went."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.ready: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.chainDeferred(self.ready)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _listen(
        self, key: str, address: str, factory: IProtocolFactory
    ) -> IListeningPort:
        """Listen on ``address``, the value of config ``key``, in a child Listener.

        The factory needs what ``_start`` makes (CAs, an identity), so the
        listener joins the tree here rather than when the service is built.
        """
        listener = Listener(self.reactor, key, address, factory)
        listener.setServiceParent(self)
        if not self.running:
            listener.disownServiceParent()
            raise StartupError(f"stopped before listening on {address} ({key})")
        return await listener.bound

    async def _in_thread(self, f: Callable[..., Any], *args: Any) -> Any:
        return await deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), f, *args
        )

    def stopService(self) -> Deferred[None] | None:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """Stop the children, the listeners among them (subclasses add to this)."""
        stopped = super().stopService()
        if stopped is not None:
            await stopped
