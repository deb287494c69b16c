"""What the web API needs to know of the proxy serving it."""

from __future__ import annotations

import attrs


@attrs.frozen
class WebConfig:
    cluster_name: str
    proxy_ssh_addr: str
    #: ``proxy_service.web_idle_timeout``: sent with every web session call,
    #: so the auth service ends a session idle for longer.
    idle_timeout: int = 30 * 60
