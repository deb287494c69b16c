"""An ssh-agent client that can add keys with OpenSSH certificates.

Twisted Conch's :class:`twisted.conch.ssh.agent.SSHAgentClient` speaks the
same wire format, but its key parser rejects ``*-cert-v01@openssh.com`` keys,
it has no key constraints, and its pending requests never fire if the agent
hangs up. This module keeps Conch's framing (uint32 length, byte type, body;
replies arrive in request order) in a small protocol of its own, and builds
every message with pure functions so they can be tested without a socket.

Reference: draft-miller-ssh-agent and OpenSSH's ``PROTOCOL.agent``. Private
keys are serialised as OpenSSH's ``sshkey_private_serialize`` does: for a
certificate, the certificate blob replaces the public fields, except that
Ed25519 always carries its public key.
"""

from __future__ import annotations

import base64
import binascii
import collections
import struct

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorUNIX
from twisted.python.failure import Failure

__all__ = [
    "SSH_AGENTC_ADD_IDENTITY",
    "SSH_AGENTC_ADD_ID_CONSTRAINED",
    "SSH_AGENTC_REMOVE_IDENTITY",
    "SSH_AGENTC_REQUEST_IDENTITIES",
    "SSH_AGENTC_SIGN_REQUEST",
    "SSH_AGENT_CONSTRAIN_LIFETIME",
    "SSH_AGENT_FAILURE",
    "SSH_AGENT_IDENTITIES_ANSWER",
    "SSH_AGENT_RSA_SHA2_256",
    "SSH_AGENT_RSA_SHA2_512",
    "SSH_AGENT_SIGN_RESPONSE",
    "SSH_AGENT_SUCCESS",
    "AgentClient",
    "AgentError",
    "AgentIdentity",
    "AgentPrivateKey",
    "add_identity_message",
    "certificate_blob",
    "check_success",
    "connect_agent",
    "frame",
    "lifetime_constraint",
    "parse_identities_answer",
    "parse_sign_response",
    "private_key_fields",
    "public_key_blob",
    "remove_identity_message",
    "request_identities_message",
    "sign_request_message",
    "split_frames",
]

SSH_AGENT_FAILURE = 5
SSH_AGENT_SUCCESS = 6
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
SSH_AGENT_SIGN_RESPONSE = 14
SSH_AGENTC_ADD_IDENTITY = 17
SSH_AGENTC_REMOVE_IDENTITY = 18
SSH_AGENTC_ADD_ID_CONSTRAINED = 25
SSH_AGENT_CONSTRAIN_LIFETIME = 1
SSH_AGENT_RSA_SHA2_256 = 2
SSH_AGENT_RSA_SHA2_512 = 4

#: Other failure codes OpenSSH's authfd.c accepts (SSH2_AGENT_FAILURE and
#: SSH_COM_AGENT2_FAILURE from older agents).
_FAILURES = frozenset({SSH_AGENT_FAILURE, 30, 102})

#: OpenSSH refuses messages larger than this (AGENT_MAX_LEN); so do we.
MAX_MESSAGE = 256 * 1024

CERT_SUFFIX = "-cert-v01@openssh.com"

_CURVES = {"secp256r1": "nistp256", "secp384r1": "nistp384", "secp521r1": "nistp521"}

AgentPrivateKey = (
    ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
)


class AgentError(Exception):
    """The agent is unreachable, refused a request, or replied nonsense."""


# -- SSH wire encoding -------------------------------------------------------


