"""The only auth server killed (kill -9) and restarted, with real processes.

Interop: the auth service and the proxy each run in their own ``twistd``
(a config each, ``teleconch.diag_addr`` set on both), the node is Debian's
OpenSSH sshd, the SSH session is a real ``ssh -tt -A -J`` on a PTY (the
cluster records in proxy mode, so the proxy records it), and the web
terminal is a WebSocket client over real TLS standing for the browser.

While the auth service is away: both sessions keep echoing what is typed, a
new login fails saying the auth service is unreachable, and the proxy's
/readyz (diagnostics listener and web listener) is 503 naming the auth
service.  Once it is back on the same port and data directory: the proxy is
ready again by itself, a new login works, and both sessions' recordings,
spooled at the proxy, are complete in the auth service.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, connectWS
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent

from teleconch import totp
from teleconch.auth.agent import AuthAgent
from teleconch.client.webapi import WebAPIClient, _read_body
from teleconch.config import HostPort
from teleconch.pki import TLSIdentity
from tests.harness import PASSWORD, run
from tests.sshd import Sshd, free_port, start_sshd
from tests.test_peering_interop import Browser, eventually
from tests.test_recording_proxy import _Background
from tests.webclient import COOKIE, Secrets, call, log_in

pytestmark = pytest.mark.interop

TWISTD = str(Path(sys.executable).parent / "twistd")
#: How long the proxy may take to notice the auth service is back (its
#: AuthAgent's backoff tops out at 15 s).
RECONNECT_BOUND = 30.0


class _Twistd(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


@attrs.define
class Process:
    """One ``twistd`` of ours, with its diagnostics address."""

    name: str
    config: Path
    diag: HostPort
    proto: _Twistd = attrs.field(factory=_Twistd)
    transport: IProcessTransport | None = None

    def start(self, plugin: str) -> None:
        self.proto = _Twistd()
        argv = [TWISTD, "--pidfile=", "-n", plugin, "--config", str(self.config)]
        self.transport = reactor.spawnProcess(
            self.proto, TWISTD, argv, env=dict(os.environ), path=str(self.config.parent)
        )

    @property
    def log(self) -> str:
        return self.proto.output.decode(errors="replace")

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.transport is not None and not self.proto.ended.called:
            self.transport.signalProcess(sig)
            await self.proto.ended

    async def readyz(self) -> tuple[int, Any]:
        url = f"http://{self.diag}/readyz".encode()
        response = await Agent(reactor).request(b"GET", url)
        return response.code, json.loads(await _read_body(response))

    async def until_ready(self, bound: float = 60.0) -> float:
        """Poll /readyz until 200; the seconds it took."""
        began = reactor.seconds()
        last: object = None
        while reactor.seconds() - began < bound:
            if self.proto.ended.called:
                raise AssertionError(f"{self.name} exited:\n{self.log}")
            try:
                last = await self.readyz()
                if last[0] == 200:
                    return reactor.seconds() - began
            except Exception as e:
                last = e  # not listening yet
            await deferLater(reactor, 0.2)
        raise AssertionError(f"{self.name} not ready within {bound} s ({last!r})")


class Codes:
    """alice's one-time codes in real time (the processes read the real
    clock): each step once, the earliest the auth service still takes."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.last = -1

    async def next(self, use: bool = True) -> str:
        """The next code; ``use=False``: one the auth service will not see
        (a login refused before it gets there), so the next call gives it again."""
        while True:
            now = reactor.seconds()
            current = totp.counter_at(now)
            # The previous step only while the boundary is far enough off
            # that it is still within the window when the code is checked.
            left = (current + 1) * totp.STEP - now
            earliest = current - 1 if left > 5 else current
            counter = max(self.last + 1, earliest)
            if counter <= current + 1:
                if use:
                    self.last = counter
                return totp.code_at(self.secret, counter)
            await deferLater(reactor, left + 0.5)


def yaml(doc: dict[str, Any]) -> str:
    return json.dumps(doc)  # JSON is YAML


@attrs.define
class Outage:
    tmp: Path
    auth: Process
    proxy: Process
    auth_port: int
    web: HostPort
    ssh_port: int
    admin: AuthAgent
    sshd: Sshd | None
    home: Path
    ssh_config: Path
    codes: Codes

    async def ctl(self, *args: str) -> Any:
        return await run(["teleconch-ctl", "--data-dir", str(self.tmp / "auth"),
                          "--auth-server", f"127.0.0.1:{self.auth_port}", *args])  # fmt: skip

    async def login(self, reaches_auth: bool = True) -> Any:
        """``teleconch login`` at the proxy, as alice types it."""
        code = await self.codes.next(use=reaches_auth)
        return await run(
            ["teleconch", "login", "--proxy", str(self.web), "--user", "alice",
             "--insecure"],
            env={"TELECONCH_HOME": str(self.home)},
            stdin=f"{PASSWORD}\n{code}\n".encode(),
        )  # fmt: skip


