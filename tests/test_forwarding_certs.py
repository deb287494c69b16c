"""Forwarding host certificates: the Auth API's SignForwardingHostCertificate
(over AMP in memory, on a MemoryStore and a Clock) and the proxy's cache of
them (teleconch.proxy.forward_certs) on a Clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory
from teleconch.auth.backends.memory import MemoryStore
from teleconch.auth.server import AuthServer
from teleconch.ca import SSHCertificateAuthority
from teleconch.conch.certs import check_host_certificate, parse_certificate_line
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY, TLSAuthority
from teleconch.proxy.forward_certs import (
    MAX_CACHED,
    REFRESH_BEFORE,
    ForwardingHostCerts,
)
from tests.amp_memory import Conn, cert_for
from tests.test_auth_server_clock import InlineThreads, run

T0 = 1_800_000_000.0
COMMAND = api.SignForwardingHostCertificate


def public_line(public_key: Any) -> str:
    line: bytes = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line.decode()


def openssh_public(key: Any) -> str:
    return public_line(key.public_key())


class Auth:
    """An AuthServer on a MemoryStore with node web1 registered, behind AMP."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        run(self.store.open())
        self.host_ca = SSHCertificateAuthority.generate()
        self.tls_ca = TLSAuthority.generate("test.example", T0 - 60)
        self.server = AuthServer(
            clock=self.clock,
            threads=InlineThreads(),
            store=self.store,
            cluster_name="test.example",
            user_ca=SSHCertificateAuthority.generate(),
            host_ca=self.host_ca,
            tls_ca=self.tls_ca,
            default_public_addr="proxy.test.example:3080",
            auth_addr="auth.test.example:3025",
            bcrypt_rounds=4,
        )
        run(self.server.start())
        run(self.server.upsert_node("web1", "10.0.0.5:22", {}))
        self.factory = AuthAPIFactory(self.server, self.clock)
        self.factory.doStart()

    def _call(self, public_key: str, target: str, role: str) -> tuple[Conn, Any]:
        conn = Conn(self.factory, cert=cert_for(self.tls_ca, role, "proxy1"))
        conn.call(COMMAND, public_key=public_key, target=target)
        (box,) = conn.answers()
        return conn, box

    def ask(self, public_key: str, target: str) -> api.ForwardingHostCertificate:
        conn, box = self._call(public_key, target, ROLE_PROXY)
        assert b"_error_code" not in box, box
        return COMMAND.decode_response(COMMAND.parseResponse(box, conn.proto))

    def refused(
        self, public_key: str, target: str, role: str = ROLE_PROXY
    ) -> tuple[bytes, bytes]:
        """The error code and description of a refused request."""
        _, box = self._call(public_key, target, role)
        return box[b"_error_code"], box[b"_error_description"]

    def events(self, name: str) -> list[Any]:
        return [
            e
            for e in run(self.server.search_events(None, None, [name], None, 100))
            if e.event == name
        ]


@pytest.fixture
def auth() -> Iterator[Auth]:
    a = Auth()
    yield a
    a.factory.doStop()


def test_the_certificate_names_the_node_its_cluster_name_and_address_host(
    auth: Auth,
) -> None:
    """Principals from the node record only; the proxy's key; an hour's
    validity (from a minute ago); the proxy named in the key id; from the host
    CA, and an OpenSSH client dialling any of the names accepts it."""
    key = Ed25519PrivateKey.generate()
    answer = auth.ask(openssh_public(key), "web1")
    assert answer.principals == ("web1", "web1.test.example", "10.0.0.5")
    cert = parse_certificate_line(answer.cert)
    assert cert.cert_type == "host"
    assert cert.principals == answer.principals
    assert cert.valid_after == int(T0) - 60
    assert cert.valid_before == answer.valid_before == int(T0) + 3600
    assert api.FORWARDING_CERT_TTL == 3600
    assert "proxy1" in cert.key_id and "web1" in cert.key_id
    assert public_line(cert.public_key) == openssh_public(key)
    ca_line = auth.host_ca.public_key_line()
    for name in answer.principals:
        check_host_certificate(cert, [ca_line], T0, name)


def test_each_certificate_is_audited_once_with_the_proxy_and_node(auth: Auth) -> None:
    auth.ask(openssh_public(Ed25519PrivateKey.generate()), "web1")
    (event,) = auth.events("cert.host.forwarding")
    assert event.fields["proxy"] == "proxy1"
    assert event.fields["node"] == "web1"
    assert event.fields["principals"] == ["web1", "web1.test.example", "10.0.0.5"]
    assert event.fields["key"].startswith("SHA256:")


