"""Storage backends behind the Store interface, chosen by ``teleconch.storage``.

Each backend is a module implementing the whole Store protocol and passing
the one store suite (tests/test_store.py); adding one (PostgreSQL) means a
module here and an entry in open_store, and nothing in the auth server.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.interfaces import IReactorFromThreads

from teleconch.auth.store import Store, StoreError
from teleconch.config import StorageSettings


def sqlite_path(settings: StorageSettings, data_dir: Path) -> Path:
    """The SQLite file: as configured, else ``<data_dir>/auth/teleconch.db``."""
    return settings.path or data_dir / "auth" / "teleconch.db"


async def open_store(
    settings: StorageSettings, data_dir: Path, reactor: IReactorFromThreads
) -> Store:
    """Make the configured backend's store and open it."""
    store: Store
    if settings.type == "sqlite":
        from teleconch.auth.backends.sqlite import SQLiteStore

        store = SQLiteStore(str(sqlite_path(settings, data_dir)), reactor)
    elif settings.type == "postgresql":
        from teleconch.auth.backends.postgresql import PostgreSQLStore

        assert settings.conn_string is not None  # config.py requires one
        store = PostgreSQLStore(settings.conn_string, reactor)
    else:  # config.py refuses every other type; this is the last line of defence
        raise StoreError(f"storage type {settings.type!r} is not available")
    await store.open()
    return store
