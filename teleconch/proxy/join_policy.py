"""Who may join a live session, and how: pure functions of roles and records.

- The session's owner may join it again, in any mode.
- The built-in ``auditor`` role may observe every session, whatever node
  it runs on.
- Anyone else needs a role with a ``join_sessions`` rule whose ``roles``
  name a role of the session's owner (``ActiveSession.owner_roles``; ``*``:
  any) and whose ``modes`` hold the mode asked for, and a role that selects
  the session's node (the node RBAC that opening a session there needs:
  ``node_labels``; a node that is not registered selects none).

`join_refusal` says why not (for the audit log and the person), `may_join`
only whether.  The joiner's proxy decides, before it joins anything: it
has the joiner's roles, and it audits the refusal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from teleconch.auth.types import ActiveSession, Role
from teleconch.proxy.routing import labels_match
from teleconch.proxy.session_protocols import JOIN_MODES, OBSERVER

AUDITOR = "auditor"


def _rule_allows(role: Role, owner_roles: Sequence[str], mode: str) -> bool:
    return any(
        mode in rule.modes and ("*" in rule.roles or set(rule.roles) & set(owner_roles))
        for rule in role.join_sessions
    )


def join_refusal(
    joiner_roles: Sequence[Role],
    joiner: str,
    session: ActiveSession,
    mode: str,
    node_labels: Mapping[str, str] | None,
) -> str | None:
    """None when ``joiner`` may join ``session`` in ``mode``; else why not.

    ``node_labels`` are the labels of the node the session runs on, None
    when it is not a registered node.
    """
    if mode not in JOIN_MODES:
        return f"{mode!r} is not a way to join: use {' or '.join(JOIN_MODES)}"
    if joiner == session.user:
        return None
    if mode == OBSERVER and any(r.builtin and r.name == AUDITOR for r in joiner_roles):
        return None
    names = ", ".join(r.name for r in joiner_roles) or "none"
    if not any(_rule_allows(r, session.owner_roles, mode) for r in joiner_roles):
        return (
            f"your roles ({names}) do not allow joining {session.user}'s sessions "
            f"as {mode}; ask an administrator for a role with a join_sessions rule"
        )
    if node_labels is None or not any(
        labels_match(r.node_labels, node_labels) for r in joiner_roles
    ):
        return (
            f"your roles ({names}) do not allow the node {session.node} the session "
            "runs on; ask an administrator for a role that does"
        )
    return None


def may_join(
    joiner_roles: Sequence[Role],
    joiner: str,
    session: ActiveSession,
    mode: str,
    node_labels: Mapping[str, str] | None,
) -> bool:
    return join_refusal(joiner_roles, joiner, session, mode, node_labels) is None


def join_modes(
    joiner_roles: Sequence[Role],
    joiner: str,
    session: ActiveSession,
    node_labels: Mapping[str, str] | None,
) -> list[str]:
    """The modes ``joiner`` may join ``session`` in (none: it is not theirs to join)."""
    return [
        m for m in JOIN_MODES if may_join(joiner_roles, joiner, session, m, node_labels)
    ]
