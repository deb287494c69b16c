"""The modern SSH transport: AEAD ciphers, strict KEX, algorithm policy.

Unit tests connect a Conch client and server transport in memory
(``twisted.test.iosim``, fixed keys, no reactor).  Interop tests (marked
``interop``) run the real OpenSSH ``ssh`` against a Conch server on
127.0.0.1, and a Conch client against a real ``sshd``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.avatar import ConchUser
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import channel, connection, factory, keys, service, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import (
    DH_GENERATOR,
    DH_PRIME,
    DISCONNECT_KEY_EXCHANGE_FAILED,
    DISCONNECT_MAC_ERROR,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_EXT_INFO,
    MSG_IGNORE,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_SERVICE_REQUEST,
    SSHClientTransport,
    SSHTransportBase,
)
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from teleconch.conch import ciphers
from teleconch.conch.ciphers import PacketCiphers, makeOpener, makeSealer
from teleconch.conch.transport import (
    CIPHERS,
    KEX_STRICT_CLIENT,
    KEX_STRICT_SERVER,
    ClientTransport,
    ServerTransport,
)

SSH = "/usr/bin/ssh"
SSHD = "/usr/sbin/sshd"

HOST_KEY = keys.Key(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
USER_KEY = keys.Key(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))

AEAD = [ciphers.CHACHA20_POLY1305, ciphers.AES128_GCM, ciphers.AES256_GCM]
# (cipher, MAC) pairs covering every sealer/opener kind.
PROTECTIONS = [
    *[(cipher, ciphers.HMAC_SHA2_256) for cipher in AEAD],
    (b"aes128-ctr", ciphers.HMAC_SHA2_256),
    (b"aes256-ctr", ciphers.HMAC_SHA2_512_ETM),
]
WEAK = re.compile(rb"cbc|3des|arcfour|md5|hmac-sha1|group1-|group14-sha1|-sha1$")
MSG_TEST = 94  # any number >= 50 goes to the service


# -- in-memory wiring -------------------------------------------------------


class RecordingService(service.SSHService):
    """A service that keeps every packet it gets (any message number >= 50)."""

    name = b"ssh-test"

    def serviceStarted(self) -> None:
        self.received: list[tuple[int, bytes]] = []

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self.received.append((messageNum, packet))


class MemoryServer(ServerTransport):
    """Remembers each message it handled with the sequence number it came under."""

    def connectionMade(self) -> None:
        self.seen: list[tuple[int, int]] = []
        super().connectionMade()

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.seen.append((messageNum, self._packetSeq))
        super().dispatchMessage(messageNum, payload)


class MemoryFactory(factory.SSHFactory):
    """Fixed ed25519 host key, one DH group for group exchange, no userauth."""

    protocol = MemoryServer
    publicKeys = {b"ssh-ed25519": HOST_KEY.public()}
    privateKeys = {b"ssh-ed25519": HOST_KEY}
    primes = {2048: [(DH_GENERATOR, DH_PRIME)]}
    services = {b"ssh-test": RecordingService}

    def getService(
        self, transport: Any, name: bytes
    ) -> type[service.SSHService] | None:
        return self.services.get(name)


class MemoryClient(ClientTransport):
    """Checks the fixed host key, asks for the recording service, keeps errors."""

    def connectionMade(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.secured = 0
        self.errors: list[tuple[int, bytes]] = []
        self.hostKeyCheck: defer.Deferred[bool] | None = None
        super().connectionMade()

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        if hostKey != HOST_KEY.public().blob():
            return defer.fail(ValueError("wrong host key"))
        return self.hostKeyCheck or defer.succeed(True)

    def connectionSecure(self) -> None:
        self.secured += 1
        self.recorder = RecordingService()
        self.requestService(self.recorder)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.errors.append((reasonCode, description))

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.seen.append((messageNum, self._packetSeq))
        super().dispatchMessage(messageNum, payload)


def connect(
    client: MemoryClient | None = None,
    cipher: bytes | None = None,
    mac: bytes | None = None,
    kex: bytes | None = None,
    serverFactory: MemoryFactory | None = None,
    greet: bool = True,
) -> tuple[MemoryClient, MemoryServer, iosim.IOPump]:
    """A client and server transport talking in memory, handshake pumped."""
    if serverFactory is None:
        serverFactory = MemoryFactory()
        serverFactory.startFactory()
    server = serverFactory.buildProtocol(None)
    assert isinstance(server, MemoryServer)
    client = client if client is not None else MemoryClient()
    if cipher is not None:
        client.supportedCiphers = [cipher]
    if mac is not None:
        client.supportedMACs = [mac]
    if kex is not None:
        client.supportedKeyExchanges = [kex]
    pump = iosim.connect(
        server,
        iosim.makeFakeServer(server),
        client,
        iosim.makeFakeClient(client),
        greet=greet,
    )
    return client, server, pump


def serverService(server: MemoryServer) -> RecordingService:
    assert isinstance(server.service, RecordingService)
    return server.service


def kexInitLists(payload: bytes) -> list[list[bytes]]:
    """The ten name-lists of a KEXINIT payload (message number included)."""
    assert payload[0] == MSG_KEXINIT
    return [
        names.split(b",") if names else [] for names in getNS(payload[17:], 10)[:10]
    ]


def payloads(sizes: list[int], seed: int) -> list[bytes]:
    block = hashlib.sha256(bytes([seed])).digest() * 8192
    return [block[i : i + n] for i, n in enumerate(sizes)]


# -- handshake and bulk data ------------------------------------------------


@pytest.mark.parametrize(("cipher", "mac"), PROTECTIONS)
def test_handshake_and_large_packets_both_ways(cipher: bytes, mac: bytes) -> None:
    """Each cipher negotiates under strict KEX and carries big packets both ways."""
    client, server, pump = connect(cipher=cipher, mac=mac)

    for side in (client, server):
        current = side.currentEncryptions
        assert (current.outCipType, current.inCipType) == (cipher, cipher)
        expectedMac = ciphers.IMPLICIT_MAC if cipher in AEAD else mac
        assert (current.outMACType, current.inMACType) == (expectedMac, expectedMac)
        assert side.strictKex
    assert client.secured == 1

    up = payloads([200_000, 32_768, 1, 0, 70_001], seed=1)
    down = payloads([250_000, 5, 32_759, 100_000], seed=2)
    for data in up:
        client.sendPacket(MSG_TEST, data)
    for data in down:
        server.sendPacket(MSG_TEST, data)
    pump.flush()

    assert serverService(server).received == [(MSG_TEST, d) for d in up]
    assert client.recorder.received == [(MSG_TEST, d) for d in down]
    assert not server.transport.disconnecting  # type: ignore[union-attr]


def test_packets_split_into_single_bytes_still_decode() -> None:
    """The input buffer copes with a peer whose packets arrive a byte at a time."""
    client, server, pump = connect(cipher=ciphers.CHACHA20_POLY1305)
    sent = payloads([3000, 10, 40_000], seed=3)
    for data in sent:
        client.sendPacket(MSG_TEST, data)
    wire = pump.clientIO.getOutBuffer()
    for i in range(len(wire)):
        server.dataReceived(wire[i : i + 1])
    assert serverService(server).received == [(MSG_TEST, d) for d in sent]


@pytest.mark.parametrize("kex", [b"curve25519-sha256", b"curve25519-sha256@libssh.org"])
def test_each_key_exchange_in_policy(kex: bytes) -> None:
    """Every key exchange we offer completes between our client and server."""
    client, server, pump = connect(kex=kex)
    assert server.kexAlg == kex
    client.sendPacket(MSG_TEST, b"hello")
    pump.flush()
    assert serverService(server).received == [(MSG_TEST, b"hello")]


def test_aead_cipher_ignores_the_mac_lists() -> None:
    """With an AEAD cipher the MAC lists need not match (OpenSSH PROTOCOL 1.6)."""
    client, server, pump = connect(cipher=ciphers.AES256_GCM, mac=b"hmac-sha1")
    assert server.currentEncryptions.inMACType == ciphers.IMPLICIT_MAC
    client.sendPacket(MSG_TEST, b"x" * 1000)
    pump.flush()
    assert serverService(server).received == [(MSG_TEST, b"x" * 1000)]


def test_ctr_cipher_still_needs_a_common_mac() -> None:
    """A non-AEAD cipher with no MAC in common is refused at KEXINIT."""
    client, server, _ = connect(cipher=b"aes128-ctr", mac=b"hmac-sha1")
    # Both sides find the mismatch and hang up.
    assert server.transport.disconnecting  # type: ignore[union-attr]
    assert client.transport.disconnecting  # type: ignore[union-attr]
    assert client.secured == 0 and server.service is None


class EagerExtInfoServer(MemoryServer):
    """Sends EXT_INFO right after its NEWKEYS, as OpenSSH's sshd does."""

    def _allowedKeyExchangeMessageType(self, messageType: int) -> bool:
        if messageType == MSG_EXT_INFO:
            return True
        return super()._allowedKeyExchangeMessageType(messageType)


