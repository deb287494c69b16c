"""``teleconch recordings ls|search`` and ``teleconch play``: the recordings you may see.

Like ``teleconch ls``, these run the user's own OpenSSH to the proxy, with
the login's certificate, asking for the subsystem ``teleconch-recordings``
(`teleconch.proxy.recordings_subsystem`): one JSON request line goes in, and
JSON lines, or for ``play`` the recording's frames, come back.  The auth
service decides what the certificate's user may see: their own, or every
recording for an auditor or admin.

``play`` decodes frames as they arrive and writes each event at once, so a
long recording never sits in memory whole: ``text`` replays the output with
its recorded timing (``--speed``; ``--skip-idle`` caps every pause at
`IDLE_CAP` seconds, as ``asciinema play -i``), ``json`` prints the events,
``asciicast`` prints asciicast v2 (for ``asciinema play`` or ``cat``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Any

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.client import openssh
from teleconch.client.errors import UsageError
from teleconch.client.keystore import KeyStore, Profile, require_profile
from teleconch.client.login import read_cert
from teleconch.client.recording_output import (
    FORMATS,
    EventWriter,
    recordings_json,
    recordings_table,
)
from teleconch.durations import parse_duration

RECORDINGS_SUBSYSTEM = "teleconch-recordings"
#: What ``--skip-idle`` shortens every longer pause to, in seconds.
IDLE_CAP = 1.0
READ_SIZE = 64 * 1024


def _hop_login(store: KeyStore, profile: Profile) -> str:
    """A login of the certificate, to open the proxy hop with: the proxy
    answers for the certificate's user, whatever the login."""
    info = read_cert(store, profile) or {}
    logins = [str(x) for x in info.get("logins", []) if not str(x).startswith("-")]
    if not logins:
        # OpenSSH takes no user name starting with "-", the no-login principal.
        raise UsageError(
            "your certificate has no logins, and the proxy's SSH door needs one: "
            "see recordings on the web UI, or ask an administrator for a role "
            "with a login"
        )
    return logins[0]


def _argv(store: KeyStore) -> list[str]:
    profile = require_profile(store)
    hop = openssh.proxy_hop(store, profile, _hop_login(store, profile))
    return [*hop, "-T", "-s", RECORDINGS_SUBSYSTEM]


def _refusal(line: bytes, stderr: bytes) -> UsageError:
    """What went wrong, from the proxy's error line or ssh's own complaint."""
    try:
        answer = json.loads(line)
        return UsageError(str(answer["error"]))
    except (ValueError, KeyError, TypeError):
        text = stderr.decode("utf-8", "replace").strip()
        return UsageError(text or "the proxy did not answer; try again")


