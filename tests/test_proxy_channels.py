"""The proxy's SSH channels in memory: ``direct-tcpip`` and the ``proxy:``
subsystem on a session channel, spoken to in packets (the rig of
tests/test_splice.py), routed by a real `Router` over the Directory double of
tests/test_routing.py, with node connects the test answers by hand.  What is
checked is what the person sees and what the audit log says: exactly one
record per routed attempt, naming the node the bytes went to."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from twisted.conch.ssh import common, connection
from twisted.internet import error as ierror
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from teleconch.auth.types import Node
from teleconch.conch.certs import Certificate
from teleconch.conch.flow import FlowControlledConnection
from teleconch.proxy.node import TCPNodeTransport
from teleconch.proxy.routing import Route, Router
from teleconch.proxy.ssh import ProxyAvatar, Session
from tests.test_routing import Directory
from tests.test_splice import MAX_PACKET, WINDOW, Client, FakeEndpoint, FakeSSHTransport

CLIENT_ADDR = "198.51.100.7"
NODES = [
    {"id": "n1", "name": "web1", "addr": "web1.internal:2222", "labels": {"env": "prod"}},
    {"id": "n2", "name": "web2", "addr": "web2.internal:22", "labels": {"env": "prod"}},
]  # fmt: skip


class World:
    """One proxy SSH connection from alice (role web-ops: root on env=prod)."""

    def __init__(self, directory: Directory | None = None) -> None:
        self.clock = Clock()
        self.directory = directory or Directory(NODES)
        self.endpoints: list[tuple[str, FakeEndpoint]] = []
        self.router = Router(
            self.directory, self.clock, "example.com", False, node_side=self._node_side
        )
        cert = SimpleNamespace(
            key_id="alice",
            extensions={
                "teleconch-roles": json.dumps({"roles": ["web-ops"]}).encode(),
                "teleconch-traits": json.dumps({"logins": []}).encode(),
            },
        )
        session = Session("root", cast(Certificate, cert), CLIENT_ADDR)
        self.avatar = ProxyAvatar(session, self.router)
        self.transport = FakeSSHTransport(self.avatar)
        self.conn = FlowControlledConnection()
        self.conn.transport = self.transport  # type: ignore[assignment]
        self.conn.serviceStarted()
        self.client = Client(self.conn, self.transport)

    def _node_side(self, route: Route) -> TCPNodeTransport:
        endpoint = FakeEndpoint()
        self.endpoints.append((route.target.name, endpoint))
        return TCPNodeTransport(lambda _: endpoint)

    def direct_tcpip(self, host: str, port: int) -> None:
        self.conn.packetReceived(
            connection.MSG_CHANNEL_OPEN,
            common.NS(b"direct-tcpip")
            + struct.pack(">3L", 7, WINDOW, MAX_PACKET)
            + common.NS(host.encode())
            + struct.pack(">L", port)
            + common.NS(b"127.0.0.1")
            + struct.pack(">L", 50000),
        )
        self.client.poll()

    def request(self, kind: bytes, data: bytes = b"") -> None:
        self.client._send(
            connection.MSG_CHANNEL_REQUEST, common.NS(kind) + b"\x01" + data
        )

    def subsystem(self, name: str) -> None:
        self.request(b"subsystem", common.NS(name.encode()))

    def replies(self) -> list[str]:
        """The server's answers to our channel requests, in order."""
        names = {
            connection.MSG_CHANNEL_SUCCESS: "success",
            connection.MSG_CHANNEL_FAILURE: "failure",
        }
        return [names[k] for k, _ in self.transport.packets if k in names]

    def exit_statuses(self) -> list[int]:
        out = []
        for kind, body in self.transport.packets:
            if kind == connection.MSG_CHANNEL_REQUEST:
                name, rest = common.getNS(body[4:])
                if name == b"exit-status":
                    out.append(struct.unpack(">L", rest[1:5])[0])
        return out

    def audit(self) -> list[tuple[Any, ...]]:
        return [
            (e["event"], e["success"], e["node"], e["reason"])
            for e in self.directory.events
        ]


