"""The auth service's side of `teleconch join openssh`: joining and renewing.

No sockets: AuthServer on a SQLite store in a temporary directory (its own
thread, as in production), time on a task.Clock the tests move.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock

from teleconch.auth import protocol as api
from teleconch.auth.attest import (
    JOIN_PURPOSE,
    RENEW_PURPOSE,
    join_proof,
    renew_message,
    token_name,
    verify,
)
from teleconch.auth.backends.sqlite import SQLiteStore
from teleconch.auth.nodejoin import join_node, renew_node
from teleconch.auth.server import AuthServer
from teleconch.ca import SSHCertificateAuthority
from teleconch.pki import ROLE_AUTH, TLSAuthority

T0 = 1_700_000_000.0
DAY = 86400


@attrs.define
class Auth:
    server: AuthServer
    clock: Clock
    tls_ca: TLSAuthority

    async def token(self) -> str:
        return (await self.server.create_token("node", 600)).token

    async def join(
        self,
        key: ed25519.Ed25519PrivateKey,
        name: str = "web1",
        token: str | None = None,
        proof_for: dict[str, Any] | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """Join as the client does: the token's name and a proof, never the token.

        ``proof_for`` changes what the proof is made for (a request relayed
        by someone who changed it)."""
        token = token or await self.token()
        args: dict[str, Any] = {
            "name": name,
            "addr": "10.1.2.3:22",
            "labels": {"env": "prod"},
            "public_key": _public(key),
            "client_addr": "192.0.2.7",
        }
        args.update(kw)
        signed = {k: args[k] for k in ("name", "addr", "labels", "public_key")}
        signed.update(proof_for or {})
        proof = join_proof(token, **signed)
        document = await join_node(
            self.server, token_name=token_name(token), proof=proof, **args
        )
        return verify(
            document.to_json(),
            JOIN_PURPOSE,
            proof,
            self.tls_ca.pin,
            now=self.clock.seconds(),
        )

    async def renew(
        self,
        key: ed25519.Ed25519PrivateKey,
        cert: str,
        timestamp: float | None = None,
    ) -> dict[str, Any]:
        ts = int(self.clock.seconds() if timestamp is None else timestamp)
        signature = base64.b64encode(key.sign(renew_message(cert, ts))).decode()
        document = await renew_node(
            self.server,
            cert=cert,
            timestamp=ts,
            signature=signature,
            client_addr="192.0.2.7",
        )
        return verify(
            document.to_json(),
            RENEW_PURPOSE,
            signature,
            self.tls_ca.pin,
            now=self.clock.seconds(),
        )

    async def events(self, name: str) -> list[Any]:
        return await self.server.store.search_events(events=[name])


def _public(key: ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        .decode()
    )


@pytest_twisted.async_yield_fixture
async def auth(tmp_path: Path) -> AsyncIterator[Auth]:
    clock = Clock()
    clock.advance(T0)
    store = SQLiteStore(str(tmp_path / "auth.db"), cast(IReactorFromThreads, reactor))
    await store.open()
    tls_ca = TLSAuthority.generate("test.example", T0 - 60)
    server = AuthServer(
        clock=clock,
        threads=reactor,
        store=store,
        cluster_name="test.example",
        user_ca=SSHCertificateAuthority.generate(),
        host_ca=SSHCertificateAuthority.generate(),
        tls_ca=tls_ca,
        default_public_addr="proxy.example.com:3080",
        auth_addr="auth.example.com:3025",
        tls_identity=tls_ca.issue_identity(ROLE_AUTH, "auth1", T0 - 60, 365 * DAY),
        node_cert_ttl=30 * DAY,
    )
    try:
        yield Auth(server, clock, tls_ca)
    finally:
        await store.close()


def _cert(line: str) -> serialization.SSHCertificate:
    cert = serialization.load_ssh_public_identity(line.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    return cert


@pytest_twisted.ensureDeferred
async def test_a_join_registers_the_node_with_a_30_day_certificate(auth: Auth) -> None:
    """Name, address, labels and expiry are registered; the certificate names
    the node, its cluster name and its address; the token is spent."""
    key = ed25519.Ed25519PrivateKey.generate()
    payload = await auth.join(key)
    cert = _cert(payload["host_cert"])
    assert cert.type == serialization.SSHCertificateType.HOST
    assert [p.decode() for p in cert.valid_principals] == [
        "web1",
        "web1.test.example",
        "10.1.2.3",
    ]
    assert cert.valid_before == payload["expires"] == int(T0) + 30 * DAY
    assert payload["user_ca"] == auth.server.export_ca("user")
    [node] = await auth.server.store.list_nodes()
    assert (node.id, node.name, node.addr) == (
        payload["node_id"],
        "web1",
        "10.1.2.3:22",
    )
    assert (
        dict(node.labels) == {"env": "prod"} and node.cert_expires == cert.valid_before
    )
    assert await auth.server.list_tokens() == []
    [event] = await auth.events("node.join")
    assert event.success and event.fields["client_addr"] == "192.0.2.7"


@pytest_twisted.ensureDeferred
async def test_a_token_joins_once(auth: Auth) -> None:
    """The second join with one token is refused and audited without the token."""
    key = ed25519.Ed25519PrivateKey.generate()
    token = await auth.token()
    await auth.join(key, token=token)
    with pytest.raises(api.AccessDenied, match="already used"):
        await auth.join(key, name="web2", token=token)
    refused = [e for e in await auth.events("node.join") if not e.success]
    assert refused[0].fields["reason"] == "unknown token or wrong type"
    assert token not in repr(refused)


@pytest.mark.parametrize(
    "changed",
    [
        {"public_key": _public(ed25519.Ed25519PrivateKey.generate())},
        {"name": "web9"},
        {"addr": "10.9.9.9:22"},
        {"labels": {"env": "dev"}},
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_proof_made_for_another_request_is_refused_and_keeps_the_token(
    auth: Auth, changed: dict[str, Any]
) -> None:
    """A man in the middle who relays a node's request with its own key (or
    another name or address) has no proof for it: refused, the token unspent,
    and the real node still joins with it."""
    token = await auth.token()
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(api.AccessDenied, match="invalid, expired"):
        await auth.join(key, token=token, proof_for=changed)
    assert len(await auth.server.list_tokens()) == 1
    assert await auth.server.store.list_nodes() == []
    [event] = await auth.events("node.join")
    assert not event.success and token not in repr(event)
    await auth.join(key, token=token)
    assert await auth.server.list_tokens() == []


@pytest_twisted.ensureDeferred
async def test_a_proxy_token_does_not_join_a_node(auth: Auth) -> None:
    """Only a node token joins a node."""
    token = (await auth.server.create_token("proxy", 600)).token
    with pytest.raises(api.AccessDenied, match="invalid, expired"):
        await auth.join(ed25519.Ed25519PrivateKey.generate(), token=token)


@pytest.mark.parametrize(
    ("name", "why"),
    [("teleconch-auth", "reserved"), ("localhost", "reserved"), ("bad name", "valid")],
)
@pytest_twisted.ensureDeferred
async def test_a_reserved_or_invalid_name_is_refused(
    auth: Auth, name: str, why: str
) -> None:
    """No node joins as the auth service, localhost, or outside the grammar;
    the token stays good."""
    with pytest.raises(api.AuthAPIError, match=why):
        await auth.join(ed25519.Ed25519PrivateKey.generate(), name=name)
    assert len(await auth.server.list_tokens()) == 1


@pytest_twisted.ensureDeferred
async def test_a_name_held_by_a_registered_or_joined_node_is_refused(
    auth: Auth,
) -> None:
    """A hand-registered node's name needs `nodes rm` first; a joined one's is
    its own (the message points at --renew)."""
    await auth.server.upsert_node("db1", "10.0.0.1:22", {})
    with pytest.raises(api.AccessDenied, match="nodes rm db1"):
        await auth.join(ed25519.Ed25519PrivateKey.generate(), name="db1")
    await auth.join(ed25519.Ed25519PrivateKey.generate(), name="web1")
    with pytest.raises(api.AccessDenied, match="--renew"):
        await auth.join(ed25519.Ed25519PrivateKey.generate(), name="web1", addr="h:22")


@pytest.mark.parametrize(
    ("name", "addr"),
    [
        ("test.example", "10.1.2.3:22"),  # the cluster's name: its CA's bare name
        ("web1", "test.example:22"),
        ("web1", "proxy.example.com:22"),  # the default public address
        ("web1", "web.test.example:22"),  # a proxy's public host (heartbeat)
        ("web1", "ssh.test.example:22"),  # and its SSH host
        ("web", "10.1.2.3:22"),  # web.test.example is that proxy's
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_cluster_name_and_the_proxies_hosts_are_not_for_nodes(
    auth: Auth, name: str, addr: str
) -> None:
    """A node cannot be certified as the cluster or as one of its proxies;
    the token stays good."""
    await auth.server.proxies.heartbeat(
        "proxy2", "web.test.example:3080", "ssh.test.example:3023"
    )
    with pytest.raises(api.AccessDenied, match="reserved"):
        await auth.join(ed25519.Ed25519PrivateKey.generate(), name=name, addr=addr)
    assert len(await auth.server.list_tokens()) == 1
    assert await auth.server.store.list_nodes() == []


@pytest.mark.parametrize("addr", ["db1.internal:22", "db1.internal:2222", "db1:22"])
@pytest_twisted.ensureDeferred
async def test_an_address_another_node_holds_is_refused(auth: Auth, addr: str) -> None:
    """The proxy dials a node by its address: a joiner cannot take another
    node's, and the message names the node; the token stays good."""
    await auth.server.upsert_node("db1", "db1.internal:22", {})
    with pytest.raises(api.AccessDenied, match="'db1'"):
        await auth.join(ed25519.Ed25519PrivateKey.generate(), addr=addr)
    assert len(await auth.server.list_tokens()) == 1
    [node] = await auth.server.store.list_nodes()
    assert node.name == "db1"


