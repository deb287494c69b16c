"""The Auth API's AMP side in memory, for tests: an AuthServer on a list of
audit rows, connections on a StringTransport that plays the TLS transport (a
peer certificate or none), time on a task.Clock."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, cast

import pytest
from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.protocols import amp
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.auth.api import AuthAPIFactory, AuthAPIProtocol
from teleconch.auth.server import AuthServer
from teleconch.auth.types import AuditEvent
from teleconch.ca import SSHCertificateAuthority
from teleconch.pki import TLSAuthority

KIB = 1024


class AuditRows:
    """Just enough of the Store for AuthServer.audit: rows kept in a list."""

    def __init__(self) -> None:
        self.rows: list[AuditEvent] = []

    async def append_event(self, event: AuditEvent) -> int:
        self.rows.append(event)
        return len(self.rows)

    def denied(self) -> list[AuditEvent]:
        return [r for r in self.rows if r.event == "auth.api.denied"]


# Only getPeerCertificate is read; the TCP options of ITCPTransport are not.
@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):  # type: ignore[misc]
    """A StringTransport that says which certificate the peer showed."""

    def __init__(self, host: str, cert: x509.Certificate | None) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.cert = cert

    def getPeerCertificate(self) -> x509.Certificate | None:
        return self.cert


@pytest.fixture(scope="module")
def tls_ca() -> TLSAuthority:
    return TLSAuthority.generate("test.example", 0.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> AuditRows:
    return AuditRows()


@pytest.fixture
def server(tls_ca: TLSAuthority, clock: Clock, store: AuditRows) -> AuthServer:
    return AuthServer(
        clock=clock,
        threads=None,
        store=store,  # type: ignore[arg-type]
        cluster_name="test.example",
        user_ca=SSHCertificateAuthority.generate(),
        host_ca=SSHCertificateAuthority.generate(),
        tls_ca=tls_ca,
        default_public_addr="127.0.0.1:3080",
        auth_addr="127.0.0.1:3025",
    )


@pytest.fixture
def factory(server: AuthServer, clock: Clock) -> Iterator[AuthAPIFactory]:
    f = AuthAPIFactory(server, clock)
    f.doStart()
    yield f
    f.doStop()


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    yield events
    globalLogPublisher.removeObserver(cast(ILogObserver, events.append))


def cert_for(tls_ca: TLSAuthority, role: str, name: str) -> x509.Certificate:
    identity = tls_ca.issue_identity(role, name, 0.0, 3600)
    return x509.load_pem_x509_certificate(identity.cert_pem)


class Conn:
    """One client connection to the Auth API, in memory."""

    def __init__(
        self,
        factory: AuthAPIFactory,
        host: str = "10.0.0.1",
        cert: x509.Certificate | None = None,
        handshake: bool = True,
    ) -> None:
        self.transport = TLSStringTransport(host, cert)
        proto = factory.buildProtocol(self.transport.getPeer())
        assert isinstance(proto, AuthAPIProtocol)
        self.proto = proto
        proto.makeConnection(self.transport)
        if handshake and not self.transport.disconnected:
            proto.handshakeCompleted()

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def call(self, command: type[amp.Command], tag: bytes = b"1", **kw: Any) -> None:
        box = command.makeArguments(kw, self.proto)
        box[b"_command"] = command.commandName
        box[b"_ask"] = tag
        self.send(box.serialize())

    def answers(self) -> list[dict[bytes, bytes]]:
        boxes: list[dict[bytes, bytes]] = []
        strings: list[bytes] = []
        parser = Int16StringReceiver()
        parser.stringReceived = strings.append  # type: ignore[method-assign]
        parser.dataReceived(self.transport.value())
        box: dict[bytes, bytes] = {}
        it = iter(strings)
        for key in it:
            if not key:
                boxes.append(box)
                box = {}
            else:
                box[key] = next(it)
        return boxes

    @property
    def cut(self) -> bool:
        return bool(self.transport.disconnected)

    def close(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def pair(key: bytes, value: bytes) -> bytes:
    return struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value


def tracebacks(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "log_failure" in e]


def warnings_about(events: list[LogEvent], word: str) -> list[LogEvent]:
    return [
        e
        for e in events
        if e.get("log_level") in (LogLevel.info, LogLevel.warn)
        and e.get("log_namespace", "").startswith("teleconch")
        and word in formatEvent(e)
    ]


def box(*pairs: tuple[bytes, bytes]) -> bytes:
    """A whole box on the wire, its pairs in this order."""
    return b"".join(pair(k, v) for k, v in pairs) + struct.pack("!H", 0)


def namespaced(events: list[LogEvent]) -> list[LogEvent]:
    """Our own log lines (not Twisted's connection notices)."""
    return [e for e in events if e.get("log_namespace", "").startswith("teleconch")]
