"""Host certificates the recording proxy presents for the nodes it terminates."""

from __future__ import annotations

import attrs

from teleconch.auth.wire import AuthCommand
from teleconch.pki import ROLE_PROXY

__all__ = [
    "FORWARDING_CERT_TTL",
    "ForwardingHostCertificate",
    "ForwardingHostKey",
    "SignForwardingHostCertificate",
]

#: How long a forwarding host certificate lives: short, the proxy re-asks.
FORWARDING_CERT_TTL = 3600


@attrs.frozen
class ForwardingHostKey:
    #: The proxy's own host public key (an ``ssh-ed25519`` line).
    public_key: str
    #: The registered node's name the certificate is for.
    target: str


@attrs.frozen
class ForwardingHostCertificate:
    cert: str
    principals: tuple[str, ...]
    valid_before: int


class SignForwardingHostCertificate(
    AuthCommand[ForwardingHostKey, ForwardingHostCertificate]
):
    """A host certificate for the proxy's own key, naming a registered node.

    In recording proxy mode the proxy terminates the person's SSH connection
    to ``target``, so it presents a certificate from the host CA whose
    principals are the node's name, ``name.<cluster>`` and its address host,
    and nothing else; valid for FORWARDING_CERT_TTL; audited as
    ``cert.host.forwarding``. An unregistered target is NotFoundError.
    """

    roles = frozenset({ROLE_PROXY})
