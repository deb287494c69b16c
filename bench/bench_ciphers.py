"""Packet throughput per cipher, in process: ``python bench/bench_ciphers.py``.

A client and server transport complete a real handshake in memory
(``twisted.test.iosim``), then the client sends payloads of ``--payload`` bytes (32 KiB: OpenSSH's
channel packet size; 16 KiB: what ``ssh -W``, the ``-J`` hop, reads from its
stdin per packet) which the server decodes from 64 KiB reads, as from TCP.
Prints MB/s of payload for seal (sendPacket) and open (dataReceived) and the
combined rate, against stock Conch (aes128-ctr + hmac-sha2-256, SSHCiphers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import factory, keys, service
from twisted.conch.ssh.transport import (
    SSHClientTransport,
    SSHServerTransport,
    SSHTransportBase,
)
from twisted.internet import defer
from twisted.test import iosim

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


if __name__ == "__main__":
    main()
