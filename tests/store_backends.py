"""The backends the store suite runs on, as fixtures: ``backend`` makes a
store (again, on the same storage, after a close), ``store`` is one open.

A new backend is one more entry in BACKENDS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads

from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.backends.sqlite import SQLiteStore
from teleconch.auth.store import Store
from tests.pg import PostgreSQLServer

NOW = 1_700_000_000.0

#: A backend makes a store on its storage; calling it again after a close
#: makes one on the same storage (a restart).
MakeStore = Callable[[], Store]


def _sqlite(tmp_path: Path) -> MakeStore:
    path = str(tmp_path / "teleconch.db")
    return lambda: SQLiteStore(path, cast(IReactorFromThreads, reactor))


def _memory(tmp_path: Path) -> MakeStore:
    store = MemoryStore()  # its records outlive a close
    return lambda: store


def _postgresql(request: pytest.FixtureRequest) -> MakeStore:
    from teleconch.auth.backends.postgresql import PostgreSQLStore

    server: PostgreSQLServer = request.getfixturevalue("pg_server")
    conn_string = server.database()
    return lambda: PostgreSQLStore(conn_string, cast(IReactorFromThreads, reactor))


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], MakeStore]] = {
    "sqlite": lambda request, tmp_path: _sqlite(tmp_path),
    "memory": lambda request, tmp_path: _memory(tmp_path),
    "postgresql": lambda request, tmp_path: _postgresql(request),
}

#: A backend that needs a server of its own runs as an interop test.
_SERVERS = {"postgresql"}


@pytest.fixture(
    params=[
        pytest.param(n, marks=[pytest.mark.interop] if n in _SERVERS else [])
        for n in sorted(BACKENDS)
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    return BACKENDS[request.param](request, tmp_path)


@pytest_twisted.async_yield_fixture
async def store(backend: MakeStore) -> AsyncIterator[Store]:
    opened = backend()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
