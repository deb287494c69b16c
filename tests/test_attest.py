"""The auth service's signature on what a joining node must trust, in memory."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from teleconch.auth.attest import (
    JOIN_PURPOSE,
    RENEW_PURPOSE,
    AttestationError,
    attest,
    verify,
)
from teleconch.pki import ROLE_AUTH, ROLE_PROXY, TLSAuthority, TLSIdentity

PAYLOAD = {
    "cluster_name": "test.example",
    "node_id": "n-1",
    "host_cert": "ssh-ed25519-cert-v01@openssh.com AAAA...",
    "user_ca": ["ssh-ed25519 AAAA test.example-user-ca"],
    "expires": 1234,
}


#: When the tests check: within the auth leaf's ten years from 0.
NOW = 86400.0


@pytest.fixture(scope="module")
def ca() -> TLSAuthority:
    return TLSAuthority.generate("test.example", 0.0)


def _identity(ca: TLSAuthority, role: str = ROLE_AUTH) -> TLSIdentity:
    return ca.issue_identity(role, "auth1", 0.0, 10 * 365 * 86400)


def _document(ca: TLSAuthority, role: str = ROLE_AUTH) -> dict[str, Any]:
    return attest(_identity(ca, role), JOIN_PURPOSE, PAYLOAD, "the-token")


def test_an_attested_answer_verifies_with_the_pin_and_the_token(
    ca: TLSAuthority,
) -> None:
    """The payload comes back as signed, with or without a pin to check."""
    document = _document(ca)
    assert verify(document, JOIN_PURPOSE, "the-token", ca.pin, now=NOW) == PAYLOAD
    assert verify(document, JOIN_PURPOSE, "the-token", None, now=NOW) == PAYLOAD
    assert "the-token" not in repr(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host_cert", "ssh-ed25519-cert-v01@openssh.com BBBB..."),
        ("user_ca", ["ssh-ed25519 EVIL attacker-ca"]),
        ("expires", 99999999),
    ],
)
def test_a_tampered_field_is_refused(
    ca: TLSAuthority, field: str, value: object
) -> None:
    """Change one field of the payload on the way: the signature fails."""
    document = _document(ca)
    document["payload"][field] = value
    with pytest.raises(AttestationError, match="does not verify"):
        verify(document, JOIN_PURPOSE, "the-token", ca.pin, now=NOW)


def test_an_answer_to_another_request_or_purpose_is_refused(ca: TLSAuthority) -> None:
    """The signature binds the token and the purpose: a replayed answer to
    another join, or a join answer offered as a renewal, fails."""
    document = _document(ca)
    with pytest.raises(AttestationError, match="does not verify"):
        verify(document, JOIN_PURPOSE, "another-token", ca.pin, now=NOW)
    with pytest.raises(AttestationError, match="does not verify"):
        verify(document, RENEW_PURPOSE, "the-token", ca.pin, now=NOW)


def test_a_wrong_pin_is_refused(ca: TLSAuthority) -> None:
    """The pin the node was given must be the CA's that signed the leaf."""
    with pytest.raises(AttestationError, match="not sha256:00"):
        verify(_document(ca), JOIN_PURPOSE, "the-token", "sha256:" + "0" * 64, now=NOW)


def test_another_clusters_signature_under_this_ca_is_refused(ca: TLSAuthority) -> None:
    """A leaf from another CA presented with this cluster's CA certificate fails."""
    other = TLSAuthority.generate("evil.example", 0.0)
    document = attest(_identity(other), JOIN_PURPOSE, PAYLOAD, "the-token")
    document["ca_cert"] = ca.cert_pem.decode()
    with pytest.raises(AttestationError, match="did not issue"):
        verify(document, JOIN_PURPOSE, "the-token", ca.pin, now=NOW)


def test_a_proxy_role_leaf_is_refused(ca: TLSAuthority) -> None:
    """A proxy of the cluster holds a leaf of the same CA: it cannot sign as
    the auth service (it could otherwise rewrite the answers it forwards)."""
    with pytest.raises(AttestationError, match="proxy identity"):
        verify(_document(ca, ROLE_PROXY), JOIN_PURPOSE, "the-token", ca.pin, now=NOW)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.pop("signature"),
        lambda d: d.update(signature="not base64!"),
        lambda d: d.update(payload="a string"),
        lambda d: d.update(ca_cert="-----BEGIN CERTIFICATE-----\nxx"),
        lambda d: d.update(auth_cert=5),
    ],
)
def test_a_malformed_document_is_refused(ca: TLSAuthority, mangle: Any) -> None:
    """Missing or unreadable parts are refused as such, never a crash."""
    document = copy.deepcopy(_document(ca))
    mangle(document)
    with pytest.raises(AttestationError):
        verify(document, JOIN_PURPOSE, "the-token", ca.pin, now=NOW)


@pytest.mark.parametrize("now", [-3600.0, 11 * 365 * 86400.0])
def test_an_auth_certificate_outside_its_validity_is_refused(
    ca: TLSAuthority, now: float
) -> None:
    """A leaf that has expired (or is not valid yet) signs nothing: a stolen
    key of a retired auth service stops counting when its certificate ends."""
    with pytest.raises(AttestationError, match="valid"):
        verify(_document(ca), JOIN_PURPOSE, "the-token", ca.pin, now=now)
