"""A Twisted transport over the byte stream of an SSH channel.

The recording proxy runs an SSH *server* over a channel the client opened
(``direct-tcpip`` for ``ssh -J``, a ``proxy:`` subsystem for ``ssh -s``): the
channel's bytes are the inner SSH connection.  `ChannelTransport` is the
``ITransport`` that inner protocol sees:

- bytes from the channel go to ``protocol.dataReceived`` (`received`);
- what the protocol writes goes to ``send`` (the channel's write), at once:
  the channel queues what its peer's window refuses;
- back-pressure: while the channel's queue is behind (`outer_full`) the
  producer the protocol registered (a `FlowControlledConnection`'s socket
  producer) is paused, so the inner channels stop sending data and their
  own windows throttle their sources; `outer_drained` resumes it.  Only
  control packets (key exchange, replies) still go out, so nothing grows
  without bound;
- the protocol's ``loseConnection`` ends the channel (``done``), and the
  channel ending (`outer_lost`) is the protocol's ``connectionLost``.

A protocol that raises on what it receives (garbage from a hostile client)
loses only this transport: the channel closes, the proxy goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["ChannelTransport"]

log = Logger()


@implementer(ITransport, IConsumer, IPushProducer)
class ChannelTransport:
    """What a protocol running over a channel's bytes writes to and is fed by.

    ``send`` takes the protocol's bytes (the channel's ``write``), ``done``
    is called once when the protocol closes the transport (close the
    channel), ``peer``/``host`` are what ``getPeer``/``getHost`` say (the
    client's address, for its audit records).
    """

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[bytes], None],
        done: Callable[[], None],
        peer: IAddress,
        host: IAddress,
    ) -> None:
        self._clock = clock
        self._send = send
        self._done = done
        self._peer = peer
        self._host = host
        self._protocol: IProtocol | None = None
        self._producer: IPushProducer | None = None
        self._outer_full = False
        self._reading = True  # the protocol has not paused us
        self._unread: list[bytes] = []  # while the protocol pauses reading
        self._lost = False
        #: Like a TCP transport's: set once loseConnection was called.
        self.disconnecting = False

    @property
    def protocol(self) -> IProtocol | None:
        return self._protocol

    def attach(self, protocol: IProtocol) -> None:
        """Start ``protocol`` on this transport (its ``makeConnection``)."""
        self._protocol = protocol
        protocol.makeConnection(self)
        self.resumeProducing()  # what came before

    # -- the channel's side ----------------------------------------------

    def received(self, data: bytes) -> None:
        """Bytes from the channel, for the protocol."""
        if self._lost or self.disconnecting:
            return
        if not self._reading or self._protocol is None:
            self._unread.append(data)
            return
        self._deliver(data)

    def received_eof(self) -> None:
        """The channel's peer will send nothing more: an SSH stream is over."""
        self.loseConnection()

    def outer_full(self) -> None:
        """The channel is behind: the protocol's producer pauses."""
        if not self._outer_full:
            self._outer_full = True
            if self._producer is not None:
                self._producer.pauseProducing()

    def outer_drained(self) -> None:
        if self._outer_full:
            self._outer_full = False
            if self._producer is not None:
                self._producer.resumeProducing()

    def outer_lost(self, reason: Failure | None = None) -> None:
        """The channel is gone: the protocol's connection is lost (once)."""
        if self._lost:
            return
        self._lost = True
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        if self._protocol is not None:
            why = reason or Failure(ierror.ConnectionDone("the channel was closed"))
            try:
                self._protocol.connectionLost(why)
            except Exception:
                log.failure("the protocol over a channel failed in connectionLost")

    def _deliver(self, data: bytes) -> None:
        assert self._protocol is not None
        try:
            self._protocol.dataReceived(data)
        except Exception:
            log.failure("the protocol over a channel failed; closing that channel")
            self.abortConnection()

    # -- ITransport, for the protocol ---------------------------------------

    def write(self, data: bytes) -> None:
        if data and not self._lost and not self.disconnecting:
            self._send(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close the channel after what was written (it queues in order)."""
        if self.disconnecting or self._lost:
            return
        self.disconnecting = True
        self._done()
        # As a TCP transport does, later: never from inside the protocol's call.
        self._clock.callLater(0, self.outer_lost, None)

    def abortConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    # -- IConsumer: the protocol's producer (a connection's socket producer)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("a producer is registered already")
        self._producer = producer
        if self._outer_full:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    # -- IPushProducer: the protocol pausing what it reads -----------------

    def pauseProducing(self) -> None:
        self._reading = False

    def resumeProducing(self) -> None:
        self._reading = True
        while self._unread and self._reading and not self._lost and self._protocol:
            self._deliver(self._unread.pop(0))

    def stopProducing(self) -> None:
        self.loseConnection()
