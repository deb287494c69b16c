"""Recording proxy mode across outages, with real processes: the auth service
and the proxy are separate services (one process, two data directories), a
real ``ssh -tt -A -J`` client, ssh-agent and sshd node.

- the auth service stops mid-session and starts again: the session goes on
  and its recording holds what was typed and shown during the outage;
- the session ends while auth is away and the proxy stops with the
  recording in its spool: the restarted proxy uploads it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.harness import Cluster, start_cluster, wait_for_events
from tests.test_proxy import World, alice_logged_in, start_web1
from tests.test_recording_proxy import (
    Agented,
    _Background,
    recording_events,
    ssh_agent,
)

pytestmark = pytest.mark.interop


@attrs.define
class Split(World):
    """A `World` whose proxy is a service of its own (``proxy``), joined to ``cluster``."""

    proxy: Cluster | None = None
    proxy_raw: dict[str, Any] = attrs.Factory(dict)

    @property
    def proxy_port(self) -> int:
        assert self.proxy is not None and self.proxy.service.proxy is not None
        address = self.proxy.service.proxy.ssh_address
        assert address is not None
        return address.port

    def auth_raw(self) -> dict[str, Any]:
        """The auth service again, on the port it had (the proxy dials that)."""
        return {
            "proxy_service": {"enabled": False},
            "auth_service": {
                "session_recording": "proxy",
                "listen_addr": f"127.0.0.1:{self.cluster.auth_addr.port}",
            },
        }

    async def start_proxy(self) -> None:
        """The proxy again, from its data directory (its identity, its spool)."""
        self.proxy = await start_cluster(
            self.tmp / "proxy", self.proxy_raw, clock=self.cluster.clock
        )


@contextlib.asynccontextmanager
async def split_world(tmp_path: Path) -> AsyncIterator[Split]:
    auth_raw = {"proxy_service": {"enabled": False},
                "auth_service": {"session_recording": "proxy"}}  # fmt: skip
    auth = await start_cluster(tmp_path / "auth", auth_raw)
    w: Split | None = None
    proxy: Cluster | None = None
    sshd = None
    try:
        admin = auth.admin_agent()
        token = await admin.create_token("proxy", 600)
        proxy_raw = {
            "teleconch": {"auth_servers": [str(auth.auth_addr)],
                          "auth_token": token.token, "ca_pin": token.ca_pin},
            "auth_service": {"enabled": False},
        }  # fmt: skip
        proxy = await start_cluster(tmp_path / "proxy", proxy_raw, clock=auth.clock)
        sshd = await start_web1(auth, tmp_path)
        proxy.admin = admin  # sign_up invites through it
        home, config = await alice_logged_in(proxy, tmp_path)
        proxy.admin = None
        w = Split(auth, sshd, home, config, tmp_path, proxy, proxy_raw)
        yield w
    finally:
        if sshd is not None:
            await sshd.stop()
        if w is not None:  # the ones running now (the tests restart them)
            auth, proxy = w.cluster, w.proxy
        if proxy is not None:
            await proxy.stop()
        await auth.stop()


def shell(w: Split, sock: Path) -> _Background:
    """``ssh -tt -A -J proxy web1``: a shell on a PTY, typed into through stdin."""
    proto = _Background()
    env = {**os.environ, **w.env(), "SSH_AUTH_SOCK": str(sock)}
    argv = ["ssh", "-F", str(w.config), "-o", "BatchMode=yes", "-tt", "-A", "-J",
            f"root@127.0.0.1:{w.proxy_port}", "root@web1.test.example"]  # fmt: skip
    reactor.spawnProcess(proto, "ssh", argv, env=env)
    return proto


def type_in(proto: _Background, line: str) -> None:
    assert proto.transport is not None
    proto.transport.write(line.encode() + b"\n")


async def printed(w: Split, sid: str) -> str:
    events = await recording_events(Agented(w, Path()), sid)
    assert events[-1]["event"] == "session.end", events[-1]
    return "".join(e.get("data", "") for e in events if e["event"] == "print")


@pytest_twisted.ensureDeferred
async def test_an_auth_outage_mid_session_leaves_the_recording_complete(
    tmp_path: Path,
) -> None:
    async with split_world(tmp_path) as w, ssh_agent(w) as sock:
        proc = shell(w, sock)
        try:
            type_in(proc, "echo before-$((1+1))")
            await proc.wait_for(b"before-2")
            await w.cluster.stop()  # the auth service is away
            type_in(proc, "echo during-$((2+2))")
            await proc.wait_for(b"during-4")
            w.cluster = await start_cluster(
                w.tmp / "auth", w.auth_raw(), clock=w.cluster.clock
            )
            type_in(proc, "echo after-$((3+3)); exit 7")
            await proc.ended
        finally:
            proc.stop()
        (upload,) = await wait_for_events(w.cluster, "session.upload")
        text = await printed(w, upload.fields["session_id"])
        assert all(s in text for s in ("before-2", "during-4", "after-6")), text


@pytest_twisted.ensureDeferred
async def test_a_restarted_proxy_uploads_the_recording_left_in_its_spool(
    tmp_path: Path,
) -> None:
    async with split_world(tmp_path) as w, ssh_agent(w) as sock:
        proc = shell(w, sock)
        try:
            type_in(proc, "echo typed-$((6*7))")
            await proc.wait_for(b"typed-42")
            await w.cluster.stop()  # the upload cannot happen
            type_in(proc, "exit 3")
            await proc.ended
        finally:
            proc.stop()
        assert w.proxy is not None and w.proxy.service.proxy is not None
        spool = w.proxy.service.proxy.spool
        assert spool is not None and spool.sessions(), "nothing spooled"
        await w.proxy.stop()  # with the recording in its spool
        w.proxy = None
        w.cluster = await start_cluster(
            w.tmp / "auth", w.auth_raw(), clock=w.cluster.clock
        )
        await w.start_proxy()
        (upload,) = await wait_for_events(w.cluster, "session.upload")
        assert "typed-42" in await printed(w, upload.fields["session_id"])
