"""What `teleconch-ctl` prints: headers for every column, timestamps people read."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest
import pytest_twisted

from teleconch.auth.types import AuditEvent, JoinRule, Role, RoleSpec
from teleconch.client import ctl


class _Agent:
    """Only the listing calls these commands make, with fixed answers."""

    async def list_roles(self) -> list[Role]:
        return [
            Role(name="access", logins=["{{internal.logins}}"],
                 node_labels={"*": ["*"]}, max_session_ttl=43200, builtin=True),
            Role(name="dev", logins=["dev"], node_labels={"env": ["dev"]},
                 max_session_ttl=3600, builtin=False,
                 join_sessions=[JoinRule(("dev",), ("observer", "peer"))]),
        ]  # fmt: skip

    async def search_events(self, **kw: Any) -> list[AuditEvent]:
        return [
            AuditEvent(id=1, event="proxy.session", time=1_700_000_000.5,
                       user="alice", success=True,
                       fields={"start": 1_700_000_000.25, "end": 1_700_000_060.0,
                               "bytes_up": 10}),
        ]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_roles_ls_has_a_header_for_every_column(capsys: Any) -> None:
    """The last column says what it is, and custom roles are named as such."""
    await ctl.roles_ls(_Agent(), argparse.Namespace(format="text"))  # type: ignore[arg-type]
    header, _, access, dev = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "Role",
        "Logins",
        "Node",
        "labels",
        "Max",
        "session",
        "TTL",
        "Joins",
        "Kind",
    ]
    assert access.endswith("built-in") and dev.endswith("custom")
    assert "dev:observer,peer" in dev


@pytest_twisted.ensureDeferred
async def test_roles_add_takes_join_rules_and_says_how_to_write_one() -> None:
    """``--join-sessions access,dev:observer,peer`` is one rule; a rule without
    its modes is refused with the form to use."""
    saved: list[RoleSpec] = []

    class Saving:
        async def upsert_role(self, role: RoleSpec) -> None:
            saved.append(role)

    args = argparse.Namespace(
        name="pair", logins="", node_labels=None, max_session_ttl="1h",
        join_sessions=["access,dev:observer,peer", "*:observer"],
    )  # fmt: skip
    await ctl.roles_add(Saving(), args)  # type: ignore[arg-type]
    assert saved[0].join_sessions == (
        JoinRule(("access", "dev"), ("observer", "peer")),
        JoinRule(("*",), ("observer",)),
    )
    args.join_sessions = ["access"]
    with pytest.raises(ctl.CtlError, match="expected OWNER_ROLES:MODES"):
        await ctl.roles_add(Saving(), args)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_events_ls_shows_local_iso_timestamps_not_epoch_floats(
    capsys: Any,
) -> None:
    """The time column and time fields (start, end) are ISO 8601 with an offset."""
    args = argparse.Namespace(
        since=None, type=None, user=None, limit=10, format="text", now=0.0
    )
    await ctl.events_ls(_Agent(), args)  # type: ignore[arg-type]
    row = capsys.readouterr().out.splitlines()[2]
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"
    assert re.match(iso, row)
    assert re.search(rf"start={iso}", row) and re.search(rf"end={iso}", row)
    assert "1700000000" not in row and "bytes_up=10" in row