def test_host_key_checked_later_buffers_packets_under_new_keys() -> None:
    """A client that verifies the host key asynchronously holds what the
    server sent after its NEWKEYS until it has the keys (stock Conch reads it
    with the old keys and fails against sshd).
    """
    serverFactory = MemoryFactory()
    serverFactory.protocol = EagerExtInfoServer
    serverFactory.startFactory()
    pending: defer.Deferred[bool] = defer.Deferred()
    client, server, pump = connect(serverFactory=serverFactory, greet=False)
    client.hostKeyCheck = pending
    pump.flush()
    assert client.secured == 0
    assert client._inputPaused
    assert client._inbuf  # EXT_INFO, under keys the client does not have yet

    pending.callback(True)
    pump.flush()
    assert client.secured == 1
    assert b"server-sig-algs" in client.peerExtensions
    client.sendPacket(MSG_TEST, b"after")
    server.sendPacket(MSG_TEST, b"back")
    pump.flush()
    assert serverService(server).received == [(MSG_TEST, b"after")]
    assert client.recorder.received == [(MSG_TEST, b"back")]

    # The same on a re-key, which must not restart the client's service.
    client.hostKeyCheck = defer.Deferred()
    client.sendKexInit()
    pump.flush()
    assert client._inputPaused
    client.hostKeyCheck.callback(True)
    server.sendPacket(MSG_TEST, b"rekeyed")
    pump.flush()
    assert client.recorder.received[-1] == (MSG_TEST, b"rekeyed")
    assert client.secured == 1


# -- integrity ----------------------------------------------------------------


