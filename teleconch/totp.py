"""Time-based one-time passwords (RFC 6238), as authenticator apps make them.

SHA-1, six digits, 30-second steps: the parameters every app defaults to.
Time is passed in; the single-use rule lives with the caller, who stores the
step of the last accepted code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import struct
from urllib.parse import quote, urlencode

import segno

STEP = 30
DIGITS = 6


def new_secret() -> str:
    """A fresh 160-bit secret, base32 without padding (what apps accept)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    padded = secret.upper() + "=" * (-len(secret) % 8)
    return base64.b32decode(padded)


def counter_at(now: float) -> int:
    return int(now // STEP)


def code_at(secret: str, counter: int) -> str:
    digest = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def match(secret: str, code: str, now: float, window: int = 1) -> int | None:
    """The time step ``code`` belongs to, within ``window`` steps of now.

    Every candidate is compared in constant time, so the answer's timing does
    not say how close a guess was.
    """
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    found = None
    current = counter_at(now)
    for counter in range(current - window, current + window + 1):
        if hmac.compare_digest(code_at(secret, counter), code):
            found = counter
    return found


def otpauth_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads from the QR code."""
    label = quote(f"{issuer}:{account}", safe="")
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP,
        }
    )
    return f"otpauth://totp/{label}?{query}"


def qr_svg(data: str) -> str:
    """The QR code of ``data`` as a standalone SVG document."""
    qr = segno.make(data, error="m", micro=False)
    out = io.BytesIO()
    qr.save(
        out,
        kind="svg",
        xmldecl=False,
        svgns=True,
        svgclass=None,
        lineclass=None,
        scale=4,
        border=2,
        dark="#111",
        light="#fff",
    )
    return out.getvalue().decode("ascii")
