"""``teleconch-ctl``: the administrator's client, like Teleport's tctl.

It talks to the auth service through the AuthAgent, with the admin identity
the auth service wrote into its data directory at first start; run it on the
auth server (or anywhere that identity is copied to).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThread

from teleconch import config as cfg
from teleconch.auth import protocol as api
from teleconch.auth.agent import AuthAgent, AuthUnavailable
from teleconch.auth.types import JoinRule, RoleSpec
from teleconch.durations import format_duration, parse_duration
from teleconch.files import write_private_file
from teleconch.pki import TLSIdentity
from teleconch.text import printable


class CtlError(Exception):
    pass


#: Audit fields that hold a time, shown as timestamps rather than epoch floats.
_TIME_FIELDS = frozenset({"start", "end", "until", "expires", "created", "last_seen"})


def _when(ts: float | None) -> str:
    """A local ISO 8601 timestamp with its UTC offset."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _detail(key: str, value: Any) -> str:
    if key in _TIME_FIELDS and isinstance(value, int | float) and value > 0:
        value = _when(value)
    return f"{printable(key, 40)}={printable(str(value), 120)}"


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = 200
) -> str:
    """Aligned columns; each cell escaped (no forged rows) and clipped to ``limit``."""
    cells = [[printable(str(c), limit) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in cells
    ]
    return "\n".join(lines)


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _labels(text: str | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in _csv(text):
        if "=" not in item:
            raise CtlError(f"label {item!r} is not key=value")
        key, value = item.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _print_invite(invite: api.Invite, action: str) -> None:
    print(
        f"User {invite.user!r} has been {action}; share this URL with them to "
        f"set a password and a one-time-code app (valid until {_when(invite.expires)}):\n"
        f"{invite.url}\n\n"
        "NOTE: make sure this URL points at the proxy's public address "
        "(proxy_service.public_addr)."
    )


async def users_add(agent: AuthAgent, args: argparse.Namespace) -> None:
    invite = await agent.create_user(args.name, _csv(args.logins), _csv(args.roles))
    _print_invite(invite, "created")


async def users_reset(agent: AuthAgent, args: argparse.Namespace) -> None:
    _print_invite(await agent.reset_user(args.name), "reset")


async def users_ls(agent: AuthAgent, args: argparse.Namespace) -> None:
    users = await agent.list_users()
    if args.format == "json":
        print(json.dumps([u.to_json() for u in users], indent=2))
        return
    rows = [
        (
            u.name,
            ",".join(u.roles),
            ",".join(u.logins) or "-",
            u.status + (f" until {_when(u.locked_until)}" if u.locked_until else ""),
        )
        for u in users
    ]
    print(_table(["User", "Roles", "Logins", "Status"], rows))


async def users_unlock(agent: AuthAgent, args: argparse.Namespace) -> None:
    if await agent.unlock_user(args.name):
        print(f"User {args.name!r} is unlocked: they can log in again now.")
    else:
        print(f"User {args.name!r} was not locked; failed attempts are forgotten.")


async def users_rm(agent: AuthAgent, args: argparse.Namespace) -> None:
    await agent.delete_user(args.name)
    print(f"User {args.name!r} has been deleted.")


async def roles_add(agent: AuthAgent, args: argparse.Namespace) -> None:
    role = RoleSpec(
        name=args.name,
        logins=tuple(_csv(args.logins)),
        node_labels={
            k: tuple(v)
            for k, v in (
                _labels(args.node_labels) if args.node_labels else {"*": ["*"]}
            ).items()
        },
        max_session_ttl=parse_duration(args.max_session_ttl),
        join_sessions=tuple(_join_rule(r) for r in args.join_sessions or ()),
    )
    await agent.upsert_role(role)
    print(f"Role {args.name!r} has been saved.")


async def roles_ls(agent: AuthAgent, args: argparse.Namespace) -> None:
    roles = await agent.list_roles()
    if args.format == "json":
        print(json.dumps([r.to_json() for r in roles], indent=2))
        return
    rows = [
        (
            r.name,
            ",".join(r.logins) or "-",
            ",".join(f"{k}={v}" for k, vs in r.node_labels.items() for v in vs) or "-",
            format_duration(r.max_session_ttl),
            " ".join(_join_text(j) for j in r.join_sessions) or "-",
            "built-in" if r.builtin else "custom",
        )
        for r in roles
    ]
    headers = ["Role", "Logins", "Node labels", "Max session TTL", "Joins", "Kind"]
    print(_table(headers, rows))


def _join_rule(text: str) -> JoinRule:
    """``--join-sessions ROLE[,ROLE]:MODE[,MODE]`` (the owner's roles, ``*``: any)."""
    roles, sep, modes = text.partition(":")
    if not sep or not _csv(roles) or not _csv(modes):
        raise CtlError(
            f"--join-sessions {text!r}: expected OWNER_ROLES:MODES, "
            "e.g. access:observer,peer (or *:observer)"
        )
    return JoinRule(tuple(_csv(roles)), tuple(_csv(modes)))


def _join_text(rule: JoinRule) -> str:
    return f"{','.join(rule.roles)}:{','.join(rule.modes)}"


async def roles_rm(agent: AuthAgent, args: argparse.Namespace) -> None:
    await agent.delete_role(args.name)
    print(f"Role {args.name!r} has been deleted.")


async def tokens_add(agent: AuthAgent, args: argparse.Namespace) -> None:
    t = await agent.create_token(args.type, parse_duration(args.ttl))
    if args.type == "node":
        print(
            f"The join token: {t.token}\n"
            f"This token will expire at {_when(t.expires)}.\n\n"
            "Run this as root on the OpenSSH node (NAME: the node's name, HOST: where "
            "the proxy reaches its sshd):\n\n"
            f"teleconch join openssh --proxy {t.proxy_addr} --token {t.token} "
            f"--ca-pin {t.ca_pin} --name NAME --addr HOST:22\n\n"
            "Keep the token secret: whoever holds it can join the cluster once."
        )
        return
    print(
        f"The join token: {t.token}\n"
        f"This token will expire at {_when(t.expires)}.\n\n"
        f"Put it in the {args.type}'s config:\n\n"
        "teleconch:\n"
        f'  auth_servers: ["{t.auth_addr}"]\n'
        f'  auth_token: "{t.token}"\n'
        f'  ca_pin: "{t.ca_pin}"\n\n'
        "Keep the token secret: whoever holds it can join the cluster once."
    )


async def tokens_ls(agent: AuthAgent, args: argparse.Namespace) -> None:
    tokens = await agent.list_tokens()
    rows = [(t.name + "...", t.kind, t.user or "-", _when(t.expires)) for t in tokens]
    print(_table(["Token", "Type", "User", "Expires"], rows))


async def tokens_rm(agent: AuthAgent, args: argparse.Namespace) -> None:
    await agent.delete_token(args.name.rstrip("."))
    print(f"Token {args.name!r} has been deleted.")


async def auth_export(agent: AuthAgent, args: argparse.Namespace) -> None:
    for line in await agent.export_ca(args.type):
        print(line)


async def nodes_add(agent: AuthAgent, args: argparse.Namespace) -> None:
    labels = {k: v[-1] for k, v in _labels(args.labels).items()}
    node = await agent.upsert_node(args.name, args.addr, labels)
    print(f"Node {node.name!r} ({node.addr}) has been registered, id {node.id}.")


async def nodes_ls(agent: AuthAgent, args: argparse.Namespace) -> None:
    nodes = sorted(await agent.list_nodes(), key=lambda n: n.name)
    if args.format == "json":
        print(json.dumps([n.to_json() for n in nodes], indent=2))
        return
    rows = [
        (
            n.name,
            n.addr,
            ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-",
            _when(n.cert_expires),
            n.id,
        )
        for n in nodes
    ]
    print(_table(["Node", "Address", "Labels", "Cert expires", "ID"], rows))


async def nodes_rm(agent: AuthAgent, args: argparse.Namespace) -> None:
    await agent.delete_node(args.name)
    print(f"Node {args.name!r} has been removed.")


async def auth_sign(agent: AuthAgent, args: argparse.Namespace) -> None:
    """A host key made here, its certificate from the auth service: for sshd."""
    if args.format != "openssh":
        raise CtlError("only --format openssh is supported")
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    signed = await agent.sign_host_certificate(
        public.decode(), _csv(args.host), parse_duration(args.ttl) if args.ttl else 0
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )

    out = Path(args.out)

    def save() -> None:
        write_private_file(out, private)
        write_private_file(Path(f"{out}.pub"), public + b"\n", 0o644)
        write_private_file(Path(f"{out}-cert.pub"), signed.cert.encode() + b"\n", 0o644)

    await deferToThread(save)
    out = Path(await deferToThread(os.path.abspath, out))
    print(
        f"The host key is in {out}, its certificate in {out}-cert.pub\n"
        f"(principals: {', '.join(signed.principals)}). In sshd_config:\n\n"
        f"HostKey {out}\n"
        f"HostCertificate {out}-cert.pub\n"
        "TrustedUserCAKeys /etc/ssh/teleconch_user_ca.pub   "
        "# from `teleconch-ctl auth export --type=user`"
    )


async def events_ls(agent: AuthAgent, args: argparse.Namespace) -> None:
    since = None
    if args.since:
        since = args.now - parse_duration(args.since)
    events = await agent.search_events(
        since=since, events=_csv(args.type), user=args.user, limit=args.limit
    )
    if args.format == "json":
        print(json.dumps([e.to_json() for e in events], indent=2))
        return
    rows = [
        (
            _when(e.time),
            e.event,
            e.user or "-",
            "ok" if e.success else "FAILED",
            " ".join(_detail(k, v) for k, v in sorted(e.fields.items())),
        )
        for e in events
    ]
    print(_table(["Time", "Event", "User", "Result", "Details"], rows, limit=800))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teleconch-ctl", description="Administer a teleconch cluster."
    )
    parser.add_argument("-c", "--config", help="the auth service's config file")
    parser.add_argument("-d", "--data-dir", help="the auth service's data directory")
    parser.add_argument(
        "--auth-server", help="HOST:PORT of the auth service (default: from the config)"
    )
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def group(name: str, help: str) -> Any:
        g = sub.add_parser(name, help=help)
        return g.add_subparsers(dest="action", required=True, metavar="ACTION")

    users = group("users", "add, list, remove, reset and unlock users")
    p = users.add_parser("add", help="add a user; prints an invite URL")
    p.add_argument("name")
    p.add_argument(
        "--logins", required=True, help="comma-separated OS logins, e.g. alice,root"
    )
    p.add_argument(
        "--roles", default="access", help="comma-separated roles (default access)"
    )
    p.set_defaults(run=users_add)
    p = users.add_parser("ls", help="list users")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(run=users_ls)
    p = users.add_parser("rm", help="remove a user")
    p.add_argument("name")
    p.set_defaults(run=users_rm)
    p = users.add_parser("reset", help="new invite: password and OTP app set again")
    p.add_argument("name")
    p.set_defaults(run=users_reset)
    p = users.add_parser("unlock", help="lift a lock-out after failed logins")
    p.add_argument("name")
    p.set_defaults(run=users_unlock)

    roles = group("roles", "add and list roles")
    p = roles.add_parser("add", help="add or replace a role")
    p.add_argument("name")
    p.add_argument(
        "--logins",
        default="",
        help="comma-separated logins; {{internal.logins}} is the user's own",
    )
    p.add_argument(
        "--node-labels", help="key=value,... nodes the role reaches (default: all)"
    )
    p.add_argument(
        "--max-session-ttl", default="12h", help="longest certificate, e.g. 8h"
    )
    p.add_argument(
        "--join-sessions",
        action="append",
        metavar="OWNER_ROLES:MODES",
        help="may join live sessions of owners with these roles, in these modes "
        "(observer, peer), e.g. access:observer,peer or *:observer; repeatable",
    )
    p.set_defaults(run=roles_add)
    p = roles.add_parser("ls", help="list roles")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(run=roles_ls)
    p = roles.add_parser("rm", help="remove a role")
    p.add_argument("name")
    p.set_defaults(run=roles_rm)

    tokens = group("tokens", "join tokens for proxies and nodes")
    p = tokens.add_parser(
        "add",
        help="make a single-use join token (node: prints `teleconch join openssh`)",
    )
    p.add_argument("--type", required=True, choices=["proxy", "node"])
    p.add_argument("--ttl", default="30m", help="how long it is good for (default 30m)")
    p.set_defaults(run=tokens_add)
    tokens.add_parser("ls", help="list live tokens").set_defaults(run=tokens_ls)
    p = tokens.add_parser("rm", help="remove a token")
    p.add_argument("name", help="the token or the prefix `tokens ls` shows")
    p.set_defaults(run=tokens_rm)

    auth = group("auth", "the cluster's certificate authorities")
    p = auth.add_parser("export", help="print a CA's public key")
    p.add_argument("--type", required=True, choices=["user", "host"])
    p.set_defaults(run=auth_export)

    p = auth.add_parser("sign", help="make a host key and certificate for an sshd node")
    p.add_argument("--host", required=True, help="the node's names: web1[,alias,...]")
    p.add_argument("--format", default="openssh", choices=["openssh"])
    p.add_argument(
        "--out", required=True, help="PREFIX: writes PREFIX and PREFIX-cert.pub"
    )
    p.add_argument(
        "--ttl", help="certificate lifetime (default: until the CA is rotated)"
    )
    p.set_defaults(run=auth_sign)

    nodes = group("nodes", "register the servers of the cluster")
    p = nodes.add_parser(
        "add", help="register a node (an sshd that trusts the user CA)"
    )
    p.add_argument("--name", required=True, help="the node's name, e.g. web1")
    p.add_argument(
        "--addr", required=True, help="where the proxy reaches it, HOST:PORT"
    )
    p.add_argument("--labels", help="key=value,... e.g. env=prod,role=web")
    p.set_defaults(run=nodes_add)
    p = nodes.add_parser("ls", help="list nodes")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(run=nodes_ls)
    p = nodes.add_parser("rm", help="remove a node")
    p.add_argument("name")
    p.set_defaults(run=nodes_rm)

    events = group("events", "the audit log")
    p = events.add_parser("ls", help="list audit events, oldest first")
    p.add_argument("--since", help="only the last DURATION, e.g. 1h")
    p.add_argument("--type", help="comma-separated event types, e.g. user.login")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(run=events_ls)

    from teleconch.client import ctl_cluster, ctl_recordings  # they use its helpers

    ctl_recordings.add_commands(
        group("recordings", "list, export and remove recordings")
    )
    ctl_cluster.add_commands(group("cluster", "show and set the cluster's settings"))
    return parser


def _connect(reactor: Any, args: argparse.Namespace) -> AuthAgent:
    settings = cfg.load(args.config, args.data_dir)
    identity = TLSIdentity.load(settings.data_dir / "admin")
    if identity is None:
        raise CtlError(
            f"no admin identity in {settings.data_dir / 'admin'}: run teleconch-ctl on the "
            "auth server, with the same --config or --data-dir as the auth service"
        )
    if args.auth_server:
        addr = cfg.parse_host_port(args.auth_server, cfg.AUTH_PORT)
    else:
        addr = cfg.local_dial_addr(settings.auth.listen_addr)
    return AuthAgent(reactor, [addr], identity)


def run(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    async def main(reactor: Any) -> None:
        code = 0
        agent = None
        try:
            args.now = reactor.seconds()
            agent = _connect(reactor, args)
            agent.startService()
            await args.run(agent, args)
        except (
            CtlError,
            cfg.ConfigError,
            AuthUnavailable,
            api.AuthAPIError,
            ValueError,
        ) as e:
            print(f"ERROR: {e}", file=sys.stderr)
            code = 1
        finally:
            if agent is not None:
                await agent.stopService()
        if code:
            raise SystemExit(code)

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


def main() -> None:
    run()
