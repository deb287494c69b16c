"""OpenSSH certificates: parse them, and decide whether one is acceptable.

Conch's ``Key`` cannot read ``*-cert-v01@openssh.com`` blobs. This module
parses them with `cryptography` (which checks the CA signature only) and
applies OpenSSH's rules (PROTOCOL.certkeys, sshkey.c, auth2-pubkey.c): a
trusted CA, the certificate type, principals, the validity window and critical
options. The userauth service that uses them is in
`teleconch.conch.userauth_server`, host certificates in
`teleconch.conch.hostcert`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal, NoReturn

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
    load_ssh_public_identity,
    load_ssh_public_key,
)
from cryptography.hazmat.primitives.serialization.ssh import serialize_ssh_public_key

from teleconch.ca import fingerprint
from teleconch.conch.wire import take_string

__all__ = [
    "SHA1_RSA_CERT",
    "USER_CERT_ALGORITHMS",
    "Certificate",
    "CertificateError",
    "CertificateRefused",
    "check_host_certificate",
    "check_user_certificate",
    "parse_certificate",
    "parse_certificate_line",
]

#: publickey algorithm -> (certificate blob type, signature algorithm). RSA
#: certificates keep the blob type ``ssh-rsa-cert-v01`` whatever hash signs.
USER_CERT_ALGORITHMS: Mapping[bytes, tuple[bytes, bytes]] = MappingProxyType(
    {
        b"ssh-ed25519-cert-v01@openssh.com": (
            b"ssh-ed25519-cert-v01@openssh.com",
            b"ssh-ed25519",
        ),
        **{
            f"ecdsa-sha2-{c}-cert-v01@openssh.com".encode(): (
                f"ecdsa-sha2-{c}-cert-v01@openssh.com".encode(),
                f"ecdsa-sha2-{c}".encode(),
            )
            for c in ("nistp256", "nistp384", "nistp521")
        },
        b"rsa-sha2-512-cert-v01@openssh.com": (
            b"ssh-rsa-cert-v01@openssh.com",
            b"rsa-sha2-512",
        ),
        b"rsa-sha2-256-cert-v01@openssh.com": (
            b"ssh-rsa-cert-v01@openssh.com",
            b"rsa-sha2-256",
        ),
    }
)
#: The legacy name for RSA certificates: it means SHA-1 signatures.
SHA1_RSA_CERT = b"ssh-rsa-cert-v01@openssh.com"

# How many strings the certified public key occupies in a certificate blob.
_KEY_FIELDS = {b"ssh-ed25519-cert-v01@openssh.com": 1, SHA1_RSA_CERT: 2} | {
    f"ecdsa-sha2-{c}-cert-v01@openssh.com".encode(): 2
    for c in ("nistp256", "nistp384", "nistp521")
}


class CertificateError(ValueError):
    """Bytes that are not a well-formed certificate with a valid CA signature."""


class CertificateRefused(Exception):
    """A well-formed certificate we will not accept.

    `reason` is precise and goes to the audit log; `user_message` is a short
    sentence for the person holding the certificate (no secrets).
    """

    def __init__(
        self,
        reason: str,
        user_message: str,
        relogin_helps: bool = True,
        issuer_trusted: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user_message = user_message
        #: Whether `teleconch login` is the cure (not for a login the roles lack).
        self.relogin_helps = relogin_helps
        #: Whether a trusted CA signed it, so its key id names a real user.
        self.issuer_trusted = issuer_trusted


@attrs.frozen
class Certificate:
    """A parsed OpenSSH certificate whose CA signature has been verified.

    Trust in the CA and everything else is checked separately, by
    `check_user_certificate` or `check_host_certificate`.
    """

    key_type: str
    public_key: SSHCertPublicKeyTypes
    serial: int
    cert_type: Literal["user", "host"]
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: Mapping[str, bytes]
    extensions: Mapping[str, bytes]
    #: The CA public key as an OpenSSH line ("ssh-ed25519 AAAA...").
    signature_key: str
    blob: bytes = attrs.field(repr=False)

    def describe(self) -> str:
        """Enough to find this certificate again in the CA's issuing log."""
        return (
            f"serial {self.serial}, key id {self.key_id!r}, "
            f"key {fingerprint(self.public_key)}, "
            f"CA {fingerprint(load_ssh_public_key(self.signature_key.encode()))}"
        )


