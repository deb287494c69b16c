"""Proxy peering between real proxies: a web terminal session held by proxy A
is joined from proxy B, over real mutual TLS on loopback.

Interop: one auth service with two proxies in this process (proxy B joined
with a proxy token, `tests.harness.start_second_proxy`), Debian's OpenSSH
sshd as the node, and a WebSocket client (Autobahn, over real TLS) standing
for the browser that opens the session on proxy A.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from teleconch.auth.types import ActiveSession, Party
from teleconch.proxy.peering import PeerJoinFailed
from teleconch.proxy.routing import Grant
from teleconch.proxy.service import ProxyService
from tests.harness import (
    Cluster,
    current_code,
    start_second_proxy,
    wait_for_events,
)
from tests.test_peering import RemoteParty
from tests.test_web_terminal import Node, a_node
from tests.webclient import COOKIE, Secrets, log_in

pytestmark = pytest.mark.interop


async def eventually(check: Callable[[], bool], what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if check():
            return
        await deferLater(reactor, 0.025)
    raise AssertionError(f"never happened: {what}")


class Browser(WebSocketClientProtocol):
    """The web terminal page, as far as the socket goes: the token first,
    then acknowledgements of every output byte."""

    def __init__(self) -> None:
        super().__init__()
        self.token = ""
        self.texts: list[dict[str, Any]] = []
        self.output = b""
        self.closed: Deferred[None] = Deferred()

    def onOpen(self) -> None:
        self.sendMessage(json.dumps({"token": self.token}).encode(), isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.output += payload
            ack = {"type": "ack", "bytes": len(payload)}
            self.sendMessage(json.dumps(ack).encode(), isBinary=False)
        else:
            self.texts.append(json.loads(payload))

    def type(self, text: str) -> None:
        self.sendMessage(text.encode(), isBinary=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.closed.called:
            self.closed.callback(None)


async def open_terminal(cluster: Cluster, secrets: Secrets) -> Browser:
    """A web terminal for root@web1 on ``cluster``'s proxy, as the page opens it."""
    addr = cluster.web_addr
    params = {"server_id": "web1", "login": "root", "term": {"w": 100, "h": 30}}
    url = (
        f"wss://{addr.host}:{addr.port}/v1/webapi/sites/test.example/connect"
        f"?params={quote(json.dumps(params))}"
    )
    factory = WebSocketClientFactory(
        url,
        origin=f"https://{addr.host}:{addr.port}",
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


@attrs.define
class TwoProxies:
    node: Node
    b: Cluster
    secrets: Secrets

    @property
    def a(self) -> Cluster:
        return self.node.cluster

    @property
    def proxy_a(self) -> ProxyService:
        assert self.a.service.proxy is not None
        return self.a.service.proxy

    @property
    def proxy_b(self) -> ProxyService:
        assert self.b.service.proxy is not None
        return self.b.service.proxy

    async def live(self, session_id: str) -> ActiveSession:
        """The session as any proxy lists it (the auth service's record)."""
        found: list[ActiveSession] = []

        async def look() -> None:
            sessions = await self.a.admin_agent().list_active_sessions()
            found[:] = [s for s in sessions if s.id == session_id]

        for _ in range(200):
            await look()
            if found:
                return found[0]
            await deferLater(reactor, 0.025)
        raise AssertionError(f"session {session_id} never registered")


@pytest_twisted.async_yield_fixture
async def two(tmp_path: Path) -> AsyncIterator[TwoProxies]:
    async with a_node(tmp_path) as node:
        b = await start_second_proxy(node.cluster, tmp_path / "proxy-b", "proxy-b")
        try:
            alice = node.alice
            code = current_code(alice.totp_secret, node.cluster.clock)
            secrets = await log_in(
                node.cluster.web_addr, alice.name, alice.password, code
            )
            yield TwoProxies(node, b, secrets)
        finally:
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_session_on_proxy_a_is_joined_from_proxy_b(two: TwoProxies) -> None:
    """The session opened on A is registered with A's peer address; B's
    PeerClient joins it as a peer: B's party sees the owner's output, B's
    keys reach the shell (and the owner sees their output), the join is
    audited naming proxy-b, and leaving leaves the owner's session running."""
    browser = await open_terminal(two.a, two.secrets)
    (frame,) = [t for t in browser.texts if t["type"] == "session"]
    session = await two.live(frame["id"])
    assert session.proxy_addr == str(two.proxy_a.peer_public_addr)
    assert session.proxy_addr.startswith("127.0.0.1:")

    party = RemoteParty(record=Party("party-b-1", "alice", "127.0.0.1", "peer"))
    assert two.proxy_b.peers is not None
    hub = await two.proxy_b.peers.join(session, party, party.record)
    assert party.hub is hub and hub.id == session.id
    browser.type("echo owner-$((6*7))\r")
    await eventually(
        lambda: b"owner-42" in b"".join(party.received), "owner's output at B"
    )
    hub.input(party, b"echo peer-$((7*7))\r")
    await eventually(lambda: b"peer-49" in browser.output, "peer's output at the owner")
    await eventually(
        lambda: b"peer-49" in b"".join(party.received), "peer's output at B"
    )

    (joined,) = await wait_for_events(two.a, "session.peer_join")
    assert joined.success and joined.user == "alice"
    assert joined.fields["peer_proxy"] == "proxy-b"
    assert joined.fields["session_id"] == session.id
    assert joined.fields["mode"] == "peer"

    hub.leave(party, "done watching")
    await eventually(
        lambda: len(two.proxy_a.terminal_sessions.get(session.id).parties) == 1,  # type: ignore[union-attr]
        "the peer party gone at A",
    )
    browser.type("echo still-$((5*5))\r")
    await eventually(
        lambda: b"still-25" in browser.output, "the owner's session going on"
    )
    browser.type("exit 0\r")
    await browser.closed


@pytest_twisted.ensureDeferred
async def test_proxy_bs_joining_reaches_a_session_held_by_proxy_a(
    two: TwoProxies,
) -> None:
    """What ``teleconch join`` and the web's join call at B (`Joining.join`,
    after its may-join check) goes to A through peering for a session A
    holds: the joiner sees the owner's output."""
    browser = await open_terminal(two.a, two.secrets)
    (frame,) = [t for t in browser.texts if t["type"] == "session"]
    await two.live(frame["id"])
    party = RemoteParty(record=Party("party-b-3", "alice", "127.0.0.1", "observer"))
    assert two.proxy_b.joining is not None
    grant = Grant("alice", ("access",), ())
    hub = await two.proxy_b.joining.join(grant, frame["id"], party, "ssh")
    assert hub.id == frame["id"]
    browser.type("echo via-b-$((8*8))\r")
    await eventually(
        lambda: b"via-b-64" in b"".join(party.received), "owner's output at B"
    )
    hub.leave(party, "done")
    browser.type("exit 0\r")
    await browser.closed


@pytest_twisted.ensureDeferred
async def test_an_observer_joined_from_another_proxy_cannot_type(
    two: TwoProxies,
) -> None:
    """Keys an observer types at B are dropped by A, the holder; the
    session's end (exit status) reaches B's party."""
    browser = await open_terminal(two.a, two.secrets)
    (frame,) = [t for t in browser.texts if t["type"] == "session"]
    session = await two.live(frame["id"])
    party = RemoteParty(record=Party("party-b-2", "alice", "127.0.0.1", "observer"))
    assert two.proxy_b.peers is not None
    hub = await two.proxy_b.peers.join(session, party, party.record)
    hub.input(party, b"echo observed-$((3*3))\r")
    browser.type("echo marker-$((2*2))\r")
    await eventually(lambda: b"marker-4" in b"".join(party.received), "the marker at B")
    assert b"observed-9" not in browser.output
    assert b"observed-9" not in b"".join(party.received)
    browser.type("exit 3\r")
    await eventually(lambda: bool(party.endings), "the end at B")
    assert party.endings[0].exit_code == 3


@pytest_twisted.ensureDeferred
async def test_joining_a_session_that_is_not_there_says_so(two: TwoProxies) -> None:
    """A stale record (the session ended, or never was on A) is refused by
    A with a message the person can read; a record pointing at a closed port
    says the proxy cannot be reached."""
    browser = await open_terminal(two.a, two.secrets)
    (frame,) = [t for t in browser.texts if t["type"] == "session"]
    session = await two.live(frame["id"])
    party = RemoteParty(record=Party("party-b-3", "alice", "127.0.0.1", "peer"))
    assert two.proxy_b.peers is not None
    stale = attrs.evolve(session, id="no-such-session")
    with pytest.raises(PeerJoinFailed, match="is not running on proxy"):
        await two.proxy_b.peers.join(stale, party, party.record)
    nowhere = attrs.evolve(session, proxy_addr="127.0.0.1:1")
    with pytest.raises(PeerJoinFailed, match="cannot reach the proxy"):
        await two.proxy_b.peers.join(nowhere, party, party.record)
    browser.type("exit 0\r")
    await browser.closed
