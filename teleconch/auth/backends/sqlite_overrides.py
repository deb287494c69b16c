"""The SQLiteStore's overrides of the config's cluster settings.

A mixin, as ``sqlite_sessions``: SQLiteStore gives it ``_run``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from teleconch.auth.backends.sqlite_schema import OVERRIDES
from teleconch.auth.types import SettingOverride

_T = TypeVar("_T")


class SQLiteOverrides:
    """Implemented by SQLiteStore: how to reach the connection."""

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        raise NotImplementedError

    async def set_setting_overrides(self, overrides: Sequence[SettingOverride]) -> None:
        rows = [OVERRIDES.params(o) for o in overrides]

        def op(c: sqlite3.Connection) -> None:
            with c:
                c.executemany(OVERRIDES.replace, rows)

        await self._run(op)

    async def list_setting_overrides(self) -> list[SettingOverride]:
        sql = "SELECT * FROM setting_overrides ORDER BY key"
        rows = await self._run(lambda c: c.execute(sql).fetchall())
        return [OVERRIDES.load(r) for r in rows]
