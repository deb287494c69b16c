"""Start real teleconch services on 127.0.0.1 (port 0) for tests, and drive them."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch import config as cfg
from teleconch import totp
from teleconch.auth.agent import AuthAgent
from teleconch.auth.types import AuditEvent
from teleconch.client.webapi import WebAPIClient
from teleconch.pki import TLSIdentity
from teleconch.service import TeleconchService

PASSWORD = "correct horse battery staple"
BIN = Path(sys.executable).parent


@implementer(IReactorTime)
class ShiftedClock:
    """The real time plus an offset a test can move forward (expiry, lock-outs)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def callLater(
        self, delay: float, callable: Callable[..., Any], *a: object, **kw: object
    ) -> IDelayedCall:
        return reactor.callLater(delay, callable, *a, **kw)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return reactor.getDelayedCalls()


def make_settings(data_dir: Path, raw: Mapping[str, Any] | None = None) -> cfg.Settings:
    doc: dict[str, Any] = {
        "teleconch": {"nodename": "testhost", "data_dir": str(data_dir)},
        "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": "test.example"},
        "proxy_service": {
            "listen_addr": "127.0.0.1:0",
            "web_listen_addr": "127.0.0.1:0",
            "peer_listen_addr": "127.0.0.1:0",
            "public_addr": "127.0.0.1",
        },
    }
    for section, values in (raw or {}).items():
        doc.setdefault(section, {}).update(values)
    return cfg.parse(doc, "<test>")


@attrs.define
class Cluster:
    service: TeleconchService
    clock: ShiftedClock
    data_dir: Path
    admin: AuthAgent | None = None
    #: The admin agent is another cluster's (`start_second_proxy`): not ours to stop.
    shares_admin: bool = False

    @property
    def settings(self) -> cfg.Settings:
        return self.service.settings

    @property
    def web_addr(self) -> cfg.HostPort:
        assert self.service.proxy is not None and self.service.proxy.web_address
        return self.service.proxy.web_address

    @property
    def auth_addr(self) -> cfg.HostPort:
        assert self.service.auth is not None and self.service.auth.address
        return self.service.auth.address

    def web(self) -> WebAPIClient:
        return WebAPIClient(reactor, self.web_addr, insecure=True)

    def admin_agent(self) -> AuthAgent:
        if self.admin is None:
            identity = TLSIdentity.load(self.data_dir / "admin")
            assert identity is not None
            self.admin = AuthAgent(reactor, [self.auth_addr], identity)
            self.admin.startService()
        return self.admin

    async def stop(self) -> None:
        if self.shares_admin:
            self.admin = None
        if self.admin is not None:
            await self.admin.stopService()
            self.admin = None
        await self.service.stopService()


async def start_cluster(
    data_dir: Path,
    raw: Mapping[str, Any] | None = None,
    clock: ShiftedClock | None = None,
) -> Cluster:
    clock = clock or ShiftedClock()
    service = TeleconchService(
        reactor, make_settings(data_dir, raw), bcrypt_rounds=4, clock=clock
    )
    service.startService()
    try:
        await service.ready
    except BaseException:
        await service.stopService()
        raise
    return Cluster(service, clock, data_dir)


async def start_second_proxy(cluster: Cluster, data_dir: Path, name: str) -> Cluster:
    """Another proxy (only) of ``cluster``, named ``name``, joined to its
    auth service with a proxy token, on the same clock.  Its ``admin`` is
    the cluster's, so `Cluster.admin_agent` works on it too; stop it
    before the cluster."""
    token = await cluster.admin_agent().create_token("proxy", 600)
    raw = {
        "teleconch": {
            "nodename": name,
            "auth_servers": [str(cluster.auth_addr)],
            "auth_token": token.token,
            "ca_pin": token.ca_pin,
        },
        "auth_service": {"enabled": False},
    }
    proxy = await start_cluster(data_dir, raw, clock=cluster.clock)
    proxy.admin = cluster.admin_agent()
    proxy.shares_admin = True
    return proxy


@attrs.frozen
class Person:
    name: str
    password: str
    totp_secret: str


def current_code(secret: str, clock: ShiftedClock, step_offset: int = 0) -> str:
    return totp.code_at(secret, totp.counter_at(clock.seconds()) + step_offset)


async def sign_up(
    cluster: Cluster,
    name: str = "alice",
    logins: Sequence[str] = ("alice", "root"),
    roles: Sequence[str] = ("access",),
) -> Person:
    """Invite ``name`` and complete the sign-up through the web API."""
    invite = await cluster.admin_agent().create_user(name, logins, roles)
    web = cluster.web()
    page = await web.get_invite(invite.token)
    await web.complete_invite(
        invite.token, PASSWORD, current_code(page["totp_secret"], cluster.clock)
    )
    # The sign-up used this step's code: the next login must wait for the next.
    cluster.clock.advance(totp.STEP)
    return Person(name, PASSWORD, page["totp_secret"])


@attrs.frozen
class ProcessResult:
    code: int
    out: str
    err: str


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes | None) -> None:
        self._stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        if self._stdin is not None:
            self.transport.write(self._stdin)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(getattr(reason.value, "exitCode", 0) or 0)


async def run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> ProcessResult:
    """Run a program without blocking the reactor the services under test run on."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proto = _Collect(stdin)
    executable = argv[0]
    if "/" not in executable:
        local = BIN / executable
        executable = (
            str(local) if local.exists() else (shutil.which(executable) or executable)
        )
    reactor.spawnProcess(proto, executable, [executable, *argv[1:]], env=full_env)
    code = await proto.done
    return ProcessResult(
        code, b"".join(proto.out).decode(), b"".join(proto.err).decode()
    )


async def wait_for_events(
    cluster: Cluster, event: str, count: int = 1, **filters: Any
) -> Sequence[AuditEvent]:
    """Audit events written after the client has gone (a splice's end) arrive shortly."""
    from twisted.internet.task import deferLater

    events: Sequence[AuditEvent] = ()
    for _ in range(200):
        events = await cluster.admin_agent().search_events(events=[event], **filters)
        if len(events) >= count:
            return events
        await deferLater(reactor, 0.05)
    raise AssertionError(f"expected {count} {event} events, found {events}")
