"""``teleconch-ctl recordings ls|export|rm``: the session recordings the auth service keeps.

``ls`` narrows by ``--user``, ``--node`` and ``--since`` (a duration ago or a
date) on this side, over the whole list.

``export`` reads the recording in ranges (`api.RECORDING_READ` bytes at a
time) and writes each event as it is decoded, in the formats of
`teleconch.client.recording_output` (shared with ``teleconch play``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from teleconch import recording_format as fmt
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent
from teleconch.client.ctl import CtlError
from teleconch.client.recording_output import (
    FORMATS,
    EventWriter,
    recordings_json,
    recordings_table,
)
from teleconch.durations import parse_since


def _wanted(args: argparse.Namespace) -> Callable[[api.RecordingEntry], bool]:
    """The ``--user``, ``--node`` and ``--since`` filters (all must match)."""
    since = None if args.since is None else parse_since(args.since, args.now)

    def wanted(r: api.RecordingEntry) -> bool:
        return (
            (args.user is None or r.user == args.user)
            and (args.node is None or r.node == args.node)
            and (since is None or r.start >= since)
        )

    return wanted


async def recordings_ls(agent: AuthAgent, args: argparse.Namespace) -> None:
    wanted = _wanted(args)
    found = [r for r in await agent.list_recordings() if wanted(r)]
    if args.format == "json":
        print(recordings_json(found))
    else:
        print(recordings_table(found))


async def _chunks(agent: AuthAgent, sid: str) -> AsyncIterator[bytes]:
    at = 0
    while True:
        got = await agent.read_recording(sid, at, api.RECORDING_READ)
        if not got.data:
            return
        at += len(got.data)
        yield got.data


async def recordings_export(agent: AuthAgent, args: argparse.Namespace) -> None:
    out = sys.stdout.buffer
    writer = EventWriter(args.format, out)
    reader = fmt.FrameReader()
    try:
        async for chunk in _chunks(agent, args.id):
            for event in reader.feed(chunk):
                writer.write(event)
        reader.end()
    except fmt.BadRecording as e:
        raise CtlError(
            f"recording {args.id} cannot be read: {e}; if it is still being "
            "uploaded, try again later"
        ) from None
    out.flush()


async def recordings_rm(agent: AuthAgent, args: argparse.Namespace) -> None:
    await agent.delete_recording(args.id)
    print(f"recording {args.id} removed")


def add_commands(group: Any) -> None:
    p = group.add_parser("ls", help="list session recordings, oldest first")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--user", help="only this user's sessions")
    p.add_argument("--node", help="only the sessions on this node")
    p.add_argument(
        "--since", help="only sessions started since: a duration ago (2h) or a date"
    )
    p.set_defaults(run=recordings_ls)
    p = group.add_parser("export", help="print a recording")
    p.add_argument("id", help="the session id (see `recordings ls`)")
    p.add_argument("--format", choices=FORMATS, default="asciicast")
    p.set_defaults(run=recordings_export)
    p = group.add_parser("rm", help="remove a recording")
    p.add_argument("id")
    p.set_defaults(run=recordings_rm)
