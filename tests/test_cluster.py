"""The cluster end to end over real TLS on 127.0.0.1: sign-up, login, the Auth API's doors.

Interop: each test starts a whole cluster (harness.start_cluster) with real
TLS listeners on 127.0.0.1, on the global reactor.  The time rules (lock-out,
invite expiry, one-time codes) are pinned without sockets, on a Clock, in
tests/test_auth_server_clock.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IPullProducer, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch import totp
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent
from teleconch.auth.joinclient import JoinRefused
from teleconch.client.webapi import WebAPIError
from teleconch.pki import TLSIdentity, anonymous_client_options
from tests.harness import PASSWORD, Cluster, current_code, sign_up, start_cluster

pytestmark = pytest.mark.interop


def _pub_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


async def _login(
    c: Cluster, name: str, password: str, code: str, ttl: int = 3600
) -> dict:
    return await c.web().ssh_certs(name, password, code, _pub_key(), ttl)


@pytest_twisted.ensureDeferred
async def test_signup_then_login_issues_a_certificate(cluster: Cluster) -> None:
    """An invited user sets a password and OTP app, then trades them for a certificate."""
    alice = await sign_up(cluster)
    issued = await _login(
        cluster, "alice", alice.password, current_code(alice.totp_secret, cluster.clock)
    )
    cert = serialization.load_ssh_public_identity(issued["cert"].encode())
    assert isinstance(cert, serialization.SSHCertificate)
    assert cert.key_id == b"alice"
    assert sorted(cert.valid_principals) == [b"alice", b"root"]
    assert issued["host_signers"][0]["domain_name"] == "test.example"
    events = await cluster.admin_agent().search_events(events=["cert.create"])
    assert [e.user for e in events] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_ping_names_the_cluster_and_second_factor(cluster: Cluster) -> None:
    """The ping endpoint tells a client the cluster name, SSH address and that OTP is needed."""
    ping = await cluster.web().ping()
    assert ping["cluster_name"] == "test.example"
    assert ping["auth"]["second_factor"] == "otp"
    assert ping["proxy_ssh_addr"]


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_refused_without_saying_why(cluster: Cluster) -> None:
    """A wrong password and an unknown user get the same answer, and are audited."""
    alice = await sign_up(cluster)
    code = current_code(alice.totp_secret, cluster.clock)
    with pytest.raises(WebAPIError) as wrong:
        await _login(cluster, "alice", "not the password", code)
    with pytest.raises(WebAPIError) as unknown:
        await _login(cluster, "mallory", PASSWORD, code)
    assert str(wrong.value) == str(unknown.value)
    assert wrong.value.status == unknown.value.status == 401
    events = await cluster.admin_agent().search_events(events=["user.login"])
    failures = [(e.user, e.fields["reason"]) for e in events if not e.success]
    assert failures == [("alice", "wrong password"), ("mallory", "unknown user")]
    assert all(PASSWORD not in str(e) for e in events)


@pytest_twisted.ensureDeferred
async def test_wrong_otp_is_refused(cluster: Cluster) -> None:
    """The right password with a wrong code gets no certificate."""
    alice = await sign_up(cluster)
    good = current_code(alice.totp_secret, cluster.clock)
    wrong = f"{(int(good) + 1) % 1000000:06d}"
    with pytest.raises(WebAPIError) as e:
        await _login(cluster, "alice", alice.password, wrong)
    assert e.value.status == 401


@pytest_twisted.ensureDeferred
async def test_an_otp_code_is_accepted_once(cluster: Cluster) -> None:
    """Replaying a code that just worked is refused, as is an older one."""
    alice = await sign_up(cluster)
    code = current_code(alice.totp_secret, cluster.clock)
    await _login(cluster, "alice", alice.password, code)
    with pytest.raises(WebAPIError):
        await _login(cluster, "alice", alice.password, code)
    older = current_code(alice.totp_secret, cluster.clock, -1)
    with pytest.raises(WebAPIError):
        await _login(cluster, "alice", alice.password, older)
    events = await cluster.admin_agent().search_events(events=["user.login"])
    assert [e.fields.get("reason") for e in events if not e.success] == [
        "one-time code already used",
        "one-time code already used",
    ]


@pytest_twisted.ensureDeferred
async def test_five_failures_lock_the_account_for_twenty_minutes(
    cluster: Cluster,
) -> None:
    """After 5 failures in 10 minutes even the right password is refused, saying until when."""
    alice = await sign_up(cluster)
    for _ in range(4):
        with pytest.raises(WebAPIError) as e:
            await _login(cluster, "alice", "guess", "000000")
        assert e.value.status == 401
    with pytest.raises(WebAPIError) as e:
        await _login(cluster, "alice", "guess", "000000")
    assert "locked until" in str(e.value)
    with pytest.raises(WebAPIError) as e:
        await _login(
            cluster,
            "alice",
            alice.password,
            current_code(alice.totp_secret, cluster.clock),
        )
    assert e.value.status == 403 and "locked until" in str(e.value)
    users = await cluster.admin_agent().list_users()
    assert users[0].status == "locked"
    cluster.clock.advance(20 * 60 + 1)
    await _login(
        cluster, "alice", alice.password, current_code(alice.totp_secret, cluster.clock)
    )
    locked = await cluster.admin_agent().search_events(events=["user.locked"])
    assert [e.user for e in locked] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_unknown_users_lock_out_like_real_ones(cluster: Cluster) -> None:
    """Lock-out cannot be used to tell whether a user exists."""
    for _ in range(4):
        with pytest.raises(WebAPIError):
            await _login(cluster, "nobody", "guess", "000000")
    with pytest.raises(WebAPIError) as e:
        await _login(cluster, "nobody", "guess", "000000")
    assert "locked until" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_an_invite_expires_after_an_hour(cluster: Cluster) -> None:
    """An invite link older than an hour is refused with what to do instead."""
    invite = await cluster.admin_agent().create_user("bob", ["bob"], ["access"])
    assert invite.url.endswith("/web/invite/" + invite.token)
    cluster.clock.advance(3601)
    with pytest.raises(WebAPIError) as e:
        await cluster.web().get_invite(invite.token)
    assert e.value.status == 404 and "users reset" in str(e.value)
    with pytest.raises(WebAPIError):
        await cluster.web().complete_invite(invite.token, PASSWORD, "123456")


@pytest_twisted.ensureDeferred
async def test_an_invite_is_used_once(cluster: Cluster) -> None:
    """A completed invite cannot set the password again."""
    invite = await cluster.admin_agent().create_user("bob", ["bob"], ["access"])
    page = await cluster.web().get_invite(invite.token)
    assert page["user"] == "bob"
    assert page["otpauth_uri"].startswith("otpauth://totp/")
    assert page["qr_svg"].startswith("<svg")
    await cluster.web().complete_invite(
        invite.token, PASSWORD, current_code(page["totp_secret"], cluster.clock)
    )
    cluster.clock.advance(totp.STEP)
    with pytest.raises(WebAPIError):
        await cluster.web().complete_invite(
            invite.token,
            "another password here",
            current_code(page["totp_secret"], cluster.clock),
        )


@pytest_twisted.ensureDeferred
async def test_signup_refuses_a_short_password_and_a_wrong_code(
    cluster: Cluster,
) -> None:
    """Sign-up checks the password length and the code, and the invite survives both."""
    invite = await cluster.admin_agent().create_user("bob", ["bob"], ["access"])
    page = await cluster.web().get_invite(invite.token)
    with pytest.raises(WebAPIError) as e:
        await cluster.web().complete_invite(
            invite.token, "short", current_code(page["totp_secret"], cluster.clock)
        )
    assert e.value.status == 400 and "12 characters" in str(e.value)
    with pytest.raises(WebAPIError) as e:
        await cluster.web().complete_invite(invite.token, PASSWORD, "000000")
    assert e.value.status == 401
    await cluster.web().complete_invite(
        invite.token, PASSWORD, current_code(page["totp_secret"], cluster.clock)
    )


@pytest_twisted.ensureDeferred
async def test_auth_api_refuses_a_client_without_certificate(cluster: Cluster) -> None:
    """Without a client certificate only ping and join are open; the refusal is audited."""
    endpoint = wrapClientTLS(
        anonymous_client_options(),
        HostnameEndpoint(reactor, cluster.auth_addr.host, cluster.auth_addr.port),
    )
    proto = cast(amp.AMP, await endpoint.connect(Factory.forProtocol(amp.AMP)))
    assert proto.transport is not None  # connected
    try:
        ping = await proto.callRemote(api.Ping)
        assert ping["caller_role"] == api.ANONYMOUS
        with pytest.raises(api.AccessDenied) as e:
            await proto.callRemote(api.ListUsers)
        assert "client certificate" in str(e.value)
        with pytest.raises(api.AccessDenied):
            await proto.callRemote(
                api.CreateUser, name="eve", logins=["root"], roles=["admin"]
            )
    finally:
        proto.transport.loseConnection()
    denied = await cluster.admin_agent().search_events(events=["auth.api.denied"])
    assert [e.fields["command"] for e in denied] == ["ListUsers", "CreateUser"]


if TYPE_CHECKING:

    class _ConsumerTransport(ITransport, IConsumer):
        """What a TLS connection's transport is (as Twisted's _IReactorCommon)."""


@implementer(IPullProducer)
class EndlessBox(Protocol):
    """Sends the start of a Ping box, then keys and values until cut off (or
    until ``cap`` bytes, when it gives up and closes itself)."""

    cap = 16 * 1024 * 1024

    transport: _ConsumerTransport  # connected before any of these run

    def __init__(self) -> None:
        self.written = 0
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self._write(b"\x00\x08_command\x00\x04Ping\x00\x04_ask\x00\x011")
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.written >= self.cap:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        value = b"\x03\xe8" + b"v" * 1000
        self._write(b"".join(b"\x00\x02k%d" % (i % 10) + value for i in range(16)))

    def stopProducing(self) -> None:
        pass

    def _write(self, data: bytes) -> None:
        self.written += len(data)
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_an_anonymous_endless_box_is_cut_off_and_the_service_keeps_serving(
    cluster: Cluster,
) -> None:
    """Over real TLS, a caller without a certificate streaming one endless box
    is dropped once the box passes 8 KiB (one log line, no traceback), long
    before it gives up; the auth service then answers a normal call."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        endpoint = wrapClientTLS(
            anonymous_client_options(),
            HostnameEndpoint(reactor, cluster.auth_addr.host, cluster.auth_addr.port),
        )
        sender = cast(
            EndlessBox, await endpoint.connect(Factory.forProtocol(EndlessBox))
        )
        await sender.closed
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert sender.written < EndlessBox.cap
    drops = [formatEvent(e) for e in events if "dropped" in formatEvent(e)]
    assert len(drops) == 1 and "a box over 8192 bytes" in drops[0], drops
    assert [e for e in events if "log_failure" in e] == []
    assert (await cluster.admin_agent().ping()).caller_role == "admin"
    proto = cast(amp.AMP, await endpoint.connect(Factory.forProtocol(amp.AMP)))
    assert proto.transport is not None  # connected
    try:
        assert (await proto.callRemote(api.Ping))["caller_role"] == api.ANONYMOUS
    finally:
        proto.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_proxy_identity_is_refused_admin_commands(cluster: Cluster) -> None:
    """The proxy's identity can log people in but cannot add users or read the log."""
    identity = TLSIdentity.load(cluster.data_dir / "proxy")
    assert identity is not None and identity.role == "proxy"
    agent = AuthAgent(reactor, [cluster.auth_addr], identity)
    agent.startService()
    try:
        assert (await agent.ping()).caller_role == "proxy"
        with pytest.raises(api.AccessDenied) as e:
            await agent.create_user("eve", ["root"], ["admin"])
        assert "not allowed for a proxy identity" in str(e.value)
        with pytest.raises(api.AccessDenied):
            await agent.search_events()
    finally:
        await agent.stopService()


