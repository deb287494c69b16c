"""Two ``ssh-connection`` services joined packet to packet, without crypto.

For tests of what runs on channels (agent forwarding, relays): each side's
``sendPacket`` queues the packet for the other side's ``packetReceived``;
`Link.flush` delivers until both are quiet (unit tests), or with a reactor
the link flushes itself on the next turn (interop tests). The server side's
transport carries an ``avatar`` as Conch's server transport does.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.conch.avatar import ConchUser
from twisted.conch.ssh.connection import SSHConnection
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTime


class _End:
    """One side's transport: what the connection calls ``self.transport``."""

    def __init__(self, link: Link, index: int, server: bool) -> None:
        self._link, self._index = link, index
        if server:
            self.avatar = ConchUser()
        self.disconnects: list[tuple[int, bytes]] = []

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self._link._send(1 - self._index, kind, payload)

    def sendDisconnect(self, reason: int, description: bytes) -> None:
        self.disconnects.append((reason, description))
        self._link.lose()

    def loseConnection(self) -> None:
        self._link.lose()

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000 + self._index)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 22)


class Link:
    """``server`` (its transport has an avatar) and ``client``, joined."""

    def __init__(
        self,
        server: SSHConnection,
        client: SSHConnection,
        reactor: IReactorTime | None = None,
    ) -> None:
        self.conns = (server, client)
        self.server, self.client = server, client
        self._reactor = reactor
        self._queue: deque[tuple[int, int, bytes]] = deque()
        self._scheduled = False
        self.lost = False
        self.delivered = 0
        for index, conn in enumerate(self.conns):
            conn.transport = _End(self, index, server=index == 0)  # type: ignore[assignment]
            conn.serviceStarted()

    def _send(self, to: int, kind: int, payload: bytes) -> None:
        if self.lost:
            return
        self._queue.append((to, kind, payload))
        if self._reactor is not None and not self._scheduled:
            self._scheduled = True
            self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Deliver every queued packet, and what they make the sides send."""
        self._scheduled = False
        while self._queue and not self.lost:
            to, kind, payload = self._queue.popleft()
            self.delivered += 1
            self.conns[to].packetReceived(kind, payload)

    def lose(self) -> None:
        """The connection between them is gone: both services stop."""
        if self.lost:
            return
        self.lost = True
        self._queue.clear()
        for conn in self.conns:
            conn.serviceStopped()


def pumped(link: Link, d: Any) -> Any:
    """Flush ``link`` and return what the Deferred ``d`` fired with."""
    link.flush()
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]
