"""Joining a live session: find it, decide who may, attach the party.

`Joining` is the one core every way of joining shares (the ``teleconch
join`` subsystem, `teleconch.proxy.join_subsystem`, and the web terminal's
``sid``/``mode`` params): it takes a `Grant` and a party whose record says
the user and the mode, never a protocol's session.

1. The session is looked up here first (`Sessions`: a hub this proxy
   holds), else in the cluster's list of live sessions (any proxy's).
2. `teleconch.proxy.join_policy` decides, with the joiner's roles and the
   labels of the session's node.  A refusal is a `JoinRefused` (a message
   for the person, a reason for the operator) and one failed
   ``session.join`` audit event.
3. A hub held here: `SessionHub.join` (the hub audits the join, and later
   the leave).  A session held by another proxy: the peering client's
   ``join`` (`Peers`) when this proxy has one; without it the join is
   refused, naming the proxy that holds the session.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from teleconch.auth.types import ActiveSession, Party, Role
from teleconch.proxy.join_policy import join_modes, join_refusal
from teleconch.proxy.peering_client import PeerJoinFailed
from teleconch.proxy.routing import Grant, Router
from teleconch.proxy.sessions import HubHandle, SessionOver, SessionParty, Sessions

log = Logger()


class JoinRefused(Exception):
    """The join is refused: ``str()`` for the person, ``reason`` for the audit."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class JoinAgent(Protocol):
    """What joining asks of the auth service (an `AuthAgent`)."""

    async def list_active_sessions(self) -> tuple[ActiveSession, ...]: ...

    async def emit_event(
        self, event: str, user: str = "", success: bool = True, **fields: Any
    ) -> None: ...


class Peers(Protocol):
    """Joins sessions other proxies hold (`teleconch.proxy.peering.PeerClient`)."""

    async def join(
        self, session: ActiveSession, party: SessionParty, joiner: Party
    ) -> HubHandle: ...


def not_here(session: ActiveSession) -> str:
    return (
        f"session {session.id} is held by proxy {session.proxy}; joining across "
        "proxies is not available on this proxy"
    )


class Joining:
    """Finds live sessions, checks who may join them, and joins them."""

    def __init__(
        self,
        *,
        agent: JoinAgent,
        router: Router,
        sessions: Sessions,
        peers: Peers | None = None,
    ) -> None:
        self._agent = agent
        self._router = router
        self._sessions = sessions
        #: Proxy peering's client; None: sessions held elsewhere are refused.
        self.peers = peers

    async def joinable(self, grant: Grant) -> list[tuple[ActiveSession, list[str]]]:
        """Every live session of the cluster ``grant`` may join, with the modes."""
        roles = await self._router.roles_of(grant)
        out = []
        for session in await self._agent.list_active_sessions():
            modes = join_modes(roles, grant.user, session, await self._labels(session))
            if modes:
                out.append((session, modes))
        return sorted(out, key=lambda item: item[0].created)

    async def join(
        self, grant: Grant, session_id: str, party: SessionParty, how: str
    ) -> HubHandle:
        """Attach ``party`` (its record names the user and mode) to the session;
        JoinRefused (audited) says why not."""
        joiner = party.record
        hub = self._sessions.get(session_id)
        session = hub.record if hub is not None else await self._find(session_id)
        if session is None:
            self._refused(
                grant, joiner, how, session_id, "",
                JoinRefused(
                    f"no live session {session_id!r}: it has ended, or the id is "
                    "wrong; `teleconch sessions ls` lists those you may join",
                    "no such session",
                ),
            )  # fmt: skip
        roles = await self._roles(grant)
        why = join_refusal(
            roles, grant.user, session, joiner.mode, await self._labels(session)
        )
        if why is not None:
            self._refused(
                grant, joiner, how, session.id, session.node,
                JoinRefused(why, "join not allowed"),
            )  # fmt: skip
        if hub is None:
            if self.peers is None:
                self._refused(
                    grant, joiner, how, session.id, session.node,
                    JoinRefused(not_here(session), "session on another proxy"),
                )  # fmt: skip
            try:
                return await self.peers.join(session, party, joiner)
            except PeerJoinFailed as e:
                self._refused(
                    grant, joiner, how, session.id, session.node,
                    JoinRefused(str(e), "peer join failed"),
                )  # fmt: skip
        try:
            hub.join(party)
        except SessionOver:
            self._refused(
                grant, joiner, how, session.id, session.node,
                JoinRefused(f"session {session.id} has ended", "session ended"),
            )  # fmt: skip
        return hub

    async def _find(self, session_id: str) -> ActiveSession | None:
        try:
            live = await self._agent.list_active_sessions()
        except Exception as e:
            log.warn("could not list live sessions: {e}", e=str(e))
            raise JoinRefused(
                "the proxy could not reach the auth service to find the session; "
                "try again",
                "auth service unreachable",
            ) from e
        return next((s for s in live if s.id == session_id), None)

    async def _roles(self, grant: Grant) -> list[Role]:
        try:
            return await self._router.roles_of(grant)
        except Exception as e:
            log.warn("could not read the roles of {user}: {e}", user=grant.user, e=e)
            raise JoinRefused(
                "the proxy could not reach the auth service to check your roles; "
                "try again",
                "auth service unreachable",
            ) from e

    async def _labels(self, session: ActiveSession) -> dict[str, str] | None:
        node = await self._router.node_by_id(session.node_id)
        return dict(node.labels) if node is not None else None

    def _refused(
        self,
        grant: Grant,
        joiner: Party,
        how: str,
        session_id: str,
        node: str,
        error: JoinRefused,
    ) -> NoReturn:
        """Audit the refusal and raise it."""
        d = Deferred.fromCoroutine(
            self._agent.emit_event(
                "session.join", user=grant.user, success=False,
                session_id=session_id, node=node, mode=joiner.mode, how=how,
                client_addr=joiner.remote_addr, reason=error.reason,
                message=str(error),
            )
        )  # fmt: skip
        d.addErrback(lambda f: log.failure("could not audit a refused join", f))
        raise error
