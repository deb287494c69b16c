"""The benchmarks' memory hook (teleconch.memdebug): off by default, and safe when on.

bench/bench_sessions.py starts the proxy with TELECONCH_MEMDEBUG to learn,
after sessions end, what the proxy keeps; a production proxy must not grow a
signal handler, nor write files anywhere another user could have prepared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teleconch import memdebug


class InlinePool:
    """A thread pool that runs the work at once, on the caller's thread."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any
    ) -> None:
        try:
            on_result(True, f(*a))
        except Exception as e:  # the Failure path of deferToThreadPool
            on_result(False, e)


class InlineReactor:
    def callFromThread(self, f: Callable[..., Any], *a: Any) -> None:
        f(*a)

    def getThreadPool(self) -> InlinePool:
        return InlinePool()


def test_without_the_variable_there_is_no_hook() -> None:
    """No signal handler and no tracemalloc in a proxy nobody asked to debug."""
    assert memdebug.from_environ(InlineReactor(), {}) is None


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    """Another user could plant a symlink there: refuse with what to do."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(memdebug.MemDebugError, match="chmod 700"):
        memdebug.from_environ(InlineReactor(), {memdebug.ENV_DIR: str(shared)})


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """The message says to create it."""
    with pytest.raises(memdebug.MemDebugError, match="create it first"):
        memdebug.from_environ(InlineReactor(), {memdebug.ENV_DIR: str(tmp_path / "x")})


def test_a_dump_writes_the_summary_then_the_done_marker(tmp_path: Path) -> None:
    """The benchmark waits for ``<n>.done``, then reads RSS and counts from ``<n>.json``."""
    d = tmp_path / "dumps"
    d.mkdir(mode=0o700)
    hook = memdebug.from_environ(InlineReactor(), {memdebug.ENV_DIR: str(d)})
    assert hook is not None
    hook.dump()
    hook.dump()
    assert sorted(p.name for p in d.iterdir()) == [
        "1.done",
        "1.json",
        "2.done",
        "2.json",
    ]
    summary = json.loads((d / "2.json").read_text())
    assert summary["gc_objects"] > 0
    assert summary["rss_kb"] > 0
    assert summary["tracemalloc"] is None  # not asked for
    assert any(name == "builtins.dict" for name, _ in summary["types"])
