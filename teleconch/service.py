"""The whole teleconch process: the roles its config enables, composed.

Each role lives in its own package (``auth/service.py``,
``proxy/service.py``) and shares ``startup.py``; this module only builds
the tree and logs the banner once every role serves.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch import config as cfg
from teleconch.auth.joinclient import JoinSource
from teleconch.auth.service import AuthService
from teleconch.health import (
    ASKS_AUTH,
    ASKS_STORAGE,
    HealthSite,
    Readiness,
    auth_probe,
    proxy_probe,
)
from teleconch.proxy.service import ProxyService
from teleconch.startup import Listener, listening_address

log = Logger()


class TeleconchService(MultiService):
    """The whole process: the enabled roles, and a banner once all serve."""

    def __init__(
        self,
        reactor: Any,
        settings: cfg.Settings,
        bcrypt_rounds: int = 12,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self.auth: AuthService | None = None
        self.proxy: ProxyService | None = None
        #: Whether every role can do its work: /readyz on teleconch.diag_addr
        #: and on the proxy's web listener.
        self.readiness = Readiness(reactor)
        if settings.auth.enabled:
            self.auth = AuthService(reactor, settings, bcrypt_rounds, clock)
            self.auth.setServiceParent(self)
            self.readiness.add("auth", auth_probe(self.auth), ASKS_STORAGE)
        if settings.proxy.enabled:
            self.proxy = ProxyService(
                reactor, settings, self._join_source, clock, self.readiness
            )
            self.proxy.setServiceParent(self)
            self.readiness.add("proxy", proxy_probe(self.proxy), ASKS_AUTH)
        #: The diagnostics listener (``teleconch.diag_addr``), when configured.
        self.diag: Listener | None = None
        if settings.teleconch.diag_addr is not None:
            self.diag = Listener(
                reactor,
                "teleconch.diag_addr",
                settings.teleconch.diag_addr,
                HealthSite(self.readiness, reactor),
            )
            self.diag.setServiceParent(self)
        self.ready: Deferred[None] = Deferred()

    async def _join_source(self, need_token: bool) -> JoinSource:
        if self.auth is not None:
            return await self.auth.local_join(need_token)
        g = self.settings.teleconch
        return JoinSource(g.auth_servers, g.auth_token, g.ca_pin)

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._started()).chainDeferred(self.ready)

    async def _started(self) -> None:
        if self.diag is not None:
            port = await self.diag.bound
            log.info(
                "health endpoints on http://{addr}/healthz and /readyz",
                addr=listening_address(port),
            )
        for svc in (self.auth, self.proxy):
            if svc is not None:
                await svc.ready
        # One event per line: the log escapes line breaks inside an event.
        for line in self.banner().splitlines():
            log.info("{line}", line=line)

    def banner(self) -> str:
        s = self.settings
        lines = [
            f"teleconch {s.auth.cluster_name if s.auth.enabled else ''} is running."
        ]
        if self.proxy is not None:
            p = self.proxy
            lines.append(
                f"  web UI:                 https://{p.public_addr}/web/login  "
                f"(listening on {p.web_listening})"
            )
            lines.append(
                f"  SSH proxy:              {p.ssh_public_addr}  "
                f"(listening on {p.ssh_listening})"
            )
        if self.auth is not None:
            data = s.data_dir
            lines.append(
                f"  auth service:           listening on {self.auth.listening}"
            )
            lines.append(
                "Add the first user (prints an invite link to open in a browser):"
            )
            lines.append(
                f"  teleconch-ctl --data-dir {data} users add alice "
                "--logins alice,root --roles access,admin"
            )
        return "\n".join(lines)
