"""Value objects of the auth service, shared by the store, the server and the API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from teleconch.auth.errors import BadParameter

#: The role template that stands for the user's own logins (Teleport's trait).
INTERNAL_LOGINS = "{{internal.logins}}"

#: A label selector that matches every node.
ALL_NODES: Mapping[str, tuple[str, ...]] = {"*": ("*",)}


def _freeze_labels(
    value: Mapping[str, Any],
) -> Mapping[str, tuple[str, ...]]:
    return {str(k): tuple(str(v) for v in vs) for k, vs in value.items()}


def _strings(value: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def _str_map(value: Mapping[str, Any]) -> Mapping[str, str]:
    return {str(k): str(v) for k, v in value.items()}


def _freeze_fields(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


@attrs.frozen
class JoinRule:
    """Whose sessions a role may join, and how: ``roles`` are roles of the
    session's owner (``"*"``: any), ``modes`` of ``observer`` and ``peer``."""

    roles: tuple[str, ...] = attrs.field(converter=_strings)
    modes: tuple[str, ...] = attrs.field(converter=_strings)

    def to_json(self) -> dict[str, Any]:
        return {"roles": list(self.roles), "modes": list(self.modes)}

    @classmethod
    def from_json(cls, data: Any) -> JoinRule:
        if isinstance(data, JoinRule):
            return data
        if not isinstance(data, Mapping) or set(data) != {"roles", "modes"}:
            raise BadParameter(
                'a join_sessions rule is {"roles": [ROLE, ...], "modes": [MODE, ...]}'
            )
        roles, modes = data["roles"], data["modes"]
        if not isinstance(roles, list | tuple) or not isinstance(modes, list | tuple):
            raise BadParameter("a join_sessions rule's roles and modes are lists")
        return cls(roles, modes)


def _join_rules(value: Iterable[Any]) -> tuple[JoinRule, ...]:
    return tuple(JoinRule.from_json(r) for r in value)


