"""A Conch SSH transport an OpenSSH user would accept from a gateway.

Conch's transport (twisted.conch.ssh.transport) lacks AEAD ciphers and strict
KEX, offers CBC/3DES/SHA-1/MD5, and its packet loop costs more CPU than it
needs (CONCH_NOTES).  ``ModernTransportMixin`` fixes that on either side by
overriding only the packet layer and the KEX bookkeeping around it; host key
algorithms, userauth and services stay Conch's (or a cooperating subclass's).

- Ciphers and MACs come from ``teleconch.conch.ciphers``.
- Strict KEX (OpenSSH PROTOCOL, "kex-strict-*-v00@openssh.com", the Terrapin
  fix, CVE-2023-48795): the peer's initial KEXINIT must be its first packet,
  nothing but key exchange messages until its NEWKEYS, and each direction's
  sequence number restarts at 0 after every NEWKEYS.
- The packet path copies little: the input buffer is a bytearray read at an
  offset, packets are decrypted in place in it (memoryviews), and each
  payload is copied once, into the bytes Conch's dispatch gets.  Outgoing
  header, payload and padding go to the cipher as separate pieces (no join),
  padding comes from a pooled random source, and the packets made while one
  read is handled leave in one ``writeSequence``.
- Nothing on the per-packet path calls the logger.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.transport import (
    DISCONNECT_COMPRESSION_ERROR,
    DISCONNECT_CONNECTION_LOST,
    DISCONNECT_MAC_ERROR,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_DISCONNECT,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_UNIMPLEMENTED,
    SSHCiphers,
    SSHClientTransport,
    SSHServerTransport,
    SSHTransportBase,
)

from teleconch.conch import ciphers
from teleconch.conch.ciphers import (
    MAX_PACKET_LENGTH,
    MACError,
    PacketCiphers,
    PaddingSource,
    Sealer,
)

KEX_STRICT_CLIENT = b"kex-strict-c-v00@openssh.com"
KEX_STRICT_SERVER = b"kex-strict-s-v00@openssh.com"

#: Ciphers offered, most preferred first.  No CBC, no 3DES.
CIPHERS = [
    ciphers.CHACHA20_POLY1305,
    ciphers.AES128_GCM,
    ciphers.AES256_GCM,
    b"aes128-ctr",
    b"aes192-ctr",
    b"aes256-ctr",
]
#: MACs offered (for the CTR ciphers only).  No SHA-1, no MD5.
MACS = [
    ciphers.HMAC_SHA2_256_ETM,
    ciphers.HMAC_SHA2_512_ETM,
    ciphers.HMAC_SHA2_256,
    ciphers.HMAC_SHA2_512,
]
#: Encrypt-then-MAC only (ssh-audit warns on encrypt-and-MAC).
ETM_MACS = [mac for mac in MACS if mac.endswith(b"-etm@openssh.com")]
#: Key exchanges we allow, most preferred first, where Conch implements them
#: on that side (the ML-KEM hybrid is server-only in Conch).  No SHA-1 groups,
#: no NIST curves, no finite-field group exchange (``cryptography`` deprecates
#: it): what ssh-audit rates good.
KEY_EXCHANGES = [
    b"mlkem768x25519-sha256",
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
]

_SEQ_MASK = 0xFFFFFFFF
_HEADER = struct.Struct(">LBB")  # packet_length, padding_length, message number
_HEADER_COMPRESSED = struct.Struct(">LB")
_UINT32 = struct.Struct(">L")
_MAX_VERSION_BYTES = 4096
# Unread input kept while packet reading is paused; otherwise under one packet.
_MAX_UNPROCESSED = 4 * MAX_PACKET_LENGTH


def _isKeyExchangeMessage(messageType: int) -> bool:
    """What may pass while the initial keys are negotiated: DISCONNECT and 21-49."""
    return messageType == MSG_DISCONNECT or MSG_KEXINIT < messageType < 50


if TYPE_CHECKING:
    _Base = SSHTransportBase
else:
    _Base = object


class _CiphersSlot:
    """An attribute that holds ``PacketCiphers``.

    Conch's own KEX code assigns ``SSHCiphers(...)`` to ``currentEncryptions``
    and ``nextEncryptions`` and then calls ``setKeys`` on whatever it reads
    back; converting on assignment puts our implementation in its place.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._key = "_teleconch_" + name

    def __get__(self, instance: object, owner: type | None = None) -> PacketCiphers:
        if instance is None:
            return self  # type: ignore[return-value]
        try:
            value: PacketCiphers = instance.__dict__[self._key]
        except KeyError:
            raise AttributeError(self._name) from None
        return value

    def __set__(self, instance: object, value: PacketCiphers | SSHCiphers) -> None:
        if not isinstance(value, PacketCiphers):
            value = PacketCiphers.fromConch(value)
        instance.__dict__[self._key] = value


