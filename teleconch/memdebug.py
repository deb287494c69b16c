"""A memory debug hook for the benchmarks, off unless the environment asks for it.

``TELECONCH_MEMDEBUG=/some/dir`` (an existing directory owned by this user and
writable by nobody else) makes SIGUSR1 run a full garbage collection and then
write, under that directory, ``<n>.json`` (RSS, the collector's counts, the
most numerous object types; the RSS again after glibc's ``malloc_trim``) and,
when ``TELECONCH_MEMDEBUG_TRACE=<frames>`` started
``tracemalloc`` at launch, ``<n>.tracemalloc`` (a ``tracemalloc.Snapshot``),
then an empty ``<n>.done`` once both are complete. ``bench/bench_sessions.py``
uses it to see what the proxy keeps after sessions end.

Nothing of it runs by default: without the variable no signal handler is
installed and tracemalloc stays off. The files are created exclusively (no
existing file is followed or overwritten) and hold no secrets: counts, type
names and allocation sites, not object contents.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import stat
import tracemalloc
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

log = Logger()

ENV_DIR = "TELECONCH_MEMDEBUG"
ENV_TRACE = "TELECONCH_MEMDEBUG_TRACE"
TOP_TYPES = 60


class MemDebugError(ValueError):
    """The environment asked for the hook in a way it cannot be given."""


def rss_kb() -> int:
    """This process's resident set, from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def malloc_trim() -> bool:
    """Give the C allocator's free memory back to the system (glibc only)."""
    # The symbols already loaded in this process (libc's among them): no
    # ctypes.util.find_library, which runs ldconfig in a subprocess.
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False


def type_counts(limit: int = TOP_TYPES) -> list[tuple[str, int]]:
    """The most numerous types among the objects the collector tracks."""
    counts = Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
    )
    return counts.most_common(limit)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_directory(path: Path) -> Path:
    """The dump directory, if it is a directory only this user can write."""
    try:
        st = path.lstat()
    except OSError as e:
        raise MemDebugError(f"{ENV_DIR}={path}: {e.strerror}; create it first") from e
    if not stat.S_ISDIR(st.st_mode):
        raise MemDebugError(f"{ENV_DIR}={path} is not a directory")
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise MemDebugError(
            f"{ENV_DIR}={path} must be owned by this user and writable by nobody "
            "else (chmod 700 it)"
        )
    return path


class MemoryDebug(Service):
    """SIGUSR1: collect, then dump counts (and a tracemalloc snapshot) to a directory."""

    name = "memdebug"

    def __init__(self, reactor: Any, directory: Path, frames: int = 0) -> None:
        self.reactor = reactor
        self.directory = check_directory(directory)
        self.frames = frames
        self.dumps = 0
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        if self.frames and not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
        log.info(
            "memory debug hook on: SIGUSR1 dumps to {directory} (tracemalloc {trace})",
            directory=str(self.directory),
            trace=f"{self.frames} frames" if self.frames else "off",
        )

    def stopService(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None
        return super().stopService()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.dump)

    def dump(self) -> Any:
        """Collect, sample, and write the files in the thread pool."""
        gc.collect()
        self.dumps += 1
        n = self.dumps
        summary = {
            "rss_kb": rss_kb(),
            "gc_objects": len(gc.get_objects()),
            "gc_garbage": len(gc.garbage),
            "types": type_counts(),
            "tracemalloc": tracemalloc.get_traced_memory()
            if tracemalloc.is_tracing()
            else None,
        }
        snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        # What of the RSS is memory the C allocator holds free: after the trim,
        # only what is in use (or fragmented in pymalloc arenas) stays.
        summary["trimmed"] = malloc_trim()
        summary["rss_trimmed_kb"] = rss_kb()

        def write() -> None:
            base = self.directory / str(n)
            _write_new(base.with_suffix(".json"), json.dumps(summary).encode())
            if snapshot is not None:
                snapshot.dump(str(base.with_suffix(".tracemalloc")))
            _write_new(base.with_suffix(".done"), b"")

        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), write)
        d.addCallback(lambda _: log.info("memory dump {n} written", n=n)).addErrback(
            lambda f: log.failure("memory dump {n} failed", f, n=n)
        )
        return d


def from_environ(reactor: Any, environ: Mapping[str, str]) -> MemoryDebug | None:
    """The hook if ``TELECONCH_MEMDEBUG`` asks for it, else None."""
    directory = environ.get(ENV_DIR)
    if not directory:
        return None
    frames_text = environ.get(ENV_TRACE, "0") or "0"
    if not frames_text.isdigit():
        raise MemDebugError(f"{ENV_TRACE}={frames_text!r}: give a number of frames")
    return MemoryDebug(reactor, Path(directory), int(frames_text))
