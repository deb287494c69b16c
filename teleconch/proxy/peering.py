"""Proxy peering: a session held by one proxy, joined from another.

Teleport's "proxy peering" (port 3021): the proxy a person joins from
connects to the proxy holding the session (`ActiveSession.proxy_addr`), over
mutual TLS with both proxies' cluster identities, and the bytes go proxy to
proxy.  The alternative, relaying through the auth service, would make the
auth service carry every session's output; it must not.

Holder side (here): `PeerService` listens on ``proxy_service.peer_listen_addr``
and lets in only a client certificate from the cluster's TLS CA naming role
``proxy``; anything else is refused and logged.  A peer asks to join one
session (``join``); the session must be held here and running.  The holder
trusts the peer proxy's check of who may join (it has the person's roles:
`teleconch.proxy.joining`), attaches a `PeerParty` to the local hub, and
audits ``session.peer_join`` naming the peer proxy.  A `PeerParty` is a
joiner like any other: while the peer connection's send buffer is full it
takes no output (``wants_output``), its backlog is the hub's bounded one,
and it is dropped when that overflows.

Joiner side: `PeerClient.join` (`teleconch.proxy.peering_client`) returns a
`RemoteHub`, the `HubHandle` the local party calls.  The wire is
`teleconch.proxy.peering_wire`.

A connection's life (`PeerState`): WAITING (TLS, then the join request,
within JOIN_TIMEOUT) -> JOINED -> DONE; WAITING -> DONE when refused.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import crypto
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.auth.types import ActiveSession, Party
from teleconch.pki import ROLE_PROXY, TLSIdentity, peer_identity
from teleconch.proxy.peering_client import (
    PeerClient,
    PeerJoinFailed,
    RemoteHub,
)
from teleconch.proxy.peering_wire import (
    INPUT,
    JOIN_MODES,
    TO_HOLDER,
    Attached,
    Dropped,
    Ended,
    FrameProtocol,
    InputBlocked,
    Join,
    Leave,
    Message,
    PartyJoined,
    PartyLeft,
    Refused,
    Resize,
    Started,
)
from teleconch.proxy.sessions import (
    Ending,
    HubHandle,
    HubState,
    SessionHub,
    SessionOver,
    Sessions,
)
from teleconch.text import escape

__all__ = [
    "JOIN_TIMEOUT",
    "PeerClient",
    "PeerJoinFailed",
    "PeerParty",
    "PeerService",
    "PeerState",
    "RemoteHub",
]

log = Logger()

#: Seconds a peer has from connecting to asking for a session.
JOIN_TIMEOUT = 10.0
#: Peer connections open at once; more are closed as they come.
MAX_PEER_CONNECTIONS = 512
#: Seconds the stop waits for open peer connections to close.
STOP_WAIT = 5.0

Audit = Callable[..., Awaitable[None]]


class PeerState(enum.Enum):
    WAITING = "waiting"
    JOINED = "joined"
    DONE = "done"


_MOVES = {
    PeerState.WAITING: frozenset({PeerState.JOINED, PeerState.DONE}),
    PeerState.JOINED: frozenset({PeerState.DONE}),
    PeerState.DONE: frozenset(),
}


@attrs.frozen
class PeerProxy:
    """Who is at the other end: a proxy of this cluster, by its certificate."""

    host_id: str  # the certificate's CN
    name: str  # its DNS name (the proxy's nodename), else the host id


def proxy_of(cert: crypto.X509 | x509.Certificate | None) -> PeerProxy | None:
    """The proxy a verified certificate names, or None (another role, or none)."""
    found = peer_identity(cert)
    if found is None or found[0] != ROLE_PROXY:
        return None
    assert cert is not None
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return PeerProxy(found[1], names[0] if names else found[1])


class PeerParty:
    """A party of a hub here standing for one on another proxy: what the hub
    tells it goes down the peer connection."""

    def __init__(self, conn: HolderProtocol, record: Party) -> None:
        self._conn = conn
        self._record = record
        self.hub: HubHandle | None = None

    @property
    def record(self) -> Party:
        return self._record

    def attached(self, hub: HubHandle) -> None:
        self.hub = hub
        self._conn.send(Attached(hub.record))

    def session_started(self, session: ActiveSession) -> None:
        self._conn.send(Started(session))

    def output(self, data: bytes) -> None:
        self._conn.send_data(data)

    def wants_output(self) -> bool:
        """Not while the peer connection's send buffer is full: the hub keeps
        the rest in this party's bounded backlog (or drops it)."""
        return not self._conn.write_paused

    def input_blocked(self, blocked: bool) -> None:
        self._conn.send(InputBlocked(blocked))
        # The node takes no more: stop reading what the peer sends meanwhile.
        if blocked:
            self._conn.pauseProducing()
        else:
            self._conn.resumeProducing()

    def party_joined(self, party: Party) -> None:
        self._conn.send(PartyJoined(party))

    def party_left(self, party: Party, reason: str) -> None:
        self._conn.send(PartyLeft(party, reason))

    def dropped(self, reason: str) -> None:
        self._conn.finish(Dropped(reason))

    def session_ended(self, ending: Ending) -> None:
        self._conn.finish(Ended(ending))


