"""The SSH half of the probe: raw pre-KEX inputs and crafted post-KEX packets."""

from __future__ import annotations

import random
import struct

from tests.hostile.cases import SSH, UNIMPLEMENTED, Case

VERSION = b"SSH-2.0-hostile_probe\r\n"
#: The MAC the proxy offers (encrypt-then-MAC only).
ETM = b"hmac-sha2-256-etm@openssh.com"

MSG_DISCONNECT = 1
MSG_IGNORE = 2
MSG_UNIMPLEMENTED = 3
MSG_DEBUG = 4
MSG_SERVICE_REQUEST = 5
MSG_EXT_INFO = 7
MSG_KEXINIT = 20
MSG_NEWKEYS = 21
MSG_KEX_ECDH_INIT = 30  # also KEX_DH_GEX_REQUEST_OLD
MSG_KEX_DH_GEX_GROUP = 31
MSG_KEX_DH_GEX_INIT = 32
MSG_KEX_DH_GEX_REPLY = 33
MSG_KEX_DH_GEX_REQUEST = 34
MSG_USERAUTH_REQUEST = 50
MSG_GLOBAL_REQUEST = 80
MSG_CHANNEL_OPEN = 90

HOST_KEYS = (
    b"ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256,"
    b"ssh-ed25519-cert-v01@openssh.com"
)


def u32(n: int) -> bytes:
    return struct.pack(">L", n & 0xFFFFFFFF)


def ns(data: bytes) -> bytes:
    return u32(len(data)) + data


def mpint(n: int) -> bytes:
    if n == 0:
        return u32(0)
    length = (n.bit_length() + 8) // 8
    return ns(n.to_bytes(length, "big", signed=True))


def packet(
    payload: bytes,
    *,
    pad: int | None = None,
    length: int | None = None,
    pad_length: int | None = None,
) -> bytes:
    """A plaintext binary packet (RFC 4253 section 6), optionally broken."""
    if pad is None:
        pad = 8 - ((5 + len(payload)) % 8)
        if pad < 4:
            pad += 8
    body = bytes((pad if pad_length is None else pad_length,)) + payload
    body += b"\0" * pad
    return u32(len(body) if length is None else length) + body


def kexinit(
    kex: bytes = b"curve25519-sha256",
    *,
    lists: list[bytes] | None = None,
    follows: int = 0,
    strict: bool = False,
) -> bytes:
    """A client KEXINIT payload, message number first."""
    if lists is None:
        kexes = kex + (b",kex-strict-c-v00@openssh.com" if strict else b"")
        lists = [kexes, HOST_KEYS, b"aes128-ctr", b"aes128-ctr"]
        lists += [ETM, ETM, b"none", b"none", b"", b""]
    body = b"".join(ns(x) for x in lists)
    return bytes((MSG_KEXINIT,)) + b"\x11" * 16 + body + bytes((follows,)) + u32(0)


def msg(number: int, payload: bytes = b"") -> bytes:
    return bytes((number,)) + payload


def _pre(
    cid: str, data: bytes, idle: bool = False, unimplemented: bool = False
) -> Case:
    """A raw case; ``unimplemented``: an UNIMPLEMENTED answer is also right."""
    answers = frozenset({UNIMPLEMENTED}) if unimplemented else frozenset()
    return Case(f"ssh/{cid}", SSH, data=data, idle=idle, answers=answers)


