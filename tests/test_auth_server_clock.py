"""The AuthServer's rules in time, on a ``task.Clock``: lock-out windows,
token and invite expiry, one-time codes once per step, certificate validity.

Unit tests: an AuthServer on a MemoryStore, with real CAs made in memory and
bcrypt at 4 rounds.  Time moves only by ``clock.advance``; nothing waits, no
socket is opened and the global reactor is never asked for anything.

bcrypt runs on ``threads.getThreadPool()`` and comes back through
``threads.callFromThread`` (``Passwords`` in ``teleconch.auth.login``), which
with the global reactor needs it running.  ``InlineThreads`` runs both in
place instead, so every call below has finished when its coroutine returns,
and ``run`` checks that it has.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from teleconch import totp
from teleconch.auth import protocol as api
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.login import LOCKOUT_DURATION, LOCKOUT_FAILURES, LOCKOUT_WINDOW
from teleconch.auth.rbac import MAX_CERT_TTL
from teleconch.auth.server import AuthServer
from teleconch.auth.tokens import INVITE_TTL
from teleconch.auth.types import RoleSpec
from teleconch.ca import SSHCertificateAuthority
from teleconch.pki import (
    ROLE_PROXY,
    TLSAuthority,
    generate_private_key_pem,
    public_key_pem,
)

T = TypeVar("T")

#: A start well away from 0, on a TOTP step boundary.
T0 = 1_700_000_010.0
PASSWORD = "correct horse battery staple"
ADDR = "10.0.0.7"


class InlineThreads:
    """Just what ``Passwords`` asks of a reactor's threads, run in place.

    ``getThreadPool().callInThreadWithCallback`` and ``callFromThread`` are
    what ``deferToThreadPool`` calls; here the function runs at once on the
    calling thread, so a test needs no running reactor.
    """

    def getThreadPool(self) -> InlineThreads:
        return self

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        f: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class HeldThreads(InlineThreads):
    """InlineThreads that, while ``hold`` is set, keep each call until
    ``release`` runs it: parallel logins whose bcrypt is still working."""

    def __init__(self) -> None:
        self.hold = False
        self.held: list[Callable[[], None]] = []
        self.ran = 0

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        f: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        def call() -> None:
            self.ran += 1
            InlineThreads.callInThreadWithCallback(self, on_result, f, *args, **kwargs)

        if self.hold:
            self.held.append(call)
        else:
            call()

    def release(self) -> None:
        held, self.held = self.held, []
        for call in held:
            call()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result; it must finish without the reactor."""
    results: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    assert results, "the call waited on something: a unit test never should"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    result: T = results[0]
    return result


def _ssh_pub() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


