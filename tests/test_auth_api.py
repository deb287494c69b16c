"""The Auth API's limits, in memory: box limits counted as bytes arrive, the role
check before any argument is decoded, deadlines, caps per address, and the
rate-limited audit of refused anonymous calls (the hardening issue, item 5).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory
from teleconch.auth.guard import GuardLimits
from teleconch.auth.server import AuthServer
from teleconch.pki import ROLE_PROXY, TLSAuthority
from tests import amp_memory
from tests.amp_memory import (
    KIB,
    AuditRows,
    Conn,
    cert_for,
    pair,
    tracebacks,
    warnings_about,
)

# the fixtures
clock = amp_memory.clock
factory = amp_memory.factory
logged = amp_memory.logged
server = amp_memory.server
store = amp_memory.store
tls_ca = amp_memory.tls_ca

# --- item 5: box limits counted as bytes arrive


def test_an_anonymous_box_is_cut_off_after_8_kib_before_it_completes(
    factory: AuthAPIFactory, logged: list[LogEvent]
) -> None:
    """An endless box from a caller without a certificate is dropped once it
    passes 8 KiB, with no answer and one log line, long before the box ends."""
    conn = Conn(factory)
    conn.send(pair(b"_command", b"Ping") + pair(b"_ask", b"1"))
    sent = 0
    while not conn.cut and sent < 1024 * KIB:
        conn.send(pair(b"k%d" % sent, b"x" * 1000))
        sent += 1000
    assert conn.cut
    assert sent <= 8 * KIB + 1000
    assert conn.answers() == []
    assert len(warnings_about(logged, "box")) == 1
    assert tracebacks(logged) == []


def test_a_value_longer_than_the_box_limit_is_refused_from_its_length(
    factory: AuthAPIFactory,
) -> None:
    """A 64 KB value announced by an anonymous caller is refused when its
    length prefix arrives, before its bytes are buffered."""
    conn = Conn(factory)
    conn.send(pair(b"_command", b"Ping") + struct.pack("!H", 3) + b"big")
    conn.send(struct.pack("!H", 0xFFFF) + b"x" * 100)
    assert conn.cut


def test_an_anonymous_box_with_too_many_keys_is_cut_off(
    factory: AuthAPIFactory,
) -> None:
    """Many tiny keys in one box count too: the key limit cuts the connection."""
    conn = Conn(factory)
    conn.send(pair(b"_command", b"Ping"))
    for i in range(40):
        conn.send(pair(b"%d" % i, b""))
    assert conn.cut


def test_a_cluster_identity_may_send_large_boxes_up_to_one_mib(
    factory: AuthAPIFactory, tls_ca: TLSAuthority, store: AuditRows
) -> None:
    """A proxy's audit event of 600 KB is answered; a box over 1 MiB is cut off."""
    conn = Conn(factory, cert=cert_for(tls_ca, ROLE_PROXY, "p1"))
    fields = {"blob": "y" * 600 * KIB}
    conn.call(api.EmitAuditEvent, event="e", user="u", success=True, fields=fields)
    assert [b.get(b"_answer") for b in conn.answers()] == [b"1"]
    assert store.rows[-1].event == "e"
    conn.send(pair(b"_command", b"Ping"))
    sent = 0
    while not conn.cut and sent < 4096 * KIB:
        conn.send(pair(b"k%d" % sent, b"z" * 60000))
        sent += 60000
    assert conn.cut
    assert sent <= 1024 * KIB + 60000


