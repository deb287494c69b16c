"""The store suite, overrides of the config's cluster settings (``teleconch-ctl
cluster set``), on every backend (tests/store_backends.py)."""

from __future__ import annotations

import pytest_twisted

from teleconch.auth.store import Store
from teleconch.auth.types import SettingOverride
from tests.store_backends import NOW, MakeStore, backend, store

__all__ = ["backend", "store"]  # the fixtures, used by name


@pytest_twisted.ensureDeferred
async def test_an_override_replaces_the_one_of_its_key_and_they_list_by_key(
    store: Store,
) -> None:
    """Set twice, a key holds the second value, who set it and when."""
    assert await store.list_setting_overrides() == []
    await store.set_setting_overrides(
        [
            SettingOverride("session_recording", "proxy", "admin", NOW),
            SettingOverride("record_input", "yes", "admin", NOW),
        ]
    )
    await store.set_setting_overrides(
        [SettingOverride("session_recording", "off", "ops", NOW + 5)]
    )
    assert await store.list_setting_overrides() == [
        SettingOverride("record_input", "yes", "admin", NOW),
        SettingOverride("session_recording", "off", "ops", NOW + 5),
    ]


@pytest_twisted.ensureDeferred
async def test_overrides_outlive_a_restart(backend: MakeStore) -> None:
    first = backend()
    await first.open()
    await first.set_setting_overrides(
        [SettingOverride("recordings_retention", "2592000", "admin", NOW)]
    )
    await first.close()
    second = backend()
    await second.open()
    try:
        assert await second.list_setting_overrides() == [
            SettingOverride("recordings_retention", "2592000", "admin", NOW)
        ]
    finally:
        await second.close()
