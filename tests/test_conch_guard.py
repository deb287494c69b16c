"""The proxy's SSH server (3023) against hostile peers, in memory.

Raw tests write plaintext packets into a ``StringTransport`` before any key
exchange; the others run our Conch client against the proxy's transport over
``twisted.test.iosim`` and then send what a real client never would.  Time is
a ``Clock``; nothing here opens a socket.
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.ssh import connection
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import (
    DISCONNECT_BY_APPLICATION,
    DISCONNECT_PROTOCOL_ERROR,
    DISCONNECT_SERVICE_NOT_AVAILABLE,
    MSG_DEBUG,
    MSG_DISCONNECT,
    MSG_EXT_INFO,
    MSG_KEX_DH_GEX_INIT,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_SERVICE_ACCEPT,
    MSG_SERVICE_REQUEST,
    MSG_UNIMPLEMENTED,
)
from twisted.conch.ssh.userauth import (
    MSG_USERAUTH_FAILURE,
    MSG_USERAUTH_REQUEST,
    MSG_USERAUTH_SUCCESS,
)
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.test import iosim
from zope.interface import provider

from teleconch.conch.limits import ABORT_AFTER
from teleconch.proxy.routing import RoutingError
from teleconch.proxy.ssh import ProxyAvatar, ProxySSHFactory, Session, make_factory
from tests.test_conch_certs import CA, ED_CERT, NOW, Policy, cert_blob
from tests.test_conch_transport import HOST_KEY, MemoryClient

PEER = "192.0.2.7"
CONN = b"ssh-connection"


# -- wiring ---------------------------------------------------------------------


class NoPolicy:
    """The userauth policy: no CA is trusted (these tests never log in)."""

    refusal_message = "teleconch: run teleconch login"

    async def trusted_user_cas(self) -> list[str]:
        return []

    def on_refused(self, username: str, reason: str, client: str | None) -> None:
        pass


class StubRouter:
    """Routes nowhere: every node is unknown."""

    cluster_name = "test.example"

    def __init__(self) -> None:
        self.reactor = Clock()

    async def route(self, *args: Any) -> Any:
        raise RoutingError("no such node", "unknown node")

    async def reachable(self, session: Any) -> list[Any]:
        return []


def proxy_factory(clock: Clock | None = None, **limits: Any) -> ProxySSHFactory:
    """The proxy's SSH factory with a fixed host key and no auth service."""
    kw: dict[str, Any] = {}
    if limits:
        from teleconch.conch.limits import SSHLimits

        kw["limits"] = SSHLimits(**limits)
    factory = make_factory(
        None,  # type: ignore[arg-type]  # no routing in these tests
        NoPolicy(),  # type: ignore[arg-type]
        HOST_KEY,
        None,
        clock or Clock(),
        **kw,
    )
    factory.startFactory()
    return factory


def raw(
    factory: ProxySSHFactory, host: str = PEER, port: int = 40000
) -> tuple[Any, StringTransport]:
    """A server-side connection from ``host``; the test plays the client."""
    address = IPv4Address("TCP", host, port)
    server = factory.buildProtocol(address)
    wire = StringTransport(peerAddress=address)
    server.makeConnection(wire)
    return server, wire


def plain(messageNum: int, payload: bytes) -> bytes:
    """One packet as sent before any keys (block size 8)."""
    body = bytes([messageNum]) + payload
    pad = 8 - (5 + len(body)) % 8
    if pad < 4:
        pad += 8
    return struct.pack(">LB", 1 + len(body) + pad, pad) + body + b"\0" * pad


HELLO = b"SSH-2.0-OpenSSH_9.2p1 test\r\n"
UNEXPECTED_SERVICE_REQUEST = b"unexpected SERVICE_REQUEST message"


def sent(wire: StringTransport) -> list[tuple[int, bytes]]:
    """The plaintext packets the server wrote after its version line."""
    data = wire.value()
    if not data.startswith(b"SSH-"):
        return []
    data = data[data.index(b"\n") + 1 :]
    out = []
    while len(data) >= 5:
        length, pad = struct.unpack(">LB", data[:5])
        body = data[5 : 4 + length - pad]
        out.append((body[0], body[1:]))
        data = data[4 + length :]
    return out


