"""The grammar of every name the auth service accepts, in one place.

A name that reaches the audit log, a certificate or a table is checked here
first, so a newline, a control character or a 60,000-character string never
gets further than the API's door.
"""

from __future__ import annotations

import ipaddress
import re

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,63}")
LOGIN = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABEL = re.compile(r"[A-Za-z0-9*][A-Za-z0-9./_*-]{0,62}")
NODE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62}[A-Za-z0-9])?")

USER_NAME_RULE = (
    "letters, digits and . _ @ + - (at most 64, starting with a letter or digit)"
)
NODE_NAME_RULE = (
    "letters, digits, '.' and '-' (at most 64, starting and ending with a letter "
    "or digit), not an address"
)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_user_name(name: str) -> bool:
    return USER_NAME.fullmatch(name) is not None


def is_node_name(name: str) -> bool:
    """A name a node or a joining peer may have: DNS-like, never an address."""
    return NODE_NAME.fullmatch(name) is not None and not is_ip(name)


def is_host(text: str) -> bool:
    """A host part of an advertised address: a node-style name or an IP address."""
    return NODE_NAME.fullmatch(text) is not None or is_ip(text)


def is_loopback(host: str) -> bool:
    """localhost, or a loopback address (127/8, ::1)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    return is_ip(host) and ipaddress.ip_address(host).is_loopback