@pytest.mark.parametrize(("cipher", "mac"), PROTECTIONS)
@pytest.mark.parametrize("where", ["body", "tag"])
def test_tampered_byte_disconnects_only_that_connection(
    cipher: bytes, mac: bytes, where: str
) -> None:
    """One flipped ciphertext or tag byte: MAC error and disconnect, just there."""
    shared = MemoryFactory()
    shared.startFactory()
    client, server, pump = connect(cipher=cipher, mac=mac, serverFactory=shared)
    other, otherServer, otherPump = connect(
        cipher=cipher, mac=mac, serverFactory=shared
    )

    client.sendPacket(MSG_TEST, b"a" * 5000)
    wire = bytearray(pump.clientIO.getOutBuffer())
    wire[40 if where == "body" else -1] ^= 0x01
    server.dataReceived(bytes(wire))
    pump.flush()

    assert serverService(server).received == []
    assert client.errors == [(DISCONNECT_MAC_ERROR, b"bad MAC")]
    assert server.transport.disconnecting  # type: ignore[union-attr]

    other.sendPacket(MSG_TEST, b"still fine")
    otherPump.flush()
    assert serverService(otherServer).received == [(MSG_TEST, b"still fine")]
    assert other.errors == []


def test_absurd_packet_length_is_a_protocol_error() -> None:
    """A length over OpenSSH's 256 KiB limit is refused before waiting for it."""
    client, server, pump = connect(cipher=ciphers.AES128_GCM)
    server.dataReceived(struct.pack(">L", 300_000) + b"\0" * 12)
    pump.flush()
    assert client.errors == [(DISCONNECT_PROTOCOL_ERROR, b"bad packet length 300000")]


def test_version_line_limit_counts_the_line_alone() -> None:
    """The 4 KB limit is on the version line: a large first packet arriving
    in the same read as the line does not count towards it."""
    serverFactory = MemoryFactory()
    serverFactory.startFactory()
    server = serverFactory.buildProtocol(None)
    wire = StringTransport()
    server.makeConnection(wire)
    body = bytes([MSG_IGNORE]) + NS(b"i" * 6000)
    pad = 8 - (5 + len(body)) % 8 + 8
    packet = struct.pack(">LB", 1 + len(body) + pad, pad) + body + b"\0" * pad
    server.dataReceived(b"SSH-2.0-OpenSSH_9.2p1\r\n" + packet)
    assert not wire.disconnecting
    assert server.gotVersion

    longLine = serverFactory.buildProtocol(None)
    longWire = StringTransport()
    longLine.makeConnection(longWire)
    longLine.dataReceived(b"SSH-2.0-" + b"x" * 5000)
    assert longWire.disconnecting

    # Lines before the version line count; so does one that only contains "SSH-".
    for junk in (b"hello\r\n" * 700, b"not SSH-2.0\n" + b"y" * 5000):
        early = serverFactory.buildProtocol(None)
        earlyWire = StringTransport()
        early.makeConnection(earlyWire)
        early.dataReceived(junk)
        assert earlyWire.disconnecting and not early.gotVersion


@pytest.mark.parametrize(
    "first",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,
        b"SSH-2.0-a\0b\r\n",
        b"SSH-2.0-" + b"A" * 300 + b"\r\n",
        b"x" * 300 + b"\r\nSSH-2.0-OpenSSH_9.2p1\r\n",
        b"hello\r\nSSH-2.0-OpenSSH_9.2p1\r\n",
    ],
)
def test_a_client_must_open_with_a_short_version_line(first: bytes) -> None:
    """RFC 4253 4.2 on the server: the client's first line is its version
    line, at most 255 bytes with CR LF, no NUL; anything else (HTTP, TLS, a
    banner line) is refused at once, before any key exchange."""
    serverFactory = MemoryFactory()
    serverFactory.startFactory()
    server = serverFactory.buildProtocol(None)
    wire = StringTransport()
    server.makeConnection(wire)
    server.dataReceived(first)
    assert wire.disconnecting and not server.gotVersion


def test_our_client_still_accepts_lines_before_a_servers_version() -> None:
    """A server may send other lines first (RFC 4253 4.2); our client reads past them."""
    client = MemoryClient()
    wire = StringTransport()
    client.makeConnection(wire)
    client.dataReceived(b"welcome\r\n" + b"y" * 300 + b"\r\nSSH-2.0-OpenSSH_9.2p1\r\n")
    assert client.gotVersion and not wire.disconnecting


# -- strict KEX -----------------------------------------------------------------