def test_an_unregistered_target_is_not_found(auth: Auth) -> None:
    """No certificate for a name the cluster does not know (nor an address)."""
    for target in ("db9", "10.0.0.5"):
        code, text = auth.refused(openssh_public(Ed25519PrivateKey.generate()), target)
        assert code == api.ERRORS[api.NotFoundError]
        assert b"recording proxy mode reaches registered nodes only" in text
    assert auth.events("cert.host.forwarding") == []


def test_only_an_ed25519_key_is_certified(auth: Auth) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    code, text = auth.refused(openssh_public(rsa_key), "web1")
    assert code == api.ERRORS[api.BadParameter]
    assert b"ssh-ed25519" in text
    code, _ = auth.refused("not a key", "web1")
    assert code == api.ERRORS[api.BadParameter]


def test_only_a_proxy_may_ask(auth: Auth) -> None:
    code, _ = auth.refused(
        openssh_public(Ed25519PrivateKey.generate()), "web1", role=ROLE_ADMIN
    )
    assert code == api.ERRORS[api.AccessDenied]
    assert auth.events("cert.host.forwarding") == []


# -- the proxy's cache ---------------------------------------------------------


class FakeAuth:
    """Answers sign_forwarding_host_certificate when told to; counts asks."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.asks: list[tuple[str, str]] = []
        self.pending: list[Deferred[api.ForwardingHostCertificate]] = []
        self.answer_at_once = True

    async def sign_forwarding_host_certificate(
        self, public_key: str, target: str
    ) -> api.ForwardingHostCertificate:
        self.asks.append((public_key, target))
        answer = api.ForwardingHostCertificate(
            f"cert-{target}-{len(self.asks)}",
            (target,),
            int(self.clock.seconds()) + 3600,
        )
        if self.answer_at_once:
            return answer
        d: Deferred[api.ForwardingHostCertificate] = Deferred()
        self.pending.append(d)
        await d
        return answer


def cache() -> tuple[ForwardingHostCerts, FakeAuth, Clock]:
    clock = Clock()
    clock.advance(T0)
    fake = FakeAuth(clock)
    return ForwardingHostCerts(clock, fake, Ed25519PrivateKey.generate()), fake, clock


def fired(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def ask(certs: ForwardingHostCerts, node: str) -> Deferred[str]:
    return Deferred.fromCoroutine(certs.for_target(node))


def test_a_certificate_is_reused_until_five_minutes_before_it_expires() -> None:
    certs, fake, clock = cache()
    assert fired(ask(certs, "web1")) == "cert-web1-1"
    assert fake.asks[0][0].startswith("ssh-ed25519 ")
    assert fake.asks[0][1] == "web1"
    clock.advance(3600 - REFRESH_BEFORE - 1)
    assert fired(ask(certs, "web1")) == "cert-web1-1"
    clock.advance(1)
    assert fired(ask(certs, "web1")) == "cert-web1-2"
    assert len(fake.asks) == 2


def test_concurrent_asks_for_one_node_share_one_request() -> None:
    certs, fake, _ = cache()
    fake.answer_at_once = False
    first, second = ask(certs, "web1"), ask(certs, "web1")
    other = ask(certs, "web2")
    assert len(fake.asks) == 2  # one for web1, one for web2
    fake.pending[0].callback(None)  # type: ignore[arg-type]
    assert fired(first) == fired(second) == "cert-web1-1"
    fake.pending[1].callback(None)  # type: ignore[arg-type]
    assert fired(other) == "cert-web2-2"


def test_a_failed_request_fails_every_waiter_and_is_not_cached() -> None:
    certs, fake, _ = cache()
    fake.answer_at_once = False
    first, second = ask(certs, "db9"), ask(certs, "db9")
    fake.pending[0].errback(api.NotFoundError("no registered node 'db9'"))
    for d in (first, second):
        assert fired(d).check(api.NotFoundError)
    fake.answer_at_once = True
    assert fired(ask(certs, "db9")) == "cert-db9-2"
    assert certs.cached() == 1


def test_the_cache_is_bounded_and_forgets_the_oldest() -> None:
    certs, fake, _ = cache()
    for i in range(MAX_CACHED + 10):
        fired(ask(certs, f"n{i}"))
    assert certs.cached() == MAX_CACHED
    asked = len(fake.asks)
    fired(ask(certs, f"n{MAX_CACHED + 9}"))  # the newest is still there
    assert len(fake.asks) == asked
    fired(ask(certs, "n0"))  # the oldest was evicted: asked again
    assert len(fake.asks) == asked + 1
