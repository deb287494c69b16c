"""The cluster's settings as the auth service keeps them: the config file's
``auth_service.*`` values, under what ``teleconch-ctl cluster set`` stored.

An override lives in the store (who set it, when), so it outlives a restart
and wins over the config until set again; every change is audited as
``cluster.settings.update`` with the old and the new values.  The proxies
ask for the effective `api.ClusterSettings` (``GetClusterSettings``) every
few seconds; ``recordings_retention`` is the auth service's own and stays
out of that record, but ``cluster show`` shows it with the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.store import Store
from teleconch.auth.types import SettingOverride
from teleconch.config import SESSION_RECORDING_MODES, parse_retention
from teleconch.durations import format_duration
from teleconch.text import printable

log = Logger()

RETENTION = "recordings_retention"


def _yes_no(text: str) -> bool:
    words = {"yes": True, "true": True, "on": True, "no": False, "false": False}
    found = words.get(text.strip().lower())
    if found is None:
        raise ValueError(text)
    return found


def _mode(text: str) -> str:
    if text not in SESSION_RECORDING_MODES:
        raise ValueError(text)
    return text


def show_retention(seconds: int | None) -> str:
    """``forever``, ``90d``, or ``36h`` as ``1d12h``."""
    if seconds is None:
        return "forever"
    days, rest = divmod(seconds, 86400)
    return (f"{days}d" if days else "") + (format_duration(rest) if rest else "")


@attrs.frozen
class Kind:
    """How one setting is read from what a person typed and shown again."""

    parse: Callable[[str], Any]
    show: Callable[[Any], str]
    #: What may be typed, for the error that refuses something else.
    valid: str


_BOOL = Kind(_yes_no, lambda v: "yes" if v else "no", "yes or no")

#: Every setting ``cluster set`` takes, in the order ``cluster show`` lists them.
KINDS: dict[str, Kind] = {
    "session_recording": Kind(_mode, str, " | ".join(SESSION_RECORDING_MODES)),
    "record_input": _BOOL,
    "proxy_checks_host_keys": _BOOL,
    RETENTION: Kind(
        parse_retention,
        show_retention,
        "a duration of 1h or more (90d, 12h) or forever",
    ),
}


def _parsed(key: str, text: str) -> Any:
    kind = KINDS.get(key)
    if kind is None:
        raise api.BadParameter(
            f"unknown cluster setting {printable(key, 64)!r}; the settings are: "
            + ", ".join(KINDS)
        )
    try:
        return kind.parse(text)
    except ValueError:
        raise api.BadParameter(
            f"{key}={printable(text, 64)!r} is not valid; {key} takes {kind.valid}"
        ) from None


class ClusterSettingsKeeper:
    """The effective settings, ``cluster show`` and ``cluster set``."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        log: AuditLog,
        config: api.ClusterSettings,
        recordings_retention: int | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit
        #: What the config file says: the values no override replaces.
        self.config: dict[str, Any] = {
            **attrs.asdict(config),
            RETENTION: recordings_retention,
        }

    async def _values(self) -> dict[str, tuple[Any, SettingOverride | None]]:
        out: dict[str, tuple[Any, SettingOverride | None]] = {
            k: (self.config[k], None) for k in KINDS
        }
        for o in await self.store.list_setting_overrides():
            if o.key not in KINDS:  # one a later teleconch knew is left alone
                continue
            try:
                out[o.key] = (KINDS[o.key].parse(o.value), o)
            except ValueError:
                log.warn(
                    "cluster setting {key}: the stored {value!r} is not valid; "
                    "using the config's (teleconch-ctl cluster set {key}=...)",
                    key=o.key,
                    value=o.value,
                )
        return out

    async def current(self) -> api.ClusterSettings:
        """What the proxies follow: each override over the config's value."""
        values = await self._values()
        fields = {f.name: values[f.name][0] for f in attrs.fields(api.ClusterSettings)}
        return api.ClusterSettings(**fields)

    async def recordings_retention(self) -> int | None:
        return (await self._values())[RETENTION][0]

    async def show(self) -> api.ClusterSettingsView:
        rows = []
        for key, (value, o) in (await self._values()).items():
            shown = KINDS[key].show(value)
            if o is None:
                rows.append(api.SettingValue(key, shown, "config"))
            else:
                rows.append(
                    api.SettingValue(key, shown, "cluster set", o.set_by, o.set_at)
                )
        return api.ClusterSettingsView(tuple(rows))

    async def set(self, who: str, values: Mapping[str, str]) -> api.ClusterSettingsView:
        """Store every value or, when one is refused, none."""
        if not values:
            raise api.BadParameter(
                "nothing to set; name KEY=VALUE pairs, the settings are: "
                + ", ".join(KINDS)
            )
        parsed = {k: _parsed(k, str(v)) for k, v in values.items()}
        new = {k: KINDS[k].show(v) for k, v in parsed.items()}
        before = await self._values()
        old = {k: KINDS[k].show(before[k][0]) for k in new}
        now = self._clock.seconds()
        await self.store.set_setting_overrides(
            [SettingOverride(k, v, who, now) for k, v in new.items()]
        )
        await self.audit("cluster.settings.update", user=who, old=old, new=new)
        return await self.show()
