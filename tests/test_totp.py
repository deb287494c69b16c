"""One-time codes as authenticator apps compute them (RFC 6238)."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlparse

from teleconch import totp

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()


def test_codes_match_the_rfc_6238_vectors() -> None:
    """The SHA-1 test vectors of RFC 6238, last six digits."""
    for when, code in [
        (59, "287082"),
        (1111111109, "081804"),
        (1234567890, "005924"),
        (2000000000, "279037"),
    ]:
        assert totp.code_at(RFC_SECRET, totp.counter_at(when)) == code


def test_match_accepts_one_step_of_clock_drift_and_no_more() -> None:
    """A code from the previous or next step matches; two steps away does not."""
    secret = totp.new_secret()
    now = 1_700_000_000.0
    c = totp.counter_at(now)
    assert totp.match(secret, totp.code_at(secret, c), now) == c
    assert totp.match(secret, totp.code_at(secret, c - 1), now) == c - 1
    assert totp.match(secret, totp.code_at(secret, c + 1), now) == c + 1
    assert totp.match(secret, totp.code_at(secret, c - 2), now) is None


def test_match_refuses_malformed_codes() -> None:
    """Anything but six digits is refused without computing."""
    secret = totp.new_secret()
    for bad in ["", "12345", "1234567", "abcdef", "12 34 5"]:
        assert totp.match(secret, bad, 0.0) is None


def test_new_secrets_are_160_bit_base32() -> None:
    """Secrets are fresh each time and decode to 20 bytes."""
    a, b = totp.new_secret(), totp.new_secret()
    assert a != b
    assert len(base64.b32decode(a + "=" * (-len(a) % 8))) == 20


def test_otpauth_uri_carries_secret_issuer_and_account() -> None:
    """The URI is what Google Authenticator and friends read."""
    uri = totp.otpauth_uri("JBSWY3DPEHPK3PXP", "alice", "example.com")
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    assert parsed.path == "/example.com%3Aalice"
    q = parse_qs(parsed.query)
    assert q["secret"] == ["JBSWY3DPEHPK3PXP"] and q["issuer"] == ["example.com"]
    assert q["digits"] == ["6"] and q["period"] == ["30"]


def test_qr_svg_is_a_standalone_svg() -> None:
    """The QR code is an SVG document a browser can show as an image."""
    svg = totp.qr_svg("otpauth://totp/x:y?secret=JBSWY3DPEHPK3PXP")
    assert (
        svg.startswith("<svg") and "xmlns=" in svg and svg.rstrip().endswith("</svg>")
    )
