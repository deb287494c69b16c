"""A small ssh-agent for unit tests: it speaks the wire format (list, sign)
for Ed25519 keys and their certificates, so an `AgentClient` can be tested in
memory, whatever carries the bytes (a loopback, an SSH channel)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.protocol import Protocol

from teleconch.conch.agent import (
    SSH_AGENT_FAILURE,
    SSH_AGENT_IDENTITIES_ANSWER,
    SSH_AGENT_SIGN_RESPONSE,
    SSH_AGENTC_REQUEST_IDENTITIES,
    SSH_AGENTC_SIGN_REQUEST,
    AgentClient,
    _AgentProtocol,
    certificate_blob,
    frame,
    public_key_blob,
    split_frames,
)
from teleconch.conch.wire import take_string


def ns(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


class FakeAgent(Protocol):
    """Holds Ed25519 keys, each with its certificate line or none; lists and signs.

    `requests` counts what it answered, `signed` what it signed.
    """

    def __init__(self, keys: Sequence[tuple[Ed25519PrivateKey, str | None]]) -> None:
        self.identities: list[tuple[bytes, Ed25519PrivateKey]] = []
        for key, cert in keys:
            self.identities.append((public_key_blob(key), key))
            if cert is not None:
                self.identities.append((certificate_blob(cert), key))
        self._buffer = b""
        self.requests = 0
        self.signed: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        messages, self._buffer = split_frames(self._buffer)
        for message in messages:
            self.requests += 1
            assert self.transport is not None
            self.transport.write(frame(self.answer(message)))

    def answer(self, message: bytes) -> bytes:
        if message[0] == SSH_AGENTC_REQUEST_IDENTITIES:
            body = struct.pack("!L", len(self.identities))
            for blob, _ in self.identities:
                body += ns(blob) + ns(b"fake")
            return bytes([SSH_AGENT_IDENTITIES_ANSWER]) + body
        if message[0] == SSH_AGENTC_SIGN_REQUEST:
            blob, rest = take_string(message[1:])
            data, _ = take_string(rest)
            for known, key in self.identities:
                if known == blob:
                    self.signed.append(data)
                    signature = ns(b"ssh-ed25519") + ns(key.sign(data))
                    return bytes([SSH_AGENT_SIGN_RESPONSE]) + ns(signature)
        return bytes([SSH_AGENT_FAILURE])


class _Loopback:
    """Writes go straight into the peer protocol; a hang-up reaches both ends."""

    def __init__(self, owner: Protocol, peer: Protocol) -> None:
        self.owner, self.peer = owner, peer
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.peer.dataReceived(data)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.peer.connectionLost()
            self.owner.connectionLost()


def loopback_agent(agent: FakeAgent) -> AgentClient:
    """An AgentClient connected straight to ``agent``, in memory."""
    proto = _AgentProtocol()
    agent.makeConnection(_Loopback(agent, proto))
    proto.makeConnection(_Loopback(proto, agent))
    return AgentClient(proto)
