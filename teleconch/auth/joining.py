"""What a peer joining with a token may be called, and the principals it gets.

A join buys a TLS identity and an SSH host certificate: a name that is the
auth server's, a node's or another peer's would let the joiner pose as it.
The auth service therefore checks the requested name and address and derives
the host principals itself; nothing the caller lists is signed as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import NoReturn

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.interfaces import IReactorTime

from teleconch.addresses import host_of
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.certs import HOST_CERT_TTL
from teleconch.auth.protocol import JoinResult
from teleconch.auth.store import AlreadyExists, Store
from teleconch.auth.tokens import token_hash
from teleconch.auth.types import JoinedIdentity, Node, ProxyInfo
from teleconch.auth.validation import (
    NODE_NAME_RULE,
    is_host,
    is_loopback,
    is_node_name,
)
from teleconch.ca import BadPublicKey, SSHCertificateAuthority, parse_public_key
from teleconch.pki import AUTH_SERVER_NAME, ROLE_NODE, ROLE_PROXY, TLSAuthority

#: Names no joiner may take, whatever the cluster.
RESERVED_NAMES = frozenset({AUTH_SERVER_NAME, "localhost", "localhost.localdomain"})
RESERVED_PREFIX = "teleconch-"
#: Every joiner is reachable as these on its own machine (the all-in-one's
#: users dial localhost); a man in the middle on loopback is on that machine.
LOOPBACK_PRINCIPALS = ("localhost", "127.0.0.1", "::1")


class JoinRefusal(Exception):
    """Why a join is refused: ``reason`` for the audit log, the text for the joiner."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class Claims:
    """The names already spoken for in a cluster."""

    cluster_name: str
    nodes: Sequence[Node]
    identities: Sequence[JoinedIdentity]
    #: The proxies' public and SSH hosts (heartbeats) and the cluster's default
    #: public address: people and nodes dial them as the cluster's proxies.
    proxy_hosts: frozenset[str] = frozenset()

    def taken_by_node(self, host: str) -> Node | None:
        suffix = f".{self.cluster_name}"
        bare = host[: -len(suffix)] if host.endswith(suffix) else host
        for node in self.nodes:
            if bare == node.name or host == host_of(node.addr):
                return node
        return None

    def taken_by_identity(self, host: str) -> JoinedIdentity | None:
        suffix = f".{self.cluster_name}"
        bare = host[: -len(suffix)] if host.endswith(suffix) else host
        for identity in self.identities:
            if bare == identity.name or host in identity.principals:
                return identity
        return None

    def reserved(self, host: str) -> bool:
        """The cluster's own name stays free: the all-in-one's proxy takes it."""
        return (
            host in RESERVED_NAMES
            or host.startswith(RESERVED_PREFIX)
            or host == f"{AUTH_SERVER_NAME}.{self.cluster_name}"
        )

    def reserved_for_node(self, host: str) -> bool:
        """Also the cluster's own name (its host CA is trusted for it) and the
        proxies' hosts: a node may be neither."""
        return (
            self.reserved(host) or host == self.cluster_name or host in self.proxy_hosts
        )


def proxy_hosts(
    proxies: Iterable[ProxyInfo], default_public_addr: str
) -> frozenset[str]:
    """The hosts the cluster's proxies are reached at (loopback left out: a
    node on the proxy's machine may listen there too)."""
    addrs = [default_public_addr]
    for proxy in proxies:
        addrs += [proxy.public_addr, proxy.ssh_addr]
    hosts = (host_of(a) for a in addrs if a)
    return frozenset(h for h in hosts if h and not is_loopback(h))


async def cluster_claims(
    store: Store, cluster_name: str, default_public_addr: str
) -> Claims:
    """What is spoken for in the cluster now."""
    return Claims(
        cluster_name,
        await store.list_nodes(),
        await store.list_identities(),
        proxy_hosts(await store.list_proxies(), default_public_addr),
    )


def _check_claimable(
    what: str, host: str, claims: Claims, for_node: bool = False
) -> None:
    if claims.reserved(host) or (for_node and claims.reserved_for_node(host)):
        raise JoinRefusal(
            f"{what} {host!r} is reserved",
            f"{host!r} is reserved (the auth service's name, localhost and "
            "teleconch-* names are not for joiners, nor the cluster's name and "
            "its proxies' addresses for nodes): set teleconch.nodename (or the "
            "address) to another name",
        )
    node = claims.taken_by_node(host)
    if node is not None:
        raise JoinRefusal(
            f"{what} {host!r} is registered node {node.name}",
            f"{host!r} belongs to the registered node {node.name!r}: a joiner cannot "
            "take a node's name or address; set teleconch.nodename (or the public "
            "address) to another name",
        )
    peer = claims.taken_by_identity(host)
    if peer is not None:
        raise JoinRefusal(
            f"{what} {host!r} is taken by {peer.role} {peer.host_id}",
            f"a {peer.role} named {peer.name!r} has already joined this cluster and "
            f"holds {host!r}: give this one another teleconch.nodename",
        )


