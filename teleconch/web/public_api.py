"""The web API's routes that need no web session: the cluster's ping, sign-up
by invite, ``teleconch login``'s certificate, and a node's join and renewal.

Resources are thin: they check the shape of a request and hand it to the
AuthAgent.  Those that take a password, a token or a proof are held to a
rate limit per address.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from teleconch import __version__
from teleconch.auth.agent import AuthAgent
from teleconch.totp import qr_svg
from teleconch.web.http import HTTPError, client_host
from teleconch.web.jsonapi import JSONResource, RateLimiter, field, json_body
from teleconch.web.webconfig import WebConfig


class PingResource(JSONResource):
    def __init__(self, config: WebConfig) -> None:
        super().__init__()
        self._config = config

    async def get(self, request: Request) -> Any:
        return {
            "cluster_name": self._config.cluster_name,
            "proxy_ssh_addr": self._config.proxy_ssh_addr,
            "server_version": __version__,
            "auth": {"second_factor": "otp", "type": "local"},
        }


class AgentResource(JSONResource):
    """A route answered through the AuthAgent, held to one rate limit."""

    def __init__(self, agent: AuthAgent, limiter: RateLimiter) -> None:
        super().__init__()
        self._agent = agent
        self.limiter = limiter


class InviteResource(AgentResource):
    """GET /v1/webapi/users/invite/<token>; POST /v1/webapi/users/invite."""

    async def get(self, request: Request) -> Any:
        if not request.postpath or not request.postpath[0]:
            raise HTTPError(404, "no invite token in the URL")
        token = request.postpath[0].decode("utf-8", "replace")
        invite = await self._agent.get_invite(token)
        return {
            "user": invite.user,
            "totp_secret": invite.totp_secret,
            "otpauth_uri": invite.otpauth_uri,
            "qr_svg": qr_svg(invite.otpauth_uri),
            "expires": invite.expires,
        }

    async def post(self, request: Request) -> Any:
        if request.postpath and request.postpath[0]:
            raise HTTPError(404, "POST the invite to /v1/webapi/users/invite")
        client = client_host(request)
        data = json_body(request)
        user = await self._agent.complete_invite(
            field(data, "token"),
            field(data, "password"),
            field(data, "otp_token"),
            client,
        )
        return {"user": user}


class SSHCertsResource(AgentResource):
    """POST /v1/webapi/ssh/certs: password + OTP for a short-lived certificate."""

    too_many = "too many login attempts from your address; wait a minute"

    async def post(self, request: Request) -> Any:
        client = client_host(request)
        data = json_body(request)
        ttl = data.get("ttl", 0)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
            raise HTTPError(400, "field 'ttl' must be a whole number of seconds")
        issued = await self._agent.authenticate_ssh_user(
            user=field(data, "user"),
            password=field(data, "password"),
            otp_token=field(data, "otp_token"),
            pub_key=field(data, "pub_key"),
            ttl=ttl,
            client_addr=client,
        )
        return {
            "username": issued.username,
            "cert": issued.cert,
            "valid_before": issued.valid_before,
            "host_signers": [s.to_json() for s in issued.host_signers],
        }


class HostCAResource(JSONResource):
    """GET /v1/webapi/host/ca: the cluster's TLS CA, for a node to check its pin
    before it spends its token (a courtesy: anyone can relay these public
    certificates; what protects the node is the attested answer)."""

    def __init__(self, agent: AuthAgent, config: WebConfig) -> None:
        super().__init__()
        self._agent = agent
        self._config = config

    async def get(self, request: Request) -> Any:
        return {
            "cluster_name": self._config.cluster_name,
            "tls_ca_certs": [c.decode("ascii") for c in self._agent.identity.ca_pems],
        }


def _labels(data: dict[str, Any]) -> dict[str, str]:
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(v, str) for v in labels.values()
    ):
        raise HTTPError(400, "field 'labels' must be an object of strings")
    return labels


class HostCredentialsResource(AgentResource):
    """POST /v1/webapi/host/credentials: a node's public key, and its join
    token's name with a proof over the request (never the token), for its
    host certificate, the user CA and its registration (attested)."""

    too_many = "too many join attempts from your address; wait a minute"

    async def post(self, request: Request) -> Any:
        client = client_host(request)
        data = json_body(request)
        document = await self._agent.join_openssh_node(
            token_name=field(data, "token_name"),
            proof=field(data, "proof"),
            name=field(data, "node_name"),
            addr=field(data, "addr"),
            labels=_labels(data),
            public_key=field(data, "public_key"),
            client_addr=client,
        )
        return document.to_json()


class HostRenewResource(AgentResource):
    """POST /v1/webapi/host/renew: a joined node's certificate, signed by its key."""

    too_many = "too many renewals from your address; wait a minute"

    async def post(self, request: Request) -> Any:
        client = client_host(request)
        data = json_body(request)
        document = await self._agent.renew_node_certificate(
            cert=field(data, "cert"),
            timestamp=field(data, "timestamp", int),
            signature=field(data, "signature"),
            client_addr=client,
        )
        return document.to_json()
