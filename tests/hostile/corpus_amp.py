"""The Auth API half of the probe: AMP boxes from an anonymous TLS client,
and bytes that are not TLS at all to the TLS ports."""

from __future__ import annotations

import random
import struct

from tests.hostile.cases import AMP, PLAIN_TO_TLS, Case
from tests.hostile.corpus_ssh import VERSION

Pair = tuple[bytes, bytes]


def kv(key: bytes, value: bytes) -> bytes:
    """One AMP key/value pair; lengths are not checked, so they can lie."""
    return struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value


def box(*pairs: Pair) -> bytes:
    return b"".join(kv(k, v) for k, v in pairs) + b"\0\0"


def ask(command: bytes, *args: Pair, tag: bytes = b"1") -> bytes:
    return box((b"_command", command), (b"_ask", tag), *args)


def strings(*items: bytes) -> bytes:
    """amp.ListOf(amp.Unicode()/String()) encoding."""
    return b"".join(struct.pack(">H", len(i)) + i for i in items)


REGISTER_ARGS: tuple[Pair, ...] = (
    (b"token", b"no-such-token"),
    (b"role", b"node"),
    (b"name", b"probe"),
    (b"public_addr", b"127.0.0.1:3022"),
    (b"ssh_addr", b"127.0.0.1:3022"),
    (b"additional_principals", strings(b"probe")),
    (b"tls_public_key", b"-----BEGIN PUBLIC KEY-----\nnot a key\n"),
    (b"ssh_public_key", b"ssh-ed25519 AAAA"),
)


def _register(**override: bytes) -> tuple[Pair, ...]:
    return tuple((k, override.get(k.decode(), v)) for k, v in REGISTER_ARGS)


def _amp(cid: str, data: bytes, idle: bool = False) -> Case:
    return Case(f"amp/{cid}", AMP, data=data, idle=idle)


ADMIN_CALLS: tuple[tuple[bytes, tuple[Pair, ...]], ...] = (
    (b"GetClusterCAs", ()),
    (b"Heartbeat", ((b"public_addr", b"x:1"), (b"ssh_addr", b"x:2"))),
    (
        b"CreateUser",
        (
            (b"name", b"mallory"),
            (b"logins", strings(b"root")),
            (b"roles", strings(b"admin")),
        ),
    ),
    (b"ResetUser", ((b"name", b"alice"),)),
    (b"ListUsers", ()),
    (b"DeleteUser", ((b"name", b"alice"),)),
    (b"UpsertRole", ((b"role", b"1"), (b"role.0", b'{"name":"x"}'))),
    (b"ListRoles", ()),
    (b"CreateToken", ((b"kind", b"proxy"), (b"ttl", b"3600"))),
    (b"ListTokens", ()),
    (b"ExportCA", ((b"kind", b"user"),)),
    (b"GetInvite", ((b"token", b"x"),)),
    (
        b"CompleteInvite",
        (
            (b"token", b"x"),
            (b"password", b"p"),
            (b"otp_token", b"1"),
            (b"client_addr", b"x"),
        ),
    ),
    (
        b"AuthenticateSSHUser",
        (
            (b"user", b"alice"),
            (b"password", b"p"),
            (b"otp_token", b"1"),
            (b"pub_key", b"k"),
            (b"ttl", b"60"),
            (b"client_addr", b"x"),
        ),
    ),
    (b"SearchEvents", ((b"events", b""), (b"limit", b"10"))),
    (
        b"EmitAuditEvent",
        (
            (b"event", b"x"),
            (b"user", b"u"),
            (b"success", b"True"),
            (b"fields", b"1"),
            (b"fields.0", b"{}"),
        ),
    ),
    (
        b"UpsertNode",
        (
            (b"name", b"evil"),
            (b"addr", b"127.0.0.1:22"),
            (b"labels", b"1"),
            (b"labels.0", b"{}"),
        ),
    ),
    (b"ListNodes", ()),
    (
        b"SignHostCertificate",
        ((b"public_key", b"k"), (b"hosts", strings(b"h")), (b"ttl", b"60")),
    ),
)


