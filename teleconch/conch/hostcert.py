"""Host certificates: presenting one from a Conch server, checking a node's.

Server side: Conch picks host keys as ``factory.publicKeys[keyAlg].blob()`` and
``factory.privateKeys[keyAlg].sign(data, signatureType=keyAlg)``, so a small
object registered under ``ssh-ed25519-cert-v01@openssh.com`` that returns the
certificate blob and signs with the plain algorithm is all a Conch server needs
to present a host certificate. `CertificateSSHFactory` combines that with
`CertificateUserAuthServer`.

Client side: Conch's client verifies the exchange-hash signature with
``Key.fromString(host_key_blob)``, which rejects certificates, so
`CertificateClientTransport` verifies it with the certified key instead, and
`verify_host_key_with_ca` accepts only a certificate from the host CA.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from hashlib import md5
from typing import Any

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    SSHCertPrivateKeyTypes,
    load_ssh_public_key,
)
from twisted.conch.error import ConchError
from twisted.conch.ssh import _kex
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import (
    DISCONNECT_HOST_KEY_NOT_VERIFIABLE,
    DISCONNECT_KEY_EXCHANGE_FAILED,
    SSHClientTransport,
)
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from teleconch.conch.certs import (
    USER_CERT_ALGORITHMS,
    CertificateError,
    CertificateRefused,
    check_host_certificate,
    parse_certificate,
    parse_certificate_line,
)
from teleconch.conch.userauth_server import (
    CertificatePolicy,
    CertificateServerTransport,
    CertificateUserAuthServer,
)
from teleconch.conch.wire import key_blob, take_string, verify_ssh_signature

__all__ = [
    "HOST_KEY_ALGORITHMS",
    "CertificateClientTransport",
    "CertificateSSHFactory",
    "HostKeyRefused",
    "host_keys_with_certificate",
    "is_plain_host_key",
    "verify_host_key_with_ca",
    "verify_host_signature",
]

_log = Logger()

#: Host key algorithm -> (key blob type, signature algorithm), preferred first.
#: SHA-1 ``ssh-rsa`` is not offered.
HOST_KEY_ALGORITHMS: Mapping[bytes, tuple[bytes, bytes]] = {
    **USER_CERT_ALGORITHMS,
    b"ssh-ed25519": (b"ssh-ed25519", b"ssh-ed25519"),
    b"ecdsa-sha2-nistp256": (b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp256"),
    b"ecdsa-sha2-nistp384": (b"ecdsa-sha2-nistp384", b"ecdsa-sha2-nistp384"),
    b"ecdsa-sha2-nistp521": (b"ecdsa-sha2-nistp521", b"ecdsa-sha2-nistp521"),
    b"rsa-sha2-512": (b"ssh-rsa", b"rsa-sha2-512"),
    b"rsa-sha2-256": (b"ssh-rsa", b"rsa-sha2-256"),
}


_CERT_SUFFIX = "-cert-v01@openssh.com"


class HostKeyRefused(ConchError):
    """The server's host key is not a trusted certificate for the host we dialled."""


# -- server: presenting a host certificate -----------------------------------


@attrs.frozen
class _CertifiedHostKey:
    """Stands in for a Conch ``Key`` under one ``*-cert-v01`` algorithm name."""

    algorithm: bytes
    certificate_blob: bytes
    key: Key
    signature_algorithm: bytes

    def blob(self) -> bytes:
        return self.certificate_blob  # K_S in the exchange hash and KEXDH_REPLY

    def supportedSignatureAlgorithms(self) -> list[bytes]:
        return [self.algorithm]  # what SSHFactory.buildProtocol offers in KEXINIT

    def sign(self, data: bytes, signatureType: bytes | None = None) -> bytes:
        if signatureType not in (None, self.algorithm):
            raise ValueError(f"{self.algorithm!r} cannot sign as {signatureType!r}")
        return self.key.sign(data, signatureType=self.signature_algorithm)


