"""How the proxy dials a node (teleconch.proxy.node.TCPNodeTransport.hostname).

A node registered at an IP address must be dialled without name resolution:
Twisted's HostnameEndpoint resolves even "127.0.0.1" with getaddrinfo in the
reactor's thread pool, so a burst of sessions grew that pool, and every new
thread's C-allocator arena stayed: after 200 sessions had ended the proxy's
RSS was ~6 MB higher (bench/bench_sessions.py showed the threads and the
arenas grow while tracemalloc saw no Python object kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.internet.testing import MemoryReactorClock, SynchronousResolver
from zope.interface import implementer

from teleconch.proxy.node import TCPNodeTransport
from teleconch.proxy.routing import Target


@implementer(IHostnameResolver)
class RecordingResolver:
    """Resolves every name to 127.0.0.1 at once, and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._inner = SynchronousResolver()

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.asked.append(hostName)
        return self._inner.resolveHostName(
            resolutionReceiver, hostName, portNumber, addressTypes, transportSemantics
        )


class Events:
    def __getattr__(self, name: str) -> Any:
        return lambda *a: None


def dial(host: str) -> tuple[MemoryReactorClock, RecordingResolver]:
    reactor = MemoryReactorClock()
    resolver = RecordingResolver()
    reactor.installNameResolver(resolver)
    TCPNodeTransport.hostname(reactor).connect(Target(host, 2222), Events())
    return reactor, resolver


def test_a_node_at_an_ipv4_address_is_dialled_without_name_resolution() -> None:
    """No getaddrinfo (a thread from the reactor's pool) per session to an IP."""
    reactor, resolver = dial("127.0.0.1")
    assert resolver.asked == []
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("127.0.0.1", 2222)]


def test_a_node_at_an_ipv6_address_is_dialled_without_name_resolution() -> None:
    """The same for an IPv6 literal."""
    reactor, resolver = dial("::1")
    assert resolver.asked == []
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("::1", 2222)]


def test_a_node_registered_by_name_is_still_resolved() -> None:
    """A host name goes through the reactor's resolver, as before."""
    reactor, resolver = dial("web1.internal")
    assert resolver.asked == ["web1.internal"]
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("127.0.0.1", 2222)]