# -- parsing -----------------------------------------------------------------


def _ca_signature_algorithm(blob: bytes, key_type: bytes) -> bytes:
    """The algorithm of the CA's signature, which `cryptography` does not expose."""
    rest = blob
    for _ in range(2 + _KEY_FIELDS[key_type]):  # type, nonce, key
        _, rest = take_string(rest)
    rest = rest[12:]  # serial, type
    for _ in range(2):  # key id, principals
        _, rest = take_string(rest)
    rest = rest[16:]  # validity
    for _ in range(4):  # critical options, extensions, reserved, signature key
        _, rest = take_string(rest)
    signature, _ = take_string(rest)
    return take_string(signature)[0]


def parse_certificate(blob: bytes) -> Certificate:
    """Parse a certificate blob as sent on the wire and verify its CA signature.

    Raises `CertificateError` for anything that is not a certificate we can
    read, including CA signatures made with SHA-1 (``ssh-rsa``), which OpenSSH
    has refused by default since 8.2.
    """
    try:
        raw_type, _ = take_string(blob)
        key_type = raw_type.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise CertificateError("not an SSH key or certificate blob") from None
    if raw_type not in _KEY_FIELDS:
        raise CertificateError(f"{key_type!r} is not a supported certificate type")
    line = raw_type + b" " + base64.b64encode(blob)
    try:
        cert = load_ssh_public_identity(line)
        if not isinstance(cert, SSHCertificate):
            raise CertificateError("not a certificate")
        ca_key = cert.signature_key()
        ca_alg = _ca_signature_algorithm(blob, raw_type)
        principals = tuple(p.decode("utf-8") for p in cert.valid_principals)
        options = {k.decode("ascii"): v for k, v in cert.critical_options.items()}
        extensions = {k.decode("ascii"): v for k, v in cert.extensions.items()}
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"malformed certificate: {e}") from None
    if ca_alg == b"ssh-rsa":
        raise CertificateError("the CA signed this certificate with SHA-1 (ssh-rsa)")
    try:
        cert.verify_cert_signature()
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise CertificateError(
            "the certificate's CA signature does not verify"
        ) from None
    return Certificate(
        key_type=key_type,
        public_key=cert.public_key(),
        serial=cert.serial,
        cert_type="user" if cert.type == SSHCertificateType.USER else "host",
        key_id=cert.key_id.decode("utf-8", "backslashreplace"),
        principals=principals,
        valid_after=cert.valid_after,
        valid_before=cert.valid_before,
        critical_options=MappingProxyType(options),
        extensions=MappingProxyType(extensions),
        signature_key=serialize_ssh_public_key(ca_key).decode("ascii"),
        blob=bytes(blob),
    )


