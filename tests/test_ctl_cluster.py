"""``teleconch-ctl cluster set|show`` against a running cluster.

Interop: the cluster in this process on SQLite in a temporary directory, the
real ``teleconch-ctl`` program talking AMP over mutual TLS to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted

from teleconch.auth import protocol as api
from tests.harness import Cluster, run, start_cluster, wait_for_events

pytestmark = pytest.mark.interop


def _ctl(cluster: Cluster, *argv: str) -> list[str]:
    return ["teleconch-ctl", "--data-dir", str(cluster.data_dir), "--auth-server",
            str(cluster.auth_addr), "cluster", *argv]  # fmt: skip


async def _shown(cluster: Cluster) -> dict[str, dict[str, object]]:
    r = await run(_ctl(cluster, "show", "--format", "json"))
    assert r.code == 0, r.err
    return {s["key"]: s for s in json.loads(r.out)}


@pytest_twisted.ensureDeferred
async def test_cluster_set_is_stored_by_the_auth_service_shown_audited_and_kept(
    tmp_path: Path,
) -> None:
    """The config's record_input is the default; ``set`` overrides two keys
    (the proxies' GetClusterSettings answers with them), ``show`` names the
    source of each, a bad key is refused naming the valid ones, and after a
    restart of the auth service the overrides are still there."""
    raw = {"auth_service": {"record_input": True}}
    cluster = await start_cluster(tmp_path / "data", raw)
    try:
        shown = await _shown(cluster)
        assert (shown["record_input"]["value"], shown["record_input"]["source"]) == (
            "yes", "config",
        )  # fmt: skip
        r = await run(
            _ctl(cluster, "set", "session_recording=proxy", "recordings_retention=30d")
        )
        assert r.code == 0, r.err
        assert "proxies follow within 10s" in r.out
        shown = await _shown(cluster)
        assert shown["session_recording"]["value"] == "proxy"
        assert shown["session_recording"]["source"] == "cluster set"
        assert shown["session_recording"]["set_by"] == "admin"
        assert shown["recordings_retention"]["value"] == "30d"
        assert shown["proxy_checks_host_keys"]["source"] == "config"
        effective = await cluster.admin_agent().cluster_settings()
        assert effective == api.ClusterSettings(
            session_recording="proxy", record_input=True, proxy_checks_host_keys=True
        )
        (event,) = await wait_for_events(cluster, "cluster.settings.update")
        assert event.fields["old"] == {
            "session_recording": "node", "recordings_retention": "forever"
        }  # fmt: skip
        assert event.fields["new"] == {
            "session_recording": "proxy", "recordings_retention": "30d"
        }  # fmt: skip

        r = await run(_ctl(cluster, "set", "session_recordings=off"))
        assert r.code == 1
        assert "unknown cluster setting 'session_recordings'" in r.err
        assert "session_recording, record_input" in r.err
        assert "Traceback" not in r.err
        r = await run(_ctl(cluster, "set", "record_input"))
        assert r.code == 1 and "is not KEY=VALUE" in r.err
        r = await run(_ctl(cluster, "show"))
        assert r.code == 0, r.err
        assert "set by admin at" in r.out and "config" in r.out
    finally:
        await cluster.stop()

    cluster = await start_cluster(tmp_path / "data", raw)
    try:
        shown = await _shown(cluster)
        assert shown["session_recording"]["value"] == "proxy"
        assert shown["session_recording"]["source"] == "cluster set"
    finally:
        await cluster.stop()
