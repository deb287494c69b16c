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
- ``RefusalAudit`` writes refused anonymous calls to the audit log at a
  bounded rate per address, counting the ones it did not write one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
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


Writer = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


@attrs.define
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0
    last: dict[str, Any] | None = None
    flush: IDelayedCall | None = None


class RefusalAudit:
    """Audit rows for refused anonymous calls: per address, ``burst`` rows,
    then ``per_second``.

    A refusal that finds no token is not written; the next row from that
    address (the next admitted refusal, or a flush once a token is back)
    carries ``suppressed=N``: every refusal is one row or counted in one.
    """

    def __init__(
        self,
        clock: IReactorTime,
        write: Writer,
        burst: int,
        per_second: float,
        max_tracked: int = 4096,
    ) -> None:
        self._clock = clock
        self._write_row = write
        self._burst = float(burst)
        self._rate = per_second
        self._max_tracked = max_tracked
        self._buckets: dict[str, _Bucket] = {}

    def refused(self, host: str, fields: dict[str, Any]) -> Deferred[None]:
        """Note one refusal; fires once its row, if any, is written."""
        now = self._clock.seconds()
        bucket = self._buckets.get(host)
        if bucket is None:
            self._sweep(now)
            bucket = self._buckets[host] = _Bucket(self._burst, now)
        self._refill(bucket, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            row = dict(fields)
            if bucket.suppressed:
                row["suppressed"] = bucket.suppressed
            bucket.suppressed, bucket.last = 0, None
            return self._write(row)
        bucket.suppressed += 1
        bucket.last = fields
        if bucket.flush is None:
            bucket.flush = self._clock.callLater(
                (1 - bucket.tokens) / self._rate, self._flush, host
            )
        return succeed(None)

    def stop(self) -> None:
        """Cancel pending flushes, saying in one line what was not written."""
        pending = [b for b in self._buckets.values() if b.suppressed]
        for bucket in self._buckets.values():
            if bucket.flush is not None and bucket.flush.active():
                bucket.flush.cancel()
        if pending:
            log.warn(
                "auth API: {count} refused anonymous calls from {addresses} "
                "addresses were not audited before shutdown",
                count=sum(b.suppressed for b in pending),
                addresses=len(pending),
            )
        self._buckets.clear()

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.stamp = now

    def _flush(self, host: str) -> None:
        bucket = self._buckets[host]
        bucket.flush = None
        if not bucket.suppressed or bucket.last is None:
            return
        self._refill(bucket, self._clock.seconds())
        if bucket.tokens < 1:
            bucket.flush = self._clock.callLater(
                (1 - bucket.tokens) / self._rate, self._flush, host
            )
            return
        bucket.tokens -= 1
        row = dict(bucket.last, suppressed=bucket.suppressed - 1)
        bucket.suppressed, bucket.last = 0, None
        self._write(row)

    def _sweep(self, now: float) -> None:
        """Forget addresses whose bucket is full again and owes no row."""
        if len(self._buckets) < self._max_tracked:
            return
        for host, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if not bucket.suppressed and bucket.tokens >= self._burst:
                del self._buckets[host]

    def _write(self, row: dict[str, Any]) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            log.warn(
                "auth API: could not audit a refusal {row}: {error}",
                row=row,
                error=failure.getErrorMessage(),
            )

        return Deferred.fromCoroutine(self._write_row(row)).addErrback(failed)


class ConnectionGuard:
    """What all connections of one Auth API listener share."""

    def __init__(self, clock: IReactorTime, limits: GuardLimits, write: Writer):
        self.clock = clock
        self.limits = limits
        self.slots = AddressSlots(limits.anonymous_per_address, limits.anonymous_total)
        self.refusals = RefusalAudit(
            clock, write, limits.audit_burst, limits.audit_per_second
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
