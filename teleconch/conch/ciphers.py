"""SSH binary packet protection (RFC 4253 section 6) that Conch lacks.

Conch only has CBC/CTR with encrypt-and-MAC HMAC, building a new HMAC per
packet.  This module adds what OpenSSH prefers: ``chacha20-poly1305@openssh.com``
(PROTOCOL.chacha20poly1305), ``aes128/256-gcm@openssh.com`` (RFC 5647 with
OpenSSH's naming, PROTOCOL 1.6) and the ``-etm@openssh.com`` MACs (PROTOCOL
1.5), plus a CTR+HMAC path that keys its HMAC once per key exchange.

Each direction is one object: a *sealer* turns a plaintext packet (length
field included, given as one or more consecutive pieces so the caller need
not join header, payload and padding) into wire chunks, an *opener* reads the
length, then checks and decrypts a whole packet, in place when the wire view
is writable (the transport's receive buffer), so decrypting copies nothing.

Per packet, only what the construction forces is created: AES-GCM keeps one
``AESGCM`` per key (the nonce is an argument); ChaCha20's nonce is the
sequence number, so each packet needs its own two ChaCha20 contexts (length
and payload) and Poly1305 (the alternatives measured in bench_ciphers.py:
OpenSSL's per-packet contexts beat libsodium's ChaCha20 through ctypes on
anything but tiny packets, and PyNaCl does not expose the calls).

``PacketCiphers`` pairs them behind the shape of Conch's ``SSHCiphers`` so
Conch's key exchange code can drive it.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import TYPE_CHECKING, Protocol

import attrs
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import (
    Cipher,
    CipherContext,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

if TYPE_CHECKING:
    from twisted.conch.ssh.transport import SSHCiphers

CHACHA20_POLY1305 = b"chacha20-poly1305@openssh.com"
AES128_GCM = b"aes128-gcm@openssh.com"
AES256_GCM = b"aes256-gcm@openssh.com"
HMAC_SHA2_256 = b"hmac-sha2-256"
HMAC_SHA2_512 = b"hmac-sha2-512"
HMAC_SHA2_256_ETM = b"hmac-sha2-256-etm@openssh.com"
HMAC_SHA2_512_ETM = b"hmac-sha2-512-etm@openssh.com"
NONE = b"none"

#: The MAC name recorded for an AEAD cipher, whose negotiated MAC is ignored.
IMPLICIT_MAC = b"<implicit>"

#: OpenSSH's PACKET_MAX_SIZE: longer packet_length fields are refused.
MAX_PACKET_LENGTH = 256 * 1024

_SEQ = struct.Struct(">L")
_LENGTH = struct.Struct(">L")
_U64_MASK = (1 << 64) - 1
_ZERO_BLOCK = bytes(64)


class MACError(Exception):
    """A packet failed authentication: the connection must be dropped."""


class Sealer(Protocol):
    """Protects outgoing packets for one direction."""

    #: Padding aligns to this many bytes.
    blockSize: int
    #: 4 when the length field is outside the padded, encrypted body (AEAD, EtM).
    aadLength: int

    def seal(self, seq: int, *packet: bytes) -> list[bytes]:
        """Wire chunks for the packet sent as number ``seq``.

        ``packet`` is the plaintext packet in consecutive pieces, the first
        holding at least the 4-byte length field.
        """
        ...


class Opener(Protocol):
    """Checks and decrypts incoming packets for one direction."""

    blockSize: int
    aadLength: int
    #: Bytes needed before ``packetLength`` can answer.
    lengthBytes: int
    #: Bytes of MAC or tag after the packet.
    macLength: int

    def packetLength(self, seq: int, head: memoryview) -> int:
        """The packet_length field, from the first ``lengthBytes`` on the wire."""
        ...

    def open(self, seq: int, wire: memoryview) -> bytes | memoryview:
        """The plaintext after the length field (padding_length first), or MACError.

        A writable ``wire`` may be decrypted in place (the result is then a
        view of it); its contents are undefined afterwards, also on MACError.
        """
        ...


class PaddingSource:
    """Random padding without an ``os.urandom`` system call per packet."""

    def __init__(self, poolSize: int = 8192) -> None:
        self._poolSize = poolSize
        self._pool = os.urandom(poolSize)
        self._offset = 0

    def take(self, count: int) -> bytes:
        """``count`` fresh random bytes (at most the pool size)."""
        start = self._offset
        end = start + count
        if end > self._poolSize:
            self._pool = os.urandom(self._poolSize)
            start, end = 0, count
        self._offset = end
        return self._pool[start:end]


class _Plain:
    """The ``none`` cipher of the first key exchange: no MAC, 8-byte blocks."""

    blockSize = 8
    aadLength = 0
    lengthBytes = 4
    macLength = 0

    def seal(self, seq: int, *packet: bytes) -> list[bytes]:
        return list(packet)

    def packetLength(self, seq: int, head: memoryview) -> int:
        return int(_LENGTH.unpack_from(head)[0])

    def open(self, seq: int, wire: memoryview) -> bytes | memoryview:
        return wire[4:]


class _Unkeyed:
    """Stands in until ``setKeys``; using it is a bug, not a plaintext fallback."""

    blockSize = 0
    aadLength = 0
    lengthBytes = 0
    macLength = 0

    def seal(self, seq: int, *packet: bytes) -> list[bytes]:
        raise RuntimeError("packet ciphers used before setKeys")

    def packetLength(self, seq: int, head: memoryview) -> int:
        raise RuntimeError("packet ciphers used before setKeys")

    def open(self, seq: int, wire: memoryview) -> bytes | memoryview:
        raise RuntimeError("packet ciphers used before setKeys")


class _Mac:
    """An HMAC keyed once; each packet works on a cheap copy of it."""

    def __init__(self, algorithm: hashes.HashAlgorithm, key: bytes) -> None:
        self.size = algorithm.digest_size
        self._keyed = chmac.HMAC(key[: self.size], algorithm)

    def digest(self, seq: int, *parts: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        mac.update(_SEQ.pack(seq))
        for part in parts:
            mac.update(part)
        return mac.finalize()


class _CtrHmacSealer:
    """AES-CTR with HMAC, encrypt-and-MAC (RFC 4253) or encrypt-then-MAC."""

    blockSize = 16

    def __init__(self, key: bytes, iv: bytes, mac: _Mac, etm: bool) -> None:
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(iv[:16])).encryptor()
        self._mac = mac
        self._etm = etm
        self.aadLength = 4 if etm else 0

    def seal(self, seq: int, *packet: bytes) -> list[bytes]:
        # CTR is a stream cipher: each piece is encrypted as it comes.
        update = self._encryptor.update
        first = packet[0]
        if self._etm:
            head = first[:4]
            out = [head, update(memoryview(first)[4:])]
            out += [update(piece) for piece in packet[1:]]
            out.append(self._mac.digest(seq, *out))
            return out
        mac = self._mac.digest(seq, *packet)
        out = [update(piece) for piece in packet]
        out.append(mac)
        return out


class _CtrHmacOpener:
    """Incoming AES-CTR with HMAC; EtM checks the MAC before decrypting."""

    blockSize = 16

    def __init__(self, key: bytes, iv: bytes, mac: _Mac, etm: bool) -> None:
        self._decryptor = Cipher(algorithms.AES(key), modes.CTR(iv[:16])).decryptor()
        self._mac = mac
        self._etm = etm
        self.aadLength = 4 if etm else 0
        self.lengthBytes = 4 if etm else 16
        self.macLength = mac.size
        self._first = b""

    def packetLength(self, seq: int, head: memoryview) -> int:
        if self._etm:
            return int(_LENGTH.unpack_from(head)[0])
        # CTR is a stream: the first block is decrypted once and kept.
        self._first = self._decryptor.update(head[:16])
        return int(_LENGTH.unpack_from(self._first)[0])

    def open(self, seq: int, wire: memoryview) -> bytes | memoryview:
        end = len(wire) - self.macLength
        tag = bytes(wire[end:])
        if self._etm:
            if not hmac.compare_digest(self._mac.digest(seq, wire[:end]), tag):
                raise MACError
            return _decrypt(self._decryptor, wire[4:end])
        first, self._first = self._first, b""
        rest = _decrypt(self._decryptor, wire[16:end])
        if not hmac.compare_digest(self._mac.digest(seq, first, rest), tag):
            raise MACError
        if wire.readonly:
            return memoryview(first + rest)[4:]
        wire[:16] = first  # rest was decrypted in place behind it
        return wire[4:end]


def _decrypt(context: CipherContext, data: memoryview) -> bytes | memoryview:
    """``data`` decrypted: in place (a view of it) if writable, else new bytes."""
    if data.readonly:
        return context.update(data)
    context.update_into(data, data)
    return data


def _chacha(key: bytes, seq: int) -> Cipher[None]:
    """ChaCha20 at block 0 with the sequence number as the 64-bit nonce.

    cryptography takes a 16-byte nonce that fills ChaCha's state words 12-15:
    the 64-bit little-endian block counter then, for OpenSSH's construction,
    the sequence number as a big-endian uint64.
    """
    return Cipher(algorithms.ChaCha20(key, bytes(8) + seq.to_bytes(8, "big")), None)


class _ChaChaPoly:
    """chacha20-poly1305@openssh.com, both directions.

    The 64 bytes of key material are K_2 (first 32, payload and Poly1305
    key) then K_1 (last 32, the length field only), as PROTOCOL.chacha20poly1305
    says.  Block 0 of K_2's stream is the Poly1305 key, the payload starts at
    block 1, and the tag covers the encrypted length and payload.
    """

    blockSize = 8
    aadLength = 4
    lengthBytes = 4
    macLength = 16

    def __init__(self, key: bytes) -> None:
        self._mainKey = key[:32]
        self._headerKey = key[32:64]

    def seal(self, seq: int, *packet: bytes) -> list[bytes]:
        first = memoryview(packet[0])
        length = _chacha(self._headerKey, seq).encryptor().update(first[:4])
        stream = _chacha(self._mainKey, seq).encryptor()
        update = stream.update
        poly = Poly1305(update(_ZERO_BLOCK)[:32])
        out = [length, update(first[4:])]
        out += [update(piece) for piece in packet[1:]]
        for chunk in out:
            poly.update(chunk)
        out.append(poly.finalize())
        return out

    def packetLength(self, seq: int, head: memoryview) -> int:
        plain = _chacha(self._headerKey, seq).decryptor().update(head[:4])
        return int(_LENGTH.unpack(plain)[0])

    def open(self, seq: int, wire: memoryview) -> bytes | memoryview:
        end = len(wire) - 16
        stream = _chacha(self._mainKey, seq).decryptor()
        polyKey = stream.update(_ZERO_BLOCK)[:32]
        try:
            Poly1305.verify_tag(polyKey, wire[:end], bytes(wire[end:]))
        except InvalidSignature:
            raise MACError from None
        return _decrypt(stream, wire[4:end])


class _AesGcm:
    """aes128-gcm@openssh.com / aes256-gcm@openssh.com, both directions.

    RFC 5647: the length field is cleartext and authenticated as AAD; the
    nonce is the 4-byte fixed field then an 8-byte invocation counter, both
    from the 12-byte derived IV, and the counter goes up by one per packet.
    """

    blockSize = 16
    aadLength = 4
    lengthBytes = 4
    macLength = 16

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def nextNonce(self) -> bytes:
        """The nonce for the next packet; advances the invocation counter."""
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & _U64_MASK
        return nonce

    def seal(self, seq: int, *packet: bytes) -> list[bytes]:
        # One-shot AEAD: the plaintext must be contiguous.
        whole = packet[0] if len(packet) == 1 else b"".join(packet)
        view = memoryview(whole)
        return [whole[:4], self._aead.encrypt(self.nextNonce(), view[4:], view[:4])]

    def packetLength(self, seq: int, head: memoryview) -> int:
        return int(_LENGTH.unpack_from(head)[0])

    def open(self, seq: int, wire: memoryview) -> bytes | memoryview:
        nonce = self.nextNonce()
        try:
            if wire.readonly:
                return self._aead.decrypt(nonce, wire[4:], wire[:4])
            body = wire[4:-16]
            self._aead.decrypt_into(nonce, wire[4:], wire[:4], body)  # in place
        except InvalidTag:
            raise MACError from None
        return body


@attrs.frozen
class _CipherSpec:
    keySize: int
    aead: bool


CIPHERS: dict[bytes, _CipherSpec] = {
    CHACHA20_POLY1305: _CipherSpec(64, aead=True),
    AES128_GCM: _CipherSpec(16, aead=True),
    AES256_GCM: _CipherSpec(32, aead=True),
    b"aes128-ctr": _CipherSpec(16, aead=False),
    b"aes192-ctr": _CipherSpec(24, aead=False),
    b"aes256-ctr": _CipherSpec(32, aead=False),
    NONE: _CipherSpec(0, aead=False),
}

#: MAC name -> (hash, encrypt-then-MAC).
MACS: dict[bytes, tuple[type[hashes.HashAlgorithm], bool]] = {
    HMAC_SHA2_256_ETM: (hashes.SHA256, True),
    HMAC_SHA2_512_ETM: (hashes.SHA512, True),
    HMAC_SHA2_256: (hashes.SHA256, False),
    HMAC_SHA2_512: (hashes.SHA512, False),
}


def isAEAD(cipher: bytes | None) -> bool:
    """Whether ``cipher`` authenticates itself, so no MAC is negotiated for it."""
    spec = CIPHERS.get(cipher or b"")
    return spec is not None and spec.aead


def _keyed(mac: bytes, macKey: bytes) -> tuple[_Mac, bool]:
    algorithm, etm = MACS[mac]
    return _Mac(algorithm(), macKey), etm


def makeSealer(
    cipher: bytes, mac: bytes, iv: bytes, key: bytes, macKey: bytes
) -> Sealer:
    """The outgoing half for the negotiated ``cipher`` and ``mac``."""
    key = key[: CIPHERS[cipher].keySize]
    if cipher == NONE:
        return _Plain()
    if cipher == CHACHA20_POLY1305:
        return _ChaChaPoly(key)
    if isAEAD(cipher):
        return _AesGcm(key, iv)
    return _CtrHmacSealer(key, iv, *_keyed(mac, macKey))


def makeOpener(
    cipher: bytes, mac: bytes, iv: bytes, key: bytes, macKey: bytes
) -> Opener:
    """The incoming half for the negotiated ``cipher`` and ``mac``."""
    key = key[: CIPHERS[cipher].keySize]
    if cipher == NONE:
        return _Plain()
    if cipher == CHACHA20_POLY1305:
        return _ChaChaPoly(key)
    if isAEAD(cipher):
        return _AesGcm(key, iv)
    return _CtrHmacOpener(key, iv, *_keyed(mac, macKey))


def _macName(cipher: bytes | None, mac: bytes | None) -> bytes | None:
    if isAEAD(cipher):
        return IMPLICIT_MAC
    if cipher == NONE:
        return NONE if mac == NONE else None
    # An unknown name stays unmatched, so Conch refuses the key exchange.
    return mac if mac in MACS else None


class PacketCiphers:
    """Both directions' protection, with the surface of Conch's ``SSHCiphers``.

    Same constructor and ``setKeys``, the same name and size attributes, so
    Conch's KEX code (which builds ``SSHCiphers`` and keys it) drives this
    instead.  For an AEAD cipher the MAC name is ``IMPLICIT_MAC``, whatever
    (if anything) the MAC lists matched: OpenSSH ignores them for AEAD.
    """

    def __init__(
        self,
        outCip: bytes | None,
        inCip: bytes | None,
        outMac: bytes | None,
        inMac: bytes | None,
    ) -> None:
        self.outCipType = outCip if outCip in CIPHERS else None
        self.inCipType = inCip if inCip in CIPHERS else None
        self.outMACType = _macName(self.outCipType, outMac)
        self.inMACType = _macName(self.inCipType, inMac)
        self.encBlockSize = 0
        self.decBlockSize = 0
        self.verifyDigestSize = 0
        self.sealer: Sealer = _Unkeyed()
        self.opener: Opener = _Unkeyed()

    @classmethod
    def fromConch(cls, ciphers: SSHCiphers) -> PacketCiphers:
        """Ours for the names Conch negotiated; Conch keys it afterwards."""
        if ciphers.encBlockSize:
            # Its keys are not recoverable from an SSHCiphers object.
            raise ValueError("cannot adopt an already-keyed SSHCiphers")
        return cls(
            ciphers.outCipType, ciphers.inCipType, ciphers.outMACType, ciphers.inMACType
        )

    def setKeys(
        self,
        outIV: bytes,
        outKey: bytes,
        inIV: bytes,
        inKey: bytes,
        outInteg: bytes,
        inInteg: bytes,
    ) -> None:
        """Key both directions from the derived keys (RFC 4253 section 7.2)."""
        if None in (self.outCipType, self.inCipType, self.outMACType, self.inMACType):
            raise ValueError("unnegotiated cipher or MAC")
        assert self.outCipType and self.inCipType and self.outMACType and self.inMACType
        self.sealer = makeSealer(
            self.outCipType, self.outMACType, outIV, outKey, outInteg
        )
        self.opener = makeOpener(self.inCipType, self.inMACType, inIV, inKey, inInteg)
        self.encBlockSize = self.sealer.blockSize
        self.decBlockSize = self.opener.blockSize
        self.verifyDigestSize = self.opener.macLength
