"""The audit log, and nodes with their host certificates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from teleconch.auth.attest import Attested
from teleconch.auth.protocol.common import Name
from teleconch.auth.types import (
    AuditEvent,
    Node,
)
from teleconch.auth.wire import (
    AuthCommand,
    Empty,
)
from teleconch.pki import ROLE_ADMIN, ROLE_NODE, ROLE_PROXY

# --- audit


@attrs.frozen
class EventQuery:
    since: float | None = None
    until: float | None = None
    events: tuple[str, ...] = ()
    user: str | None = None
    limit: int = 1000


@attrs.frozen
class Events:
    events: tuple[AuditEvent, ...]


class SearchEvents(AuthCommand[EventQuery, Events]):
    pass


@attrs.frozen
class Report:
    event: str
    user: str
    success: bool
    #: Free-form, bounded on the server (teleconch.auth.audit).
    fields: Mapping[str, Any]


class EmitAuditEvent(AuthCommand[Report, Empty]):
    """A proxy or node reports what it did or refused."""

    roles = frozenset({ROLE_PROXY, ROLE_NODE})


# --- nodes


@attrs.frozen
class NodeRegistration:
    name: str
    addr: str
    labels: Mapping[str, str]


@attrs.frozen
class NodeRecord:
    node: Node


class UpsertNode(AuthCommand[NodeRegistration, NodeRecord]):
    """Register a server (an OpenSSH sshd or a teleconch node) by name and address."""


@attrs.frozen
class Nodes:
    nodes: tuple[Node, ...]


class ListNodes(AuthCommand[Empty, Nodes]):
    """Every registered node; the proxy filters by the user's roles."""

    roles = frozenset({ROLE_ADMIN, ROLE_PROXY})


class DeleteNode(AuthCommand[Name, Empty]):
    pass


@attrs.frozen
class HostKey:
    public_key: str
    hosts: tuple[str, ...]
    ttl: int


@attrs.frozen
class HostCertificate:
    cert: str
    principals: tuple[str, ...]


class SignHostCertificate(AuthCommand[HostKey, HostCertificate]):
    """An OpenSSH host certificate for a node's own key (``auth sign --host``).

    The node's private key is made where it will live; only its public key
    travels here.
    """


@attrs.frozen
class NodeJoin:
    """A node's join: the token's public name and a proof, never the token."""

    token_name: str
    proof: str = attrs.field(repr=False)
    name: str
    addr: str
    labels: Mapping[str, str]
    public_key: str
    client_addr: str


@attrs.frozen
class Document:
    """An answer the auth service signed, for the node to check."""

    document: Attested


class JoinOpenSSHNode(AuthCommand[NodeJoin, Document]):
    """An OpenSSH node joins itself with a node token, through the proxy's web API.

    The token never travels: the node names it (its public name) and proves
    it holds it with an HMAC over what it asks for (name, address, labels,
    public host key; ``teleconch.auth.attest.join_proof``), so whoever relays
    the request cannot change it.  The answer (host certificate, user CA) is
    attested by the auth service, bound to that proof.
    """

    roles = frozenset({ROLE_PROXY})


@attrs.frozen
class Renewal:
    cert: str
    timestamp: int
    signature: str
    client_addr: str


class RenewNodeCertificate(AuthCommand[Renewal, Document]):
    """A joined node renews its host certificate, signing it with its host key."""

    roles = frozenset({ROLE_PROXY})