def _version_cases(rng: random.Random) -> list[Case]:
    cases = [
        _pre("version-only", VERSION, idle=True),
        _pre(
            "version-and-kexinit-then-silence", VERSION + packet(kexinit()), idle=True
        ),
        _pre("version-line-300-bytes", b"SSH-2.0-" + b"A" * 300 + b"\r\n"),
        _pre("version-line-4000-bytes", b"SSH-2.0-" + b"A" * 4000 + b"\r\n"),
        _pre("version-line-70000-bytes", b"SSH-2.0-" + b"A" * 70000 + b"\r\n"),
        _pre("version-unterminated-8k", b"SSH-2.0-" + b"B" * 8192),
        _pre("version-ssh-1.5", b"SSH-1.5-old\r\n"),
        _pre("version-ssh-3.0", b"SSH-3.0-future\r\n"),
        _pre("version-empty-fields", b"SSH-\r\n"),
        _pre("version-with-nul", b"SSH-2.0-a\0b\r\n"),
        _pre("http-request-to-ssh", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        _pre(
            "tls-clienthello-to-ssh",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,
        ),
        _pre("pre-version-lines-2000", b"hello there\r\n" * 2000),
        _pre("pre-version-newlines-10000", b"\n" * 10000),
        _pre("pre-version-one-line-then-version-300", b"x" * 300 + b"\r\n" + VERSION),
    ]
    for i in range(8):
        junk = rng.randbytes(rng.choice((16, 64, 512, 4096)))
        # A junk length field that happens to look plausible would only wait.
        junk = b"\xff" + junk[1:]
        cases.append(_pre(f"garbage-after-version-{i}", VERSION + junk))
    return cases


def _framing_cases() -> list[Case]:
    ok = msg(MSG_IGNORE, ns(b"x"))
    return [
        _pre("length-0", VERSION + u32(0) + b"\0" * 16),
        _pre("length-1", VERSION + u32(1) + b"\0" * 16),
        _pre("length-4", VERSION + u32(4) + b"\0" * 16),
        _pre("length-misaligned-13", VERSION + u32(13) + b"\x04" + b"\0" * 16),
        _pre("length-35001", VERSION + u32(35001) + b"\x04" + b"\0" * 64),
        _pre("length-262144", VERSION + u32(262144) + b"\x04" + b"\0" * 64),
        _pre("length-0xffffffff", VERSION + u32(0xFFFFFFFF) + b"\0" * 64),
        _pre("length-0x80000000", VERSION + u32(0x80000000) + b"\0" * 64),
        _pre("padding-0", VERSION + packet(ok, pad_length=0)),
        _pre("padding-3", VERSION + packet(ok, pad_length=3)),
        _pre("padding-longer-than-packet", VERSION + packet(ok, pad_length=255)),
        _pre("padding-eats-message-number", VERSION + packet(b"", pad=7, pad_length=7)),
        _pre("ignore-truncated-string", VERSION + packet(msg(MSG_IGNORE, u32(1000)))),
        _pre(
            "ignore-then-bad-padding", VERSION + packet(ok) + packet(ok, pad_length=200)
        ),
        _pre("ignore-then-length-junk", VERSION + packet(ok) + b"\xde\xad\xbe\xef" * 8),
    ]


def _pre_kex_messages() -> list[tuple[str, bytes]]:
    """(name, payload) of non-KEX messages a client must not send before KEX."""
    items = [
        ("service-request-userauth", msg(MSG_SERVICE_REQUEST, ns(b"ssh-userauth"))),
        ("service-request-connection", msg(MSG_SERVICE_REQUEST, ns(b"ssh-connection"))),
        ("service-request-bogus", msg(MSG_SERVICE_REQUEST, ns(b"ssh-bogus"))),
        ("service-request-empty", msg(MSG_SERVICE_REQUEST)),
        ("service-request-truncated", msg(MSG_SERVICE_REQUEST, u32(64) + b"ssh")),
        (
            "ext-info-valid",
            msg(MSG_EXT_INFO, u32(1) + ns(b"server-sig-algs") + ns(b"x")),
        ),
        ("ext-info-empty", msg(MSG_EXT_INFO)),
        ("ext-info-count-huge", msg(MSG_EXT_INFO, u32(0xFFFFFFFF))),
        ("ext-info-missing-value", msg(MSG_EXT_INFO, u32(1) + ns(b"server-sig-algs"))),
        ("debug-valid", msg(MSG_DEBUG, b"\x01" + ns(b"hi") + ns(b""))),
        ("debug-empty", msg(MSG_DEBUG)),
        ("debug-truncated", msg(MSG_DEBUG, b"\x01" + u32(500) + b"abc")),
        ("unimplemented-valid", msg(MSG_UNIMPLEMENTED, u32(3))),
        ("unimplemented-empty", msg(MSG_UNIMPLEMENTED)),
        ("unimplemented-short", msg(MSG_UNIMPLEMENTED, b"\0\0")),
        ("disconnect-valid", msg(MSG_DISCONNECT, u32(11) + ns(b"bye") + ns(b""))),
        ("disconnect-empty", msg(MSG_DISCONNECT)),
        ("disconnect-short", msg(MSG_DISCONNECT, b"\0\0")),
        ("disconnect-truncated-text", msg(MSG_DISCONNECT, u32(11) + u32(300) + b"x")),
        (
            "userauth-request",
            msg(
                MSG_USERAUTH_REQUEST, ns(b"root") + ns(b"ssh-connection") + ns(b"none")
            ),
        ),
        (
            "channel-open",
            msg(MSG_CHANNEL_OPEN, ns(b"session") + u32(0) + u32(65536) + u32(32768)),
        ),
        ("global-request", msg(MSG_GLOBAL_REQUEST, ns(b"tcpip-forward") + b"\x01")),
    ]
    for number in (0, 8, 9, 15, 19, 49, 60, 99, 128, 200, 255):
        items.append((f"unknown-type-{number}", msg(number, b"junk")))
    return items


def _kexinit_cases() -> list[Case]:
    good = kexinit()
    cases = [
        _pre(f"kexinit-truncated-at-{n}", VERSION + packet(good[:n]))
        for n in (1, 9, 17, 19, 21, 40, len(good) - 5, len(good) - 1)
    ]
    for name, length in (("huge", 0xFFFFFFFF), ("2g", 0x7FFFFFFF), ("100k", 100000)):
        bad = bytes((MSG_KEXINIT,)) + b"\0" * 16 + u32(length) + b"curve25519-sha256"
        cases.append(_pre(f"kexinit-namelist-length-{name}", VERSION + packet(bad)))
    nine = [b"curve25519-sha256", HOST_KEYS, b"aes128-ctr", b"aes128-ctr"]
    nine += [ETM, ETM, b"none", b"none", b""]
    cases += [
        _pre("kexinit-nine-namelists", VERSION + packet(kexinit(lists=nine))),
        _pre(
            "kexinit-no-common-kex",
            VERSION + packet(kexinit(b"diffie-hellman-group1-sha1")),
        ),
        _pre(
            "kexinit-no-common-cipher",
            VERSION
            + packet(
                kexinit(
                    lists=[
                        b"curve25519-sha256",
                        HOST_KEYS,
                        b"3des-cbc",
                        b"3des-cbc",
                        b"hmac-md5",
                        b"hmac-md5",
                        b"none",
                        b"none",
                        b"",
                        b"",
                    ]
                )
            ),
        ),
        _pre("kexinit-empty-namelists", VERSION + packet(kexinit(lists=[b""] * 10))),
        _pre("kexinit-commas-only", VERSION + packet(kexinit(lists=[b",,,"] * 10))),
        _pre(
            "kexinit-nul-in-names",
            VERSION + packet(kexinit(b"curve25519-sha256\0evil")),
        ),
        _pre(
            "kexinit-30k-namelist",
            VERSION + packet(kexinit(b"x," * 15000 + b"x")),
        ),
        _pre("kexinit-twice", VERSION + packet(good) + packet(good)),
        _pre(
            "kexinit-wrong-guess-follows",
            VERSION
            + packet(kexinit(follows=1))
            + packet(msg(MSG_KEX_ECDH_INIT, ns(b"\x09" * 32)))
            + packet(msg(MSG_KEX_ECDH_INIT, b"junk")),
        ),
        _pre("kexinit-no-reserved-field", VERSION + packet(good[:-5])),
    ]
    return cases


def _kex_message_cases(rng: random.Random) -> list[Case]:
    curve = VERSION + packet(kexinit(b"curve25519-sha256"))
    nist = VERSION + packet(kexinit(b"ecdh-sha2-nistp256"))
    # The proxy offers no group exchange: GEX messages arrive as junk during
    # a curve25519 exchange, and a GEX-only KEXINIT matches nothing.
    gex = curve
    request = packet(msg(MSG_KEX_DH_GEX_REQUEST, u32(2048) + u32(3072) + u32(8192)))
    cases = [
        _pre(
            "ecdh-init-before-kexinit",
            VERSION + packet(msg(MSG_KEX_ECDH_INIT, ns(b"\x09" * 32))),
        ),
        _pre("x25519-init-empty", curve + packet(msg(MSG_KEX_ECDH_INIT))),
        _pre("x25519-init-empty-key", curve + packet(msg(MSG_KEX_ECDH_INIT, ns(b"")))),
        _pre(
            "x25519-init-31-bytes",
            curve + packet(msg(MSG_KEX_ECDH_INIT, ns(b"\x09" * 31))),
        ),
        _pre(
            "x25519-init-33-bytes",
            curve + packet(msg(MSG_KEX_ECDH_INIT, ns(b"\x09" * 33))),
        ),
        _pre(
            "x25519-init-all-zero-point",
            curve + packet(msg(MSG_KEX_ECDH_INIT, ns(b"\0" * 32))),
        ),
        _pre(
            "x25519-init-truncated-string",
            curve + packet(msg(MSG_KEX_ECDH_INIT, u32(32) + b"\x09" * 5)),
        ),
        _pre(
            "x25519-init-huge-string",
            curve + packet(msg(MSG_KEX_ECDH_INIT, u32(0xFFFFFFF0))),
        ),
        _pre(
            "x25519-init-random",
            curve + packet(msg(MSG_KEX_ECDH_INIT, rng.randbytes(40))),
        ),
        _pre(
            "nistp256-init-invalid-point",
            nist + packet(msg(MSG_KEX_ECDH_INIT, ns(b"\x04" + b"\x01" * 64))),
        ),
        _pre(
            "nistp256-init-compressed-junk",
            nist + packet(msg(MSG_KEX_ECDH_INIT, ns(b"\x02" + b"\xff" * 32))),
        ),
        _pre("nistp256-init-empty", nist + packet(msg(MSG_KEX_ECDH_INIT))),
        _pre(
            "gex-init-before-request",
            gex + packet(msg(MSG_KEX_DH_GEX_INIT, mpint(12345))),
        ),
        _pre("gex-init-empty", gex + request + packet(msg(MSG_KEX_DH_GEX_INIT))),
        _pre(
            "gex-init-zero", gex + request + packet(msg(MSG_KEX_DH_GEX_INIT, mpint(0)))
        ),
        _pre(
            "gex-init-one", gex + request + packet(msg(MSG_KEX_DH_GEX_INIT, mpint(1)))
        ),
        _pre(
            "gex-init-negative",
            gex + request + packet(msg(MSG_KEX_DH_GEX_INIT, mpint(-5))),
        ),
        _pre(
            "gex-init-huge",
            gex + request + packet(msg(MSG_KEX_DH_GEX_INIT, mpint(1 << 20000))),
        ),
        _pre(
            "gex-init-truncated-mpint",
            gex + request + packet(msg(MSG_KEX_DH_GEX_INIT, u32(256) + b"\x01" * 3)),
        ),
        _pre(
            "gex-request-truncated",
            gex + packet(msg(MSG_KEX_DH_GEX_REQUEST, u32(2048))),
        ),
        _pre(
            "gex-request-min-above-max",
            gex
            + packet(msg(MSG_KEX_DH_GEX_REQUEST, u32(8192) + u32(4096) + u32(1024))),
        ),
        _pre(
            "gex-request-absurd",
            gex
            + packet(
                msg(MSG_KEX_DH_GEX_REQUEST, u32(0) + u32(0xFFFFFFFF) + u32(0xFFFFFFFF))
            ),
        ),
        _pre(
            "gex-only-kexinit",
            VERSION + packet(kexinit(b"diffie-hellman-group-exchange-sha256")),
        ),
        _pre(
            "gex-group-from-client",
            gex + packet(msg(MSG_KEX_DH_GEX_GROUP, mpint(23) + mpint(5))),
            unimplemented=True,
        ),
        _pre(
            "gex-reply-from-client",
            curve + packet(msg(MSG_KEX_DH_GEX_REPLY, ns(b"k") + mpint(3) + ns(b"s"))),
            unimplemented=True,
        ),
        _pre("newkeys-without-kex", VERSION + packet(msg(MSG_NEWKEYS))),
        _pre("newkeys-after-kexinit-only", curve + packet(msg(MSG_NEWKEYS))),
        _pre("newkeys-with-payload", curve + packet(msg(MSG_NEWKEYS, b"extra"))),
    ]
    return cases


def ssh_pre_kex_cases(rng: random.Random) -> list[Case]:
    """Raw inputs to the SSH port; nothing here completes a key exchange."""
    cases = _version_cases(rng) + _framing_cases()
    for name, payload in _pre_kex_messages():
        if name.endswith("-valid") and name != "ext-info-valid":
            continue  # RFC 4253 11: legal at any time without strict KEX
        unknown = name.startswith("unknown-type")  # RFC 4253 11.4: UNIMPLEMENTED
        after = VERSION + packet(kexinit()) + packet(payload)
        cases.append(
            _pre(f"pre-kex/{name}", VERSION + packet(payload), unimplemented=unknown)
        )
        cases.append(_pre(f"after-kexinit/{name}", after, unimplemented=unknown))
    strict = VERSION + packet(kexinit(strict=True))
    strict_names = ("service-request-userauth", "debug-valid", "unimplemented-valid")
    for name in (*strict_names, "disconnect-valid", "unknown-type-200"):
        payload = dict(_pre_kex_messages())[name]
        cases.append(_pre(f"after-strict-kexinit/{name}", strict + packet(payload)))
    flood = packet(msg(200, b"x" * 8)) * 4000
    cases.append(_pre("pre-kex/unknown-type-flood-4000", VERSION + flood))
    return cases + _kexinit_cases() + _kex_message_cases(rng)
