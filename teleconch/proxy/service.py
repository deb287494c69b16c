"""The proxy service: joins the cluster once, then serves SSH and the web API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from teleconch import config as cfg
from teleconch.auth.agent import AuthAgent
from teleconch.auth.joinclient import JoinRequest, JoinSource, join
from teleconch.ca import public_key_line
from teleconch.conch.limits import SSHLimits
from teleconch.files import ensure_private_directory, write_private_file
from teleconch.pki import (
    ROLE_PROXY,
    TLSIdentity,
    generate_private_key_pem,
    public_key_pem,
    self_signed_certificate,
)
from teleconch.proxy.forward_certs import ForwardingHostCerts
from teleconch.proxy.forward_server import Forwarding
from teleconch.proxy.joining import Joining
from teleconch.proxy.node import NodeTransport, TCPNodeTransport
from teleconch.proxy.peering import PeerClient, PeerService
from teleconch.proxy.recorder import Recorders
from teleconch.proxy.routing import Route, Router
from teleconch.proxy.sessions import Sessions
from teleconch.proxy.settings import ClusterSettingsCache
from teleconch.proxy.spool import InThread, Spool
from teleconch.proxy.ssh import ProxyPolicy, ProxySSHFactory, make_factory
from teleconch.proxy.uploader import Uploader
from teleconch.startup import (
    StartingService,
    advertised_address,
    listening_address,
    local_address,
)
from teleconch.web.keys import WebSessionKeys
from teleconch.web.site import ProxySite, WebConfig, make_site
from teleconch.web.static_files import (
    NODE_MODULES,
    STATIC_DIR,
    XTERM_MISSING,
    StaticFile,
    StaticFiles,
    read_static_files,
    read_vendor_files,
)
from teleconch.web.terminal import make_terminal

log = Logger()

HEARTBEAT_INTERVAL = 60.0


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


class ProxyService(StartingService):
    """The proxy: joins the cluster once, then serves the web API (and SSH)."""

    def __init__(
        self,
        reactor: Any,
        settings: cfg.Settings,
        join_source: Callable[[bool], Awaitable[JoinSource]],
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(reactor)
        self.setName("proxy")
        #: What certificate validity is checked against (the reactor, but in tests).
        self.clock = clock or reactor
        self.settings = settings
        self.files = ProxyFiles(settings.data_dir)
        self._join_source = join_source
        self.agent: AuthAgent | None = None
        self.web_address: cfg.HostPort | None = None
        self.web_site: ProxySite | None = None
        #: The web sessions' keys and certificates, shared by the web API (which
        #: fills it at login) and the web terminal (which reaches nodes with it).
        self.web_keys = WebSessionKeys(self.clock)
        self.ssh_address: cfg.HostPort | None = None
        self.web_listening = ""
        self.ssh_listening = ""
        self.router: Router | None = None
        self.ssh_factory: ProxySSHFactory | None = None
        self.joining: Joining | None = None
        #: The terminal sessions this proxy holds.
        self.terminal_sessions = Sessions(reactor)
        #: How people reach us, as advertised once the listeners are bound.
        self.public_addr = settings.proxy.public_addr
        self.ssh_public_addr = settings.proxy.ssh_public_addr
        #: Proxy peering: sessions held here joined from other proxies, and
        #: (``peers``) the client that joins sessions other proxies hold.
        self.peering: PeerService | None = None
        self.peer_address: cfg.HostPort | None = None
        self.peer_public_addr = settings.proxy.peer_public_addr
        self._heartbeat: LoopingCall | None = None
        #: Web terminal sessions' recordings, spooled here until uploaded.
        self.spool = Spool(Path(settings.data_dir) / "recordings")
        self.uploader: Uploader | None = None
        self.recorders: Recorders | None = None
        #: The cluster's recording settings, as the auth service says (once joined).
        self.cluster_settings: ClusterSettingsCache | None = None
        #: Recording proxy mode's shared parts (`teleconch.proxy.forward_server`).
        self.forwarding: Forwarding | None = None

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

    @staticmethod
    def _web_files() -> tuple[dict[str, StaticFile], list[str]]:
        vendor, missing = read_vendor_files(NODE_MODULES)
        return {**read_static_files(STATIC_DIR), **vendor}, missing

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
        self.agent.setName("auth_agent")
        self.agent.setServiceParent(self)
        info = await self.agent.ping()
        self._start_recording(self.agent)
        await self._start_peering(identity, self.agent)
        host_key, host_cert = await self._in_thread(self._ssh_host_identity)
        self.router = router = Router(
            self.agent,
            self.reactor,
            info.cluster_name,
            s.proxy.allow_unregistered_nodes,
            node_side=self._node_side,
        )
        policy = ProxyPolicy(self.agent, self.reactor, lambda: str(self.public_addr))
        self._start_forwarding(router, policy, host_key)
        limits = SSHLimits(
            **{k: getattr(s.proxy, k) for k in attrs.fields_dict(SSHLimits)}
        )
        #: Joining live sessions, by SSH and from the web; those held by other
        #: proxies through the peering client.
        self.joining = Joining(
            agent=self.agent,
            router=router,
            sessions=self.terminal_sessions,
            peers=self.peers,
        )
        self.ssh_factory = make_factory(
            router,
            policy,
            host_key,
            host_cert,
            self.clock,
            limits,
            self.joining,
            s.proxy.algorithms,
        )
        ssh_port = await self._listen(
            "proxy_service.listen_addr",
            s.proxy.listen_addr,
            self.ssh_factory,
        )
        self.ssh_address = local_address(ssh_port)
        self.ssh_listening = listening_address(ssh_port)
        self.ssh_public_addr = advertised_address(
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
        files, missing = await self._in_thread(self._web_files)
        if missing:
            log.warn(
                "{problem} (missing under {where}: {files}); the web terminal "
                "will say so",
                problem=XTERM_MISSING,
                where=str(NODE_MODULES),
                files=", ".join(missing),
            )
        site = make_site(
            self.agent,
            WebConfig(
                cluster_name=info.cluster_name,
                proxy_ssh_addr=str(self.ssh_public_addr),
                idle_timeout=s.proxy.web_idle_timeout,
            ),
            self.reactor,
            StaticFiles(files),
            max_connections_per_address=s.proxy.max_web_connections_per_address,
            router=router,
            keys=self.web_keys,
            terminal=make_terminal(
                reactor=self.reactor,
                clock=self.clock,
                agent=self.agent,
                router=router,
                keys=self.web_keys,
                sessions=self.terminal_sessions,
                proxy_name=s.teleconch.nodename,
                idle_timeout=s.proxy.web_idle_timeout,
                public_addr=lambda: str(self.public_addr),
                recorders=self.recorders,
                peer_addr=lambda: str(self.peer_public_addr),
                joining=self.joining,
            ),
            threads=self.reactor,
        )
        self.web_site = site
        port = await self._listen(
            "proxy_service.web_listen_addr",
            s.proxy.web_listen_addr,
            TLSMemoryBIOFactory(options, False, site),
        )
        self.web_address = local_address(port)
        self.web_listening = listening_address(port)
        self.public_addr = advertised_address(
            s.proxy.public_addr, self.web_address.port
        )
        log.info("proxy web listener on https://{addr}", addr=self.web_listening)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=True).addErrback(
            lambda f: log.failure("heartbeat loop stopped", f)
        )

    @property
    def peers(self) -> PeerClient | None:
        """Joins sessions held by other proxies (once started)."""
        return self.peering.client if self.peering is not None else None

    async def _start_peering(self, identity: TLSIdentity, agent: AuthAgent) -> None:
        """The peer listener, on which other proxies join sessions held here."""
        s = self.settings
        self.peering = PeerService(
            reactor=self.reactor,
            clock=self.reactor,
            identity=identity,
            sessions=self.terminal_sessions,
            audit=agent.emit_event,
        )
        self.peering.setServiceParent(self)
        port = await self._listen(
            "proxy_service.peer_listen_addr",
            s.proxy.peer_listen_addr,
            self.peering.factory(),
        )
        self.peer_address = local_address(port)
        self.peer_public_addr = advertised_address(
            s.proxy.peer_public_addr, self.peer_address.port
        )
        log.info(
            "proxy peering listener on {addr} (advertised as {public})",
            addr=listening_address(port),
            public=str(self.peer_public_addr),
        )

    def _node_side(self, route: Route) -> NodeTransport:
        """TCP to the node, or, in recording proxy mode, our SSH server."""
        plain = TCPNodeTransport.hostname(self.reactor)
        if self.forwarding is None:
            return plain
        return self.forwarding.node_side(route, plain)

    def _start_forwarding(
        self, router: Router, policy: ProxyPolicy, host_key: ed25519.Ed25519PrivateKey
    ) -> None:
        """What recording proxy mode needs (used only while the cluster is in it)."""
        assert self.agent is not None and self.cluster_settings is not None
        self.forwarding = Forwarding(
            reactor=self.reactor,
            clock=self.clock,
            agent=self.agent,
            router=router,
            policy=policy,
            host_key=host_key,
            host_certs=ForwardingHostCerts(self.clock, self.agent, host_key),
            settings=self.cluster_settings,
            sessions=self.terminal_sessions,
            proxy_name=self.settings.teleconch.nodename,
            recorders=self.recorders,
        )

    def _start_recording(self, agent: AuthAgent) -> None:
        """The uploader (it finishes what an earlier run left in the spool)
        and the recorders of new web terminal sessions."""

        def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            pool = self.reactor.getThreadPool()
            return deferToThreadPool(self.reactor, pool, f, *args)

        run: InThread = in_thread
        self.cluster_settings = ClusterSettingsCache(
            self.reactor, agent.cluster_settings
        )
        self.uploader = uploader = Uploader(
            clock=self.reactor, agent=agent, spool=self.spool, in_thread=run
        )
        self.recorders = Recorders(
            clock=self.reactor,
            spool=self.spool,
            in_thread=run,
            settings=self.cluster_settings,
            on_closed=uploader.wake,
        )
        uploader.start()

    async def _finish_recordings(self, wait: float = 5.0) -> None:
        """Let the ended sessions' recorders write their last frames, and try
        one last upload; what is not uploaded stays in the spool for the next run."""
        if self.recorders is None or self.uploader is None:
            return
        self.uploader.stop()
        closing = [r.closed for r in self.recorders.active]
        if closing:
            everything = gatherResults(closing, consumeErrors=True)
            await everything.addTimeout(wait, self.reactor).addErrback(lambda f: None)
        self.uploader.wake()
        last = Deferred.fromCoroutine(self.uploader.settled())
        await last.addTimeout(wait, self.reactor).addErrback(lambda f: None)

    async def _beat(self) -> None:
        assert self.agent is not None
        try:
            await self.agent.heartbeat(str(self.public_addr), str(self.ssh_public_addr))
        except Exception as e:
            log.warn("heartbeat to the auth service failed: {error}", error=str(e))

    async def _stop(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        await self.terminal_sessions.end_all("the proxy is stopping")
        await self._finish_recordings()
        if self.web_site is not None:
            self.web_site.stop()
        await super()._stop()