def test_strict_kex_resets_sequence_numbers_after_each_newkeys() -> None:
    """Under strict KEX every NEWKEYS restarts numbering at 0, also on re-key."""
    client, server, pump = connect(cipher=ciphers.CHACHA20_POLY1305)
    # KEXINIT 0, KEX_ECDH_INIT 1, NEWKEYS 2, then SERVICE_REQUEST as 0.
    assert server.seen == [
        (MSG_KEXINIT, 0),
        (30, 1),
        (MSG_NEWKEYS, 2),
        (MSG_SERVICE_REQUEST, 0),
    ]
    # KEXINIT 0, KEX_ECDH_REPLY 1, NEWKEYS 2, then EXT_INFO 0, SERVICE_ACCEPT 1.
    assert client.seen == [(MSG_KEXINIT, 0), (31, 1), (MSG_NEWKEYS, 2), (7, 0), (6, 1)]

    client.sendPacket(MSG_TEST, b"one")
    pump.flush()
    oldKeys = server.currentEncryptions
    client.sendKexInit()  # re-key from the client side
    pump.flush()
    assert server.currentEncryptions is not oldKeys
    rekey = server.seen[5:]
    assert rekey == [(MSG_KEXINIT, 2), (30, 3), (MSG_NEWKEYS, 4)]
    assert client.outgoingPacketSequence == 0 and server.outgoingPacketSequence == 0

    client.sendPacket(MSG_TEST, b"two")
    server.sendPacket(MSG_TEST, b"back")
    pump.flush()
    assert server.seen[-1] == (MSG_TEST, 0)
    assert client.seen[-1] == (MSG_TEST, 0)
    assert serverService(server).received == [(MSG_TEST, b"one"), (MSG_TEST, b"two")]
    assert client.secured == 1  # a re-key does not restart the client's services

    server.sendKexInit()  # and from the server side
    pump.flush()
    client.sendPacket(MSG_TEST, b"three")
    pump.flush()
    assert server.seen[-1] == (MSG_TEST, 0)
    assert serverService(server).received[-1] == (MSG_TEST, b"three")


def test_kexinit_markers_only_in_the_initial_kexinit() -> None:
    """Both sides add their strict-KEX marker (and ext-info) to the first KEXINIT only."""
    client, server, pump = connect()
    assert KEX_STRICT_SERVER in kexInitLists(server.ourKexInitPayload)[0]
    assert b"ext-info-s" in kexInitLists(server.ourKexInitPayload)[0]
    assert KEX_STRICT_CLIENT in kexInitLists(client.ourKexInitPayload)[0]
    assert b"ext-info-c" in kexInitLists(client.ourKexInitPayload)[0]
    client.sendKexInit()
    pump.flush()
    assert KEX_STRICT_CLIENT not in kexInitLists(client.ourKexInitPayload)[0]
    assert KEX_STRICT_SERVER not in kexInitLists(server.ourKexInitPayload)[0]


class LegacyClient(MemoryClient):
    """A client without strict KEX (its KEXINIT lacks the marker)."""

    def sendKexInit(self) -> None:
        SSHTransportBase.sendKexInit(self)


def test_peer_without_strict_kex_keeps_counting() -> None:
    """Without the peer's marker, sequence numbers run on across NEWKEYS."""
    client, server, _ = connect(client=LegacyClient())
    assert not server.strictKex and not client.strictKex
    assert server.seen == [
        (MSG_KEXINIT, 0),
        (30, 1),
        (MSG_NEWKEYS, 2),
        (MSG_SERVICE_REQUEST, 3),
    ]


class InjectingClient(MemoryClient):
    """Sends one non-KEX message right after the server's KEXINIT, unqueued."""

    injected = MSG_IGNORE

    def _allowedKeyExchangeMessageType(self, messageType: int) -> bool:
        return True

    def ssh_KEXINIT(self, packet: bytes) -> None:
        super().ssh_KEXINIT(packet)
        self.sendPacket(self.injected, NS(b"sneaky"))


class LegacyInjectingClient(InjectingClient):
    def sendKexInit(self) -> None:
        SSHTransportBase.sendKexInit(self)


@pytest.mark.parametrize("injected", [MSG_IGNORE, 4, MSG_SERVICE_REQUEST])
def test_non_kex_message_before_newkeys_disconnects_under_strict_kex(
    injected: int,
) -> None:
    """IGNORE, DEBUG or SERVICE_REQUEST during the initial strict KEX is fatal."""
    intruder = InjectingClient()
    intruder.injected = injected
    client, server, _ = connect(client=intruder)
    # Its KEXINIT was packet 0, KEX_ECDH_INIT 1, so the intruder is 2.
    assert client.errors == [
        (
            DISCONNECT_PROTOCOL_ERROR,
            b"strict KEX violation: unexpected packet type %d (seqnr 2)" % injected,
        )
    ]
    assert server.transport.disconnecting  # type: ignore[union-attr]
    assert server.service is None


def test_ignore_during_kex_is_fine_without_strict_kex() -> None:
    """The same IGNORE from a peer without strict KEX is just ignored."""
    client, _, _ = connect(client=LegacyInjectingClient())
    assert client.errors == []
    assert client.secured == 1


class IgnoreFirstClient(MemoryClient):
    """Sends an IGNORE before its initial KEXINIT."""

    def sendKexInit(self) -> None:
        if self.sessionID is None and self.outgoingPacketSequence == 0:
            self.sendIgnore(b"first")
        super().sendKexInit()


def test_kexinit_must_be_the_first_packet_under_strict_kex() -> None:
    """A strict peer whose KEXINIT is not its first packet is disconnected."""
    client, _, _ = connect(client=IgnoreFirstClient())
    assert client.errors == [
        (
            DISCONNECT_PROTOCOL_ERROR,
            b"strict KEX violation: KEXINIT was not the first packet",
        )
    ]


def test_own_non_kex_messages_wait_for_the_first_keys() -> None:
    """We send no IGNORE/DEBUG/UNIMPLEMENTED while the initial keys are negotiated."""
    client, _, pump = connect(greet=False)
    client.sendIgnore(b"early")
    client.sendDebug(b"early")
    assert [m for m, _ in client._blockedByKeyExchange or []] == [MSG_IGNORE, 4]
    pump.flush()
    assert client.errors == [] and client.secured == 1


# -- algorithm policy ---------------------------------------------------------


