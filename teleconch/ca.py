"""The cluster's OpenSSH certificate authority, on `cryptography`.

Conch cannot make or read OpenSSH certificates, so the user CA and the host CA
sign with `cryptography`'s ``SSHCertificateBuilder``. Everything here blocks on
file I/O or CPU; callers run it in a thread.
"""

from __future__ import annotations

import base64
import os
import pathlib
import secrets
import stat
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    SSHCertificateBuilder,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
    SSHPublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization.ssh import serialize_ssh_public_key

from teleconch.files import ensure_private_directory, write_private_file

__all__ = [
    "STANDARD_USER_EXTENSIONS",
    "BadPublicKey",
    "CAKeyError",
    "SSHCertificateAuthority",
    "check_private_file",
    "fingerprint",
    "parse_public_key",
    "public_key_line",
]

#: What ``ssh-keygen -s`` grants a user certificate by default.
STANDARD_USER_EXTENSIONS: Mapping[str, bytes] = MappingProxyType(
    {
        "permit-X11-forwarding": b"",
        "permit-agent-forwarding": b"",
        "permit-port-forwarding": b"",
        "permit-pty": b"",
        "permit-user-rc": b"",
    }
)

MIN_RSA_BITS = 2048
_CERT_SUFFIX = "-cert-v01@openssh.com"
_GENERATE_HINT = "Make a new key with `ssh-keygen -t ed25519` and send its .pub file."


class BadPublicKey(ValueError):
    """A public key a user sent that we will not certify; the message says why."""


class CAKeyError(RuntimeError):
    """The CA key file on disk cannot be used safely; the message says how to fix it."""


# -- files -------------------------------------------------------------------


def check_private_file(path: pathlib.Path, st: os.stat_result | None = None) -> None:
    """Refuse a CA key readable by group or others, rather than quietly fix it.

    Someone may already have copied it, and the operator should know.
    """
    if st is None:
        st = path.stat()
    if st.st_mode & 0o077:
        raise CAKeyError(
            f"The CA key {path} is readable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}). If nobody else could have "
            f"read it, run `chmod 600 {path}`; otherwise delete it so that a "
            "new CA is made, and distribute the new CA key."
        )


# -- public keys -------------------------------------------------------------