class ModernTransportMixin(_Base):
    """AEAD ciphers, strict KEX, a strict algorithm policy and a leaner packet loop.

    Put it before ``SSHServerTransport`` or ``SSHClientTransport`` in the bases.
    """

    supportedCiphers = list(CIPHERS)
    supportedMACs = list(MACS)
    # Pre-authentication zlib is attack surface and costs CPU on every byte.
    supportedCompressions = [b"none"]

    # Conch types these as SSHCiphers; the slot swaps in our PacketCiphers.
    currentEncryptions = _CiphersSlot()  # type: ignore[assignment]
    nextEncryptions = _CiphersSlot()  # type: ignore[assignment]

    #: Whether both sides advertised strict KEX in their initial KEXINIT.
    strictKex = False

    _inbuf: bytearray
    # Outgoing protection between our NEWKEYS and the switch of currentEncryptions.
    _sealer: Sealer | None = None
    _inpos = 0
    _pendingLength: int | None = None
    # Sequence number of the packet being dispatched (not of the next one).
    _packetSeq = 0
    _processingInput = False
    # Wire chunks of the packets sent while a read is handled (None: write now).
    _outbox: list[bytes] | None = None
    # Input stays in the buffer while this is set (client: keys not ready yet).
    _inputPaused = False
    _inputClosed = False
    _peerKexInitSeen = False
    # Until the peer's first NEWKEYS: the window strict KEX polices.
    _initialKex = True
    _awaitingNewKeys = False
    _secured = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Narrow the Conch base's key exchanges to ours, in our order."""
        super().__init_subclass__(**kwargs)
        if "supportedKeyExchanges" not in cls.__dict__:
            available = set(cls.supportedKeyExchanges)
            cls.supportedKeyExchanges = [k for k in KEY_EXCHANGES if k in available]

    def connectionMade(self) -> None:
        """Set up our buffers, then let Conch send the version and KEXINIT."""
        self._inbuf = bytearray()
        self._padding = PaddingSource()
        super().connectionMade()

    # -- key exchange ---------------------------------------------------------

    def sendKexInit(self) -> None:
        """Advertise strict KEX, in the initial KEXINIT only (as the spec says)."""
        if self.sessionID is not None:
            super().sendKexInit()
            return
        marker = KEX_STRICT_CLIENT if self.isClient else KEX_STRICT_SERVER
        offered = self.supportedKeyExchanges
        # Conch builds the kex list from this attribute; the marker must not
        # stay in it, or negotiation could consider it.
        self.supportedKeyExchanges = [*offered, marker]
        try:
            super().sendKexInit()
        finally:
            self.supportedKeyExchanges = offered

    def ssh_KEXINIT(self, packet: bytes) -> Any:
        """Turn on strict KEX if the peer's initial KEXINIT asks for it."""
        if not self._peerKexInitSeen:
            self._peerKexInitSeen = True
            peerMarker = KEX_STRICT_SERVER if self.isClient else KEX_STRICT_CLIENT
            ourMarker = KEX_STRICT_CLIENT if self.isClient else KEX_STRICT_SERVER
            ours = getNS(self.ourKexInitPayload[17:])[0].split(b",")
            if ourMarker in ours and peerMarker in getNS(packet[16:])[0].split(b","):
                self.strictKex = True
                self._log.debug("strict KEX enabled")
                if self._packetSeq != 0:
                    self._strictViolation(b"KEXINIT was not the first packet")
                    return None
        return super().ssh_KEXINIT(packet)

    def _allowedKeyExchangeMessageType(self, messageType: int) -> bool:
        """Hold back everything but key exchange until the first keys are in use.

        A strict peer drops the connection on any other message (IGNORE, DEBUG,
        UNIMPLEMENTED included) before its NEWKEYS; they are sent afterwards.
        """
        if not self._secured:
            return _isKeyExchangeMessage(messageType)
        allowed: bool = super()._allowedKeyExchangeMessageType(messageType)
        return allowed

    def _newKeys(self) -> None:
        """Note that the pending keys are in use (the peer's NEWKEYS arrived)."""
        self._awaitingNewKeys = False
        self._secured = True
        self._sealer = None
        super()._newKeys()

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        """Take new keys; keep Conch's client from redoing its setup on a re-key.

        Stock Conch calls ``connectionSecure`` (which requests the service
        again) after every key exchange, and never clears ``_gotNewKeys``.
        """
        if (
            self.isClient
            and self._secured
            and packet == b""
            and self.nextEncryptions.encBlockSize
        ):
            self._gotNewKeys = 0
            self._newKeys()
        else:
            super().ssh_NEWKEYS(packet)  # type: ignore[misc]  # on both Conch sides
            if self.isClient and not self._awaitingNewKeys:
                self._gotNewKeys = 0
        if self._inputPaused and not self._awaitingNewKeys:
            # Packets after the peer's NEWKEYS waited for these keys.
            self._inputPaused = False
            self._processInput()

    def _strictViolation(self, what: bytes) -> None:
        self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"strict KEX violation: " + what)

    # -- sending --------------------------------------------------------------

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        """Pad, seal and write one packet (RFC 4253 section 6)."""
        if (
            self._keyExchangeState != self._KEY_EXCHANGE_NONE
            and not self._allowedKeyExchangeMessageType(messageType)
        ):
            assert self._blockedByKeyExchange is not None
            self._blockedByKeyExchange.append((messageType, payload))
            return
        sealer = self._sealer or self.currentEncryptions.sealer
        blockSize = sealer.blockSize
        if self.outgoingCompression:
            data = bytes((messageType,)) + payload
            body = self.outgoingCompression.compress(data)
            body += self.outgoingCompression.flush(zlib.Z_SYNC_FLUSH)
            size = len(body)
        else:
            size = 1 + len(payload)
        # Without AAD the length field is inside the first cipher block.
        padLength = blockSize - ((5 - sealer.aadLength + size) % blockSize)
        if padLength < 4:
            padLength += blockSize
        packetLength = 1 + size + padLength
        if self.outgoingCompression:
            header = _HEADER_COMPRESSED.pack(packetLength, padLength)
        else:
            header = _HEADER.pack(packetLength, padLength, messageType)
            body = payload
        seq = self.outgoingPacketSequence
        chunks = sealer.seal(seq, header, body, self._padding.take(padLength))
        outbox = self._outbox
        if outbox is None:
            assert self.transport is not None
            self.transport.writeSequence(chunks)
        else:
            outbox += chunks
        if messageType == MSG_NEWKEYS:
            # RFC 4253 7.3: everything after our NEWKEYS uses the new keys.
            # Conch switches only when the peer's NEWKEYS arrives, so a
            # DISCONNECT sent in between would be unreadable to the peer.
            self._sealer = self.nextEncryptions.sealer
            if self.strictKex:
                self.outgoingPacketSequence = 0
                return
        self.outgoingPacketSequence = (seq + 1) & _SEQ_MASK

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        """Disconnect, and read nothing more from this peer.

        What is batched goes out first, then DISCONNECT is written at once
        (Conch closes the connection straight after sending it).
        """
        self._inputClosed = True
        self._flushOutbox()
        super().sendDisconnect(reason, desc)

    def _flushOutbox(self) -> None:
        """Write the batched packets, in one ``writeSequence``; stop batching."""
        outbox, self._outbox = self._outbox, None
        if outbox:
            assert self.transport is not None
            self.transport.writeSequence(outbox)

    def sendUnimplemented(self) -> None:
        """Name the rejected packet's own sequence number (RFC 4253 section 11.4)."""
        self.sendPacket(MSG_UNIMPLEMENTED, _UINT32.pack(self._packetSeq))

    # -- receiving ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Find the peer's version line, then decode and dispatch whole packets."""
        if self._inputClosed:
            return
        if self.gotVersion:
            self._inbuf += data
        elif not self._readVersion(data):
            return
        self._processInput()
        if len(self._inbuf) > _MAX_UNPROCESSED:
            # Only possible while paused: a peer flooding us before we can read.
            self.sendDisconnect(
                DISCONNECT_PROTOCOL_ERROR, b"too much unprocessed input"
            )

    def _readVersion(self, data: bytes) -> bool:
        """Conch's version-line handling; True once packets may follow.

        The 4 KB limit is on the lines up to the end of the version line, not
        on the packets that may follow it in the same read.
        """
        buf = self.buf = self.buf + data
        start = 0
        if not self.isClient:
            # RFC 4253 4.2: a client's first line is its version line, at most
            # 255 bytes with CR LF (HTTP, TLS, banners are refused at once).
            end = buf.find(b"\n")
            line = buf if end == -1 else buf[: end + 1]
            if not b"SSH-".startswith(line[:4]) or len(line) > 255 or b"\0" in line:
                self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"bad version line")
                return False
        while (end := buf.find(b"\n", start)) != -1 and not buf.startswith(
            b"SSH-", start
        ):
            start = end + 1  # a line before the version line (RFC 4253 4.2)
        if (len(buf) if end == -1 else end) > _MAX_VERSION_BYTES:
            self.sendDisconnect(
                DISCONNECT_CONNECTION_LOST,
                b"Peer version string longer than 4KB. "
                b"Preventing a denial of service attack.",
            )
            return False
        if end == -1:
            return False
        line = buf[start:end]
        self.gotVersion = True
        self.otherVersionString = line.rstrip(b"\r")
        remoteVersion = line.split(b"-")[1]
        if remoteVersion not in self.supportedVersions:
            self._unsupportedVersionReceived(remoteVersion)
            return False
        self._inbuf += buf[end + 1 :]
        self.buf = b""
        return True

    def _processInput(self) -> None:
        """Dispatch every complete packet in the buffer, in order."""
        if self._processingInput:
            return
        self._processingInput = True
        self._outbox = []
        try:
            while not (self._inputPaused or self._inputClosed):
                packet = self._readPacket()
                if packet is None:
                    break
                messageNum, payload = packet
                if (
                    self.strictKex
                    and self._initialKex
                    and not _isKeyExchangeMessage(messageNum)
                ):
                    self._strictViolation(
                        b"unexpected packet type %d (seqnr %d)"
                        % (messageNum, self._packetSeq)
                    )
                    break
                if messageNum == MSG_NEWKEYS:
                    self._awaitingNewKeys = True
                self.dispatchMessage(messageNum, payload)
                if messageNum == MSG_NEWKEYS:
                    self._initialKex = False
                    if self._awaitingNewKeys:
                        # Conch's client defers NEWKEYS until the host key is
                        # verified; what follows is under keys it lacks yet.
                        self._inputPaused = True
        finally:
            self._processingInput = False
            self._flushOutbox()
            self._compactInput()

    def _compactInput(self) -> None:
        if not self._inpos:
            return
        try:
            del self._inbuf[: self._inpos]
        except BufferError:
            # A memoryview still refers to it (an exception's traceback).
            self._inbuf = self._inbuf[self._inpos :]
        self._inpos = 0

    def getPacket(self) -> bytes | None:
        """Conch's API: the next payload, message number first, or None."""
        packet = self._readPacket()
        if packet is None:
            return None
        return bytes((packet[0],)) + packet[1]

    def _readPacket(self) -> tuple[int, bytes] | None:
        """Decode the next whole packet: (message number, rest of payload).

        Reads the length first (decrypting only that much), waits for the
        whole packet, then checks its MAC or tag before using its contents.
        """
        opener = self.currentEncryptions.opener
        buf = self._inbuf
        start = self._inpos
        available = len(buf) - start
        seq = self.incomingPacketSequence
        packetLength = self._pendingLength
        if packetLength is None:
            if available < opener.lengthBytes:
                return None
            head = memoryview(buf)[start : start + opener.lengthBytes]
            packetLength = opener.packetLength(seq, head)
            del head
            aligned = packetLength + 4 - opener.aadLength
            if (
                packetLength < 5
                or packetLength > MAX_PACKET_LENGTH
                or aligned % opener.blockSize
            ):
                self.sendDisconnect(
                    DISCONNECT_PROTOCOL_ERROR, b"bad packet length %d" % packetLength
                )
                return None
            self._pendingLength = packetLength
        total = 4 + packetLength + opener.macLength
        if available < total:
            return None
        self._pendingLength = None
        self._inpos = start + total
        try:
            body = opener.open(seq, memoryview(buf)[start : start + total])
        except MACError:
            self.sendDisconnect(DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        padLength = body[0]
        end = len(body) - padLength
        if padLength < 4 or end < 2:
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"bad padding length")
            return None
        if self.incomingCompression:
            try:
                data = self.incomingCompression.decompress(bytes(body[1:end]))
            except zlib.error:
                self._log.failure("Error decompressing payload")
                self.sendDisconnect(DISCONNECT_COMPRESSION_ERROR, b"compression error")
                return None
            if not data:
                self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"empty payload")
                return None
            messageNum, payload = data[0], data[1:]
        else:
            messageNum = body[1]
            payload = bytes(body[2:end])  # the one copy of the payload
        del body
        self._packetSeq = seq
        if messageNum == MSG_NEWKEYS and self.strictKex:
            self.incomingPacketSequence = 0
        else:
            self.incomingPacketSequence = (seq + 1) & _SEQ_MASK
        return messageNum, payload


class ServerTransport(ModernTransportMixin, SSHServerTransport):
    """Conch's server transport with ``ModernTransportMixin``."""


class ClientTransport(ModernTransportMixin, SSHClientTransport):
    """Conch's client transport with ``ModernTransportMixin``."""
