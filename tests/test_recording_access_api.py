"""FindRecordings, ReadRecordingAs and SeekRecording over the real Auth API.

Interop: a cluster in this process (AMP over mutual TLS on 127.0.0.1, SQLite),
called through AuthAgent with the admin identity (the roles allowed are proxy
and admin); the recordings are stored through the auth server's own
Recordings, as a proxy's upload would.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.auth.server import AuthServer
from tests.harness import Cluster
from tests.test_nodes import cluster

__all__ = ["cluster"]  # the fixture, used by name

pytestmark = pytest.mark.interop


def _server(cluster: Cluster) -> AuthServer:
    auth = cluster.service.auth
    assert auth is not None and auth.server is not None
    return auth.server


@pytest_twisted.ensureDeferred
async def test_the_viewer_commands_answer_over_amp_as_the_contract_says(
    cluster: Cluster,
) -> None:
    """alice's recording, found by text, read in a range and sought; bob
    (another user) is refused it with the message, and the refusal is audited."""
    agent = cluster.admin_agent()
    await agent.create_user("alice", ["root"], ["access"])
    await agent.create_user("bob", ["root"], ["access"])
    recs = _server(cluster).recordings
    meta = {"user": "alice", "login": "root", "node": "web1", "cols": 100, "rows": 30}
    await recs.start("proxy-x", "s1", {**meta, "session_kind": "ssh", "command": "ls"})
    one = fmt.encode_frame(0, fmt.encode_record("print", 0, b"Hello ", offset=0))
    two = fmt.encode_frame(700, fmt.encode_record("print", 700, b"World", offset=6))
    await recs.append("proxy-x", "s1", 0, one)
    await recs.append("proxy-x", "s1", len(one), two)
    await recs.complete("proxy-x", "s1", 900)

    (entry,) = await agent.find_recordings("alice", text="o wor")
    assert (entry.id, entry.cols, entry.rows, entry.kind, entry.command) == (
        "s1", 100, 30, "ssh", "ls",
    )  # fmt: skip
    assert await agent.find_recordings("bob") == ()
    found = await agent.search_recordings(api.RecordingQuery("alice", text="nope"))
    assert found == api.Recordings((), False)

    got = await agent.read_recording_as("alice", "s1", len(one), 1 << 20)
    assert got.data == two and got.complete and got.size == len(one) + len(two)
    position = await agent.seek_recording("alice", "s1", 800)
    assert position == api.RecordingPosition(len(one), 700, 900, got.size)

    with pytest.raises(api.AccessDenied, match="not yours; ask an auditor"):
        await agent.read_recording_as("bob", "s1", 0, 100)
    (denied,) = await agent.search_events(events=["recording.denied"])
    assert denied.user == "bob" and denied.fields["session_id"] == "s1"
    assert len(await agent.list_recordings()) == 1  # the admin listing stays
