"""The PostgreSQL store's connections: one per thread of its bounded pool,
opened with timeouts, checked before reuse, replaced after an outage.

Every function here runs in a pool thread, never on the reactor.  A call
made while the server is unreachable fails at once (connection refused) or
within ``connect_timeout``, with a StoreUnavailable that names the server
(never the password) and says it is retried; the next call reconnects, so
the auth service needs no restart when PostgreSQL comes back.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from teleconch import conninfo
from teleconch.auth.store import StoreError, StoreUnavailable

if TYPE_CHECKING:
    import psycopg

_T = TypeVar("_T")

#: After a failed connect, calls fail at once for this long (no storm of
#: connection attempts, no call waiting out connect_timeout again).
RETRY_AFTER = 0.5


def _reason(e: BaseException) -> str:
    """libpq's reason, e.g. 'Connection refused' (it never holds a password)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first.rsplit("failed: ", 1)[-1].strip()


class Connections:
    """Per-thread psycopg connections to one server."""

    def __init__(
        self, conn_string: str, connect_timeout: float, statement_timeout: float
    ) -> None:
        self.info = conninfo.parse(conn_string)
        self._conn_string = conn_string
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        given = {k for k, _ in parse_qsl(urlsplit(conn_string).query)}
        defaults: dict[str, Any] = {
            # libpq counts whole seconds, at least 2.
            "connect_timeout": max(2, round(connect_timeout)),
            "application_name": "teleconch-auth",
            # A server that vanishes mid-call (no RST) is noticed.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": round((statement_timeout + connect_timeout) * 1000),
        }
        self._kwargs = {k: v for k, v in defaults.items() if k not in given}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: set[psycopg.Connection[Any]] = set()
        self._down_until = 0.0
        self._down: StoreUnavailable | None = None

    def unreachable(self, e: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"PostgreSQL at {self.info.where} is unreachable ({_reason(e)}); "
            "teleconch retries it on the next call: check that the server is "
            "up and reachable from the auth service"
        )

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg
        from psycopg.rows import dict_row

        now = time.monotonic()
        if self._down is not None and now < self._down_until:
            raise self._down
        try:
            conn = psycopg.connect(
                self._conn_string,
                autocommit=True,
                row_factory=dict_row,
                **self._kwargs,
            )
        except psycopg.OperationalError as e:
            self._down = self.unreachable(e)
            self._down_until = now + RETRY_AFTER
            raise self._down from None
        except psycopg.Error as e:  # a bad option in the conn_string
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.info.where}: {_reason(e)}"
            ) from None
        self._down = None
        ms = round(self.statement_timeout * 1000)
        # Our own integers, formatted in: SET takes no parameters.
        conn.execute(f"SET statement_timeout = {ms:d}")
        conn.execute(f"SET idle_in_transaction_session_timeout = {ms:d}")
        with self._lock:
            self._all.add(conn)
        return conn

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        self._local.conn = None
        with self._lock:
            self._all.discard(conn)
        with contextlib.suppress(Exception):  # it is broken already
            conn.close()

    def connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, replaced if the server closed it (a
        restart does: the socket of an idle connection turns readable)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and (conn.closed or conn.broken or _readable(conn)):
            self._drop(conn)
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def run(self, fn: Callable[[psycopg.Connection[Any]], _T], tx: bool) -> _T:
        """``fn(connection)``, in one transaction if ``tx``; psycopg's errors
        become StoreErrors (StoreUnavailable when the server went away)."""
        import psycopg

        conn = self.connection()
        try:
            if not tx:
                return fn(conn)
            with conn.transaction():
                return fn(conn)
        except psycopg.errors.QueryCanceled:
            raise StoreUnavailable(
                f"PostgreSQL at {self.info.where} did not answer within "
                f"{self.statement_timeout:g}s (statement_timeout); the call "
                "failed and may be retried"
            ) from None
        except psycopg.Error as e:
            if conn.closed or conn.broken:
                self._drop(conn)
                raise self.unreachable(e) from None
            raise StoreError(f"postgresql: {_reason(e)}") from None

    def close_all(self) -> None:
        with self._lock:
            conns, self._all = list(self._all), set()
        for conn in conns:
            with contextlib.suppress(Exception):  # closing what is broken
                conn.close()


def _readable(conn: psycopg.Connection[Any]) -> bool:
    """An idle connection has nothing to read unless the server closed it."""
    try:
        ready, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)
