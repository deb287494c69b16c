"""Secrets in the auth API's records stay out of their repr (logs, tracebacks)."""

from __future__ import annotations

from teleconch.auth import protocol as api

SECRET = "s3cr3t-0123456789abcdef"


def test_invites_and_join_tokens_hide_their_secret() -> None:
    invite = api.Invite(
        "alice", SECRET, f"https://proxy.example/web/invite/{SECRET}", 1.0
    )
    token = api.JoinToken(SECRET, 1.0, "sha256:00", "auth:3025", "proxy:3080")
    assert SECRET not in repr(invite) and "alice" in repr(invite)
    assert SECRET not in repr(token) and "sha256:00" in repr(token)
