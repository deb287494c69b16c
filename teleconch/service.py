"""The services of a teleconch process, composed in a MultiService.

Constructing a service touches nothing; ``startService`` opens the data
directory, makes keys on first start and listens.  Each service's
``ready`` fires once it is serving (or fails with what went wrong), so a
test or the all-in-one banner can wait for it.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from teleconch import config as cfg
from teleconch.auth.agent import AuthAgent, JoinRequest, join
from teleconch.auth.api import AuthAPIFactory
from teleconch.auth.backends import open_store
from teleconch.auth.server import AuthServer
from teleconch.auth.store import Store
from teleconch.ca import SSHCertificateAuthority, public_key_line
from teleconch.conch.limits import SSHLimits
from teleconch.files import ensure_private_directory, write_private_file
from teleconch.pki import (
    AUTH_SERVER_NAME,
    ROLE_ADMIN,
    ROLE_AUTH,
    ROLE_PROXY,
    TLSAuthority,
    TLSIdentity,
    generate_private_key_pem,
    public_key_pem,
    self_signed_certificate,
)
from teleconch.proxy.routing import Router
from teleconch.proxy.ssh import ProxyPolicy, ProxySSHFactory, make_factory
from teleconch.web.http import WebSite
from teleconch.web.site import WebConfig, make_site
from teleconch.web.static_files import STATIC_DIR, StaticFiles, read_static_files

log = Logger()

HEARTBEAT_INTERVAL = 60.0
IDENTITY_TTL = 10 * 365 * 86400


class StartupError(Exception):
    """A service cannot start; the message says why and what to change."""


def _cannot_listen(key: str, address: str, e: CannotListenError) -> str:
    err = e.socketError
    code = getattr(err, "errno", None)
    if code == errno.EADDRINUSE:
        why = "another process holds the port"
    elif code == errno.EACCES:
        why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif code == errno.EADDRNOTAVAIL:
        why = "this machine has no such address"
    else:
        why = str(getattr(err, "strerror", None) or err)
    return (
        f"cannot listen on {address} ({key}): {why}; stop what holds it, or set "
        f"{key} to another address"
    )


def _bound(port: IListeningPort, fallback_host: str = "127.0.0.1") -> cfg.HostPort:
    """Where a client on this machine reaches a port we listen on."""
    addr = port.getHost()
    host = getattr(addr, "host", fallback_host)
    if host in ("0.0.0.0", "::", ""):
        host = fallback_host
    return cfg.HostPort(host, getattr(addr, "port", 0))


def _listening(port: IListeningPort) -> str:
    """The address a port is bound to, as the kernel says (0.0.0.0 included)."""
    addr = port.getHost()
    host, number = getattr(addr, "host", None), getattr(addr, "port", None)
    if host is None or number is None:
        return str(addr)
    return str(cfg.HostPort(host, number))


def _advertised(configured: cfg.HostPort, bound_port: int) -> cfg.HostPort:
    """The configured public address; without a port, the port we are bound to."""
    return configured if configured.port else cfg.HostPort(configured.host, bound_port)


class _Starting(MultiService):
    """A service whose start is a coroutine; ``ready`` tells how it went."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.ready: Deferred[None] = Deferred()
        self._ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.chainDeferred(self.ready)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _listen(self, key: str, address: str, factory: Any) -> IListeningPort:
        """Listen on ``address``, the value of config ``key``."""
        endpoint = serverFromString(self.reactor, cfg.listen_endpoint(address))
        try:
            port: IListeningPort = await endpoint.listen(factory)
        except CannotListenError as e:
            raise StartupError(_cannot_listen(key, address, e)) from None
        self._ports.append(port)
        return port

    async def _in_thread(self, f: Callable[..., Any], *args: Any) -> Any:
        return await deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), f, *args
        )

    def stopService(self) -> Deferred[None] | None:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        ports, self._ports = self._ports, []
        for port in ports:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        stopped = super().stopService()
        if stopped is not None:
            await stopped


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


class AuthService(_Starting):
    """The auth service: CAs, storage, and the Auth API on mutual TLS."""

    def __init__(
        self,
        reactor: Any,
        settings: cfg.Settings,
        bcrypt_rounds: int = 12,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(reactor)
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
                _advertised(s.proxy.public_addr, cfg.PROXY_WEB_PORT)
            ),
            auth_addr=str(auth_addr),
            bcrypt_rounds=self.bcrypt_rounds,
            tls_identity=identity,
            node_cert_ttl=s.auth.node_cert_ttl,
        )
        await self.server.start()
        factory = TLSMemoryBIOFactory(
            identity.server_options(), False, AuthAPIFactory(self.server, self.reactor)
        )
        port = await self._listen(
            "auth_service.listen_addr", s.auth.listen_addr, factory
        )
        self.address = _bound(port)
        self.listening = _listening(port)
        self.server.auth_addr = str(
            cfg.HostPort(s.teleconch.nodename, self.address.port)
        )
        log.info(
            "auth service of cluster {cluster} listening on {addr}",
            cluster=s.auth.cluster_name,
            addr=self.listening,
        )

    async def _stop(self) -> None:
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


