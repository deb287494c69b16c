"""Every log event of this process while a test runs, and which of them are tracebacks."""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python import context
from twisted.python import log as legacy_log
from zope.interface import implementer

from tests.hostile.cases import Result


@attrs.frozen
class Record:
    when: float
    level: str
    text: str  # the formatted message, and the failure's traceback if any
    where: str  # log system, and the peer and host addresses of its source
    bad: bool

    def summary(self) -> str:
        lines = [line for line in self.text.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        return f"[{self.level}] {lines[0][:160] if lines else ''} ... {last[:200]}"


def _addresses(source: Any) -> list[str]:
    """Addresses of a log source and of the transports under it (SSH service, TLS, TCP)."""
    found, obj = [], source
    for _ in range(4):
        for name in ("getPeer", "getHost"):
            try:
                found.append(str(getattr(obj, name)()))
            except Exception:  # noqa: S112  # a source without addresses
                continue
        obj = getattr(obj, "transport", None)
    return found


def _reading() -> str:
    """The connection the reactor is reading now (its log prefix names the peer).

    An event logged while a connection's input is handled names, through
    Twisted's legacy log context, that connection: "Proto,7,127.1.0.9".
    """
    ctx = context.get(legacy_log.ILogContext) or {}
    return str(ctx.get("system", ""))


def is_bad(event: dict[str, Any], text: str) -> bool:
    """A traceback, an "Unhandled Error", or a legacy error: what must not appear."""
    level = event.get("log_level")
    if "log_failure" in event or event.get("isError"):
        return True
    if level in (LogLevel.error, LogLevel.critical) and "Unhandled Error" in text:
        return True
    return "Traceback" in text


@implementer(ILogObserver)
class LogWatch:
    """An observer on ``globalLogPublisher`` for the duration of a ``with`` block."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            systems = [str(event.get(k, "")) for k in ("log_system", "system")]
            where = " ".join(
                [*systems, _reading(), *_addresses(event.get("log_source"))]
            )
            level = getattr(event.get("log_level"), "name", "?")
            when = reactor.seconds()
            self.records.append(Record(when, level, text, where, is_bad(event, text)))
        except Exception as e:  # an observer must never raise
            self.records.append(
                Record(0.0, "?", f"unformattable event: {e!r}", "", True)
            )

    def __enter__(self) -> LogWatch:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        globalLogPublisher.removeObserver(self)

    def bad(self) -> list[Record]:
        return [r for r in self.records if r.bad]


def _mentions(record: Record, address: str) -> bool:
    pattern = re.escape(address) + r"(?![\d])"
    return re.search(pattern, record.where + " " + record.text) is not None


def attribute(
    records: Iterable[Record], results: Iterable[Result]
) -> tuple[dict[str, list[Record]], list[tuple[Record, list[str]]]]:
    """Bad records per case id (by the case's source address), and the rest.

    A record that names no case's address comes back with the ids of the
    cases running when it was logged, those that ended nearest to it first
    (a server that logs and then drops a connection is usually the one).
    """
    results = list(results)
    by_case: dict[str, list[Record]] = {}
    unplaced: list[tuple[Record, list[str]]] = []
    for record in records:
        owners = [r for r in results if _mentions(record, r.source)]
        if owners:
            for r in owners:
                by_case.setdefault(r.case.id, []).append(record)
            continue
        running = [r for r in results if r.started <= record.when <= r.finished + 0.5]
        running.sort(key=lambda r: abs(r.finished - record.when))
        unplaced.append((record, [r.case.id for r in running]))
    return by_case, unplaced
