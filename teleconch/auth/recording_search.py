"""Text search in recordings: does a session's output contain TEXT?

The recording's frames are read from the store a range at a time and
decompressed in a thread (zlib and JSON on big inputs do not belong on the
reactor); a recording's scan stops at its first hit.  Output is matched as
the terminal got it: decoded as UTF-8 across print events and frames and
case-folded, with the last ``len(text) - 1`` characters kept from one piece
to the next, so a match split between two print records or two frames is
found.  A search has a budget of stored bytes (`SCAN_BUDGET`): past it, it
stops and says so, rather than reading every recording the cluster keeps.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from teleconch import recording_format as fmt
from teleconch.auth.store import Store
from teleconch.auth.types import StreamInfo

log = Logger()

#: Runs a blocking function off the reactor: ``in_thread(f, *args)``.
InThread = Callable[..., Deferred[bool]]


def on_pool(threads: Any) -> InThread:
    """Run on the thread pool of ``threads`` (a reactor's IReactorThreads)."""

    def run(f: Callable[..., bool], *args: Any) -> Deferred[bool]:
        return deferToThreadPool(threads, threads.getThreadPool(), f, *args)

    return run


#: Stored (compressed) bytes read per store call.
SCAN_READ = 256 * 1024
#: Stored bytes one search reads at most, over all the recordings it looks at.
SCAN_BUDGET = 64 * 1024 * 1024
#: The longest text a search looks for.
MAX_TEXT = 256


class OutputMatcher:
    """Whether output fed in pieces contains ``text``, ignoring case.

    Not thread-safe; one recording's frames are fed in order, one call at a
    time (each call in a thread).
    """

    def __init__(self, text: str) -> None:
        self._needle = text.casefold()
        self._keep = max(len(self._needle) - 1, 0)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._tail = ""

    def feed_frames(self, frames: Sequence[bytes]) -> bool:
        """Decode whole frames and look in their output; True at a hit."""
        for frame in frames:
            for event in fmt.decode_frame(frame):
                if event.kind == "print" and self._feed(event.data):
                    return True
        return False

    def _feed(self, data: bytes) -> bool:
        seen = self._tail + self._decoder.decode(data).casefold()
        if self._needle in seen:
            return True
        self._tail = seen[max(len(seen) - self._keep, 0) :] if self._keep else ""
        return False


@attrs.define
class Budget:
    """What is left of a search's bound of work, in stored bytes."""

    left: int = SCAN_BUDGET

    @property
    def spent(self) -> bool:
        return self.left <= 0


class TextSearch:
    """Scans recordings' frames for a text, off the reactor, within a budget."""

    def __init__(
        self, store: Store, in_thread: InThread, read_size: int = SCAN_READ
    ) -> None:
        self._store = store
        self._in_thread = in_thread
        self._read_size = read_size

    async def contains(self, info: StreamInfo, text: str, budget: Budget) -> bool:
        """Whether the recording's output contains ``text`` (False too when
        the budget ran out first: the caller checks ``budget.spent``)."""
        matcher = OutputMatcher(text)
        pending, at = b"", 0
        while at < info.size and not budget.spent:
            chunk = await self._store.read_range(
                info.stream_id, at, min(self._read_size, budget.left)
            )
            if not chunk:
                break
            at += len(chunk)
            budget.left -= len(chunk)
            pending += chunk
            try:
                frames, used = fmt.split_frames(pending)
                pending = pending[used:]
                if frames and await self._in_thread(matcher.feed_frames, frames):
                    return True
            except fmt.BadRecording as e:
                log.warn(
                    "recording {id} cannot be searched past byte {at}: {error}",
                    id=info.stream_id,
                    at=at,
                    error=str(e),
                )
                return False
        return False
