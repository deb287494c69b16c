"""Node renewals have their own rate limit, not the logins' per-address one."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.task import Clock

from teleconch.auth.agent import AuthAgent
from teleconch.web.site import WebConfig, make_site
from teleconch.web.static_files import StaticFile, StaticFiles

ADDR = "192.0.2.7"


def _child(resource: Any, *path: bytes) -> Any:
    for name in path:
        resource = resource.children[name]
    return resource


def test_renewals_have_their_own_larger_budget() -> None:
    """Many nodes behind one address renew together (cron): the logins'
    bucket, used up, does not stop them, and theirs is larger."""
    site = make_site(
        cast(AuthAgent, object()),
        WebConfig(cluster_name="test.example", proxy_ssh_addr="proxy:3023"),
        Clock(),
        StaticFiles({"invite.html": StaticFile(b"<html></html>", b"text/html")}),
    )
    webapi = _child(site.resource, b"v1", b"webapi")
    login = _child(webapi, b"ssh", b"certs").limiter
    renew = _child(webapi, b"host", b"renew").limiter
    while login.allow(ADDR):
        pass
    assert renew.allow(ADDR)
    assert renew.capacity > login.capacity and renew.per_second > login.per_second
