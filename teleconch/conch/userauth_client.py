"""``ssh-userauth`` for a Conch client that logs in with an OpenSSH user certificate.

Conch's client cannot offer a certificate, and signs RSA with SHA-1, which
OpenSSH 9 refuses. `CertificateUserAuthClient` offers one key with its
certificate and signs at once, with the key in memory
(`CertificateUserAuthClient`) or through an ssh-agent
(`AgentCertificateUserAuthClient`).
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
from twisted.python.failure import Failure

from teleconch.conch.agent import SSH_AGENT_RSA_SHA2_512, AgentClient
from teleconch.conch.certs import (
    USER_CERT_ALGORITHMS,
    Certificate,
    CertificateError,
    parse_certificate_line,
)
from teleconch.conch.wire import key_blob, take_string

__all__ = ["AgentCertificateUserAuthClient", "CertificateUserAuthClient"]

_CLIENT_ALGORITHM = {
    "ssh-ed25519-cert-v01@openssh.com": b"ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com": b"rsa-sha2-512-cert-v01@openssh.com",
    **{
        f"ecdsa-sha2-{c}-cert-v01@openssh.com": f"ecdsa-sha2-{c}-cert-v01@openssh.com".encode()
        for c in ("nistp256", "nistp384", "nistp521")
    },
}


class _OneCertificateClient(SSHUserAuthClient):
    """Offers one user certificate, signed at once; `_sign` makes the signature.

    Banners the server sends are kept in `banners` so callers can show them to
    the person; `refused` is set once the server turned the certificate down.
    """

    def __init__(self, user: str, instance: SSHService, certificate_line: str) -> None:
        super().__init__(user.encode("utf-8"), instance)
        self.certificate: Certificate = parse_certificate_line(certificate_line)
        self._algorithm = _CLIENT_ALGORITHM[self.certificate.key_type]
        self._offered = False
        self.banners: list[str] = []
        self.refused = False
        #: Why no signature could be made (an agent that refused), if so.
        self.sign_failure: Failure | None = None

    def _sign(self, data: bytes, algorithm: bytes) -> Deferred[bytes]:
        raise NotImplementedError

    def auth_publickey(self) -> Deferred[bool]:
        if self._offered:
            self.refused = True
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

        def send(signature: bytes) -> bool:
            self.askForAuth(
                b"publickey", b"\x01" + NS(self._algorithm) + NS(blob) + NS(signature)
            )
            return True

        def failed(reason: Failure) -> bool:
            self.sign_failure = reason
            return False

        return self._sign(signed, sig_alg).addCallbacks(send, failed)

    def auth_password(self) -> bool:
        return False

    def auth_keyboard_interactive(self) -> bool:
        return False

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:
        message, _ = take_string(packet)
        self.banners.append(message.decode("utf-8", "replace"))


class CertificateUserAuthClient(_OneCertificateClient):
    """Logs in by offering one user key (in memory) with its certificate.

    RSA signs with rsa-sha2-512 (OpenSSH 9 refuses SHA-1).
    """

    def __init__(
        self,
        user: str,
        instance: SSHService,
        private_key: SSHCertPrivateKeyTypes,
        certificate_line: str,
    ) -> None:
        if not isinstance(
            private_key,
            (Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey),
        ):
            raise TypeError("unsupported private key type")
        super().__init__(user, instance, certificate_line)
        if key_blob(self.certificate.public_key) != key_blob(private_key.public_key()):
            raise CertificateError("the certificate is for a different key")
        self._key = Key(private_key)

    def _sign(self, data: bytes, algorithm: bytes) -> Deferred[bytes]:
        return defer.succeed(self._key.sign(data, signatureType=algorithm))


class AgentCertificateUserAuthClient(_OneCertificateClient):
    """Logs in with a certificate whose key is held by an ssh-agent.

    The agent signs with the certificate's identity; RSA asks for
    rsa-sha2-512 (agent flag 4), since the agent's default is SHA-1.
    """

    def __init__(
        self,
        user: str,
        instance: SSHService,
        agent: AgentClient,
        certificate_line: str,
    ) -> None:
        super().__init__(user, instance, certificate_line)
        self._agent = agent

    def _sign(self, data: bytes, algorithm: bytes) -> Deferred[bytes]:
        flags = SSH_AGENT_RSA_SHA2_512 if algorithm == b"rsa-sha2-512" else 0
        return Deferred.fromCoroutine(
            self._agent.sign(self.certificate.blob, data, flags)
        )
