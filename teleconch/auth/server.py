"""AuthServer: the rules of the cluster, behind the Auth API.

It signs certificates, checks passwords and one-time codes, keeps users,
roles and tokens, and writes the audit log.  It knows nothing of AMP or TLS:
``teleconch.auth.api`` turns commands into calls here, naming the caller.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import attrs
import bcrypt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import SSHCertPublicKeyTypes
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from teleconch import __version__, totp
from teleconch.auth import protocol as api
from teleconch.auth.audit import bounded_fields, bounded_user
from teleconch.auth.joining import Claims, JoinRefusal, check_join, host_principals
from teleconch.auth.store import AlreadyExists, Store
from teleconch.auth.types import (
    ALL_NODES,
    INTERNAL_LOGINS,
    AuditEvent,
    JoinedIdentity,
    Node,
    ProxyInfo,
    Role,
    Token,
    User,
)
from teleconch.auth.validation import (
    LABEL,
    LOGIN,
    NODE_NAME,
    ROLE_NAME,
    USER_NAME_RULE,
    is_ip,
    is_user_name,
)
from teleconch.ca import (
    STANDARD_USER_EXTENSIONS,
    BadPublicKey,
    SSHCertificateAuthority,
    fingerprint,
    parse_public_key,
)
from teleconch.config import parse_host_port
from teleconch.pki import ROLE_NODE, ROLE_PROXY, TLSAuthority, TLSIdentity
from teleconch.text import printable

log = Logger()

MAX_CERT_TTL = 12 * 3600
MIN_CERT_TTL = 60
INVITE_TTL = 3600
JOIN_TOKEN_TTL = 30 * 60
#: Host certificates and TLS identities live until the CA is rotated, as in
#: Teleport; user certificates are the short-lived ones.
HOST_CERT_TTL = 10 * 365 * 86400
LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW = 10 * 60
LOCKOUT_DURATION = 20 * 60
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 4096
ROLES_EXTENSION = "teleconch-roles"
#: The user's own logins, so the proxy can expand {{internal.logins}} per role.
TRAITS_EXTENSION = "teleconch-traits"
NO_LOGIN_PREFIX = "-teleconch-nologin-"

LOGIN_FAILED = (
    "login failed: wrong user name, password or one-time code "
    "(check that your device's clock is right)"
)


BUILTIN_ROLES = (
    Role(
        name="access",
        logins=(INTERNAL_LOGINS,),
        node_labels=ALL_NODES,
        rules=(),
        builtin=True,
    ),
    Role(
        name="auditor",
        logins=(),
        node_labels={},
        rules=("events:read", "sessions:read"),
        builtin=True,
    ),
    Role(
        name="admin",
        logins=(INTERNAL_LOGINS,),
        node_labels=ALL_NODES,
        rules=("*",),
        builtin=True,
    ),
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _prehash(password: str) -> bytes:
    """bcrypt reads at most 72 bytes; hash first so every byte counts."""
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@attrs.frozen
class Identity:
    """Who is calling the Auth API, from its TLS client certificate."""

    role: str
    name: str


@attrs.frozen
class Invite:
    user: str
    token: str
    url: str
    expires: float


@attrs.frozen
class IssuedCertificate:
    username: str
    cert: str
    valid_before: int
    host_signers: list[dict[str, Any]]


@attrs.frozen
class JoinResult:
    host_id: str
    tls_cert: bytes
    tls_ca_certs: list[bytes]
    ssh_host_cert: str


def role_to_json(role: Role) -> dict[str, Any]:
    return {
        "name": role.name,
        "logins": list(role.logins),
        "node_labels": {k: list(v) for k, v in role.node_labels.items()},
        "max_session_ttl": role.max_session_ttl,
        "rules": list(role.rules),
        "builtin": role.builtin,
    }


def node_to_json(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "name": node.name,
        "addr": node.addr,
        "labels": dict(node.labels),
        "created": node.created,
        "cert_expires": node.cert_expires or None,
    }


def clean_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    """A node's labels as strings, or BadParameter naming the bad one."""
    clean: dict[str, str] = {}
    for key, value in labels.items():
        for item in (str(key), str(value)):
            if not LABEL.fullmatch(item) or "*" in item:
                raise api.BadParameter(f"{item!r} is not a valid label key or value")
        clean[str(key)] = str(value)
    return clean


