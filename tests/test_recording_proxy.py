"""Recording proxy mode with the real OpenSSH client, agent and sshd node.

Interop: the cluster runs in this process with ``session_recording: proxy``;
ssh (``-A -J`` and ProxyCommand ``ssh -s``), scp, sftp, ssh-agent (holding
the certificate after ``teleconch login``) and sshd are Debian's OpenSSH.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from teleconch.proxy.forward_user import AGENT_REQUIRED
from tests.harness import ProcessResult, run, wait_for_events
from tests.sshd import free_port, start_sshd
from tests.test_proxy import World, make_world

pytestmark = pytest.mark.interop

PROXY_MODE = {"auth_service": {"session_recording": "proxy"}}


@attrs.define
class Agented:
    world: World
    sock: Path

    @property
    def jump(self) -> str:
        return f"root@127.0.0.1:{self.world.proxy_port}"

    async def ssh(self, *args: str, agent: bool = True) -> ProcessResult:
        env = {"SSH_AUTH_SOCK": str(self.sock)} if agent else {"SSH_AUTH_SOCK": ""}
        return await self.world.ssh(*args, **env)

    async def ctl(self, *args: str) -> ProcessResult:
        return await self.world.ctl(*args)


@contextlib.asynccontextmanager
async def ssh_agent(world: World) -> AsyncIterator[Path]:
    """A real ssh-agent holding alice's key and certificate from `teleconch login`."""
    sock = world.tmp / "agent.sock"
    started = await run(["ssh-agent", "-a", str(sock)])
    assert started.code == 0, started.err
    pid = re.search(r"SSH_AGENT_PID=(\d+)", started.out)
    assert pid
    try:
        key = world.home / "keys" / "127.0.0.1" / "alice"
        r = await run(["ssh-add", str(key)], env={"SSH_AUTH_SOCK": str(sock)})
        assert r.code == 0, r.err
        yield sock
    finally:
        os.kill(int(pid.group(1)), 15)


@contextlib.asynccontextmanager
async def proxy_world(
    tmp_path: Path, raw: Mapping[str, Any] | None = None
) -> AsyncIterator[Agented]:
    merged = {"auth_service": {**PROXY_MODE["auth_service"], **(raw or {})}}
    async with make_world(tmp_path, merged) as world, ssh_agent(world) as sock:
        yield Agented(world, sock)


@pytest_twisted.async_yield_fixture
async def rec(tmp_path: Path) -> AsyncIterator[Agented]:
    async with proxy_world(tmp_path) as w:
        yield w


async def recording_events(w: Agented, sid: str) -> list[dict[str, Any]]:
    r = await w.ctl("recordings", "export", sid, "--format", "json")
    assert r.code == 0, r.err
    return [json.loads(line) for line in r.out.splitlines()]


async def uploaded(w: Agented, count: int = 1) -> list[str]:
    events = await wait_for_events(w.world.cluster, "session.upload", count)
    return [e.fields["session_id"] for e in events]


@pytest_twisted.ensureDeferred
async def test_ssh_A_J_in_proxy_mode_returns_output_and_exit_status_and_records_it(
    rec: Agented,
) -> None:
    """``ssh -A -J proxy node 'echo hi; exit 3'``: the output and status come
    back; the node saw a login by alice's certificate (through her agent); the
    recording holds the output, the command and the exit status."""
    r = await rec.ssh("-A", "-J", rec.jump, "root@web1.test.example", "echo hi; exit 3")
    assert (r.out, r.code) == ("hi\n", 3), r.err + rec.world.sshd.log
    assert re.search(r"Accepted publickey for root .* ID alice ", rec.world.sshd.log)
    (sid,) = await uploaded(rec)
    events = await recording_events(rec, sid)
    start, end = events[0], events[-1]
    assert start["event"] == "session.start" and start["command"] == "echo hi; exit 3"
    assert (start["user"], start["login"], start["node"]) == ("alice", "root", "web1")
    printed = "".join(e.get("data", "") for e in events if e["event"] == "print")
    assert "hi" in printed, events
    assert end["event"] == "session.end" and end["exit_code"] == 3
    (started,) = await wait_for_events(rec.world.cluster, "session.start")
    assert started.fields["kind"] == "ssh" and started.fields["session_id"] == sid
    (done,) = await wait_for_events(rec.world.cluster, "session.end")
    assert done.fields["exit_code"] == 3
    (data,) = await wait_for_events(rec.world.cluster, "session.data")
    assert data.fields["tx"] >= 3 and data.fields["session_id"] == sid
    (ex,) = await wait_for_events(rec.world.cluster, "exec")
    assert ex.fields["command"] == "echo hi; exit 3" and ex.fields["exit_code"] == 3


