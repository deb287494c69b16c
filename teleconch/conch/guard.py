"""Protocol hygiene for a Conch SSH server facing the Internet.

Conch trusts its peer more than a gateway can: a malformed message raises out
of ``dataReceived`` (an "Unhandled Error" traceback per packet), a service
starts on a plaintext ``SERVICE_REQUEST`` before any key exchange (and on
every later one, replacing the running service), key exchange messages are
taken out of order, and every unknown message gets a reply and a log line
holding its payload.  ``ProtocolGuardMixin`` answers each
of these in one place, the transport's dispatch:

- a message that does not parse is a DISCONNECT PROTOCOL_ERROR "malformed
  <NAME> message" and one log line, never a traceback;
- ``SERVICE_REQUEST`` before the first NEWKEYS or once a service runs (only
  one ssh-userauth request is valid), and KEXINIT, NEWKEYS or a key exchange
  message (30-49) outside its place in the exchange, are refused;
- unknown messages are answered without logging their payload, and more
  than a few of them (or of DEBUG and UNIMPLEMENTED) before authentication
  end the connection;
- disconnects are one line each: the peer's ordinary ones at info, others
  at warn.

``GuardedConnectionMixin`` does the same for channel requests, whose handlers
may fail inside a Deferred that Conch drops when no reply was asked for.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import _kex, connection, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import (
    DISCONNECT_AUTH_CANCELLED_BY_USER,
    DISCONNECT_BY_APPLICATION,
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_DEBUG,
    MSG_DISCONNECT,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_SERVICE_REQUEST,
    MSG_UNIMPLEMENTED,
    SSHServerTransport,
    messages,
)
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

#: What parsing a message raises when it is short, too long or not text:
#: ``getNS``/``struct.unpack`` (struct.error, IndexError), ``ord(b"")``
#: (TypeError), ``.decode()`` (UnicodeDecodeError, a ValueError), an unknown
#: channel number (KeyError), a bad curve point (ValueError).
PARSE_ERRORS: tuple[type[Exception], ...] = (
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
)

#: Disconnect reasons a person's client sends when all is well: exit, Ctrl-C
#: at a prompt, no more keys to try.
ORDINARY_DISCONNECTS = frozenset(
    {
        DISCONNECT_BY_APPLICATION,
        DISCONNECT_AUTH_CANCELLED_BY_USER,
        DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    }
)

#: How much of a peer's disconnect text goes into the log.
_MAX_LOGGED_REASON = 200
#: Key exchange messages (30-49) a server accepts, by kind of key exchange.
_GEX_MESSAGES = frozenset({30, 32, 34})  # REQUEST_OLD, INIT, REQUEST
_ONE_SHOT_MESSAGES = frozenset({30})  # KEXDH_INIT / KEX_ECDH_INIT / HYBRID_INIT
#: Known messages that only make log lines; counted with the unknown ones.
_NOISE = frozenset({MSG_DEBUG, MSG_UNIMPLEMENTED})

_log = Logger()


def _text(data: bytes) -> str:
    return data[:_MAX_LOGGED_REASON].decode("utf-8", "backslashreplace")


def message_name(messageNum: int, service: Any = None) -> str:
    """``SERVICE_REQUEST``, ``CHANNEL_OPEN``...: how a message is named in logs
    (by the running service's table, else by the standard services')."""
    tables = [messages] if messageNum < 50 else [
        getattr(service, "protocolMessages", {}),
        userauth.SSHUserAuthServer.protocolMessages,
        connection.SSHConnection.protocolMessages,
    ]  # fmt: skip
    for table in tables:
        if messageNum in table:
            return table[messageNum][4:]
    return f"type {messageNum}"


def strings_end(data: bytes, count: int) -> bytes:
    """What follows ``count`` SSH strings; ValueError if one is cut short."""
    for _ in range(count):
        (length,) = struct.unpack(">L", data[:4])
        if len(data) < 4 + length:
            raise ValueError(f"a string of {length} bytes has {len(data) - 4}")
        data = data[4 + length :]
    return data


def disconnect_malformed(transport: Any, name: str, error: object) -> None:
    """DISCONNECT PROTOCOL_ERROR "malformed NAME message", with one log line."""
    desc = b"malformed %s message" % name.encode()
    if isinstance(transport, ProtocolGuardMixin):
        transport.disconnectDetail = repr(error)
        transport.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, desc)
    else:
        _log.info("{desc} ({error!r})", desc=desc.decode(), error=error)
        transport.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, desc)


if TYPE_CHECKING:
    _Base = SSHServerTransport
    _ConnBase = connection.SSHConnection
else:
    _Base = _ConnBase = object


class ProtocolGuardMixin(_Base):
    """A server transport that disconnects cleanly on bad input.

    Place it after ``ModernTransportMixin`` (which owns the packet layer) and
    before the Conch server transport: it replaces Conch's ``sendDisconnect``
    and ``receiveError`` and checks every message before Conch's dispatch.
    """

    #: Unknown, DEBUG and UNIMPLEMENTED messages tolerated before authentication.
    maxNoiseBeforeAuth = 32

    _guardLog = Logger()
    _noise = 0
    # This key exchange: the peer's KEXINIT is in, our NEWKEYS is out.
    _peerKexInit = False
    _newKeysExpected = False
    # The first keys are in use both ways (the peer's first NEWKEYS arrived).
    _keysInUse = False
    _disconnected = False
    #: What the log line of our DISCONNECT adds (the peer is not told).
    disconnectDetail: str | None = None

    # -- dispatch ---------------------------------------------------------------

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        """Refuse what is out of place, answer what is unknown, catch bad parses."""
        if self._disconnected:
            return
        refusal = self._outOfPlace(messageNum)
        if refusal is not None:
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, refusal)
            return
        if messageNum in _NOISE or self._unimplemented(messageNum):
            self._noise += 1
            if self._noise > self.maxNoiseBeforeAuth and not self._authenticated:
                self.sendDisconnect(
                    DISCONNECT_PROTOCOL_ERROR,
                    b"too many unimplemented or debug messages before authentication",
                )
                return
            if messageNum not in _NOISE:
                self.sendUnimplemented()
                return
        try:
            super().dispatchMessage(messageNum, payload)
        except PARSE_ERRORS as e:
            if not self._disconnected:
                disconnect_malformed(self, message_name(messageNum, self.service), e)

    @property
    def disconnectSent(self) -> bool:
        """Whether our DISCONNECT is out: nothing the peer sends counts now."""
        return self._disconnected

    @property
    def _authenticated(self) -> bool:
        return hasattr(self, "avatar")

    def _outOfPlace(self, messageNum: int) -> bytes | None:
        """Why this message may not come now, or None."""
        if not self._keysInUse:
            if messageNum == MSG_SERVICE_REQUEST:
                return b"service request before key exchange"
            # RFC 4253 7.1: transport-generic and key exchange messages only.
            if not (MSG_DISCONNECT <= messageNum <= MSG_DEBUG or 20 <= messageNum < 50):
                name = message_name(messageNum, self.service).encode()
                return b"unexpected %s message before key exchange" % name
        if messageNum == MSG_KEXINIT and self._peerKexInit:
            return b"unexpected KEXINIT message"
        if messageNum == MSG_NEWKEYS and not self._newKeysExpected:
            return b"unexpected NEWKEYS message"
        if 30 <= messageNum < 50 and not self._kexMessageExpected(messageNum):
            return b"unexpected %s message" % message_name(messageNum).encode()
        return None

    def _kexMessageExpected(self, messageNum: int) -> bool:
        if not self._peerKexInit or self._newKeysExpected:
            return False
        kex = self.kexAlg
        fixed = (
            _kex.isFixedGroup(kex) or _kex.isEllipticCurve(kex) or _kex.isPQHybrid(kex)
        )
        return messageNum in (_ONE_SHOT_MESSAGES if fixed else _GEX_MESSAGES)

    def _unimplemented(self, messageNum: int) -> bool:
        """Whether Conch would answer UNIMPLEMENTED (and log the payload)."""
        if messageNum < 50:
            name = messages.get(messageNum)
            return name is None or not hasattr(self, "ssh_" + name[4:])
        if self.service is None:
            return True
        name = self.service.protocolMessages.get(messageNum)
        return name is None or not hasattr(self.service, "ssh_" + name[4:])

    # -- messages Conch reads too leniently -----------------------------------

    # Conch's getNS returns a short string where the length says more.

    def ssh_IGNORE(self, packet: bytes) -> None:
        strings_end(packet, 1)

    def ssh_DEBUG(self, packet: bytes) -> None:
        strings_end(packet[1:] if packet else b"", 1)  # the language tag may lack
        super().ssh_DEBUG(packet)

    def ssh_DISCONNECT(self, packet: bytes) -> None:
        strings_end(packet[4:] if len(packet) >= 4 else b"", 1)
        super().ssh_DISCONNECT(packet)

    def ssh_SERVICE_REQUEST(self, packet: bytes) -> None:
        if strings_end(packet, 1):
            raise ValueError("bytes after the service name")
        # One ssh-userauth request per connection; ssh-connection starts only
        # through USERAUTH_SUCCESS (as OpenSSH).  Conch would start a service
        # each time: a fresh userauth (its attempt count back at zero), or one
        # replacing the connection service after login.
        if self.service is not None:
            self.sendDisconnect(
                DISCONNECT_PROTOCOL_ERROR, b"unexpected SERVICE_REQUEST message"
            )
            return
        super().ssh_SERVICE_REQUEST(packet)

    # -- key exchange bookkeeping ---------------------------------------------

    def ssh_KEXINIT(self, packet: bytes) -> Any:
        # Cookie, ten name-lists, first_kex_packet_follows, reserved uint32.
        if len(strings_end(packet[16:], 10)) < 5 or len(packet) < 16:
            raise ValueError("KEXINIT ends early")
        result = super().ssh_KEXINIT(packet)
        self._peerKexInit = not self._disconnected
        return result

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        super()._keySetup(sharedSecret, exchangeHash)
        self._newKeysExpected = True

    def _newKeys(self) -> None:
        self._peerKexInit = self._newKeysExpected = False
        self._keysInUse = True
        super()._newKeys()

    # -- disconnects --------------------------------------------------------------

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        """Conch's, with one log line (and ``disconnectDetail``, for the log only)."""
        if self._disconnected:
            return
        self._disconnected = True
        if isinstance(desc, str):  # Conch's hybrid KEX passes text
            desc = desc.encode()
        self.sendPacket(MSG_DISCONNECT, struct.pack(">L", reason) + NS(desc) + NS(b""))
        self._guardLog.info(
            "disconnecting {peer}: {reason}{detail} (code {code})",
            peer=self._peerName(),
            reason=desc.decode("utf-8", "backslashreplace"),
            detail=f" ({self.disconnectDetail})" if self.disconnectDetail else "",
            code=reason,
        )
        assert self.transport is not None
        self.transport.loseConnection()

    def receiveUnimplemented(self, seqnum: int) -> None:
        """Conch warns on each; a peer can send any number of them."""
        self._guardLog.debug("peer did not implement packet {seqnum}", seqnum=seqnum)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """The peer's DISCONNECT: ordinary ones at info, the rest at warn."""
        emit = (
            self._guardLog.info
            if reasonCode in ORDINARY_DISCONNECTS
            else self._guardLog.warn
        )
        emit(
            "{peer} disconnected: {reason} (code {code})",
            peer=self._peerName(),
            reason=_text(description),
            code=reasonCode,
        )

    def _peerName(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        return f"{host}:{port}" if host is not None else "peer"


class GuardedConnectionMixin(_ConnBase):
    """``ssh-connection`` whose channel requests never fail unseen.

    Stock Conch drops the Deferred of a channel request sent without
    want-reply, so a handler that fails becomes an "Unhandled error in
    Deferred" traceback; a request that does not parse is malformed here.
    """

    _guardLog = Logger()

    def serviceStarted(self) -> None:
        self._opening: set[int] = set()  # channels we asked the peer to open
        super().serviceStarted()

    def openChannel(self, channel: Any, extra: bytes = b"") -> None:
        super().openChannel(channel, extra)
        self._opening.add(channel.id)

    def ssh_CHANNEL_OPEN_CONFIRMATION(self, packet: bytes) -> None:
        if self._awaitingOpen(packet, "CHANNEL_OPEN_CONFIRMATION"):
            super().ssh_CHANNEL_OPEN_CONFIRMATION(packet)

    def ssh_CHANNEL_OPEN_FAILURE(self, packet: bytes) -> None:
        if self._awaitingOpen(packet, "CHANNEL_OPEN_FAILURE"):
            super().ssh_CHANNEL_OPEN_FAILURE(packet)

    def _awaitingOpen(self, packet: bytes, name: str) -> bool:
        """Only a channel we asked to open, and not yet open, may be answered.

        Conch would otherwise drop (or re-wire) a channel the peer opened, and
        fail with a KeyError when the connection closes.  A short packet
        raises here, and is malformed.
        """
        (localChannel,) = struct.unpack(">L", packet[:4])
        if localChannel not in self._opening:
            assert self.transport is not None
            self.transport.sendDisconnect(
                DISCONNECT_PROTOCOL_ERROR,
                b"unexpected %s message for channel %d" % (name.encode(), localChannel),
            )
            return False
        self._opening.discard(localChannel)
        return True

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> Deferred[Any]:
        localChannel = struct.unpack(">L", packet[:4])[0]
        requestType, rest = getNS(packet[4:])
        wantReply = rest[0]
        channel = self.channels[localChannel]
        d = defer.maybeDeferred(channel.requestReceived, requestType, rest[1:])
        if wantReply:
            d.addCallback(self._cbChannelRequest, localChannel)
        d.addErrback(self._channelRequestFailed, localChannel if wantReply else None)
        return d

    def _channelRequestFailed(self, reason: Failure, localChannel: int | None) -> None:
        if reason.check(*PARSE_ERRORS):
            disconnect_malformed(
                self.transport, "CHANNEL_REQUEST", reason.value or reason
            )
            return
        if not reason.check(ConchError):
            self._guardLog.failure("channel request failed", reason)
        if localChannel in self.localToRemoteChannel:
            assert self.transport is not None
            self.transport.sendPacket(
                connection.MSG_CHANNEL_FAILURE,
                struct.pack(">L", self.localToRemoteChannel[localChannel]),
            )
