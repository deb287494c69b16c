"""The cluster's settings that every proxy follows: recording mode and its options."""

from __future__ import annotations

import attrs

from teleconch.auth.wire import AuthCommand, Empty
from teleconch.pki import ROLE_ADMIN, ROLE_PROXY


@attrs.frozen
class ClusterSettings:
    #: ``auth_service.session_recording`` (`teleconch.config.SESSION_RECORDING_MODES`):
    #: ``node`` (web terminal sessions are recorded, sessions to OpenSSH nodes
    #: are not), ``proxy`` (the proxy terminates and records every session), ``off``.
    session_recording: str = "node"
    #: Whether what people type is recorded too (``auth_service.record_input``).
    record_input: bool = False
    #: In proxy mode, whether a node must present a host certificate from the
    #: host CA (``auth_service.proxy_checks_host_keys``, as Teleport's).
    proxy_checks_host_keys: bool = True


class GetClusterSettings(AuthCommand[Empty, ClusterSettings]):
    """The settings as they are now; proxies ask every few seconds."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY})
