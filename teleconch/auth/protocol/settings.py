"""The cluster's settings: what every proxy follows (recording mode and its
options), and how an admin shows and changes them (``teleconch-ctl cluster``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from teleconch.auth.wire import AuthCommand, Empty
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY


@attrs.frozen
class ClusterSettings:
    #: ``auth_service.session_recording`` (`teleconch.config.SESSION_RECORDING_MODES`):
    #: ``node`` (web terminal sessions are recorded, sessions to OpenSSH nodes
    #: are not), ``proxy`` (the proxy terminates and records every session), ``off``.
    session_recording: str = "node"
    #: Whether what people type is recorded too (``auth_service.record_input``).
    record_input: bool = False
    #: In proxy mode, whether a node must present a host certificate from the
    #: host CA (``auth_service.proxy_checks_host_keys``, as Teleport's).
    proxy_checks_host_keys: bool = True


class GetClusterSettings(AuthCommand[Empty, ClusterSettings]):
    """The settings as they are now; proxies ask every few seconds."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY})


@attrs.frozen
class SettingValue:
    """One setting as ``cluster show`` says it: its value and where it comes
    from (``config``, or ``cluster set`` by ``set_by`` at ``set_at``)."""

    key: str
    value: str
    source: str
    set_by: str = ""
    set_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> SettingValue:
        return cls(**value)


@attrs.frozen
class ClusterSettingsView:
    """Every cluster setting, by key, with its source."""

    settings: tuple[SettingValue, ...]


class ShowClusterSettings(AuthCommand[Empty, ClusterSettingsView]):
    """``teleconch-ctl cluster show``."""

    roles = frozenset({ROLE_ADMIN})


@attrs.frozen
class ClusterSettingsChange:
    #: KEY -> VALUE as typed, e.g. ``{"session_recording": "proxy"}``.
    values: Mapping[str, str]


class SetClusterSettings(AuthCommand[ClusterSettingsChange, ClusterSettingsView]):
    """Store overrides of the config's values, all or none; audited as
    ``cluster.settings.update`` with the old and new values."""

    roles = frozenset({ROLE_ADMIN})
