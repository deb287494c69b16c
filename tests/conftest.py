"""Unit tests open no socket and start no program; interop tests may.

Every test not marked ``interop`` runs with ``socket.connect``, ``bind`` and
``listen``, ``subprocess.Popen`` (but for this Python, which a test may run
to check an import) and ``reactor.spawnProcess`` refusing, so a unit test
that reaches for the network or for OpenSSH fails, saying so: the call
raises (an OSError, so callers close what they opened) and, in case the code
under test swallowed that, the test fails at teardown.  The way out is an
in-memory transport (``iosim``, ``StringTransport``, ``StubTreq``,
``MemoryReactor``) or the interop marker.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest_plugins = ["tests.browser"]


class RealWorldInUnitTest(OSError):
    """A unit test opened a socket or started a program."""


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_memory(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    if request.node.get_closest_marker("interop") is not None:
        yield
        _no_reconnecting_client_left(request.node.nodeid)
        return
    nodeid = request.node.nodeid
    refused: list[str] = []

    def _refuse(what: str, nodeid: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            # The address dialled or bound (after the socket itself) says whose
            # client it is when a leftover from an earlier test makes the call.
            where = f" {args[1:]!r}" if len(args) > 1 else ""
            message = (
                f"{nodeid} is a unit test but called {what}{where}: use an in-memory "
                "transport (iosim, StringTransport, StubTreq, MemoryReactor), or "
                "mark it @pytest.mark.interop"
            )
            refused.append(message)
            raise RealWorldInUnitTest(errno.EPERM, message)

        return refuse

    for name in ("connect", "connect_ex", "bind", "listen"):
        monkeypatch.setattr(socket.socket, name, _refuse(f"socket.{name}", nodeid))

    popen_init = subprocess.Popen.__init__

    def popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        argv = [args] if isinstance(args, str | bytes) else list(args)
        if str(argv[0]) != sys.executable:
            _refuse(f"subprocess {argv[0]!r}", nodeid)()
        popen_init(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    from twisted.internet import reactor

    monkeypatch.setattr(reactor, "spawnProcess", _refuse("spawnProcess", nodeid))
    yield
    if refused:
        pytest.fail(refused[0], pytrace=False)


def _no_reconnecting_client_left(nodeid: str) -> None:
    """Fail an interop test that leaves a ``ClientService`` retrying.

    Such a client dials, with backoff, during whatever test runs next: a
    unit test then fails at the guard above for a connect it never made.
    """
    from twisted.internet import reactor

    left = [
        call
        for call in reactor.getDelayedCalls()
        if call.active()
        and getattr(getattr(call, "func", None), "__name__", "") == "_reconnect"
    ]
    for call in left:
        call.cancel()
    if left:
        pytest.fail(
            f"{nodeid} left {len(left)} reconnecting client(s) running: "
            "stop every ClientService (AuthAgent, peering) the test started",
            pytrace=False,
        )