def host_keys_with_certificate(
    private_key: Key | SSHCertPrivateKeyTypes, cert_line: str
) -> tuple[dict[bytes, Any], dict[bytes, Any]]:
    """Conch ``(publicKeys, privateKeys)`` presenting `private_key` and its certificate.

    The certificate algorithms come first, so a client that trusts our host CA
    picks them; the plain key stays available for clients that do not.
    """
    key = private_key if isinstance(private_key, Key) else Key(private_key)
    cert = parse_certificate_line(cert_line)
    if cert.cert_type != "host":
        raise CertificateError("that is a user certificate, not a host certificate")
    if key_blob(cert.public_key) != key.public().blob():
        raise CertificateError("the host certificate is for a different key")
    public: dict[bytes, Any] = {}
    private: dict[bytes, Any] = {}
    for algorithm, (blob_type, sig_alg) in USER_CERT_ALGORITHMS.items():
        if blob_type == cert.key_type.encode():
            wrapper = _CertifiedHostKey(algorithm, cert.blob, key, sig_alg)
            public[algorithm] = private[algorithm] = wrapper
    public[key.sshType()] = key.public()
    private[key.sshType()] = key
    return public, private


class CertificateSSHFactory(SSHFactory):
    """An SSH server that presents a host certificate and takes only user ones.

    Users log in through `CertificateUserAuthServer`, which asks
    `certificate_policy` for the trusted user CAs; the portal needs a
    `CertificateChecker`. Without `host_certificate` the plain host key is
    offered alone.
    """

    protocol = CertificateServerTransport
    services = {
        b"ssh-userauth": CertificateUserAuthServer,
        b"ssh-connection": SSHConnection,
    }

    def __init__(
        self,
        portal: Portal,
        certificate_policy: CertificatePolicy,
        host_key: Key | SSHCertPrivateKeyTypes,
        host_certificate: str | None = None,
    ) -> None:
        self.portal = portal
        self.certificate_policy = certificate_policy
        if host_certificate is not None:
            keys = host_keys_with_certificate(host_key, host_certificate)
        else:
            key = host_key if isinstance(host_key, Key) else Key(host_key)
            keys = {key.sshType(): key.public()}, {key.sshType(): key}
        self.publicKeys, self.privateKeys = keys


# -- client: checking the server's host certificate --------------------------


def is_plain_host_key(host_key_blob: bytes) -> bool:
    """Whether the server presented a plain key rather than a ``*-cert-v01`` one."""
    try:
        key_type = take_string(host_key_blob)[0].decode("ascii", "replace")
    except ValueError:
        return False  # unparseable: parse_certificate will say why
    return bool(key_type) and not key_type.endswith(_CERT_SUFFIX)


def verify_host_key_with_ca(
    trusted_host_ca_lines: Sequence[str],
    hostname: str,
    now: float,
    require_certificate: bool = True,
) -> Callable[[bytes, bytes], Deferred[bool]]:
    """A ``verifyHostKey`` accepting only a trusted CA's certificate for `hostname`.

    A plain host key is refused: nodes in the cluster all have host
    certificates, and trust on first use would defeat the host CA. With
    ``require_certificate=False`` (``proxy_checks_host_keys: no``) a plain
    key is accepted, but a certificate, if presented, must still be valid.
    """

    def verify(host_key_blob: bytes, fingerprint: bytes) -> Deferred[bool]:
        if is_plain_host_key(host_key_blob):
            if not require_certificate:
                return defer.succeed(True)
            key_type = take_string(host_key_blob)[0].decode("ascii", "replace")
            return defer.fail(
                HostKeyRefused(
                    f"{hostname}: remote host presented a public key, expected a "
                    "host certificate from the cluster's host CA (its key is a "
                    f"plain {key_type}); refusing to connect"
                )
            )
        try:
            cert = parse_certificate(host_key_blob)
        except CertificateError as e:
            return defer.fail(
                HostKeyRefused(
                    f"{hostname} did not present a host certificate from the "
                    f"cluster's host CA ({e}); refusing to connect"
                )
            )
        try:
            check_host_certificate(cert, trusted_host_ca_lines, now, hostname)
        except CertificateRefused as e:
            return defer.fail(
                HostKeyRefused(
                    f"{hostname}'s host certificate was refused: {e.user_message} "
                    f"[{e.reason}]; refusing to connect"
                )
            )
        return defer.succeed(True)

    return verify