def _encoding_cases() -> list[Case]:
    """Arguments that do not decode as their AMP type (decoded before any role check)."""
    items: list[tuple[str, bytes]] = [
        (
            "register-token-invalid-utf8",
            ask(b"RegisterUsingToken", *_register(token=b"\xff\xfe\xc0")),
        ),
        (
            "register-principals-truncated-list",
            ask(b"RegisterUsingToken", *_register(additional_principals=b"\x00\x10ab")),
        ),
        (
            "register-principals-invalid-utf8",
            ask(
                b"RegisterUsingToken",
                *_register(additional_principals=strings(b"\xff")),
            ),
        ),
        ("register-missing-arguments", ask(b"RegisterUsingToken", (b"token", b"x"))),
        ("register-empty-token", ask(b"RegisterUsingToken", *_register(token=b""))),
        (
            "register-token-64k",
            ask(b"RegisterUsingToken", *_register(token=b"t" * 0xFFFF)),
        ),
        ("register-role-admin", ask(b"RegisterUsingToken", *_register(role=b"admin"))),
        (
            "create-token-ttl-not-integer",
            ask(b"CreateToken", (b"kind", b"proxy"), (b"ttl", b"abc")),
        ),
        (
            "create-token-ttl-huge",
            ask(b"CreateToken", (b"kind", b"proxy"), (b"ttl", b"9" * 5000)),
        ),
        ("create-token-ttl-missing", ask(b"CreateToken", (b"kind", b"proxy"))),
        (
            "search-since-not-float",
            ask(
                b"SearchEvents", (b"since", b"soon"), (b"events", b""), (b"limit", b"1")
            ),
        ),
        ("search-limit-empty", ask(b"SearchEvents", (b"events", b""), (b"limit", b""))),
        (
            "emit-success-not-boolean",
            ask(
                b"EmitAuditEvent",
                (b"event", b"x"),
                (b"user", b"u"),
                (b"success", b"maybe"),
                (b"fields", b"1"),
                (b"fields.0", b"{}"),
            ),
        ),
        ("json-count-not-integer", ask(b"UpsertRole", (b"role", b"x"))),
        ("json-count-zero", ask(b"UpsertRole", (b"role", b"0"))),
        ("json-count-99999", ask(b"UpsertRole", (b"role", b"99999"))),
        ("json-count-4096-no-chunks", ask(b"UpsertRole", (b"role", b"4096"))),
        ("json-missing-chunk", ask(b"UpsertRole", (b"role", b"2"), (b"role.0", b"{"))),
        ("json-invalid", ask(b"UpsertRole", (b"role", b"1"), (b"role.0", b"{nope"))),
        (
            "json-lone-surrogate",
            ask(b"UpsertRole", (b"role", b"1"), (b"role.0", b'{"name":"\\ud800"}')),
        ),
        (
            "json-deep-nesting",
            ask(b"UpsertRole", (b"role", b"1"), (b"role.0", b"[" * 60000)),
        ),
        (
            "json-invalid-utf8",
            ask(b"UpsertRole", (b"role", b"1"), (b"role.0", b'{"name":"\xff"}')),
        ),
        (
            "json-not-an-object",
            ask(
                b"UpsertNode",
                (b"name", b"n"),
                (b"addr", b"a:1"),
                (b"labels", b"1"),
                (b"labels.0", b"[1,2]"),
            ),
        ),
    ]
    return [_amp(f"encoding/{cid}", data) for cid, data in items]