def test_the_json_chunk_cap_of_arguments_agrees_with_the_box_limit() -> None:
    """The largest JSON argument a command can carry fits in the box limit for
    cluster identities, and a larger one fails on the sender, not on the wire."""
    limits = GuardLimits()
    biggest = api.JSON.CHUNK * api.ARGUMENT_CHUNKS
    assert biggest < limits.cluster_box_bytes <= api.MAX_COMMAND_BYTES
    ok = {"f": "a" * (biggest - 20)}
    encoded = api.EmitAuditEvent.makeArguments(
        {"event": "e", "user": "u", "success": True, "fields": ok}, None
    )
    assert len(encoded.serialize()) < limits.cluster_box_bytes
    json_arguments = [
        argument
        for command in vars(api).values()
        if isinstance(command, type) and issubclass(command, api.AuthCommand)
        for _, argument in command.arguments
        if isinstance(argument, api.JSON)
    ]
    assert (
        len(json_arguments) == 7
    )  # ... StartRecording's meta, SetClusterSettings' values
    assert {a.max_chunks for a in json_arguments} == {api.ARGUMENT_CHUNKS}
    with pytest.raises(ValueError, match="too large"):
        api.EmitAuditEvent.makeArguments(
            {
                "event": "e",
                "user": "u",
                "success": True,
                "fields": {"f": "a" * biggest},
            },
            None,
        )


# --- item 5: the role check before argument decoding


