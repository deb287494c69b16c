"""Answers the auth service signs, so a node can trust them through any proxy.

A node joining with ``teleconch join openssh`` talks to the proxy's web
listener, whose certificate is not from the cluster CA (often self-signed).
The CA pin would mean nothing if the proxy, or whoever sits in the middle,
could write the answer: so the auth service signs it with its own TLS
identity (a leaf of the cluster TLS CA, role ``auth``), over the canonical
JSON of the answer and a hash of what the request proved, and the node
checks the leaf against the CA whose pin it was given.  The pin authenticates
the answer; it cannot keep a request from reaching whoever terminated TLS.

So the token itself never travels.  A join names its token by its public
name (its first 8 characters, as ``teleconch-ctl tokens ls`` shows) and
proves it holds the token with an HMAC, keyed by the token's SHA-256 (what
the auth service keeps), over the canonical JSON of what it asks for: its
name, address, labels and public key.  Whoever relays the request can pass
it on or drop it, but not change the key or the name it certifies, nor use
the token for another request.  A renewal is proven by the node's signature
with its host key.  Both sides use this one module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teleconch.pki import ROLE_AUTH, TLSIdentity, ca_pin, issued_by, peer_identity

VERSION = "teleconch-attestation-v1"
#: What an attested answer is for: a node's first credentials, or a renewal.
JOIN_PURPOSE = "host.credentials"
RENEW_PURPOSE = "host.renew"


class AttestationError(Exception):
    """The answer cannot be shown to come from this cluster's auth service."""


def canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def binding_hash(secret: str) -> str:
    """What ties an answer to one request, without the secret itself."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


#: How much of a token is its public name (``Token.name``).
TOKEN_NAME_LENGTH = 8


def token_name(token: str) -> str:
    """The public name of a token: what a join sends instead of the token."""
    return token[:TOKEN_NAME_LENGTH]


def join_request(
    name: str, addr: str, labels: Mapping[str, Any], public_key: str
) -> dict[str, Any]:
    """What a node's join asks for, as its proof covers it."""
    return {
        "purpose": JOIN_PURPOSE,
        "node_name": name,
        "addr": addr,
        "labels": dict(labels),
        "public_key": public_key,
    }


def proof_of(secret_hash: str, request: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of ``request``'s canonical JSON, keyed by a token's SHA-256.

    ``secret_hash`` is the hex SHA-256 of the token (``binding_hash``, what
    the store keeps as ``token_hash``); raises ValueError if it is not hex.
    """
    return hmac.new(
        bytes.fromhex(secret_hash), canonical(dict(request)), hashlib.sha256
    ).hexdigest()


def join_proof(
    token: str, *, name: str, addr: str, labels: Mapping[str, Any], public_key: str
) -> str:
    """What a node sends to show it holds ``token``, for this request only."""
    return proof_of(binding_hash(token), join_request(name, addr, labels, public_key))


def proof_matches(expected: str, given: str) -> bool:
    """``given`` is ``expected``, compared in constant time."""
    return hmac.compare_digest(
        expected.encode("ascii"), given.encode("utf-8", "replace")
    )


def renew_message(cert_line: str, timestamp: int) -> bytes:
    """What a node signs with its host key to renew its certificate."""
    return b"\0".join(
        [b"teleconch-renew-v1", cert_line.strip().encode("ascii"), b"%d" % timestamp]
    )


def _message(purpose: str, payload: dict[str, Any], binding: str) -> bytes:
    return b"\0".join(
        [
            VERSION.encode(),
            purpose.encode(),
            binding_hash(binding).encode(),
            canonical(payload),
        ]
    )


def attest(
    identity: TLSIdentity, purpose: str, payload: dict[str, Any], binding: str
) -> dict[str, Any]:
    """``payload`` signed by the auth service's identity for one request."""
    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the auth service's TLS key is not an EC key")
    signature = key.sign(_message(purpose, payload, binding), ec.ECDSA(hashes.SHA256()))
    return {
        "payload": payload,
        "auth_cert": identity.cert_pem.decode("ascii"),
        "ca_cert": identity.ca_pems[0].decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


@attrs.frozen
class Attested:
    """An attested answer as it travels: the payload and what signs it.

    The payload stays JSON: the signature is over its canonical form.
    """

    payload: Mapping[str, Any]
    auth_cert: str
    ca_cert: str
    signature: str

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": dict(self.payload),
            "auth_cert": self.auth_cert,
            "ca_cert": self.ca_cert,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attested:
        return cls(
            data["payload"], data["auth_cert"], data["ca_cert"], data["signature"]
        )


def ca_of(document: Any) -> bytes:
    """The CA certificate an attested answer names (checked by ``verify``)."""
    if not isinstance(document, dict) or not isinstance(document.get("ca_cert"), str):
        raise AttestationError("the answer carries no cluster CA certificate")
    return str(document["ca_cert"]).encode("ascii", "replace")


def verify(
    document: Any,
    purpose: str,
    binding: str,
    pin: str | None,
    now: float | None = None,
) -> dict[str, Any]:
    """The payload, if the cluster's auth service signed it for this request.

    ``pin`` is the CA pin the node trusts; None accepts whichever CA the
    answer names (trust on first use: the caller warns).  The signing
    certificate must be valid at ``now`` (default: this machine's clock).
    """
    if not isinstance(document, dict):
        raise AttestationError("the answer is not an attested document")
    payload = document.get("payload")
    leaf = document.get("auth_cert")
    signature = document.get("signature")
    if not isinstance(payload, dict) or not isinstance(leaf, str):
        raise AttestationError("the answer is not an attested document")
    if not isinstance(signature, str):
        raise AttestationError("the answer is not signed")
    ca = ca_of(document)
    try:
        found = ca_pin(ca)
    except ValueError:
        raise AttestationError(
            "the answer's cluster CA certificate is unreadable"
        ) from None
    if pin is not None and found != pin:
        raise AttestationError(
            f"the answer comes from a cluster whose CA pin is {found}, not {pin}: "
            "check --ca-pin (from `teleconch-ctl tokens add --type=node`) and the "
            "proxy address"
        )
    leaf_pem = leaf.encode("ascii", "replace")
    if not issued_by(leaf_pem, ca):
        raise AttestationError(
            "the answer is signed by a certificate the cluster CA did not issue"
        )
    try:
        cert = x509.load_pem_x509_certificate(leaf_pem)
    except ValueError:
        raise AttestationError(
            "the answer's signing certificate is unreadable"
        ) from None
    when = time.time() if now is None else now
    if not (
        cert.not_valid_before_utc.timestamp()
        <= when
        <= cert.not_valid_after_utc.timestamp()
    ):
        raise AttestationError(
            "the answer is signed by an auth certificate that is not valid now "
            f"(valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC): check this machine's "
            "clock"
        )
    who = peer_identity(cert)
    if who is None or who[0] != ROLE_AUTH:
        role = who[0] if who else "none"
        raise AttestationError(
            f"the answer is signed by a {role} identity of the cluster, not the auth service"
        )
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise AttestationError("the auth service's certificate has no EC key")
    try:
        raw = base64.b64decode(signature, validate=True)
        public.verify(
            raw, _message(purpose, payload, binding), ec.ECDSA(hashes.SHA256())
        )
    except (ValueError, InvalidSignature):
        raise AttestationError(
            "the answer's signature does not verify: it was changed on the way, or "
            "answers another request"
        ) from None
    return payload
