"""Joining a cluster: a proxy trades its single-use token for an identity,
trusting the auth server by its CA pin (the only anonymous way in)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from teleconch.auth import protocol as api
from teleconch.auth.agent import (
    EMPTY,
    AuthUnavailable,
    FailoverEndpoint,
    call_command,
    tls_endpoint,
)
from teleconch.config import HostPort
from teleconch.pki import (
    ROLE_AUTH,
    anonymous_client_options,
    ca_pin,
    issued_by,
    peer_identity,
)

log = Logger()


@attrs.frozen
class JoinSource:
    """Where a proxy joins: the auth servers, and a token and CA pin if it has none."""

    auth_servers: tuple[HostPort, ...]
    token: str | None = attrs.field(repr=False)
    ca_pin: str | None


#: A proxy's or node's join: what it sends, and what it gets.
JoinRequest = api.JoinRequest
JoinResponse = api.JoinResult


class JoinRefused(Exception):
    """The auth service would not let us join, or could not be trusted."""


def _peer_cert_pem(proto: amp.AMP) -> bytes:
    cert = proto.transport.getPeerCertificate()  # type: ignore[union-attr]
    if cert is None:
        raise JoinRefused("the auth server presented no TLS certificate")
    return cert.to_cryptography().public_bytes(Encoding.PEM)


async def join(
    reactor: Any,
    auth_servers: Sequence[HostPort],
    pin: str | None,
    request: JoinRequest,
) -> JoinResponse:
    """Trade a join token for an identity, trusting the auth server by its CA pin.

    The token is sent only after the server's certificate is shown to be
    issued by a CA with the expected pin; with no pin the CA is trusted on
    first use, as Teleport does, and a warning says so.
    """
    endpoint = FailoverEndpoint(
        [tls_endpoint(reactor, a, anonymous_client_options()) for a in auth_servers]
    )
    where = ", ".join(str(a) for a in auth_servers)
    try:
        proto = await endpoint.connect(Factory.forProtocol(amp.AMP))
    except Exception as e:
        raise AuthUnavailable(
            f"cannot reach the auth service at {where}: {e}"
        ) from None
    assert isinstance(proto, amp.AMP)
    try:
        info = await call_command(reactor, proto, api.Ping, EMPTY)
        leaf = _peer_cert_pem(proto)
        cas = [bytes(c) for c in info.tls_ca_certs]
        trusted = [ca for ca in cas if issued_by(leaf, ca)]
        identity = peer_identity(proto.transport.getPeerCertificate())  # type: ignore[union-attr]
        if not trusted or identity is None or identity[0] != ROLE_AUTH:
            raise JoinRefused(f"{where} did not present an auth server certificate")
        if pin is None:
            log.warn(
                "joining {where} without teleconch.ca_pin: trusting its CA {pin} on first "
                "use; set ca_pin to the value `teleconch-ctl tokens add` prints",
                where=where,
                pin=ca_pin(trusted[0]),
            )
        elif not any(ca_pin(ca) == pin for ca in trusted):
            raise JoinRefused(
                f"the auth server at {where} has CA pin {ca_pin(trusted[0])}, not the "
                f"configured {pin}: check teleconch.ca_pin, or that you dial the right "
                "auth server"
            )
        try:
            return await call_command(reactor, proto, api.RegisterUsingToken, request)
        except api.AuthAPIError as e:
            raise JoinRefused(str(e)) from None
    finally:
        proto.transport.loseConnection()  # type: ignore[union-attr]