@pytest_twisted.ensureDeferred
async def test_loopback_addresses_join_but_are_never_principals(auth: Auth) -> None:
    """Nodes on the auth service's own machine (tests, one-machine setups)
    join on 127.0.0.1, each on its own port, without 127.0.0.1 as a principal."""
    one = await auth.join(ed25519.Ed25519PrivateKey.generate(), addr="127.0.0.1:2201")
    two = await auth.join(
        ed25519.Ed25519PrivateKey.generate(), name="web2", addr="127.0.0.1:2202"
    )
    assert one["principals"] == ["web1", "web1.test.example"]
    assert two["principals"] == ["web2", "web2.test.example"]


@pytest_twisted.ensureDeferred
async def test_a_renewal_gives_the_same_node_a_fresh_certificate(auth: Auth) -> None:
    """Ten days on, the node's own signature buys a certificate for the same
    key and principals, 30 days from now; still one node, its expiry moved."""
    key = ed25519.Ed25519PrivateKey.generate()
    joined = await auth.join(key)
    auth.clock.advance(10 * DAY)
    renewed = await auth.renew(key, joined["host_cert"])
    old, new = _cert(joined["host_cert"]), _cert(renewed["host_cert"])
    assert new.valid_before == int(T0) + 40 * DAY
    assert new.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ) == old.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert new.valid_principals == old.valid_principals and new.key_id == old.key_id
    [node] = await auth.server.store.list_nodes()
    assert node.id == joined["node_id"] == renewed["node_id"]
    assert node.cert_expires == new.valid_before
    [event] = await auth.events("node.renew")
    assert event.success and event.fields["node"] == "web1"


