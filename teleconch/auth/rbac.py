"""Roles: the built-in ones, how a role definition is checked, and the logins
roles grant.

The proxy imports this module to expand logins from a certificate's roles;
it pulls in neither bcrypt nor the auth server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from teleconch.auth import errors as api
from teleconch.auth.types import ALL_NODES, INTERNAL_LOGINS, JoinRule, Role, RoleSpec
from teleconch.auth.validation import LABEL, LOGIN, ROLE_NAME

MAX_CERT_TTL = 12 * 3600
MIN_CERT_TTL = 60
#: The certificate extension naming the user's roles.
ROLES_EXTENSION = "teleconch-roles"
#: The user's own logins, so the proxy can expand {{internal.logins}} per role.
TRAITS_EXTENSION = "teleconch-traits"


BUILTIN_ROLES = (
    Role(
        name="access",
        logins=(INTERNAL_LOGINS,),
        node_labels=ALL_NODES,
        rules=(),
        builtin=True,
    ),
    Role(
        name="auditor",
        logins=(),
        node_labels={},
        rules=("events:read", "sessions:read"),
        builtin=True,
        # Observes every session (`teleconch.proxy.join_policy`), nodes or not.
        join_sessions=(JoinRule(("*",), ("observer",)),),
    ),
    Role(
        name="admin",
        logins=(INTERNAL_LOGINS,),
        node_labels=ALL_NODES,
        rules=("*",),
        builtin=True,
    ),
)


def expand_logins(roles: Iterable[Role], user_logins: Sequence[str]) -> list[str]:
    """The logins the roles grant, with the user's own in place of the template."""
    out: set[str] = set()
    for role in roles:
        for login in role.logins:
            if login == INTERNAL_LOGINS:
                out.update(user_logins)
            else:
                out.add(login)
    return sorted(out)


def role_from_spec(spec: RoleSpec) -> Role:
    """A role an administrator defined, checked; BadParameter says what is wrong.

    Only the name, logins, node labels, session TTL and join rules come from
    the spec: a custom role has no rules and is never built in.
    """
    name, logins, labels = spec.name, spec.logins, spec.node_labels
    ttl = spec.max_session_ttl
    if not ROLE_NAME.fullmatch(name):
        raise api.BadParameter(f"{name!r} is not a valid role name")
    for login in logins:
        if login != INTERNAL_LOGINS and not LOGIN.fullmatch(login):
            raise api.BadParameter(f"{login!r} is not a valid login")
    for key, values in labels.items():
        for item in (key, *values):
            if not LABEL.fullmatch(item):
                raise api.BadParameter(f"{item!r} is not a valid label key or value")
    if not 60 <= ttl <= MAX_CERT_TTL:
        raise api.BadParameter("max_session_ttl must be between 1m and 12h")
    if len(spec.join_sessions) > MAX_JOIN_RULES:
        raise api.BadParameter(
            f"a role has at most {MAX_JOIN_RULES} join_sessions rules"
        )
    for rule in spec.join_sessions:
        check_join_rule(rule)
    return Role(
        name=name,
        logins=logins,
        node_labels=labels,
        max_session_ttl=ttl,
        join_sessions=spec.join_sessions,
    )


#: The modes a join_sessions rule may allow (a session's owner is no mode to join in).
JOIN_RULE_MODES = ("observer", "peer")
MAX_JOIN_RULES = 32


def check_join_rule(rule: JoinRule) -> None:
    """BadParameter unless ``rule`` names roles (or ``*``) and known modes."""
    if not rule.roles or not rule.modes:
        raise api.BadParameter(
            "a join_sessions rule names at least one role (or *) and one mode"
        )
    for role in rule.roles:
        if role != "*" and not ROLE_NAME.fullmatch(role):
            raise api.BadParameter(
                f"{role!r} is not a valid role name in join_sessions"
            )
    for mode in rule.modes:
        if mode not in JOIN_RULE_MODES:
            raise api.BadParameter(
                f"{mode!r} is not a join mode: use {' or '.join(JOIN_RULE_MODES)}"
            )