@pytest_twisted.ensureDeferred
async def test_state_survives_a_restart(tmp_path: Path) -> None:
    """Same data directory, same CAs and users: a user logs in after a restart."""
    first = await start_cluster(tmp_path / "data")
    try:
        alice = await sign_up(first)
        ca_before = await first.admin_agent().export_ca("user")
    finally:
        await first.stop()
    second = await start_cluster(tmp_path / "data", clock=first.clock)
    try:
        assert await second.admin_agent().export_ca("user") == ca_before
        issued = await _login(
            second,
            "alice",
            alice.password,
            current_code(alice.totp_secret, second.clock),
        )
        assert issued["username"] == "alice"
    finally:
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_a_proxy_joins_a_separate_auth_service_by_token(tmp_path: Path) -> None:
    """A proxy with auth_servers + token + CA pin joins, keeps its identity, and logs people in."""
    auth = await start_cluster(tmp_path / "auth", {"proxy_service": {"enabled": False}})
    try:
        token = await auth.admin_agent().create_token("proxy", 600)
        proxy_raw = {
            "teleconch": {
                "auth_servers": [str(auth.auth_addr)],
                "auth_token": token.token,
                "ca_pin": token.ca_pin,
            },
            "auth_service": {"enabled": False},
        }
        proxy = await start_cluster(tmp_path / "proxy", proxy_raw, clock=auth.clock)
        try:
            proxy.admin = (
                auth.admin_agent()
            )  # the proxy's machine has no admin identity
            assert (proxy.data_dir / "proxy" / "ssh_host_key-cert.pub").exists()
            alice = await sign_up(proxy)
            issued = await _login(
                proxy,
                "alice",
                alice.password,
                current_code(alice.totp_secret, auth.clock),
            )
            assert issued["username"] == "alice"
            joins = await auth.admin_agent().search_events(events=["join"])
            assert [e.success for e in joins] == [True]
        finally:
            proxy.admin = None
            await proxy.stop()
        # The token was single use; the identity on disk lets the proxy restart.
        proxy = await start_cluster(tmp_path / "proxy", proxy_raw, clock=auth.clock)
        await proxy.stop()
        with pytest.raises(JoinRefused):
            await start_cluster(tmp_path / "proxy2", proxy_raw, clock=auth.clock)
    finally:
        await auth.stop()


@pytest_twisted.ensureDeferred
async def test_a_proxy_refuses_an_auth_server_with_another_ca_pin(
    tmp_path: Path,
) -> None:
    """A wrong CA pin stops the join before the token is sent."""
    auth = await start_cluster(tmp_path / "auth", {"proxy_service": {"enabled": False}})
    try:
        token = await auth.admin_agent().create_token("proxy", 600)
        raw = {
            "teleconch": {
                "auth_servers": [str(auth.auth_addr)],
                "auth_token": token.token,
                "ca_pin": "sha256:" + "0" * 64,
            },
            "auth_service": {"enabled": False},
        }
        with pytest.raises(JoinRefused) as e:
            await start_cluster(tmp_path / "proxy", raw, clock=auth.clock)
        assert "CA pin" in str(e.value)
        assert await auth.admin_agent().list_tokens() != []
    finally:
        await auth.stop()