def verify_host_signature(
    key_algorithm: bytes, host_key_blob: bytes, signature: bytes, data: bytes
) -> bool:
    """Check the exchange-hash signature with the (possibly certified) host key."""
    if key_algorithm not in HOST_KEY_ALGORITHMS:
        return False
    blob_type, sig_alg = HOST_KEY_ALGORITHMS[key_algorithm]
    try:
        if take_string(host_key_blob)[0] != blob_type:
            return False
        if key_algorithm in USER_CERT_ALGORITHMS:
            public_key: Any = parse_certificate(host_key_blob).public_key
        else:
            line = blob_type + b" " + base64.b64encode(host_key_blob)
            public_key = load_ssh_public_key(line)
    except (ValueError, UnsupportedAlgorithm):
        return False
    return verify_ssh_signature(public_key, sig_alg, signature, data)


class CertificateClientTransport(SSHClientTransport):
    """A Conch client transport that accepts host certificates.

    It offers the certificate host key algorithms first and verifies the
    server's signature with the certified key. Only elliptic-curve key
    exchanges are offered (curve25519, ecdh-nistp*), because that is the one
    reply handler re-implemented here. Set ``verifyHostKey`` (for example to
    `verify_host_key_with_ca`) and override ``connectionSecure``; a refused
    host key is kept in `host_key_failure`.
    """

    supportedPublicKeys = list(HOST_KEY_ALGORITHMS)
    supportedKeyExchanges = [
        k for k in SSHClientTransport.supportedKeyExchanges if _kex.isEllipticCurve(k)
    ]
    host_key_failure: Failure | None = None

    def _ssh_KEX_ECDH_REPLY(self, packet: bytes) -> Deferred[None]:
        host_key, rest = take_string(packet)
        server_public, rest = take_string(rest)
        signature, _ = take_string(rest)
        fingerprint = b":".join(  # Conch's format; the verifier ignores it
            binascii.hexlify(bytes([c]))
            for c in md5(host_key, usedforsecurity=False).digest()
        )
        d: Deferred[Any] = defer.maybeDeferred(
            self.verifyHostKey, host_key, fingerprint
        )
        d.addCallbacks(
            lambda _: self._finish_ecdh(host_key, server_public, signature),
            self._host_key_refused,
        )
        d.addErrback(self._key_exchange_failed)
        return d

    def _host_key_refused(self, reason: Failure) -> None:
        self.host_key_failure = reason
        _log.warn("host key refused: {why}", why=reason.getErrorMessage())
        self.sendDisconnect(DISCONNECT_HOST_KEY_NOT_VERIFIABLE, b"host key refused")

    def _key_exchange_failed(self, reason: Failure) -> None:
        _log.failure("key exchange failed", reason)
        self.sendDisconnect(DISCONNECT_KEY_EXCHANGE_FAILED, b"key exchange failed")

    def _finish_ecdh(
        self, host_key: bytes, server_public: bytes, signature: bytes
    ) -> None:
        shared_secret = self._generateECSharedSecret(self.ecPriv, server_public)
        h = _kex.getHashProcessor(self.kexAlg)()
        for part in (
            self.ourVersionString,
            self.otherVersionString,
            self.ourKexInitPayload,
            self.otherKexInitPayload,
            host_key,
            self._encodeECPublicKey(self.ecPub),
            server_public,
        ):
            h.update(NS(part))
        h.update(shared_secret)
        exchange_hash = h.digest()
        if not verify_host_signature(self.keyAlg, host_key, signature, exchange_hash):
            self.sendDisconnect(DISCONNECT_KEY_EXCHANGE_FAILED, b"bad host signature")
            return
        self._keySetup(shared_secret, exchange_hash)