def amp_cases(rng: random.Random) -> list[Case]:
    """AMP inputs for the auth port, each sent inside an anonymous TLS session."""
    many = [(b"k%05d" % i, b"v") for i in range(5000)]
    lots = [(b"k%06d" % i, b"value" * 4) for i in range(20000)]
    cases = [
        _amp("unknown-command", ask(b"NoSuchCommand")),
        _amp("unknown-command-empty-name", ask(b"")),
        _amp("unknown-command-255-bytes", ask(b"C" * 255)),
        _amp("unknown-command-lowercase-ping", ask(b"ping")),
        _amp("unknown-command-invalid-utf8", ask(b"\xff\xfe")),
        _amp("starttls-inside-tls", ask(b"StartTLS")),
        # No _ask: AMP sends no answer, so only an idle deadline can end it.
        _amp("missing-ask-ping", box((b"_command", b"Ping")), idle=True),
        _amp(
            "missing-ask-create-user",
            box((b"_command", b"CreateUser"), *ADMIN_CALLS[2][1]),
        ),
        _amp(
            "missing-ask-register",
            box((b"_command", b"RegisterUsingToken"), *REGISTER_ARGS),
        ),
        _amp("empty-ask-tag", ask(b"NoSuchCommand", tag=b"")),
        _amp(
            "empty-key-mid-box",
            kv(b"_command", b"Ping")
            + b"\0\0"
            + b"\0\x05hello"
            + kv(b"_ask", b"1")
            + b"\0\0",
            idle=True,
        ),
        _amp("empty-box", b"\0\0"),
        _amp("box-without-command-or-answer", box((b"hello", b"world"))),
        _amp(
            "command-and-answer-in-one-box",
            box((b"_command", b"Ping"), (b"_ask", b"1"), (b"_answer", b"1")),
        ),
        _amp(
            "key-256-bytes",
            kv(b"K" * 256, b"v") + box((b"_command", b"Ping"), (b"_ask", b"1")),
        ),
        _amp("key-length-lies-65535", b"\xff\xff" + b"k" * 100 + b"\0\0"),
        _amp("ping-with-64k-junk-value", ask(b"Ping", (b"junk", b"j" * 0xFFFF))),
        _amp("ping-with-5000-keys", ask(b"Ping", *many)),
        _amp("ping-with-20000-keys", ask(b"Ping", *lots)),
        _amp(
            "unterminated-box-small",
            kv(b"_command", b"Ping") + kv(b"_ask", b"1"),
            idle=True,
        ),
        _amp(
            "unterminated-box-300k",
            kv(b"_command", b"Ping") + b"".join(kv(k, v) for k, v in lots),
        ),
        _amp(
            "value-length-lies",
            kv(b"_command", b"Ping") + b"\0\x04_ask\xff\xff" + b"1" * 10,
            idle=True,
        ),
        _amp("answer-for-unknown-tag", box((b"_answer", b"1"))),
        _amp("answer-for-huge-tag", box((b"_answer", b"9" * 200))),
        _amp(
            "error-for-unknown-tag",
            box(
                (b"_error", b"7"),
                (b"_error_code", b"UNKNOWN"),
                (b"_error_description", b"x"),
            ),
        ),
        _amp("error-without-code", box((b"_error", b"1"))),
        _amp("random-bytes-inside-tls", rng.randbytes(3000)),
        _amp("http-inside-tls", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]
    for name, args in ADMIN_CALLS:
        cases.append(_amp(f"admin-only/{name.decode()}", ask(name, *args)))
    return cases + _encoding_cases()


def plain_to_tls_cases(rng: random.Random) -> list[Case]:
    """Bytes that are not a TLS ClientHello, to both TLS ports."""
    inputs = [
        ("random-3000", rng.randbytes(3000)),
        ("random-64", rng.randbytes(64)),
        ("http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("ssh-version", VERSION),
        ("amp-box-in-clear", ask(b"Ping")),
        ("sslv2-hello", b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x07" * 37),
        ("tls-record-huge-length", b"\x16\x03\x01\xff\xff" + b"\0" * 200),
        ("tls-alert-first", b"\x15\x03\x03\x00\x02\x02\x28"),
        ("zeros-20000", b"\0" * 20000),
    ]
    cases = []
    for target in ("auth", "web"):
        for cid, data in inputs:
            cases.append(
                Case(
                    f"plain-to-tls/{target}/{cid}",
                    PLAIN_TO_TLS,
                    data=data,
                    target=target,
                )
            )
        cases.append(
            Case(
                f"plain-to-tls/{target}/truncated-clienthello",
                PLAIN_TO_TLS,
                data=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40,
                target=target,
                idle=True,
            )
        )
    return cases