def parse_public_key(data: str | bytes) -> SSHCertPublicKeyTypes:
    """Parse one authorized_keys / .pub line a user sent us to certify.

    Only keys OpenSSH still trusts are accepted (ed25519, ECDSA, RSA >= 2048),
    and every refusal says what to send instead.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise BadPublicKey(
                "The public key is not text. Send the contents of your .pub file."
            ) from None
    else:
        text = data
    text = text.strip()
    if not text:
        raise BadPublicKey("No public key was given. " + _GENERATE_HINT)
    if "PRIVATE KEY" in text:
        raise BadPublicKey(
            "That is a private key: keep it secret. Send the public key "
            "(the .pub file next to it) instead."
        )
    if "\n" in text or "\r" in text:
        raise BadPublicKey("Send exactly one public key, on one line.")
    key_type = text.split(None, 1)[0]
    if key_type.endswith(_CERT_SUFFIX):
        raise BadPublicKey(
            "That is an SSH certificate, not a public key. Send the plain "
            "public key (the .pub file without -cert in its name)."
        )
    if key_type == "ssh-dss":
        raise BadPublicKey(
            "DSA keys are not accepted: OpenSSH has disabled them as insecure. "
            + _GENERATE_HINT
        )
    if key_type.startswith("sk-"):
        raise BadPublicKey(
            "Security-key (FIDO) SSH keys are not supported yet. " + _GENERATE_HINT
        )
    try:
        key = serialization.load_ssh_public_key(text.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        raise BadPublicKey(
            "That is not an OpenSSH public key line (expected something like "
            "'ssh-ed25519 AAAA... comment'). " + _GENERATE_HINT
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise BadPublicKey(
                f"That RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} "
                "are required. " + _GENERATE_HINT
            )
        return key
    if isinstance(key, (Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        return key
    raise BadPublicKey("That key type is not supported. " + _GENERATE_HINT)


def public_key_line(key: SSHPublicKeyTypes) -> str:
    """The key as OpenSSH writes it ("ssh-ed25519 AAAA..."), without a comment."""
    return serialize_ssh_public_key(key).decode("ascii")


def fingerprint(key: SSHPublicKeyTypes) -> str:
    """The fingerprint exactly as ``ssh-keygen -l`` prints it, for people to compare."""
    digest = serialization.ssh_key_fingerprint(key, hashes.SHA256())
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


# -- the authority -----------------------------------------------------------


class SSHCertificateAuthority:
    """An ed25519 CA key that signs user or host certificates.

    The user CA and the host CA are two instances over two key files.
    """

    def __init__(self, private_key: Ed25519PrivateKey, comment: str = "") -> None:
        self._private_key = private_key
        #: Kept for operators (e.g. "teleconch user CA for example.com").
        self.comment = comment

    def __repr__(self) -> str:
        return (
            f"<SSHCertificateAuthority {fingerprint(self.public_key)} {self.comment!r}>"
        )

    @classmethod
    def generate(cls, comment: str = "") -> SSHCertificateAuthority:
        """A fresh CA held only in memory (tests, or before it is saved)."""
        return cls(Ed25519PrivateKey.generate(), comment)

    @classmethod
    def load_or_create(
        cls, path: pathlib.Path, comment: str
    ) -> SSHCertificateAuthority:
        """Load the CA key at `path`, making it on first start.

        A key readable by group or others is refused (`check_private_file`).
        """
        try:
            st = path.stat()
        except FileNotFoundError:
            ca = cls.generate(comment)
            ensure_private_directory(path.parent)
            write_private_file(path, ca._private_bytes())
            return ca
        check_private_file(path, st)
        try:
            key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise CAKeyError(
                f"The CA key {path} cannot be read as an unencrypted OpenSSH "
                f"private key ({e}). Restore it from a backup."
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CAKeyError(
                f"The CA key {path} is not an ed25519 key. Restore the right file "
                "from a backup."
            )
        return cls(key, comment)

    def _private_bytes(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private_key.public_key()

    def public_key_line(self) -> str:
        """For TrustedUserCAKeys and ``@cert-authority`` lines (no comment)."""
        return public_key_line(self.public_key)

    def sign_user_certificate(
        self,
        public_key: SSHCertPublicKeyTypes,
        key_id: str,
        principals: Sequence[str],
        valid_after: int,
        valid_before: int,
        extensions: Mapping[str, bytes],
        serial: int | None = None,
    ) -> str:
        """A user certificate line; `principals` are the logins it allows."""
        return self._sign(
            SSHCertificateType.USER,
            public_key,
            key_id,
            principals,
            valid_after,
            valid_before,
            extensions,
            serial,
        )

    def sign_host_certificate(
        self,
        public_key: SSHCertPublicKeyTypes,
        key_id: str,
        principals: Sequence[str],
        valid_after: int,
        valid_before: int,
        serial: int | None = None,
    ) -> str:
        """A host certificate line; `principals` are the names clients dial."""
        return self._sign(
            SSHCertificateType.HOST,
            public_key,
            key_id,
            principals,
            valid_after,
            valid_before,
            {},
            serial,
        )

    def _sign(
        self,
        cert_type: SSHCertificateType,
        public_key: SSHCertPublicKeyTypes,
        key_id: str,
        principals: Sequence[str],
        valid_after: int,
        valid_before: int,
        extensions: Mapping[str, bytes],
        serial: int | None,
    ) -> str:
        # An empty principal list means "any principal" to OpenSSH: never
        # produce one by accident.
        if not principals:
            raise ValueError("a certificate needs at least one principal")
        if serial is None:
            serial = secrets.randbits(64)
        builder = (
            SSHCertificateBuilder()
            .public_key(public_key)
            .serial(serial)
            .type(cert_type)
            .key_id(key_id.encode("utf-8"))
            .valid_principals([p.encode("utf-8") for p in principals])
            .valid_after(int(valid_after))
            .valid_before(int(valid_before))
        )
        for name, value in extensions.items():
            builder = builder.add_extension(name.encode("utf-8"), value)
        cert = builder.sign(self._private_key)
        return cert.public_bytes().decode("ascii")
