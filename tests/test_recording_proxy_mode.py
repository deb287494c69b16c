"""The mode switch with real processes: ``teleconch-ctl cluster set
session_recording=proxy`` on a running cluster is followed by the proxy for
new ``ssh -A -J`` connections, with no restart (the cache asks auth at most
every 10 s; this test waits for that, it does not time it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.harness import run
from tests.test_proxy import make_world
from tests.test_recording_proxy import Agented, recording_events, ssh_agent, uploaded

pytestmark = pytest.mark.interop


async def _proxy_follows(w: Agented, mode: str) -> None:
    proxy = w.world.cluster.service.proxy
    assert proxy is not None and proxy.cluster_settings is not None
    for _ in range(60):  # the cache's 10 s, and some
        if (await proxy.cluster_settings.current()).session_recording == mode:
            return
        await deferLater(reactor, 0.5)
    raise AssertionError(f"the proxy never followed session_recording={mode}")


@pytest_twisted.ensureDeferred
async def test_cluster_set_session_recording_proxy_is_followed_by_new_connections(
    tmp_path: Path,
) -> None:
    async with make_world(tmp_path) as world, ssh_agent(world) as sock:
        w = Agented(world, sock)
        node = "root@web1.test.example"
        before = await w.ssh("-A", "-J", w.jump, node, "echo spliced")
        assert (before.out, before.code) == ("spliced\n", 0), before.err
        listed = await w.ctl("recordings", "ls", "--format", "json")
        assert json.loads(listed.out) == [], listed.out  # node mode: sshd's to record
        r = await w.ctl("cluster", "set", "session_recording=proxy")
        assert r.code == 0, r.err
        await _proxy_follows(w, "proxy")
        after = await w.ssh("-A", "-J", w.jump, node, "echo recorded")
        assert (after.out, after.code) == ("recorded\n", 0), after.err
        (sid,) = await uploaded(w)
        events = await recording_events(w, sid)
        assert events[0]["command"] == "echo recorded"
        printed = "".join(e.get("data", "") for e in events if e["event"] == "print")
        assert "recorded" in printed


@pytest_twisted.ensureDeferred
async def test_with_record_input_on_what_the_owner_types_is_in_the_proxy_recording(
    tmp_path: Path,
) -> None:
    async with make_world(tmp_path) as world, ssh_agent(world) as sock:
        w = Agented(world, sock)
        r = await w.ctl("cluster", "set", "session_recording=proxy", "record_input=yes")
        assert r.code == 0, r.err
        await _proxy_follows(w, "proxy")
        proxy = w.world.cluster.service.proxy
        assert proxy is not None and proxy.cluster_settings is not None
        assert (await proxy.cluster_settings.current()).record_input
        argv = ["ssh", "-F", str(world.config), "-o", "BatchMode=yes", "-tt", "-A",
                "-J", w.jump, "root@web1.test.example"]  # fmt: skip
        typed = await run(
            argv,
            env=world.env(SSH_AUTH_SOCK=str(sock)),
            stdin=b"echo typed-$((6*7))\nexit 0\n",
        )
        assert "typed-42" in typed.out, typed.err
        (sid,) = await uploaded(w)
        events = await recording_events(w, sid)
        keys = "".join(e.get("data", "") for e in events if e["event"] == "input")
        assert "echo typed-$((6*7))" in keys
