"""The cluster's settings kept by the auth service: the config's values, under
what ``teleconch-ctl cluster set`` stored (``teleconch.auth.settings``), and a
proxy's cache following a change.

Unit tests: the real keeper and audit log on a MemoryStore, time on a
``task.Clock``; the Auth API's role rule through the AMP side in memory.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory
from teleconch.auth.audit import AuditLog
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.server import AuthServer
from teleconch.auth.settings import ClusterSettingsKeeper, show_retention
from teleconch.auth.types import SettingOverride
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY, TLSAuthority
from teleconch.proxy.settings import SETTINGS_MAX_AGE, ClusterSettingsCache
from tests.amp_memory import Conn, cert_for, clock, server, store, tls_ca

__all__ = ["clock", "server", "store", "tls_ca"]  # the fixtures, used by name

NOW = 1_700_000_000.0


def done(d: Any) -> Any:
    """What the coroutine ``d`` returned; it must have finished (on a Clock)."""
    out: list[Any] = []
    Deferred.fromCoroutine(d).addBoth(out.append)
    assert out, "not finished"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class Keeper:
    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryStore()
        done(self.store.open())
        retention = config.pop("recordings_retention", None)
        self.keeper = ClusterSettingsKeeper(
            self.store,
            self.clock,
            AuditLog(self.store, self.clock),
            api.ClusterSettings(**config),
            retention,
        )

    def show(self) -> dict[str, api.SettingValue]:
        return {s.key: s for s in done(self.keeper.show()).settings}

    def set(self, who: str = "admin", **values: str) -> api.ClusterSettingsView:
        return done(self.keeper.set(who, values))

    def updates(self) -> list[Any]:
        return done(self.store.search_events(events=["cluster.settings.update"]))


def test_show_says_each_value_and_that_it_comes_from_the_config() -> None:
    k = Keeper(record_input=True, recordings_retention=90 * 86400)
    shown = k.show()
    assert list(shown) == [
        "session_recording",
        "record_input",
        "proxy_checks_host_keys",
        "recordings_retention",
    ]
    assert [(s.value, s.source) for s in shown.values()] == [
        ("node", "config"),
        ("yes", "config"),
        ("yes", "config"),
        ("90d", "config"),
    ]


def test_a_set_value_wins_over_the_config_says_who_and_when_and_is_audited() -> None:
    """The proxies' record carries the override; show names its setter and
    time; the audit event has the old and the new values and who."""
    k = Keeper()
    k.clock.advance(60)
    k.set(session_recording="proxy", record_input="yes")
    assert done(k.keeper.current()) == api.ClusterSettings(
        session_recording="proxy", record_input=True, proxy_checks_host_keys=True
    )
    shown = k.show()
    assert shown["session_recording"] == api.SettingValue(
        "session_recording", "proxy", "cluster set", "admin", NOW + 60
    )
    assert shown["proxy_checks_host_keys"].source == "config"
    (event,) = k.updates()
    assert event.user == "admin"
    assert event.fields["old"] == {"session_recording": "node", "record_input": "no"}
    assert event.fields["new"] == {"session_recording": "proxy", "record_input": "yes"}


def test_an_unknown_key_or_value_is_refused_naming_the_valid_ones_and_sets_nothing() -> (
    None
):
    k = Keeper()
    with pytest.raises(api.BadParameter) as e:
        k.set(session_recording="off", recording="proxy")
    assert "unknown cluster setting 'recording'" in str(e.value)
    assert "session_recording, record_input, proxy_checks_host_keys" in str(e.value)
    with pytest.raises(
        api.BadParameter,
        match=re.escape(
            "always' is not valid; session_recording takes node | proxy | off"
        ),
    ):
        k.set(session_recording="always")
    with pytest.raises(api.BadParameter, match="takes yes or no"):
        k.set(record_input="maybe")
    with pytest.raises(api.BadParameter, match="1h or more"):
        k.set(recordings_retention="10m")
    with pytest.raises(api.BadParameter, match="nothing to set"):
        k.set()
    assert done(k.store.list_setting_overrides()) == []
    assert k.updates() == []


def test_retention_is_set_and_shown_but_stays_out_of_what_proxies_fetch() -> None:
    k = Keeper()
    assert done(k.keeper.recordings_retention()) is None
    assert k.show()["recordings_retention"].value == "forever"
    k.set(recordings_retention="36h")
    assert done(k.keeper.recordings_retention()) == 36 * 3600
    assert k.show()["recordings_retention"].value == "1d12h"
    assert done(k.keeper.current()) == api.ClusterSettings()
    k.set(recordings_retention="forever")
    assert done(k.keeper.recordings_retention()) is None
    assert show_retention(30 * 86400) == "30d"


def test_a_cluster_set_reaches_a_proxys_cache_after_settings_max_age() -> None:
    """The proxy asked just before the change keeps its answer for
    SETTINGS_MAX_AGE seconds, then asks again and follows it."""
    k = Keeper()
    cache = ClusterSettingsCache(k.clock, k.keeper.current)
    assert done(cache.current()).session_recording == "node"
    k.set(session_recording="off", record_input="yes")
    k.clock.advance(SETTINGS_MAX_AGE - 1)
    assert done(cache.current()).session_recording == "node"
    k.clock.advance(1)
    followed = done(cache.current())
    assert (followed.session_recording, followed.record_input) == ("off", True)


def test_only_an_admin_may_set_the_clusters_settings(
    server: AuthServer, clock: Clock, tls_ca: TLSAuthority
) -> None:
    """A proxy may read the settings, never change them: refused before its
    request is looked at."""
    factory = AuthAPIFactory(server, clock)
    factory.doStart()
    proxy = Conn(factory, cert=cert_for(tls_ca, ROLE_PROXY, "proxy-a"))
    proxy.call(api.SetClusterSettings, values={"session_recording": "off"})
    proxy.call(api.ShowClusterSettings, tag=b"2")
    refused, shown = proxy.answers()
    assert refused[b"_error_code"] == b"ACCESS_DENIED"
    assert shown[b"_error_code"] == b"ACCESS_DENIED"
    assert api.SetClusterSettings.roles == {ROLE_ADMIN}
    factory.doStop()


def test_a_stored_value_this_teleconch_cannot_read_gives_way_to_the_config() -> None:
    """An override written by hand (or by another version) that is not valid
    here: the proxies still get settings, the config's."""
    k = Keeper(session_recording="off")
    done(
        k.store.set_setting_overrides(
            [SettingOverride("session_recording", "sometimes", "admin", NOW)]
        )
    )
    assert done(k.keeper.current()).session_recording == "off"
    assert k.show()["session_recording"].source == "config"
