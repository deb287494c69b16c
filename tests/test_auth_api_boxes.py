"""Malformed AMP boxes to the Auth API, in memory: each is a clean protocol
error (an AMP error answer, or a closed connection) and one log line, never a
traceback (the hardening issue, item 9).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.logger import LogEvent

from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory, AuthAPIProtocol
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY, TLSAuthority
from tests import amp_memory
from tests.amp_memory import (
    Conn,
    box,
    cert_for,
    namespaced,
    tracebacks,
)

# the fixtures
clock = amp_memory.clock
factory = amp_memory.factory
logged = amp_memory.logged
server = amp_memory.server
store = amp_memory.store
tls_ca = amp_memory.tls_ca

# --- item 9: malformed boxes are protocol errors, never tracebacks


ANSWERABLE = {
    "unknown command": box((b"_command", b"NoSuch"), (b"_ask", b"1")),
    "empty command": box((b"_command", b""), (b"_ask", b"1")),
    "bad integer": box(
        (b"_command", b"CreateToken"),
        (b"_ask", b"1"),
        (b"kind", b"node"),
        (b"ttl", b"x"),
    ),
    "missing argument": box(
        (b"_command", b"CreateToken"), (b"_ask", b"1"), (b"kind", b"node")
    ),
    "bad utf-8": box((b"_command", b"DeleteUser"), (b"_ask", b"1"), (b"name", b"\xff")),
    "bad json count": box(
        (b"_command", b"UpsertRole"), (b"_ask", b"1"), (b"role", b"nope")
    ),
    "json count over the cap": box(
        (b"_command", b"UpsertRole"), (b"_ask", b"1"), (b"role", b"4096")
    ),
    "json missing chunk": box(
        (b"_command", b"UpsertRole"),
        (b"_ask", b"1"),
        (b"role", b"2"),
        (b"role.0", b"{"),
    ),
    "invalid json": box(
        (b"_command", b"UpsertRole"),
        (b"_ask", b"1"),
        (b"role", b"1"),
        (b"role.0", b"{nope"),
    ),
    "json argument not an object": box(
        (b"_command", b"EmitAuditEvent"),
        (b"_ask", b"1"),
        (b"event", b"e"),
        (b"user", b"u"),
        (b"success", b"True"),
        (b"fields", b"1"),
        (b"fields.0", b"[1,2]"),
    ),
    "bad boolean": box(
        (b"_command", b"EmitAuditEvent"),
        (b"_ask", b"1"),
        (b"event", b"e"),
        (b"user", b"u"),
        (b"success", b"maybe"),
        (b"fields", b"1"),
        (b"fields.0", b"{}"),
    ),
    "bad utf-8 in a list": box(
        (b"_command", b"GetRoles"), (b"_ask", b"1"), (b"names", b"\x00\x01\xff")
    ),
    "huge integer": box(
        (b"_command", b"CreateToken"),
        (b"_ask", b"1"),
        (b"kind", b"node"),
        (b"ttl", b"9" * 5000),
    ),
}


@pytest.mark.parametrize("case", sorted(ANSWERABLE))
def test_a_malformed_command_gets_an_amp_error_and_one_log_line(
    case: str, factory: AuthAPIFactory, tls_ca: TLSAuthority, logged: list[LogEvent]
) -> None:
    """A command box that cannot be decoded is answered with a short error,
    logged in one line, and the connection stays usable."""
    role = ROLE_PROXY if b"EmitAuditEvent" in ANSWERABLE[case] else ROLE_ADMIN
    conn = Conn(factory, cert=cert_for(tls_ca, role, "caller"))
    conn.send(ANSWERABLE[case])
    answers = conn.answers()
    assert len(answers) == 1
    assert answers[0][b"_error"] == b"1"
    assert answers[0][b"_error_code"] in (b"BAD_PARAMETER", b"UNHANDLED")
    assert len(answers[0][b"_error_description"]) < 200
    assert tracebacks(logged) == []
    assert len(namespaced(logged)) == 1
    assert not conn.cut
    conn.call(api.Ping, tag=b"2")
    assert conn.answers()[-1][b"_answer"] == b"2"


UNANSWERABLE = {
    "command without _ask": box((b"_command", b"Ping")),
    "answer for an unknown tag": box((b"_answer", b"99")),
    "error for an unknown tag": box(
        (b"_error", b"99"), (b"_error_code", b"X"), (b"_error_description", b"x")
    ),
    "error without a code": box((b"_error", b"99")),
    "empty box": struct.pack("!H", 0),
    "box of plain keys": box((b"a", b"b")),
    "key longer than 255 bytes": struct.pack("!H", 300) + b"k" * 300,
}


@pytest.mark.parametrize("case", sorted(UNANSWERABLE))
def test_a_box_that_cannot_be_answered_closes_the_connection_quietly(
    case: str, factory: AuthAPIFactory, tls_ca: TLSAuthority, logged: list[LogEvent]
) -> None:
    """A box that is not a command with a tag is a protocol error: the
    connection is closed with one log line and no traceback."""
    conn = Conn(factory, cert=cert_for(tls_ca, ROLE_ADMIN, "admin"))
    conn.send(UNANSWERABLE[case] + box((b"_command", b"Ping"), (b"_ask", b"2")))
    assert conn.cut
    assert conn.answers() == []
    assert tracebacks(logged) == []
    assert len(namespaced(logged)) == 1


def test_random_boxes_and_bytes_never_raise_nor_log_a_traceback(
    factory: AuthAPIFactory,
    tls_ca: TLSAuthority,
    logged: list[LogEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small fuzz of the AMP side (the responders are stubbed: this is about
    framing, dispatch and decoding): random commands, keys and values from an
    admin and from anonymous callers, then random bytes, are answered or cut
    off, never raised nor logged as a traceback."""
    import random

    from teleconch.auth import api as api_side

    async def stub(proto: AuthAPIProtocol, caller: Any, request: Any) -> Any:
        raise api.NotFoundError("stub")

    monkeypatch.setattr(
        api_side,
        "RESPONDERS",
        {name: (cmd, stub) for name, (cmd, _) in api_side.RESPONDERS.items()},
    )
    rnd = random.Random(3025)
    names = [*api_side.RESPONDERS, b"StartTLS", b"", b"\xff"]
    keys = [b"_ask", b"_command", b"_answer", b"_error", b"name", b"ttl", b"role"]
    keys += [b"role.0", b"role.1", b"names", b"fields", b"success", b"token", b"x"]
    admin = cert_for(tls_ca, ROLE_ADMIN, "admin")
    for i in range(400):
        conn = Conn(factory, host=f"10.2.{i % 250}.1", cert=admin if i % 2 else None)
        pairs = [(b"_command", rnd.choice(names)), (b"_ask", b"1")]
        for _ in range(rnd.randrange(6)):
            junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(8)))
            value = rnd.choice([junk, b"1", b"0", b"2", b"-1", b"{}", b"[1]", b"True"])
            pairs.append((rnd.choice(keys), value))
        rnd.shuffle(pairs)
        conn.send(box(*pairs))
        conn.close()
    for i in range(300):
        conn = Conn(factory, host=f"10.3.{i % 250}.1", cert=admin if i % 2 else None)
        conn.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400))))
        conn.close()
    assert tracebacks(logged) == []
