"""What `teleconch-ctl` prints: headers for every column, timestamps people read."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest_twisted

from teleconch.auth.types import AuditEvent, Role
from teleconch.client import ctl


class _Agent:
    """Only the listing calls these commands make, with fixed answers."""

    async def list_roles(self) -> list[Role]:
        return [
            Role(name="access", logins=["{{internal.logins}}"],
                 node_labels={"*": ["*"]}, max_session_ttl=43200, builtin=True),
            Role(name="dev", logins=["dev"], node_labels={"env": ["dev"]},
                 max_session_ttl=3600, builtin=False),
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
        "Kind",
    ]
    assert access.endswith("built-in") and dev.endswith("custom")


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
