"""What every part of the Auth API shares: caller roles, errors, the command base."""

from __future__ import annotations

import attrs

from teleconch.auth.errors import (
    ERRORS,
    AccessDenied,
    AlreadyExistsError,
    AuthAPIError,
    AuthenticationFailed,
    BadParameter,
    LockedOut,
    NotFoundError,
    RateLimited,
    SessionExpired,
)
from teleconch.auth.wire import (
    ARGUMENT_CHUNKS,
    JSON,
    MAX_COMMAND_BYTES,
    AuthCommand,
    Empty,
)
from teleconch.pki import ROLE_ADMIN, ROLE_AUTH, ROLE_NODE, ROLE_PROXY

__all__ = [
    "ANONYMOUS",
    "ARGUMENT_CHUNKS",
    "CLUSTER_ROLES",
    "ERRORS",
    "JSON",
    "MAX_COMMAND_BYTES",
    "AccessDenied",
    "AlreadyExistsError",
    "AuthAPIError",
    "AuthCommand",
    "AuthenticationFailed",
    "BadParameter",
    "Empty",
    "LockedOut",
    "Name",
    "NotFoundError",
    "RateLimited",
    "SessionExpired",
]

ANONYMOUS = "anonymous"
CLUSTER_ROLES = frozenset({ROLE_ADMIN, ROLE_PROXY, ROLE_NODE, ROLE_AUTH})


@attrs.frozen
class Name:
    """The name of a user, role, token, node or recording."""

    name: str