def disconnect(wire: StringTransport) -> tuple[int, bytes] | None:
    for num, payload in sent(wire):
        if num == MSG_DISCONNECT:
            return struct.unpack(">L", payload[:4])[0], getNS(payload[4:])[0]
    return None


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event while the test runs."""
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def tracebacks(events: list[dict[str, Any]]) -> list[str]:
    """Failures and error-level lines: what must never come from bad input."""
    bad = [
        e
        for e in events
        if "log_failure" in e
        or e.get("log_level") in (LogLevel.error, LogLevel.critical)
        or e.get("isError")
    ]
    return [formatEvent(e) for e in bad]


def lines(events: list[dict[str, Any]], text: str) -> list[str]:
    return [formatEvent(e) for e in events if text in formatEvent(e)]


class Client(MemoryClient):
    """Our client transport; keeps every packet, requests no service itself."""

    def connectionMade(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        super().connectionMade()

    def connectionSecure(self) -> None:
        self.secured += 1

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.packets.append((messageNum, payload))
        if messageNum < 50 and messageNum != 6:  # no SERVICE_ACCEPT: no service
            super().dispatchMessage(messageNum, payload)


def secured(
    factory: ProxySSHFactory | None = None,
) -> tuple[Client, Any, iosim.IOPump]:
    """A client and the proxy's server transport after the key exchange."""
    factory = factory or proxy_factory()
    address = IPv4Address("TCP", PEER, 40001)
    server = factory.buildProtocol(address)
    client = Client()
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, False, peerAddress=address),
        client,
        iosim.makeFakeClient(client),
    )
    assert client.secured == 1
    return client, server, pump


def logged_in(factory: ProxySSHFactory | None = None) -> tuple[Client, Any, Any]:
    """As ``secured``, then as if userauth had accepted alice: ssh-connection runs."""
    factory = factory or proxy_factory()
    client, server, pump = secured(factory)
    session = Session("alice", None, PEER)  # type: ignore[arg-type]
    server.avatar = ProxyAvatar(session, StubRouter())  # type: ignore[arg-type]
    server.logoutFunction = lambda: None
    server.setService(factory.services[b"ssh-connection"]())
    return client, server, pump


def open_session(client: Client, pump: iosim.IOPump, sender: int) -> None:
    client.sendPacket(
        connection.MSG_CHANNEL_OPEN,
        NS(b"session") + struct.pack(">3L", sender, 65536, 32768),
    )
    pump.flush()


# -- algorithms -------------------------------------------------------------------


def test_the_proxy_offers_only_encrypt_then_mac_and_our_client_still_connects() -> None:
    """No encrypt-and-MAC on 3023 (ssh-audit warns on it): our client on a CTR
    cipher gets an -etm MAC; its default, an AEAD cipher, needs none."""
    client = Client()
    client.supportedCiphers = [b"aes128-ctr"]
    factory = proxy_factory()
    server = factory.buildProtocol(None)
    iosim.connect(
        server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
    )
    assert client.secured == 1
    assert server.currentEncryptions.inMACType == b"hmac-sha2-256-etm@openssh.com"
    assert [
        m for m in server.supportedMACs if not m.endswith(b"-etm@openssh.com")
    ] == []
    _, defaultServer, _ = secured(factory)
    assert (
        defaultServer.currentEncryptions.inCipType == b"chacha20-poly1305@openssh.com"
    )


def test_re_keying_either_way_still_works_through_the_guard() -> None:
    """The KEX message checks allow a later key exchange from either side."""
    client, server, pump = secured()
    for side in (client, server):
        old = server.currentEncryptions
        side.sendKexInit()
        pump.flush()
        assert server.currentEncryptions is not old
        if server.service is None:
            client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
        else:
            client.sendPacket(
                MSG_USERAUTH_REQUEST, NS(b"alice") + NS(CONN) + NS(b"none")
            )
        pump.flush()
        assert client.errors == []
    assert server.service is not None
    assert [m for m, _ in client.packets if m >= 50] == [MSG_USERAUTH_FAILURE]


# -- item 7: before key exchange ---------------------------------------------------


def test_service_request_before_key_exchange_is_refused(logged: Any) -> None:
    """A plaintext SERVICE_REQUEST for ssh-userauth before any NEWKEYS starts
    no service: DISCONNECT PROTOCOL_ERROR, one line, no traceback."""
    server, wire = raw(proxy_factory())
    server.dataReceived(HELLO + plain(MSG_SERVICE_REQUEST, NS(b"ssh-userauth")))
    assert server.service is None
    assert disconnect(wire) == (
        DISCONNECT_PROTOCOL_ERROR,
        b"service request before key exchange",
    )
    assert wire.disconnecting
    assert tracebacks(logged) == []