def _string(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


def _mpint(value: int) -> bytes:
    """RFC 4251 mpint for a non-negative integer."""
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return _string(b"")
    # One extra byte when the top bit is set keeps the number positive.
    return _string(value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise AgentError("malformed agent message: truncated string length")
    (length,) = struct.unpack_from("!L", data, offset)
    start = offset + 4
    if start + length > len(data):
        raise AgentError("malformed agent message: truncated string")
    return data[start : start + length], start + length


def _read_uint32(data: bytes, offset: int) -> tuple[int, int]:
    if offset + 4 > len(data):
        raise AgentError("malformed agent message: truncated uint32")
    (value,) = struct.unpack_from("!L", data, offset)
    return value, offset + 4


def _blob_type(blob: bytes) -> str:
    name, _ = _read_string(blob, 0)
    return name.decode("ascii")


# -- framing -----------------------------------------------------------------


def frame(message: bytes) -> bytes:
    """Prefix a message (type byte + body) with its uint32 length."""
    if not message:
        raise ValueError("an agent message needs at least a type byte")
    return struct.pack("!L", len(message)) + message


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split received bytes into complete messages and the unparsed rest.

    Raises AgentError for an empty or oversized frame, after which the stream
    cannot be trusted.
    """
    messages = []
    offset = 0
    while len(buffer) - offset >= 4:
        (length,) = struct.unpack_from("!L", buffer, offset)
        if length == 0 or length > MAX_MESSAGE:
            raise AgentError(f"malformed agent message: bad frame length {length}")
        if len(buffer) - offset - 4 < length:
            break
        messages.append(buffer[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return messages, buffer[offset:]


# -- requests ----------------------------------------------------------------


def request_identities_message() -> bytes:
    return bytes([SSH_AGENTC_REQUEST_IDENTITIES])


def remove_identity_message(blob: bytes) -> bytes:
    return bytes([SSH_AGENTC_REMOVE_IDENTITY]) + _string(blob)


def sign_request_message(blob: bytes, data: bytes, flags: int = 0) -> bytes:
    return (
        bytes([SSH_AGENTC_SIGN_REQUEST])
        + _string(blob)
        + _string(data)
        + struct.pack("!L", flags)
    )


def lifetime_constraint(seconds: int) -> bytes:
    """SSH_AGENT_CONSTRAIN_LIFETIME: the agent forgets the key after ``seconds``."""
    if not 0 < seconds < 2**32:
        raise ValueError(f"lifetime must be 1..{2**32 - 1} seconds, not {seconds}")
    return bytes([SSH_AGENT_CONSTRAIN_LIFETIME]) + struct.pack("!L", seconds)


def public_key_blob(private_key: AgentPrivateKey) -> bytes:
    """The SSH wire public key blob (what the agent lists for a plain key)."""
    line = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return base64.b64decode(line.split()[1])


def private_key_fields(
    private_key: AgentPrivateKey, certificate: bytes | None = None
) -> bytes:
    """The key part of an ADD_IDENTITY body: type, then private (and public) fields.

    With ``certificate`` the type is the certificate's and the certificate blob
    stands in for the public fields. Raises AgentError if the certificate is not
    for this key.
    """
    public = public_key_blob(private_key)
    key_type, public_end = _read_string(public, 0)
    if certificate is not None:
        _check_certificate(certificate, key_type.decode(), public[public_end:])
        head = _string(key_type + CERT_SUFFIX.encode()) + _string(certificate)
    else:
        head = _string(key_type)

    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        seed = private_key.private_bytes_raw()
        point = private_key.public_key().public_bytes_raw()
        return head + _string(point) + _string(seed + point)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        curve = _CURVES.get(private_key.curve.name)
        if curve is None:
            raise AgentError(f"ssh-agent has no ECDSA curve {private_key.curve.name}")
        value = private_key.private_numbers().private_value
        if certificate is not None:
            return head + _mpint(value)
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return head + _string(curve.encode()) + _string(point) + _mpint(value)
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.private_numbers()
        public_fields = b""
        if certificate is None:
            # n before e here, unlike the public key blob.
            public_fields = _mpint(numbers.public_numbers.n) + _mpint(
                numbers.public_numbers.e
            )
        return (
            head
            + public_fields
            + _mpint(numbers.d)
            + _mpint(numbers.iqmp)
            + _mpint(numbers.p)
            + _mpint(numbers.q)
        )
    raise TypeError(f"unsupported private key type {type(private_key).__name__}")


def _check_certificate(certificate: bytes, key_type: str, public_fields: bytes) -> None:
    """The certificate must be an OpenSSH certificate for exactly this key."""
    try:
        cert_type, offset = _read_string(certificate, 0)
        _nonce, offset = _read_string(certificate, offset)
    except AgentError:
        raise AgentError(
            "the certificate is not an OpenSSH certificate blob "
            "(decode a -cert.pub line with certificate_blob())"
        ) from None
    expected = key_type + CERT_SUFFIX
    if cert_type != expected.encode():
        raise AgentError(
            f"a {cert_type.decode(errors='replace')!r} certificate cannot go with "
            f"a {key_type} key (expected {expected})"
        )
    if certificate[offset : offset + len(public_fields)] != public_fields:
        raise AgentError("the certificate is for a different key")


def add_identity_message(
    private_key: AgentPrivateKey,
    comment: str,
    certificate: bytes | None = None,
    lifetime: int | None = None,
) -> bytes:
    """SSH_AGENTC_ADD_IDENTITY, or ADD_ID_CONSTRAINED when there is a lifetime."""
    body = private_key_fields(private_key, certificate) + _string(comment.encode())
    if lifetime is None:
        return bytes([SSH_AGENTC_ADD_IDENTITY]) + body
    return bytes([SSH_AGENTC_ADD_ID_CONSTRAINED]) + body + lifetime_constraint(lifetime)


# -- replies -----------------------------------------------------------------


@attrs.frozen
class AgentIdentity:
    """One key or certificate held by the agent."""

    blob: bytes
    comment: str

    @property
    def key_type(self) -> str:
        """The blob's algorithm, e.g. ``ssh-ed25519-cert-v01@openssh.com``."""
        try:
            return _blob_type(self.blob)
        except (AgentError, UnicodeDecodeError):
            return ""


def _message_type(message: bytes) -> int:
    if not message:
        raise AgentError("malformed agent message: empty")
    return message[0]


def check_success(message: bytes, refused: str) -> None:
    """Accept SSH_AGENT_SUCCESS; raise AgentError(``refused``) for a failure."""
    kind = _message_type(message)
    if kind in _FAILURES:
        raise AgentError(refused)
    if kind != SSH_AGENT_SUCCESS:
        raise AgentError(f"unexpected agent reply type {kind}")


def _expect(message: bytes, wanted: int, refused: str) -> bytes:
    kind = _message_type(message)
    if kind in _FAILURES:
        raise AgentError(refused)
    if kind != wanted:
        raise AgentError(f"unexpected agent reply type {kind} (wanted {wanted})")
    return message[1:]


def parse_identities_answer(message: bytes) -> list[AgentIdentity]:
    body = _expect(
        message, SSH_AGENT_IDENTITIES_ANSWER, "the agent refused to list its keys"
    )
    count, offset = _read_uint32(body, 0)
    identities = []
    for _ in range(count):
        blob, offset = _read_string(body, offset)
        comment, offset = _read_string(body, offset)
        identities.append(AgentIdentity(blob, comment.decode("utf-8", "replace")))
    if offset != len(body):
        raise AgentError("malformed agent message: trailing data after identities")
    return identities


def parse_sign_response(message: bytes) -> bytes:
    """The signature blob (string algorithm, string signature)."""
    body = _expect(
        message,
        SSH_AGENT_SIGN_RESPONSE,
        "the agent refused to sign (is the key there?)",
    )
    signature, offset = _read_string(body, 0)
    if offset != len(body):
        raise AgentError("malformed agent message: trailing data after signature")
    return signature


def certificate_blob(line: str | bytes) -> bytes:
    """Decode an OpenSSH ``-cert.pub`` line (``type base64 [comment]``) to its blob."""
    text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
    fields = text.split()
    if len(fields) < 2 or not fields[0].endswith(CERT_SUFFIX):
        raise ValueError("not an OpenSSH certificate line (*-cert-v01@openssh.com ...)")
    try:
        blob = base64.b64decode(fields[1], validate=True)
        blob_type = _blob_type(blob)
    except (binascii.Error, AgentError, UnicodeDecodeError):
        raise ValueError("the certificate line's base64 is corrupt") from None
    if blob_type != fields[0]:
        raise ValueError(f"the certificate line says {fields[0]} but holds {blob_type}")
    return blob


# -- the connection ----------------------------------------------------------


class _AgentProtocol(protocol.Protocol):
    """Sends framed requests; replies arrive in order and fire their Deferreds."""

    def __init__(self) -> None:
        self._buffer = b""
        self._pending: collections.deque[defer.Deferred[bytes]] = collections.deque()
        self._lost: Failure | None = None
        self._aborted = False
        self._close_waiters: list[defer.Deferred[None]] = []

    def request(self, message: bytes) -> defer.Deferred[bytes]:
        if self._lost is not None or self.transport is None:
            return defer.fail(AgentError("the connection to the agent is closed"))
        d: defer.Deferred[bytes] = defer.Deferred()
        self._pending.append(d)
        self.transport.write(frame(message))
        return d

    def dataReceived(self, data: bytes) -> None:
        if self._aborted:
            return  # the stream cannot be trusted: nothing more is kept
        self._buffer += data
        try:
            messages, self._buffer = split_frames(self._buffer)
        except AgentError as e:
            self._abort(e)
            return
        for message in messages:
            if not self._pending:
                self._abort(AgentError("the agent sent a reply nobody asked for"))
                return
            self._pending.popleft().callback(message)

    def _abort(self, reason: AgentError) -> None:
        self._aborted = True
        self._buffer = b""
        self._fail_pending(reason)
        if self.transport is not None:
            self.transport.loseConnection()

    def _fail_pending(self, reason: AgentError) -> None:
        while self._pending:
            self._pending.popleft().errback(reason)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = reason
        self._fail_pending(AgentError("the agent closed the connection"))
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    def when_closed(self) -> defer.Deferred[None]:
        if self._lost is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._close_waiters.append(d)
        return d

    def close(self) -> None:
        if self._lost is None and self.transport is not None:
            self.transport.loseConnection()


async def connect_agent(reactor: IReactorUNIX, socket_path: str) -> AgentClient:
    """Connect to the ssh-agent listening on ``socket_path`` (usually $SSH_AUTH_SOCK)."""
    if not socket_path:
        raise AgentError("SSH_AUTH_SOCK is not set: is ssh-agent running?")
    endpoint = UNIXClientEndpoint(reactor, socket_path, timeout=10)
    try:
        proto = await connectProtocol(endpoint, _AgentProtocol())
    except error.ConnectError as e:
        raise AgentError(
            f"no agent at SSH_AUTH_SOCK={socket_path}: is ssh-agent running?"
        ) from e
    assert isinstance(proto, _AgentProtocol)
    return AgentClient(proto)


class AgentClient:
    """One connection to an ssh-agent. Requests may be issued concurrently."""

    def __init__(self, proto: _AgentProtocol) -> None:
        self._proto = proto

    async def _request(self, message: bytes) -> bytes:
        return await self._proto.request(message)

    async def list_identities(self) -> list[AgentIdentity]:
        reply = await self._request(request_identities_message())
        return parse_identities_answer(reply)

    async def add_key(
        self,
        private_key: AgentPrivateKey,
        comment: str,
        certificate: bytes | None = None,
        lifetime: int | None = None,
    ) -> None:
        """Add the key and, with ``certificate``, the certificate too (as ssh-add does).

        ``lifetime`` (seconds) applies to both.
        """
        messages = [add_identity_message(private_key, comment, None, lifetime)]
        if certificate is not None:
            messages.append(
                add_identity_message(private_key, comment, certificate, lifetime)
            )
        for message in messages:
            reply = await self._request(message)
            check_success(reply, "the agent refused to add the key")

    async def remove(self, blob: bytes) -> None:
        """Remove the key or certificate whose public blob is ``blob``."""
        reply = await self._request(remove_identity_message(blob))
        check_success(reply, "the agent refused to remove the key (is it there?)")

    async def sign(self, blob: bytes, data: bytes, flags: int = 0) -> bytes:
        """Sign ``data`` with the key for ``blob``; returns the signature blob."""
        reply = await self._request(sign_request_message(blob, data, flags))
        return parse_sign_response(reply)

    def close(self) -> None:
        """Hang up; pending requests fail with AgentError."""
        self._proto.close()

    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed (after close())."""
        await self._proto.when_closed()
