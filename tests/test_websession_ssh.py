"""Opening the node side of a web terminal (teleconch.proxy.websession_ssh).

Unit tests, in memory: the real `Router` over a fake directory, the real
`WebSessionKeys`, and a fake ``connect_ssh`` that records what the finished
client was asked for and answers with a fake connection (or raises what the
real one would).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import attrs
import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from teleconch.auth import protocol as api
from teleconch.conch.client import LoginRefused
from teleconch.conch.hostcert import HostKeyRefused
from teleconch.conch.session import ExitStatus
from teleconch.proxy.routing import AccessDenied, Router
from teleconch.proxy.sessions import HubState, Sessions
from teleconch.proxy.websession_ssh import TERM, WINDOW, ShellOpenFailed, WebTerminals
from teleconch.web.keys import WebSessionKeys
from tests.terminal_fakes import NOW, FakeParty, FakeRegistry, web_session
from tests.test_routing import Directory

T = TypeVar("T")

NODE = {"id": "n-1", "name": "web1", "addr": "10.0.0.1:2222", "labels": {"env": "prod"}}
CREDS = api.WebCredentials("cookie", "bearer", 1800)


def now(coro: Coroutine[Any, Any, T]) -> T:
    results: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


@attrs.define
class FakeChannel:
    kwargs: dict[str, Any]
    requests: list[tuple[Any, ...]] = attrs.field(factory=list)
    exit: Deferred[ExitStatus] = attrs.field(factory=Deferred)
    localMaxPacket: int = 32 * 1024
    localWindowSize: int = WINDOW
    localWindowLeft: int = WINDOW

    async def request_pty(self, term: str, cols: int, rows: int) -> None:
        self.requests.append(("pty", term, cols, rows))

    async def shell(self) -> None:
        self.requests.append(("shell",))


@attrs.define
class FakeConnection:
    channels: list[FakeChannel] = attrs.field(factory=list)
    closed: bool = False

    async def open_session(self, **kwargs: Any) -> FakeChannel:
        self.channels.append(FakeChannel(kwargs))
        return self.channels[-1]

    def close(self) -> None:
        self.closed = True


@attrs.define
class Agent(FakeRegistry):
    signed: list[str] = attrs.field(factory=list)

    async def sign_web_session_key(
        self, creds: api.WebCredentials, pub_key: str
    ) -> api.WebSessionCertificate:
        self.signed.append(pub_key)
        return api.WebSessionCertificate(
            "ssh-ed25519-cert-v01@openssh.com AAAA", int(NOW) + 3600
        )

    async def cluster_cas(self) -> api.ClusterCAs:
        return api.ClusterCAs("test.example", ("user-ca",), ("host-ca-line",))


class Rig:
    def __init__(self, refusal: Exception | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.directory = Directory([NODE])
        self.agent = Agent()
        self.conn = FakeConnection()
        self.asked: list[dict[str, Any]] = []
        self.refusal = refusal
        self.terminals = WebTerminals(
            reactor=self.clock,
            agent=self.agent,
            router=Router(self.directory, self.clock, "test.example", False),
            keys=WebSessionKeys(self.clock),
            sessions=Sessions(self.clock),
            proxy_name="proxy-a",
            connect=self._connect,
        )
        self.party = FakeParty()

    async def _connect(
        self, reactor: Any, addr: Any, login: str, creds: Any, **kw: Any
    ) -> Any:
        self.asked.append({"addr": addr, "login": login, "creds": creds, **kw})
        if self.refusal is not None:
            raise self.refusal
        return self.conn

    def open(self, login: str = "root") -> Any:
        return now(
            self.terminals.open(
                info=web_session(roles=("web-ops",)),
                creds=CREDS,
                server_id="web1",
                login=login,
                cols=120,
                rows=40,
                party=self.party,
                client_addr="203.0.113.9",
            )
        )


def test_a_web_terminal_logs_in_with_the_sessions_key_and_checks_the_host_ca() -> None:
    """The node's registered address, the login, the web session's certificate
    (signed for a key made here), the host CA, the node's name to check it for;
    then a PTY at the browser's size and a shell, on a window the hub opens."""
    rig = Rig()
    hub = rig.open()
    [asked] = rig.asked
    assert asked["addr"] == ("10.0.0.1", 2222) and asked["login"] == "root"
    assert asked["host_ca_keys"] == ("host-ca-line",)
    assert asked["host_name"] == "web1"
    assert asked["creds"].certificate.startswith("ssh-ed25519-cert-v01@openssh.com")
    assert rig.agent.signed == [
        rig.terminals._keys.get(web_session().id).public_key  # type: ignore[union-attr]
    ]
    [channel] = rig.conn.channels
    assert channel.kwargs["auto_window"] is False and channel.kwargs["window"] == WINDOW
    assert channel.requests == [("pty", TERM, 120, 40), ("shell",)]
    assert hub.state is HubState.RUNNING
    record = rig.agent.calls[0][1]
    assert (record.user, record.node, record.node_id, record.login) == (
        "alice",
        "web1",
        "n-1",
        "root",
    )
    assert rig.terminals.sessions.get(hub.id) is hub
    assert record.owner_roles == ("web-ops",)  # joiners' rules name these