@pytest_twisted.ensureDeferred
async def test_proxy_command_with_ssh_s_in_proxy_mode_keeps_stderr_apart(
    rec: Agented,
) -> None:
    """ProxyCommand ``ssh -s proxy:%h:%p`` is terminated too; stderr stays stderr."""
    w = rec.world
    command = (f"ssh -F {w.config} -o BatchMode=yes -p {w.proxy_port} "
               "%r@127.0.0.1 -s proxy:%h:%p")  # fmt: skip
    r = await rec.ssh("-A", "-o", f"ProxyCommand={command}", "root@web1.test.example",
                      "echo out; echo err >&2; exit 5")  # fmt: skip
    assert (r.out, r.code) == ("out\n", 5), r.err
    assert "err\n" in r.err and "out" not in r.err
    await uploaded(rec)


@pytest_twisted.ensureDeferred
async def test_without_an_agent_the_client_is_told_to_use_ssh_A_and_it_is_audited(
    rec: Agented,
) -> None:
    r = await rec.ssh("-J", rec.jump, "root@web1.test.example", "echo never")
    assert r.code != 0 and r.out == ""
    assert AGENT_REQUIRED in r.err, r.err
    events = await wait_for_events(rec.world.cluster, "proxy.connect")
    refused = [e for e in events if e.fields.get("reason") == "no agent forwarded"]
    assert refused and not refused[0].success and refused[0].user == "alice"


@pytest_twisted.ensureDeferred
async def test_scp_and_sftp_of_10_mb_both_ways_are_byte_identical(rec: Agented) -> None:
    """scp up and down, sftp up and down, through the recording proxy; these
    are exec/subsystem audit events, not recordings."""
    w = rec.world
    src = w.tmp / "ten.bin"
    src.write_bytes(os.urandom(10 * 1024 * 1024))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    env = {"SSH_AUTH_SOCK": str(rec.sock)}
    base = ["-F", str(w.config), "-o", "BatchMode=yes", "-o", "ForwardAgent=yes",
            "-J", rec.jump]  # fmt: skip
    remote = "root@web1.test.example:"
    for args in (
        [str(src), remote + str(w.tmp / "up.bin")],
        [remote + str(src), str(w.tmp / "down.bin")],
    ):
        # -O: the scp protocol (an exec of scp); plain scp now speaks sftp.
        r = await run(["scp", "-O", *base, *args], env=w.env(**env))
        assert r.code == 0, r.err
    batch = w.tmp / "batch"
    batch.write_text(
        f"put {src} {w.tmp / 'sftp-up.bin'}\nget {src} {w.tmp / 'sftp-down.bin'}\n"
    )
    r = await run(["sftp", *base, "-b", str(batch), "root@web1.test.example"],
                  env=w.env(**env))  # fmt: skip
    assert r.code == 0, r.err
    for name in ("up.bin", "down.bin", "sftp-up.bin", "sftp-down.bin"):
        assert hashlib.sha256((w.tmp / name).read_bytes()).hexdigest() == digest, name
    subsystems = await wait_for_events(w.cluster, "subsystem")
    assert subsystems[-1].fields["name"] == "sftp"
    execs = await wait_for_events(w.cluster, "exec", 2)
    assert all(e.fields["command"].startswith("scp ") for e in execs)
    listed = await w.ctl("recordings", "ls", "--format", "json")
    assert json.loads(listed.out) == [], listed.out


class _Background(ProcessProtocol):
    """An ssh left running while the test uses its forwarding."""

    def __init__(self) -> None:
        self.out = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)

    async def wait_for(self, text: bytes) -> None:
        for _ in range(400):
            if text in self.out:
                return
            await deferLater(reactor, 0.05)
        raise AssertionError(f"{text!r} not in {self.out!r}")

    def stop(self) -> None:
        if not self.ended.called and self.transport is not None:
            self.transport.signalProcess("TERM")