@pytest.mark.parametrize(
    ("messageNum", "payload", "name"),
    [
        (MSG_EXT_INFO, struct.pack(">L", 1) + NS(b"server-sig-algs") + NS(b"x"), b"EXT_INFO"),
        (MSG_USERAUTH_REQUEST, NS(b"root") + NS(b"ssh-connection") + NS(b"none"),
         b"USERAUTH_REQUEST"),
        (connection.MSG_CHANNEL_OPEN, NS(b"session") + struct.pack(">3L", 0, 1, 1),
         b"CHANNEL_OPEN"),
        (connection.MSG_GLOBAL_REQUEST, NS(b"tcpip-forward") + b"\1", b"GLOBAL_REQUEST"),
        (0, b"junk", b"type 0"),
        (9, b"junk", b"type 9"),
        (128, b"junk", b"type 128"),
        (200, b"junk", b"type 200"),
    ],
)  # fmt: skip
def test_a_non_kex_message_before_the_first_newkeys_is_refused(
    logged: Any, messageNum: int, payload: bytes, name: bytes
) -> None:
    """RFC 4253 7.1: until the keys are in use only transport-generic and
    key exchange messages may come. Anything else ends the connection at once
    (no UNIMPLEMENTED queued behind the key exchange, no log of the payload)."""
    server, wire = raw(proxy_factory())
    server.dataReceived(HELLO + plain(messageNum, payload))
    assert disconnect(wire) == (
        DISCONNECT_PROTOCOL_ERROR,
        b"unexpected %s message before key exchange" % name,
    )
    assert not server._blockedByKeyExchange
    assert lines(logged, "couldn't handle") == []
    assert tracebacks(logged) == []


def test_a_flood_of_unknown_messages_before_kex_queues_nothing(logged: Any) -> None:
    """20 MiB of unknown messages before KEX: the first ends the connection,
    the rest are not even read."""
    server, wire = raw(proxy_factory())
    flood = b"".join(plain(200, b"x" * 1000) for _ in range(500))
    server.dataReceived(HELLO + flood)
    code, _ = disconnect(wire) or (0, b"")
    assert code == DISCONNECT_PROTOCOL_ERROR
    assert not server._blockedByKeyExchange
    assert len(logged) < 5


def test_a_flood_of_unknown_messages_before_login_is_cut_short(logged: Any) -> None:
    """Under the keys but not logged in: 32 unknown messages get UNIMPLEMENTED,
    the next ends the connection; no log line per message."""
    client, _, pump = secured()
    for _ in range(40):
        client.sendPacket(200, b"x" * 1000)
    pump.flush()
    assert client.errors == [
        (
            DISCONNECT_PROTOCOL_ERROR,
            b"too many unimplemented or debug messages before authentication",
        )
    ]
    assert [m for m, _ in client.packets].count(MSG_UNIMPLEMENTED) == 32
    assert lines(logged, "couldn't handle") == []
    assert tracebacks(logged) == []


@pytest.mark.parametrize(
    "packet",
    [
        plain(MSG_DEBUG, b"\1" + NS(b"hi") + NS(b"")),
        plain(MSG_UNIMPLEMENTED, b"\0" * 4),
    ],
)
def test_a_flood_of_debug_or_unimplemented_before_kex_is_cut_short(
    logged: Any, packet: bytes
) -> None:
    """DEBUG and UNIMPLEMENTED count towards the same small allowance before
    login, and log nothing above debug."""
    server, wire = raw(proxy_factory())
    server.dataReceived(HELLO + packet * 100)
    assert disconnect(wire) == (
        DISCONNECT_PROTOCOL_ERROR,
        b"too many unimplemented or debug messages before authentication",
    )
    assert [e for e in logged if e["log_level"] > LogLevel.info] == []


# -- item 9: malformed messages --------------------------------------------------


@pytest.mark.parametrize(
    ("messageNum", "payload", "reason"),
    [
        (MSG_KEXINIT, b"x", b"malformed KEXINIT message"),
        (MSG_DISCONNECT, b"", b"malformed DISCONNECT message"),
        (MSG_DISCONNECT, b"\0\0\0\x0b", b"malformed DISCONNECT message"),
        (MSG_UNIMPLEMENTED, b"", b"malformed UNIMPLEMENTED message"),
        (MSG_DEBUG, b"", b"malformed DEBUG message"),
        (MSG_DEBUG, b"\1", b"malformed DEBUG message"),
        (MSG_KEX_DH_GEX_INIT, b"", b"unexpected KEX_DH_GEX_INIT message"),
        (34, b"", b"unexpected KEX_DH_GEX_REQUEST message"),
        (MSG_NEWKEYS, b"", b"unexpected NEWKEYS message"),
        (MSG_NEWKEYS, b"x", b"unexpected NEWKEYS message"),
        (2, struct.pack(">L", 1000), b"malformed IGNORE message"),
        (
            MSG_DEBUG,
            b"\1" + struct.pack(">L", 500) + b"abc",
            b"malformed DEBUG message",
        ),
        (
            MSG_DISCONNECT,
            struct.pack(">2L", 11, 300) + b"x",
            b"malformed DISCONNECT message",
        ),
    ],
)
def test_a_malformed_or_misplaced_message_is_a_clean_protocol_error(
    logged: Any, messageNum: int, payload: bytes, reason: bytes
) -> None:
    """Each ends that connection with DISCONNECT PROTOCOL_ERROR naming the
    message, one log line, and no traceback."""
    server, wire = raw(proxy_factory())
    server.dataReceived(HELLO + plain(messageNum, payload))
    assert disconnect(wire) == (DISCONNECT_PROTOCOL_ERROR, reason)
    assert wire.disconnecting
    assert tracebacks(logged) == []
    assert len(lines(logged, reason.decode())) == 1


