"""Proxy peering, the joiner's side: a session held by another proxy, as a
`HubHandle` here (see `teleconch.proxy.peering` for the whole picture).

`PeerClient.join` dials the session's ``proxy_addr`` with this proxy's
cluster identity, checks that the server's certificate is the holding
proxy's (role ``proxy``, and the host id the auth service registered the
session under), asks to join, and returns the `RemoteHub` once the holder
has attached the party.  Who may join was decided before the call, here,
where the person's roles are.

Flow control: output is handed to the local party as it arrives; while the
party wants no more, this side stops reading the peer connection, so the
holder's send buffer fills and its `PeerParty` takes no more output (the
hub keeps it in the party's bounded backlog, or drops the party).  The
party's ``ready`` resumes reading.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from teleconch.addresses import parse_host_port
from teleconch.auth.types import ActiveSession, Party
from teleconch.pki import ROLE_PROXY, TLSIdentity, peer_identity
from teleconch.proxy.peering_wire import (
    OUTPUT,
    TO_JOINER,
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
from teleconch.proxy.sessions import Ending, SessionParty

log = Logger()

#: Seconds to reach the holding proxy, and then to be attached.
CONNECT_TIMEOUT = 10.0
ATTACH_TIMEOUT = 10.0


class JoiningParty(SessionParty, Protocol):
    """A party that hears of joins, leaves and its own drop (the join
    contract's additions to `SessionParty`)."""

    def party_joined(self, party: Party) -> None: ...

    def party_left(self, party: Party, reason: str) -> None: ...

    def dropped(self, reason: str) -> None: ...


class PeerJoinFailed(Exception):
    """The session could not be joined through its proxy; ``str()`` is for the person."""


class JoinerProtocol(FrameProtocol):
    """This proxy's connection to the proxy holding one session."""

    allowed = TO_JOINER
    data_kind = OUTPUT

    def __init__(
        self, session: ActiveSession, party: JoiningParty, joiner: Party
    ) -> None:
        self.session = session
        self.party = party
        self.joiner = joiner
        self.hub: RemoteHub | None = None
        self.done = False
        self._holder_blocked = False
        #: Fires with the RemoteHub once attached, or fails with PeerJoinFailed.
        self.attached: Deferred[RemoteHub] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def handshake_checked(self) -> None:
        """The server is the holding proxy: ask to join."""
        self.send(Join(self.session.id, self.joiner))

    def message_received(self, message: Message) -> None:
        if isinstance(message, Attached | Refused):
            if self.hub is not None or self.attached.called:
                self.malformed(f"{type(message).__name__.lower()} twice")
            elif isinstance(message, Refused):
                self._fail(f"the proxy holding the session refused: {message.message}")
                self._close()
            else:
                self.hub = RemoteHub(self, message.session)
                self.party.attached(self.hub)
                self.attached.callback(self.hub)
            return
        if self.hub is None:
            self.malformed(f"{type(message).__name__.lower()} before attached")
        elif self.done:
            return
        elif isinstance(message, Started):
            self.hub.record = message.session
            self.party.session_started(message.session)
        elif isinstance(message, PartyJoined):
            self.party.party_joined(message.party)
        elif isinstance(message, PartyLeft):
            self.party.party_left(message.party, message.reason)
        elif isinstance(message, InputBlocked):
            self._holder_blocked = message.blocked
            self._tell_blocked()
        elif isinstance(message, Ended):
            self._close()
            self.party.session_ended(message.ending)
        elif isinstance(message, Dropped):
            self._close()
            self.party.dropped(message.reason)

    def data_received(self, data: bytes) -> None:
        if self.hub is None:
            self.malformed("output before attached")
            return
        if self.done:
            return
        self.party.output(data)
        if not self.done and not self.party.wants_output():
            self.pauseProducing()  # the holder waits (then backs up) meanwhile

    def writable_again(self) -> None:
        self._tell_blocked()

    def _tell_blocked(self) -> None:
        if not self.done and self.hub is not None:
            self.party.input_blocked(self._holder_blocked or self.write_paused)

    def _fail(self, message: str) -> None:
        if not self.attached.called:
            self.attached.errback(PeerJoinFailed(message))

    def _close(self) -> None:
        self.done = True
        self.close()

    def leave(self, reason: str) -> None:
        if not self.done:
            self.send(Leave(reason))
            self._close()

    def malformed(self, why: str) -> None:
        super().malformed(why)
        self._fail("the proxy holding the session answered out of protocol; try again")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._fail(
            f"the proxy holding the session at {self.session.proxy_addr} closed the "
            f"connection ({reason.getErrorMessage()}); try again"
        )
        if self.hub is not None and not self.done:
            self.done = True
            self.party.session_ended(
                Ending(None, "the connection to the proxy holding the session was lost")
            )
        self.done = True
        self.closed.callback(None)


@implementer(IHandshakeListener)
class CheckedJoinerProtocol(JoinerProtocol):
    """A `JoinerProtocol` that speaks only once TLS has shown the holder."""

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        found = peer_identity(self.transport.getPeerCertificate())  # type: ignore[attr-defined]
        expected = self.session.proxy
        if found is None or found[0] != ROLE_PROXY:
            role = found[0] if found else "no role"
            self._fail(
                f"the server at {self.session.proxy_addr} is not a proxy of this "
                "cluster; the session's registration may be stale"
            )
            self.malformed(f"the server at {self.session.proxy_addr} is a {role}")
        elif expected and found[1] != expected:
            self._fail(
                f"another proxy answers at {self.session.proxy_addr} than the one "
                "holding the session; try again"
            )
            self.malformed(f"the server is proxy {found[1]!r}, not {expected!r}")
        else:
            self.handshake_checked()


class RemoteHub:
    """A session held by another proxy, as the local party calls it."""

    def __init__(self, conn: JoinerProtocol, record: ActiveSession) -> None:
        self._conn = conn
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def input(self, party: SessionParty, data: bytes) -> None:
        self._conn.send_data(data)  # observers' keys are dropped at the holder

    def resize(self, party: SessionParty, cols: int, rows: int) -> None:
        self._conn.send(Resize(cols, rows))

    def leave(self, party: SessionParty, reason: str) -> None:
        self._conn.leave(reason)

    def ready(self) -> None:
        if self._conn.paused and not self._conn.done:
            self._conn.resumeProducing()


def _connect_text(e: BaseException) -> str:
    for kind, text in (
        (ierror.ConnectionRefusedError, "connection refused"),
        (ierror.TimeoutError, "connection timed out"),
        (ierror.DNSLookupError, "name or service not known"),
        (ierror.NoRouteError, "no route to host"),
    ):
        if isinstance(e, kind):
            return text
    return str(e) or type(e).__name__


class PeerClient:
    """Joins sessions held by other proxies of the cluster."""

    def __init__(
        self, reactor: Any, identity: TLSIdentity, clock: IReactorTime | None = None
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = clock or reactor
        self._options = identity.peer_options()
        self._open: set[JoinerProtocol] = set()

    async def join(
        self, session: ActiveSession, party: JoiningParty, joiner: Party
    ) -> RemoteHub:
        """``party`` in ``session`` (held by another proxy), as ``joiner``;
        raises `PeerJoinFailed` with a message for the person."""
        if not session.proxy_addr:
            raise PeerJoinFailed(
                f"session {session.id} is held by a proxy without proxy peering "
                "(no peer address registered); join it from that proxy"
            )
        try:
            addr = parse_host_port(session.proxy_addr)
        except ValueError:
            raise PeerJoinFailed(
                f"session {session.id} has a malformed proxy address"
            ) from None
        proto = CheckedJoinerProtocol(session, party, joiner)
        endpoint = wrapClientTLS(
            self._options,
            HostnameEndpoint(
                self._reactor, addr.host, addr.port, timeout=CONNECT_TIMEOUT
            ),
        )
        try:
            await endpoint.connect(Factory.forProtocol(lambda: proto))
        except Exception as e:
            raise PeerJoinFailed(
                f"cannot reach the proxy holding session {session.id} at {addr} "
                f"({_connect_text(e)}); try again, or join from that proxy"
            ) from None
        self._open.add(proto)
        proto.closed.addBoth(lambda _: self._open.discard(proto))
        attached = proto.attached
        attached.addTimeout(ATTACH_TIMEOUT, self._clock)
        try:
            return await attached
        except DeferredTimeout:
            if proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
            raise PeerJoinFailed(
                f"the proxy holding session {session.id} did not answer in time; "
                "try again"
            ) from None

    def close_all(self) -> list[Deferred[None]]:
        """Leave every session joined through here (this proxy is stopping)."""
        waits = []
        for proto in list(self._open):
            waits.append(proto.closed)
            if proto.hub is not None and not proto.done:
                proto.leave("the joining proxy is stopping")
                proto.done = True
                proto.party.session_ended(Ending(None, "this proxy is stopping"))
            elif proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
        return waits
