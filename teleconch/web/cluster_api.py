"""The web API a logged-in person uses: the cluster, its nodes and live
sessions, and their own account (password, authenticator).

Every route here is a `SessionResource`: the session rule is its base
class's.  What a person may see of the cluster is what their roles allow,
decided by the same `Router` as ``teleconch ls`` and ``ssh -J``.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from teleconch.auth.types import ActiveSession
from teleconch.proxy.join_policy import join_modes
from teleconch.proxy.routing import Router
from teleconch.totp import qr_svg
from teleconch.web.http import ErrorResource, HTTPError
from teleconch.web.jsonapi import Dir, field, json_body
from teleconch.web.websession import Session, SessionResource, WebSessions

NO_TERMINAL = "the web terminal is not available on this proxy"


class SitesResource(SessionResource):
    """GET /v1/webapi/sites: the cluster (Teleport's "sites"); its routes below."""

    isLeaf = False

    def __init__(
        self,
        sessions: WebSessions,
        cluster_name: str,
        router: Router,
        terminal: Resource | None,
    ) -> None:
        super().__init__(sessions)
        self._name = cluster_name
        cluster = Dir()
        cluster.putChild(b"nodes", NodesResource(sessions, router))
        cluster.putChild(b"sessions", ActiveSessionsResource(sessions, router))
        cluster.putChild(b"connect", terminal or ErrorResource(503, NO_TERMINAL))
        self.putChild(cluster_name.encode(), cluster)
        #: The cluster's routes, for other modules' to be added (recordings).
        self.cluster = cluster

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return UnknownCluster(self.sessions, self._name, path)

    async def on_get(self, request: Request, session: Session) -> Any:
        return {"sites": [{"name": self._name, "status": "online"}]}


class UnknownCluster(SessionResource):
    """Any route under another cluster's name: a 404 naming this one."""

    def __init__(self, sessions: WebSessions, cluster_name: str, asked: bytes) -> None:
        super().__init__(sessions)
        self._name = cluster_name
        self._asked = asked.decode("utf-8", "replace")[:100]

    async def _refuse(self, request: Request, session: Session) -> Any:
        raise HTTPError(
            404,
            f"no cluster {self._asked!r} here: this proxy serves cluster "
            f"{self._name!r} (/v1/webapi/sites/{self._name}/...)",
        )

    on_get = on_post = on_put = on_delete = _refuse


def node_item(node: dict[str, Any]) -> dict[str, Any]:
    """A node as Teleport's web API lists it, with the logins allowed there."""
    return {
        "id": node["id"],
        "hostname": node["name"],
        "addr": node["addr"],
        "tags": [{"name": k, "value": v} for k, v in sorted(node["labels"].items())],
        "logins": list(node["logins"]),
    }


class NodesResource(SessionResource):
    """GET /v1/webapi/sites/<cluster>/nodes: the nodes the roles allow."""

    def __init__(self, sessions: WebSessions, router: Router) -> None:
        super().__init__(sessions)
        self._router = router

    async def on_get(self, request: Request, session: Session) -> Any:
        nodes = await self._router.reachable(session.grant)
        return {"items": [node_item(n) for n in nodes]}


def session_item(s: ActiveSession) -> dict[str, Any]:
    """A live session in the shape of Teleport's session list."""
    return {
        "id": s.id,
        "user": s.user,
        "login": s.login,
        "created": s.created,
        "last_active": s.last_active,
        "server_id": s.node_id,
        "server_hostname": s.node,
        "server_addr": s.node_addr,
        "parties": [
            {
                "id": p.id,
                "user": p.user,
                "remote_addr": p.remote_addr,
                "last_active": p.last_active,
                "mode": p.mode,
            }
            for p in s.parties
        ],
        "terminal_params": {"w": s.cols, "h": s.rows},
    }


class ActiveSessionsResource(SessionResource):
    """GET /v1/webapi/sites/<cluster>/sessions: the live sessions of the
    cluster (whichever proxy holds them) on nodes this person may reach, or
    that they may join; ``join_modes`` says how (`join_policy`)."""

    def __init__(self, sessions: WebSessions, router: Router) -> None:
        super().__init__(sessions)
        self._router = router

    async def on_get(self, request: Request, session: Session) -> Any:
        grant = session.grant
        ids = {n["id"] for n in await self._router.reachable(grant)}
        roles = await self._router.roles_of(grant)
        live = await self.sessions.agent.list_active_sessions()
        items = []
        for s in sorted(live, key=lambda s: s.created):
            node = await self._router.node_by_id(s.node_id)
            labels = dict(node.labels) if node is not None else None
            modes = join_modes(roles, grant.user, s, labels)
            if s.node_id in ids or modes:
                items.append({**session_item(s), "join_modes": modes})
        return {"sessions": items}


class PasswordResource(SessionResource):
    """PUT /v1/webapi/users/password ``{old_password, new_password,
    second_factor_token}``: the person's own password (their other web
    sessions end)."""

    async def on_put(self, request: Request, session: Session) -> Any:
        data = json_body(request)
        await self.sessions.agent.change_password(
            session.creds,
            field(data, "old_password"),
            field(data, "second_factor_token"),
            field(data, "new_password"),
            session.client,
        )
        return {"message": "your password is changed"}


class AuthenticatorResource(SessionResource):
    """POST /v1/webapi/mfa/authenticator ``{password}``: a new TOTP secret,
    pending; PUT ``{second_factor_token}``: a code from it makes it theirs."""

    async def on_post(self, request: Request, session: Session) -> Any:
        data = json_body(request)
        pending = await self.sessions.agent.start_authenticator_enrolment(
            session.creds, field(data, "password"), session.client
        )
        return {
            "totp_secret": pending.totp_secret,
            "otpauth_uri": pending.otpauth_uri,
            "qr_svg": qr_svg(pending.otpauth_uri),
            "expires": pending.expires,
        }

    async def on_put(self, request: Request, session: Session) -> Any:
        data = json_body(request)
        await self.sessions.agent.confirm_authenticator_enrolment(
            session.creds, field(data, "second_factor_token"), session.client
        )
        return {
            "message": "your new authenticator is enrolled; the old one no longer works"
        }
