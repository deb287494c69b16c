"""The transport's per-packet path: in-place decryption, sealing in pieces,
one write per read, and no logger call.

These pin down what makes the packet path cheap (issue 11, "fewer copies per
packet"); bench/bench_ciphers.py measures it.  In memory (``iosim``), with the
client and server of tests/test_conch_transport.py.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from twisted.conch.ssh import service

from teleconch.conch import ciphers
from teleconch.conch.ciphers import makeOpener, makeSealer
from tests.test_conch_transport import (
    CHACHA_BODY,
    CHACHA_KEY,
    CHACHA_LENGTH,
    CHACHA_PLAIN,
    CHACHA_TAG,
    MSG_TEST,
    PROTECTIONS,
    connect,
    payloads,
    serverService,
)

IV, KEY, MAC_KEY = bytes(range(16)), bytes(range(64)), bytes(range(64, 128))


def _packet(size: int, blockSize: int, aadLength: int) -> tuple[bytes, bytes, bytes]:
    """Header, payload and padding of a well-formed plaintext packet."""
    payload = os.urandom(size)
    pad = blockSize - ((6 - aadLength + size) % blockSize)
    if pad < 4:
        pad += blockSize
    header = struct.pack(">LBB", 2 + size + pad, pad, MSG_TEST)
    return header, payload, os.urandom(pad)


def _mac(cipher: bytes, mac: bytes) -> bytes:
    return ciphers.IMPLICIT_MAC if ciphers.isAEAD(cipher) else mac


@pytest.mark.parametrize(("cipher", "mac"), PROTECTIONS)
def test_a_writable_buffer_is_decrypted_in_place(cipher: bytes, mac: bytes) -> None:
    """Opening a packet in the receive buffer returns a view of that buffer.

    That is the copy the transport no longer makes: the plaintext is where the
    ciphertext was, and only the payload handed to Conch is copied.  A
    read-only view (bytes) still works, into new memory, with the same result.
    """
    mac = _mac(cipher, mac)
    sealer = makeSealer(cipher, mac, IV, KEY, MAC_KEY)
    header, payload, pad = _packet(5000, sealer.blockSize, sealer.aadLength)
    wire = b"".join(sealer.seal(3, header, payload, pad))
    plain = (header + payload + pad)[4:]

    readonly = makeOpener(cipher, mac, IV, KEY, MAC_KEY)
    head = memoryview(wire)[: readonly.lengthBytes]
    assert readonly.packetLength(3, head) == len(plain)
    assert bytes(readonly.open(3, memoryview(wire))) == plain

    buf = bytearray(b"before" + wire + b"after")
    view = memoryview(buf)[6 : 6 + len(wire)]
    opener = makeOpener(cipher, mac, IV, KEY, MAC_KEY)
    assert opener.packetLength(3, view[: opener.lengthBytes]) == len(plain)
    opened = opener.open(3, view)
    assert isinstance(opened, memoryview) and opened.obj is buf
    assert bytes(opened) == plain
    assert buf.startswith(b"before") and buf.endswith(b"after")


@pytest.mark.parametrize(("cipher", "mac"), PROTECTIONS)
def test_a_tampered_packet_in_a_writable_buffer_is_refused(
    cipher: bytes, mac: bytes
) -> None:
    """In-place decryption still checks the tag: a flipped byte is a MACError."""
    mac = _mac(cipher, mac)
    sealer = makeSealer(cipher, mac, IV, KEY, MAC_KEY)
    header, payload, pad = _packet(300, sealer.blockSize, sealer.aadLength)
    buf = bytearray(b"".join(sealer.seal(0, header, payload, pad)))
    buf[20] ^= 0x40
    opener = makeOpener(cipher, mac, IV, KEY, MAC_KEY)
    opener.packetLength(0, memoryview(buf)[: opener.lengthBytes])
    with pytest.raises(ciphers.MACError):
        opener.open(0, memoryview(buf))


@pytest.mark.parametrize(("cipher", "mac"), PROTECTIONS)
def test_a_packet_sealed_in_pieces_is_the_packet_sealed_whole(
    cipher: bytes, mac: bytes
) -> None:
    """Header, payload and padding given apart make the same wire bytes.

    The transport no longer joins them before sealing (a copy per packet);
    the stream ciphers take the pieces in turn, AES-GCM joins them itself.
    """
    mac = _mac(cipher, mac)
    pieces = makeSealer(cipher, mac, IV, KEY, MAC_KEY)
    whole = makeSealer(cipher, mac, IV, KEY, MAC_KEY)
    for seq, size in enumerate([0, 1, 100, 32_768]):
        header, payload, pad = _packet(size, pieces.blockSize, pieces.aadLength)
        apart = b"".join(pieces.seal(seq, header, payload, pad))
        assert apart == b"".join(whole.seal(seq, header + payload + pad))


def test_chacha20_poly1305_known_answer_in_pieces() -> None:
    """The draft's worked example, its plaintext cut in three."""
    packet = struct.pack(">L", len(CHACHA_PLAIN)) + CHACHA_PLAIN
    sealer = makeSealer(ciphers.CHACHA20_POLY1305, b"", b"", CHACHA_KEY, b"")
    wire = sealer.seal(7, packet[:6], packet[6:50], packet[50:])
    assert b"".join(wire) == CHACHA_LENGTH + CHACHA_BODY + CHACHA_TAG


