"""Where teleconch's log goes, how much of it, and in what shape.

twistd's own observer writes every event, debug included, and rotates its
file at 1 MB with no limit on the count: a hostile client could fill a disk
with debug lines.  Ours filters below the configured severity before any
event is formatted (nothing on the data path is), rotates at a size with a
bounded number of old files, and escapes control characters, so no field of
an event (a user name with a newline) can forge a line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    eventAsText,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from teleconch.text import clip, escape

SEVERITIES = ("debug", "info", "warn", "error", "critical")
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_BACKUPS = 5
#: One event's message, before its traceback (if any).
MAX_LINE = 8192


@attrs.frozen
class LogSettings:
    """``teleconch.log`` in the config (Teleport's ``teleport.log``)."""

    severity: str = "info"
    #: ``stdout``, ``stderr`` or a file path; None follows twistd's options.
    output: str | None = None
    max_size: int = DEFAULT_MAX_SIZE
    max_backups: int = DEFAULT_MAX_BACKUPS


def format_event(event: LogEvent) -> str | None:
    """One line per event: timestamp, system, the message escaped and capped.

    A traceback, when the event carries one, follows on its own lines, each
    escaped: the lines are the code's, but an exception's text may quote input.
    """
    text = eventAsText(event, includeTraceback=False)
    if not text:
        return None
    line = clip(escape(text), MAX_LINE) + "\n"
    failure = event.get("log_failure")
    if failure is not None:
        try:
            tb = failure.getTraceback()
        except Exception:
            tb = "(traceback unavailable)\n"
        line += "".join(escape(t) + "\n" for t in tb.splitlines())
    return line


#: Info events that Twisted writes for every connection; debug for us, so a
#: short session logs a few lines, not hundreds.
CHATTER_FORMATS = frozenset(
    {
        "Starting factory {factory!r}",
        "Stopping factory {factory!r}",
        "{cls} connection established (HOST:{host} PEER:{peer})",
        "{cls} connection lost (HOST:{host} PEER:{peer})",
        # Conch's SSH transport, for every connection (the disconnect reason
        # is logged on its own line; we never offer group exchange).
        "connection lost",
        "disabling non-fixed-group key exchange algorithms "
        "because we cannot find moduli file",
    }
)


@implementer(ILogFilterPredicate)
class _Chatter:
    """Treat connection chatter as debug: dropped unless debug is asked for."""

    def __call__(self, event: LogEvent) -> PredicateResult:
        if event.get("log_format") in CHATTER_FORMATS:
            return PredicateResult.no
        return PredicateResult.maybe


def filtered(observer: ILogObserver, severity: str) -> ILogObserver:
    """``observer`` seeing only events at ``severity`` or above."""
    level = LogLevel.levelWithName(severity)
    predicates: list[ILogFilterPredicate] = []
    if level > LogLevel.debug:
        predicates.append(_Chatter())
    predicates.append(LogLevelFilterPredicate(defaultLogLevel=level))
    result: ILogObserver = FilteringLogObserver(observer, predicates)
    return result


def open_log_file(path: Path, max_size: int, max_backups: int) -> LogFile:
    """A log file that rotates at ``max_size`` and keeps ``max_backups`` old ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return LogFile(
        path.name,
        str(path.parent),
        rotateLength=max_size,
        maxRotatedFiles=max_backups,
        defaultMode=0o640,
    )


@implementer(ILogObserver)
class LogObserver:
    """Filtered, escaped, rotated: the observer of a teleconch process."""

    def __init__(
        self, stream: IO[Any] | LogFile, severity: str, owned: bool = False
    ) -> None:
        self._stream = stream
        self._owned = owned
        # LogFile is file-like (write, flush): all that FileLogObserver uses.
        writer = FileLogObserver(stream, format_event)  # type: ignore[arg-type]
        self._observer = filtered(writer, severity)

    def __call__(self, event: LogEvent) -> None:
        self._observer(event)

    def close(self) -> None:
        if self._owned:
            self._stream.close()


def make_observer(
    settings: LogSettings,
    twistd_logfile: str | None = None,
    nodaemon: bool = True,
    debug: bool = False,
) -> LogObserver:
    """The process's observer, following ``twistd``'s --logfile/--nodaemon
    unless ``teleconch.log.output`` names the destination."""
    target = settings.output or twistd_logfile or ("-" if nodaemon else "twistd.log")
    severity = "debug" if debug else settings.severity
    if target in ("-", "stdout"):
        return LogObserver(sys.stdout, severity)
    if target == "stderr":
        return LogObserver(sys.stderr, severity)
    log_file = open_log_file(Path(target), settings.max_size, settings.max_backups)
    return LogObserver(log_file, severity, owned=True)


#: Set by ``use_for_twistd`` while twistd parses its options; read once by
#: twistd when it starts logging (it takes the observer factory by name).
_twistd_factory: Callable[[], LogObserver] | None = None


def use_for_twistd(
    settings: LogSettings, twistd_logfile: str | None, nodaemon: bool, debug: bool
) -> str:
    """Arrange for ``twistd_observer`` to make our observer; return its name,
    for twistd's ``logger`` option."""
    global _twistd_factory

    def factory() -> LogObserver:
        return make_observer(settings, twistd_logfile, nodaemon, debug)

    _twistd_factory = factory
    return f"{__name__}.twistd_observer"


def twistd_observer() -> LogObserver:
    """What twistd calls (by name) to start logging."""
    if _twistd_factory is None:
        return make_observer(LogSettings())
    return _twistd_factory()