def expand_logins(roles: Iterable[Role], user_logins: Sequence[str]) -> list[str]:
    """The logins the roles grant, with the user's own in place of the template."""
    out: set[str] = set()
    for role in roles:
        for login in role.logins:
            if login == INTERNAL_LOGINS:
                out.update(user_logins)
            else:
                out.add(login)
    return sorted(out)


class AuthServer:
    """The cluster's brain; every method is called on the reactor thread."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        threads: Any,
        store: Store,
        cluster_name: str,
        user_ca: SSHCertificateAuthority,
        host_ca: SSHCertificateAuthority,
        tls_ca: TLSAuthority,
        default_public_addr: str,
        auth_addr: str,
        bcrypt_rounds: int = 12,
        tls_identity: TLSIdentity | None = None,
        node_cert_ttl: int = 30 * 86400,
    ) -> None:
        self._clock = clock
        #: A reactor providing IReactorThreads and IReactorFromThreads.
        self._threads = threads
        self.store = store
        self.cluster_name = cluster_name
        self._user_ca = user_ca
        self._host_ca = host_ca
        self._tls_ca = tls_ca
        self._default_public_addr = default_public_addr
        self.auth_addr = auth_addr
        self._bcrypt_rounds = bcrypt_rounds
        self._dummy_hash: bytes | None = None
        #: The auth service's own TLS identity: it signs what nodes must trust.
        self.tls_identity = tls_identity
        #: The lifetime of a joined node's host certificate.
        self.node_cert_ttl = node_cert_ttl

    # --- plumbing ------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    async def _in_thread(self, f: Any, *args: Any) -> Any:
        pool = self._threads.getThreadPool()
        return await deferToThreadPool(self._threads, pool, f, *args)

    async def _hash_password(self, password: str) -> bytes:
        salt = bcrypt.gensalt(self._bcrypt_rounds)
        hashed: bytes = await self._in_thread(bcrypt.hashpw, _prehash(password), salt)
        return hashed

    async def _check_password(self, password: str, hashed: bytes | None) -> bool:
        if hashed is None:
            # Spend the same time as for a real user, so timing does not tell.
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash_password(secrets.token_hex(16))
            hashed = self._dummy_hash
        ok: bool = await self._in_thread(bcrypt.checkpw, _prehash(password), hashed)
        return ok

    async def audit(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        user = bounded_user(user)
        fields = bounded_fields(fields)
        await self.store.append_event(
            AuditEvent(
                event=event, time=self._now(), user=user, success=success, fields=fields
            )
        )
        log.info(
            "audit {event} user={user} success={success} {fields}",
            event=event,
            user=user,
            success=success,
            fields=json.dumps(fields, sort_keys=True),
        )

    async def start(self) -> None:
        """Write the built-in roles, so their definition follows the code."""
        for role in BUILTIN_ROLES:
            await self.store.upsert_role(role)
        stored = await self.store.get_setting("cluster_name")
        if stored is None:
            await self.store.set_setting("cluster_name", self.cluster_name)
        elif stored != self.cluster_name:
            raise api.BadParameter(
                f"this data directory belongs to cluster {stored!r}, not "
                f"{self.cluster_name!r}: a cluster cannot be renamed; set "
                f"auth_service.cluster_name back to {stored!r}"
            )

    # --- cluster ---------------------------------------------------------

    def ping(self, caller: Identity) -> dict[str, Any]:
        return {
            "tls_ca_certs": [self._tls_ca.cert_pem],
            "cluster_name": self.cluster_name,
            "server_version": __version__,
            "caller_role": caller.role,
            "caller_name": caller.name,
        }

    def cluster_cas(self) -> dict[str, Any]:
        return {
            "cluster_name": self.cluster_name,
            "user_ca_keys": [self._user_ca.public_key_line()],
            "host_ca_keys": [self._host_ca.public_key_line()],
        }

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

    async def heartbeat(
        self, caller: Identity, public_addr: str, ssh_addr: str
    ) -> None:
        await self.store.upsert_proxy(
            ProxyInfo(
                id=caller.name,
                name=caller.name,
                public_addr=public_addr,
                ssh_addr=ssh_addr,
                last_seen=self._now(),
            )
        )

    async def public_addr(self) -> str:
        """The web address people and nodes reach the cluster at."""
        return await self._public_addr()

    async def _public_addr(self) -> str:
        proxies = await self.store.list_proxies()
        if proxies:
            return max(proxies, key=lambda p: p.last_seen).public_addr
        return self._default_public_addr

    # --- joining ---------------------------------------------------------

    async def create_token(self, kind: str, ttl: int) -> dict[str, Any]:
        if kind not in (ROLE_PROXY, ROLE_NODE):
            raise api.BadParameter(
                f"unknown token type {kind!r}: use --type=proxy or --type=node"
            )
        if not 0 < ttl <= 7 * 86400:
            raise api.BadParameter("token TTL must be between 1 second and 7 days")
        token = secrets.token_hex(32)
        now = await self._add_token(token, kind, ttl)
        await self.audit("token.create", kind=kind, name=token[:8], ttl=ttl)
        return {
            "token": token,
            "expires": now + ttl,
            "ca_pin": self._tls_ca.pin,
            "auth_addr": self.auth_addr,
            "proxy_addr": await self._public_addr(),
        }

    async def list_tokens(self) -> list[dict[str, Any]]:
        now = self._now()
        return [
            {"name": t.name, "kind": t.kind, "user": t.user, "expires": t.expires}
            for t in await self.store.list_tokens()
            if t.expires > now
        ]

    async def delete_token(self, name: str) -> None:
        for t in await self.store.list_tokens():
            if t.name == name or t.token_hash == token_hash(name):
                await self.store.delete_token(t.token_hash)
                await self.audit("token.delete", name=t.name, kind=t.kind)
                return
        raise api.NotFoundError(
            f"no token {name!r}; list them with `teleconch-ctl tokens ls`"
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

        async def refuse(reason: str, message: str) -> NoReturn:
            await self.audit(
                "join",
                success=False,
                role=role,
                name=name,
                client_addr=client_addr,
                reason=reason,
            )
            raise api.AccessDenied(message)

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
        claims = Claims(
            self.cluster_name,
            await self.store.list_nodes(),
            await self.store.list_identities(),
        )
        try:
            check_join(name, addresses, additional_principals, claims)
        except JoinRefusal as e:
            await refuse(e.reason, str(e))
        try:
            ssh_key = parse_public_key(ssh_public_key)
        except BadPublicKey as e:
            raise api.BadParameter(f"host key: {e}") from None
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
        await self.audit(
            "join",
            role=role,
            name=name,
            host_id=host_id,
            client_addr=client_addr,
            principals=principals,
        )
        return JoinResult(host_id, tls_cert, [self._tls_ca.cert_pem], host_cert)

    # --- users and roles ---------------------------------------------------

    async def _check_roles_exist(self, roles: Sequence[str]) -> None:
        known = {r.name for r in await self.store.list_roles()}
        missing = [r for r in roles if r not in known]
        if missing:
            raise api.NotFoundError(
                f"no such role: {', '.join(missing)} (see `teleconch-ctl roles ls`)"
            )

    async def _add_token(
        self, token: str, kind: str, ttl: float, user: str | None = None
    ) -> float:
        """Keep a new single-use token (its hash only); return the time it was made."""
        now = self._now()
        await self.store.add_token(
            Token(
                token_hash=token_hash(token),
                name=token[:8],
                kind=kind,
                created=now,
                expires=now + ttl,
                user=user,
                totp_secret=totp.new_secret() if user is not None else None,
            )
        )
        return now

    async def _new_invite(self, user: str, kind: str) -> Invite:
        token = secrets.token_urlsafe(32)
        now = await self._add_token(token, kind, INVITE_TTL, user)
        url = f"https://{await self._public_addr()}/web/invite/{token}"
        return Invite(user=user, token=token, url=url, expires=now + INVITE_TTL)

    async def create_user(
        self, name: str, logins: Sequence[str], roles: Sequence[str]
    ) -> Invite:
        if not is_user_name(name):
            raise api.BadParameter(
                f"{printable(name, 80)!r} is not a valid user name: use {USER_NAME_RULE}"
            )
        for login in logins:
            if not LOGIN.fullmatch(login):
                raise api.BadParameter(
                    f"{login!r} is not a valid login: lower-case letters, digits, _ . -"
                )
        roles = list(dict.fromkeys(roles or ["access"]))
        await self._check_roles_exist(roles)
        user = User(
            name=name,
            logins=tuple(logins),
            roles=tuple(roles),
            status="invited",
            created=self._now(),
        )
        try:
            await self.store.create_user(user)
        except AlreadyExists:
            raise api.AlreadyExistsError(
                f"user {name!r} already exists; `teleconch-ctl users reset {name}` "
                "makes a new invite"
            ) from None
        invite = await self._new_invite(name, "invite")
        await self.audit("user.create", user=name, logins=list(logins), roles=roles)
        return invite

    async def reset_user(self, name: str) -> Invite:
        user = await self.store.get_user(name)
        if user is None:
            raise api.NotFoundError(f"no user {name!r}")
        await self.store.delete_user_tokens(name)
        await self.store.clear_login_failures(name)
        await self.store.set_lock(name, 0)
        invite = await self._new_invite(name, "reset")
        await self.audit("user.reset", user=name)
        return invite

    async def unlock_user(self, name: str) -> bool:
        """Lift a lock-out on a user (known, or a name someone kept trying)."""
        user = await self.store.get_user(name)
        lock = await self.store.get_lock(name)
        now = self._now()
        locked = lock is not None and lock > now
        if user is None and not locked:
            raise api.NotFoundError(
                f"no user {printable(name, 80)!r}; see `teleconch-ctl users ls`"
            )
        await self.store.clear_login_failures(name)
        await self.store.set_lock(name, 0)
        await self.audit("user.unlock", user=name, was_locked=locked)
        return locked

    async def list_users(self) -> list[dict[str, Any]]:
        now = self._now()
        out = []
        locks = await self.store.user_locks(now)
        for u in await self.store.list_users():
            lock = locks.get(u.name)
            out.append(
                {
                    "name": u.name,
                    "logins": list(u.logins),
                    "roles": list(u.roles),
                    "status": "locked" if lock and lock > now else u.status,
                    "locked_until": lock if lock and lock > now else None,
                    "created": u.created,
                }
            )
        return out

    async def delete_user(self, name: str) -> None:
        if not await self.store.delete_user(name):
            raise api.NotFoundError(f"no user {name!r}")
        await self.audit("user.delete", user=name)

    async def upsert_role(self, spec: Mapping[str, Any]) -> None:
        role = self._role_from_json(spec)
        existing = await self.store.get_role(role.name)
        if existing is not None and existing.builtin:
            raise api.BadParameter(
                f"{role.name!r} is a built-in role; choose another name"
            )
        await self.store.upsert_role(role)
        await self.audit("role.upsert", role=role.name, spec=role_to_json(role))

    def _role_from_json(self, spec: Mapping[str, Any]) -> Role:
        try:
            name = str(spec["name"])
            logins = [str(x) for x in spec.get("logins", [])]
            labels = {
                str(k): [str(v) for v in vs]
                for k, vs in spec.get("node_labels", {}).items()
            }
            ttl = int(spec.get("max_session_ttl", MAX_CERT_TTL))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise api.BadParameter(f"malformed role: {e}") from None
        if not ROLE_NAME.fullmatch(name):
            raise api.BadParameter(f"{name!r} is not a valid role name")
        for login in logins:
            if login != INTERNAL_LOGINS and not LOGIN.fullmatch(login):
                raise api.BadParameter(f"{login!r} is not a valid login")
        for key, values in labels.items():
            for item in (key, *values):
                if not LABEL.fullmatch(item):
                    raise api.BadParameter(
                        f"{item!r} is not a valid label key or value"
                    )
        if not 60 <= ttl <= MAX_CERT_TTL:
            raise api.BadParameter("max_session_ttl must be between 1m and 12h")
        return Role(name=name, logins=logins, node_labels=labels, max_session_ttl=ttl)

    async def list_roles(self) -> list[dict[str, Any]]:
        return [role_to_json(r) for r in await self.store.list_roles()]

    async def delete_role(self, name: str) -> None:
        role = await self.store.get_role(name)
        if role is None:
            raise api.NotFoundError(f"no role {name!r}")
        if role.builtin:
            raise api.BadParameter(f"{name!r} is a built-in role and cannot be removed")
        users = await self.store.users_with_role(name)
        if users:
            raise api.BadParameter(
                f"role {name!r} is held by {', '.join(users)}; take it from them first"
            )
        await self.store.delete_role(name)
        await self.audit("role.delete", role=name)

    # --- sign-up -------------------------------------------------------------

    async def _live_invite(self, token: str) -> Token:
        found = await self.store.get_token(token_hash(token))
        if (
            found is None
            or found.kind not in ("invite", "reset")
            or found.expires <= self._now()
        ):
            raise api.NotFoundError(
                "this invite is invalid or has expired: ask your administrator for a new "
                "one (`teleconch-ctl users reset NAME`)"
            )
        return found

    async def get_invite(self, token: str) -> dict[str, Any]:
        found = await self._live_invite(token)
        assert found.user is not None and found.totp_secret is not None
        return {
            "user": found.user,
            "totp_secret": found.totp_secret,
            "otpauth_uri": totp.otpauth_uri(
                found.totp_secret, found.user, self.cluster_name
            ),
            "expires": found.expires,
        }

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        found = await self._live_invite(token)
        assert found.user is not None and found.totp_secret is not None
        if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
            raise api.BadParameter(
                f"the password must be at least {MIN_PASSWORD_LENGTH} characters long"
            )
        counter = totp.match(found.totp_secret, otp_token, self._now())
        if counter is None:
            await self.audit(
                "user.invite.complete",
                user=found.user,
                success=False,
                client_addr=client_addr,
                reason="wrong one-time code",
            )
            raise api.AuthenticationFailed(
                "the one-time code is wrong: enter the current code from your "
                "authenticator app (check that your device's clock is right)"
            )
        hashed = await self._hash_password(password)
        user = await self.store.complete_invite(
            token_hash(token), self._now(), hashed, found.totp_secret, counter
        )
        if user is None:
            raise api.NotFoundError("this invite was used or has expired meanwhile")
        await self.store.clear_login_failures(user.name)
        await self.audit(
            "user.invite.complete", user=user.name, client_addr=client_addr
        )
        return user.name

    # --- login ---------------------------------------------------------------

    async def _fail_login(self, name: str, client_addr: str, reason: str) -> NoReturn:
        now = self._now()
        await self.store.add_login_failure(name, now)
        await self.audit(
            "user.login",
            user=name,
            success=False,
            client_addr=client_addr,
            reason=reason,
        )
        failures = await self.store.count_login_failures(name, now - LOCKOUT_WINDOW)
        if failures >= LOCKOUT_FAILURES:
            until = now + LOCKOUT_DURATION
            await self.store.set_lock(name, until)
            await self.audit(
                "user.locked",
                user=name,
                success=False,
                client_addr=client_addr,
                until=until,
                failures=failures,
            )
            raise api.LockedOut(self._locked_message(until))
        raise api.AuthenticationFailed(LOGIN_FAILED)

    @staticmethod
    def _locked_message(until: float) -> str:
        return (
            f"too many failed logins: this account is locked until {_iso(until)}; "
            "try again then, or ask an administrator to reset it"
        )

    async def check_login(
        self, name: str, password: str, otp_token: str, client_addr: str
    ) -> User:
        """Password and one-time code, with lock-out; the one door for people."""
        if not is_user_name(name):
            await self.audit(
                "user.login",
                user=name,
                success=False,
                client_addr=client_addr,
                reason="invalid user name",
            )
            raise api.BadParameter(
                f"{printable(name, 80)!r} is not a valid user name: use {USER_NAME_RULE}"
            )
        now = self._now()
        until = await self.store.get_lock(name)
        if until is not None and until > now:
            await self.audit(
                "user.login",
                user=name,
                success=False,
                client_addr=client_addr,
                reason="locked",
            )
            raise api.LockedOut(self._locked_message(until))
        user = await self.store.get_user(name)
        active = user is not None and user.status == "active"
        hashed = user.password_hash if user is not None and active else None
        ok = await self._check_password(password, hashed)
        if user is None or not active or not ok or user.totp_secret is None:
            reason = (
                "unknown user"
                if user is None
                else ("sign-up not completed" if not active else "wrong password")
            )
            await self._fail_login(name, client_addr, reason)
        counter = totp.match(user.totp_secret, otp_token, self._now())
        if counter is None:
            await self._fail_login(name, client_addr, "wrong one-time code")
        elif not await self.store.advance_totp_counter(name, counter):
            await self._fail_login(name, client_addr, "one-time code already used")
        await self.store.clear_login_failures(name)
        return user

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
        try:
            key = parse_public_key(pub_key)
        except BadPublicKey as e:
            raise api.BadParameter(str(e)) from None
        account = await self.check_login(user, password, otp_token, client_addr)
        roles = await self.store.get_roles(account.roles)
        principals = expand_logins(roles, account.logins) or [
            f"{NO_LOGIN_PREFIX}{uuid.uuid4()}"
        ]
        limit = min([MAX_CERT_TTL, *(r.max_session_ttl for r in roles)])
        ttl = max(MIN_CERT_TTL, min(ttl if ttl > 0 else MAX_CERT_TTL, limit))
        now = int(self._now())
        extensions = dict(STANDARD_USER_EXTENSIONS)
        extensions[ROLES_EXTENSION] = json.dumps(
            {"version": "v1", "roles": [r.name for r in roles]}, separators=(",", ":")
        ).encode()
        extensions[TRAITS_EXTENSION] = json.dumps(
            {"logins": list(account.logins)}, separators=(",", ":")
        ).encode()
        cert = self._user_ca.sign_user_certificate(
            key,
            key_id=account.name,
            principals=principals,
            valid_after=now - 60,
            valid_before=now + ttl,
            extensions=extensions,
        )
        await self.audit(
            "user.login",
            user=account.name,
            client_addr=client_addr,
            method="password+otp",
        )
        await self.audit(
            "cert.create",
            user=account.name,
            client_addr=client_addr,
            ttl=ttl,
            principals=principals,
            roles=[r.name for r in roles],
            key=fingerprint(key),
        )
        signers = [
            {
                "domain_name": self.cluster_name,
                "checking_keys": [self._host_ca.public_key_line()],
            }
        ]
        return IssuedCertificate(account.name, cert, now + ttl, signers)

    # --- nodes -----------------------------------------------------------------

    async def upsert_node(
        self, name: str, addr: str, labels: Mapping[str, Any]
    ) -> Node:
        if not NODE_NAME.fullmatch(name):
            raise api.BadParameter(
                f"{name!r} is not a valid node name: letters, digits, '.', '-'"
            )
        try:
            parse_host_port(addr)
        except ValueError as e:
            raise api.BadParameter(f"--addr: {e}") from None
        clean = clean_labels(labels)
        for identity in await self.store.list_identities():
            if name == identity.name or name in identity.principals:
                raise api.AlreadyExistsError(
                    f"{name!r} is the name of the {identity.role} {identity.host_id} "
                    "that joined this cluster: give the node another name"
                )
        existing = await self.store.get_node(name)
        node = Node(
            id=existing.id if existing and existing.name == name else str(uuid.uuid4()),
            name=name,
            addr=addr,
            labels=clean,
            created=existing.created if existing else self._now(),
            cert_expires=existing.cert_expires if existing else 0.0,
        )
        await self.store.upsert_node(node)
        await self.audit("node.upsert", node=name, addr=addr, labels=clean)
        return node

    async def list_nodes(self) -> list[dict[str, Any]]:
        return [node_to_json(n) for n in await self.store.list_nodes()]

    async def delete_node(self, name: str) -> None:
        node = await self.store.get_node(name)
        if node is None or not await self.store.delete_node(node.id):
            raise api.NotFoundError(f"no node {name!r}; see `teleconch-ctl nodes ls`")
        # A node that joined itself gives its name up with it, and can no
        # longer renew its certificate: it joins again with a new token.
        joined = [
            i
            for i in await self.store.list_identities()
            if i.host_id == node.id and i.role == ROLE_NODE
        ]
        for identity in joined:
            await self.store.delete_identity(identity.host_id)
        await self.audit("node.delete", node=node.name, id=node.id, joined=bool(joined))

    async def sign_host_certificate(
        self, public_key: str, hosts: Sequence[str], ttl: int
    ) -> tuple[str, list[str]]:
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
        return cert, principals

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

    def host_ca_public_key(self) -> Ed25519PublicKey:
        return self._host_ca.public_key

    async def get_roles(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return [role_to_json(r) for r in await self.store.get_roles(names)]

    # --- audit -----------------------------------------------------------------

    async def search_events(
        self,
        since: float | None,
        until: float | None,
        events: Sequence[str],
        user: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        found = await self.store.search_events(
            since=since,
            until=until,
            events=list(events) or None,
            user=user,
            limit=max(1, min(limit, 10000)),
        )
        return [
            {
                "id": e.id,
                "event": e.event,
                "time": e.time,
                "user": e.user,
                "success": e.success,
                **{"fields": dict(e.fields)},
            }
            for e in found
        ]