class Echo(service.SSHService):
    """Sends every packet it gets straight back."""

    name = b"echo"

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        assert self.transport is not None
        self.transport.sendPacket(messageNum, packet)


@pytest.mark.parametrize("cipher", [ciphers.CHACHA20_POLY1305, ciphers.AES128_GCM])
def test_packets_made_while_handling_one_read_leave_in_one_write(
    cipher: bytes,
) -> None:
    """Five packets in one read, five echoes: one writeSequence, not five.

    OpenSSH answers a whole read's packets with one write; the transport
    batches what it sends while dispatching one read the same way.
    """
    client, server, pump = connect(cipher=cipher)
    server.setService(Echo())
    data = payloads([10, 20_000, 1, 32_768, 7], seed=5)
    for d in data:
        client.sendPacket(MSG_TEST, d)
    read = pump.clientIO.getOutBuffer()
    writes: list[int] = []
    assert server.transport is not None
    original = server.transport.writeSequence

    def counting(chunks: Any) -> None:
        writes.append(len(chunks))
        original(chunks)

    server.transport.writeSequence = counting  # type: ignore[method-assign, assignment]
    server.dataReceived(read)
    assert len(writes) == 1
    pump.flush()
    assert client.recorder.received == [(MSG_TEST, d) for d in data]


def test_a_disconnect_while_batching_goes_out_after_what_was_batched() -> None:
    """A read that ends in a disconnect still delivers the echoes before it.

    Conch closes the connection right after writing DISCONNECT, so the batch
    is written first, then DISCONNECT.
    """
    client, server, pump = connect(cipher=ciphers.CHACHA20_POLY1305)
    server.setService(Echo())
    client.sendPacket(MSG_TEST, b"first")
    client.sendPacket(MSG_TEST, b"second")
    read = pump.clientIO.getOutBuffer()
    server.dataReceived(read + struct.pack(">L", 300_000) + bytes(12))
    pump.flush()
    assert client.recorder.received == [(MSG_TEST, b"first"), (MSG_TEST, b"second")]
    assert client.errors and client.errors[0][1].startswith(b"bad packet length")


class _Recorder:
    """Stands in for a Logger: remembers every method called on it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append(name)

        return record


@pytest.mark.parametrize(("cipher", "mac"), PROTECTIONS)
def test_the_packet_path_calls_no_logger(cipher: bytes, mac: bytes) -> None:
    """Bulk packets both ways make no logger call at all, not even a filtered one.

    A debug call costs its argument formatting and the observer lookup per
    packet even when nothing records it.
    """
    client, server, pump = connect(cipher=cipher, mac=mac)
    pump.flush()
    loggers = [_Recorder(), _Recorder()]
    client._log, server._log = loggers  # type: ignore[assignment]
    data = payloads([1, 32_768, 100_000, 5] * 10, seed=9)
    for d in data:
        client.sendPacket(MSG_TEST, d)
        server.sendPacket(MSG_TEST, d)
    pump.flush()
    assert serverService(server).received[-len(data) :] == [(MSG_TEST, d) for d in data]
    assert client.recorder.received[-len(data) :] == [(MSG_TEST, d) for d in data]
    assert loggers[0].calls == [] and loggers[1].calls == []