def ssh_background(w: World, sock: Path, *args: str) -> _Background:
    proto = _Background()
    env = {**os.environ, **w.env(), "SSH_AUTH_SOCK": str(sock)}
    argv = ["ssh", "-F", str(w.config), "-o", "BatchMode=yes", *args]
    reactor.spawnProcess(proto, "ssh", argv, env=env)
    return proto


class _Banner(Protocol):
    def __init__(self) -> None:
        self.got: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.got.called:
            self.got.callback(data)
            assert self.transport is not None
            self.transport.loseConnection()


async def read_banner(port: int) -> bytes:
    proto = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Banner()
    )
    return await proto.got


@contextlib.asynccontextmanager
async def plain_key_node(w: Agented) -> AsyncIterator[None]:
    """A second sshd, ``plain1``, with a host key and no host certificate."""
    world = w.world
    key = world.tmp / "plain_host_key"
    r = await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    assert r.code == 0, r.err
    user_ca = (await world.cluster.admin_agent().export_ca("user"))[0]
    sshd = await start_sshd(world.tmp / "plain", key, None, [user_ca])
    try:
        await world.cluster.admin_agent().upsert_node(
            "plain1", f"127.0.0.1:{sshd.port}", {"env": "test"}
        )
        yield
    finally:
        await sshd.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_with_a_plain_host_key_is_refused_saying_so(rec: Agented) -> None:
    async with plain_key_node(rec):
        r = await rec.ssh("-A", "-J", rec.jump, "root@plain1.test.example", "echo no")
    assert r.code != 0 and r.out == ""
    assert "remote host presented a public key, expected a host certificate" in r.err
    events = await wait_for_events(rec.world.cluster, "proxy.connect")
    assert any(e.fields.get("reason") == "host certificate refused" for e in events)


@pytest_twisted.ensureDeferred
async def test_a_plain_host_key_is_accepted_with_a_warning_when_checks_are_off(
    tmp_path: Path,
) -> None:
    warnings: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is LogLevel.warn:
            warnings.append(formatEvent(event))

    async with (
        proxy_world(tmp_path, {"proxy_checks_host_keys": False}) as w,
        plain_key_node(w),
    ):
        globalLogPublisher.addObserver(observe)
        try:
            r = await w.ssh("-A", "-J", w.jump, "root@plain1.test.example", "echo yes")
        finally:
            globalLogPublisher.removeObserver(observe)
    assert (r.out, r.code) == ("yes\n", 0), r.err
    assert any("plain1 presented a plain host key" in line for line in warnings)


@pytest_twisted.ensureDeferred
async def test_ssh_L_forwarding_through_the_recording_proxy(rec: Agented) -> None:
    """``ssh -A -J ... -L``: a direct-tcpip channel on the inner connection
    becomes one to the node, which dials the target (here its own sshd)."""
    w = rec.world
    port = free_port()
    proc = ssh_background(
        w, rec.sock, "-A", "-J", rec.jump, "-L", f"{port}:127.0.0.1:{w.sshd.port}",
        "root@web1.test.example", "echo ready; sleep 20",
    )  # fmt: skip
    try:
        await proc.wait_for(b"ready")
        banner = await read_banner(port)
        assert banner.startswith(b"SSH-2.0-OpenSSH"), banner
    finally:
        proc.stop()


@pytest_twisted.ensureDeferred
async def test_a_pty_shell_in_proxy_mode_is_recorded_with_what_it_showed(
    rec: Agented,
) -> None:
    """``ssh -tt -A -J``: a shell on a PTY, typed into; its output, terminal
    size and exit status are in the recording."""
    w = rec.world
    argv = ["ssh", "-F", str(w.config), "-o", "BatchMode=yes", "-tt", "-A", "-J",
            rec.jump, "root@web1.test.example"]  # fmt: skip
    r = await run(
        argv,
        env=w.env(SSH_AUTH_SOCK=str(rec.sock)),
        stdin=b"echo typed-$((6*7))\nexit 4\n",
    )
    assert r.code == 4, r.err
    assert "typed-42" in r.out
    (sid,) = await uploaded(rec)
    events = await recording_events(rec, sid)
    assert events[0]["event"] == "session.start" and "command" not in events[0]
    assert events[0]["cols"] > 0 and events[0]["rows"] > 0
    printed = "".join(e.get("data", "") for e in events if e["event"] == "print")
    assert "typed-42" in printed
    assert events[-1]["event"] == "session.end" and events[-1]["exit_code"] == 4
