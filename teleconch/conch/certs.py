"""OpenSSH user certificates for a Conch server: parse, check, authenticate.

Conch's ``Key`` cannot read ``*-cert-v01@openssh.com`` blobs, so its
``publickey`` method refuses every certificate. This module parses them with
`cryptography`, applies OpenSSH's rules (PROTOCOL.certkeys, sshkey.c,
auth2-pubkey.c) and replaces Conch's userauth service with one that accepts
certificates from the cluster's user CA and nothing else. Host certificates,
the server factory that combines both, and the client side live in
`teleconch.conch.hostcert`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NoReturn, Protocol

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
    load_ssh_public_identity,
    load_ssh_public_key,
)
from cryptography.hazmat.primitives.serialization.ssh import serialize_ssh_public_key
from twisted.conch import error
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import (
    DISCONNECT_SERVICE_NOT_AVAILABLE,
    SSHServerTransport,
)
from twisted.conch.ssh.userauth import (
    MSG_USERAUTH_BANNER,
    MSG_USERAUTH_PK_OK,
    MSG_USERAUTH_REQUEST,
    SSHUserAuthServer,
)
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from teleconch.ca import fingerprint
from teleconch.conch.guard import PARSE_ERRORS, disconnect_malformed

__all__ = [
    "SERVER_SIG_ALGS",
    "USER_CERT_ALGORITHMS",
    "Certificate",
    "CertificateChecker",
    "CertificateCredentials",
    "CertificateError",
    "CertificatePolicy",
    "CertificateRefused",
    "CertificateServerTransport",
    "CertificateUserAuthServer",
    "ICertificateCredentials",
    "check_host_certificate",
    "check_user_certificate",
    "parse_certificate",
    "parse_certificate_line",
    "take_string",
    "verify_ssh_signature",
]

_log = Logger()

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

#: What we tell clients we verify (RFC 8308 ``server-sig-algs``).
SERVER_SIG_ALGS: tuple[bytes, ...] = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)

# How many strings the certified public key occupies in a certificate blob.
_KEY_FIELDS = {b"ssh-ed25519-cert-v01@openssh.com": 1, SHA1_RSA_CERT: 2} | {
    f"ecdsa-sha2-{c}-cert-v01@openssh.com".encode(): 2
    for c in ("nistp256", "nistp384", "nistp521")
}
_ECDSA = {
    b"ecdsa-sha2-nistp256": ("secp256r1", hashes.SHA256),
    b"ecdsa-sha2-nistp384": ("secp384r1", hashes.SHA384),
    b"ecdsa-sha2-nistp521": ("secp521r1", hashes.SHA512),
}
_RSA = {b"rsa-sha2-256": hashes.SHA256, b"rsa-sha2-512": hashes.SHA512}


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


def take_string(data: bytes) -> tuple[bytes, bytes]:
    """One SSH ``string`` and the rest; strict, unlike Conch's ``getNS``, which
    silently returns a short string when the length runs past the data."""
    if len(data) < 4:
        raise ValueError("truncated string length")
    (n,) = struct.unpack(">L", data[:4])
    if len(data) < 4 + n:
        raise ValueError("truncated string")
    return data[4 : 4 + n], data[4 + n :]


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


# -- signatures --------------------------------------------------------------


def verify_ssh_signature(
    public_key: SSHCertPublicKeyTypes, algorithm: bytes, signature: bytes, data: bytes
) -> bool:
    """Check an SSH signature blob made with exactly `algorithm`.

    Conch's ``Key.verify`` accepts whatever algorithm the signature names,
    including SHA-1 ``ssh-rsa`` (twisted#12496); here the caller says which
    one the protocol allows.
    """
    try:
        name, rest = take_string(signature)
        raw, rest = take_string(rest)
        if rest or name != algorithm:
            return False
        if algorithm == b"ssh-ed25519" and isinstance(public_key, Ed25519PublicKey):
            public_key.verify(raw, data)
        elif algorithm in _ECDSA and isinstance(public_key, ec.EllipticCurvePublicKey):
            curve, hash_type = _ECDSA[algorithm]
            r, rest = take_string(raw)
            s, rest = take_string(rest)
            if (
                rest
                or public_key.curve.name != curve
                or r[:1] >= b"\x80"
                or s[:1] >= b"\x80"
            ):
                return False
            der = encode_dss_signature(
                int.from_bytes(r, "big"), int.from_bytes(s, "big")
            )
            public_key.verify(der, data, ec.ECDSA(hash_type()))
        elif algorithm in _RSA and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(raw, data, padding.PKCS1v15(), _RSA[algorithm]())
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


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


# -- cred --------------------------------------------------------------------


class ICertificateCredentials(ICredentials):
    """A login already proven by a verified, trusted user certificate."""

    username = Attribute("The login name (str), one of the certificate's principals.")
    certificate = Attribute("The verified `Certificate`.")
    client_address = Attribute("The client's IP address (str), or None.")


@implementer(ICertificateCredentials)
@attrs.frozen
class CertificateCredentials:
    """A login `CertificateUserAuthServer` verified, as it reaches the realm.

    The portal is called as ``portal.login(creds, creds, IConchUser)``: the
    checker turns it into the usual bytes avatar ID (the username), and the
    realm gets this object as ``mind``, with the certificate (roles in
    extensions, key id for the audit log) and the client address.
    """

    username: str
    certificate: Certificate
    client_address: str | None


@implementer(ICredentialsChecker)
class CertificateChecker:
    """Accepts `CertificateCredentials` that `CertificateUserAuthServer` verified.

    Verification needs the session ID, the client address and the async CA
    lookup, which only the userauth service has, so it happens there; the
    checker only re-checks the principal as a cheap second line.
    """

    credentialInterfaces = (ICertificateCredentials,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        if (
            isinstance(credentials, CertificateCredentials)
            and credentials.username in credentials.certificate.principals
        ):
            return defer.succeed(credentials.username.encode("utf-8"))
        return defer.fail(UnauthorizedLogin("not a verified certificate login"))


# -- the userauth service ----------------------------------------------------


class CertificatePolicy(Protocol):
    """What `CertificateUserAuthServer` needs from the proxy (``factory.certificate_policy``)."""

    @property
    def refusal_message(self) -> str:
        """Banner for anything but a certificate: what to run to get one."""

    async def trusted_user_cas(self) -> Sequence[str]:
        """The user CA public key lines to trust now (the proxy caches them)."""

    def on_refused(
        self,
        username: str,
        reason: str,
        client_address: str | None,
        login: str | None = None,
    ) -> None:
        """Audit one refused attempt: ``username`` is the certificate's user when
        a certificate was read (else the SSH user name), ``login`` the login asked."""


class _Refused(UnauthorizedLogin):
    """A refusal that has been audited and explained already."""


_PortalResult = tuple[type[IConchUser], IConchUser, Any]


class CertificateUserAuthServer(SSHUserAuthServer):
    """``ssh-userauth`` that accepts only trusted OpenSSH user certificates.

    Conch builds services from ``factory.services`` without arguments, so the
    policy comes from ``transport.factory.certificate_policy`` and the clock
    (for validity) from Conch's own ``clock`` attribute.

    OpenSSH offers a plain key before its certificate, so plain keys are
    refused without a banner (it would print on every good login) and are
    audited only if the connection ends unauthenticated. The explanation
    comes with a refused certificate, password or keyboard-interactive
    request instead.
    """

    interfaceToMethod = {ICertificateCredentials: b"publickey"}
    #: Also list keyboard-interactive (it always fails): once its keys are
    #: refused, OpenSSH then tries it, and that is when the person sees our
    #: banner. With only publickey listed, OpenSSH never shows it.
    explain_with_keyboard_interactive = True

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.supportedAuthentications = [b"publickey"]
        if self.explain_with_keyboard_interactive:
            self.supportedAuthentications.append(b"keyboard-interactive")
        self._banners: set[str] = set()
        # Once a certificate's refusal is explained, the generic hint (run
        # `teleconch login`) is not added to later refusals of this connection.
        self._certificate_explained = False
        self._plain_keys: list[str] = []
        # Checks are async: run requests one at a time, so a pipelined request
        # cannot change user/nextService under one still being checked.
        self._one_at_a_time = DeferredLock()
        self._stopped = False

    def serviceStopped(self) -> None:
        self._stopped = True
        super().serviceStopped()
        if self._plain_keys and not hasattr(self._t, "avatar"):
            name = (self.user or b"").decode("utf-8", "backslashreplace")
            keys = ", ".join(self._plain_keys)
            self._audit(name, f"plain public keys refused: {keys}")
            self._plain_keys = []

    @property
    def _t(self) -> Any:
        """The SSHServerTransport (typed loosely: Conch types it as the base)."""
        assert self.transport is not None
        return self.transport

    @property
    def policy(self) -> CertificatePolicy:
        policy = getattr(self._t.factory, "certificate_policy", None)
        if policy is None:
            raise RuntimeError("the SSH factory has no certificate_policy")
        return policy

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Deferred[Any]:
        def handle() -> Deferred[Any] | None:
            if self._stopped:
                return None  # authenticated already, or the connection is gone
            next_service = getNS(packet, 2)[1]
            # Conch looks the service up only after a successful login.
            if (
                next_service == self.name
                or next_service not in self._t.factory.services
            ):
                self._t.sendDisconnect(
                    DISCONNECT_SERVICE_NOT_AVAILABLE,
                    b"no such service: " + next_service[:64],
                )
                return None
            return SSHUserAuthServer.ssh_USERAUTH_REQUEST(self, packet)

        d = self._one_at_a_time.run(handle)
        d.addErrback(self._request_failed)
        return d

    def _request_failed(self, reason: Failure) -> None:
        if reason.check(*PARSE_ERRORS):
            disconnect_malformed(self._t, "USERAUTH_REQUEST", reason.value or reason)
        else:
            _log.failure("userauth request failed", reason)

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> Deferred[_PortalResult]:
        if kind == b"publickey":
            return Deferred.fromCoroutine(self._publickey(user, data))
        if kind == b"none":
            return defer.fail(error.ConchError("none"))
        name = user.decode("utf-8", "backslashreplace")
        method = kind.decode("ascii", "backslashreplace")
        try:
            self._refuse(name, f"{method} authentication refused", None)
        except _Refused:
            return defer.fail()

    # -- helpers --

    def _client_address(self) -> str | None:
        host = getattr(self._t.transport.getPeer(), "host", None)
        return host if isinstance(host, str) else None

    def _banner(self, problem: str | None, relogin_helps: bool = True) -> None:
        """Explain a refusal; each line is shown at most once per connection."""
        lines = (
            [f"teleconch: your certificate was refused: {problem}."] if problem else []
        )
        if relogin_helps and not (self._certificate_explained and not problem):
            lines.append(self.policy.refusal_message.rstrip("\n"))
        if problem:
            self._certificate_explained = True
        lines = [line for line in lines if line and line not in self._banners]
        if lines and not self._stopped:
            self._banners.update(lines)
            text = "\n".join(lines) + "\n"
            self._t.sendPacket(MSG_USERAUTH_BANNER, NS(text.encode()) + NS(b""))

    def _audit(self, username: str, reason: str, login: str | None = None) -> None:
        try:
            self.policy.on_refused(
                username, reason, self._client_address(), login=login or username
            )
        except Exception:
            _log.failure("audit hook failed for {user}", user=username)

    def _refuse(
        self,
        username: str,
        reason: str,
        problem: str | None,
        relogin_helps: bool = True,
        cert: Certificate | None = None,
    ) -> NoReturn:
        """Audit (under the certificate's user, if one was read), explain (one
        banner per distinct text), and fail the request."""
        self._audit(cert.key_id if cert else username, reason, login=username)
        self._banner(problem, relogin_helps)
        raise _Refused(reason)

    async def _publickey(self, user: bytes, data: bytes) -> _PortalResult:
        name = user.decode("utf-8", "backslashreplace")
        try:
            has_sig = data[0]
            algorithm, rest = take_string(data[1:])
            blob, rest = take_string(rest)
            signature, rest = take_string(rest) if has_sig else (b"", rest)
            username = user.decode("utf-8")
        except (IndexError, ValueError):
            self._refuse(name, "malformed publickey request", None)
        alg = algorithm.decode("ascii", "backslashreplace")
        if rest:
            self._refuse(name, "trailing data in publickey request", None)
        if algorithm == SHA1_RSA_CERT:
            self._refuse(
                name,
                "RSA certificate offered with SHA-1 signatures (ssh-rsa-cert-v01)",
                "your SSH client only offered SHA-1 (ssh-rsa) signatures; "
                "upgrade it, or use an ed25519 key",
            )
        if algorithm not in USER_CERT_ALGORITHMS:
            digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
            self._plain_keys.append(f"{alg} SHA256:{digest.decode()}")
            raise _Refused(f"plain public key ({alg}) refused")
        blob_type, sig_alg = USER_CERT_ALGORITHMS[algorithm]
        try:
            cert = parse_certificate(blob)
        except CertificateError as e:
            self._refuse(name, f"bad certificate: {e}", "it could not be read")
        if cert.key_type.encode() != blob_type:
            self._refuse(name, f"algorithm {alg} does not match {cert.key_type}", None)
        try:
            trusted = await self.policy.trusted_user_cas()
        except Exception as e:
            _log.failure("cannot fetch the trusted user CAs")
            self._refuse(
                name,
                f"could not fetch trusted user CAs: {e!r}",
                "the proxy could not check it just now; try again in a minute",
            )
        try:
            check_user_certificate(
                cert, trusted, self.clock.seconds(), username, self._client_address()
            )
        except CertificateRefused as e:
            trusted_cert = cert if e.issuer_trusted else None
            self._refuse(name, e.reason, e.user_message, e.relogin_helps, trusted_cert)
        if self._stopped:
            raise error.IgnoreAuthentication()
        assert self.nextService is not None
        if not has_sig:
            self._t.sendPacket(MSG_USERAUTH_PK_OK, NS(algorithm) + NS(blob))
            raise error.IgnoreAuthentication()
        signed = b"".join(
            [
                NS(self._t.sessionID),
                bytes((MSG_USERAUTH_REQUEST,)),
                NS(user),
                NS(self.nextService),
                NS(b"publickey"),
                bytes((has_sig,)),
                NS(algorithm),
                NS(blob),
            ]
        )
        if not verify_ssh_signature(cert.public_key, sig_alg, signature, signed):
            self._refuse(
                name, f"bad {alg} signature ({cert.describe()})", None, cert=cert
            )
        creds = CertificateCredentials(username, cert, self._client_address())
        result: _PortalResult = await self.portal.login(creds, creds, IConchUser)
        if self._stopped:  # gone while the realm worked: nobody will log out
            result[2]()
            raise error.IgnoreAuthentication()
        return result


class CertificateServerTransport(SSHServerTransport):
    """Advertises the user signature algorithms we verify in ``server-sig-algs``.

    Conch reuses ``supportedPublicKeys`` (our host key algorithms) for that
    list, so with an ed25519 host key OpenSSH never sends rsa-sha2 user
    signatures (twisted#12107). KEXINIT keeps offering only our host keys.
    """

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        sig_algs = b",".join(SERVER_SIG_ALGS)
        fixed = [
            (name, sig_algs if name == b"server-sig-algs" else value)
            for name, value in extensions
        ]
        super().sendExtInfo(fixed)
