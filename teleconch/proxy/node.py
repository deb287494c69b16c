"""The node side of a routed connection, whatever carries it.

A splice (or the web terminal, or the recording proxy) talks to a node
through a `NodeTransport` and hears back through `NodeEvents`; it never
knows whether the bytes go over a TCP connection (`TCPNodeTransport`, what
the SSH proxy uses) or over a channel on an SSH connection to the node
(`teleconch.proxy.nodechannel.SSHChannelNodeTransport`).

Flow control is the same both ways for every transport:

- the caller stops the node with ``pauseProducing`` while its own reader is
  behind, and lets it go on with ``resumeProducing``;
- the transport says ``node_full`` when the node is not taking what is
  written to it, and ``node_drained`` once it has taken everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from teleconch.proxy.routing import Target

#: How long a TCP connect to a node may take.
CONNECT_TIMEOUT = 15


class NodeEvents(Protocol):
    """What a node transport reports, to whoever joined it to a client."""

    def node_data(self, data: bytes) -> None:
        """Bytes from the node (only while producing)."""

    def node_eof(self) -> None:
        """The node will send nothing more; it may still take bytes."""

    def node_lost(self, reason: Failure) -> None:
        """The node side is gone (``ConnectionDone`` when it ended cleanly)."""

    def node_full(self) -> None:
        """The node is not taking what is written: stop feeding it."""

    def node_drained(self) -> None:
        """The node took everything written so far: feed it again."""


class NodeTransport(Protocol):
    """The node side of a splice: opened once, then written, paused and closed."""

    def connect(self, target: Target, events: NodeEvents) -> Deferred[None]:
        """Open the way to ``target``; fire once bytes can flow, fail with why not.

        Cancelling the Deferred abandons the attempt. Once it has fired,
        every later event goes to ``events``, ending with ``node_lost``.
        """

    def write(self, data: bytes) -> None:
        """Send bytes to the node; ``node_full`` says when to stop."""

    def write_eof(self) -> None:
        """Half-close: nothing more will be written; the node may still reply."""

    def pauseProducing(self) -> None:
        """Deliver no node bytes until `resumeProducing`."""

    def resumeProducing(self) -> None:
        """Deliver node bytes again."""

    def close(self) -> None:
        """Close once written bytes have gone out; ``node_lost`` follows."""

    def abort(self) -> None:
        """Close now, dropping whatever is buffered."""

    @property
    def peer(self) -> str:
        """Where the node side leads, for the log."""


class _TCP(Protocol):
    """What we use of the node's Twisted TCP transport (ITCPTransport + IConsumer)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


class TCPNodeTransport:
    """The node side over one TCP connection, from an endpoint per target.

    ``transport`` is the Twisted TCP transport once connected (tests and the
    proxy's memory checks read its write buffer).
    """

    def __init__(self, endpoint_for: Callable[[Target], IStreamClientEndpoint]):
        self._endpoint_for = endpoint_for
        self._events: NodeEvents | None = None
        self._producing = False  # registered as the transport's producer
        self.transport: _TCP | None = None

    @classmethod
    def hostname(
        cls, reactor: Any, timeout: float = CONNECT_TIMEOUT
    ) -> TCPNodeTransport:
        """Dial the target's host and port, as the proxy does: by name, or
        straight to an IP address.

        A node registered at an IP address is dialled without name resolution:
        HostnameEndpoint would run getaddrinfo in the reactor's thread pool for
        every session, and a burst of sessions grows that pool (each new thread
        with its own C-allocator arena, never given back), which kept the
        proxy's RSS ~6 MB higher after 200 sessions had ended.
        """

        def endpoint(target: Target) -> IStreamClientEndpoint:
            if isIPAddress(target.host):
                return TCP4ClientEndpoint(
                    reactor, target.host, target.port, timeout=timeout
                )
            if isIPv6Address(target.host):
                return TCP6ClientEndpoint(
                    reactor, target.host, target.port, timeout=timeout
                )
            return HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)

        return cls(endpoint)

    def connect(self, target: Target, events: NodeEvents) -> Deferred[None]:
        self._events = events
        attempt = connectProtocol(self._endpoint_for(target), _TCPNode(self))
        return attempt.addCallback(lambda _: None)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def write_eof(self) -> None:
        assert self.transport is not None
        self._unregister()
        self.transport.loseWriteConnection()

    def pauseProducing(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        assert self.transport is not None
        self.transport.resumeProducing()

    def close(self) -> None:
        # A paused producer would hold the close back until it resumed.
        if self.transport is not None:
            self._unregister()
            self.transport.loseConnection()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    @property
    def peer(self) -> str:
        return (
            "not connected" if self.transport is None else str(self.transport.getPeer())
        )

    def _unregister(self) -> None:
        if self._producing and self.transport is not None:
            self._producing = False
            self.transport.unregisterProducer()

    # -- from the protocol -------------------------------------------------

    def _made(self, transport: _TCP) -> None:
        self.transport = transport
        self._producing = True
        transport.registerProducer(_WriteBuffer(self), True)

    def _lost(self, reason: Failure) -> None:
        self._producing = False
        if self._events is not None:
            self._events.node_lost(reason)

    @property
    def events(self) -> NodeEvents:
        assert self._events is not None
        return self._events


@implementer(IPushProducer)
class _WriteBuffer:
    """Registered on the node's TCP transport: its high-water signals, as events."""

    def __init__(self, node: TCPNodeTransport) -> None:
        self._node = node

    def pauseProducing(self) -> None:
        self._node.events.node_full()

    def resumeProducing(self) -> None:
        self._node.events.node_drained()

    def stopProducing(self) -> None:
        """The connection is gone; ``node_lost`` reports it."""


@implementer(IHalfCloseableProtocol)
class _TCPNode(TwistedProtocol):
    """The TCP protocol of a `TCPNodeTransport`: hands every event on."""

    def __init__(self, node: TCPNodeTransport) -> None:
        self._node = node

    def connectionMade(self) -> None:
        self._node._made(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self._node.events.node_data(data)

    def readConnectionLost(self) -> None:
        self._node.events.node_eof()

    def writeConnectionLost(self) -> None:
        """Our EOF reached the node; its replies may still come."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._node._lost(reason)
