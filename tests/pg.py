"""A throw-away PostgreSQL for the tests: one server per test session
(Debian's ``initdb``/``pg_ctl`` on a free port of 127.0.0.1, its data in a
temporary directory), a fresh database per test.

As root (CI) the server runs as the ``postgres`` user: initdb refuses root.
Without PostgreSQL installed the tests that need it are skipped with a
message, except under CI=true, where they fail: scripts/test installs it.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

_names = itertools.count(1)


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class PostgreSQLServer:
    """One running server; ``database()`` makes a fresh database on it."""

    bindir: Path
    datadir: Path
    port: int
    as_user: list[str]
    log: Path
    #: synchronous_commit off: faster, but a crash (stop -m immediate) may
    #: lose the last commits; a test that kills the server wants it on.
    fast_commits: bool = True

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # our own argv
            [*self.as_user, *argv], capture_output=True, text=True, check=check
        )

    def conn_string(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def database(self) -> str:
        """A new empty database; its conn_string."""
        name = f"t{os.getpid()}_{next(_names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.conn_string(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = self._run(
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.conn_string(database),
            "-c",
            sql,
        )
        return out.stdout

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -k '' -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off"
            f" -c synchronous_commit={'off' if self.fast_commits else 'on'}",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-m",
            mode,
            "-w",
            "stop",
            check=False,
        )

    @classmethod
    def create(cls, base: Path, fast_commits: bool = True) -> PostgreSQLServer:
        bindir = _bindir()
        if bindir is None:
            message = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
            if os.environ.get("CI") == "true":
                pytest.fail(message + "; scripts/test installs it in CI")
            pytest.skip(message)
        as_user: list[str] = []
        if os.geteuid() == 0:
            as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(base, "postgres")
        datadir = base / "data"
        server = cls(
            bindir, datadir, _free_port(), as_user, base / "postgres.log", fast_commits
        )
        server._run(
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        server.start()
        return server


@contextlib.contextmanager
def running_server(fast_commits: bool = True) -> Iterator[PostgreSQLServer]:
    """A server of its own (for a test that stops and starts it), stopped
    and removed at the end."""
    # Not under pytest's tmp_path: its directories are 0700, and the
    # postgres user (as root) must reach the data directory.
    base = Path(tempfile.mkdtemp(prefix="teleconch-pg-"))
    os.chmod(base, 0o755)  # noqa: S103  # the postgres user must reach it
    try:
        server = PostgreSQLServer.create(base, fast_commits)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgreSQLServer]:
    """One server for the session; each test takes a fresh database."""
    with running_server() as server:
        yield server


def wait_until_ready(server: PostgreSQLServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [
                str(server.bindir / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(server.port),
            ],
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"PostgreSQL on port {server.port} is not ready")
