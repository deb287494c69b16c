"""The cluster's settings as this proxy follows them: asked of the auth service,
at most every `SETTINGS_MAX_AGE` seconds, so a ``teleconch-ctl cluster set``
reaches every proxy within that, with no restart (new connections and
sessions use the new values; open ones keep theirs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch.auth import protocol as api

log = Logger()

SETTINGS_MAX_AGE = 10.0
SETTINGS_TIMEOUT = 2.0


class ClusterSettingsCache:
    """The last answer (at first the defaults) when the auth service does not
    answer in `SETTINGS_TIMEOUT`: a session never waits on it for longer."""

    def __init__(
        self,
        clock: IReactorTime,
        fetch: Callable[[], Awaitable[api.ClusterSettings]],
    ) -> None:
        self._clock = clock
        self._fetch = fetch
        self._settings = api.ClusterSettings()
        self._asked: float | None = None

    async def current(self) -> api.ClusterSettings:
        now = self._clock.seconds()
        if self._asked is not None and now - self._asked < SETTINGS_MAX_AGE:
            return self._settings
        self._asked = now
        try:
            d = Deferred.fromCoroutine(_awaited(self._fetch()))
            self._settings = await d.addTimeout(SETTINGS_TIMEOUT, self._clock)
        except Exception as e:
            log.warn(
                "could not ask the auth service for the cluster's settings ({error}): "
                "keeping session_recording={mode!r}",
                error=str(e) or type(e).__name__,
                mode=self._settings.session_recording,
            )
        return self._settings


async def _awaited(value: Awaitable[api.ClusterSettings]) -> api.ClusterSettings:
    return await value