def test_weak_algorithms_are_not_offered() -> None:
    """No CBC, 3DES, SHA-1 or MD5 anywhere in either side's KEXINIT; our order."""
    client, server, _ = connect()
    for side in (client, server):
        lists = kexInitLists(side.ourKexInitPayload)
        kex, _, ciphersOut, ciphersIn, macsOut, macsIn = lists[:6]
        assert ciphersOut == ciphersIn == CIPHERS
        assert (
            macsOut
            == macsIn
            == [
                b"hmac-sha2-256-etm@openssh.com",
                b"hmac-sha2-512-etm@openssh.com",
                b"hmac-sha2-256",
                b"hmac-sha2-512",
            ]
        )
        assert lists[6] == lists[7] == [b"none"]
        for name in kex + ciphersOut + macsOut:
            assert not WEAK.search(name), name
        assert kex[0] in (b"mlkem768x25519-sha256", b"curve25519-sha256")
    serverKex = kexInitLists(server.ourKexInitPayload)[0]
    clientKex = kexInitLists(client.ourKexInitPayload)[0]
    assert serverKex[0] == b"mlkem768x25519-sha256"  # Conch has it server-side only
    assert b"mlkem768x25519-sha256" not in clientKex
    # What ssh-audit fails or warns on: NIST curves, finite-field group exchange.
    for name in serverKex + clientKex:
        assert b"nistp" not in name and b"diffie-hellman" not in name, name


@pytest.mark.parametrize(
    "kex", [b"ecdh-sha2-nistp256", b"diffie-hellman-group-exchange-sha256"]
)
def test_nist_curve_and_group_exchange_clients_are_refused(kex: bytes) -> None:
    """A stock Conch client limited to a NIST curve or DH group exchange finds
    no key exchange in common."""

    class OldClient(SSHClientTransport):
        supportedKeyExchanges = [kex]

        def receiveError(self, reasonCode: int, description: bytes) -> None:
            self.error = (reasonCode, description)

    server = MemoryFactory()
    server.startFactory()
    s = server.buildProtocol(None)
    c = OldClient()
    iosim.connect(s, iosim.makeFakeServer(s), c, iosim.makeFakeClient(c))
    assert c.error == (DISCONNECT_KEY_EXCHANGE_FAILED, b"couldn't match all kex parts")


def test_legacy_cbc_only_client_is_refused() -> None:
    """A stock Conch client limited to aes128-cbc finds no cipher in common."""

    class CbcClient(SSHClientTransport):
        supportedCiphers = [b"aes128-cbc"]

        def receiveError(self, reasonCode: int, description: bytes) -> None:
            self.error = (reasonCode, description)

    server = MemoryFactory()
    server.startFactory()
    s = server.buildProtocol(None)
    c = CbcClient()
    iosim.connect(s, iosim.makeFakeServer(s), c, iosim.makeFakeClient(c))
    assert c.error == (DISCONNECT_KEY_EXCHANGE_FAILED, b"couldn't match all kex parts")


def test_stock_conch_client_interoperates() -> None:
    """A stock Conch client (no AEAD, no strict KEX) still gets aes-ctr + HMAC."""

    class StockClient(SSHClientTransport):
        def verifyHostKey(
            self, hostKey: bytes, fingerprint: bytes
        ) -> defer.Deferred[bool]:
            return defer.succeed(True)

        def connectionSecure(self) -> None:
            self.recorder = RecordingService()
            self.requestService(self.recorder)

    factory_ = MemoryFactory()
    factory_.startFactory()
    s = factory_.buildProtocol(None)
    assert isinstance(s, MemoryServer)
    c = StockClient()
    pump = iosim.connect(s, iosim.makeFakeServer(s), c, iosim.makeFakeClient(c))
    assert s.currentEncryptions.inCipType == b"aes256-ctr"
    assert s.currentEncryptions.inMACType == b"hmac-sha2-512"  # its first choice
    assert not s.strictKex
    c.sendPacket(MSG_TEST, b"z" * 40_000)
    s.sendPacket(MSG_TEST, b"y" * 40_000)
    pump.flush()
    assert serverService(s).received == [(MSG_TEST, b"z" * 40_000)]
    assert c.recorder.received == [(MSG_TEST, b"y" * 40_000)]


# -- known answers --------------------------------------------------------------

# draft-ietf-sshm-chacha20-poly1305-02, appendix A: a worked example for
# chacha20-poly1305@openssh.com (64 bytes of key material, sequence number 7).
CHACHA_KEY = bytes.fromhex(
    "8bbff6855fc102338c373e73aac0c914f076a905b2444a32eecaffeae22becc5"
    "e9b7a7a5825a8249346ec1c28301cf394543fc7569887d76e168f37562ac0740"
)
# padding_length 6, SSH_MSG_CHANNEL_DATA (94) for channel 0, a 56-byte string, padding.
CHACHA_PLAIN = bytes.fromhex(
    "065e00000000000000384c6f72656d20697073756d20646f6c6f722073697420"
    "616d65742c20636f6e7365637465747572206164697069736963696e6720656c"
    "69744e43e804dc6c"
)
CHACHA_LENGTH = bytes.fromhex("2c3ecce4")
CHACHA_BODY = bytes.fromhex(
    "a5bc05895bf07a7ba956b6c68829ac7c83b780b7000ecde745afc705bbc378ce"
    "03a280236b87b53bed5839662302b164b6286a48cd1e097138e3cb909b8b2b82"
    "9dd18d2a35ff82d9"
)
CHACHA_TAG = bytes.fromhex("95349e855bf02c298ef775f2d1a7e8b8")