def test_a_second_subsystem_request_is_refused_and_the_audit_names_the_first_node() -> (
    None
):
    """proxy:web1 starts connecting; proxy:web2 on the same channel is refused
    (as OpenSSH refuses a second subsystem) and never routed; the session
    record names web1, where the bytes went."""
    w = World()
    w.client.open(b"session")
    w.subsystem("proxy:web1:22")
    w.subsystem("proxy:web2:22")
    assert w.replies() == ["success", "failure"]
    assert [name for name, _ in w.endpoints] == ["web1"]
    [(_, endpoint)] = w.endpoints
    _node, node_tcp = endpoint.succeed()
    w.client.poll()
    w.client.send(b"SSH-2.0-client\r\n")
    assert node_tcp.value() == b"SSH-2.0-client\r\n"
    w.client.close()
    assert node_tcp.disconnecting
    _node.connectionLost(Failure(ierror.ConnectionDone()))
    assert [(ev, ok, node) for ev, ok, node, _ in w.audit()] == [
        ("proxy.session", True, "web1")
    ]


def test_a_subsystem_request_after_a_shell_is_refused() -> None:
    """A shell gets the usage text and exit 1; a subsystem asked after it
    does not route (the channel is closing)."""
    w = World()
    w.client.open(b"session")
    w.request(b"shell")
    w.subsystem("proxy:web1:22")
    assert w.replies() == ["success", "failure"]
    assert w.endpoints == [] and w.directory.events == []
    assert b"does not run commands itself" in w.client.stderr


def test_a_failed_direct_tcpip_connect_is_audited_as_a_failure_not_a_session() -> None:
    """web1 refuses the TCP connect: the open fails, and the one record is a
    failed proxy.connect with the reason, not a successful proxy.session."""
    w = World()
    w.direct_tcpip("web1", 22)
    [(_, endpoint)] = w.endpoints
    endpoint.fail(ierror.ConnectionRefusedError())
    w.client.poll()
    assert w.client.failure is not None
    assert w.audit() == [
        ("proxy.connect", False, "web1", "connect failed: Connection refused")
    ]


def test_a_failed_subsystem_connect_is_audited_as_a_failure_not_a_session() -> None:
    """The same through ``ssh -s proxy:web1:22``."""
    w = World()
    w.client.open(b"session")
    w.subsystem("proxy:web1:22")
    [(_, endpoint)] = w.endpoints
    endpoint.fail(ierror.ConnectionRefusedError())
    w.client.poll()
    w.client.close()
    assert w.audit() == [
        ("proxy.connect", False, "web1", "connect failed: Connection refused")
    ]


class DownDirectory(Directory):
    """The auth service cannot be reached."""

    async def list_nodes(self) -> list[Node]:
        raise ConnectionError("auth service unreachable")


def test_an_auth_service_outage_is_explained_on_stderr_and_audited() -> None:
    """The subsystem is accepted, the person is told what happened, exit 1,
    and the refusal is audited with why."""
    w = World(DownDirectory(NODES))
    w.client.open(b"session")
    w.subsystem("proxy:web1:22")
    w.clock.advance(0)
    w.client.poll()
    assert w.replies() == ["success"]
    assert bytes(w.client.stderr) == (
        b"teleconch: the proxy could not reach the auth service to route the "
        b"request; try again\n"
    )
    assert w.exit_statuses() == [1]
    assert w.audit() == [("proxy.connect", False, "web1", "routing backend error")]


class BrokenRouter(Router):
    async def route(self, *args: Any, **kw: Any) -> Route:
        raise RuntimeError("a bug")


def test_an_unexpected_routing_error_is_explained_on_stderr() -> None:
    """Whatever goes wrong in routing, the subsystem says so and exits 1."""
    w = World()
    w.router.__class__ = BrokenRouter
    w.client.open(b"session")
    w.subsystem("proxy:web1:22")
    w.clock.advance(0)
    w.client.poll()
    assert w.replies() == ["success"]
    assert b"could not route the request; try again" in w.client.stderr
    assert w.exit_statuses() == [1]


def test_malformed_and_other_cluster_proxy_requests_are_audited() -> None:
    """``proxy:web1`` (no port) and ``proxy:web1:22@other`` are refused with
    the expected format, and each refusal is audited once."""
    records: list[Sequence[Any]] = []
    for name in ("proxy:web1", "proxy:web1:22@other"):
        w = World()
        w.client.open(b"session")
        w.subsystem(name)
        w.clock.advance(0)
        w.client.poll()
        assert b"invalid format for proxy request" in w.client.stderr
        assert w.exit_statuses() == [1]
        records += w.audit()
    assert records == [
        ("proxy.connect", False, "proxy:web1", "invalid proxy request"),
        ("proxy.connect", False, "web1", "another cluster"),
    ]