def parse_certificate_line(line: str | bytes) -> Certificate:
    """Parse a ``*-cert.pub`` line ("ssh-ed25519-cert-v01@openssh.com AAAA... c")."""
    text = line.decode("ascii") if isinstance(line, bytes) else line
    parts = text.split()
    if len(parts) < 2:
        raise CertificateError("expected '<type> <base64> [comment]'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise CertificateError("the certificate is not valid base64") from None
    cert = parse_certificate(blob)
    if cert.key_type != parts[0]:
        raise CertificateError("the line's key type does not match the certificate")
    return cert


# -- policy checks -----------------------------------------------------------


def _normalised_keys(lines: Sequence[str]) -> set[str]:
    """Trusted CA lines as "type base64", so comments and spacing do not matter."""
    out = set()
    for line in lines:
        try:
            key = load_ssh_public_key(line.strip().encode("ascii"))
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
            continue  # a line that is not a key can never match
        out.add(serialize_ssh_public_key(key).decode("ascii"))
    return out


def _when(timestamp: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "the end of time"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_common(
    cert: Certificate,
    trusted_ca_lines: Sequence[str],
    now: float,
    cert_type: Literal["user", "host"],
    principal: str,
) -> None:
    def refuse(
        what: str, user_message: str, relogin_helps: bool = True, trusted: bool = True
    ) -> NoReturn:
        raise CertificateRefused(
            f"{what} ({cert.describe()})", user_message, relogin_helps, trusted
        )

    if cert.signature_key not in _normalised_keys(trusted_ca_lines):
        refuse(
            "certificate signed by an untrusted CA",
            "it was not issued by this cluster's certificate authority",
            trusted=False,
        )
    if cert.cert_type != cert_type:
        refuse(
            f"{cert.cert_type} certificate used as a {cert_type} certificate",
            f"it is a {cert.cert_type} certificate, not a {cert_type} certificate",
        )
    if now < cert.valid_after:
        refuse(
            f"certificate not yet valid (valid after {_when(cert.valid_after)})",
            f"it is not valid until {_when(cert.valid_after)}",
        )
    if now >= cert.valid_before:
        refuse(
            f"certificate expired at {_when(cert.valid_before)}",
            f"it expired at {_when(cert.valid_before)}",
        )
    if not cert.principals:
        # OpenSSH reads an empty list as "any principal"; our CA never issues one.
        refuse("certificate has no principals", "it lists no logins")
    if principal not in cert.principals:
        allowed = ", ".join(cert.principals)
        refuse(
            f"principal {principal!r} not in certificate principals [{allowed}]",
            f"it does not allow {principal!r} (it allows: {allowed})",
            relogin_helps=False,
        )


def _check_source_address(cert: Certificate, value: bytes, client: str | None) -> None:
    try:
        networks = [
            ipaddress.ip_network(part, strict=False)
            for part in value.decode("ascii").split(",")
        ]
    except (ValueError, UnicodeDecodeError):
        raise CertificateRefused(
            f"malformed source-address {value!r} ({cert.describe()})",
            "its source-address option is malformed",
        ) from None
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if client is not None:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
    if address is None or not any(address in net for net in networks):
        raise CertificateRefused(
            f"client address {client} not in source-address {value.decode()} "
            f"({cert.describe()})",
            f"it may only be used from {value.decode()}, not from {client}",
        )


def check_user_certificate(
    cert: Certificate,
    trusted_ca_lines: Sequence[str],
    now: float,
    principal: str,
    client_address: str | None = None,
) -> None:
    """Raise `CertificateRefused` unless `cert` lets `principal` log in now.

    Critical options: ``source-address`` is enforced; ``force-command`` is
    refused because a proxy cannot honour it; anything else is unknown and,
    per PROTOCOL.certkeys, refused.
    """
    _check_common(cert, trusted_ca_lines, now, "user", principal)
    for name, value in sorted(cert.critical_options.items()):
        if name == "source-address":
            _check_source_address(cert, value, client_address)
        elif name == "force-command":
            raise CertificateRefused(
                f"certificate has force-command {value!r} ({cert.describe()})",
                "it has a forced command, which this proxy cannot honour",
            )
        else:
            raise CertificateRefused(
                f"unknown critical option {name!r} ({cert.describe()})",
                f"it has a critical option {name!r} this proxy does not understand",
            )


def check_host_certificate(
    cert: Certificate, trusted_ca_lines: Sequence[str], now: float, hostname: str
) -> None:
    """Raise `CertificateRefused` unless `cert` proves it is `hostname`, now.

    No critical options are defined for host certificates, so any is refused.
    """
    _check_common(cert, trusted_ca_lines, now, "host", hostname)
    if cert.critical_options:
        names = ", ".join(sorted(cert.critical_options))
        raise CertificateRefused(
            f"host certificate has critical options {names} ({cert.describe()})",
            f"it has critical options ({names}) that no host certificate may have",
        )
