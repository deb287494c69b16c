"""The cluster, its people and their logins: joining, users, roles, tokens, sign-up."""

from __future__ import annotations

import attrs

from teleconch.auth.protocol.common import ANONYMOUS, CLUSTER_ROLES, Name
from teleconch.auth.types import (
    HostSigner,
    Role,
    RoleSpec,
    TokenEntry,
    UserEntry,
)
from teleconch.auth.wire import (
    AuthCommand,
    Empty,
)
from teleconch.pki import ROLE_ADMIN, ROLE_NODE, ROLE_PROXY

# --- the cluster


@attrs.frozen
class ClusterInfo:
    cluster_name: str
    server_version: str
    caller_role: str
    caller_name: str
    tls_ca_certs: tuple[bytes, ...]


class Ping(AuthCommand[Empty, ClusterInfo]):
    """Who the cluster is; anyone may ask.

    A joining proxy checks the TLS CA returned here against its CA pin before
    it sends its token.
    """

    roles = CLUSTER_ROLES | {ANONYMOUS}


@attrs.frozen
class JoinRequest:
    token: str = attrs.field(repr=False)
    role: str
    name: str
    public_addr: str
    ssh_addr: str
    tls_public_key: bytes
    ssh_public_key: str
    additional_principals: tuple[str, ...] = ()


@attrs.frozen
class JoinResult:
    host_id: str
    cluster_name: str
    tls_cert: bytes
    tls_ca_certs: tuple[bytes, ...]
    ssh_host_cert: str


class RegisterUsingToken(AuthCommand[JoinRequest, JoinResult]):
    """A proxy or node joins with a single-use token.

    It sends only public keys: its TLS and SSH private keys never leave it.
    """

    roles = frozenset({ANONYMOUS})


@attrs.frozen
class ClusterCAs:
    cluster_name: str
    user_ca_keys: tuple[str, ...]
    host_ca_keys: tuple[str, ...]


class GetClusterCAs(AuthCommand[Empty, ClusterCAs]):
    """The public keys of the user and host CAs (never a private one)."""

    roles = CLUSTER_ROLES


@attrs.frozen
class ProxyAddresses:
    public_addr: str
    ssh_addr: str


class Heartbeat(AuthCommand[ProxyAddresses, Empty]):
    """A proxy announces where people reach it (for invite links)."""

    roles = frozenset({ROLE_PROXY})


# --- users and roles (admin)


@attrs.frozen
class NewUser:
    name: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]


@attrs.frozen
class Invite:
    user: str
    token: str = attrs.field(repr=False)
    url: str = attrs.field(repr=False)
    expires: float


class CreateUser(AuthCommand[NewUser, Invite]):
    pass


class ResetUser(AuthCommand[Name, Invite]):
    """A new invite: the user sets a new password and OTP app."""


@attrs.frozen
class Unlocked:
    was_locked: bool


class UnlockUser(AuthCommand[Name, Unlocked]):
    """Lift a lock-out (and forget the failures) without a reset."""


@attrs.frozen
class Users:
    users: tuple[UserEntry, ...]


class ListUsers(AuthCommand[Empty, Users]):
    pass


class DeleteUser(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class RoleDefinition:
    role: RoleSpec


class UpsertRole(AuthCommand[RoleDefinition, Empty]):
    pass


@attrs.frozen
class Roles:
    roles: tuple[Role, ...]


class ListRoles(AuthCommand[Empty, Roles]):
    pass


class DeleteRole(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class RoleNames:
    names: tuple[str, ...]


class GetRoles(AuthCommand[RoleNames, Roles]):
    """Role definitions by name, for the proxy's access checks."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY, ROLE_NODE})


# --- join tokens (admin)


@attrs.frozen
class NewToken:
    kind: str
    ttl: int


@attrs.frozen
class JoinToken:
    token: str = attrs.field(repr=False)
    expires: float
    ca_pin: str
    auth_addr: str
    proxy_addr: str


class CreateToken(AuthCommand[NewToken, JoinToken]):
    pass


@attrs.frozen
class Tokens:
    tokens: tuple[TokenEntry, ...]


class ListTokens(AuthCommand[Empty, Tokens]):
    pass


class DeleteToken(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class CAKind:
    kind: str


@attrs.frozen
class Lines:
    lines: tuple[str, ...]


class ExportCA(AuthCommand[CAKind, Lines]):
    """A CA's public key in the form sshd (user) or known_hosts (host) takes."""

    roles = CLUSTER_ROLES


# --- sign-up and login, on behalf of a person at the proxy


@attrs.frozen
class InviteToken:
    token: str = attrs.field(repr=False)


@attrs.frozen
class InviteInfo:
    user: str
    totp_secret: str = attrs.field(repr=False)
    otpauth_uri: str = attrs.field(repr=False)
    expires: float


class GetInvite(AuthCommand[InviteToken, InviteInfo]):
    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class SignUp:
    token: str = attrs.field(repr=False)
    password: str = attrs.field(repr=False)
    otp_token: str = attrs.field(repr=False)
    client_addr: str


@attrs.frozen
class UserName:
    user: str


class CompleteInvite(AuthCommand[SignUp, UserName]):
    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class Login:
    user: str
    password: str = attrs.field(repr=False)
    otp_token: str = attrs.field(repr=False)
    pub_key: str
    ttl: int
    client_addr: str


@attrs.frozen
class IssuedCertificate:
    username: str
    cert: str
    valid_before: int
    host_signers: tuple[HostSigner, ...]


class AuthenticateSSHUser(AuthCommand[Login, IssuedCertificate]):
    """Password + OTP in, a short-lived OpenSSH user certificate out."""

    roles = frozenset({ROLE_PROXY})
