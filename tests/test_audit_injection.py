"""A name chosen by whoever connects cannot forge, hide or swamp audit rows.

Interop: a whole cluster with real TLS listeners on 127.0.0.1, and the real
`teleconch-ctl events ls` as an operator runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor

from teleconch.auth.agent import AuthAgent
from teleconch.client.webapi import WebAPIError
from teleconch.pki import TLSIdentity
from tests.harness import Cluster, run, start_cluster

pytestmark = pytest.mark.interop

FORGED = "2026-01-01 00:00:00 UTC  user.login  root  ok  forged=yes"


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


def _pub_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


async def _events_table(c: Cluster, *args: str) -> str:
    r = await run(
        [
            "teleconch-ctl",
            "--data-dir",
            str(c.data_dir),
            "--auth-server",
            str(c.auth_addr),
            "events",
            "ls",
            *args,
        ]
    )
    assert r.code == 0, r.err
    return r.out


async def _proxy_agent(c: Cluster) -> AuthAgent:
    identity = TLSIdentity.load(c.data_dir / "proxy")
    assert identity is not None
    agent = AuthAgent(reactor, [c.auth_addr], identity)
    agent.startService()
    return agent


@pytest_twisted.ensureDeferred
async def test_a_login_name_with_a_newline_is_refused_and_forges_no_row(
    cluster: Cluster,
) -> None:
    """The user name grammar holds at login; the attempt's row prints on one line."""
    with pytest.raises(WebAPIError) as e:
        await cluster.web().ssh_certs(
            f"alice\n{FORGED}", "a password", "123456", _pub_key(), 60
        )
    assert e.value.status == 400
    assert "not a valid user name" in str(e.value)
    out = await _events_table(cluster, "--type", "user.login")
    lines = out.splitlines()
    assert len(lines) == 3, out  # header, rule, one row
    assert not any(line.startswith(FORGED[:10]) for line in lines)
    assert "alice\\x0a2026" in lines[2]


@pytest_twisted.ensureDeferred
async def test_nul_and_bidi_controls_print_as_escapes(cluster: Cluster) -> None:
    """A reported login with NUL and U+202E shows them as visible escapes, never raw."""
    agent = await _proxy_agent(cluster)
    try:
        await agent.emit_event(
            "proxy.auth",
            user="root\x00\u202egnp.exe",
            success=False,
            reason="no certificate\x1b[2J",
        )
    finally:
        await agent.stopService()
    out = await _events_table(cluster, "--type", "proxy.auth")
    assert "\x00" not in out and "\u202e" not in out and "\x1b" not in out
    assert "root\\x00\\u202egnp.exe" in out
    assert "\\x1b[2J" in out


@pytest_twisted.ensureDeferred
async def test_a_huge_name_is_capped_in_the_audit_log_and_its_table(
    cluster: Cluster,
) -> None:
    """A 60,000-character name or field is stored capped and never pads the table."""
    agent = await _proxy_agent(cluster)
    try:
        await agent.emit_event(
            "proxy.auth", user="u" * 60_000, success=False, reason="r" * 60_000
        )
        for name in ("v" * 60_000, "w" * 65):
            with pytest.raises(WebAPIError) as e:
                await cluster.web().ssh_certs(name, "pw", "123456", _pub_key(), 60)
            assert e.value.status == 400
    finally:
        await agent.stopService()
    events = await cluster.admin_agent().search_events(
        events=["proxy.auth", "user.login"]
    )
    assert len(events) == 3
    for event in events:
        assert len(event.user) < 200
        assert all(len(str(v)) < 1100 for v in event.fields.values())
    out = await _events_table(cluster)
    assert max(len(line) for line in out.splitlines()) < 1200