def check_join(
    name: str,
    addresses: Iterable[str],
    additional_principals: Sequence[str],
    claims: Claims,
    for_node: bool = False,
) -> None:
    """Raise JoinRefusal unless ``name`` and the addresses pose as nobody else.

    ``for_node``: a node also keeps off the cluster's name and the proxies'
    hosts (proxies behind one public name share it)."""
    if additional_principals:
        raise JoinRefusal(
            "additional principals requested",
            "additional principals are not accepted: the auth service derives a "
            "joiner's host principals from its name and public address",
        )
    if not is_node_name(name):
        raise JoinRefusal(
            "invalid name",
            f"{name[:80]!r} is not a valid name to join with: use {NODE_NAME_RULE}; "
            "set teleconch.nodename",
        )
    _check_claimable("name", name, claims, for_node)
    _check_claimable("name", f"{name}.{claims.cluster_name}", claims, for_node)
    for addr in addresses:
        host = host_of(addr)
        if not host or is_loopback(host):
            continue
        if not is_host(host):
            raise JoinRefusal(
                "invalid public address",
                f"{addr[:80]!r} is not a valid public address: use host:port with a "
                "DNS name or an IP address (no wildcards); check "
                "proxy_service.public_addr",
            )
        _check_claimable("address", host, claims, for_node)


def check_tls_public_key(pem: bytes) -> None:
    """Raise BadPublicKey unless ``pem`` is a key the TLS CA will certify."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadPublicKey(
            "the TLS public key is not a PEM public key: send the public half of "
            "the key made for this join"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise BadPublicKey("the TLS key is RSA under 2048 bits: use ECDSA P-256")
    elif not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise BadPublicKey("the TLS key's type is not supported: use ECDSA P-256")


def host_principals(
    host_id: str, name: str, cluster_name: str, addresses: Iterable[str]
) -> list[str]:
    """The principals of a joiner's host certificate, from checked inputs only."""
    principals = [host_id, name, f"{name}.{cluster_name}", *LOOPBACK_PRINCIPALS]
    for addr in addresses:
        host = host_of(addr)
        if host:
            principals.append(host)
    return list(dict.fromkeys(principals))


class Registrar:
    """A proxy or node trades a join token for its TLS identity and host certificate."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        log: AuditLog,
        cluster_name: str,
        tls_ca: TLSAuthority,
        host_ca: SSHCertificateAuthority,
        default_public_addr: str = "",
    ) -> None:
        self.store = store
        self.default_public_addr = default_public_addr
        self._clock = clock
        self.audit = log.audit
        self.cluster_name = cluster_name
        self._tls_ca = tls_ca
        self._host_ca = host_ca

    def _now(self) -> float:
        return self._clock.seconds()

    async def claims(self) -> Claims:
        """What is spoken for in the cluster now, proxies' hosts included."""
        return await cluster_claims(
            self.store, self.cluster_name, self.default_public_addr
        )

    async def register_using_token(
        self,
        *,
        token: str,
        role: str,
        name: str,
        public_addr: str,
        ssh_addr: str,
        additional_principals: Sequence[str],
        tls_public_key: bytes,
        ssh_public_key: str,
        client_addr: str,
    ) -> JoinResult:
        h = token_hash(token)

        async def refuse(
            reason: str,
            message: str,
            kind: type[api.AuthAPIError] = api.AccessDenied,
        ) -> NoReturn:
            await self.audit(
                "join",
                success=False,
                role=role,
                name=name,
                client_addr=client_addr,
                reason=reason,
            )
            raise kind(message)

        found = await self.store.get_token(h)
        if (
            found is None
            or found.kind != role
            or found.kind not in (ROLE_PROXY, ROLE_NODE)
        ):
            await refuse(
                "unknown token or wrong type",
                f"the join token is invalid, expired or already used: create a new one "
                f"with `teleconch-ctl tokens add --type={role}`",
            )
        addresses = (public_addr, ssh_addr)
        claims = await self.claims()
        try:
            check_join(
                name, addresses, additional_principals, claims, role == ROLE_NODE
            )
        except JoinRefusal as e:
            await refuse(e.reason, str(e))
        # Both keys are read before the token is spent: a bad one costs nothing.
        try:
            check_tls_public_key(tls_public_key)
        except BadPublicKey as e:
            await refuse("bad TLS key", f"TLS key: {e}", api.BadParameter)
        try:
            ssh_key = parse_public_key(ssh_public_key)
        except BadPublicKey as e:
            await refuse("bad host key", f"host key: {e}", api.BadParameter)
        if await self.store.consume_token(h, self._now()) is None:
            await refuse(
                "token expired",
                f"the join token has expired: create a new one with "
                f"`teleconch-ctl tokens add --type={role}`",
            )
        now = self._now()
        host_id = str(uuid.uuid4())
        principals = host_principals(host_id, name, self.cluster_name, addresses)
        try:
            await self.store.add_identity(
                JoinedIdentity(host_id, role, name, principals, now)
            )
        except AlreadyExists:
            await refuse(
                "name taken meanwhile",
                f"another {role} joined as {name!r} at the same moment: create a new "
                "token and join under another teleconch.nodename",
            )
        try:
            tls_cert = self._tls_ca.issue(
                tls_public_key, role, host_id, now, HOST_CERT_TTL, dns_names=[name]
            )
            host_cert = self._host_ca.sign_host_certificate(
                ssh_key,
                key_id=f"{host_id}.{self.cluster_name}",
                principals=principals,
                valid_after=int(now) - 60,
                valid_before=int(now) + HOST_CERT_TTL,
            )
        except BaseException:
            # The name must not stay taken by a joiner that got nothing.
            await self.store.delete_identity(host_id)
            await self.audit(
                "join",
                success=False,
                role=role,
                name=name,
                client_addr=client_addr,
                reason="signing failed",
            )
            raise
        await self.audit(
            "join",
            role=role,
            name=name,
            host_id=host_id,
            client_addr=client_addr,
            principals=principals,
        )
        return JoinResult(
            host_id, self.cluster_name, tls_cert, (self._tls_ca.cert_pem,), host_cert
        )
