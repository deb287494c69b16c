"""Recording proxy mode on memory transports: the mode switch, the transport
over a channel, hostile inner streams."""

from __future__ import annotations

from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.auth import protocol as api
from teleconch.auth.types import Node
from teleconch.ca import SSHCertificateAuthority
from teleconch.conch.channel_transport import ChannelTransport
from teleconch.proxy.forward_server import (
    Forwarding,
    ForwardingNodeTransport,
    InnerFactory,
)
from teleconch.proxy.routing import Grant, Route, Target
from teleconch.proxy.sessions import Sessions
from teleconch.proxy.settings import SETTINGS_MAX_AGE, ClusterSettingsCache

NODE = Node(id="n1", name="web1", addr="127.0.0.1:22", labels={})
ROUTE = Route(
    Target("127.0.0.1", 22, NODE),
    Grant("alice", (), ()),
    "10.0.0.9",
    "root",
    "direct-tcpip",
)


class _Plain:
    """A plain node side that only notes it was asked."""

    connected = 0

    def connect(self, target: Any, events: Any) -> Any:
        from twisted.internet.defer import succeed

        self.connected += 1
        return succeed(None)


class _NoCerts:
    async def for_target(self, node_name: str) -> str:
        raise RuntimeError("no certificate in this test")


def _forwarding(
    clock: Clock, settings: ClusterSettingsCache, host_certs: Any
) -> Forwarding:
    return Forwarding(
        reactor=clock, clock=clock, agent=None, router=None,  # type: ignore[arg-type]
        policy=None, host_key=ed25519.Ed25519PrivateKey.generate(),  # type: ignore[arg-type]
        host_certs=host_certs, settings=settings, sessions=Sessions(clock),
        proxy_name="p1",
    )  # fmt: skip


def test_new_connections_follow_a_mode_change_within_ten_seconds_open_ones_keep_theirs() -> (
    None
):
    clock = Clock()
    mode = {"now": "node"}

    async def fetch() -> api.ClusterSettings:
        return api.ClusterSettings(session_recording=mode["now"])

    settings = ClusterSettingsCache(clock, fetch)
    forwarding = _forwarding(clock, settings, _NoCerts())
    plain = _Plain()
    before = forwarding.node_side(ROUTE, plain)  # type: ignore[arg-type]
    before.connect(ROUTE.target, None)  # type: ignore[arg-type]
    assert plain.connected == 1
    mode["now"] = "proxy"
    clock.advance(SETTINGS_MAX_AGE - 1)
    cached = forwarding.node_side(ROUTE, _Plain())  # type: ignore[arg-type]
    cached.connect(ROUTE.target, None)  # type: ignore[arg-type]
    assert not isinstance(cached._chosen, ForwardingNodeTransport)  # type: ignore[attr-defined]
    clock.advance(2)
    after = forwarding.node_side(ROUTE, _Plain())  # type: ignore[arg-type]
    after.connect(ROUTE.target, None).addErrback(lambda f: None)  # type: ignore[arg-type]
    assert isinstance(after._chosen, ForwardingNodeTransport)  # type: ignore[attr-defined]
    assert not isinstance(before._chosen, ForwardingNodeTransport)  # type: ignore[attr-defined]


@attrs.define
class _Channel:
    """What the splice would see of the channel under a ChannelTransport."""

    sent: list[bytes] = attrs.Factory(list)
    done: int = 0


def _inner(clock: Clock) -> tuple[ChannelTransport, _Channel]:
    ca = SSHCertificateAuthority.generate()
    key = ed25519.Ed25519PrivateKey.generate()
    cert = ca.sign_host_certificate(key.public_key(), "web1", ["web1"], 0, 2**40)

    async def fetch() -> api.ClusterSettings:
        return api.ClusterSettings(session_recording="proxy")

    forwarding = _forwarding(clock, ClusterSettingsCache(clock, fetch), _NoCerts())
    forwarding.host_key = key
    factory = InnerFactory(forwarding, ROUTE, api.ClusterSettings(), cert)
    channel = _Channel()

    def done() -> None:
        channel.done += 1

    peer = IPv4Address("TCP", "10.0.0.9", 0)
    ct = ChannelTransport(clock, channel.sent.append, done, peer, peer)
    ct.attach(factory.buildProtocol(None))
    return ct, channel


def test_garbage_on_the_inner_ssh_stream_closes_only_that_channel() -> None:
    clock = Clock()
    hostile, hostile_channel = _inner(clock)
    other, other_channel = _inner(clock)
    assert hostile_channel.sent[0].startswith(b"SSH-2.0-")
    hostile.received(b"SSH-2.0-OpenSSH_9.2\r\n" + b"\xff" * 64 + b"\x00" * 4096)
    clock.advance(1)
    assert hostile_channel.done == 1
    assert other_channel.done == 0 and not other.disconnecting
    other.received(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert other_channel.done == 0


@implementer(IPushProducer)
class _Producer:
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def test_a_full_channel_pauses_the_inner_connection_and_draining_resumes_it() -> None:
    clock = Clock()
    sent: list[bytes] = []
    peer = IPv4Address("TCP", "10.0.0.9", 0)
    ct = ChannelTransport(clock, sent.append, lambda: None, peer, peer)
    producer = _Producer()
    ct.registerProducer(producer, True)
    ct.outer_full()
    assert producer.paused
    ct.outer_drained()
    assert not producer.paused
    ct.outer_full()
    ct.unregisterProducer()
    late = _Producer()
    ct.registerProducer(late, True)
    assert late.paused  # registered while the channel is behind


def test_bytes_before_the_protocol_is_attached_are_delivered_in_order() -> None:
    from twisted.internet.protocol import Protocol

    clock = Clock()
    got: list[bytes] = []

    class Collect(Protocol):
        def dataReceived(self, data: bytes) -> None:
            got.append(data)

        def connectionLost(self, reason: Failure | None = None) -> None:
            got.append(b"<lost>")

    peer = IPv4Address("TCP", "10.0.0.9", 0)
    ct = ChannelTransport(clock, lambda b: None, lambda: None, peer, peer)
    ct.received(b"one ")
    ct.received(b"two")
    ct.attach(Collect())
    ct.received(b" three")
    ct.outer_lost()
    assert got == [b"one ", b"two", b" three", b"<lost>"]
