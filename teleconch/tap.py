"""``twistd teleproxy``: the all-in-one cluster, or the roles a config file enables."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import attrs
from twisted.application.service import IService
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

from teleconch import config as cfg
from teleconch import memdebug
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthUnavailable
from teleconch.auth.joinclient import JoinRefused
from teleconch.logs import use_for_twistd
from teleconch.service import TeleconchService
from teleconch.startup import StartupError

log = Logger()


class Options(usage.Options):
    optFlags = [["debug", None, "Log at debug severity (teleconch.log.severity)."]]
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
            config_error(str(e))
        self._use_our_log_observer()

    def _use_our_log_observer(self) -> None:
        """Make twistd log through ``teleconch.logs``, unless told otherwise.

        twistd reads its ``logger`` option after the subcommand's options are
        parsed; a --logger or --syslog given on its command line wins.
        """
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("logger") or parent.get("syslog"):
            return
        settings: cfg.Settings = self["settings"]
        parent["logger"] = use_for_twistd(
            settings.teleconch.log,
            parent.get("logfile") or None,
            bool(parent.get("nodaemon")),
            bool(self["debug"]),
        )


def config_error(message: str) -> NoReturn:
    """The message alone (not twistd's usage text), and exit status 2."""
    print(f"teleconch: {message}", file=sys.stderr)
    raise SystemExit(2)


#: Start-up failures whose message says it all: no traceback for these.
EXPECTED_FAILURES = (
    StartupError,
    JoinRefused,
    AuthUnavailable,
    api.AuthAPIError,
    cfg.ConfigError,
    ValueError,
    OSError,
)


def _exit_with(status: int) -> None:
    """After the reactor has shut down: twistd itself can only exit 0."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _serve(settings: cfg.Settings) -> IService:
    from twisted.internet import reactor  # the composition root picks the reactor

    service = TeleconchService(reactor, settings)
    try:  # the benchmarks' memory hook: only with TELECONCH_MEMDEBUG set
        debug = memdebug.from_environ(reactor, os.environ)
    except memdebug.MemDebugError as e:
        config_error(str(e))
    if debug is not None:
        debug.setServiceParent(service)

    def fatal(failure: Failure) -> None:
        if not failure.check(*EXPECTED_FAILURES):
            log.failure("teleconch could not start: an unexpected error", failure)
        else:
            # The message says it all; the traceback stays for `--debug`, in
            # case a ValueError or OSError was a bug rather than a setting.
            log.failure("start-up failure", failure, level=LogLevel.debug)
        log.critical("teleconch cannot start: {error}", error=failure.getErrorMessage())
        reactor.addSystemEventTrigger("after", "shutdown", _exit_with, 1)
        reactor.stop()

    service.ready.addErrback(fatal)
    return service


def makeService(options: Options) -> IService:
    return _serve(options["settings"])


def makeAuthService(options: Options) -> IService:
    """Only the auth role of the config, for a separate auth server."""
    settings: cfg.Settings = options["settings"]
    if not settings.auth.enabled:
        config_error("auth_service.enabled is no in the config: nothing to run")
    proxy = attrs.evolve(settings.proxy, enabled=False)
    return _serve(attrs.evolve(settings, proxy=proxy))