def client_kexinit(lists: int = 10, tail: bytes = b"\0" * 5) -> bytes:
    names = [b"curve25519-sha256", b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr"]
    names += [b"hmac-sha2-256-etm@openssh.com"] * 2 + [b"none"] * 2 + [b""] * 2
    return b"\x11" * 16 + b"".join(NS(n) for n in names[:lists]) + tail


@pytest.mark.parametrize(
    "payload",
    [client_kexinit(lists=9), client_kexinit(tail=b""), client_kexinit(tail=b"\0")],
    ids=["nine-name-lists", "no-trailer", "short-trailer"],
)
def test_a_short_kexinit_is_malformed(logged: Any, payload: bytes) -> None:
    """Conch's getNS reads past the end as empty lists; a KEXINIT that lacks
    a name-list or its trailer must not be negotiated on."""
    server, wire = raw(proxy_factory())
    server.dataReceived(HELLO + plain(MSG_KEXINIT, payload))
    assert disconnect(wire) == (DISCONNECT_PROTOCOL_ERROR, b"malformed KEXINIT message")
    assert tracebacks(logged) == []


def test_a_whole_kexinit_is_negotiated() -> None:
    """The same KEXINIT, whole, goes on to the key exchange."""
    server, wire = raw(proxy_factory())
    server.dataReceived(HELLO + plain(MSG_KEXINIT, client_kexinit()))
    assert disconnect(wire) is None and server.kexAlg == b"curve25519-sha256"


def test_a_kex_init_message_before_kexinit_is_refused(logged: Any) -> None:
    """KEX_ECDH_INIT (30) before the peer's KEXINIT: no half-set-up crash."""
    server, wire = raw(proxy_factory())
    server.dataReceived(HELLO + plain(30, NS(b"\x01" * 32)))
    code, reason = disconnect(wire) or (0, b"")
    assert code == DISCONNECT_PROTOCOL_ERROR and reason.startswith(b"unexpected ")
    assert tracebacks(logged) == []


class BadEcdhClient(Client):
    """Sends a key share that is not a curve point, in place of its own."""

    def _ssh_KEX_ECDH_REPLY(self, packet: bytes) -> None:
        pass

    def sendPacket(self, messageNum: int, payload: bytes) -> None:
        if messageNum == 30 and not getattr(self, "sentBad", False):
            self.sentBad = True
            payload = NS(b"\x01\x02")
        super().sendPacket(messageNum, payload)


def test_a_bad_key_share_is_a_clean_protocol_error(logged: Any) -> None:
    """A KEX_ECDH_INIT that does not parse as a public key: DISCONNECT, no traceback."""
    server = proxy_factory().buildProtocol(None)
    client = BadEcdhClient()
    iosim.connect(
        server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
    )
    assert client.errors and client.errors[0][0] in (DISCONNECT_PROTOCOL_ERROR, 3)
    assert tracebacks(logged) == []


def test_a_malformed_service_request_after_kex_is_a_protocol_error(
    logged: Any,
) -> None:
    """Under the keys too: an empty SERVICE_REQUEST is malformed, not a crash."""
    client, _server, pump = secured()
    client.sendPacket(MSG_SERVICE_REQUEST, b"")
    pump.flush()
    assert client.errors == [
        (DISCONNECT_PROTOCOL_ERROR, b"malformed SERVICE_REQUEST message")
    ]
    assert tracebacks(logged) == []


@pytest.mark.parametrize("payload", [b"", b"\0\0\0\5", b"\0\0\0\1" + NS(b"x")])
def test_a_malformed_ext_info_is_a_protocol_error(logged: Any, payload: bytes) -> None:
    """EXT_INFO under the keys that does not parse: DISCONNECT, no traceback."""
    client, _, pump = secured()
    client.sendPacket(MSG_EXT_INFO, payload)
    pump.flush()
    assert client.errors == [(DISCONNECT_PROTOCOL_ERROR, b"malformed EXT_INFO message")]
    assert tracebacks(logged) == []


def test_a_service_request_with_trailing_bytes_is_malformed(logged: Any) -> None:
    """SERVICE_REQUEST is one string; bytes after it make it malformed."""
    client, _, pump = secured()
    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth") + b"\xff" * 9)
    pump.flush()
    assert client.errors == [
        (DISCONNECT_PROTOCOL_ERROR, b"malformed SERVICE_REQUEST message")
    ]
    other, _, otherPump = secured()
    other.sendPacket(MSG_SERVICE_REQUEST, struct.pack(">L", 64) + b"ssh")
    otherPump.flush()
    assert other.errors == client.errors
    assert tracebacks(logged) == []


@pytest.mark.parametrize("service", [b"ssh-userauth", CONN])
def test_a_second_service_request_before_login_is_refused(
    logged: Any, service: bytes
) -> None:
    """Only one ssh-userauth request is valid: another would start a fresh
    userauth service (its login attempts counted from zero, the old one's
    refusals audited), and ssh-connection starts only by USERAUTH_SUCCESS."""
    client, server, pump = secured()
    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
    pump.flush()
    userauth = server.service
    assert userauth is not None and client.errors == []
    client.sendPacket(MSG_SERVICE_REQUEST, NS(service))
    pump.flush()
    assert client.errors == [(DISCONNECT_PROTOCOL_ERROR, UNEXPECTED_SERVICE_REQUEST)]
    assert server.service is userauth
    assert [m for m, _ in client.packets].count(MSG_SERVICE_ACCEPT) == 1
    assert tracebacks(logged) == []


@pytest.mark.parametrize("service", [b"ssh-userauth", CONN])
def test_a_service_request_after_login_is_refused(logged: Any, service: bytes) -> None:
    """Logged in, ssh-userauth would replace the connection service (closing
    its channels) and ssh-connection would build a fresh one, outside the
    startup accounting; both end the connection instead."""
    client, server, pump = logged_in()
    conn = server.service
    open_session(client, pump, 0)
    assert client.packets[-1][0] == connection.MSG_CHANNEL_OPEN_CONFIRMATION
    client.sendPacket(MSG_SERVICE_REQUEST, NS(service))
    pump.flush()
    assert client.errors == [(DISCONNECT_PROTOCOL_ERROR, UNEXPECTED_SERVICE_REQUEST)]
    assert server.service is conn
    assert MSG_SERVICE_ACCEPT not in [m for m, _ in client.packets]
    assert tracebacks(logged) == []


def test_a_second_newkeys_is_a_protocol_error(logged: Any) -> None:
    """NEWKEYS after the key exchange is over: refused, not a crash."""
    client, _server, pump = secured()
    client.sendPacket(MSG_NEWKEYS, b"")
    pump.flush()
    assert client.errors == [(DISCONNECT_PROTOCOL_ERROR, b"unexpected NEWKEYS message")]
    assert tracebacks(logged) == []


def test_a_malformed_userauth_request_is_a_protocol_error(logged: Any) -> None:
    """USERAUTH_REQUEST that does not parse: DISCONNECT, no "userauth request failed"."""
    client, _server, pump = secured()
    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
    pump.flush()
    client.sendPacket(MSG_USERAUTH_REQUEST, NS(b"alice") + b"\0\0")
    pump.flush()
    assert client.errors == [
        (DISCONNECT_PROTOCOL_ERROR, b"malformed USERAUTH_REQUEST message")
    ]
    assert tracebacks(logged) == []


def test_userauth_for_an_unknown_service_is_refused_up_front(logged: Any) -> None:
    """Asking to log in to a service we lack ends the connection before any
    check (Conch would fail with a traceback after a successful login)."""
    client, _server, pump = secured()
    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
    pump.flush()
    client.sendPacket(
        MSG_USERAUTH_REQUEST, NS(b"alice") + NS(b"ssh-bogus") + NS(b"none")
    )
    pump.flush()
    assert client.errors == [
        (DISCONNECT_SERVICE_NOT_AVAILABLE, b"no such service: ssh-bogus")
    ]
    assert tracebacks(logged) == []


@pytest.mark.parametrize(
    ("messageNum", "payload", "name"),
    [
        (connection.MSG_GLOBAL_REQUEST, b"", "GLOBAL_REQUEST"),
        (connection.MSG_GLOBAL_REQUEST, NS(b"\xff\xfe") + b"\1", "GLOBAL_REQUEST"),
        (connection.MSG_CHANNEL_OPEN, b"", "CHANNEL_OPEN"),
        (connection.MSG_CHANNEL_OPEN, NS(b"session") + b"\0", "CHANNEL_OPEN"),
        (
            connection.MSG_CHANNEL_OPEN,
            NS(b"direct-tcpip") + struct.pack(">3L", 0, 65536, 32768) + b"\0\0",
            "CHANNEL_OPEN",
        ),
        (connection.MSG_CHANNEL_REQUEST, b"", "CHANNEL_REQUEST"),
        (
            connection.MSG_CHANNEL_REQUEST,
            struct.pack(">L", 9) + NS(b"x") + b"\1",
            "CHANNEL_REQUEST",
        ),
        (connection.MSG_CHANNEL_DATA, struct.pack(">L", 9) + NS(b"x"), "CHANNEL_DATA"),
        (connection.MSG_CHANNEL_EXTENDED_DATA, b"\0", "CHANNEL_EXTENDED_DATA"),
        (connection.MSG_CHANNEL_WINDOW_ADJUST, b"", "CHANNEL_WINDOW_ADJUST"),
        (connection.MSG_CHANNEL_EOF, struct.pack(">L", 9), "CHANNEL_EOF"),
        (connection.MSG_CHANNEL_CLOSE, b"", "CHANNEL_CLOSE"),
        (connection.MSG_CHANNEL_OPEN_CONFIRMATION, b"", "CHANNEL_OPEN_CONFIRMATION"),
        (connection.MSG_CHANNEL_OPEN_FAILURE, b"", "CHANNEL_OPEN_FAILURE"),
        (connection.MSG_CHANNEL_SUCCESS, b"", "CHANNEL_SUCCESS"),
    ],
)
def test_a_malformed_connection_message_closes_only_that_connection(
    logged: Any, messageNum: int, payload: bytes, name: str
) -> None:
    """After login: a packet the connection layer cannot parse (or that names
    no channel) is DISCONNECT "malformed NAME message"; another connection on
    the same factory carries on."""
    factory = proxy_factory()
    client, _server, pump = logged_in(factory)
    other, _otherServer, otherPump = logged_in(factory)
    client.sendPacket(messageNum, payload)
    pump.flush()
    assert client.errors == [
        (DISCONNECT_PROTOCOL_ERROR, b"malformed %s message" % name.encode())
    ]
    assert tracebacks(logged) == []
    open_session(other, otherPump, 0)
    assert other.packets[-1][0] == connection.MSG_CHANNEL_OPEN_CONFIRMATION
    assert other.errors == []


def test_a_malformed_channel_request_without_reply_is_a_protocol_error(
    logged: Any,
) -> None:
    """A subsystem request with no name and want-reply false: Conch drops the
    failed Deferred ("Unhandled error in Deferred"); here it is malformed."""
    client, _server, pump = logged_in()
    open_session(client, pump, 0)
    confirm = client.packets[-1][1]
    serverChannel = struct.unpack(">L", confirm[4:8])[0]
    client.sendPacket(
        connection.MSG_CHANNEL_REQUEST,
        struct.pack(">L", serverChannel) + NS(b"subsystem") + b"\0",
    )
    pump.flush()
    gc.collect()
    assert client.errors == [
        (DISCONNECT_PROTOCOL_ERROR, b"malformed CHANNEL_REQUEST message")
    ]
    assert tracebacks(logged) == []


@pytest.mark.parametrize(
    ("messageNum", "name"),
    [
        (connection.MSG_CHANNEL_OPEN_FAILURE, b"CHANNEL_OPEN_FAILURE"),
        (connection.MSG_CHANNEL_OPEN_CONFIRMATION, b"CHANNEL_OPEN_CONFIRMATION"),
    ],
)
def test_an_open_answer_for_a_channel_the_peer_opened_is_a_protocol_error(
    logged: Any, messageNum: int, name: bytes
) -> None:
    """Found by fuzzing: OPEN_FAILURE naming a channel the client itself opened
    made Conch forget it, and the connection's close then raised KeyError."""
    client, server, pump = logged_in()
    open_session(client, pump, 0)
    serverChannel = struct.unpack(">L", client.packets[-1][1][4:8])[0]
    client.sendPacket(
        messageNum, struct.pack(">4L", serverChannel, 2, 65536, 32768) + NS(b"")
    )
    pump.flush()
    assert client.errors == [
        (DISCONNECT_PROTOCOL_ERROR, b"unexpected %s message for channel 0" % name)
    ]
    server.connectionLost(None)
    assert tracebacks(logged) == []


def test_data_past_a_channel_window_is_not_an_error_level_line(logged: Any) -> None:
    """Found by fuzzing: a peer overrunning a window closes the channel with a
    warning; misbehaving peers are not server errors."""
    client, _server, pump = logged_in()
    open_session(client, pump, 0)
    serverChannel = struct.unpack(">L", client.packets[-1][1][4:8])[0]
    client.sendPacket(
        connection.MSG_CHANNEL_DATA, struct.pack(">2L", serverChannel, 5) + b"ab"
    )
    pump.flush()
    assert lines(logged, "overran") != []
    assert tracebacks(logged) == []


# -- disconnect logging ---------------------------------------------------------


def test_an_ordinary_disconnect_is_one_info_line(logged: Any) -> None:
    """DISCONNECT_BY_APPLICATION (what ssh sends at exit) is not an error."""
    server, _ = raw(proxy_factory())
    server.dataReceived(
        HELLO
        + plain(
            MSG_DISCONNECT,
            struct.pack(">L", 11) + NS(b"disconnected by user") + NS(b""),
        )
    )
    mentions = [e for e in logged if "disconnected by user" in formatEvent(e)]
    assert [e["log_level"] for e in mentions] == [LogLevel.info]
    assert "\n" not in formatEvent(mentions[0])
    assert tracebacks(logged) == []


def test_another_disconnect_reason_is_one_warn_line(logged: Any) -> None:
    """Other reasons (here PROTOCOL_ERROR from the peer) are a warning, one line."""
    server, _ = raw(proxy_factory())
    server.dataReceived(
        HELLO
        + plain(MSG_DISCONNECT, struct.pack(">L", 2) + NS(b"you broke it") + NS(b""))
    )
    mentions = [e for e in logged if "you broke it" in formatEvent(e)]
    assert [e["log_level"] for e in mentions] == [LogLevel.warn]
    assert "\n" not in formatEvent(mentions[0])


def test_our_own_disconnect_is_logged_in_one_line(logged: Any) -> None:
    """What we send is logged once, on one line, with the peer's address."""
    server, _ = raw(proxy_factory())
    server.dataReceived(HELLO + plain(MSG_SERVICE_REQUEST, NS(b"ssh-userauth")))
    mentions = lines(logged, "service request before key exchange")
    assert len(mentions) == 1 and "\n" not in mentions[0]
    assert PEER in mentions[0]


# -- item 6: login grace time, startups, channels ----------------------------------


def test_an_unauthenticated_connection_is_dropped_after_the_grace_time() -> None:
    """A peer that sends only its version line is disconnected at 30 s (the
    default login_grace_time), and aborted if it does not go."""
    clock = Clock()
    factory = proxy_factory(clock)
    server, wire = raw(factory)
    server.dataReceived(HELLO)
    clock.advance(29)
    assert not wire.disconnecting
    clock.advance(1)
    assert disconnect(wire) == (
        DISCONNECT_BY_APPLICATION,
        b"not authenticated within the login grace time (30s)",
    )
    assert wire.disconnecting
    clock.advance(5)
    assert wire.disconnected  # StringTransport: abortConnection
    server.connectionLost(None)
    assert factory.startups.total == 0
    assert clock.getDelayedCalls() == []


def test_a_login_stops_the_grace_timer_and_frees_the_startup_slot() -> None:
    """Once logged in a connection is not timed out and no longer counts."""
    clock = Clock()
    factory = proxy_factory(clock)
    client, server, _pump = secured(factory)
    assert factory.startups.total == 1
    session = Session("alice", None, PEER)  # type: ignore[arg-type]
    server.avatar = ProxyAvatar(session, None)  # type: ignore[arg-type]
    server.logoutFunction = lambda: None
    server.setService(factory.services[b"ssh-connection"]())
    assert factory.startups.total == 0
    clock.advance(3600)
    assert client.errors == [] and not server.transport.disconnecting
    server.connectionLost(None)
    assert factory.startups.total == 0


def test_startups_from_one_address_are_capped() -> None:
    """The 11th unauthenticated connection from one address (default 10) is
    told so and closed before any key exchange; other addresses still get in."""
    factory = proxy_factory()
    held = [raw(factory, port=50000 + i) for i in range(10)]
    assert all(wire.value().startswith(b"SSH-2.0-") for _, wire in held)
    server, wire = raw(factory, port=50010)
    assert wire.value() == (
        b"teleconch: too many unauthenticated connections; try again later\r\n"
    )
    assert wire.disconnecting
    server.dataReceived(HELLO + plain(MSG_KEXINIT, b"x" * 100))  # ignored
    _, otherWire = raw(factory, host="192.0.2.99")
    assert otherWire.value().startswith(b"SSH-2.0-")


def test_startups_are_capped_in_total_and_counted_exactly(logged: Any) -> None:
    """max_startups across addresses; every way out gives the slot back, and
    refusals are logged once per interval, not once each."""
    clock = Clock()
    factory = proxy_factory(clock, max_startups=3, max_startups_per_source=2)
    a1, _ = raw(factory, host="192.0.2.1")
    a2, _ = raw(factory, host="192.0.2.1")
    _, refusedSame = raw(factory, host="192.0.2.1")
    assert refusedSame.disconnecting and factory.startups.count("192.0.2.1") == 2
    b1, _ = raw(factory, host="192.0.2.2")
    refused = [raw(factory, host=f"192.0.2.{n}") for n in range(3, 40)]
    assert all(w.disconnecting for _, w in refused)
    assert factory.startups.total == 3
    assert len(lines(logged, "refused")) == 1
    clock.advance(10)
    raw(factory, host="192.0.2.50")
    assert len(lines(logged, "refused")) == 2

    for server, _ in refused:
        server.connectionLost(None)  # refused ones never held a slot
    assert factory.startups.total == 3
    a1.connectionLost(None)
    b1.connectionLost(None)
    a2.connectionLost(None)
    assert factory.startups.total == 0
    a2.connectionLost(None)  # twice: still zero
    assert factory.startups.total == 0


def test_channels_past_the_limit_are_refused_with_a_message() -> None:
    """The 65th open channel on one connection (default 64) is refused as
    administratively prohibited, saying why; closing one makes room."""
    client, _server, pump = logged_in()
    for sender in range(64):
        open_session(client, pump, sender)
        assert client.packets[-1][0] == connection.MSG_CHANNEL_OPEN_CONFIRMATION
    open_session(client, pump, 64)
    kind, payload = client.packets[-1]
    assert kind == connection.MSG_CHANNEL_OPEN_FAILURE
    sender, code = struct.unpack(">2L", payload[:8])
    assert (sender, code) == (64, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
    assert b"at most 64 channels" in getNS(payload[8:])[0]
    assert client.errors == []


@pytest.mark.parametrize("trusted", [True, False], ids=["passes", "refused"])
def test_a_login_that_completes_after_the_grace_time_is_not_let_in(
    trusted: bool,
) -> None:
    """The grace time runs out while a certificate check waits on the CA
    lookup: the DISCONNECT is final. The check finishing afterwards sends
    nothing (no USERAUTH_SUCCESS, nor a FAILURE or banner), starts no
    connection service, keeps the startup slot, and a peer that does not
    read is still aborted 5 s later."""
    ca, user_key = CA.make(), Ed25519PrivateKey.generate()
    gate: Deferred[None] = Deferred()
    policy = Policy([ca.line()], gate=gate)
    clock = Clock()
    clock.advance(NOW)
    factory = make_factory(None, policy, HOST_KEY, None, clock)  # type: ignore[arg-type]
    factory.startFactory()
    client, server, pump = secured(factory)
    sent: list[int] = []
    sendPacket = server.sendPacket

    def recordPacket(messageNum: int, payload: bytes) -> None:
        sent.append(messageNum)
        sendPacket(messageNum, payload)

    server.sendPacket = recordPacket
    aborted: list[bool] = []
    server.transport.abortConnection = lambda: aborted.append(True)

    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
    pump.flush()
    assert sent == [MSG_SERVICE_ACCEPT]
    sent.clear()
    blob = cert_blob(ca.user(user_key))
    head = NS(b"alice") + NS(CONN) + NS(b"publickey") + b"\x01" + NS(ED_CERT) + NS(blob)
    signature = Key(user_key).sign(
        NS(server.sessionID) + bytes([MSG_USERAUTH_REQUEST]) + head,
        signatureType=b"ssh-ed25519",
    )
    client.sendPacket(MSG_USERAUTH_REQUEST, head + NS(signature))
    pump.flush()
    assert policy.calls == 1 and sent == []

    clock.advance(factory.limits.login_grace_time)
    assert sent == [MSG_DISCONNECT]
    if not trusted:
        policy.cas = []
    gate.callback(None)  # the check completes now
    assert sent == [MSG_DISCONNECT]
    assert len(policy.refused) == (0 if trusted else 1)
    assert not hasattr(server, "avatar")
    assert server.service.name == b"ssh-userauth"
    assert factory.startups.total == 1  # held until the peer is gone
    clock.advance(ABORT_AFTER)
    assert aborted == [True]
    pump.flush()
    assert client.errors[0][0] == DISCONNECT_BY_APPLICATION
    assert MSG_USERAUTH_SUCCESS not in [m for m, _ in client.packets]
    assert factory.startups.total == 0
    assert clock.getDelayedCalls() == []


def test_the_abort_after_the_grace_time_survives_a_late_service_change() -> None:
    """Once the grace DISCONNECT is out, nothing but the peer going away
    stops the 5 s abort or gives the startup slot back, even a service
    change that looks like a login."""
    clock = Clock()
    factory = proxy_factory(clock)
    _client, server, _pump = secured(factory)
    aborted: list[bool] = []
    server.transport.abortConnection = lambda: aborted.append(True)
    clock.advance(factory.limits.login_grace_time)
    session = Session("alice", None, PEER)  # type: ignore[arg-type]
    server.avatar = ProxyAvatar(session, StubRouter())  # type: ignore[arg-type]
    server.logoutFunction = lambda: None
    server.setService(factory.services[CONN]())
    assert factory.startups.total == 1
    clock.advance(ABORT_AFTER)
    assert aborted == [True]
    server.connectionLost(None)
    assert factory.startups.total == 0
    assert clock.getDelayedCalls() == []
