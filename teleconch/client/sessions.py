"""``teleconch sessions ls`` and ``teleconch join SID``: live sessions, joined
through the user's own OpenSSH.

Both go to the proxy's SSH listener with the login's certificate, as
``teleconch ls`` does: ``teleconch-sessions`` answers the sessions this
person may join (any proxy's) as JSON; ``teleconch-join@SID:MODE`` with a
PTY attaches the terminal (`teleconch.proxy.join_subsystem`).  Ctrl-] or
``~.`` leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import datetime
from typing import Any

from teleconch.client import openssh
from teleconch.client.cli_common import print_table, require_profile
from teleconch.client.errors import UsageError
from teleconch.client.keystore import KeyStore, Profile
from teleconch.client.login import read_cert

MODES = ("observer", "peer")


def proxy_login(store: KeyStore, profile: Profile) -> str:
    """A login of the certificate to give the proxy (OpenSSH needs a user
    name; a certificate without logins carries none it accepts)."""
    info = read_cert(store, profile)
    if info is None:
        raise UsageError(
            "no certificate: run teleconch login --proxy HOST:3080 --user NAME"
        )
    logins = [str(x) for x in info.get("logins", []) if not str(x).startswith("-")]
    if not logins:
        raise UsageError(
            "your certificate has no login, and OpenSSH needs one to reach the "
            "proxy: join from the web UI (/web/sessions), or ask an administrator "
            "for a role with a login"
        )
    return logins[0]


_profile = require_profile


def live_sessions(store: KeyStore, profile: Profile) -> list[dict[str, Any]]:
    argv = openssh.sessions_argv(store, profile, proxy_login(store, profile))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsageError(done.stderr.strip() or "the proxy did not list the sessions")
    sessions: list[dict[str, Any]] = json.loads(done.stdout)
    return sessions


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def sessions_ls(args: argparse.Namespace, store: KeyStore) -> int:
    sessions = live_sessions(store, _profile(store))
    if args.format == "json":
        print(json.dumps(sessions, indent=2))
        return 0
    rows = [
        (
            s["id"],
            s["user"],
            f"{s['login']}@{s['node']}",
            _when(s["created"]),
            ",".join(f"{p['user']}({p['mode']})" for p in s["parties"]),
            ",".join(s["modes"]),
        )
        for s in sessions
    ]
    print_table(
        ("Session ID", "User", "Login@Node", "Started", "Parties", "You may"), rows
    )
    if not rows:
        print("(no live session you may join)")
    return 0


def join_session(args: argparse.Namespace, store: KeyStore) -> int:
    profile = _profile(store)
    argv = openssh.join_argv(
        store, profile, proxy_login(store, profile), args.session_id, args.mode
    )
    os.execvp(argv[0], argv)
    return 1  # not reached


def add_sessions_parser(sub: Any) -> None:
    """``sessions ls`` in the ``teleconch`` command line."""
    sessions = sub.add_parser("sessions", help="live sessions you may join")
    kinds = sessions.add_subparsers(
        dest="sessions_command", required=True, metavar="COMMAND"
    )
    p = kinds.add_parser("ls", help="list the live sessions you may join")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(sync=sessions_ls)


def add_join_parser(kinds: Any) -> None:
    """``join session SID`` (``teleconch join SID`` for short) under ``join``."""
    p = kinds.add_parser(
        "session",
        help="attach your terminal to a live session (teleconch join SID for short)",
    )
    p.add_argument("session_id", metavar="SID", help="from `teleconch sessions ls`")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="observer",
        help="observer (default: watch, your keys are not sent) or peer (type too)",
    )
    p.set_defaults(sync=join_session)


def shorthand(argv: list[str], kinds: tuple[str, ...]) -> list[str]:
    """``join SID ...`` is ``join session SID ...`` (``join openssh`` stays)."""
    if len(argv) < 2 or argv[0] != "join" or argv[1] in kinds:
        return argv
    return argv if argv[1].startswith("-") else ["join", "session", *argv[1:]]
