"""The SSH half of the probe, part two: malformed messages under real keys."""

from __future__ import annotations

import random

from tests.hostile.cases import SSH_SECURE, UNIMPLEMENTED, USERAUTH_FAILURE, Case
from tests.hostile.corpus_ssh import (
    MSG_CHANNEL_OPEN,
    MSG_DEBUG,
    MSG_DISCONNECT,
    MSG_EXT_INFO,
    MSG_GLOBAL_REQUEST,
    MSG_KEX_DH_GEX_INIT,
    MSG_KEX_DH_GEX_REPLY,
    MSG_KEX_ECDH_INIT,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_SERVICE_REQUEST,
    MSG_UNIMPLEMENTED,
    MSG_USERAUTH_REQUEST,
    kexinit,
    mpint,
    ns,
    u32,
)


def _secure(
    cid: str,
    *packets: tuple[int, bytes],
    userauth: bool = False,
    answers: frozenset[str] = frozenset(),
) -> Case:
    return Case(
        f"ssh-secure/{cid}",
        SSH_SECURE,
        packets=tuple(packets),
        userauth=userauth,
        answers=answers,
    )


def _userauth(user: bytes, service: bytes, method: bytes, rest: bytes = b"") -> bytes:
    return ns(user) + ns(service) + ns(method) + rest


