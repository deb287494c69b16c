"""The Auth API's errors: raised on the server, re-raised with their message
on the caller, each under one AMP error code."""

from __future__ import annotations


class AuthAPIError(Exception):
    """Base of the errors the Auth API sends back; the text is for people."""


class AccessDenied(AuthAPIError):
    pass


class NotFoundError(AuthAPIError):
    pass


class AlreadyExistsError(AuthAPIError):
    pass


class BadParameter(AuthAPIError):
    pass


class AuthenticationFailed(AuthAPIError):
    pass


class LockedOut(AuthAPIError):
    pass


class RateLimited(AuthAPIError):
    pass


class SessionExpired(AuthAPIError):
    """A web session that is unknown, ended, idle too long or past its end."""


ERRORS: dict[type[Exception], bytes] = {
    AccessDenied: b"ACCESS_DENIED",
    NotFoundError: b"NOT_FOUND",
    AlreadyExistsError: b"ALREADY_EXISTS",
    BadParameter: b"BAD_PARAMETER",
    AuthenticationFailed: b"AUTHENTICATION_FAILED",
    LockedOut: b"LOCKED_OUT",
    RateLimited: b"RATE_LIMITED",
    SessionExpired: b"SESSION_EXPIRED",
}