def ask(store: KeyStore, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the proxy's subsystem and its one-line answer."""
    line = json.dumps(request).encode("utf-8") + b"\n"
    done = subprocess.run(_argv(store), input=line, capture_output=True, check=False)
    first = done.stdout.split(b"\n", 1)[0]
    if done.returncode != 0:
        raise _refusal(first, done.stderr)
    answer: dict[str, Any] = json.loads(first)
    return answer


@contextmanager
def stream(store: KeyStore, sid: str) -> Iterator[Iterator[bytes]]:
    """The recording's stored bytes as they come from the proxy, in pieces."""
    request = json.dumps({"op": "read", "id": sid}).encode("utf-8") + b"\n"
    proc = subprocess.Popen(
        _argv(store),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        proc.stdin.write(request)
        proc.stdin.close()
        header = proc.stdout.readline()
        if not header.startswith(b'{"size"'):
            proc.stdout.read()
            proc.wait()
            raise _refusal(header, proc.stderr.read())
        yield _pieces(proc.stdout)
        if proc.wait() != 0:
            raise _refusal(b"", proc.stderr.read())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            f.close()


def _pieces(out: IO[bytes]) -> Iterator[bytes]:
    read = getattr(out, "read1", out.read)
    while chunk := read(READ_SIZE):
        yield chunk


def parse_since(text: str, now: float) -> float:
    """``2h`` (that long ago) or a date, ``2026-12-01`` or ``2026-12-01T09:30``
    (local time unless it names its offset), as epoch seconds."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a duration (2h, 3d) nor a date "
            "(2026-12-01, 2026-12-01T09:30)"
        ) from None


def _query(args: argparse.Namespace, op: str) -> dict[str, Any]:
    request: dict[str, Any] = {
        "op": op,
        "user": args.user or "",
        "node": args.node or "",
    }
    if args.since:
        request["since"] = parse_since(args.since, time.time())
    if op == "search":
        request["text"] = args.text
    return request


def _listing(args: argparse.Namespace, store: KeyStore, op: str) -> int:
    answer = ask(store, _query(args, op))
    found = [api.RecordingEntry.from_json(r) for r in answer["recordings"]]
    print(recordings_json(found) if args.format == "json" else recordings_table(found))
    if answer.get("cut_short"):
        print(
            "teleconch: the search stopped before looking at every recording; "
            "narrow it with --user, --node or --since",
            file=sys.stderr,
        )
    return 0


def recordings_ls(args: argparse.Namespace, store: KeyStore) -> int:
    return _listing(args, store, "ls")


def recordings_search(args: argparse.Namespace, store: KeyStore) -> int:
    if not args.text:
        raise UsageError("give the text to look for: teleconch recordings search TEXT")
    return _listing(args, store, "search")


class Pacer:
    """Waits between events as they were recorded: gaps divided by ``speed``,
    each first capped at ``idle_cap`` seconds when one is given."""

    def __init__(
        self,
        speed: float,
        idle_cap: float | None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not speed > 0:
            raise UsageError("--speed is a factor above 0, e.g. 0.5, 2 or 8")
        self._speed = speed
        self._idle_cap = idle_cap
        self._sleep = sleep
        self._last_ms: int | None = None

    def wait_for(self, ms: int) -> None:
        if self._last_ms is not None and ms > self._last_ms:
            gap = (ms - self._last_ms) / 1000
            if self._idle_cap is not None:
                gap = min(gap, self._idle_cap)
            self._sleep(gap / self._speed)
        self._last_ms = ms if self._last_ms is None else max(ms, self._last_ms)


def play(args: argparse.Namespace, store: KeyStore) -> int:
    out = sys.stdout.buffer
    writer = EventWriter(args.format, out)
    pacer = Pacer(args.speed, IDLE_CAP if args.skip_idle else None)
    reader = fmt.FrameReader()
    timed = args.format == "text"
    try:
        with stream(store, args.sid) as pieces:
            for piece in pieces:
                for event in reader.feed(piece):
                    if timed and event.kind == "print":
                        pacer.wait_for(event.ms)
                        writer.write(event)
                        out.flush()
                    else:
                        writer.write(event)
                out.flush()
            reader.end()
    except fmt.BadRecording as e:
        raise UsageError(f"recording {args.sid} cannot be played: {e}") from None
    except BrokenPipeError:  # the reader went away (| head): nothing to say
        return 0
    return 0


def _filters(p: Any) -> None:
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--user", help="only this user's")
    p.add_argument("--node", help="only sessions on this node")
    p.add_argument("--since", help="only since then: 2h, 3d or a date (2026-12-01)")


def add_parsers(sub: Any) -> None:
    """``recordings ls|search`` and ``play`` in the ``teleconch`` command line."""
    rec = sub.add_parser("recordings", help="session recordings you may see")
    group = rec.add_subparsers(
        dest="recordings_command", required=True, metavar="COMMAND"
    )
    p = group.add_parser("ls", help="yours, newest first (auditors and admins: all)")
    _filters(p)
    p.set_defaults(sync=recordings_ls)
    p = group.add_parser("search", help="sessions whose output contains TEXT")
    p.add_argument("text", metavar="TEXT", help="found ignoring case")
    _filters(p)
    p.set_defaults(sync=recordings_search)
    p = sub.add_parser("play", help="replay a recorded session")
    p.add_argument("sid", metavar="SID", help="the session id (see `recordings ls`)")
    p.add_argument("--speed", type=float, default=1.0, help="e.g. 2 for twice as fast")
    p.add_argument(
        "--skip-idle",
        action="store_true",
        help=f"shorten every pause to at most {IDLE_CAP:g} s (text)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text: to the terminal, timed; json: the events; asciicast: v2",
    )
    p.set_defaults(sync=play)
