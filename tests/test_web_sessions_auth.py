"""Web sessions on the auth service: login, the two secrets, idle and absolute
expiry, renewal, logout seen by every proxy, the session's certificates, and
the account changes a person makes from a session (password, authenticator).

Unit tests: an AuthServer on a MemoryStore and a ``task.Clock`` (the
``Cluster`` of test_auth_server_clock), bcrypt inline at 4 rounds; the last
ones go through the real Auth API protocol in memory.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock

from teleconch import totp
from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory
from teleconch.auth.login import LOCKOUT_FAILURES
from teleconch.auth.rbac import MAX_CERT_TTL, ROLES_EXTENSION, TRAITS_EXTENSION
from teleconch.auth.selfservice import ENROLMENT_TTL
from teleconch.auth.server import AuthServer
from teleconch.auth.tokens import token_hash
from teleconch.auth.types import AuditEvent, RoleSpec
from teleconch.auth.websessions import TOUCH_INTERVAL
from teleconch.ca import SSHCertificateAuthority
from teleconch.pki import ROLE_NODE, ROLE_PROXY, TLSAuthority
from tests.amp_memory import Conn, cert_for
from tests.test_auth_server_clock import (
    ADDR,
    PASSWORD,
    Cluster,
    InlineThreads,
    _ssh_pub,
    run,
)

IDLE = 30 * 60
NEW_PASSWORD = "a much better passphrase"


def creds(
    session: api.NewWebSession | api.RenewedWebSession, idle: int = IDLE
) -> api.WebCredentials:
    return api.WebCredentials(session.cookie, session.bearer, idle)


class Web:
    """What a proxy's web UI asks of the auth service, for tests."""

    def __init__(self, cluster: Cluster, server: AuthServer | None = None) -> None:
        self.c = cluster
        self.server = server or cluster.server

    def login(self, name: str = "alice", password: str = PASSWORD) -> api.NewWebSession:
        code = self.c.code(self.c.secrets[name])
        try:
            return run(
                self.server.create_web_session(
                    user=name,
                    password=password,
                    otp_token=code,
                    pub_key=_ssh_pub(),
                    client_addr=ADDR,
                )
            )
        finally:
            self.c.next_step()

    def check(self, c: api.WebCredentials) -> api.WebSessionInfo:
        return run(self.server.authenticate_web_session(**_fields(c)))

    def look(self, c: api.WebCredentials) -> api.WebSessionInfo:
        return run(self.server.check_web_session(**_fields(c)))

    def logout(self, c: api.WebCredentials) -> None:
        run(self.server.delete_web_session(**_fields(c), client_addr=ADDR))

    def renew(self, c: api.WebCredentials) -> api.RenewedWebSession:
        return run(self.server.renew_web_session(**_fields(c)))

    def change_password(
        self, c: api.WebCredentials, old: str = PASSWORD, code: str = ""
    ) -> None:
        code = code or self.c.code(self.c.secrets["alice"])
        run(
            self.server.change_password(
                **_fields(c),
                old_password=old,
                otp_token=code,
                new_password=NEW_PASSWORD,
                client_addr=ADDR,
            )
        )

    def events(self, event: str) -> list[AuditEvent]:
        return run(self.server.search_events(None, None, [event], None, 1000))


def _fields(c: api.WebCredentials) -> dict[str, Any]:
    return {"cookie": c.cookie, "bearer": c.bearer, "idle_timeout": c.idle_timeout}


@pytest.fixture
def cluster() -> Cluster:
    c = Cluster()
    c.sign_up("alice")
    return c


@pytest.fixture
def web(cluster: Cluster) -> Web:
    return Web(cluster)


