"""Certificate issuing: short-lived user certificates after a login, host
certificates for nodes, and the CAs' public keys in the forms sshd takes."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import SSHCertPublicKeyTypes
from twisted.internet.interfaces import IReactorTime

from teleconch.addresses import parse_host_port
from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.login import Logins
from teleconch.auth.protocol import ClusterCAs, HostCertificate, IssuedCertificate
from teleconch.auth.rbac import (
    MAX_CERT_TTL,
    MIN_CERT_TTL,
    ROLES_EXTENSION,
    TRAITS_EXTENSION,
    expand_logins,
)
from teleconch.auth.store import Store
from teleconch.auth.types import HostSigner, Role
from teleconch.auth.validation import is_ip
from teleconch.ca import (
    STANDARD_USER_EXTENSIONS,
    BadPublicKey,
    SSHCertificateAuthority,
    fingerprint,
    parse_public_key,
)

#: Host certificates and TLS identities live until the CA is rotated, as in
#: Teleport; user certificates are the short-lived ones.
HOST_CERT_TTL = 10 * 365 * 86400
NO_LOGIN_PREFIX = "-teleconch-nologin-"


def session_ttl_limit(roles: Sequence[Role]) -> int:
    """The longest a user certificate or a web session of these roles lives:
    the shortest ``max_session_ttl`` among them, at most 12 hours."""
    return min([MAX_CERT_TTL, *(r.max_session_ttl for r in roles)])


def user_public_key(pub_key: str) -> SSHCertPublicKeyTypes:
    """The key a user certificate is asked for, or BadParameter saying why not."""
    try:
        return parse_public_key(pub_key)
    except BadPublicKey as e:
        raise api.BadParameter(str(e)) from None


class Certificates:
    """The user and host CAs at work."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        log: AuditLog,
        logins: Logins,
        cluster_name: str,
        user_ca: SSHCertificateAuthority,
        host_ca: SSHCertificateAuthority,
        node_cert_ttl: int,
    ) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit
        self._logins = logins
        self.cluster_name = cluster_name
        self._user_ca = user_ca
        self._host_ca = host_ca
        #: The lifetime of a joined node's host certificate.
        self.node_cert_ttl = node_cert_ttl

    def _now(self) -> float:
        return self._clock.seconds()

    # --- the CAs' public keys --------------------------------------------------

    def cluster_cas(self) -> ClusterCAs:
        return ClusterCAs(
            cluster_name=self.cluster_name,
            user_ca_keys=(self._user_ca.public_key_line(),),
            host_ca_keys=(self._host_ca.public_key_line(),),
        )

    def export_ca(self, kind: str) -> list[str]:
        if kind == "user":
            return [f"{self._user_ca.public_key_line()} {self.cluster_name}-user-ca"]
        if kind == "host":
            return [self.known_hosts_line(self._host_ca.public_key_line())]
        raise api.BadParameter(
            f"unknown CA type {kind!r}: use --type=user or --type=host"
        )

    def known_hosts_line(
        self, host_ca_line: str, extra_patterns: Sequence[str] = ()
    ) -> str:
        patterns = ",".join(
            [*extra_patterns, f"*.{self.cluster_name}", self.cluster_name]
        )
        return f"@cert-authority {patterns} {host_ca_line}"

    def host_ca_public_key(self) -> Ed25519PublicKey:
        return self._host_ca.public_key

    # --- user certificates -----------------------------------------------------

    async def authenticate_ssh_user(
        self,
        *,
        user: str,
        password: str,
        otp_token: str,
        pub_key: str,
        ttl: int,
        client_addr: str,
    ) -> IssuedCertificate:
        key = user_public_key(pub_key)
        account = await self._logins.check_login(user, password, otp_token, client_addr)
        roles = await self.store.get_roles(account.roles)
        limit = session_ttl_limit(roles)
        ttl = max(MIN_CERT_TTL, min(ttl if ttl > 0 else MAX_CERT_TTL, limit))
        now = int(self._now())
        await self.audit(
            "user.login",
            user=account.name,
            client_addr=client_addr,
            method="password+otp",
        )
        cert = await self.issue_user_certificate(
            key, account.name, roles, account.logins, now + ttl, client_addr
        )
        signers = (
            HostSigner(
                domain_name=self.cluster_name,
                checking_keys=(self._host_ca.public_key_line(),),
            ),
        )
        return IssuedCertificate(account.name, cert, now + ttl, signers)

    async def issue_user_certificate(
        self,
        key: SSHCertPublicKeyTypes,
        user: str,
        roles: Sequence[Role],
        logins: Sequence[str],
        valid_before: int,
        client_addr: str,
        **audit_fields: Any,
    ) -> str:
        """The one way a user certificate is made (``teleconch login`` and web
        sessions alike): principals from the roles, the roles and the user's
        logins in extensions, valid from a minute ago (clock skew) to
        ``valid_before``; audited as ``cert.create``."""
        principals = expand_logins(roles, logins) or [
            f"{NO_LOGIN_PREFIX}{uuid.uuid4()}"
        ]
        now = int(self._now())
        extensions = dict(STANDARD_USER_EXTENSIONS)
        extensions[ROLES_EXTENSION] = json.dumps(
            {"version": "v1", "roles": [r.name for r in roles]}, separators=(",", ":")
        ).encode()
        extensions[TRAITS_EXTENSION] = json.dumps(
            {"logins": list(logins)}, separators=(",", ":")
        ).encode()
        cert = self._user_ca.sign_user_certificate(
            key,
            key_id=user,
            principals=principals,
            valid_after=now - 60,
            valid_before=valid_before,
            extensions=extensions,
        )
        await self.audit(
            "cert.create",
            user=user,
            client_addr=client_addr,
            ttl=valid_before - now,
            principals=principals,
            roles=[r.name for r in roles],
            key=fingerprint(key),
            **audit_fields,
        )
        return cert

    # --- host certificates -----------------------------------------------------

    async def sign_host_certificate(
        self, public_key: str, hosts: Sequence[str], ttl: int
    ) -> HostCertificate:
        try:
            key = parse_public_key(public_key)
        except BadPublicKey as e:
            raise api.BadParameter(str(e)) from None
        names = [h.strip() for h in hosts if h.strip()]
        if not names:
            raise api.BadParameter("--host needs at least one name")
        principals: list[str] = []
        for name in names:
            principals.append(name)
            suffix = f".{self.cluster_name}"
            if not name.endswith(suffix) and not is_ip(name):
                principals.append(name + suffix)
        principals = list(dict.fromkeys(principals))
        ttl = ttl if 0 < ttl <= HOST_CERT_TTL else HOST_CERT_TTL
        now = int(self._now())
        cert = self._host_ca.sign_host_certificate(
            key,
            key_id=f"{names[0]}.{self.cluster_name}",
            principals=principals,
            valid_after=now - 60,
            valid_before=now + ttl,
        )
        await self.audit(
            "cert.create",
            kind="host",
            principals=principals,
            key=fingerprint(key),
            ttl=ttl,
        )
        return HostCertificate(cert, tuple(principals))

    async def sign_forwarding_host_certificate(
        self, proxy: str, public_key: str, target: str
    ) -> api.ForwardingHostCertificate:
        """The recording proxy's key certified as the registered node ``target``.

        Principals come from the node record only (its name, ``name.<cluster>``,
        its address host), so a proxy cannot get a certificate for a name the
        cluster does not know; the proxy's name is in the key id and the audit.
        """
        try:
            key = parse_public_key(public_key)
        except BadPublicKey as e:
            raise api.BadParameter(str(e)) from None
        if not isinstance(key, Ed25519PublicKey):
            raise api.BadParameter(
                "a forwarding host certificate is for the proxy's ssh-ed25519 "
                "host key only"
            )
        node = await self.store.get_node(target)
        if node is None or node.name != target:
            raise api.NotFoundError(
                f"no registered node {target!r}: recording proxy mode reaches "
                "registered nodes only (see `teleconch-ctl nodes ls`)"
            )
        principals = [node.name, f"{node.name}.{self.cluster_name}"]
        with contextlib.suppress(ValueError):  # registration checked it
            principals.append(parse_host_port(node.addr).host)
        principals = list(dict.fromkeys(principals))
        now = int(self._now())
        valid_before = now + api.FORWARDING_CERT_TTL
        cert = self._host_ca.sign_host_certificate(
            key,
            key_id=f"{proxy}:forwarding:{node.name}.{self.cluster_name}",
            principals=principals,
            valid_after=now - 60,
            valid_before=valid_before,
        )
        await self.audit(
            "cert.host.forwarding",
            proxy=proxy,
            node=node.name,
            principals=principals,
            key=fingerprint(key),
            ttl=api.FORWARDING_CERT_TTL,
        )
        return api.ForwardingHostCertificate(cert, tuple(principals), valid_before)

    def sign_node_certificate(
        self,
        key: SSHCertPublicKeyTypes,
        key_id: str,
        principals: Sequence[str],
    ) -> tuple[str, int]:
        """A joined node's host certificate, for node_cert_ttl; and its expiry."""
        now = int(self._now())
        valid_before = now + self.node_cert_ttl
        cert = self._host_ca.sign_host_certificate(
            key,
            key_id=key_id,
            principals=principals,
            valid_after=now - 60,
            valid_before=valid_before,
        )
        return cert, valid_before
