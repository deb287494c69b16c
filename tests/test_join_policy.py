"""Who may join a live session, and how (teleconch.proxy.join_policy), and
the roles' ``join_sessions`` rules as administrators write them (rbac).

Unit tests: pure functions over records.
"""

from __future__ import annotations

import pytest

from teleconch.auth.errors import BadParameter
from teleconch.auth.rbac import BUILTIN_ROLES, role_from_spec
from teleconch.auth.types import JoinRule, Role, RoleSpec
from teleconch.proxy.join_policy import join_modes, join_refusal, may_join
from tests.terminal_fakes import session_record

AUDITOR = next(r for r in BUILTIN_ROLES if r.name == "auditor")
ACCESS = next(r for r in BUILTIN_ROLES if r.name == "access")
WATCH_DEV = Role(
    "watch-dev",
    node_labels={"env": ("dev",)},
    join_sessions=(JoinRule(("dev",), ("observer",)),),
)
PAIR_DEV = Role(
    "pair-dev",
    node_labels={"*": ("*",)},
    join_sessions=(JoinRule(("dev",), ("observer", "peer")),),
)
ANYONE = Role(
    "watch-all",
    node_labels={"*": ("*",)},
    join_sessions=(JoinRule(("*",), ("observer",)),),
)
DEV_NODE = {"env": "dev"}
SESSION = session_record(user="alice", owner_roles=("dev",))


@pytest.mark.parametrize(
    ("roles", "joiner", "mode", "labels", "allowed"),
    [
        # the owner: any mode, whatever the roles, even no node rights
        ((), "alice", "peer", None, True),
        ((), "alice", "observer", DEV_NODE, True),
        # the built-in auditor observes everything, reaching no node
        ((AUDITOR,), "bob", "observer", None, True),
        ((AUDITOR,), "bob", "observer", DEV_NODE, True),
        ((AUDITOR,), "bob", "peer", DEV_NODE, False),
        # a rule naming an owner's role, with the mode, and the node selected
        ((WATCH_DEV,), "bob", "observer", DEV_NODE, True),
        ((WATCH_DEV,), "bob", "peer", DEV_NODE, False),  # mode not in the rule
        ((PAIR_DEV,), "bob", "peer", DEV_NODE, True),
        ((ANYONE,), "bob", "observer", {"env": "prod"}, True),
        # no rule at all: the node rights alone do not let one join
        ((ACCESS,), "bob", "observer", DEV_NODE, False),
        ((), "bob", "observer", DEV_NODE, False),
        # a rule, but the node is one the roles do not reach (or unregistered)
        ((WATCH_DEV,), "bob", "observer", {"env": "prod"}, False),
        ((PAIR_DEV,), "bob", "observer", None, False),
        # a mode that is no way to join
        ((PAIR_DEV,), "bob", "owner", DEV_NODE, False),
        ((), "alice", "moderator", DEV_NODE, False),
    ],
)
def test_who_may_join_in_which_mode(
    roles: tuple[Role, ...],
    joiner: str,
    mode: str,
    labels: dict[str, str] | None,
    allowed: bool,
) -> None:
    assert may_join(roles, joiner, SESSION, mode, labels) is allowed


def test_a_rule_for_other_owners_roles_does_not_apply() -> None:
    """The rule's roles are the session OWNER's: a session opened with
    ``access`` is not joinable through a rule for ``dev``."""
    theirs = session_record(owner_roles=("access",))
    why = join_refusal((WATCH_DEV,), "bob", theirs, "observer", DEV_NODE)
    assert why is not None and "join_sessions" in why and "alice's" in why


def test_a_refusal_for_the_node_names_it() -> None:
    why = join_refusal((WATCH_DEV,), "bob", SESSION, "observer", {"env": "prod"})
    assert why is not None and "node web1" in why


def test_the_modes_listed_are_those_allowed() -> None:
    assert join_modes((PAIR_DEV,), "bob", SESSION, DEV_NODE) == ["observer", "peer"]
    assert join_modes((WATCH_DEV,), "bob", SESSION, DEV_NODE) == ["observer"]
    assert join_modes((ACCESS,), "bob", SESSION, DEV_NODE) == []


def test_an_administrators_join_rules_are_checked() -> None:
    good = RoleSpec.from_json(
        {
            "name": "pair",
            "join_sessions": [{"roles": ["dev", "*"], "modes": ["peer"]}],
        }
    )
    assert role_from_spec(good).join_sessions == (JoinRule(("dev", "*"), ("peer",)),)
    for rules, message in (
        ([{"roles": ["dev"], "modes": ["moderator"]}], "not a join mode"),
        ([{"roles": ["bad name!"], "modes": ["peer"]}], "not a valid role name"),
        ([{"roles": [], "modes": ["peer"]}], "at least one role"),
    ):
        spec = RoleSpec.from_json({"name": "pair", "join_sessions": rules})
        with pytest.raises(BadParameter, match=message):
            role_from_spec(spec)
    with pytest.raises(BadParameter, match="join_sessions rule is"):
        RoleSpec.from_json({"name": "pair", "join_sessions": [{"roles": ["dev"]}]})


def test_a_roles_join_rules_travel_and_are_stored_as_json() -> None:
    """What the API carries and the store keeps: a role's to_json/from_json."""
    assert Role.from_json(PAIR_DEV.to_json()) == PAIR_DEV
    spec = RoleSpec("pair", join_sessions=PAIR_DEV.join_sessions)
    assert RoleSpec.from_json(spec.to_json()) == spec