@implementer(IHandshakeListener)
class HolderProtocol(FrameProtocol):
    """One peer proxy's connection to a session held here (thin: the
    decisions are the `PeerService`'s)."""

    allowed = TO_HOLDER
    data_kind = INPUT

    def __init__(self, service: PeerService) -> None:
        self._service = service
        self.state = PeerState.WAITING
        self.peer: PeerProxy | None = None
        self.party: PeerParty | None = None
        self._deadline: IDelayedCall | None = None
        self.closed: Deferred[None] = Deferred()

    def _move(self, to: PeerState) -> None:
        if to not in _MOVES[self.state]:
            raise AssertionError(f"peer connection cannot go {self.state} -> {to}")
        self.state = to

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = self._service.clock.callLater(JOIN_TIMEOUT, self._too_late)
        if not self._service.opened(self):
            self.broken = True
            self.log_refusal("too many peer connections; closing this one")
            self.transport.abortConnection()  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        cert = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
        self.peer = proxy_of(cert)
        if self.peer is None:
            found = peer_identity(cert)
            who = f"{found[0]} {found[1]!r}" if found else "no role"
            self.malformed(f"refused: its certificate is for {who}, not a proxy")

    def _too_late(self) -> None:
        self._deadline = None
        if self.state is PeerState.WAITING:
            self.malformed(f"no join request within {JOIN_TIMEOUT:g} s")

    def message_received(self, message: Message) -> None:
        if self.peer is None:
            self.malformed("a message before the peer was verified")
        elif isinstance(message, Join):
            if self.state is not PeerState.WAITING:
                self.malformed("a second join request on one connection")
                return
            self._service.join(self, self.peer, message)
        elif self.party is None or self.party.hub is None:
            self.malformed(f"{type(message).__name__.lower()} before a join")
        elif isinstance(message, Resize):
            self.party.hub.resize(self.party, message.cols, message.rows)
        elif isinstance(message, Leave):
            hub, party = self.party.hub, self.party
            self.finish(None)
            hub.leave(party, message.reason or "left")

    def data_received(self, data: bytes) -> None:
        if self.party is None or self.party.hub is None:
            self.malformed("input before a join")
        elif self.state is PeerState.JOINED:
            self.party.hub.input(self.party, data)

    def joined(self, party: PeerParty) -> None:
        self._move(PeerState.JOINED)
        self._cancel_deadline()
        self.party = party

    def refuse(self, message: str) -> None:
        """Tell the peer why not, and close."""
        self.finish(Refused(message))

    def finish(self, last: Message | None) -> None:
        """Send ``last`` (if any) after what is queued, then close."""
        if self.state is PeerState.DONE:
            return
        self._move(PeerState.DONE)
        if last is not None:
            self.send(last)
        self.close()

    def shut(self, reason: str) -> None:
        """This proxy is stopping: out of the session, and closed."""
        if self.state is PeerState.JOINED:
            assert self.party is not None and self.party.hub is not None
            hub, party = self.party.hub, self.party
            self.finish(Dropped(reason))
            hub.leave(party, reason)
        else:
            self.finish(None)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self.peer is None and not self.broken:
            # No handshake: no certificate, or one from another CA.
            self.log_refusal(
                f"refused at the TLS handshake ({reason.getErrorMessage()}): only "
                "proxies of this cluster may connect"
            )
        if self.state is PeerState.JOINED:
            self._move(PeerState.DONE)
            assert self.party is not None and self.party.hub is not None
            name = self.peer.name if self.peer else "the peer proxy"
            self.party.hub.leave(
                self.party, f"the connection from proxy {name} was lost"
            )
        elif self.state is PeerState.WAITING:
            self._move(PeerState.DONE)
        self._service.closed(self)
        self.closed.callback(None)


