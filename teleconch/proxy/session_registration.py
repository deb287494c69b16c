"""Keeping the auth service's record of one live session current.

A session hub registers its session (`upsert_active_session`) when it
starts, shortly after each change (coalesced: a window being dragged is a
burst of resizes, one registration), and every SESSION_HEARTBEAT seconds,
so that any proxy lists it and the auth service drops it if this proxy
dies; at the end it sends `end_active_session`.  The calls go one after
another, so an end never overtakes a registration still on its way (which
would register the session again after its end).  A failed call is logged;
the session goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleconch.auth.protocol import SESSION_HEARTBEAT
from teleconch.auth.types import ActiveSession

log = Logger()

#: A change (resize, party) is registered this long after it, coalesced.
CHANGE_DELAY = 1.0


class Registry(Protocol):
    """Where live sessions are registered: the auth service, through the AuthAgent."""

    async def upsert_active_session(self, session: ActiveSession) -> None: ...

    async def end_active_session(
        self, id: str, exit_code: int | None, reason: str
    ) -> None: ...


class Registration:
    """One session's registration: started, changed, ended, in order."""

    def __init__(
        self,
        clock: IReactorTime,
        registry: Registry,
        snapshot: Callable[[], ActiveSession],
    ) -> None:
        self._clock = clock
        self._registry = registry
        self._snapshot = snapshot
        self._live = False
        self._calls: Deferred[None] = succeed(None)
        self._heartbeat: LoopingCall | None = None
        self._change: IDelayedCall | None = None

    def start(self) -> None:
        """Register now, then every heartbeat."""
        self._live = True
        self._register()
        self._heartbeat = LoopingCall(self._register)
        self._heartbeat.clock = self._clock
        self._heartbeat.start(SESSION_HEARTBEAT, now=False)

    def changed(self) -> None:
        if self._live and self._change is None:
            self._change = self._clock.callLater(CHANGE_DELAY, self._change_due)

    def end(self, exit_code: int | None, reason: str) -> None:
        """Stop registering; tell the auth service the end, if it knew the start."""
        was_live, self._live = self._live, False
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._change is not None and self._change.active():
            self._change.cancel()
        self._change = None
        if was_live:
            session_id = self._snapshot().id
            self._enqueue(
                lambda: self._registry.end_active_session(session_id, exit_code, reason)
            )

    async def settled(self) -> None:
        """Once every call so far has been answered (or has failed)."""
        done: Deferred[None] = Deferred()
        self._calls.addBoth(lambda _: done.callback(None))
        await done

    def _change_due(self) -> None:
        self._change = None
        self._register()

    def _register(self) -> None:
        if self._live:
            record = self._snapshot()
            self._enqueue(lambda: self._registry.upsert_active_session(record))

    def _enqueue(self, call: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await call()

        def failed(f: Failure) -> None:
            log.warn(
                "the auth service did not take a live session's registration: {error}",
                error=f.getErrorMessage(),
            )

        def next_call(_: object) -> Deferred[None]:
            return Deferred.fromCoroutine(run()).addErrback(failed)

        self._calls.addCallback(next_call)
