"""What one hostile input is, and what a replay of it observed."""

from __future__ import annotations

import attrs

#: Protocols a case is replayed over.
SSH = "ssh"  # raw bytes to the proxy's SSH port, before any key exchange
SSH_SECURE = "ssh-secure"  # crafted packets after a real key exchange
AMP = "amp"  # raw AMP bytes inside anonymous TLS to the auth port
HTTP = "http"  # raw HTTP bytes inside TLS to the web port
PLAIN_TO_TLS = "plain-to-tls"  # raw bytes, no TLS, to a TLS port (auth or web)

#: Answers that, besides a DISCONNECT or a close, end a case well.
UNIMPLEMENTED = "unimplemented"  # SSH_MSG_UNIMPLEMENTED (RFC 4253 11.4)
USERAUTH_FAILURE = "userauth-failure"  # SSH_MSG_USERAUTH_FAILURE (RFC 4252 5.1)


@attrs.frozen
class Case:
    """One input of the probe.

    ``data`` is what is written on the connection (SSH, AMP, HTTP,
    plain-to-TLS); ``packets`` are (message number, payload) pairs sent
    under the negotiated keys (SSH_SECURE), after an ``ssh-userauth``
    SERVICE_REQUEST has been accepted when ``userauth`` is set.  An ``idle``
    case stops sending part-way: only a server-side deadline ends it.
    """

    id: str
    proto: str
    data: bytes = b""
    packets: tuple[tuple[int, bytes], ...] = ()
    userauth: bool = False
    answers: frozenset[str] = frozenset()
    idle: bool = False
    target: str = ""  # for PLAIN_TO_TLS: "auth" or "web"


@attrs.define
class Outcome:
    """How a connection ended.

    ``ended``: ``closed`` (the server closed it), ``answered`` (the server
    sent what the protocol calls an error, and the probe hung up), ``timeout``
    (nothing ended it within the budget), ``flood`` (more than the read
    budget arrived), ``connect-failed``, or ``kex-failed`` (SSH_SECURE: the
    connection ended before the probe's keys were in use).
    """

    ended: str
    received: bytes = b""
    detail: str = ""
    seconds: float = 0.0


@attrs.frozen
class Result:
    case: Case
    source: str  # the client address the case connected from
    outcome: Outcome
    verdict: str | None  # None: the case ended with a protocol error
    started: float
    finished: float
