"""The finished server side: modern transport, certificates, flow control.

`SecureServerTransport` is Conch's server transport with the modern algorithms
and strict KEX (`ModernTransportMixin`), clean protocol errors
(`ProtocolGuardMixin`) and our ``server-sig-algs``; `SecureSSHFactory`
presents a host certificate and takes only trusted user certificates, over a
flow-controlled ``ssh-connection``. The proxy adds startup limits and its own
channels on top of the same parts.
"""

from __future__ import annotations

from teleconch.conch.flow import FlowControlledConnection
from teleconch.conch.guard import GuardedConnectionMixin, ProtocolGuardMixin
from teleconch.conch.hostcert import CertificateSSHFactory
from teleconch.conch.transport import ETM_MACS, ModernTransportMixin
from teleconch.conch.userauth_server import (
    CertificateServerTransport,
    CertificateUserAuthServer,
)

__all__ = ["SecureConnection", "SecureSSHFactory", "SecureServerTransport"]


class SecureServerTransport(
    ModernTransportMixin, ProtocolGuardMixin, CertificateServerTransport
):
    """Modern ciphers and strict KEX; clean protocol errors; our server-sig-algs.
    Only encrypt-then-MAC MACs (ssh-audit)."""

    supportedMACs = list(ETM_MACS)


class SecureConnection(GuardedConnectionMixin, FlowControlledConnection):
    """A flow-controlled ``ssh-connection`` that refuses malformed requests."""


class SecureSSHFactory(CertificateSSHFactory):
    """`CertificateSSHFactory` with the finished transport and connection."""

    protocol = SecureServerTransport
    services = {
        b"ssh-userauth": CertificateUserAuthServer,
        b"ssh-connection": SecureConnection,
    }
