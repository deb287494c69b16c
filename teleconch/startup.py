"""What the role services share: a start that is a coroutine, and listening.

A role (auth, proxy) is a ``StartingService``.  Constructing one touches
nothing; ``startService`` runs its ``_start`` coroutine (open the data
directory, make keys on first start, listen), and ``ready`` fires once it
is serving, or fails with what went wrong, so a test or the all-in-one
banner can wait for it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool

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


class StartingService(MultiService):
    """A service whose start is a coroutine; ``ready`` tells how it went."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.ready: Deferred[None] = Deferred()
        self._ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.chainDeferred(self.ready)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _listen(self, key: str, address: str, factory: Any) -> IListeningPort:
        """Listen on ``address``, the value of config ``key``."""
        endpoint = serverFromString(self.reactor, cfg.listen_endpoint(address))
        try:
            port: IListeningPort = await endpoint.listen(factory)
        except CannotListenError as e:
            raise StartupError(_cannot_listen(key, address, e)) from None
        self._ports.append(port)
        return port

    async def _in_thread(self, f: Callable[..., Any], *args: Any) -> Any:
        return await deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), f, *args
        )

    def stopService(self) -> Deferred[None] | None:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        ports, self._ports = self._ports, []
        for port in ports:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        stopped = super().stopService()
        if stopped is not None:
            await stopped
