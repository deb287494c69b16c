"""Resource limits for a Conch SSH server: OpenSSH's LoginGraceTime,
MaxStartups / PerSourceMaxStartups and MaxSessions ideas.

Without them a peer that sends a version line and nothing more holds a
descriptor for ever, and enough of them lock everybody out.

- ``StartupLimiter`` counts unauthenticated connections, in total and per
  source address; the factory holds one.
- ``AdmissionMixin`` (server transport) takes a slot before anything is sent,
  or writes one line and closes; it gives the slot back on login or on
  disconnect, and disconnects whoever has not logged in within the grace time.
- ``ChannelLimitMixin`` (``ssh-connection``) refuses channels past the limit
  with OPEN_ADMINISTRATIVELY_PROHIBITED.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from twisted.conch.ssh import connection
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from teleconch.durations import format_duration

_log = Logger()

#: After our DISCONNECT, how long a peer that does not read may hold on.
ABORT_AFTER = 5.0
#: At most one log line per this many seconds about refused connections.
REFUSAL_LOG_INTERVAL = 10.0


@attrs.frozen
class SSHLimits:
    """How much an SSH server gives each peer: the ``proxy_service`` keys of
    the same names."""

    #: Seconds a connection has to authenticate.
    login_grace_time: float = 30
    #: Unauthenticated connections at once, from everywhere.
    max_startups: int = 100
    #: Unauthenticated connections at once from one address.
    max_startups_per_source: int = 10
    #: Channels open at once on one connection.
    max_channels_per_connection: int = 64


class StartupLimiter:
    """Counts unauthenticated connections, in total and per source address."""

    def __init__(self, limits: SSHLimits, clock: IReactorTime) -> None:
        self.limits = limits
        self._clock = clock
        self._by_source: Counter[str] = Counter()
        self._refused = 0
        self._next_log = 0.0

    @property
    def total(self) -> int:
        return self._by_source.total()

    def count(self, source: str) -> int:
        return self._by_source[source]

    def admit(self, source: str) -> bool:
        """Take a slot for a new connection from ``source``, if one is free."""
        if self.total >= self.limits.max_startups:
            self._refuse(source, f"max_startups ({self.limits.max_startups})")
            return False
        if self._by_source[source] >= self.limits.max_startups_per_source:
            limit = self.limits.max_startups_per_source
            self._refuse(source, f"max_startups_per_source ({limit})")
            return False
        self._by_source[source] += 1
        return True

    def release(self, source: str) -> None:
        """Give back the slot of a connection that logged in or went away."""
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def _refuse(self, source: str, limit: str) -> None:
        """One log line now and then, however many connections are refused."""
        self._refused += 1
        now = self._clock.seconds()
        if now < self._next_log:
            return
        _log.warn(
            "refused {count} unauthenticated SSH connection(s) past {limit}, "
            "the last from {source}",
            count=self._refused,
            limit=limit,
            source=source,
        )
        self._refused = 0
        self._next_log = now + REFUSAL_LOG_INTERVAL


class LimitedFactory(Protocol):
    """What the mixins need from the SSH factory."""

    limits: SSHLimits
    startups: StartupLimiter
    clock: IReactorTime


if TYPE_CHECKING:
    _Base = SSHServerTransport
    _ConnBase = connection.SSHConnection
else:
    _Base = _ConnBase = object


class AdmissionMixin(_Base):
    """A server transport that counts as a startup until it logs in.

    Put it first in the bases: a refused connection runs none of the rest.
    """

    #: Written to a refused peer before closing (OpenSSH writes a line too).
    refusalLine = (
        b"teleconch: too many unauthenticated connections; try again later\r\n"
    )

    _startupSource: str | None = None
    _graceTimer: IDelayedCall | None = None
    # Set by the grace DISCONNECT; only the connection going away ends them.
    _graceOver = False
    _abortTimer: IDelayedCall | None = None
    _refusedAtStart = False

    @property
    def _limited(self) -> LimitedFactory:
        return self.factory  # type: ignore[return-value]

    def connectionMade(self) -> None:
        """Take a startup slot and start the grace timer, or refuse at once."""
        assert self.transport is not None
        peer = self.transport.getPeer()
        source = str(getattr(peer, "host", None) or "local")
        factory = self._limited
        if not factory.startups.admit(source):
            self._refusedAtStart = True
            self.transport.write(self.refusalLine)
            self.transport.loseConnection()
            return
        self._startupSource = source
        self._graceTimer = factory.clock.callLater(
            factory.limits.login_grace_time, self._graceExpired
        )
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self._refusedAtStart:
            super().dataReceived(data)

    def setService(self, service: Any) -> None:
        """Logged in once the userauth service hands over to the next one.

        Not after the grace DISCONNECT: that connection keeps its slot and its
        abort until it is gone, whatever completes in the meantime.
        """
        super().setService(service)
        if hasattr(self, "avatar") and not self._graceOver:
            _cancel(self._graceTimer)
            self._graceTimer = None
            self._releaseSlot()

    def connectionLost(self, reason: Any = None) -> None:
        _cancel(self._graceTimer)
        _cancel(self._abortTimer)
        self._graceTimer = self._abortTimer = None
        self._releaseSlot()
        if not self._refusedAtStart:
            super().connectionLost(reason)

    def _graceExpired(self) -> None:
        grace = format_duration(self._limited.limits.login_grace_time)
        self._graceTimer = None
        self._graceOver = True
        self.sendDisconnect(
            DISCONNECT_BY_APPLICATION,
            b"not authenticated within the login grace time (%s)" % grace.encode(),
        )
        # The slot is held until the peer is really gone.
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            self._abortTimer = self._limited.clock.callLater(ABORT_AFTER, abort)

    def _releaseSlot(self) -> None:
        if self._startupSource is not None:
            self._limited.startups.release(self._startupSource)
            self._startupSource = None


def _cancel(call: IDelayedCall | None) -> None:
    """Cancel ``call`` if it is still pending."""
    if call is not None and call.active():
        call.cancel()


class ChannelLimitMixin(_ConnBase):
    """``ssh-connection`` that refuses channels past the factory's limit."""

    _refusedChannels = 0

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        assert self.transport is not None
        limit = self.transport.factory.limits.max_channels_per_connection
        if len(self.channels) < limit:
            super().ssh_CHANNEL_OPEN(packet)
            return
        channelType, rest = getNS(packet)
        (senderChannel,) = struct.unpack(">L", rest[:4])
        message = (
            f"teleconch: at most {limit} channels may be open on one connection; "
            "close some, or open another connection"
        )
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(
                ">2L", senderChannel, connection.OPEN_ADMINISTRATIVELY_PROHIBITED
            )
            + NS(message.encode())
            + NS(b"en"),
        )
        self._refusedChannels += 1
        if self._refusedChannels == 1:  # once per connection
            _log.info(
                "refused a {kind} channel: {limit} channels open already",
                kind=channelType.decode("ascii", "backslashreplace"),
                limit=limit,
            )
