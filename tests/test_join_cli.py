"""`teleconch join openssh`'s command line, checked before any network."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from teleconch.client import join

PIN = "sha256:" + "a" * 64


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    join.add_parser(parser.add_subparsers())
    where = ["--dir", str(tmp_path / "etc"), "--sshd-config", str(tmp_path / "x")]
    return parser.parse_args(
        ["join", "openssh", "--proxy", "proxy.example:3080", *where, *extra]
    )


def test_a_join_without_a_ca_pin_is_refused(tmp_path: Path) -> None:
    """Without the pin the node would trust any CA the answer names, and
    write its user CA as TrustedUserCAKeys: a root login for a man in the
    middle.  The message says where the pin comes from."""
    with pytest.raises(join.JoinError, match=r"--ca-pin.*tokens add --type=node"):
        join.plan(_args(tmp_path, "--token", "t" * 64))


def test_a_join_with_a_ca_pin_is_planned(tmp_path: Path) -> None:
    plan = join.plan(_args(tmp_path, "--token", "t" * 64, "--ca-pin", PIN))
    assert plan.pin == PIN and not plan.no_pin


def test_skipping_the_pin_takes_its_own_flag_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--insecure-no-ca-pin trusts the first CA it is shown, loudly."""
    plan = join.plan(_args(tmp_path, "--token", "t" * 64, "--insecure-no-ca-pin"))
    assert plan.pin is None and plan.no_pin
    ca = join._pinned([b"not a certificate"], None, "proxy.example:3080")
    assert ca == b"not a certificate"
    err = capsys.readouterr().err
    assert "WARNING" in err and "root" in err


def test_a_renewal_needs_no_pin(tmp_path: Path) -> None:
    """A renewal checks against the CA the node pinned when it joined."""
    assert join.plan(_args(tmp_path, "--renew")).pin is None


def test_a_pin_and_no_pin_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(join.JoinError, match="not both"):
        join.plan(_args(tmp_path, "--ca-pin", PIN, "--insecure-no-ca-pin"))


def test_the_cron_line_renews_at_a_random_time(tmp_path: Path) -> None:
    """Not every node at 03:17: each join prints its own minute and hour."""
    plan = join.plan(_args(tmp_path, "--renew"))
    lines = {join.cron_line(plan) for _ in range(20)}
    assert len(lines) > 1
    for line in lines:
        minute, hour, *rest = line.split()
        assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24
        assert rest[:3] == ["*", "*", "*"] and "--renew" in rest
