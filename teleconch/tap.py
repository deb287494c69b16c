"""``twistd teleproxy``: the all-in-one cluster, or the roles a config file enables."""

from __future__ import annotations

import attrs
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from teleconch import config as cfg
from teleconch.service import TeleconchService

log = Logger()


class Options(usage.Options):
    optParameters = [
        [
            "config",
            "c",
            None,
            "Config file (YAML, shaped like teleport.yaml). "
            "Without one: auth + proxy in this process, on Teleport's ports.",
        ],
        [
            "data-dir",
            "d",
            None,
            "Data directory (overrides teleconch.data_dir; "
            f"default ./{cfg.DEFAULT_DATA_DIR}).",
        ],
    ]

    def postOptions(self) -> None:
        try:
            self["settings"] = cfg.load(self["config"], self["data-dir"])
        except cfg.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _serve(settings: cfg.Settings) -> IService:
    from twisted.internet import reactor  # the composition root picks the reactor

    service = TeleconchService(reactor, settings)

    def fatal(failure: Failure) -> None:
        log.failure("teleconch could not start", failure)
        log.critical("teleconch cannot start: {error}", error=failure.getErrorMessage())
        reactor.stop()

    service.ready.addErrback(fatal)
    return service


def makeService(options: Options) -> IService:
    return _serve(options["settings"])


def makeAuthService(options: Options) -> IService:
    """Only the auth role of the config, for a separate auth server."""
    settings: cfg.Settings = options["settings"]
    if not settings.auth.enabled:
        raise usage.UsageError(
            "auth_service.enabled is no in the config: nothing to run"
        )
    proxy = attrs.evolve(settings.proxy, enabled=False)
    return _serve(attrs.evolve(settings, proxy=proxy))
