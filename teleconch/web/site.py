"""The proxy's HTTPS listener: the URL tree of the web API and the pages.

Each route's rule is its base class's: a `JSONResource` is public (a
``limiter`` when it takes a secret to guess), a `SessionResource` needs a
live web session (``teleconch.web.websession``).  This module only builds
the tree; the routes live in ``public_api`` (no session), ``websession``
(log in, out, renew) and ``cluster_api`` (nodes, sessions, account), the
pages in ``pages``.

Two places are the web terminal's: ``terminal``, the resource for
``/v1/webapi/sites/<cluster>/connect`` (absent: a JSON 503 saying so), and
the page ``/web/console/<node>/<login>`` (``static/console.html``, served
when it is there).  Recordings (``recordings_api``) are under the cluster's
routes too, and their pages are ``/web/recordings`` and ``/web/player/<sid>``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from teleconch.auth.agent import AuthAgent
from teleconch.health import Readiness, add_routes
from teleconch.proxy.routing import Router
from teleconch.web.cluster_api import (
    AuthenticatorResource,
    PasswordResource,
    SitesResource,
)
from teleconch.web.http import PeerCounter, WebSite
from teleconch.web.jsonapi import DenialAudit, Dir, RateLimiter
from teleconch.web.keys import WebSessionKeys
from teleconch.web.pages import web_tree
from teleconch.web.public_api import (
    HostCAResource,
    HostCredentialsResource,
    HostRenewResource,
    InviteResource,
    PingResource,
    SSHCertsResource,
)
from teleconch.web.recording_ranges import Decoder, ThreadedReactor
from teleconch.web.recordings_api import RecordingsResource
from teleconch.web.static_files import StaticFiles
from teleconch.web.webconfig import WebConfig
from teleconch.web.websession import (
    LoginResource,
    LogoutResource,
    Methods,
    RenewResource,
    WebSessions,
)

#: The renewals' own bucket per address: a burst and a steady rate.
RENEW_BURST = 200.0
RENEW_PER_SECOND = 5.0


class ProxySite(WebSite):
    """The proxy's site, with what outlives a request: the web sessions' core."""

    def __init__(
        self,
        root: Resource,
        reactor: IReactorTime,
        connections: PeerCounter,
        sessions: WebSessions,
    ) -> None:
        super().__init__(root, reactor, connections)
        self.web_sessions = sessions

    def stop(self) -> None:
        """Cancel the pending audit of refusals (saying what it did not write)."""
        self.web_sessions.denials.stop()


def make_site(
    agent: AuthAgent,
    config: WebConfig,
    clock: IReactorTime,
    static: StaticFiles,
    limiter: RateLimiter | None = None,
    max_connections_per_address: int = 64,
    renew_limiter: RateLimiter | None = None,
    *,
    router: Router | None = None,
    keys: WebSessionKeys | None = None,
    terminal: Resource | None = None,
    threads: ThreadedReactor | None = None,
    readiness: Readiness | None = None,
) -> ProxySite:
    limiter = limiter or RateLimiter(clock)
    # Renewals are signed by a node's own key (nothing to guess), and many
    # nodes behind one address renew at once: a bucket of their own, larger.
    renew_limiter = renew_limiter or RateLimiter(
        clock, capacity=RENEW_BURST, per_second=RENEW_PER_SECOND
    )
    router = router or Router(agent, clock, config.cluster_name, False)
    sessions = WebSessions(
        agent,
        clock,
        config.idle_timeout,
        keys or WebSessionKeys(clock),
        DenialAudit(agent, clock),
    )
    root, v1, webapi, users, ssh, host, mfa = (Dir() for _ in range(7))
    root.putChild(b"v1", v1)
    v1.putChild(b"webapi", webapi)
    webapi.putChild(b"ping", PingResource(config))
    webapi.putChild(b"users", users)
    users.putChild(b"invite", InviteResource(agent, limiter))
    users.putChild(b"password", PasswordResource(sessions))
    webapi.putChild(b"ssh", ssh)
    ssh.putChild(b"certs", SSHCertsResource(agent, limiter))
    webapi.putChild(b"host", host)
    host.putChild(b"ca", HostCAResource(agent, config))
    host.putChild(b"credentials", HostCredentialsResource(agent, limiter))
    host.putChild(b"renew", HostRenewResource(agent, renew_limiter))

    web_sessions = Methods(
        post=LoginResource(sessions, limiter), delete=LogoutResource(sessions)
    )
    web_sessions.putChild(b"renew", RenewResource(sessions))
    webapi.putChild(b"sessions", web_sessions)
    sites = SitesResource(sessions, config.cluster_name, router, terminal)
    webapi.putChild(b"sites", sites)
    # Recordings decode off the reactor where there is a thread pool (not in
    # unit tests, which run on a Clock).
    sites.cluster.putChild(
        b"recordings", RecordingsResource(sessions, Decoder(threads))
    )
    webapi.putChild(b"mfa", mfa)
    mfa.putChild(b"authenticator", AuthenticatorResource(sessions))

    root.putChild(b"web", web_tree(static))
    # For load balancers: no session, no CSRF token, GET and HEAD only.
    if readiness is not None:
        add_routes(root, readiness)
    return ProxySite(root, clock, PeerCounter(max_connections_per_address), sessions)