def _cert(text: str) -> serialization.SSHCertificate:
    cert = serialization.load_ssh_public_identity(text.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    return cert


# --- login ------------------------------------------------------------------------


def test_a_web_login_makes_a_session_and_a_certificate_until_its_end(
    cluster: Cluster, web: Web
) -> None:
    """Password + code give two different secrets, a public id, and a user
    certificate made as `teleconch login` makes one (principals from the
    roles, roles and logins in extensions) valid until the session's end,
    12 hours after login; the login and the certificate are audited."""
    now = int(cluster.now())
    new = web.login()
    info = new.info
    assert (info.user, info.roles, info.logins) == ("alice", ("access",), ("alice",))
    assert info.created == info.last_active == cluster.now() - totp.STEP
    assert info.expires == now + MAX_CERT_TTL
    assert new.cookie != new.bearer and min(len(new.cookie), len(new.bearer)) >= 43
    assert info.id not in (new.cookie, new.bearer)
    cert = _cert(new.cert)
    assert cert.valid_principals == [b"alice"]
    assert (cert.valid_after, cert.valid_before) == (now - 60, info.expires)
    roles = json.loads(cert.extensions[ROLES_EXTENSION.encode()])
    assert roles == {"version": "v1", "roles": ["access"]}
    assert json.loads(cert.extensions[TRAITS_EXTENSION.encode()]) == {
        "logins": ["alice"]
    }
    (login,) = web.events("user.login")
    assert login.fields == {
        "client_addr": ADDR,
        "method": "password+otp",
        "via": "web",
        "session_id": info.id,
    }
    (created,) = web.events("cert.create")
    assert created.fields["session_id"] == info.id
    assert created.fields["ttl"] == MAX_CERT_TTL


def test_only_the_hashes_of_the_two_secrets_are_stored(
    cluster: Cluster, web: Web
) -> None:
    """The stored record holds SHA-256 hashes; neither secret appears in it,
    nor in any audit event."""
    new = web.login()
    stored = run(cluster.store.get_web_session(token_hash(new.cookie)))
    assert stored is not None and stored.id == new.info.id
    assert stored.bearer_hash == token_hash(new.bearer)
    text = repr(attrs.asdict(stored))
    assert new.cookie not in text and new.bearer not in text
    everything = repr(web.events("user.login") + web.events("cert.create"))
    assert new.cookie not in everything and new.bearer not in everything


def test_a_web_login_is_checked_and_counted_like_a_teleconch_login(
    cluster: Cluster, web: Web
) -> None:
    """A wrong password is refused with the login message and counts towards
    the lock-out; the fifth locks the account for web logins too."""
    for _ in range(LOCKOUT_FAILURES - 1):
        with pytest.raises(api.AuthenticationFailed, match="login failed"):
            web.login(password="not the password")
    with pytest.raises(api.LockedOut, match="locked until"):
        web.login(password="not the password")
    with pytest.raises(api.LockedOut):
        web.login()
    assert run(cluster.store.count_login_failures("alice", 0)) == LOCKOUT_FAILURES


def test_a_code_spent_on_a_web_login_is_not_accepted_again(cluster: Cluster) -> None:
    """Two logins with one code: the second is refused (the code is single-use)."""
    code = cluster.code(cluster.secrets["alice"])
    login = {
        "user": "alice",
        "password": PASSWORD,
        "otp_token": code,
        "pub_key": _ssh_pub(),
        "client_addr": ADDR,
    }
    run(cluster.server.create_web_session(**login))
    with pytest.raises(api.AuthenticationFailed):
        run(cluster.server.create_web_session(**login))
    assert cluster.reasons("user.login")[-1] == "one-time code already used"


def test_a_bad_public_key_is_refused_before_the_password_is_checked(
    cluster: Cluster,
) -> None:
    """A key that is not an OpenSSH public key is a BadParameter; no code is
    spent and no failure counted."""
    code = cluster.code(cluster.secrets["alice"])
    with pytest.raises(api.BadParameter):
        run(
            cluster.server.create_web_session(
                user="alice",
                password=PASSWORD,
                otp_token=code,
                pub_key="ssh-ed25519 nonsense",
                client_addr=ADDR,
            )
        )
    assert run(cluster.store.count_login_failures("alice", 0)) == 0
    assert cluster.login("alice", code=code).name == "alice"


def test_a_role_s_max_session_ttl_brings_the_session_end_closer(
    cluster: Cluster,
) -> None:
    """A user holding a role of 1 hour has sessions (and certificates) of 1 hour."""
    run(cluster.server.upsert_role(RoleSpec("short", ("ops",), {}, 3600)))
    cluster.sign_up("dave", roles=("access", "short"))
    now = int(cluster.now())
    new = Web(cluster).login("dave")
    assert new.info.expires == now + 3600
    assert _cert(new.cert).valid_before == now + 3600
    assert sorted(_cert(new.cert).valid_principals) == [b"dave", b"ops"]


def test_logging_in_sweeps_out_sessions_past_their_end(
    cluster: Cluster, web: Web
) -> None:
    """A session nobody used again is deleted by a later login once past its
    end, so the table does not grow forever."""
    old = web.login()
    cluster.clock.advance(MAX_CERT_TTL)
    assert run(cluster.store.get_web_session(token_hash(old.cookie))) is not None
    web.login()
    assert run(cluster.store.get_web_session(token_hash(old.cookie))) is None


# --- the two secrets ------------------------------------------------------------------


def test_the_cookie_alone_or_the_bearer_alone_is_refused(web: Web) -> None:
    """Either secret without the other is SessionExpired; the session is left
    alone (a cross-site request cannot log the person out); a cookie of a
    session with a wrong bearer is audited with the session's id."""
    new = web.login()
    with pytest.raises(api.SessionExpired, match="log in again"):
        web.check(api.WebCredentials(new.cookie, "", IDLE))
    with pytest.raises(api.SessionExpired, match="log in again"):
        web.check(api.WebCredentials("", new.bearer, IDLE))
    with pytest.raises(api.SessionExpired):
        web.check(api.WebCredentials(new.bearer, new.cookie, IDLE))
    assert web.check(creds(new)).id == new.info.id
    (refused,) = web.events("web.session.refused")
    assert (refused.user, refused.fields["session_id"]) == ("alice", new.info.id)
    assert refused.fields["reason"] == "bearer token does not match the session"


def test_a_bearer_of_another_session_is_refused(web: Web) -> None:
    """Two sessions of one user: one's cookie with the other's bearer is refused."""
    a, b = web.login(), web.login()
    with pytest.raises(api.SessionExpired):
        web.check(api.WebCredentials(a.cookie, b.bearer, IDLE))
    with pytest.raises(api.SessionExpired):
        web.check(api.WebCredentials(b.cookie, a.bearer, IDLE))
    assert web.check(creds(a)).id == a.info.id
    assert web.check(creds(b)).id == b.info.id != a.info.id


# --- expiry ------------------------------------------------------------------------


def test_a_session_idle_for_the_timeout_ends_and_is_deleted(
    cluster: Cluster, web: Web
) -> None:
    """Each call is activity: calls 29 minutes apart keep it; 30 minutes of
    nothing end it, with a message saying so, and it stays ended even for a
    proxy with a longer idle limit."""
    new = web.login()
    for _ in range(3):
        cluster.clock.advance(IDLE - 60)
        assert web.check(creds(new)).last_active == cluster.now()
    cluster.clock.advance(IDLE)
    with pytest.raises(
        api.SessionExpired,
        match="ended after 30 minutes without activity: log in again",
    ):
        web.check(creds(new))
    with pytest.raises(api.SessionExpired, match="ended or is unknown"):
        web.check(creds(new, idle=10 * IDLE))
    assert run(cluster.store.get_web_session(token_hash(new.cookie))) is None
    assert web.events("web.session.refused")[0].fields["reason"] == "idle too long"


def test_a_look_at_a_session_is_not_activity(cluster: Cluster, web: Web) -> None:
    """CheckWebSession (a quiet terminal's once-a-minute look) sees a live
    session without renewing it: looks alone do not keep it from going idle,
    and a look at an idle one ends it like any call."""
    new = web.login()
    created = web.look(creds(new)).last_active
    for _ in range(IDLE // 60 - 1):
        cluster.clock.advance(60)
        assert web.look(creds(new)).last_active == created
    cluster.clock.advance(60)
    with pytest.raises(api.SessionExpired, match="without activity"):
        web.look(creds(new))
    with pytest.raises(api.SessionExpired):
        web.check(creds(new))


def test_the_idle_limit_is_the_asking_proxys(cluster: Cluster, web: Web) -> None:
    """A proxy configured for 5 minutes ends a session idle for 5 minutes."""
    new = web.login()
    cluster.clock.advance(4 * 60)
    web.check(creds(new, idle=300))
    cluster.clock.advance(5 * 60)
    with pytest.raises(api.SessionExpired, match="after 5 minutes"):
        web.check(creds(new, idle=300))


def test_activity_is_written_at_most_once_a_second(
    cluster: Cluster, web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls within a second of the last activity do not write it again."""
    new = web.login()
    touches: list[float] = []
    real = cluster.store.touch_web_session

    async def counted(session_id: str, when: float) -> None:
        touches.append(when)
        await real(session_id, when)

    monkeypatch.setattr(cluster.store, "touch_web_session", counted)
    cluster.clock.advance(TOUCH_INTERVAL)
    for _ in range(5):
        web.check(creds(new))
        cluster.clock.advance(0.1)
    assert touches == [pytest.approx(cluster.now() - 0.5)]


def test_a_session_ends_at_its_absolute_end_however_active(
    cluster: Cluster, web: Web
) -> None:
    """Active every 20 minutes, the session still ends 12 hours after login."""
    new = web.login()
    while cluster.now() + 20 * 60 < new.info.expires:
        cluster.clock.advance(20 * 60)
        web.check(creds(new))
    cluster.clock.advance(new.info.expires - cluster.now())
    with pytest.raises(
        api.SessionExpired,
        match=r"reached its end \(12 hours after you logged in\): log in again",
    ):
        web.check(creds(new))
    assert run(cluster.store.get_web_session(token_hash(new.cookie))) is None


# --- renewal and logout ---------------------------------------------------------------


def test_renewal_gives_new_secrets_and_the_old_ones_stop_at_once(
    cluster: Cluster, web: Web
) -> None:
    """The renewed session keeps its id and its end; the old cookie and bearer
    are refused from then on, even to renew again."""
    new = web.login()
    cluster.clock.advance(600)
    renewed = web.renew(creds(new))
    assert {renewed.cookie, renewed.bearer}.isdisjoint({new.cookie, new.bearer})
    assert renewed.info.id == new.info.id
    assert renewed.info.expires == new.info.expires
    with pytest.raises(api.SessionExpired):
        web.check(creds(new))
    with pytest.raises(api.SessionExpired):
        web.renew(creds(new))
    with pytest.raises(api.SessionExpired):
        web.check(api.WebCredentials(renewed.cookie, new.bearer, IDLE))
    assert web.check(creds(renewed)).id == new.info.id


def test_a_logout_at_one_proxy_is_seen_by_a_second_auth_server_on_the_store(
    cluster: Cluster, web: Web
) -> None:
    """State lives in the store: a second AuthServer (standing in for the
    auth service another proxy reaches) serves the session, logs it out, and
    the first refuses it from then on; logging out twice is SessionExpired."""
    other = Web(
        cluster,
        AuthServer(
            clock=cluster.clock,
            threads=InlineThreads(),
            store=cluster.store,
            cluster_name="test.example",
            user_ca=SSHCertificateAuthority.generate(),
            host_ca=SSHCertificateAuthority.generate(),
            tls_ca=TLSAuthority.generate("test.example", cluster.now()),
            default_public_addr="proxy.test.example:3080",
            auth_addr="auth.test.example:3025",
            bcrypt_rounds=4,
        ),
    )
    new = web.login()
    assert other.check(creds(new)).id == new.info.id
    other.logout(creds(new))
    with pytest.raises(api.SessionExpired):
        web.check(creds(new))
    with pytest.raises(api.SessionExpired):
        web.logout(creds(new))
    (logout,) = web.events("user.logout")
    assert (logout.user, logout.fields) == (
        "alice",
        {"client_addr": ADDR, "via": "web", "session_id": new.info.id},
    )


def test_another_proxys_key_gets_a_certificate_until_the_session_end(
    cluster: Cluster, web: Web
) -> None:
    """SignWebSessionKey certifies a second proxy's key as the login did,
    until the same end, audited with the session id; not after logout."""
    new = web.login()
    cluster.clock.advance(600)
    signed = run(
        cluster.server.sign_web_session_key(**_fields(creds(new)), pub_key=_ssh_pub())
    )
    cert = _cert(signed.cert)
    assert signed.valid_before == cert.valid_before == new.info.expires
    assert cert.valid_principals == [b"alice"]
    assert cert.key_id == b"alice"
    assert [e.fields["session_id"] for e in web.events("cert.create")] == [
        new.info.id,
        new.info.id,
    ]
    web.logout(creds(new))
    with pytest.raises(api.SessionExpired):
        run(
            cluster.server.sign_web_session_key(
                **_fields(creds(new)), pub_key=_ssh_pub()
            )
        )


@pytest.mark.parametrize("action", ["delete", "reset"])
def test_removing_or_resetting_a_user_ends_their_web_sessions(
    cluster: Cluster, web: Web, action: str
) -> None:
    """After `users rm` or `users reset`, the user's sessions are refused."""
    new = web.login()
    if action == "delete":
        run(cluster.server.delete_user("alice"))
    else:
        run(cluster.server.reset_user("alice"))
    with pytest.raises(api.SessionExpired):
        web.check(creds(new))


# --- password change ------------------------------------------------------------------


def test_a_password_change_needs_the_current_password_and_counts_a_wrong_one(
    cluster: Cluster, web: Web
) -> None:
    """A wrong current password is refused, audited and counted as a failed
    login; the password stays; the fifth locks the account."""
    new = web.login()
    for _ in range(LOCKOUT_FAILURES - 1):
        with pytest.raises(api.AuthenticationFailed, match="password is unchanged"):
            web.change_password(creds(new), old="not the password")
    assert run(cluster.store.count_login_failures("alice", 0)) == LOCKOUT_FAILURES - 1
    with pytest.raises(api.LockedOut):
        web.change_password(creds(new), old="not the password")
    failed = [e for e in web.events("user.password.change") if not e.success]
    assert [e.fields["reason"] for e in failed] == ["wrong password"] * 5
    with pytest.raises(api.LockedOut):
        web.change_password(creds(new))
    run(cluster.server.unlock_user("alice"))
    assert cluster.login("alice", password=PASSWORD).name == "alice"


def test_a_password_change_spends_its_code(cluster: Cluster, web: Web) -> None:
    """The code given with a password change cannot be given again."""
    new = web.login()
    code = cluster.code(cluster.secrets["alice"])
    web.change_password(creds(new), code=code)
    with pytest.raises(api.AuthenticationFailed):
        run(cluster.server.check_login("alice", NEW_PASSWORD, code, ADDR))


def test_a_changed_password_is_the_one_that_logs_in(cluster: Cluster, web: Web) -> None:
    """After the change the new password logs in and the old one does not."""
    new = web.login()
    web.change_password(creds(new))
    cluster.next_step()
    with pytest.raises(api.AuthenticationFailed):
        cluster.login("alice", password=PASSWORD)
    assert cluster.login("alice", password=NEW_PASSWORD).name == "alice"
    (done,) = [e for e in web.events("user.password.change") if e.success]
    assert done.fields["session_id"] == new.info.id


def test_a_password_change_ends_the_users_other_web_sessions(web: Web) -> None:
    """The session that changed it goes on; the user's others are refused."""
    here, elsewhere = web.login(), web.login()
    web.change_password(creds(here))
    with pytest.raises(api.SessionExpired):
        web.check(creds(elsewhere))
    assert web.check(creds(here)).id == here.info.id


def test_a_short_new_password_is_refused_and_nothing_changes(
    cluster: Cluster, web: Web
) -> None:
    """Shorter than the sign-up rule: BadParameter, audited; the code is not
    spent and the old password still logs in."""
    new = web.login()
    code = cluster.code(cluster.secrets["alice"])
    with pytest.raises(api.BadParameter, match="at least 12 characters"):
        run(
            cluster.server.change_password(
                **_fields(creds(new)),
                old_password=PASSWORD,
                otp_token=code,
                new_password="short",
                client_addr=ADDR,
            )
        )
    assert cluster.login("alice", code=code).name == "alice"
    assert cluster.reasons("user.password.change") == ["new password too short"]


# --- a new authenticator --------------------------------------------------------------


def _start(cluster: Cluster, new: api.NewWebSession, password: str = PASSWORD) -> Any:
    return run(
        cluster.server.start_authenticator_enrolment(
            **_fields(creds(new)), password=password, client_addr=ADDR
        )
    )


def _confirm(cluster: Cluster, new: api.NewWebSession, code: str) -> None:
    run(
        cluster.server.confirm_authenticator_enrolment(
            **_fields(creds(new)), otp_token=code, client_addr=ADDR
        )
    )


def test_a_new_authenticator_replaces_the_old_only_once_confirmed(
    cluster: Cluster, web: Web
) -> None:
    """Until a code from the new secret arrives, the old one logs in; after,
    only the new one does, and the confirming code is spent."""
    new = web.login()
    pending = _start(cluster, new)
    assert pending.expires == cluster.now() + ENROLMENT_TTL
    assert pending.otpauth_uri.startswith("otpauth://totp/test.example%3Aalice?")
    assert f"secret={pending.totp_secret}" in pending.otpauth_uri
    old = cluster.secrets["alice"]
    assert cluster.login("alice", code=cluster.code(old)).name == "alice"
    cluster.next_step()
    confirming = cluster.code(pending.totp_secret)
    _confirm(cluster, new, confirming)
    with pytest.raises(api.AuthenticationFailed):
        cluster.login("alice", code=confirming)
    cluster.next_step()
    with pytest.raises(api.AuthenticationFailed):
        cluster.login("alice", code=cluster.code(old))
    assert (
        cluster.login("alice", code=cluster.code(pending.totp_secret)).name == "alice"
    )
    (changed,) = web.events("user.mfa.change")
    assert changed.success and changed.fields["session_id"] == new.info.id


def test_a_code_from_the_old_authenticator_does_not_confirm_the_new(
    cluster: Cluster, web: Web
) -> None:
    """Refused with a message about the new authenticator and the clock; the
    old authenticator stays in force."""
    new = web.login()
    _start(cluster, new)
    with pytest.raises(
        api.AuthenticationFailed,
        match=r"does not match the new authenticator.*check your device.s clock",
    ):
        _confirm(cluster, new, cluster.code(cluster.secrets["alice"]))
    assert cluster.login("alice").name == "alice"
    assert cluster.reasons("user.mfa.change") == [
        "wrong code from the new authenticator"
    ]


def test_an_enrolment_needs_the_password_and_counts_a_wrong_one(
    cluster: Cluster, web: Web
) -> None:
    """A wrong password starts nothing and counts as a failed login."""
    new = web.login()
    with pytest.raises(api.AuthenticationFailed, match="authenticator is unchanged"):
        _start(cluster, new, password="not the password")
    assert run(cluster.store.count_login_failures("alice", 0)) == 1
    assert cluster.reasons("user.mfa.change") == ["wrong password"]
    with pytest.raises(api.NotFoundError, match="start the enrolment again"):
        _confirm(cluster, new, "123456")


def test_the_password_alone_does_not_forget_earlier_failures(
    cluster: Cluster, web: Web
) -> None:
    """Only a full login (password and code) clears the failure count: four
    failures, a right password for an enrolment, and one more failure lock
    the account."""
    new = web.login()
    for _ in range(LOCKOUT_FAILURES - 1):
        cluster.fail("alice")
    _start(cluster, new)
    with pytest.raises(api.LockedOut):
        cluster.login("alice", password="wrong password!")


def test_a_pending_authenticator_waits_ten_minutes_on_its_own_session(
    cluster: Cluster, web: Web
) -> None:
    """Another session of the user cannot confirm it; after 10 minutes its own
    cannot either."""
    new, other = web.login(), web.login()
    pending = _start(cluster, new)
    with pytest.raises(api.NotFoundError):
        _confirm(cluster, other, cluster.code(pending.totp_secret))
    cluster.clock.advance(ENROLMENT_TTL)
    with pytest.raises(api.NotFoundError):
        _confirm(cluster, new, cluster.code(pending.totp_secret))
    assert cluster.login("alice").name == "alice"


# --- through the Auth API, in memory --------------------------------------------------


def _call(conn: Conn, command: type[api.AuthCommand[Any, Any]], **kw: Any) -> Any:
    """Send one command and decode its answer (or return the error box)."""
    before = len(conn.answers())
    conn.call(command, tag=str(before + 1).encode(), **kw)
    box = conn.answers()[before]
    if b"_error" in box:
        return box
    return command.decode_response(command.parseResponse(box, conn.proto))


def test_web_sessions_through_the_auth_api_for_proxies_only(cluster: Cluster) -> None:
    """A proxy identity logs in, checks and logs out a session over AMP; a
    dead session comes back as SESSION_EXPIRED with its message; a node
    identity may not check sessions at all."""
    tls = TLSAuthority.generate("test.example", 0.0)
    factory = AuthAPIFactory(cluster.server, Clock())
    factory.doStart()
    proxy = Conn(factory, cert=cert_for(tls, ROLE_PROXY, "proxy-a"))
    new = _call(
        proxy,
        api.CreateWebSession,
        user="alice",
        password=PASSWORD,
        otp_token=cluster.code(cluster.secrets["alice"]),
        pub_key=_ssh_pub(),
        client_addr=ADDR,
    )
    assert isinstance(new, api.NewWebSession)
    secrets = {"cookie": new.cookie, "bearer": new.bearer, "idle_timeout": IDLE}
    info = _call(proxy, api.AuthenticateWebSession, **secrets)
    assert info == new.info
    _call(proxy, api.DeleteWebSession, **secrets, client_addr=ADDR)
    gone = _call(proxy, api.AuthenticateWebSession, **secrets)
    assert gone[b"_error_code"] == b"SESSION_EXPIRED"
    assert b"log in again" in gone[b"_error_description"]
    node = Conn(factory, cert=cert_for(tls, ROLE_NODE, "node-1"))
    refused = _call(node, api.AuthenticateWebSession, **secrets)
    assert refused[b"_error_code"] == b"ACCESS_DENIED"
    factory.doStop()