async def _node(tmp: Path, ctl: Any, admin: AuthAgent) -> Sshd:
    """sshd with a host certificate for web1 from the host CA, trusting the
    user CA, registered as node web1."""
    prefix = tmp / "node" / "web1"
    prefix.parent.mkdir()
    r = await ctl("auth", "sign", "--host", "web1", "--out", str(prefix))
    assert r.code == 0, r.err
    user_ca = (await admin.export_ca("user"))[0]
    sshd = await start_sshd(tmp / "sshd", prefix, Path(f"{prefix}-cert.pub"), [user_ca])
    await admin.upsert_node("web1", f"127.0.0.1:{sshd.port}", {"env": "test"})
    return sshd


@pytest_twisted.async_yield_fixture
async def outage(tmp_path: Path) -> AsyncIterator[Outage]:
    auth_port, web_port, ssh_port = free_port(), free_port(), free_port()
    auth_cfg = tmp_path / "auth.yaml"
    auth_cfg.write_text(yaml({
        "teleconch": {"nodename": "authhost", "data_dir": str(tmp_path / "auth"),
                      "diag_addr": f"127.0.0.1:{free_port()}"},
        "auth_service": {"listen_addr": f"127.0.0.1:{auth_port}",
                         "cluster_name": "test.example",
                         "session_recording": "proxy"},
        "proxy_service": {"enabled": False},
    }))  # fmt: skip
    auth = Process("auth", auth_cfg, _diag_of(auth_cfg))
    auth.start("teleauth")
    proxy: Process | None = None
    admin: AuthAgent | None = None
    sshd: Sshd | None = None
    try:
        await auth.until_ready()
        identity = TLSIdentity.load(tmp_path / "auth" / "admin")
        assert identity is not None
        admin = AuthAgent(reactor, [HostPort("127.0.0.1", auth_port)], identity)
        admin.startService()
        token = await admin.create_token("proxy", 600)
        proxy_cfg = tmp_path / "proxy.yaml"
        proxy_cfg.write_text(yaml({
            "teleconch": {"nodename": "proxyhost", "data_dir": str(tmp_path / "proxy"),
                          "auth_servers": [f"127.0.0.1:{auth_port}"],
                          "auth_token": token.token, "ca_pin": token.ca_pin,
                          "diag_addr": f"127.0.0.1:{free_port()}"},
            "auth_service": {"enabled": False},
            "proxy_service": {"listen_addr": f"127.0.0.1:{ssh_port}",
                              "web_listen_addr": f"127.0.0.1:{web_port}",
                              "peer_listen_addr": "127.0.0.1:0",
                              "public_addr": "127.0.0.1"},
        }))  # fmt: skip
        proxy = Process("proxy", proxy_cfg, _diag_of(proxy_cfg))
        proxy.start("teleproxy")
        await proxy.until_ready()
        web = HostPort("127.0.0.1", web_port)
        w = Outage(tmp_path, auth, proxy, auth_port, web, ssh_port, admin,
                   sshd=None, home=tmp_path / "tsh", ssh_config=tmp_path / "ssh_config",
                   codes=Codes(""))  # fmt: skip
        sshd = w.sshd = await _node(tmp_path, w.ctl, admin)
        invite = await admin.create_user("alice", ["root"], ["access"])
        client = WebAPIClient(reactor, web, insecure=True)
        page = await client.get_invite(invite.token)
        w.codes = Codes(page["totp_secret"])
        await client.complete_invite(invite.token, PASSWORD, await w.codes.next())
        r = await w.login()
        assert r.code == 0, r.err + proxy.log
        r = await run(["teleconch", "config"], env={"TELECONCH_HOME": str(w.home)})
        assert r.code == 0, r.err
        w.ssh_config.write_text(r.out)
        yield w
    finally:
        if sshd is not None:
            await sshd.stop()
        if admin is not None:
            await admin.stopService()
        if proxy is not None:
            await proxy.kill(signal.SIGTERM)
        await auth.kill(signal.SIGTERM)


def _diag_of(config: Path) -> HostPort:
    host, port = json.loads(config.read_text())["teleconch"]["diag_addr"].split(":")
    return HostPort(host, int(port))


@attrs.define
class SSHAgent:
    sock: Path
    pid: int


async def start_ssh_agent(w: Outage) -> SSHAgent:
    sock = w.tmp / "agent.sock"
    started = await run(["ssh-agent", "-a", str(sock)])
    assert started.code == 0, started.err
    pid = re.search(r"SSH_AGENT_PID=(\d+)", started.out)
    assert pid
    key = w.home / "keys" / "127.0.0.1" / "alice"
    r = await run(["ssh-add", str(key)], env={"SSH_AUTH_SOCK": str(sock)})
    assert r.code == 0, r.err
    return SSHAgent(sock, int(pid.group(1)))


def ssh_shell(w: Outage, sock: Path) -> _Background:
    """``ssh -tt -A -J proxy web1``: a shell on a PTY, typed into on stdin."""
    proto = _Background()
    env = {**os.environ, "TELECONCH_HOME": str(w.home), "SSH_AUTH_SOCK": str(sock)}
    argv = ["ssh", "-F", str(w.ssh_config), "-o", "BatchMode=yes", "-tt", "-A",
            "-J", f"root@127.0.0.1:{w.ssh_port}", "root@web1.test.example"]  # fmt: skip
    reactor.spawnProcess(proto, "ssh", argv, env=env)
    return proto


