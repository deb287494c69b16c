"""The auth service: the cluster's CAs, its storage, the Auth API on mutual TLS,
and the recordings retention loop (`teleconch.auth.retention`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from teleconch import config as cfg
from teleconch.auth import protocol as api
from teleconch.auth.api import AuthAPIFactory
from teleconch.auth.backends import open_store
from teleconch.auth.joinclient import JoinSource
from teleconch.auth.retention import RecordingRetention
from teleconch.auth.server import AuthServer
from teleconch.auth.store import Store
from teleconch.ca import SSHCertificateAuthority
from teleconch.files import ensure_private_directory
from teleconch.pki import (
    AUTH_SERVER_NAME,
    ROLE_ADMIN,
    ROLE_AUTH,
    ROLE_PROXY,
    TLSAuthority,
    TLSIdentity,
)
from teleconch.startup import (
    StartingService,
    advertised_address,
    listening_address,
    local_address,
)

log = Logger()

IDENTITY_TTL = 10 * 365 * 86400


@attrs.frozen
class AuthFiles:
    """Where the auth service keeps its secrets in data_dir."""

    root: Path

    @property
    def dir(self) -> Path:
        return self.root / "auth"

    @property
    def admin(self) -> Path:
        return self.root / "admin"


class AuthService(StartingService):
    """The auth service: CAs, storage, and the Auth API on mutual TLS."""

    def __init__(
        self,
        reactor: Any,
        settings: cfg.Settings,
        bcrypt_rounds: int = 12,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(reactor)
        self.setName("auth")
        #: What the rules (expiry, lock-out, certificate validity) read the time from.
        self.clock = clock or reactor
        self.settings = settings
        self.files = AuthFiles(settings.data_dir)
        self.bcrypt_rounds = bcrypt_rounds
        self.server: AuthServer | None = None
        self.address: cfg.HostPort | None = None
        #: What the listener is bound to (0.0.0.0:3025), for the banner.
        self.listening = ""
        self._store: Store | None = None
        self._retention: RecordingRetention | None = None

    def _prepare_files(
        self,
    ) -> tuple[SSHCertificateAuthority, SSHCertificateAuthority, TLSAuthority]:
        name = self.settings.auth.cluster_name
        ensure_private_directory(self.settings.data_dir)
        ensure_private_directory(self.files.dir)
        user_ca = SSHCertificateAuthority.load_or_create(
            self.files.dir / "user_ca", f"{name} user CA"
        )
        host_ca = SSHCertificateAuthority.load_or_create(
            self.files.dir / "host_ca", f"{name} host CA"
        )
        tls_ca = TLSAuthority.load_or_create(
            self.files.dir, name, self.reactor.seconds()
        )
        if TLSIdentity.load(self.files.admin) is None:
            admin = tls_ca.issue_identity(
                ROLE_ADMIN, "admin", self.reactor.seconds(), IDENTITY_TTL
            )
            admin.save(self.files.admin)
        return user_ca, host_ca, tls_ca

    async def _start(self) -> None:
        s = self.settings
        user_ca, host_ca, tls_ca = await self._in_thread(self._prepare_files)
        self._store = await open_store(s.teleconch.storage, s.data_dir, self.reactor)
        auth_addr = cfg.HostPort(s.teleconch.nodename, cfg.AUTH_PORT)
        identity = tls_ca.issue_identity(
            ROLE_AUTH,
            s.teleconch.nodename,
            self.reactor.seconds(),
            IDENTITY_TTL,
            dns_names=[AUTH_SERVER_NAME, s.teleconch.nodename, "localhost"],
            ip_addresses=["127.0.0.1"],
        )
        self.server = AuthServer(
            clock=self.clock,
            threads=self.reactor,
            store=self._store,
            cluster_name=s.auth.cluster_name,
            user_ca=user_ca,
            host_ca=host_ca,
            tls_ca=tls_ca,
            default_public_addr=str(
                advertised_address(s.proxy.public_addr, cfg.PROXY_WEB_PORT)
            ),
            auth_addr=str(auth_addr),
            bcrypt_rounds=self.bcrypt_rounds,
            tls_identity=identity,
            node_cert_ttl=s.auth.node_cert_ttl,
            settings=api.ClusterSettings(
                session_recording=s.auth.session_recording,
                record_input=s.auth.record_input,
                proxy_checks_host_keys=s.auth.proxy_checks_host_keys,
            ),
            recordings_retention=s.auth.recordings_retention,
        )
        await self.server.start()
        self._retention = RecordingRetention(
            self.clock,
            self.server.recordings,
            self.server.settings.recordings_retention,
        )
        self._retention.start()
        factory = TLSMemoryBIOFactory(
            identity.server_options(), False, AuthAPIFactory(self.server, self.reactor)
        )
        port = await self._listen(
            "auth_service.listen_addr", s.auth.listen_addr, factory
        )
        self.address = local_address(port)
        self.listening = listening_address(port)
        self.server.auth_addr = str(
            cfg.HostPort(s.teleconch.nodename, self.address.port)
        )
        log.info(
            "auth service of cluster {cluster} listening on {addr}",
            cluster=s.auth.cluster_name,
            addr=self.listening,
        )

    async def _stop(self) -> None:
        if self._retention is not None:
            await self._retention.stop()
            self._retention = None
        await super()._stop()
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def local_join(self, need_token: bool) -> JoinSource:
        """Where the proxy in the same process (the all-in-one) finds us, and a
        join token when it has no identity yet."""
        await self.ready
        assert self.server is not None and self.address is not None
        if not need_token:
            return JoinSource((self.address,), None, None)
        token = await self.server.create_token(ROLE_PROXY, 300)
        return JoinSource((self.address,), token.token, token.ca_pin)
