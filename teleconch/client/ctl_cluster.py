"""``teleconch-ctl cluster set KEY=VALUE... | show``: the cluster's settings.

The auth service keeps them (``teleconch.auth.settings``): the config file's
``auth_service.*`` values are the defaults, a ``set`` stores an override that
every proxy follows within ten seconds, and ``show`` says where each value
comes from.  The auth service checks keys and values; this only splits the
``KEY=VALUE`` words.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent
from teleconch.client.ctl import CtlError, _table, _when


def _pairs(words: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key.strip():
            raise CtlError(
                f"{word!r} is not KEY=VALUE; e.g. teleconch-ctl cluster set "
                "session_recording=proxy record_input=yes"
            )
        out[key.strip()] = value.strip()
    return out


def _print(view: api.ClusterSettingsView, form: str) -> None:
    if form == "json":
        print(json.dumps([s.to_json() for s in view.settings], indent=2))
        return
    rows = [
        (
            s.key,
            s.value,
            "config"
            if s.source == "config"
            else f"set by {s.set_by} at {_when(s.set_at)}",
        )
        for s in view.settings
    ]
    print(_table(["Setting", "Value", "Source"], rows))


async def cluster_show(agent: AuthAgent, args: argparse.Namespace) -> None:
    _print(await agent.show_cluster_settings(), args.format)


async def cluster_set(agent: AuthAgent, args: argparse.Namespace) -> None:
    values = _pairs(args.settings)
    view = await agent.set_cluster_settings(values)
    print(f"cluster settings updated: {', '.join(values)}; proxies follow within 10s")
    _print(view, "text")


def add_commands(group: Any) -> None:
    p = group.add_parser(
        "show", help="the cluster's settings and where each comes from"
    )
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(run=cluster_show)
    p = group.add_parser(
        "set",
        help="store settings over the config's: session_recording=node|proxy|off, "
        "record_input=yes|no, proxy_checks_host_keys=yes|no, "
        "recordings_retention=90d|forever",
    )
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    p.set_defaults(run=cluster_set)