def test_the_shell_exiting_closes_the_connection_and_ends_the_hub() -> None:
    rig = Rig()
    hub = rig.open()
    rig.conn.channels[0].exit.callback(ExitStatus(code=3))
    assert rig.conn.closed and hub.state is HubState.ENDED
    assert rig.agent.calls[-1] == ("end", (hub.id, 3, "the shell exited with status 3"))
    assert rig.terminals.sessions.get(hub.id) is None


def test_a_login_the_roles_do_not_allow_is_refused_by_the_router_and_audited() -> None:
    rig = Rig()
    with pytest.raises(AccessDenied, match="login 'admin' is not allowed on web1"):
        rig.open(login="admin")
    [event] = rig.directory.events
    assert event["event"] == "proxy.connect" and event["how"] == "web"
    assert event["success"] is False and event["reason"] == "login not allowed"
    assert rig.asked == []


def test_a_plain_host_key_is_refused_with_a_message_saying_so() -> None:
    rig = Rig(
        HostKeyRefused(
            "web1: remote host presented a public key (ssh-ed25519), expected a host "
            "certificate from the cluster's host CA; refusing to connect"
        )
    )
    with pytest.raises(ShellOpenFailed) as e:
        rig.open()
    assert str(e.value) == (
        "cannot open a terminal: web1: remote host presented a public key (ssh-ed25519), "
        "expected a host certificate from the cluster's host CA; refusing to connect. "
        "An administrator can give the node a host certificate with "
        "`teleconch-ctl auth sign --host web1`"
    )
    [event] = rig.directory.events
    assert event["event"] == "proxy.connect" and event["success"] is False
    assert event["reason"] == "host certificate refused" and event["how"] == "web"


@pytest.mark.parametrize(
    ("error", "start", "reason"),
    [
        (
            LoginRefused("the node refused the user certificate"),
            "web1 refused the login 'root': the node refused the user certificate",
            "login refused",
        ),
        (
            ierror.ConnectionRefusedError(),
            "could not reach web1 at 10.0.0.1:2222 (connection refused)",
            "connect failed",
        ),
    ],
)
def test_a_node_that_will_not_have_us_says_why(
    error: Exception, start: str, reason: str
) -> None:
    rig = Rig(error)
    with pytest.raises(ShellOpenFailed) as e:
        rig.open()
    assert str(e.value).startswith(start), str(e.value)
    assert "(" not in str(e.value).split(":")[0]
    assert rig.directory.events[0]["reason"].startswith(reason)
    assert rig.agent.calls == []  # never registered
