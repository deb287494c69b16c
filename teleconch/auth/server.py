"""AuthServer: the rules of the cluster, behind the Auth API.

A thin facade: the rules live one concern per module (``rbac``, ``login``,
``tokens``, ``joining``, ``nodejoin``, ``certs``, ``nodes``, ``accounts``,
``websessions``, ``selfservice``, ``live``, ``recordings``, ``settings``,
``audit``) and this class composes them over one store and one clock.  Its
methods are the Auth API's: each answers one command of
``teleconch.auth.protocol`` with its request's fields as arguments and its
response record (or, for a response of one field, that field's value).  It
knows nothing of AMP or TLS: ``teleconch.auth.api`` binds commands to these
methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import SSHCertPublicKeyTypes
from twisted.internet.interfaces import IReactorTime

from teleconch import __version__
from teleconch.auth import nodejoin
from teleconch.auth import protocol as api
from teleconch.auth.accounts import Accounts
from teleconch.auth.attest import Attested
from teleconch.auth.audit import AuditLog
from teleconch.auth.certs import Certificates
from teleconch.auth.joining import Registrar
from teleconch.auth.live import LiveSessions
from teleconch.auth.login import Logins, Passwords
from teleconch.auth.nodes import Nodes, Proxies
from teleconch.auth.protocol import (
    ClusterCAs,
    ClusterInfo,
    HostCertificate,
    Invite,
    InviteInfo,
    IssuedCertificate,
    JoinResult,
    JoinToken,
)
from teleconch.auth.rbac import BUILTIN_ROLES
from teleconch.auth.recording_access import RecordingAccess
from teleconch.auth.recording_search import TextSearch, on_pool
from teleconch.auth.recordings import Recordings
from teleconch.auth.selfservice import AccountChanges
from teleconch.auth.settings import ClusterSettingsKeeper
from teleconch.auth.store import Store
from teleconch.auth.tokens import Tokens
from teleconch.auth.types import (
    ActiveSession,
    AuditEvent,
    Node,
    Role,
    RoleSpec,
    TokenEntry,
    User,
    UserEntry,
)
from teleconch.auth.websessions import WebSessions
from teleconch.ca import SSHCertificateAuthority
from teleconch.pki import TLSAuthority, TLSIdentity


@attrs.frozen
class Identity:
    """Who is calling the Auth API, from its TLS client certificate."""

    role: str
    name: str


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
        settings: api.ClusterSettings | None = None,
        recordings_retention: int | None = None,
    ) -> None:
        self._clock = clock
        self.store = store
        self.cluster_name = cluster_name
        self._tls_ca = tls_ca
        self.auth_addr = auth_addr
        #: The auth service's own TLS identity: it signs what nodes must trust.
        self.tls_identity = tls_identity
        self.log = AuditLog(store, clock)
        self.proxies = Proxies(store, clock, default_public_addr)
        self.nodes = Nodes(store, clock, self.log)
        self.tokens = Tokens(store, clock, self.log, tls_ca, auth_addr, self.proxies)
        passwords = Passwords(threads, bcrypt_rounds)
        self.logins = Logins(
            store, clock, self.log, passwords, self.tokens, cluster_name
        )
        self.certs = Certificates(
            store,
            clock,
            self.log,
            self.logins,
            cluster_name,
            user_ca,
            host_ca,
            node_cert_ttl,
        )
        self.web_sessions = WebSessions(store, clock, self.log, self.logins, self.certs)
        self.account_changes = AccountChanges(
            clock, self.log, self.logins, passwords, self.web_sessions, cluster_name
        )
        self.accounts = Accounts(store, clock, self.log, self.tokens, self.web_sessions)
        self.live_sessions = LiveSessions(store, clock, self.log)
        self.recordings = Recordings(store, clock, self.log)
        self.recording_access = RecordingAccess(
            store, self.recordings, self.log, TextSearch(store, on_pool(threads))
        )
        #: What the config says, under what ``teleconch-ctl cluster set`` stored.
        self.settings = ClusterSettingsKeeper(
            store,
            clock,
            self.log,
            settings or api.ClusterSettings(),
            recordings_retention,
        )
        self.registrar = Registrar(
            store, clock, self.log, cluster_name, tls_ca, host_ca, default_public_addr
        )

    def _now(self) -> float:
        return self._clock.seconds()

    @property
    def node_cert_ttl(self) -> int:
        """The lifetime of a joined node's host certificate."""
        return self.certs.node_cert_ttl

    async def audit(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None:
        await self.log.audit(event, user, success, **fields)

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

    def ping(self, caller: Identity) -> ClusterInfo:
        return ClusterInfo(
            tls_ca_certs=(self._tls_ca.cert_pem,),
            cluster_name=self.cluster_name,
            server_version=__version__,
            caller_role=caller.role,
            caller_name=caller.name,
        )

    def cluster_cas(self) -> ClusterCAs:
        return self.certs.cluster_cas()

    def export_ca(self, kind: str) -> list[str]:
        return self.certs.export_ca(kind)

    def known_hosts_line(
        self, host_ca_line: str, extra_patterns: Sequence[str] = ()
    ) -> str:
        return self.certs.known_hosts_line(host_ca_line, extra_patterns)

    async def heartbeat(
        self, caller: Identity, public_addr: str, ssh_addr: str
    ) -> None:
        await self.proxies.heartbeat(caller.name, public_addr, ssh_addr)

    async def public_addr(self) -> str:
        """The web address people and nodes reach the cluster at."""
        return await self.proxies.public_addr()

    # --- joining ---------------------------------------------------------

    async def create_token(self, kind: str, ttl: int) -> JoinToken:
        return await self.tokens.create_token(kind, ttl)

    async def list_tokens(self) -> list[TokenEntry]:
        return await self.tokens.list_tokens()

    async def delete_token(self, name: str) -> None:
        await self.tokens.delete_token(name)

    async def register_using_token(self, **kw: Any) -> JoinResult:
        return await self.registrar.register_using_token(**kw)

    async def join_openssh_node(self, **kw: Any) -> Attested:
        return await nodejoin.join_node(self, **kw)

    async def renew_node_certificate(self, **kw: Any) -> Attested:
        return await nodejoin.renew_node(self, **kw)

    # --- users and roles ---------------------------------------------------

    async def create_user(
        self, name: str, logins: Sequence[str], roles: Sequence[str]
    ) -> Invite:
        return await self.accounts.create_user(name, logins, roles)

    async def reset_user(self, name: str) -> Invite:
        return await self.accounts.reset_user(name)

    async def unlock_user(self, name: str) -> bool:
        return await self.accounts.unlock_user(name)

    async def list_users(self) -> list[UserEntry]:
        return await self.accounts.list_users()

    async def delete_user(self, name: str) -> None:
        await self.accounts.delete_user(name)

    async def upsert_role(self, role: RoleSpec) -> None:
        await self.accounts.upsert_role(role)

    async def list_roles(self) -> list[Role]:
        return await self.accounts.list_roles()

    async def delete_role(self, name: str) -> None:
        await self.accounts.delete_role(name)

    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        return await self.accounts.get_roles(names)

    # --- sign-up and login -------------------------------------------------

    async def get_invite(self, token: str) -> InviteInfo:
        return await self.logins.get_invite(token)

    async def complete_invite(
        self, token: str, password: str, otp_token: str, client_addr: str
    ) -> str:
        return await self.logins.complete_invite(
            token, password, otp_token, client_addr
        )

    async def check_login(
        self, name: str, password: str, otp_token: str, client_addr: str
    ) -> User:
        return await self.logins.check_login(name, password, otp_token, client_addr)

    async def authenticate_ssh_user(self, **kw: Any) -> IssuedCertificate:
        return await self.certs.authenticate_ssh_user(**kw)

    # --- web sessions and the changes people make to their accounts ----------

    async def create_web_session(
        self, user: str, password: str, otp_token: str, pub_key: str, client_addr: str
    ) -> api.NewWebSession:
        return await self.web_sessions.create(
            user=user,
            password=password,
            otp_token=otp_token,
            pub_key=pub_key,
            client_addr=client_addr,
        )

    async def authenticate_web_session(
        self, cookie: str, bearer: str, idle_timeout: int
    ) -> api.WebSessionInfo:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        return await self.web_sessions.authenticate(creds)

    async def check_web_session(
        self, cookie: str, bearer: str, idle_timeout: int
    ) -> api.WebSessionInfo:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        return await self.web_sessions.check(creds)

    async def sign_web_session_key(
        self, cookie: str, bearer: str, idle_timeout: int, pub_key: str
    ) -> api.WebSessionCertificate:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        return await self.web_sessions.sign_key(creds, pub_key)

    async def renew_web_session(
        self, cookie: str, bearer: str, idle_timeout: int
    ) -> api.RenewedWebSession:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        return await self.web_sessions.renew(creds)

    async def delete_web_session(
        self, cookie: str, bearer: str, idle_timeout: int, client_addr: str
    ) -> None:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        await self.web_sessions.delete(creds, client_addr)

    async def change_password(
        self,
        cookie: str,
        bearer: str,
        idle_timeout: int,
        old_password: str,
        otp_token: str,
        new_password: str,
        client_addr: str,
    ) -> None:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        await self.account_changes.change_password(
            creds, old_password, otp_token, new_password, client_addr
        )

    async def start_authenticator_enrolment(
        self,
        cookie: str,
        bearer: str,
        idle_timeout: int,
        password: str,
        client_addr: str,
    ) -> api.PendingAuthenticator:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        return await self.account_changes.start_enrolment(creds, password, client_addr)

    async def confirm_authenticator_enrolment(
        self,
        cookie: str,
        bearer: str,
        idle_timeout: int,
        otp_token: str,
        client_addr: str,
    ) -> None:
        creds = api.WebCredentials(cookie, bearer, idle_timeout)
        await self.account_changes.confirm_enrolment(creds, otp_token, client_addr)

    # --- live sessions the proxies hold --------------------------------------

    async def upsert_active_session(
        self, caller: Identity, session: ActiveSession
    ) -> None:
        await self.live_sessions.upsert(caller.name, session)

    async def end_active_session(
        self, caller: Identity, id: str, exit_code: int | None, reason: str
    ) -> None:
        await self.live_sessions.end(caller.name, id, exit_code, reason)

    async def list_active_sessions(self) -> list[ActiveSession]:
        return await self.live_sessions.current()

    # --- the cluster's settings ----------------------------------------------

    async def cluster_settings(self) -> api.ClusterSettings:
        """The effective settings: each stored override over the config."""
        return await self.settings.current()

    async def show_cluster_settings(self) -> api.ClusterSettingsView:
        return await self.settings.show()

    async def set_cluster_settings(
        self, caller: Identity, values: Mapping[str, str]
    ) -> api.ClusterSettingsView:
        return await self.settings.set(caller.name, values)

    # --- session recordings ------------------------------------------------

    async def start_recording(
        self, caller: Identity, id: str, meta: Mapping[str, Any]
    ) -> api.RecordingState:
        return await self.recordings.start(caller.name, id, meta)

    async def append_recording(
        self, caller: Identity, id: str, offset: int, frame: bytes
    ) -> int:
        return await self.recordings.append(caller.name, id, offset, frame)

    async def complete_recording(
        self, caller: Identity, id: str, duration_ms: int
    ) -> int:
        return await self.recordings.complete(caller.name, id, duration_ms)

    async def list_recordings(self) -> api.Recordings:
        return api.Recordings(tuple(await self.recordings.list()))

    async def read_recording(
        self, id: str, start: int, length: int
    ) -> api.RecordingBytes:
        return await self.recordings.read(id, start, length)

    async def delete_recording(self, name: str) -> None:
        await self.recordings.delete(name)

    # --- recordings for the people who may see them (recording_access) ----

    async def find_recordings(self, **query: Any) -> api.Recordings:
        return await self.recording_access.find(api.RecordingQuery(**query))

    async def read_recording_as(
        self, viewer: str, id: str, start: int, length: int
    ) -> api.RecordingBytes:
        request = api.ViewerRange(viewer, id, start, length)
        return await self.recording_access.read(request)

    async def seek_recording(
        self, viewer: str, id: str, ms: int
    ) -> api.RecordingPosition:
        return await self.recording_access.seek(api.RecordingSeek(viewer, id, ms))

    # --- nodes and host certificates -----------------------------------------

    async def upsert_node(
        self, name: str, addr: str, labels: Mapping[str, Any]
    ) -> Node:
        return await self.nodes.upsert_node(name, addr, labels)

    async def list_nodes(self) -> list[Node]:
        return await self.nodes.list_nodes()

    async def delete_node(self, name: str) -> None:
        await self.nodes.delete_node(name)

    async def sign_host_certificate(
        self, public_key: str, hosts: Sequence[str], ttl: int
    ) -> HostCertificate:
        return await self.certs.sign_host_certificate(public_key, hosts, ttl)

    async def sign_forwarding_host_certificate(
        self, caller: Identity, public_key: str, target: str
    ) -> api.ForwardingHostCertificate:
        return await self.certs.sign_forwarding_host_certificate(
            caller.name, public_key, target
        )

    def sign_node_certificate(
        self, key: SSHCertPublicKeyTypes, key_id: str, principals: Sequence[str]
    ) -> tuple[str, int]:
        return self.certs.sign_node_certificate(key, key_id, principals)

    def host_ca_public_key(self) -> Ed25519PublicKey:
        return self.certs.host_ca_public_key()

    # --- audit -----------------------------------------------------------------

    async def search_events(
        self,
        since: float | None,
        until: float | None,
        events: Sequence[str],
        user: str | None,
        limit: int,
    ) -> list[AuditEvent]:
        return await self.log.search_events(since, until, events, user, limit)

    async def emit_event(
        self,
        caller: Identity,
        event: str,
        user: str,
        success: bool,
        fields: Mapping[str, Any],
    ) -> None:
        """An event a proxy or node reports, named as theirs."""
        fields = dict(fields, reported_by=f"{caller.role}:{caller.name}")
        await self.audit(event, user=user, success=success, **fields)
