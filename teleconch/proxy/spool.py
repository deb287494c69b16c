"""The proxy's recording spool: one session's recording per set of files.

Under ``<data_dir>/recordings/`` each session ``SID`` has

- ``SID.json``: what the recording is of (written first),
- ``SID.rec``: its frames (`teleconch.recording_format`), appended as the
  session goes,
- ``SID.done``: written after the last frame; it holds ``{"duration_ms"}``.

The uploader (`teleconch.proxy.uploader`) sends ``SID.rec`` to the auth
service and removes the three once the recording is complete there.  A
recording with no ``SID.done`` that no recorder of this process is writing
(`Spool.writing`) was left by a proxy that stopped: the uploader finishes
it with its whole frames.

Every method here does file I/O: call them in a thread (`InThread`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

#: Runs a blocking function off the reactor: ``in_thread(f, *args)``.
InThread = Callable[..., Deferred[Any]]

SUFFIXES = (".json", ".rec", ".done")


class Spool:
    """The spool directory and which of its recordings are being written now."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Sessions whose recorder is writing now (the reactor's view).
        self.writing: set[str] = set()

    def _file(self, sid: str, suffix: str) -> Path:
        return self.path / f"{sid}{suffix}"

    def begin(self, sid: str, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file(sid, ".json").write_text(json.dumps(meta))

    def append(self, sid: str, data: bytes) -> None:
        with open(self._file(sid, ".rec"), "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def finish(self, sid: str, duration_ms: int) -> None:
        self._file(sid, ".done").write_text(json.dumps({"duration_ms": duration_ms}))

    def sessions(self) -> list[str]:
        """The recordings in the spool, oldest first."""
        if not self.path.is_dir():
            return []
        metas = sorted(self.path.glob("*.json"), key=lambda p: p.stat().st_mtime)
        return [p.name[: -len(".json")] for p in metas]

    def meta(self, sid: str) -> dict[str, Any]:
        value = json.loads(self._file(sid, ".json").read_text())
        return value if isinstance(value, dict) else {}

    def done(self, sid: str) -> int | None:
        """The duration written at the end, or None while unfinished."""
        try:
            return int(json.loads(self._file(sid, ".done").read_text())["duration_ms"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return 0

    def read(self, sid: str, offset: int, length: int) -> bytes:
        try:
            with open(self._file(sid, ".rec"), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""

    def remove(self, sid: str) -> None:
        for suffix in (".rec", ".done", ".json"):
            with contextlib.suppress(FileNotFoundError):
                self._file(sid, suffix).unlink()