@attrs.frozen
class Role:
    """What a user holding this role may do.

    ``node_labels`` maps a label key to the values allowed for it; ``"*"``
    as key and value matches every node.  ``rules`` names the cluster
    resources the role may read or write (``"*"`` for all).
    ``join_sessions`` says whose live sessions its holders may join.
    """

    name: str
    logins: tuple[str, ...] = attrs.field(converter=_strings, default=())
    node_labels: Mapping[str, tuple[str, ...]] = attrs.field(
        converter=_freeze_labels, factory=dict
    )
    max_session_ttl: int = 12 * 3600
    rules: tuple[str, ...] = attrs.field(converter=_strings, default=())
    builtin: bool = False
    join_sessions: tuple[JoinRule, ...] = attrs.field(converter=_join_rules, default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "logins": list(self.logins),
            "node_labels": {k: list(v) for k, v in self.node_labels.items()},
            "max_session_ttl": self.max_session_ttl,
            "rules": list(self.rules),
            "builtin": self.builtin,
            "join_sessions": [r.to_json() for r in self.join_sessions],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Role:
        return cls(
            name=data["name"],
            logins=data.get("logins", ()),
            node_labels=data.get("node_labels", {}),
            max_session_ttl=data.get("max_session_ttl", 0),
            rules=data.get("rules", ()),
            builtin=data.get("builtin", False),
            join_sessions=data.get("join_sessions", ()),
        )


@attrs.frozen
class RoleSpec:
    """A role as an administrator defines it: no rules, never built in.

    The shape is checked here; the grammar of each name in ``rbac``.
    """

    name: str
    logins: tuple[str, ...] = ()
    node_labels: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    max_session_ttl: int = 12 * 3600
    join_sessions: tuple[JoinRule, ...] = attrs.field(converter=_join_rules, default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "logins": list(self.logins),
            "node_labels": {k: list(v) for k, v in self.node_labels.items()},
            "max_session_ttl": self.max_session_ttl,
            "join_sessions": [r.to_json() for r in self.join_sessions],
        }

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> RoleSpec:
        try:
            return cls(
                name=str(spec["name"]),
                logins=tuple(str(x) for x in spec.get("logins", [])),
                node_labels={
                    str(k): tuple(str(v) for v in vs)
                    for k, vs in spec.get("node_labels", {}).items()
                },
                max_session_ttl=int(spec.get("max_session_ttl", 12 * 3600)),
                join_sessions=spec.get("join_sessions", ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadParameter(f"malformed role: {e}") from None


@attrs.frozen
class User:
    """A person.  Secrets are kept out of ``repr`` so they never reach a log."""

    name: str
    logins: tuple[str, ...] = attrs.field(converter=_strings, default=())
    roles: tuple[str, ...] = attrs.field(converter=_strings, default=())
    #: ``"invited"`` until the person has set a password and an OTP app.
    status: str = "invited"
    created: float = 0.0
    password_hash: bytes | None = attrs.field(default=None, repr=False)
    totp_secret: str | None = attrs.field(default=None, repr=False)
    #: The TOTP time step of the last code accepted; a code is good once.
    totp_last_counter: int = -1


@attrs.frozen
class Token:
    """A single-use secret: an invite, a password reset, or a join token.

    Only the SHA-256 of the secret is stored (``token_hash``); ``name`` is a
    short prefix of the secret, enough to list and remove it.
    """

    token_hash: str
    name: str
    kind: str  # "invite" | "reset" | "proxy" | "node"
    created: float
    expires: float
    user: str | None = None
    #: The TOTP secret shown on an invite page: the same on every visit.
    totp_secret: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class AuditEvent:
    """One line of the audit log.  ``fields`` never holds a secret."""

    event: str
    time: float
    user: str = ""
    success: bool = True
    fields: Mapping[str, Any] = attrs.field(converter=_freeze_fields, factory=dict)
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "time": self.time,
            "user": self.user,
            "success": self.success,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditEvent:
        return cls(
            id=data.get("id"),
            event=data["event"],
            time=data["time"],
            user=data.get("user", ""),
            success=data.get("success", True),
            fields=data.get("fields", {}),
        )


@attrs.frozen
class Node:
    """A server registered in the cluster."""

    id: str
    name: str
    addr: str
    labels: Mapping[str, str] = attrs.field(converter=_str_map, factory=dict)
    created: float = 0.0
    #: When its host certificate from `teleconch join openssh` expires; 0 when
    #: the auth service did not issue one (a node added with `nodes add`).
    cert_expires: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "addr": self.addr,
            "labels": dict(self.labels),
            "created": self.created,
            "cert_expires": self.cert_expires or None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Node:
        return cls(
            id=data["id"],
            name=data["name"],
            addr=data["addr"],
            labels=data.get("labels", {}),
            created=data.get("created", 0.0),
            cert_expires=data.get("cert_expires") or 0.0,
        )


@attrs.frozen
class ProxyInfo:
    """A proxy that joined the cluster, as it last announced itself."""

    id: str
    name: str
    public_addr: str
    ssh_addr: str
    last_seen: float


@attrs.frozen
class JoinedIdentity:
    """A proxy or node that traded a join token for its identity.

    Its name and host principals are its own from then on: no later joiner
    and no registered node may take them.
    """

    host_id: str
    role: str
    name: str
    principals: tuple[str, ...] = attrs.field(converter=_strings, default=())
    joined: float = 0.0


@attrs.frozen
class StreamInfo:
    """A byte stream kept in chunks (a session recording, for one).

    ``size`` is the number of bytes stored so far; a ``complete`` stream
    takes no more.  ``meta`` is what its writer said about it (JSON values).
    """

    stream_id: str
    meta: Mapping[str, Any] = attrs.field(converter=_freeze_fields, factory=dict)
    created: float = 0.0
    size: int = 0
    complete: bool = False


@attrs.frozen
class SettingOverride:
    """A cluster setting set by ``teleconch-ctl cluster set``: it wins over the
    config file's value; who set it and when, for ``cluster show``."""

    key: str
    value: str
    set_by: str = ""
    set_at: float = 0.0


# --- what listings show of a record


@attrs.frozen
class UserEntry:
    """A user as ``users ls`` shows them: no secrets, the lock-out applied."""

    name: str
    logins: tuple[str, ...] = attrs.field(converter=_strings, default=())
    roles: tuple[str, ...] = attrs.field(converter=_strings, default=())
    status: str = "invited"
    locked_until: float | None = None
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "logins": list(self.logins),
            "roles": list(self.roles),
            "status": self.status,
            "locked_until": self.locked_until,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UserEntry:
        return cls(
            name=data["name"],
            logins=data.get("logins", ()),
            roles=data.get("roles", ()),
            status=data.get("status", "invited"),
            locked_until=data.get("locked_until"),
            created=data.get("created", 0.0),
        )


@attrs.frozen
class TokenEntry:
    """A live token as ``tokens ls`` shows it: its name, never the secret."""

    name: str
    kind: str
    user: str | None
    expires: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "user": self.user,
            "expires": self.expires,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenEntry:
        return cls(data["name"], data["kind"], data.get("user"), data["expires"])


@attrs.frozen
class HostSigner:
    """A host CA a client trusts for a cluster's hosts."""

    domain_name: str
    checking_keys: tuple[str, ...] = attrs.field(converter=_strings, default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "domain_name": self.domain_name,
            "checking_keys": list(self.checking_keys),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostSigner:
        return cls(data["domain_name"], data.get("checking_keys", ()))


@attrs.frozen
class Party:
    """Someone attached to a live session: its owner, or a peer or observer who joined."""

    id: str
    user: str
    remote_addr: str
    mode: str = "peer"  # owner (opened it) | peer (joined, types) | observer (watches)
    last_active: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Party:
        return cls(
            id=str(data["id"]),
            user=str(data["user"]),
            remote_addr=str(data.get("remote_addr", "")),
            mode=str(data.get("mode", "peer")),
            last_active=float(data.get("last_active", 0.0)),
        )


@attrs.frozen
class ActiveSession:
    """A terminal session a proxy holds now, as it registered it.

    The proxy re-registers it while it lives (``proxy_heartbeat`` apart at
    most); one not heard of for longer is gone (its proxy died), and the auth
    service stops listing it.
    """

    id: str
    user: str
    node: str  # the node's name
    node_id: str
    node_addr: str
    login: str
    proxy: str  # the name of the proxy holding it
    created: float
    last_active: float
    cols: int
    rows: int
    parties: tuple[Party, ...] = ()
    kind: str = "web"  # how it was opened: web | ssh (the recording proxy)
    #: The holding proxy's peer address (host:port): where another proxy of the
    #: cluster joins it (teleconch.proxy.peering).  Never shown to browsers.
    proxy_addr: str = ""
    #: The owner's roles, set by whoever opens the session: the joiners' roles'
    #: ``join_sessions`` rules name them (`teleconch.proxy.join_policy`).
    owner_roles: tuple[str, ...] = attrs.field(converter=_strings, default=())

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["parties"] = [p.to_json() for p in self.parties]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActiveSession:
        try:
            return cls(
                id=str(data["id"]),
                user=str(data["user"]),
                node=str(data["node"]),
                node_id=str(data.get("node_id", "")),
                node_addr=str(data.get("node_addr", "")),
                login=str(data["login"]),
                proxy=str(data.get("proxy", "")),
                created=float(data["created"]),
                last_active=float(data.get("last_active", data["created"])),
                cols=int(data.get("cols", 80)),
                rows=int(data.get("rows", 24)),
                parties=tuple(Party.from_json(p) for p in data.get("parties", ())),
                kind=str(data.get("kind", "web")),
                proxy_addr=str(data.get("proxy_addr", "")),
                owner_roles=tuple(str(r) for r in data.get("owner_roles", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BadParameter(f"a session record is malformed: {e}") from None


# --- what the store keeps of sessions


@attrs.frozen
class WebSession:
    """A web session as stored: the hashes of its two secrets, never the secrets.

    ``roles`` and ``logins`` are the user's at login: the session keeps them
    to its end, as a certificate would.  A new authenticator being enrolled
    waits here (``pending_totp_secret`` until ``pending_totp_expires``): it
    belongs to the session that showed it, and goes when the session does.
    """

    id: str
    user: str
    cookie_hash: str = attrs.field(repr=False)
    bearer_hash: str = attrs.field(repr=False)
    roles: tuple[str, ...] = attrs.field(converter=_strings, default=())
    logins: tuple[str, ...] = attrs.field(converter=_strings, default=())
    created: float = 0.0
    last_active: float = 0.0
    #: The absolute end: no renewal goes past it.
    expires: float = 0.0
    pending_totp_secret: str | None = attrs.field(default=None, repr=False)
    pending_totp_expires: float = 0.0


@attrs.frozen
class LiveSession:
    """A live session as the auth service keeps it: the record its proxy
    registered, and when the auth service last heard of it (its own clock)."""

    session: ActiveSession
    heard: float