def test_chacha20_poly1305_known_answer() -> None:
    """Our sealer and opener reproduce the draft's worked example exactly."""
    assert len(CHACHA_KEY) == 64 and len(CHACHA_PLAIN) == 0x48
    packet = struct.pack(">L", len(CHACHA_PLAIN)) + CHACHA_PLAIN
    sealer = makeSealer(ciphers.CHACHA20_POLY1305, b"", b"", CHACHA_KEY, b"")
    assert sealer.seal(7, packet) == [CHACHA_LENGTH, CHACHA_BODY, CHACHA_TAG]

    opener = makeOpener(ciphers.CHACHA20_POLY1305, b"", b"", CHACHA_KEY, b"")
    wire = memoryview(CHACHA_LENGTH + CHACHA_BODY + CHACHA_TAG)
    assert opener.packetLength(7, wire[:4]) == 0x48
    assert bytes(opener.open(7, wire)) == CHACHA_PLAIN
    with pytest.raises(ciphers.MACError):
        opener.open(8, wire)  # the sequence number is the nonce


def test_aes_gcm_nonce_is_fixed_field_and_invocation_counter() -> None:
    """Nonces are IV[:4] || counter, counter from IV[4:12], +1 per packet, mod 2**64."""
    key = bytes(range(16))
    iv = bytes.fromhex("01020304") + (2**64 - 2).to_bytes(8, "big")
    sealer = makeSealer(ciphers.AES128_GCM, b"", iv, key, b"")
    aead = AESGCM(key)
    expectedCounters = [2**64 - 2, 2**64 - 1, 0, 1]
    for seq, counter in enumerate(expectedCounters):
        packet = struct.pack(">LB", 28, 4) + b"payload-%d-abcdefghi" % seq + b"\0" * 4
        head, sealed = sealer.seal(seq, packet)
        assert head == packet[:4]  # the length is sent in the clear
        nonce = iv[:4] + counter.to_bytes(8, "big")
        assert aead.decrypt(nonce, sealed, head) == packet[4:]  # length is the AAD


def test_padding_aligns_each_cipher_and_is_at_least_four_bytes() -> None:
    """Packets fill whole blocks: after the length for AEAD/EtM, with it for CTR."""
    iv, key, macKey = bytes(range(16)), bytes(range(64)), bytes(range(64, 128))
    for cipher, mac in [*PROTECTIONS, (b"aes192-ctr", ciphers.HMAC_SHA2_512)]:
        client, _, pump = connect()
        ours = PacketCiphers(cipher, cipher, mac, mac)
        ours.setKeys(iv, key, iv, key, macKey, macKey)
        client.currentEncryptions = ours
        opener = makeOpener(cipher, ours.inMACType or b"", iv, key, macKey)
        for size in range(40):
            seq = client.outgoingPacketSequence
            client.sendPacket(MSG_TEST, b"p" * size)
            wire = memoryview(pump.clientIO.getOutBuffer())
            length = opener.packetLength(seq, wire[: opener.lengthBytes])
            assert len(wire) == 4 + length + opener.macLength
            assert (length + 4 - opener.aadLength) % opener.blockSize == 0
            body = bytes(opener.open(seq, wire))
            assert 4 <= body[0] < 4 + opener.blockSize
            assert body[1 : len(body) - body[0]] == bytes([MSG_TEST]) + b"p" * size


def test_packet_ciphers_refuse_unknown_names() -> None:
    """A name we do not implement is unmatched, so Conch refuses the exchange."""
    ciphers = PacketCiphers(
        b"aes128-cbc", b"aes128-ctr", b"hmac-sha1", b"hmac-sha2-256"
    )
    assert ciphers.outCipType is None and ciphers.outMACType is None
    assert ciphers.inCipType == b"aes128-ctr"
    with pytest.raises(ValueError, match="unnegotiated"):
        ciphers.setKeys(b"", b"", b"", b"", b"", b"")


# -- interop: real OpenSSH ssh against our server ------------------------------


class EchoSession(channel.SSHChannel):
    """A session whose ``exec`` echoes stdin back, then exits 0 at EOF."""

    name = b"session"
    _eof = False
    _done = False

    def request_exec(self, data: bytes) -> bool:
        return True

    def dataReceived(self, data: bytes) -> None:
        self.write(data)

    def eofReceived(self) -> None:
        self._eof = True
        self._finishIfDrained()

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._finishIfDrained()

    def _finishIfDrained(self) -> None:
        if self._eof and not self.buf and not self._done:
            self._done = True
            assert self.conn is not None
            self.conn.sendEOF(self)
            self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
            self.loseConnection()


class EchoUser(ConchUser):
    def __init__(self) -> None:
        super().__init__()
        self.channelLookup[b"session"] = EchoSession


@implementer(IRealm)
class EchoRealm:
    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> Any:
        return IConchUser, EchoUser(), lambda: None


