"""The Auth API's AMP side in memory: box limits, deadlines, caps, the role check
before any argument is decoded, rate-limited refusal audit, and malformed boxes.

Each connection is an AuthAPIProtocol on a StringTransport that plays the TLS
transport (a peer certificate or none); time is a task.Clock.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.protocols.basic import Int16StringReceiver
from zope.interface import implementer

from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory, AuthAPIProtocol
from teleconch.auth.guard import GuardLimits
from teleconch.auth.server import AuthServer
from teleconch.auth.types import AuditEvent
from teleconch.ca import SSHCertificateAuthority
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY, TLSAuthority

KIB = 1024


class AuditRows:
    """Just enough of the Store for AuthServer.audit: rows kept in a list."""

    def __init__(self) -> None:
        self.rows: list[AuditEvent] = []

    async def append_event(self, event: AuditEvent) -> int:
        self.rows.append(event)
        return len(self.rows)

    def denied(self) -> list[AuditEvent]:
        return [r for r in self.rows if r.event == "auth.api.denied"]


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that says which certificate the peer showed."""

    def __init__(self, host: str, cert: x509.Certificate | None) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.cert = cert

    def getPeerCertificate(self) -> x509.Certificate | None:
        return self.cert


@pytest.fixture(scope="module")
def tls_ca() -> TLSAuthority:
    return TLSAuthority.generate("test.example", 0.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> AuditRows:
    return AuditRows()


@pytest.fixture
def server(tls_ca: TLSAuthority, clock: Clock, store: AuditRows) -> AuthServer:
    return AuthServer(
        clock=clock,
        threads=None,
        store=store,  # type: ignore[arg-type]
        cluster_name="test.example",
        user_ca=SSHCertificateAuthority.generate(),
        host_ca=SSHCertificateAuthority.generate(),
        tls_ca=tls_ca,
        default_public_addr="127.0.0.1:3080",
        auth_addr="127.0.0.1:3025",
    )


@pytest.fixture
def factory(server: AuthServer, clock: Clock) -> Iterator[AuthAPIFactory]:
    f = AuthAPIFactory(server, clock)
    f.doStart()
    yield f
    f.doStop()


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def cert_for(tls_ca: TLSAuthority, role: str, name: str) -> x509.Certificate:
    identity = tls_ca.issue_identity(role, name, 0.0, 3600)
    return x509.load_pem_x509_certificate(identity.cert_pem)


class Conn:
    """One client connection to the Auth API, in memory."""

    def __init__(
        self,
        factory: AuthAPIFactory,
        host: str = "10.0.0.1",
        cert: x509.Certificate | None = None,
        handshake: bool = True,
    ) -> None:
        self.transport = TLSStringTransport(host, cert)
        proto = factory.buildProtocol(self.transport.getPeer())
        assert isinstance(proto, AuthAPIProtocol)
        self.proto = proto
        proto.makeConnection(self.transport)
        if handshake and not self.transport.disconnected:
            proto.handshakeCompleted()

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def call(self, command: type[amp.Command], tag: bytes = b"1", **kw: Any) -> None:
        box = command.makeArguments(kw, self.proto)
        box[b"_command"] = command.commandName
        box[b"_ask"] = tag
        self.send(box.serialize())

    def answers(self) -> list[dict[bytes, bytes]]:
        boxes: list[dict[bytes, bytes]] = []
        strings: list[bytes] = []
        parser = Int16StringReceiver()
        parser.stringReceived = strings.append  # type: ignore[method-assign]
        parser.dataReceived(self.transport.value())
        box: dict[bytes, bytes] = {}
        it = iter(strings)
        for key in it:
            if not key:
                boxes.append(box)
                box = {}
            else:
                box[key] = next(it)
        return boxes

    @property
    def cut(self) -> bool:
        return bool(self.transport.disconnected)

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.proto.connectionLost(Failure(ConnectionDone()))


def pair(key: bytes, value: bytes) -> bytes:
    return struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value


def tracebacks(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "log_failure" in e]


def warnings_about(events: list[LogEvent], word: str) -> list[LogEvent]:
    from twisted.logger import formatEvent

    return [
        e
        for e in events
        if e.get("log_level") in (LogLevel.info, LogLevel.warn)
        and e.get("log_namespace", "").startswith("teleconch")
        and word in formatEvent(e)
    ]


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
    box = api.EmitAuditEvent.makeArguments(
        {"event": "e", "user": "u", "success": True, "fields": ok}, None
    )
    assert len(box.serialize()) < limits.cluster_box_bytes
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


def test_an_anonymous_connection_has_thirty_seconds_for_its_business(
    factory: AuthAPIFactory, clock: Clock, tls_ca: TLSAuthority
) -> None:
    """An anonymous caller is closed 30 s after it connected; a cluster
    identity stays."""
    anonymous = Conn(factory)
    proxy = Conn(factory, cert=cert_for(tls_ca, ROLE_PROXY, "p1"))
    clock.advance(29)
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


# --- item 9: malformed boxes are protocol errors, never tracebacks


def _admin(factory: AuthAPIFactory, tls_ca: TLSAuthority) -> Conn:
    return Conn(factory, cert=cert_for(tls_ca, ROLE_ADMIN, "admin"))


def _box(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"".join(pair(k, v) for k, v in pairs) + struct.pack("!H", 0)


ANSWERABLE = {
    "unknown command": _box((b"_command", b"NoSuch"), (b"_ask", b"1")),
    "empty command": _box((b"_command", b""), (b"_ask", b"1")),
    "bad integer": _box(
        (b"_command", b"CreateToken"),
        (b"_ask", b"1"),
        (b"kind", b"node"),
        (b"ttl", b"x"),
    ),
    "missing argument": _box(
        (b"_command", b"CreateToken"), (b"_ask", b"1"), (b"kind", b"node")
    ),
    "bad utf-8": _box(
        (b"_command", b"DeleteUser"), (b"_ask", b"1"), (b"name", b"\xff")
    ),
    "bad json count": _box(
        (b"_command", b"UpsertRole"), (b"_ask", b"1"), (b"role", b"nope")
    ),
    "json count over the cap": _box(
        (b"_command", b"UpsertRole"), (b"_ask", b"1"), (b"role", b"4096")
    ),
    "json missing chunk": _box(
        (b"_command", b"UpsertRole"),
        (b"_ask", b"1"),
        (b"role", b"2"),
        (b"role.0", b"{"),
    ),
    "invalid json": _box(
        (b"_command", b"UpsertRole"),
        (b"_ask", b"1"),
        (b"role", b"1"),
        (b"role.0", b"{nope"),
    ),
    "bad boolean": _box(
        (b"_command", b"EmitAuditEvent"),
        (b"_ask", b"1"),
        (b"event", b"e"),
        (b"user", b"u"),
        (b"success", b"maybe"),
        (b"fields", b"1"),
        (b"fields.0", b"{}"),
    ),
    "bad utf-8 in a list": _box(
        (b"_command", b"GetRoles"), (b"_ask", b"1"), (b"names", b"\x00\x01\xff")
    ),
    "huge integer": _box(
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
    assert (
        len([e for e in logged if e.get("log_namespace", "").startswith("teleconch")])
        == 1
    )
    assert not conn.cut
    conn.call(api.Ping, tag=b"2")
    assert conn.answers()[-1][b"_answer"] == b"2"


UNANSWERABLE = {
    "command without _ask": _box((b"_command", b"Ping")),
    "answer for an unknown tag": _box((b"_answer", b"99")),
    "error for an unknown tag": _box(
        (b"_error", b"99"), (b"_error_code", b"X"), (b"_error_description", b"x")
    ),
    "error without a code": _box((b"_error", b"99")),
    "empty box": struct.pack("!H", 0),
    "box of plain keys": _box((b"a", b"b")),
    "key longer than 255 bytes": struct.pack("!H", 300) + b"k" * 300,
}


@pytest.mark.parametrize("case", sorted(UNANSWERABLE))
def test_a_box_that_cannot_be_answered_closes_the_connection_quietly(
    case: str, factory: AuthAPIFactory, tls_ca: TLSAuthority, logged: list[LogEvent]
) -> None:
    """A box that is not a command with a tag is a protocol error: the
    connection is closed with one log line and no traceback."""
    conn = _admin(factory, tls_ca)
    conn.send(UNANSWERABLE[case] + _box((b"_command", b"Ping"), (b"_ask", b"2")))
    assert conn.cut
    assert conn.answers() == []
    assert tracebacks(logged) == []
    assert (
        len([e for e in logged if e.get("log_namespace", "").startswith("teleconch")])
        == 1
    )


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

    async def stub(self: AuthAPIProtocol, caller: Any, **kw: Any) -> dict[str, Any]:
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
        conn.send(_box(*pairs))
        conn.close()
    for i in range(300):
        conn = Conn(factory, host=f"10.3.{i % 250}.1", cert=admin if i % 2 else None)
        conn.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400))))
        conn.close()
    assert tracebacks(logged) == []