@attrs.frozen
class JoinSource:
    auth_servers: tuple[cfg.HostPort, ...]
    token: str | None = attrs.field(repr=False)
    ca_pin: str | None


@attrs.frozen
class ProxyFiles:
    root: Path

    @property
    def dir(self) -> Path:
        return self.root / "proxy"

    @property
    def ssh_host_key(self) -> Path:
        return self.dir / "ssh_host_key"

    @property
    def ssh_host_cert(self) -> Path:
        return self.dir / "ssh_host_key-cert.pub"

    @property
    def web_cert(self) -> Path:
        return self.dir / "web.crt"

    @property
    def web_key(self) -> Path:
        return self.dir / "web.key"


class ProxyService(_Starting):
    """The proxy: joins the cluster once, then serves the web API (and SSH)."""

    def __init__(
        self,
        reactor: Any,
        settings: cfg.Settings,
        join_source: Callable[[bool], Awaitable[JoinSource]],
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(reactor)
        #: What certificate validity is checked against (the reactor, but in tests).
        self.clock = clock or reactor
        self.settings = settings
        self.files = ProxyFiles(settings.data_dir)
        self._join_source = join_source
        self.agent: AuthAgent | None = None
        self.web_address: cfg.HostPort | None = None
        self.web_site: WebSite | None = None
        self.ssh_address: cfg.HostPort | None = None
        self.web_listening = ""
        self.ssh_listening = ""
        self.router: Router | None = None
        self.ssh_factory: ProxySSHFactory | None = None
        #: How people reach us, as advertised once the listeners are bound.
        self.public_addr = settings.proxy.public_addr
        self.ssh_public_addr = settings.proxy.ssh_public_addr
        self._heartbeat: LoopingCall | None = None

    def _ssh_host_key(self) -> ed25519.Ed25519PrivateKey:
        path = self.files.ssh_host_key
        if path.exists():
            key = serialization.load_ssh_private_key(path.read_bytes(), None)
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            return key
        key = ed25519.Ed25519PrivateKey.generate()
        ensure_private_directory(self.files.dir)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        write_private_file(path, pem)
        return key

    async def _identity(self) -> tuple[JoinSource, TLSIdentity]:
        existing: TLSIdentity | None = await self._in_thread(
            TLSIdentity.load, self.files.dir
        )
        if existing is not None:
            return await self._join_source(False), existing
        source = await self._join_source(True)
        if not source.token:
            raise RuntimeError(
                "this proxy has not joined a cluster: set teleconch.auth_token to a token "
                "from `teleconch-ctl tokens add --type=proxy` on the auth server"
            )
        s = self.settings
        host_key = await self._in_thread(self._ssh_host_key)
        tls_key = generate_private_key_pem()
        response = await join(
            self.reactor,
            source.auth_servers,
            source.ca_pin,
            JoinRequest(
                token=source.token,
                role=ROLE_PROXY,
                name=s.teleconch.nodename,
                public_addr=str(s.proxy.public_addr),
                ssh_addr=str(s.proxy.ssh_public_addr),
                tls_public_key=public_key_pem(tls_key),
                ssh_public_key=public_key_line(host_key.public_key()),
            ),
        )
        identity = TLSIdentity(response.tls_cert, tls_key, response.tls_ca_certs)

        def save() -> None:
            write_private_file(
                self.files.ssh_host_cert, response.ssh_host_cert.encode() + b"\n"
            )
            identity.save(self.files.dir)

        await self._in_thread(save)
        log.info(
            "joined cluster {cluster} as proxy {host_id}",
            cluster=response.cluster_name,
            host_id=response.host_id,
        )
        return source, identity

    def _ssh_host_identity(self) -> tuple[ed25519.Ed25519PrivateKey, str]:
        return self._ssh_host_key(), self.files.ssh_host_cert.read_text().strip()

    def _web_tls(self) -> tuple[bytes, bytes]:
        p = self.settings.proxy
        if p.https_cert_file and p.https_key_file:
            return p.https_cert_file.read_bytes(), p.https_key_file.read_bytes()
        if not self.files.web_cert.exists():
            names = [
                p.public_addr.host,
                self.settings.teleconch.nodename,
                "localhost",
                "127.0.0.1",
            ]
            cert, key = self_signed_certificate(
                list(dict.fromkeys(names)), self.reactor.seconds()
            )
            write_private_file(self.files.web_key, key)
            write_private_file(self.files.web_cert, cert)
        return self.files.web_cert.read_bytes(), self.files.web_key.read_bytes()

    async def _start(self) -> None:
        from twisted.internet.ssl import CertificateOptions, PrivateCertificate

        s = self.settings
        source, identity = await self._identity()
        self.agent = AuthAgent(self.reactor, source.auth_servers, identity)
        self.agent.setServiceParent(self)
        info = await self.agent.ping()
        host_key, host_cert = await self._in_thread(self._ssh_host_identity)
        self.router = router = Router(
            self.agent,
            self.reactor,
            info.cluster_name,
            s.proxy.allow_unregistered_nodes,
        )
        policy = ProxyPolicy(self.agent, self.reactor, lambda: str(self.public_addr))
        limits = SSHLimits(
            **{k: getattr(s.proxy, k) for k in attrs.fields_dict(SSHLimits)}
        )
        self.ssh_factory = make_factory(
            router, policy, host_key, host_cert, self.clock, limits
        )
        ssh_port = await self._listen(
            "proxy_service.listen_addr",
            s.proxy.listen_addr,
            self.ssh_factory,
        )
        self.ssh_address = _bound(ssh_port)
        self.ssh_listening = _listening(ssh_port)
        self.ssh_public_addr = _advertised(
            s.proxy.ssh_public_addr, self.ssh_address.port
        )
        log.info("proxy SSH listener on {addr}", addr=self.ssh_listening)

        cert_pem, key_pem = await self._in_thread(self._web_tls)
        pc = PrivateCertificate.loadPEM(cert_pem + key_pem)
        options = CertificateOptions(
            privateKey=pc.privateKey.original,
            certificate=pc.original,
            raiseMinimumTo=None,
        )
        site = make_site(
            self.agent,
            WebConfig(
                cluster_name=info.cluster_name,
                proxy_ssh_addr=str(self.ssh_public_addr),
            ),
            self.reactor,
            StaticFiles(await self._in_thread(read_static_files, STATIC_DIR)),
            max_connections_per_address=s.proxy.max_web_connections_per_address,
        )
        self.web_site = site
        port = await self._listen(
            "proxy_service.web_listen_addr",
            s.proxy.web_listen_addr,
            TLSMemoryBIOFactory(options, False, site),
        )
        self.web_address = _bound(port)
        self.web_listening = _listening(port)
        self.public_addr = _advertised(s.proxy.public_addr, self.web_address.port)
        log.info("proxy web listener on https://{addr}", addr=self.web_listening)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=True).addErrback(
            lambda f: log.failure("heartbeat loop stopped", f)
        )

    async def _beat(self) -> None:
        assert self.agent is not None
        try:
            await self.agent.heartbeat(str(self.public_addr), str(self.ssh_public_addr))
        except Exception as e:
            log.warn("heartbeat to the auth service failed: {error}", error=str(e))

    async def _stop(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        await super()._stop()


class TeleconchService(MultiService):
    """The whole process: the enabled roles, and a banner once all serve."""

    def __init__(
        self,
        reactor: Any,
        settings: cfg.Settings,
        bcrypt_rounds: int = 12,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self.auth: AuthService | None = None
        self.proxy: ProxyService | None = None
        if settings.auth.enabled:
            self.auth = AuthService(reactor, settings, bcrypt_rounds, clock)
            self.auth.setServiceParent(self)
        if settings.proxy.enabled:
            self.proxy = ProxyService(reactor, settings, self._join_source, clock)
            self.proxy.setServiceParent(self)
        self.ready: Deferred[None] = Deferred()

    async def _join_source(self, need_token: bool) -> JoinSource:
        if self.auth is not None:
            return await self.auth.local_join(need_token)
        g = self.settings.teleconch
        return JoinSource(g.auth_servers, g.auth_token, g.ca_pin)

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._started()).chainDeferred(self.ready)

    async def _started(self) -> None:
        for svc in (self.auth, self.proxy):
            if svc is not None:
                await svc.ready
        # One event per line: the log escapes line breaks inside an event.
        for line in self.banner().splitlines():
            log.info("{line}", line=line)

    def banner(self) -> str:
        s = self.settings
        lines = [
            f"teleconch {s.auth.cluster_name if s.auth.enabled else ''} is running."
        ]
        if self.proxy is not None:
            p = self.proxy
            lines.append(
                f"  web API, sign-up pages: https://{p.public_addr}  "
                f"(listening on {p.web_listening})"
            )
            lines.append(
                f"  SSH proxy:              {p.ssh_public_addr}  "
                f"(listening on {p.ssh_listening})"
            )
        if self.auth is not None:
            data = s.data_dir
            lines.append(
                f"  auth service:           listening on {self.auth.listening}"
            )
            lines.append(
                "Add the first user (prints an invite link to open in a browser):"
            )
            lines.append(
                f"  teleconch-ctl --data-dir {data} users add alice "
                "--logins alice,root --roles access,admin"
            )
        return "\n".join(lines)