class Cluster:
    """An AuthServer on a MemoryStore and a Clock, with one signed-up user."""

    def __init__(self, threads: InlineThreads | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        run(self.store.open())
        self.server = AuthServer(
            clock=self.clock,
            threads=threads or InlineThreads(),
            store=self.store,
            cluster_name="test.example",
            user_ca=SSHCertificateAuthority.generate(),
            host_ca=SSHCertificateAuthority.generate(),
            tls_ca=TLSAuthority.generate("test.example", T0 - 60),
            default_public_addr="proxy.test.example:3080",
            auth_addr="auth.test.example:3025",
            bcrypt_rounds=4,
        )
        run(self.server.start())
        self.secrets: dict[str, str] = {}

    def now(self) -> float:
        return self.clock.seconds()

    def sign_up(self, name: str, roles: tuple[str, ...] = ("access",)) -> None:
        """Create ``name`` and complete the invite, then move to the next step."""
        invite = run(self.server.create_user(name, [name], list(roles)))
        secret = run(self.server.get_invite(invite.token)).totp_secret
        run(
            self.server.complete_invite(invite.token, PASSWORD, self.code(secret), ADDR)
        )
        self.secrets[name] = secret
        self.next_step()

    def code(self, secret: str, steps_back: int = 0) -> str:
        return totp.code_at(secret, totp.counter_at(self.now()) - steps_back)

    def next_step(self) -> None:
        """On to the next TOTP step, so a fresh code is a new one."""
        self.clock.advance(totp.STEP)

    def login(self, name: str, password: str = PASSWORD, code: str = "") -> Any:
        code = code or self.code(self.secrets[name])
        return run(self.server.check_login(name, password, code, ADDR))

    def fail(self, name: str) -> None:
        """One login with a wrong password, refused as a plain failure."""
        with pytest.raises(api.AuthenticationFailed):
            self.login(name, password="wrong password!")

    def reasons(self, event: str) -> list[str]:
        events = run(self.server.search_events(None, None, [event], None, 100))
        return [e.fields.get("reason", "") for e in events if not e.success]


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster()
    c.sign_up("alice")
    return c


# --- lock-out ------------------------------------------------------------------


def test_five_failures_within_ten_minutes_lock_the_account_for_twenty(
    cluster: Cluster,
) -> None:
    """The fifth wrong password within the window locks the account: even the
    right password is refused until 20 minutes after the fifth failure, and
    accepted from then on."""
    assert (LOCKOUT_FAILURES, LOCKOUT_WINDOW, LOCKOUT_DURATION) == (5, 600, 1200)
    for _ in range(LOCKOUT_FAILURES - 1):
        cluster.fail("alice")
        cluster.clock.advance(60)
    with pytest.raises(api.LockedOut, match="locked until"):
        cluster.login("alice", password="wrong password!")
    locked_at = cluster.now()

    cluster.clock.advance(LOCKOUT_DURATION - 1)
    with pytest.raises(api.LockedOut):
        cluster.login("alice")
    assert cluster.reasons("user.login")[-1] == "locked"

    cluster.clock.advance(1)
    assert cluster.now() == locked_at + LOCKOUT_DURATION
    assert cluster.login("alice").name == "alice"


def test_parallel_guesses_cannot_slip_past_the_lock_out() -> None:
    """However many wrong passwords arrive at once, at most five are ever
    checked before the account locks: one check at a time per account, the
    others refused at once (429) without spending bcrypt time."""
    threads = HeldThreads()
    c = Cluster(threads)
    c.sign_up("alice")
    threads.ran = 0
    threads.hold = True
    outcomes: list[Any] = []
    for _ in range(10):  # rounds of 8 guesses sent together
        batch = [
            Deferred.fromCoroutine(
                c.server.check_login("alice", "wrong password!", "000000", ADDR)
            )
            for _ in range(8)
        ]
        threads.release()
        for d in batch:
            d.addBoth(outcomes.append)
        if any(isinstance(o, Failure) and o.check(api.LockedOut) for o in outcomes):
            break
    assert any(isinstance(o, Failure) and o.check(api.LockedOut) for o in outcomes)
    assert threads.ran <= 5
    assert any(isinstance(o, Failure) and o.check(api.RateLimited) for o in outcomes)


def test_four_failures_do_not_lock_and_a_login_clears_them(cluster: Cluster) -> None:
    """Four failures leave the account open; a good login forgets them, so
    four more do not lock it either."""
    for _ in range(LOCKOUT_FAILURES - 1):
        cluster.fail("alice")
    assert cluster.login("alice").name == "alice"
    cluster.next_step()
    for _ in range(LOCKOUT_FAILURES - 1):
        cluster.fail("alice")
    assert cluster.login("alice").name == "alice"


def test_failures_older_than_the_window_do_not_count(cluster: Cluster) -> None:
    """Four failures, then a fifth just over ten minutes after them: the old
    four have left the window, so the fifth is a plain failure, not a lock."""
    for _ in range(LOCKOUT_FAILURES - 1):
        cluster.fail("alice")
    cluster.clock.advance(LOCKOUT_WINDOW + 1)
    cluster.fail("alice")
    assert cluster.login("alice").name == "alice"


def test_failures_at_the_edge_of_the_window_still_count(cluster: Cluster) -> None:
    """A failure exactly ten minutes old is still inside the window."""
    for _ in range(LOCKOUT_FAILURES - 1):
        cluster.fail("alice")
    cluster.clock.advance(LOCKOUT_WINDOW)
    with pytest.raises(api.LockedOut):
        cluster.login("alice", password="wrong password!")


# --- tokens and invites ----------------------------------------------------------


def _join(cluster: Cluster, token: str, name: str) -> api.JoinResult:
    return run(
        cluster.server.register_using_token(
            token=token,
            role=ROLE_PROXY,
            name=name,
            public_addr=f"{name}.example.org:3080",
            ssh_addr=f"{name}.example.org:3023",
            additional_principals=[],
            tls_public_key=public_key_pem(generate_private_key_pem()),
            ssh_public_key=_ssh_pub(),
            client_addr=ADDR,
        )
    )


def test_a_join_token_is_taken_until_its_ttl_and_refused_from_then(
    cluster: Cluster,
) -> None:
    """A token used a second before its TTL joins; one used at its TTL is
    refused as expired, with a message that says to make a new one."""
    ttl = 600
    early = run(cluster.server.create_token(ROLE_PROXY, ttl))
    late = run(cluster.server.create_token(ROLE_PROXY, ttl))
    assert early.expires == late.expires == cluster.now() + ttl

    cluster.clock.advance(ttl - 1)
    assert _join(cluster, early.token, "proxy2").cluster_name == "test.example"

    cluster.clock.advance(1)
    with pytest.raises(api.AccessDenied, match=r"expired.*tokens add"):
        _join(cluster, late.token, "proxy3")
    assert cluster.reasons("join") == ["token expired"]


def test_a_join_token_is_single_use(cluster: Cluster) -> None:
    """The second join with one token is refused, even well within its TTL."""
    token = run(cluster.server.create_token(ROLE_PROXY, 600)).token
    _join(cluster, token, "proxy2")
    with pytest.raises(api.AccessDenied, match="invalid, expired or already used"):
        _join(cluster, token, "proxy3")


def test_an_invite_is_good_until_its_ttl_and_refused_from_then(
    cluster: Cluster,
) -> None:
    """An invite opens and completes a second before its TTL; at its TTL it
    neither opens nor completes."""
    early = run(cluster.server.create_user("bob", ["bob"], ["access"]))
    late = run(cluster.server.create_user("carol", ["carol"], ["access"]))
    assert early.expires == late.expires == cluster.now() + INVITE_TTL
    late_secret = run(cluster.server.get_invite(late.token)).totp_secret

    cluster.clock.advance(INVITE_TTL - 1)
    secret = run(cluster.server.get_invite(early.token)).totp_secret
    signed_up = cluster.server.complete_invite(
        early.token, PASSWORD, cluster.code(secret), ADDR
    )
    assert run(signed_up) == "bob"

    cluster.clock.advance(1)
    with pytest.raises(api.NotFoundError, match="expired"):
        run(cluster.server.get_invite(late.token))
    with pytest.raises(api.NotFoundError, match="expired"):
        run(
            cluster.server.complete_invite(
                late.token, PASSWORD, cluster.code(late_secret), ADDR
            )
        )


# --- one-time codes ----------------------------------------------------------------


def test_a_one_time_code_is_accepted_once_per_step(cluster: Cluster) -> None:
    """A code logs in once; the same code again, in its step or in the next
    (while it is still within the window), is refused; the next step's code
    logs in."""
    code = cluster.code(cluster.secrets["alice"])
    assert cluster.login("alice", code=code).name == "alice"
    with pytest.raises(api.AuthenticationFailed):
        cluster.login("alice", code=code)

    cluster.next_step()
    assert cluster.code(cluster.secrets["alice"], steps_back=1) == code
    with pytest.raises(api.AuthenticationFailed):
        cluster.login("alice", code=code)
    assert cluster.reasons("user.login") == ["one-time code already used"] * 2
    assert cluster.login("alice").name == "alice"


def test_a_code_older_than_the_last_one_used_is_refused(cluster: Cluster) -> None:
    """After the current step's code, the previous step's (unused, and within
    the window) is refused too: steps only move forward."""
    secret = cluster.secrets["alice"]
    assert cluster.login("alice", code=cluster.code(secret)).name == "alice"
    with pytest.raises(api.AuthenticationFailed):
        cluster.login("alice", code=cluster.code(secret, steps_back=1))


# --- user certificates -----------------------------------------------------------------


def _validity(cluster: Cluster, user: str, ttl: int) -> tuple[int, int]:
    issued = run(
        cluster.server.authenticate_ssh_user(
            user=user,
            password=PASSWORD,
            otp_token=cluster.code(cluster.secrets[user]),
            pub_key=_ssh_pub(),
            ttl=ttl,
            client_addr=ADDR,
        )
    )
    cluster.next_step()
    cert = serialization.load_ssh_public_identity(issued.cert.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    assert issued.valid_before == cert.valid_before
    return cert.valid_after, cert.valid_before


@pytest.mark.parametrize(
    ("asked", "granted"),
    [(3600, 3600), (0, MAX_CERT_TTL), (24 * 3600, MAX_CERT_TTL), (10, 60)],
)
def test_a_user_certificate_runs_from_a_minute_ago_to_the_ttl_capped_at_12h(
    cluster: Cluster, asked: int, granted: int
) -> None:
    """Valid from the Clock's now - 60 (for clock skew) to now + the TTL asked
    for; no TTL or one over 12 h gets 12 h, one under a minute gets a minute."""
    cluster.clock.advance(12345)
    now = int(cluster.now())
    assert _validity(cluster, "alice", asked) == (now - 60, now + granted)


def test_a_role_s_max_session_ttl_caps_the_certificate(cluster: Cluster) -> None:
    """A user holding a role with a 30-minute max session gets at most 30
    minutes, whatever the other roles allow."""
    run(cluster.server.upsert_role(RoleSpec("short", ("ops",), {}, 1800)))
    cluster.sign_up("dave", roles=("access", "short"))
    now = int(cluster.now())
    assert _validity(cluster, "dave", 3600) == (now - 60, now + 1800)
    now = int(cluster.now())
    assert _validity(cluster, "dave", 600) == (now - 60, now + 600)
