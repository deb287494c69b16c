"""Audit refusals at a bounded rate per address, counting the rows not written.

A flood of refused requests must not become a flood of audit writes, yet
every refusal is accounted for: one row each up to a burst, then a steady
rate, and the next row written carries how many were suppressed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

Writer = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


@attrs.define
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0
    last: dict[str, Any] | None = None
    flush: IDelayedCall | None = None


class RefusalAudit:
    """Audit rows for refusals: per address, ``burst`` rows, then ``per_second``.

    Shared by the Auth API (refused anonymous calls), the web API and the web
    terminal (refused requests and sockets); ``what`` names them in its own
    log lines.

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
        what: str = "refusals",  # plural, e.g. "refused web API requests"
    ) -> None:
        self._what = what
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
                "{count} {what} from {addresses} addresses were not audited "
                "before shutdown",
                what=self._what,
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
                "could not audit one of the {what}: {row}: {error}",
                what=self._what,
                row=row,
                error=failure.getErrorMessage(),
            )

        return Deferred.fromCoroutine(self._write_row(row)).addErrback(failed)
