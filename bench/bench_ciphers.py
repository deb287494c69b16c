"""Packet throughput per cipher, in process: ``python bench/bench_ciphers.py``.

A client and server transport complete a real handshake in memory
(``twisted.test.iosim``), then the client sends payloads of ``--payload`` bytes (32 KiB: OpenSSH's
channel packet size; 16 KiB: what ``ssh -W``, the ``-J`` hop, reads from its
stdin per packet) which the server decodes from 64 KiB reads, as from TCP.
Prints MB/s of payload for seal (sendPacket) and open (dataReceived) and the
combined rate, against stock Conch (aes128-ctr + hmac-sha2-256, SSHCiphers).

Then the constructions alone, per packet of the same size, against the
alternatives: for chacha20-poly1305@openssh.com, OpenSSL's contexts made per
packet (ours: the nonce is the sequence number) against libsodium's
``crypto_stream_chacha20_xor_ic`` + ``crypto_onetimeauth_poly1305`` (PyNaCl's
``nacl.bindings`` does not expose them; called here through ctypes on the
libsodium PyNaCl bundles, or the system's) and a hybrid (the 4-byte length
through libsodium, the payload through OpenSSL); for AES-GCM, one ``AESGCM``
per key (ours) against a ``Cipher(AES, GCM(nonce))`` per packet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ctypes
import ctypes.util
import importlib.util
import os
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305
from twisted.conch.ssh import factory, keys, service
from twisted.conch.ssh.transport import (
    SSHClientTransport,
    SSHServerTransport,
    SSHTransportBase,
)
from twisted.internet import defer
from twisted.test import iosim

from teleconch.conch import ciphers
from teleconch.conch.transport import ClientTransport, ServerTransport

PAYLOAD = 32 * 1024  # --payload
READ = 64 * 1024
TOTAL = 128 * 1024 * 1024  # bytes of payload per run
RUNS = 3  # best of, against noisy neighbours
HOST_KEY = keys.Key(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))


class Count(service.SSHService):
    name = b"bench"
    received = 0

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self.received += len(packet)


def pair(
    clientBase: type[SSHClientTransport],
    serverBase: type[SSHServerTransport],
    cipher: bytes,
    mac: bytes,
) -> tuple[SSHTransportBase, SSHTransportBase, iosim.IOPump]:
    class Client(clientBase):  # type: ignore[valid-type, misc]
        supportedCiphers = [cipher]
        supportedMACs = [mac]

        def verifyHostKey(self, blob: bytes, fp: bytes) -> defer.Deferred[bool]:
            return defer.succeed(True)

        def connectionSecure(self) -> None:
            pass

    class Factory(factory.SSHFactory):
        protocol = serverBase
        publicKeys = {b"ssh-ed25519": HOST_KEY.public()}
        privateKeys = {b"ssh-ed25519": HOST_KEY}
        primes = None

    f = Factory()
    f.startFactory()
    server = f.buildProtocol(None)
    client = Client()
    pump = iosim.connect(
        server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
    )
    assert client.currentEncryptions.outCipType == cipher, "handshake failed"
    return client, server, pump


def run(
    clientBase: type[SSHClientTransport],
    serverBase: type[SSHServerTransport],
    cipher: bytes,
    mac: bytes,
) -> tuple[float, float]:
    """Seconds to seal and to open TOTAL bytes of payload."""
    client, server, pump = pair(clientBase, serverBase, cipher, mac)
    counter = Count()
    server.setService(counter)
    payload = bytes(PAYLOAD)
    batch = 64  # packets per round, so the wire buffer stays a few MB
    sealTime = openTime = 0.0
    for _ in range(TOTAL // (PAYLOAD * batch)):
        start = time.perf_counter()
        for _ in range(batch):
            client.sendPacket(94, payload)
        wire = pump.clientIO.getOutBuffer()
        middle = time.perf_counter()
        for offset in range(0, len(wire), READ):
            server.dataReceived(wire[offset : offset + READ])
        openTime += time.perf_counter() - middle
        sealTime += middle - start
    assert counter.received == TOTAL, counter.received
    return sealTime, openTime


def best(
    clientBase: type[SSHClientTransport],
    serverBase: type[SSHServerTransport],
    cipher: bytes,
    mac: bytes,
) -> tuple[float, float]:
    """The fastest of RUNS runs (seal and open times taken together)."""
    return min((run(clientBase, serverBase, cipher, mac) for _ in range(RUNS)), key=sum)


def main() -> None:
    global PAYLOAD
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--payload", type=int, default=PAYLOAD, help="bytes per packet")
    PAYLOAD = ap.parse_args().payload
    mb = TOTAL / 1e6
    print(f"{PAYLOAD} bytes per packet, {TOTAL >> 20} MiB per run, best of {RUNS}")
    seal, open_ = best(
        SSHClientTransport, SSHServerTransport, b"aes128-ctr", b"hmac-sha2-256"
    )
    stock = mb / (seal + open_)
    print(
        f"{'cipher':40} {'seal MB/s':>10} {'open MB/s':>10} {'both MB/s':>10} {'vs stock':>9}"
    )
    print(f"{'stock Conch aes128-ctr+hmac-sha2-256':40} {mb / seal:10.0f} {mb / open_:10.0f} "
          f"{stock:10.0f} {1.0:8.2f}x")  # fmt: skip
    for cipher, mac in [
        (b"chacha20-poly1305@openssh.com", b"hmac-sha2-256"),
        (b"aes128-gcm@openssh.com", b"hmac-sha2-256"),
        (b"aes256-gcm@openssh.com", b"hmac-sha2-256"),
        (b"aes128-ctr", b"hmac-sha2-256"),
        (b"aes128-ctr", b"hmac-sha2-256-etm@openssh.com"),
        (b"aes256-ctr", b"hmac-sha2-512"),
    ]:
        seal, open_ = best(ClientTransport, ServerTransport, cipher, mac)
        both = mb / (seal + open_)
        name = cipher.decode() + ("" if b"@" in cipher else "+" + mac.decode())
        print(f"{name:40} {mb / seal:10.0f} {mb / open_:10.0f} {both:10.0f} "
              f"{both / stock:8.2f}x")  # fmt: skip
    alternatives(PAYLOAD)


def libsodium() -> ctypes.CDLL | None:
    """libsodium with the two calls set up, or None: PyNaCl's copy, else the system's."""
    candidates = []
    try:  # PyNaCl's compiled module, libsodium linked in
        spec = importlib.util.find_spec("nacl._sodium")
        candidates.append(spec.origin if spec else None)
    except ImportError:  # PyNaCl not installed
        pass
    candidates.append(ctypes.util.find_library("sodium"))
    for path in filter(None, candidates):
        lib = ctypes.CDLL(path)
        if not hasattr(lib, "crypto_stream_chacha20_xor_ic"):
            continue
        lib.sodium_init()
        p, n = ctypes.c_void_p, ctypes.c_ulonglong
        lib.crypto_stream_chacha20_xor_ic.argtypes = [p, p, n, p, ctypes.c_uint64, p]
        lib.crypto_onetimeauth_poly1305.argtypes = [p, p, n, p]
        return lib
    return None


def chacha_alternatives(size: int) -> dict[str, Callable[[int], object]]:
    """Seal one packet of ``size`` payload bytes, number ``seq``, each way."""
    key = os.urandom(64)
    mainKey, headerKey = key[:32], key[32:]
    ours = ciphers.makeSealer(ciphers.CHACHA20_POLY1305, b"", b"", key, b"")
    header = (size + 12).to_bytes(4, "big") + bytes([6, 94])
    payload, pad = os.urandom(size), bytes(6)
    out: dict[str, Callable[[int], object]] = {
        "cryptography, contexts per packet (ours)": lambda seq: ours.seal(
            seq, header, payload, pad
        ),
    }
    lib = libsodium()
    if lib is None:
        return out
    wire = bytearray(4 + len(payload) + 8 + 16)
    buf = (ctypes.c_char * len(wire)).from_buffer(wire)
    addr = ctypes.addressof(buf)
    polyKey, tag = ctypes.create_string_buffer(64), ctypes.create_string_buffer(16)
    xor, auth = lib.crypto_stream_chacha20_xor_ic, lib.crypto_onetimeauth_poly1305
    body = len(wire) - 4 - 16

    def sodium(seq: int) -> bytes:
        # the packet copied into a buffer, encrypted in place, tag after it
        wire[:6], wire[6 : 6 + size], wire[6 + size : -16] = header, payload, pad
        nonce = seq.to_bytes(8, "big")
        xor(addr, addr, 4, nonce, 0, headerKey)
        xor(polyKey, bytes(64), 64, nonce, 0, mainKey)
        xor(addr + 4, addr + 4, body, nonce, 1, mainKey)
        auth(tag, addr, 4 + body, polyKey)
        return bytes(wire[:-16]) + tag.raw

    length = ctypes.create_string_buffer(4)

    def hybrid(seq: int) -> list[bytes]:
        nonce = seq.to_bytes(8, "big")
        xor(length, header, 4, nonce, 0, headerKey)
        stream = Cipher(
            algorithms.ChaCha20(mainKey, bytes(8) + nonce), None
        ).encryptor()
        poly = Poly1305(stream.update(bytes(64))[:32])
        chunks = [length.raw, stream.update(header[4:]), stream.update(payload)]
        chunks.append(stream.update(pad))
        for chunk in chunks:
            poly.update(chunk)
        return [*chunks, poly.finalize()]

    assert b"".join(hybrid(5)) == b"".join(ours.seal(5, header, payload, pad))
    assert sodium(5) == b"".join(ours.seal(5, header, payload, pad))
    out["libsodium via ctypes, in place"] = sodium
    out["hybrid: length libsodium, payload OpenSSL"] = hybrid
    return out


def gcm_alternatives(size: int) -> dict[str, Callable[[int], object]]:
    key, iv = os.urandom(16), os.urandom(12)
    ours = ciphers.makeSealer(ciphers.AES128_GCM, b"", iv, key, b"")
    header = (size + 12).to_bytes(4, "big") + bytes([10, 94])
    payload, pad = os.urandom(size), bytes(10)

    def perPacket(seq: int) -> list[bytes]:
        e = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
        e.authenticate_additional_data(header[:4])
        return [e.update(header[4:]), e.update(payload), e.update(pad), e.finalize()]

    aead = AESGCM(key)
    return {
        "AESGCM per key (ours)": lambda seq: ours.seal(seq, header, payload, pad),
        "AESGCM per key, packet joined first": lambda seq: aead.encrypt(
            iv, header[4:] + payload + pad, header[:4]
        ),
        "Cipher(AES, GCM(nonce)) per packet": perPacket,
    }


def alternatives(size: int) -> None:
    print(f"\nconstructions alone, {size}-byte payloads, seal one packet")
    print(f"{'':44} {'MB/s':>8} {'us/packet':>10}")
    for name, table in (
        ("chacha20-poly1305", chacha_alternatives(size)),
        ("aes128-gcm", gcm_alternatives(size)),
    ):
        for label, seal in table.items():
            seqs = iter(range(1 << 30))
            n = max(200, (64 << 20) // size)
            best = min(
                timeit.repeat(lambda: seal(next(seqs)), number=n, repeat=RUNS)  # noqa: B023
            )
            per = best / n
            print(f"{name + ': ' + label:44} {size / per / 1e6:8.0f} {per * 1e6:10.1f}")
    if libsodium() is None:
        print("(libsodium not found: the libsodium rows are missing)")


if __name__ == "__main__":
    main()