class PeerService(Service):
    """The holder side of proxy peering, in the proxy's MultiService: the
    listener's protocol factory, the joins it allows, and (for the joiner
    side) the `PeerClient` this proxy dials other proxies with."""

    def __init__(
        self,
        *,
        reactor: Any,
        clock: IReactorTime,
        identity: TLSIdentity,
        sessions: Sessions,
        audit: Audit,
    ) -> None:
        self.setName("peering")
        self.clock = clock
        self._identity = identity
        self._sessions = sessions
        self._audit = audit
        self._open: set[HolderProtocol] = set()
        self.client = PeerClient(reactor, identity, clock)

    def factory(self) -> TLSMemoryBIOFactory:
        """What the listener serves: TLS that requires a cluster certificate."""
        inner = Factory.forProtocol(lambda: HolderProtocol(self))
        options = self._identity.server_options(require_client=True)
        return TLSMemoryBIOFactory(options, False, inner, clock=self.clock)

    def opened(self, conn: HolderProtocol) -> bool:
        if not self.running or len(self._open) >= MAX_PEER_CONNECTIONS:
            return False
        self._open.add(conn)
        return True

    def closed(self, conn: HolderProtocol) -> None:
        self._open.discard(conn)

    def join(self, conn: HolderProtocol, peer: PeerProxy, request: Join) -> None:
        """Attach the peer's party to the session, if it is held here and running."""
        who = request.party
        hub = self._sessions.get(request.session_id)
        if hub is None or hub.state is not HubState.RUNNING:
            self._refuse(
                conn,
                peer,
                request,
                "session not held here",
                f"session {request.session_id} is not running on proxy "
                f"{self._identity.name}: it has ended, or another proxy holds it",
            )
            return
        if who.mode not in JOIN_MODES:
            self._refuse(conn, peer, request, "bad mode", f"cannot join as {who.mode}")
            return
        if any(p.record.id == who.id for p in hub.parties):
            self._refuse(
                conn, peer, request, "party id taken", "that party id is taken"
            )
            return
        party = PeerParty(conn, who)
        conn.joined(party)
        try:
            hub.join(party)
        except SessionOver as e:
            conn.refuse(str(e))
            return
        log.info(
            "proxy {peer} joined {user} to session {id} as {mode}",
            peer=escape(peer.name),
            user=escape(who.user),
            id=hub.id,
            mode=who.mode,
        )
        self._report(hub, peer, who, True)

    def _refuse(
        self,
        conn: HolderProtocol,
        peer: PeerProxy,
        request: Join,
        reason: str,
        message: str,
    ) -> None:
        conn.log_refusal(f"join of {request.session_id!r} refused: {message}")
        conn.refuse(message)
        hub = self._sessions.get(request.session_id)
        self._report(hub, peer, request.party, False, request.session_id, reason)

    def _report(
        self,
        hub: SessionHub | None,
        peer: PeerProxy,
        who: Party,
        success: bool,
        session_id: str = "",
        reason: str = "",
    ) -> None:
        fields: dict[str, Any] = {
            "session_id": hub.id if hub else session_id,
            "mode": who.mode,
            "party_id": who.id,
            "remote_addr": who.remote_addr,
            "peer_proxy": peer.name,
            "peer_proxy_id": peer.host_id,
        }
        if hub is not None:
            fields["node"] = hub.record.node
        if reason:
            fields["reason"] = reason

        async def report() -> None:
            await self._audit(
                "session.peer_join", user=who.user, success=success, **fields
            )

        Deferred.fromCoroutine(report()).addErrback(
            lambda f: log.warn(
                "could not audit a peer join: {e}", e=f.getErrorMessage()
            )
        )

    def stopService(self) -> Deferred[None]:
        """Close every peer connection, both ways, and wait (a little) for them."""
        super().stopService()
        return Deferred.fromCoroutine(self._close_all())

    async def _close_all(self) -> None:
        conns = list(self._open)
        waits = [c.closed for c in conns] + self.client.close_all()
        for conn in conns:
            conn.shut("the proxy holding the session is stopping")
        everything = gatherResults(waits, consumeErrors=True)
        try:
            await everything.addTimeout(STOP_WAIT, self.clock)
        except Exception:
            for conn in list(self._open):
                if conn.transport is not None:
                    conn.transport.abortConnection()  # type: ignore[attr-defined]