def type_in(proto: _Background, line: str) -> None:
    assert proto.transport is not None
    proto.transport.write(line.encode() + b"\n")


async def open_terminal(web: HostPort, secrets: Secrets) -> Browser:
    """A web terminal for root@web1, as the page opens it."""
    params = {"server_id": "web1", "login": "root", "term": {"w": 100, "h": 30}}
    url = (
        f"wss://{web.host}:{web.port}/v1/webapi/sites/test.example/connect"
        f"?params={quote(json.dumps(params))}"
    )
    factory = WebSocketClientFactory(
        url,
        origin=f"https://{web.host}:{web.port}",
        headers={"Cookie": f"{COOKIE}={secrets.cookie}"},
    )
    browser = Browser()
    browser.token = secrets.bearer
    browser.factory = factory
    factory.protocol = lambda: browser  # type: ignore[assignment]
    connectWS(factory, ssl.ClientContextFactory())
    await eventually(
        lambda: any(t.get("type") == "session" for t in browser.texts),
        "the terminal's session frame",
    )
    return browser


async def echoed(browser: Browser, text: bytes) -> None:
    await eventually(lambda: text in browser.output, f"{text!r} in the web terminal")


async def recorded_text(w: Outage, sid: str) -> tuple[str, str]:
    """What the recording shows, and its last event's name."""
    r = await w.ctl("recordings", "export", sid, "--format", "json")
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.out.splitlines()]
    printed = "".join(e.get("data", "") for e in events if e["event"] == "print")
    return printed, events[-1]["event"]


async def uploads(w: Outage, count: int) -> list[str]:
    for _ in range(400):
        events = await w.admin.search_events(events=["session.upload"])
        if len(events) >= count:
            return [e.fields["session_id"] for e in events]
        await deferLater(reactor, 0.1)
    raise AssertionError(f"expected {count} uploads:\n{w.proxy.log}")


@pytest_twisted.ensureDeferred
async def test_sessions_survive_the_only_auth_server_killed_and_the_proxy_recovers(
    outage: Outage,
) -> None:
    """kill -9 of the only auth server: open SSH and web terminal sessions go
    on, new logins fail saying the auth service is unreachable, /readyz says
    not ready naming it; restarted, the proxy reconnects by itself, logins
    work, and the recordings of both sessions are complete."""
    w = outage
    agent = await start_ssh_agent(w)
    shell = ssh_shell(w, agent.sock)
    browser: Browser | None = None
    try:
        type_in(shell, "echo ssh-before-$((1+1))")
        await shell.wait_for(b"ssh-before-2")
        code = await w.codes.next()
        secrets = await log_in(w.web, "alice", PASSWORD, code)
        browser = await open_terminal(w.web, secrets)
        browser.type("echo web-before-$((2+3))\r")
        await echoed(browser, b"web-before-5")

        await w.auth.kill()  # kill -9: the only auth server is gone

        type_in(shell, "echo ssh-during-$((2+2))")
        await shell.wait_for(b"ssh-during-4")
        browser.type("echo web-during-$((3+4))\r")
        await echoed(browser, b"web-during-7")

        r = await w.login(reaches_auth=False)
        assert r.code != 0
        assert "unreachable" in (r.out + r.err), r.out + r.err

        code_, body = await w.proxy.readyz()
        assert code_ == 503, body
        assert body["checks"]["proxy"]["ready"] is False
        assert "auth service" in body["checks"]["proxy"]["reason"], body
        web_ready = await call(w.web, "GET", "/readyz")
        assert web_ready.code == 503, web_ready.body
        assert "auth service" in web_ready.body["checks"]["proxy"]["reason"]

        w.auth.start("teleauth")  # same config: same port, same data dir
        took = await w.proxy.until_ready(RECONNECT_BOUND)
        assert took < RECONNECT_BOUND
        assert (await call(w.web, "GET", "/readyz")).code == 200

        r = await w.login()
        assert r.code == 0, r.err + w.proxy.log

        type_in(shell, "echo ssh-after-$((3+3)); exit 7")
        await shell.ended
        browser.type("echo web-after-$((4+4)); exit\r")
        await echoed(browser, b"web-after-8")
        await browser.closed
    finally:
        shell.stop()
        if browser is not None and not browser.closed.called:
            browser.sendClose()
        os.kill(agent.pid, signal.SIGTERM)

    sids = await uploads(w, 2)
    texts = [await recorded_text(w, sid) for sid in sids]
    assert [last for _, last in texts] == ["session.end", "session.end"], texts
    ssh_text = next(t for t, _ in texts if "ssh-before-2" in t)
    web_text = next(t for t, _ in texts if "web-before-5" in t)
    assert "ssh-during-4" in ssh_text and "ssh-after-6" in ssh_text, ssh_text
    assert "web-during-7" in web_text and "web-after-8" in web_text, web_text
