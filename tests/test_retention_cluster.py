"""A running auth service removes a recording past ``recordings_retention``.

Interop: real SQLite in a temporary data directory, written first as a proxy's
uploads would have left it, then the cluster started in this process on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads

from teleconch import recording_format as fmt
from teleconch.auth.audit import AuditLog
from teleconch.auth.backends.sqlite import SQLiteStore
from teleconch.auth.recordings import Recordings
from tests.harness import ShiftedClock, run, start_cluster, wait_for_events

pytestmark = pytest.mark.interop

DAY = 86400


async def _upload(recordings: Recordings, id: str, start: float) -> None:
    """A one-minute session that started at ``start``, uploaded whole."""
    await recordings.start(
        "proxy-a", id, {"user": "alice", "node": "web1", "start": start}
    )
    frame = fmt.encode_frame(
        0, fmt.encode_record("session.start", 0, id=id, time=start)
        + fmt.encode_record("print", 60_000, b"bye\r\n", offset=0)
    )  # fmt: skip
    await recordings.append("proxy-a", id, 0, frame)
    await recordings.complete("proxy-a", id, 60_000)


@pytest_twisted.ensureDeferred
async def test_a_recording_older_than_the_retention_is_removed_by_the_auth_service(
    tmp_path: Path,
) -> None:
    """With ``recordings_retention: 30d``, a session of 40 days ago is gone
    (and audited as recording.delete, reason retention) once the auth
    service has started; yesterday's is listed still."""
    data = tmp_path / "data"
    (data / "auth").mkdir(parents=True, mode=0o700)
    clock = ShiftedClock()
    store = SQLiteStore(
        str(data / "auth" / "teleconch.db"), cast(IReactorFromThreads, reactor)
    )
    await store.open()
    recordings = Recordings(store, clock, AuditLog(store, clock))
    now = clock.seconds()
    await _upload(recordings, "forty-days-ago", now - 40 * DAY)
    await _upload(recordings, "yesterday", now - DAY)
    await store.close()

    raw = {"auth_service": {"recordings_retention": "30d"}}
    cluster = await start_cluster(data, raw, clock)
    try:
        (event,) = await wait_for_events(cluster, "recording.delete")
        assert event.fields["session_id"] == "forty-days-ago"
        assert event.fields["reason"] == "retention"
        listed = await cluster.admin_agent().list_recordings()
        assert [r.id for r in listed] == ["yesterday"]
        r = await run(
            ["teleconch-ctl", "--data-dir", str(data), "--auth-server",
             str(cluster.auth_addr), "recordings", "export", "forty-days-ago"]
        )  # fmt: skip
        assert r.code == 1 and "no recording" in r.err
    finally:
        await cluster.stop()