class InteropFactory(factory.SSHFactory):
    """A minimal Conch server on our ServerTransport: one authorized key, echo."""

    protocol = ServerTransport
    publicKeys = {b"ssh-ed25519": HOST_KEY.public()}
    privateKeys = {b"ssh-ed25519": HOST_KEY}
    primes = None

    def __init__(self) -> None:
        keyDB = InMemorySSHKeyDB({b"alice": [USER_KEY.public()]})
        self.portal = Portal(EchoRealm(), [SSHPublicKeyChecker(keyDB)])
        self.live: list[ServerTransport] = []

    def buildProtocol(self, addr: Any) -> Any:
        transport = super().buildProtocol(addr)
        assert isinstance(transport, ServerTransport)
        self.live.append(transport)
        return transport


class Collect(protocol.ProcessProtocol):
    """Feeds stdin, gathers stdout/stderr, fires with the exit code."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.exitCode = -1

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.ended.callback(0)
        else:
            assert isinstance(reason.value, ProcessTerminated)
            self.ended.callback(reason.value.exitCode)

    @property
    def stdout(self) -> bytes:
        return b"".join(self.out)

    @property
    def stderr(self) -> str:
        return b"".join(self.err).decode(errors="replace")


@pytest.fixture
def user_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_bytes(USER_KEY.toString("OPENSSH"))
    path.chmod(0o600)
    return path


@pytest_twisted.async_yield_fixture
async def conch_server() -> AsyncIterator[tuple[int, InteropFactory]]:
    server = InteropFactory()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[arg-type]
    yield cast(IPv4Address, port.getHost()).port, server
    await defer.maybeDeferred(port.stopListening)
    for transport in server.live:
        tcp: Any = transport.transport
        if tcp is not None:
            tcp.abortConnection()


async def run_ssh(
    args: list[str], port: int, keyFile: Path, tmp: Path, stdin: bytes = b""
) -> Collect:
    knownHosts = tmp / "known_hosts"
    hostLine = f"[127.0.0.1]:{port} {HOST_KEY.public().toString('OPENSSH').decode()}\n"
    knownHosts.write_text(hostLine)
    argv = [
        SSH,
        "-F", "/dev/null",
        "-v",
        "-p", str(port),
        "-i", str(keyFile),
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={knownHosts}",
        "-l", "alice",
        *args,
        "127.0.0.1",
        "echo",
    ]  # fmt: skip
    proc = Collect(stdin)
    reactor.spawnProcess(proc, SSH, argv, env={"PATH": "/usr/bin:/bin"})
    proc.exitCode = await proc.ended
    return proc


@pytest.mark.interop
@pytest.mark.parametrize(
    ("cipher", "mac"),
    [
        ("chacha20-poly1305@openssh.com", None),
        ("aes128-gcm@openssh.com", None),
        ("aes256-gcm@openssh.com", None),
        ("aes128-ctr", "hmac-sha2-256"),
        ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_openssh_client_pushes_megabytes_through_echo(
    conch_server: tuple[int, InteropFactory],
    user_key_file: Path,
    tmp_path: Path,
    cipher: str,
    mac: str | None,
) -> None:
    """Real ssh: key login, exec, 5 MB echoed intact through repeated re-keys;
    ``ssh -v`` shows the cipher and strict KEX's sequence number resets.
    """
    port, _ = conch_server
    data = os.urandom(5_000_000)
    # Re-key every MiB: about ten key exchanges during the transfer.
    args = ["-c", cipher, "-o", "RekeyLimit=1M"] + (["-m", mac] if mac else [])
    proc = await run_ssh(args, port, user_key_file, tmp_path, stdin=data)

    assert proc.exitCode == 0, proc.stderr[-2000:]
    assert (
        hashlib.sha256(proc.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    ), proc.stderr[-2000:]
    shown = mac if mac else "<implicit>"
    for direction in ("server->client", "client->server"):
        assert f"kex: {direction} cipher: {cipher} MAC: {shown} compression: none" in (
            proc.stderr
        )
    # OpenSSH logs these only under strict KEX: once per NEWKEYS each way.
    assert proc.stderr.count("resetting send seqnr") >= 5
    assert proc.stderr.count("resetting read seqnr") >= 5
    assert "Authenticated to 127.0.0.1" in proc.stderr


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_openssh_client_cbc_is_refused(
    conch_server: tuple[int, InteropFactory], user_key_file: Path, tmp_path: Path
) -> None:
    """``ssh -c aes128-cbc`` finds no cipher in common; our offer has no weak ones."""
    port, _ = conch_server
    proc = await run_ssh(["-c", "aes128-cbc"], port, user_key_file, tmp_path)
    assert proc.exitCode == 255
    assert "no matching cipher found" in proc.stderr
    offer = re.search(r"Their offer: (\S+)", proc.stderr)
    assert offer is not None
    assert offer.group(1).split(",") == [c.decode() for c in CIPHERS]


# -- interop: our client against a real sshd -------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class SshdLog(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def errReceived(self, data: bytes) -> None:
        self.lines.extend(data.decode(errors="replace").splitlines())
        if not self.ready.called and any(
            "Server listening" in line for line in self.lines
        ):
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("sshd exited:\n" + "\n".join(self.lines)))
        self.ended.callback(None)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@attrs.frozen
class Sshd:
    port: int
    hostKey: keys.Key
    log: SshdLog


@pytest_twisted.async_yield_fixture
async def sshd(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Sshd]]]:
    """Starts real sshds on free high ports, trusting USER_KEY for root."""
    os.makedirs("/run/sshd", exist_ok=True)
    hostKey = keys.Key(
        ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
    )
    hostKeyFile = tmp_path / "ssh_host_ed25519_key"
    hostKeyFile.write_bytes(hostKey.toString("OPENSSH"))
    hostKeyFile.chmod(0o600)
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(USER_KEY.public().toString("OPENSSH") + b"\n")
    running: list[tuple[Any, SshdLog]] = []

    async def start(extraConfig: str = "") -> Sshd:
        port = free_port()
        config = tmp_path / f"sshd_config_{port}"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {hostKeyFile}\n"
            f"AuthorizedKeysFile {authorized}\nUsePAM no\nPidFile none\n"
            "StrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nLogLevel DEBUG1\n{extraConfig}"
        )
        log = SshdLog()
        process = reactor.spawnProcess(
            log, SSHD, [SSHD, "-D", "-e", "-f", str(config)], env={}
        )
        running.append((process, log))
        await log.ready
        return Sshd(port, hostKey, log)

    yield start
    for process, log in running:
        if not log.ended.called:
            process.signalProcess("TERM")
        await log.ended


class ExecChannel(channel.SSHChannel):
    name = b"session"

    def __init__(
        self, command: bytes, done: defer.Deferred[tuple[bytes, int]], **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.command = command
        self.done = done
        self.output: list[bytes] = []
        self.status = -1

    def channelOpen(self, specificData: bytes) -> None:
        assert self.conn is not None
        self.conn.sendRequest(self, b"exec", NS(self.command), wantReply=True)

    def dataReceived(self, data: bytes) -> None:
        self.output.append(data)

    def request_exit_status(self, data: bytes) -> bool:
        (self.status,) = struct.unpack(">L", data)
        return True

    def closed(self) -> None:
        self.done.callback((b"".join(self.output), self.status))
        assert self.conn is not None and self.conn.transport is not None
        self.conn.transport.loseConnection()


class ExecConnection(connection.SSHConnection):
    def __init__(self, command: bytes, done: defer.Deferred[tuple[bytes, int]]) -> None:
        super().__init__()
        self.command = command
        self.done = done

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(ExecChannel(self.command, self.done, conn=self))


class KeyAuth(userauth.SSHUserAuthClient):
    def getPublicKey(self) -> keys.Key | None:
        if self.lastPublicKey is not None:
            return None
        return USER_KEY.public()

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(USER_KEY)


class ExecClient(ClientTransport):
    """Logs in as root with USER_KEY and runs one command."""

    def __init__(
        self,
        hostKey: keys.Key,
        cipher: bytes,
        command: bytes,
        done: defer.Deferred[Any],
    ) -> None:
        self.hostKey = hostKey
        self.supportedCiphers = [cipher]
        self.command = command
        self.done = done

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        """Answers a little later, as a check against a CA or a store would."""
        if hostKey != self.hostKey.public().blob():
            return defer.fail(ValueError("unexpected host key"))
        return task.deferLater(reactor, 0.02, lambda: True)

    def connectionSecure(self) -> None:
        self.requestService(KeyAuth(b"root", ExecConnection(self.command, self.done)))

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if not self.done.called:
            self.done.errback(reason or Failure(ConnectionError("lost")))


async def run_command(
    server: Sshd, command: bytes, cipher: bytes
) -> tuple[ExecClient, bytes]:
    """Log in to ``server`` as root with our ClientTransport, run ``command``."""
    done: defer.Deferred[tuple[bytes, int]] = defer.Deferred()
    client = ExecClient(server.hostKey, cipher, command, done)
    creator = protocol.ClientCreator(reactor, lambda: client)
    assert await creator.connectTCP("127.0.0.1", server.port) is client
    output, status = await done
    assert status == 0, server.log.text
    return client, output


@pytest.mark.interop
@pytest.mark.parametrize("cipher", AEAD)
@pytest_twisted.ensureDeferred
async def test_conch_client_runs_a_command_on_openssh_sshd(
    sshd: Callable[[str], Awaitable[Sshd]], cipher: bytes
) -> None:
    """Our ClientTransport against real sshd: each AEAD cipher, strict KEX,
    ``echo hi``, with a host key check that answers only after sshd's
    NEWKEYS and EXT_INFO have arrived.
    """
    server = await sshd("")
    client, output = await run_command(server, b"echo hi", cipher)
    assert output == b"hi\n"
    assert client.currentEncryptions.outCipType == cipher
    assert client.currentEncryptions.inCipType == cipher
    assert client.strictKex
    for direction in ("client->server", "server->client"):
        kexLine = f"kex: {direction} cipher: {cipher.decode()} MAC: <implicit>"
        assert kexLine in server.log.text
    assert "resetting send seqnr" in server.log.text
    assert "resetting read seqnr" in server.log.text


@pytest.mark.interop
@pytest_twisted.ensureDeferred
async def test_conch_client_survives_sshd_rekeying_mid_stream(
    sshd: Callable[[str], Awaitable[Sshd]],
) -> None:
    """sshd re-keys every 256 KiB while sending 4 MB; our client keeps up and,
    unlike stock Conch's, does not ask for its service again after each re-key
    (sshd logs those as kex_protocol_error).
    """
    server = await sshd("RekeyLimit 256K\n")
    _, output = await run_command(
        server, b"head -c 4000000 /dev/zero", ciphers.CHACHA20_POLY1305
    )
    assert output == bytes(4_000_000)
    assert server.log.text.count("SSH2_MSG_NEWKEYS received") >= 4
    assert server.log.text.count("resetting read seqnr") >= 4
    assert "kex_protocol_error" not in server.log.text