@pytest_twisted.ensureDeferred
async def test_an_expired_certificate_is_not_renewed(auth: Auth) -> None:
    """Past its expiry a certificate renews nothing: the message says to join
    again with a new token."""
    key = ed25519.Ed25519PrivateKey.generate()
    joined = await auth.join(key)
    auth.clock.advance(31 * DAY)
    with pytest.raises(
        api.AccessDenied, match=r"expired at .*nodes rm web1.*tokens add"
    ):
        await auth.renew(key, joined["host_cert"])
    [event] = await auth.events("node.renew")
    assert not event.success and event.fields["reason"] == "certificate expired"


@pytest_twisted.ensureDeferred
async def test_a_renewal_signed_by_another_key_is_refused(auth: Auth) -> None:
    """Whoever holds a copy of the certificate (it is public) cannot renew it."""
    joined = await auth.join(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(api.AccessDenied, match="not signed by the certified host key"):
        await auth.renew(ed25519.Ed25519PrivateKey.generate(), joined["host_cert"])
    [event] = await auth.events("node.renew")
    assert event.fields["reason"] == "bad signature" and event.fields["node"] == "web1"


@pytest.mark.parametrize("skew", [-301, 301])
@pytest_twisted.ensureDeferred
async def test_a_stale_or_future_timestamp_is_refused(auth: Auth, skew: int) -> None:
    """A renewal more than 5 minutes from the auth service's clock is refused
    (a captured one cannot be replayed later)."""
    key = ed25519.Ed25519PrivateKey.generate()
    joined = await auth.join(key)
    with pytest.raises(api.AccessDenied, match="clock"):
        await auth.renew(key, joined["host_cert"], timestamp=T0 + skew)
    await auth.renew(key, joined["host_cert"], timestamp=T0 + skew // 2)


@pytest_twisted.ensureDeferred
async def test_a_certificate_from_another_ca_is_not_renewed(auth: Auth) -> None:
    """A host certificate of another CA, even with a joined node's key id, is refused."""
    key = ed25519.Ed25519PrivateKey.generate()
    joined = await auth.join(key)
    forged = SSHCertificateAuthority.generate().sign_host_certificate(
        key.public_key(),
        key_id=_cert(joined["host_cert"]).key_id.decode(),
        principals=["web1", "web1.test.example", "10.1.2.3"],
        valid_after=int(T0) - 60,
        valid_before=int(T0) + DAY,
    )
    with pytest.raises(api.AccessDenied, match="not a host certificate from this"):
        await auth.renew(key, forged)


@pytest_twisted.ensureDeferred
async def test_a_removed_node_cannot_renew_and_its_name_is_free(auth: Auth) -> None:
    """`nodes rm` of a joined node forgets its identity: renewal is refused,
    and a new token joins a node under that name again."""
    key = ed25519.Ed25519PrivateKey.generate()
    joined = await auth.join(key)
    await auth.server.delete_node("web1")
    with pytest.raises(api.NotFoundError, match="join again with a token"):
        await auth.renew(key, joined["host_cert"])
    again = await auth.join(key)
    assert again["node_id"] != joined["node_id"]


@pytest_twisted.ensureDeferred
async def test_a_failure_after_the_identity_is_written_frees_the_name(
    auth: Auth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If signing fails once the identity is written, the identity goes and
    the failure is audited: the name is free for the next join."""

    def broken(*args: Any, **kw: Any) -> Any:
        raise ValueError("the host CA is broken")

    monkeypatch.setattr(auth.server, "sign_node_certificate", broken)
    with pytest.raises(ValueError, match="broken"):
        await auth.join(ed25519.Ed25519PrivateKey.generate())
    assert await auth.server.store.list_identities() == []
    assert await auth.server.store.list_nodes() == []
    [event] = await auth.events("node.join")
    assert not event.success and event.fields["reason"] == "signing failed"
    monkeypatch.undo()
    await auth.join(ed25519.Ed25519PrivateKey.generate())
