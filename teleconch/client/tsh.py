"""``teleconch``: the user's client (login, status, logout), like Teleport's tsh."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThread

from teleconch import config as cfg
from teleconch.client.keystore import KeyStore, Profile
from teleconch.client.webapi import WebAPIClient, WebAPIError
from teleconch.durations import format_duration, parse_duration
from teleconch.sshagent import AgentError, certificate_blob, connect_agent

DEFAULT_TTL = 12 * 3600
ROLES_EXTENSION = b"teleconch-roles"


class UsageError(Exception):
    """Something the person must change; the text says what."""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _read_secrets() -> tuple[str, str]:
    """Password and OTP: prompted on a TTY, else two lines of stdin (for scripts)."""
    if sys.stdin.isatty():
        password = getpass.getpass("Enter password: ")
        otp = input("Enter your OTP token: ")
        return password, otp.strip()
    lines = sys.stdin.read().splitlines()
    if len(lines) < 2:
        raise UsageError(
            "stdin is not a terminal: give the password and the one-time code as two lines"
        )
    return lines[0], lines[1].strip()


def cert_info(cert_line: str) -> dict[str, Any]:
    cert = serialization.load_ssh_public_identity(cert_line.encode())
    if not isinstance(cert, serialization.SSHCertificate):
        raise UsageError("the stored certificate is not a certificate; log in again")
    roles: list[str] = []
    raw = cert.extensions.get(ROLES_EXTENSION)
    if raw:
        try:
            roles = list(json.loads(raw)["roles"])
        except (ValueError, KeyError, TypeError):
            roles = []
    return {
        "user": cert.key_id.decode(),
        "logins": [p.decode() for p in cert.valid_principals],
        "valid_before": cert.valid_before,
        "valid_after": cert.valid_after,
        "roles": roles,
        "blob": certificate_blob(cert_line),
    }


def _print_status(profile: Profile, info: dict[str, Any], now: float) -> None:
    left = info["valid_before"] - now
    validity = f"valid for {format_duration(left)}" if left > 0 else "EXPIRED"
    logins = [x for x in info["logins"] if not x.startswith("-teleconch-nologin-")]
    print(f"> Profile URL:  https://{profile.web_addr}")
    print(f"  Logged in as: {info['user']}")
    print(f"  Cluster:      {profile.cluster}")
    print(f"  Roles:        {', '.join(info['roles']) or '-'}")
    print(f"  Logins:       {', '.join(logins) or '-'}")
    print(f"  Valid until:  {_when(info['valid_before'])} [{validity}]")


async def login(reactor: Any, args: argparse.Namespace, store: KeyStore) -> int:
    proxy = cfg.parse_host_port(args.proxy, cfg.PROXY_WEB_PORT)
    user = args.user or os.environ.get("USER") or getpass.getuser()
    ttl = parse_duration(args.ttl) if args.ttl else DEFAULT_TTL
    if args.insecure:
        print(
            "WARNING: --insecure: the proxy's TLS certificate is not checked; anyone on "
            "the path could read your password.",
            file=sys.stderr,
        )
    client = WebAPIClient(reactor, proxy, insecure=args.insecure)
    ping = await client.ping()
    password, otp = await deferToThread(_read_secrets)
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    issued = await client.ssh_certs(user, password, otp, pub.decode(), ttl)
    profile = Profile(
        proxy_host=proxy.host,
        web_addr=str(proxy),
        ssh_proxy_addr=_ssh_addr(ping["proxy_ssh_addr"], proxy.host),
        cluster=ping["cluster_name"],
        user=issued["username"],
        insecure=args.insecure,
    )

    def save() -> None:
        store.save_key(proxy.host, profile.user, key, issued["cert"])
        ca_lines = [k for s in issued["host_signers"] for k in s["checking_keys"]]
        store.trust_host_ca(profile.cluster, proxy.host, ca_lines)
        store.save_profile(profile)

    await deferToThread(save)
    info = cert_info(issued["cert"])
    sock = os.environ.get("SSH_AUTH_SOCK")
    if sock:
        lifetime = max(1, int(info["valid_before"] - reactor.seconds()))
        try:
            await _forget_in_agent(reactor, sock, _agent_comment(profile))
            agent = await connect_agent(reactor, sock)
            try:
                await agent.add_key(
                    key,
                    _agent_comment(profile),
                    certificate=info["blob"],
                    lifetime=lifetime,
                )
            finally:
                agent.close()
        except AgentError as e:
            print(f"WARNING: could not add the key to ssh-agent: {e}", file=sys.stderr)
    _print_status(profile, info, reactor.seconds())
    return 0


def _ssh_addr(advertised: str, proxy_host: str) -> str:
    """The proxy's SSH address; a wildcard listen host means the web host."""
    hp = cfg.parse_host_port(advertised, cfg.PROXY_SSH_PORT)
    if hp.host in ("0.0.0.0", "::", ""):
        hp = cfg.HostPort(proxy_host, hp.port)
    return str(hp)


def _read_cert(store: KeyStore, profile: Profile) -> dict[str, Any] | None:
    paths = store.key_paths(profile.proxy_host, profile.user)
    try:
        return cert_info(paths.cert.read_text())
    except (OSError, ValueError):
        return None


async def status(reactor: Any, args: argparse.Namespace, store: KeyStore) -> int:
    profile = store.current_profile()
    info = _read_cert(store, profile) if profile else None
    if profile is None or info is None:
        print("Not logged in. Run: teleconch login --proxy HOST:3080 --user NAME")
        return 1
    _print_status(profile, info, reactor.seconds())
    return 0


async def logout(reactor: Any, args: argparse.Namespace, store: KeyStore) -> int:
    profiles = store.profiles()
    if not profiles:
        print("Not logged in.")
        return 0
    sock = os.environ.get("SSH_AUTH_SOCK")
    for profile in profiles:
        if sock:
            await _forget_in_agent(reactor, sock, _agent_comment(profile))
        await deferToThread(store.remove_profile, profile)
        print(f"Logged out {profile.user} from {profile.web_addr}.")
    return 0


def _agent_comment(profile: Profile) -> str:
    """How our agent entries are known: one login's key and cert share it."""
    return f"teleconch:{profile.user}@{profile.proxy_host}"


async def _forget_in_agent(reactor: Any, sock: str, comment: str) -> None:
    """Remove every agent entry an earlier login of this profile added."""
    try:
        agent = await connect_agent(reactor, sock)
    except AgentError:
        return
    try:
        for identity in await agent.list_identities():
            if identity.comment == comment:
                await agent.remove(identity.blob)
    finally:
        agent.close()


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
    return parser


def run(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    store = KeyStore()

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
