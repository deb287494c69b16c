"""``ssh-userauth`` for a Conch client that logs in with an OpenSSH user certificate.

Conch's client cannot offer a certificate, and signs RSA with SHA-1, which
OpenSSH 9 refuses. `CertificateUserAuthClient` offers one key with its
certificate and signs at once, with the key in memory.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import SSHCertPrivateKeyTypes
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.service import SSHService
from twisted.conch.ssh.userauth import MSG_USERAUTH_REQUEST, SSHUserAuthClient
from twisted.internet import defer
from twisted.internet.defer import Deferred

from teleconch.conch.certs import (
    USER_CERT_ALGORITHMS,
    Certificate,
    CertificateError,
    parse_certificate_line,
)
from teleconch.conch.wire import key_blob, take_string

__all__ = ["CertificateUserAuthClient"]

_CLIENT_ALGORITHM = {
    "ssh-ed25519-cert-v01@openssh.com": b"ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com": b"rsa-sha2-512-cert-v01@openssh.com",
    **{
        f"ecdsa-sha2-{c}-cert-v01@openssh.com": f"ecdsa-sha2-{c}-cert-v01@openssh.com".encode()
        for c in ("nistp256", "nistp384", "nistp521")
    },
}


class CertificateUserAuthClient(SSHUserAuthClient):
    """Logs in by offering one user key with its certificate, signed at once.

    RSA signs with rsa-sha2-512 (OpenSSH 9 refuses SHA-1). Banners the server
    sends are kept in `banners` so callers can show them to the person.
    """

    def __init__(
        self,
        user: str,
        instance: SSHService,
        private_key: SSHCertPrivateKeyTypes,
        certificate_line: str,
    ) -> None:
        super().__init__(user.encode("utf-8"), instance)
        if not isinstance(
            private_key,
            (Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey),
        ):
            raise TypeError("unsupported private key type")
        self.certificate: Certificate = parse_certificate_line(certificate_line)
        if key_blob(self.certificate.public_key) != key_blob(private_key.public_key()):
            raise CertificateError("the certificate is for a different key")
        self._key = Key(private_key)
        self._algorithm = _CLIENT_ALGORITHM[self.certificate.key_type]
        self._offered = False
        self.banners: list[str] = []

    def auth_publickey(self) -> Deferred[bool]:
        if self._offered:
            return defer.succeed(False)
        self._offered = True
        assert self.transport is not None
        blob = self.certificate.blob
        signed = b"".join(
            [
                NS(self.transport.sessionID or b""),
                bytes((MSG_USERAUTH_REQUEST,)),
                NS(self.user),
                NS(self.instance.name),
                NS(b"publickey"),
                b"\x01",
                NS(self._algorithm),
                NS(blob),
            ]
        )
        sig_alg = USER_CERT_ALGORITHMS[self._algorithm][1]
        signature = self._key.sign(signed, signatureType=sig_alg)
        self.askForAuth(
            b"publickey", b"\x01" + NS(self._algorithm) + NS(blob) + NS(signature)
        )
        return defer.succeed(True)

    def auth_password(self) -> bool:
        return False

    def auth_keyboard_interactive(self) -> bool:
        return False

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:
        message, _ = take_string(packet)
        self.banners.append(message.decode("utf-8", "replace"))