def test_arguments_are_not_decoded_before_the_role_check(
    factory: AuthAPIFactory, store: AuditRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anonymous CreateUser is refused as such without its arguments being
    parsed: bad UTF-8 and a bogus JSON count still get ACCESS_DENIED."""
    parsed: list[str] = []
    real = api.JSON.fromBox

    def spy(self: api.JSON, name: bytes, *a: Any) -> None:
        parsed.append(name.decode())
        real(self, name, *a)

    monkeypatch.setattr(api.JSON, "fromBox", spy)
    conn = Conn(factory)
    conn.send(
        pair(b"_command", b"UpsertRole")
        + pair(b"_ask", b"7")
        + pair(b"role", b"4000")
        + struct.pack("!H", 0)
    )
    conn.send(
        pair(b"_command", b"CreateUser")
        + pair(b"_ask", b"8")
        + pair(b"name", b"\xff\xfe")
        + struct.pack("!H", 0)
    )
    answers = conn.answers()
    assert [(a[b"_error"], a[b"_error_code"]) for a in answers] == [
        (b"7", b"ACCESS_DENIED"),
        (b"8", b"ACCESS_DENIED"),
    ]
    assert b"client certificate" in answers[0][b"_error_description"]
    assert parsed == []
    assert [r.fields["command"] for r in store.denied()] == ["UpsertRole", "CreateUser"]
    assert not conn.cut


def test_commands_outside_the_auth_api_are_unknown(
    factory: AuthAPIFactory, logged: list[LogEvent]
) -> None:
    """AMP's built-in StartTLS is not part of the Auth API: it is answered as
    an unknown command, not run."""
    conn = Conn(factory)
    conn.send(
        pair(b"_command", b"StartTLS") + pair(b"_ask", b"1") + struct.pack("!H", 0)
    )
    assert [a[b"_error_code"] for a in conn.answers()] == [b"UNHANDLED"]
    assert not conn.cut
    assert tracebacks(logged) == []


# --- item 5: deadlines and caps


def test_a_connection_that_does_not_finish_the_handshake_is_closed(
    factory: AuthAPIFactory, clock: Clock
) -> None:
    """Ten seconds to finish the TLS handshake, or the connection goes."""
    conn = Conn(factory, handshake=False)
    clock.advance(9.9)
    assert not conn.cut
    clock.advance(0.2)
    assert conn.cut


def test_an_anonymous_connection_has_ten_seconds_for_its_business(
    factory: AuthAPIFactory, clock: Clock, tls_ca: TLSAuthority
) -> None:
    """An anonymous caller (a ping and a join take well under a second) is
    closed 10 s after it connected, however busy; a cluster identity stays."""
    anonymous = Conn(factory)
    proxy = Conn(factory, cert=cert_for(tls_ca, ROLE_PROXY, "p1"))
    clock.advance(9)
    anonymous.call(api.Ping)
    assert not anonymous.cut
    clock.advance(1.1)
    assert anonymous.cut
    clock.advance(3600)
    assert not proxy.cut
    proxy.close()
    assert clock.getDelayedCalls() == []


def test_anonymous_connections_are_capped_per_address(
    factory: AuthAPIFactory, tls_ca: TLSAuthority, logged: list[LogEvent]
) -> None:
    """Eight anonymous connections per address; the ninth is dropped at once,
    another address and cluster identities are not affected, and closing one
    frees its place."""
    first = [Conn(factory, host="10.0.0.9") for _ in range(8)]
    assert not any(c.cut for c in first)
    ninth = Conn(factory, host="10.0.0.9")
    assert ninth.cut
    assert len(warnings_about(logged, "10.0.0.9")) == 1
    assert not Conn(factory, host="10.0.0.10").cut
    first[0].close()
    assert not Conn(factory, host="10.0.0.9").cut
    assert Conn(factory, host="10.0.0.9").cut
    # A proxy's connection counts as anonymous until its handshake names it.
    first[1].close()
    Conn(factory, host="10.0.0.9", cert=cert_for(tls_ca, ROLE_PROXY, "p"))
    assert not Conn(factory, host="10.0.0.9").cut


def test_anonymous_connections_are_capped_in_total(
    server: AuthServer, clock: Clock
) -> None:
    """Beyond the total cap no anonymous connection is kept, whatever its address."""
    factory = AuthAPIFactory(server, clock, GuardLimits(anonymous_total=3))
    conns = [Conn(factory, host=f"10.0.1.{i}") for i in range(4)]
    assert [c.cut for c in conns] == [False, False, False, True]


def test_a_cluster_identity_is_not_capped_by_address(
    factory: AuthAPIFactory, tls_ca: TLSAuthority
) -> None:
    """Twenty proxy connections from one address all stay up."""
    cert = cert_for(tls_ca, ROLE_PROXY, "p1")
    conns = [Conn(factory, host="10.0.0.5", cert=cert) for _ in range(20)]
    assert not any(c.cut for c in conns)
    assert not Conn(factory, host="10.0.0.5").cut


# --- item 5: refusals of anonymous calls are audited at a bounded rate


def test_anonymous_refusals_are_audited_at_a_bounded_rate_and_counted(
    factory: AuthAPIFactory, clock: Clock, store: AuditRows
) -> None:
    """1,000 refusals in 3 s make 10 rows and then about one a second; the
    rows' ``suppressed`` counts account for every refusal."""
    conn = Conn(factory)
    for i in range(1000):
        conn.call(api.ListUsers, tag=b"%x" % i)
        clock.advance(0.003)
    answers = conn.answers()
    assert len(answers) == 1000
    assert {a[b"_error_code"] for a in answers} == {b"ACCESS_DENIED"}
    rows = store.denied()
    assert 10 <= len(rows) <= 14
    clock.advance(5)  # the last suppressed refusals are written, not dropped
    rows = store.denied()
    assert len(rows) <= 15
    assert len(rows) + sum(r.fields.get("suppressed", 0) for r in rows) == 1000
    assert rows[-1].fields["suppressed"] > 0
    conn.close()
    assert clock.getDelayedCalls() == []


def test_refusals_of_cluster_identities_are_all_audited(
    factory: AuthAPIFactory, clock: Clock, store: AuditRows, tls_ca: TLSAuthority
) -> None:
    """A proxy asking for admin commands is audited every time: it is named."""
    conn = Conn(factory, cert=cert_for(tls_ca, ROLE_PROXY, "p1"))
    for i in range(30):
        conn.call(api.ListUsers, tag=b"%d" % i)
    rows = store.denied()
    assert len(rows) == 30
    assert rows[0].user == "p1" and rows[0].fields["caller_role"] == ROLE_PROXY
    assert (
        b"not allowed for a proxy identity" in conn.answers()[0][b"_error_description"]
    )


def test_refusals_not_yet_audited_are_counted_in_a_log_line_at_shutdown(
    server: AuthServer, clock: Clock, store: AuditRows, logged: list[LogEvent]
) -> None:
    """Stopping the listener cancels the pending flush and says how many
    refusals it had not written yet."""
    factory = AuthAPIFactory(server, clock, GuardLimits(audit_burst=1))
    factory.doStart()
    conn = Conn(factory)
    for i in range(5):
        conn.call(api.ListUsers, tag=b"%d" % i)
    assert len(store.denied()) == 1
    conn.close()
    factory.doStop()
    assert clock.getDelayedCalls() == []
    assert len(warnings_about(logged, "4 refused anonymous calls")) == 1