def ssh_secure_cases(rng: random.Random) -> list[Case]:
    """Malformed messages sent under real keys, before and during user auth."""
    unimpl = frozenset({UNIMPLEMENTED})
    failed = frozenset({USERAUTH_FAILURE})
    conn = b"ssh-connection"
    garbage_cert = ns(b"ssh-ed25519-cert-v01@openssh.com") + rng.randbytes(120)
    truncated_cert = ns(b"ssh-ed25519-cert-v01@openssh.com") + ns(b"nonce") + u32(32)
    cases = [
        _secure("service-request-empty", (MSG_SERVICE_REQUEST, b"")),
        _secure("service-request-truncated", (MSG_SERVICE_REQUEST, u32(64) + b"ssh")),
        _secure("service-request-bogus", (MSG_SERVICE_REQUEST, ns(b"ssh-bogus"))),
        _secure(
            "service-request-connection-before-auth", (MSG_SERVICE_REQUEST, ns(conn))
        ),
        _secure(
            "service-request-trailing-junk",
            (MSG_SERVICE_REQUEST, ns(b"ssh-userauth") + b"\xff" * 9),
        ),
        _secure("ext-info-empty", (MSG_EXT_INFO, b"")),
        _secure("ext-info-count-huge", (MSG_EXT_INFO, u32(0xFFFFFFFF))),
        _secure(
            "ext-info-missing-value", (MSG_EXT_INFO, u32(1) + ns(b"server-sig-algs"))
        ),
        _secure("ext-info-truncated-name", (MSG_EXT_INFO, u32(1) + u32(255) + b"x")),
        _secure("debug-empty", (MSG_DEBUG, b"")),
        _secure("debug-truncated", (MSG_DEBUG, b"\x01" + u32(500) + b"abc")),
        _secure("unimplemented-empty", (MSG_UNIMPLEMENTED, b"")),
        _secure("unimplemented-short", (MSG_UNIMPLEMENTED, b"\0\0")),
        _secure("disconnect-valid", (MSG_DISCONNECT, u32(11) + ns(b"bye") + ns(b""))),
        _secure("disconnect-empty", (MSG_DISCONNECT, b"")),
        _secure("disconnect-short", (MSG_DISCONNECT, b"\0\0")),
        _secure(
            "disconnect-truncated-text", (MSG_DISCONNECT, u32(11) + u32(300) + b"x")
        ),
        _secure("late-newkeys", (MSG_NEWKEYS, b"")),
        _secure("late-newkeys-with-payload", (MSG_NEWKEYS, b"junk")),
        _secure("kexinit-truncated", (MSG_KEXINIT, b"\0" * 5)),
        _secure("kexinit-namelist-huge", (MSG_KEXINIT, b"\0" * 16 + u32(0xFFFFFFFF))),
        _secure(
            "kexinit-no-common-kex",
            (MSG_KEXINIT, kexinit(b"diffie-hellman-group1-sha1")[1:]),
        ),
        _secure(
            "rekey-then-x25519-junk",
            (MSG_KEXINIT, kexinit()[1:]),
            (MSG_KEX_ECDH_INIT, ns(b"\x09" * 7)),
        ),
        _secure("rekey-then-newkeys", (MSG_KEXINIT, kexinit()[1:]), (MSG_NEWKEYS, b"")),
        _secure("ecdh-init-without-kexinit", (MSG_KEX_ECDH_INIT, ns(b"\x09" * 32))),
        _secure("gex-init-without-kexinit", (MSG_KEX_DH_GEX_INIT, mpint(12345))),
        _secure("gex-reply-from-client", (MSG_KEX_DH_GEX_REPLY, b""), answers=unimpl),
        _secure("unknown-type-200", (200, b"junk"), answers=unimpl),
        _secure(
            "userauth-before-service-request",
            (MSG_USERAUTH_REQUEST, _userauth(b"root", conn, b"none")),
            answers=unimpl,
        ),
        _secure(
            "channel-open-before-auth",
            (MSG_CHANNEL_OPEN, ns(b"session") + u32(0) + u32(65536) + u32(32768)),
            answers=unimpl,
        ),
    ]
    auth = [
        ("userauth-empty", b"", failed),
        ("userauth-user-only", ns(b"root"), failed),
        ("userauth-no-method", ns(b"root") + ns(conn), failed),
        ("userauth-truncated-user", u32(100) + b"ro", failed),
        ("userauth-unknown-method", _userauth(b"root", conn, b"bogus-method"), failed),
        (
            "userauth-password-truncated",
            _userauth(b"root", conn, b"password", b"\0" + u32(40)),
            failed,
        ),
        ("userauth-publickey-no-flag", _userauth(b"root", conn, b"publickey"), failed),
        (
            "userauth-publickey-no-blob",
            _userauth(b"root", conn, b"publickey", b"\0" + ns(b"ssh-ed25519")),
            failed,
        ),
        (
            "userauth-publickey-garbage-blob",
            _userauth(
                b"root",
                conn,
                b"publickey",
                b"\0" + ns(b"ssh-ed25519") + ns(rng.randbytes(50)),
            ),
            failed,
        ),
        (
            "userauth-cert-garbage-blob",
            _userauth(
                b"root",
                conn,
                b"publickey",
                b"\0" + ns(b"ssh-ed25519-cert-v01@openssh.com") + ns(garbage_cert),
            ),
            failed,
        ),
        (
            "userauth-cert-truncated-blob",
            _userauth(
                b"root",
                conn,
                b"publickey",
                b"\0" + ns(b"ssh-ed25519-cert-v01@openssh.com") + ns(truncated_cert),
            ),
            failed,
        ),
        (
            "userauth-cert-garbage-signature",
            _userauth(
                b"root",
                conn,
                b"publickey",
                b"\x01"
                + ns(b"ssh-ed25519-cert-v01@openssh.com")
                + ns(garbage_cert)
                + ns(rng.randbytes(64)),
            ),
            failed,
        ),
        (
            "userauth-publickey-trailing-junk",
            _userauth(
                b"root",
                conn,
                b"publickey",
                b"\0" + ns(b"ssh-ed25519") + ns(b"\0" * 51) + b"\xff" * 20,
            ),
            failed,
        ),
        ("userauth-bad-service", _userauth(b"root", b"ssh-bogus", b"none"), failed),
        ("userauth-user-10k", _userauth(b"u" * 10000, conn, b"none"), failed),
        (
            "userauth-user-invalid-utf8",
            _userauth(b"\xff\xfe\xc0", conn, b"none"),
            failed,
        ),
        (
            "userauth-keyboard-interactive-truncated",
            _userauth(b"root", conn, b"keyboard-interactive", u32(9)),
            failed,
        ),
    ]
    for cid, payload, answers in auth:
        cases.append(
            _secure(
                cid, (MSG_USERAUTH_REQUEST, payload), userauth=True, answers=answers
            )
        )
    cases += [
        _secure("after-userauth/late-newkeys", (MSG_NEWKEYS, b""), userauth=True),
        _secure(
            "after-userauth/kexinit-truncated", (MSG_KEXINIT, b"\0" * 20), userauth=True
        ),
        _secure(
            "after-userauth/service-request-empty",
            (MSG_SERVICE_REQUEST, b""),
            userauth=True,
        ),
        _secure(
            "after-userauth/channel-open",
            (MSG_CHANNEL_OPEN, ns(b"session") + u32(0) + u32(65536) + u32(32768)),
            userauth=True,
            answers=unimpl,
        ),
        _secure(
            "after-userauth/global-request",
            (MSG_GLOBAL_REQUEST, ns(b"tcpip-forward") + b"\x01"),
            userauth=True,
            answers=unimpl,
        ),
    ]
    return cases
