"""SSH wire format: strict string reading, and signatures checked by algorithm.

Conch's ``getNS`` returns a short string when the length runs past the data,
and its ``Key.verify`` accepts whatever algorithm a signature names; these
helpers are strict about both.
"""

from __future__ import annotations

import base64
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import SSHCertPublicKeyTypes
from cryptography.hazmat.primitives.serialization.ssh import serialize_ssh_public_key

__all__ = ["SERVER_SIG_ALGS", "key_blob", "take_string", "verify_ssh_signature"]

#: What we tell clients we verify (RFC 8308 ``server-sig-algs``).
SERVER_SIG_ALGS: tuple[bytes, ...] = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)

_ECDSA = {
    b"ecdsa-sha2-nistp256": ("secp256r1", hashes.SHA256),
    b"ecdsa-sha2-nistp384": ("secp384r1", hashes.SHA384),
    b"ecdsa-sha2-nistp521": ("secp521r1", hashes.SHA512),
}
_RSA = {b"rsa-sha2-256": hashes.SHA256, b"rsa-sha2-512": hashes.SHA512}


def key_blob(public_key: SSHCertPublicKeyTypes) -> bytes:
    """The SSH wire blob of a `cryptography` public key."""
    return base64.b64decode(serialize_ssh_public_key(public_key).split()[1])


def take_string(data: bytes) -> tuple[bytes, bytes]:
    """One SSH ``string`` and the rest; strict, unlike Conch's ``getNS``, which
    silently returns a short string when the length runs past the data."""
    if len(data) < 4:
        raise ValueError("truncated string length")
    (n,) = struct.unpack(">L", data[:4])
    if len(data) < 4 + n:
        raise ValueError("truncated string")
    return data[4 : 4 + n], data[4 + n :]


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
