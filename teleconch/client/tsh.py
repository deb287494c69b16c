"""``teleconch``: the user's client, like Teleport's tsh: its commands and parser.

Logging in lives in ``teleconch.client.login``; the commands here run the
user's own OpenSSH client with what the login wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from teleconch import config as cfg
from teleconch.client import join, openssh, recordings, sessions
from teleconch.client.cli_common import print_table, require_profile
from teleconch.client.errors import UsageError
from teleconch.client.keystore import KeyStore, Profile
from teleconch.client.login import login, logout, read_cert, status
from teleconch.client.webapi import WebAPIError

# --- commands that run the user's OpenSSH client ------------------------------


_profile = require_profile


def _split_login(target: str, login: str | None, default: str) -> tuple[str, str]:
    if "@" in target:
        user, _, host = target.rpartition("@")
        return login or user, host
    return login or default, target


def _default_login(store: KeyStore, profile: Profile) -> str:
    info = read_cert(store, profile)
    logins = [x for x in (info or {}).get("logins", []) if not x.startswith("-")]
    if info is None or not logins:
        raise UsageError(
            "your certificate has no logins; ask an administrator for a role"
        )
    return str(logins[0])


def _list_nodes(store: KeyStore, profile: Profile) -> list[dict[str, Any]]:
    argv = openssh.nodes_argv(store, profile, _default_login(store, profile))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsageError(done.stderr.strip() or "the proxy did not list the nodes")
    nodes: list[dict[str, Any]] = json.loads(done.stdout)
    return nodes


def _matching(
    nodes: list[dict[str, Any]], selectors: Sequence[str]
) -> list[dict[str, Any]]:
    wanted = [tuple(s.split("=", 1)) for s in selectors]
    for sel in selectors:
        if "=" not in sel:
            raise UsageError(f"{sel!r} is not a label selector key=value")
    return [n for n in nodes if all(n["labels"].get(k) == v for k, v in wanted)]


def ls(args: argparse.Namespace, store: KeyStore) -> int:
    profile = _profile(store)
    nodes = sorted(
        _matching(_list_nodes(store, profile), args.labels), key=lambda n: n["name"]
    )
    rows = [
        (
            n["name"],
            n["addr"],
            ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
            ",".join(n.get("logins", [])),
        )
        for n in nodes
    ]
    print_table(("Node Name", "Address", "Labels", "Logins"), rows)
    return 0


def proxy_ssh(args: argparse.Namespace, store: KeyStore) -> int:
    """The ProxyCommand helper: stdio to LOGIN@HOST:PORT through the proxy."""
    profile = _profile(store)
    login, hostport = _split_login(args.target, None, _default_login(store, profile))
    target = cfg.parse_host_port(hostport, 22)
    argv = openssh.proxy_subsystem_argv(store, profile, login, target.host, target.port)
    os.execvp(argv[0], argv)
    return 1  # not reached


def _forwarding_options(args: argparse.Namespace) -> list[str]:
    options: list[str] = []
    if args.forward_agent:
        options.append("-A")
    if args.tty:
        options.append("-t")
    for flag, specs in (("-L", args.local), ("-R", args.remote), ("-D", args.dynamic)):
        for spec in specs or ():
            options += [flag, spec]
    if args.port:
        options += ["-p", str(args.port)]
    return options


def ssh(args: argparse.Namespace, store: KeyStore) -> int:
    profile = _profile(store)
    login, target = _split_login(
        args.target, args.login, _default_login(store, profile)
    )
    options = _forwarding_options(args)
    if "=" not in target:
        argv = openssh.node_argv(store, profile, login, target, options, args.command)
        os.execvp(argv[0], argv)
    nodes = _matching(_list_nodes(store, profile), [target])
    if not nodes:
        raise UsageError(f"no node you can reach has the label {target}")
    if len(nodes) == 1:
        argv = openssh.node_argv(
            store, profile, login, nodes[0]["name"], options, args.command
        )
        os.execvp(argv[0], argv)
    if not args.command:
        names = ", ".join(sorted(n["name"] for n in nodes))
        raise UsageError(
            f"{target} matches {names}: give a command to run on each, or name one"
        )
    return _run_on_each(
        store, profile, login, [n["name"] for n in nodes], options, args.command
    )


def _run_on_each(
    store: KeyStore,
    profile: Profile,
    login: str,
    names: list[str],
    options: list[str],
    command: list[str],
) -> int:
    """Run ``command`` on every node at once; each line is prefixed by its node."""
    lock = threading.Lock()
    statuses: dict[str, int] = {}

    def one(name: str) -> None:
        argv = openssh.node_argv(store, profile, login, name, ["-T", *options], command)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        for raw in proc.stdout:
            with lock:
                sys.stdout.write(f"[{name}] {raw.decode(errors='replace')}")
                sys.stdout.flush()
        statuses[name] = proc.wait()

    threads = [threading.Thread(target=one, args=(n,)) for n in sorted(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = {n: c for n, c in statuses.items() if c}
    for name, code in sorted(failed.items()):
        print(f"[{name}] exited with status {code}", file=sys.stderr)
    return max(failed.values(), default=0)


def config(args: argparse.Namespace, store: KeyStore) -> int:
    print(openssh.ssh_config(store, _profile(store)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teleconch",
        description="Log in once, reach every server through the proxy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "login", help="log in with password + one-time code; get a certificate"
    )
    p.add_argument(
        "--proxy", required=True, help="the proxy's web address, HOST[:PORT]"
    )
    p.add_argument("--user", help="your teleconch user name (default: $USER)")
    p.add_argument(
        "--ttl", help="how long the certificate lasts, e.g. 8h (default 12h)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not check the proxy's TLS certificate",
    )
    p.set_defaults(run=login)
    sub.add_parser("status", help="who you are, your logins, until when").set_defaults(
        run=status
    )
    sub.add_parser(
        "logout", help="remove your keys and their ssh-agent entries"
    ).set_defaults(run=logout)
    p = sub.add_parser("ls", help="the nodes you can reach")
    p.add_argument(
        "labels", nargs="*", metavar="key=value", help="only nodes with these labels"
    )
    p.set_defaults(sync=ls)
    p = sub.add_parser(
        "ssh", help="ssh to a node (or every node with a label) through the proxy"
    )
    p.add_argument("-l", "--login", help="the login on the node")
    p.add_argument(
        "-A", dest="forward_agent", action="store_true", help="forward ssh-agent"
    )
    p.add_argument("-t", dest="tty", action="store_true", help="force a terminal")
    p.add_argument(
        "-p", "--port", type=int, help="the node's port (registered nodes: ignored)"
    )
    p.add_argument(
        "-L", dest="local", action="append", help="local port forwarding, as ssh -L"
    )
    p.add_argument(
        "-R", dest="remote", action="append", help="remote port forwarding, as ssh -R"
    )
    p.add_argument(
        "-D", dest="dynamic", action="append", help="SOCKS forwarding, as ssh -D"
    )
    p.add_argument("target", metavar="[LOGIN@]NODE|key=value")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(sync=ssh)
    proxy = sub.add_parser("proxy", help="helpers for OpenSSH")
    proxy_sub = proxy.add_subparsers(
        dest="proxy_command", required=True, metavar="COMMAND"
    )
    p = proxy_sub.add_parser(
        "ssh", help="ProxyCommand: stdio to LOGIN@HOST:PORT via the proxy"
    )
    p.add_argument("target", metavar="LOGIN@HOST:PORT")
    p.set_defaults(sync=proxy_ssh)
    sub.add_parser("config", help="an ssh_config block for plain OpenSSH").set_defaults(
        sync=config
    )
    sessions.add_sessions_parser(sub)
    sessions.add_join_parser(join.add_parser(sub))
    recordings.add_parsers(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(sessions.shorthand(words, ("openssh", "session")))
    store = KeyStore()
    if getattr(args, "sync", None) is not None:
        try:
            code = args.sync(args, store)
        except (UsageError, ValueError) as e:
            print(f"ERROR: {e}", file=sys.stderr)
            code = 1
        raise SystemExit(code)

    async def main(reactor: Any) -> None:
        try:
            code = await args.run(reactor, args, store)
        except (UsageError, WebAPIError, ValueError) as e:
            print(f"ERROR: {e}", file=sys.stderr)
            code = 1
        if code:
            raise SystemExit(code)

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


def main() -> None:
    run()


if __name__ == "__main__":
    main()
