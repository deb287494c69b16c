"""What a caller of the Auth API may cost before, and after, it is known.

The caller's identity comes from its verified TLS client certificate, and is
known only once the handshake is done; until then it counts as anonymous.
Everything here is counted as it arrives, so that nobody, known or not, can
make the auth service hold more than a box limit per connection:

- ``GuardedAMP`` counts each box's bytes and keys as its strings arrive and
  cuts the connection (one log line) the moment a box passes its limit: a few
  KiB for an anonymous caller, enough for the largest legitimate command for
  a cluster identity. A box that is not a command with a tag (an answer to a
  question never asked, an empty box) closes the connection the same way.
- It gives every connection a deadline for the TLS handshake, and an
  anonymous one a deadline for its whole business.
- ``AddressSlots`` caps anonymous connections per address and in total.
- ``ConnectionGuard`` holds a ``teleconch.refusals.RefusalAudit`` for refused
  anonymous calls.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.auth import protocol as api
from teleconch.pki import peer_identity
from teleconch.refusals import RefusalAudit, Writer

log = Logger()

#: A key of an AMP box is at most this long; a value at most 0xFFFF bytes.
_MAX_KEY = 255


@attrs.frozen
class BoxLimit:
    """The most one AMP box may hold: bytes (with framing) and keys."""

    bytes: int
    keys: int


@attrs.frozen
class GuardLimits:
    """The Auth API's limits per connection and per address.

    ``anonymous_box_*``: a caller without a certificate sends only ``Ping`` and
    ``RegisterUsingToken`` (public keys, a token, a few names: about 1 KiB).
    ``cluster_box_*``: a cluster identity's largest command is an UpsertRole,
    UpsertNode or EmitAuditEvent with a JSON argument of at most
    ``api.ARGUMENT_CHUNKS`` chunks, which ``api.MAX_COMMAND_BYTES`` holds.
    ``anonymous_timeout``: a ping and a join take well under a second, so an
    anonymous connection gets as long as a TLS handshake, then goes.
    """

    anonymous_box_bytes: int = 8 * 1024
    anonymous_box_keys: int = 16
    cluster_box_bytes: int = api.MAX_COMMAND_BYTES
    cluster_box_keys: int = 64
    handshake_timeout: float = 10.0
    anonymous_timeout: float = 10.0
    anonymous_per_address: int = 8
    anonymous_total: int = 256
    audit_burst: int = 10
    audit_per_second: float = 1.0

    @property
    def anonymous_box(self) -> BoxLimit:
        return BoxLimit(self.anonymous_box_bytes, self.anonymous_box_keys)

    @property
    def cluster_box(self) -> BoxLimit:
        return BoxLimit(self.cluster_box_bytes, self.cluster_box_keys)


def host_of(address: IAddress) -> str:
    """The address a caller is counted by: its IP, without the port."""
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)


class AddressSlots:
    """Places for connections not (yet) known as a cluster identity."""

    def __init__(self, per_address: int, total: int) -> None:
        self._per_address = per_address
        self._total = total
        self._held: dict[str, int] = {}
        self._count = 0

    def take(self, host: str) -> str | None:
        """Take a place for ``host``, or say why there is none."""
        if self._count >= self._total:
            return f"already {self._count} anonymous connections (the limit)"
        held = self._held.get(host, 0)
        if held >= self._per_address:
            return f"already {held} anonymous connections from {host} (the limit)"
        self._held[host] = held + 1
        self._count += 1
        return None

    def give_back(self, host: str) -> None:
        held = self._held.pop(host)
        if held > 1:
            self._held[host] = held - 1
        self._count -= 1


class ConnectionGuard:
    """What all connections of one Auth API listener share."""

    def __init__(self, clock: IReactorTime, limits: GuardLimits, write: Writer):
        self.clock = clock
        self.limits = limits
        self.slots = AddressSlots(limits.anonymous_per_address, limits.anonymous_total)
        self.refusals = RefusalAudit(
            clock,
            write,
            limits.audit_burst,
            limits.audit_per_second,
            what="refused anonymous calls to the auth API",
        )


@implementer(IHandshakeListener)
class GuardedAMP(amp.AMP):
    """An AMP server connection that knows its caller and bounds its boxes.

    ``identity`` is (role, name) from the verified client certificate, or
    None for an anonymous caller (and for everyone before the handshake).
    """

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__()
        self.guard = guard
        self.identity: tuple[str, str] | None = None
        self.host = "?"
        self._limit = guard.limits.anonymous_box
        self._box_bytes = 0
        self._box_keys = 0
        self._slot = False
        self._cut_off = False
        self._handshake_timer: IDelayedCall | None = None
        self._anonymous_timer: IDelayedCall | None = None
        self._clamp(value_next=False)

    # --- the connection's life

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        self.host = host_of(self.transport.getPeer())
        refused = self.guard.slots.take(self.host)
        if refused is not None:
            self.cut(refused)
            return
        self._slot = True
        limits, clock = self.guard.limits, self.guard.clock
        self._handshake_timer = clock.callLater(
            limits.handshake_timeout, self._handshake_expired
        )
        self._anonymous_timer = clock.callLater(
            limits.anonymous_timeout, self._anonymous_expired
        )

    def handshakeCompleted(self) -> None:
        self._cancel("_handshake_timer")
        cert: Any = None
        if ISSLTransport.providedBy(self.transport):
            cert = self.transport.getPeerCertificate()
        self.identity = peer_identity(cert)
        if self.identity is not None:
            self._cancel("_anonymous_timer")
            self._give_back()
            self._limit = self.guard.limits.cluster_box
            self._clamp(value_next=self.state == "value")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel("_handshake_timer")
        self._cancel("_anonymous_timer")
        self._give_back()
        super().connectionLost(reason)

    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport else None
        port = getattr(address, "port", None)
        return f"{self.host}:{port}" if port is not None else self.host

    def cut(self, why: str, level: LogLevel = LogLevel.warn) -> None:
        """Drop the connection now, with one log line; read nothing more."""
        if self._cut_off:
            return
        self._cut_off = True
        self.paused = True  # stops Int16StringReceiver's loop over buffered data
        role = self.identity[0] if self.identity else api.ANONYMOUS
        log.emit(
            level,
            "auth API: dropped {role} connection from {peer}: {why}",
            role=role,
            peer=self.peer(),
            why=why,
        )
        transport: Any = self.transport  # a TCP or TLS transport: it can abort
        if transport is not None:
            transport.abortConnection()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        timeout = self.guard.limits.handshake_timeout
        self.cut(f"no TLS handshake within {timeout:g} s", LogLevel.info)

    def _anonymous_expired(self) -> None:
        self._anonymous_timer = None
        timeout = self.guard.limits.anonymous_timeout
        self.cut(f"still anonymous after {timeout:g} s", LogLevel.info)

    def _cancel(self, name: str) -> None:
        timer: IDelayedCall | None = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _give_back(self) -> None:
        if self._slot:
            self._slot = False
            self.guard.slots.give_back(self.host)

    # --- boxes, counted as they arrive

    def dataReceived(self, data: bytes) -> None:
        if not self._cut_off:
            super().dataReceived(data)

    def proto_key(self, string: bytes) -> str:
        self._box_bytes += 2 + len(string)
        if string:
            self._box_keys += 1
            if self._box_keys > self._limit.keys:
                self.cut(f"a box with more than {self._limit.keys} keys")
                return "key"
        state: str = super().proto_key(string)
        if not string:
            self._box_bytes = self._box_keys = 0
        self._clamp(value_next=bool(string))
        return state

    def proto_value(self, string: bytes) -> str:
        self._box_bytes += 2 + len(string)
        state: str = super().proto_value(string)
        self._clamp(value_next=False)
        return state

    def _clamp(self, value_next: bool) -> None:
        """No string may be longer than what is left of the box's budget, so
        an oversized one is refused from its length prefix, unbuffered."""
        native = self._MAX_VALUE_LENGTH if value_next else _MAX_KEY
        left = self._limit.bytes - self._box_bytes - 2
        self.MAX_LENGTH = max(0, min(native, left))

    def lengthLimitExceeded(self, length: int) -> None:
        if self.state != "value" and length > _MAX_KEY:
            self.cut(f"a key of {length} bytes (at most {_MAX_KEY})")
        else:
            self.cut(f"a box over {self._limit.bytes} bytes")

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if self._cut_off:
            return
        if amp.ANSWER in box or amp.ERROR in box:
            self.cut("an answer, but the auth service asked nothing")
        elif amp.COMMAND not in box or amp.ASK not in box:
            self.cut("a box that is not a command with an _ask tag")
        else:
            self._commandReceived(box)
