"""``teleconch login``, ``status`` and ``logout``: a certificate for the key made
here, where it is kept, and what ssh-agent holds of it."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.threads import deferToThread

from teleconch import config as cfg
from teleconch.client.errors import UsageError
from teleconch.client.keystore import KeyStore, Profile
from teleconch.client.webapi import WebAPIClient
from teleconch.conch.agent import AgentError, certificate_blob, connect_agent
from teleconch.durations import format_duration, parse_duration

DEFAULT_TTL = 12 * 3600
ROLES_EXTENSION = b"teleconch-roles"
TRAITS_EXTENSION = b"teleconch-traits"


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
    traits: dict[str, Any] = {}
    raw_traits = cert.extensions.get(TRAITS_EXTENSION)
    if raw_traits:
        try:
            traits = dict(json.loads(raw_traits))
        except (ValueError, TypeError):
            traits = {}
    return {
        "user": cert.key_id.decode(),
        "logins": [p.decode() for p in cert.valid_principals],
        "extensions": sorted(
            e.decode("utf-8", "replace")
            for e in cert.extensions
            if e not in (ROLES_EXTENSION, TRAITS_EXTENSION)
        ),
        "traits": traits,
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
    traits = info["traits"]
    print(f"  Roles:        {', '.join(info['roles']) or '-'}")
    print(f"  Logins:       {', '.join(logins) or '-'}")
    print(f"  Valid until:  {_when(info['valid_before'])} [{validity}]")
    print(f"  Extensions:   {', '.join(info['extensions']) or '-'}")
    if traits:
        shown = "; ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in sorted(traits.items())
        )
        print(f"  Traits:       {shown}")


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
    _print_status(profile, info, reactor.seconds())
    if not sock:
        print(
            "ssh-agent: no agent running (SSH_AUTH_SOCK is not set); ssh uses the "
            f"key files in {store.key_paths(proxy.host, profile.user).directory}"
        )
        return 0
    lifetime = max(1, int(info["valid_before"] - reactor.seconds()))
    try:
        replaced = await _forget_in_agent(reactor, sock, _agent_comment(profile))
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
        return 0
    again = f", replacing {replaced} from an earlier login" if replaced else ""
    print(
        f"ssh-agent: added the key and certificate (for {format_duration(lifetime)})"
        f"{again}"
    )
    return 0


def _ssh_addr(advertised: str, proxy_host: str) -> str:
    """The proxy's SSH address; a wildcard listen host means the web host."""
    hp = cfg.parse_host_port(advertised, cfg.PROXY_SSH_PORT)
    if hp.host in ("0.0.0.0", "::", ""):
        hp = cfg.HostPort(proxy_host, hp.port)
    return str(hp)


def read_cert(store: KeyStore, profile: Profile) -> dict[str, Any] | None:
    paths = store.key_paths(profile.proxy_host, profile.user)
    try:
        return cert_info(paths.cert.read_text())
    except (OSError, ValueError):
        return None


async def status(reactor: Any, args: argparse.Namespace, store: KeyStore) -> int:
    profile = store.current_profile()
    info = read_cert(store, profile) if profile else None
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
        await deferToThread(store.remove_profile, profile)
        print(f"Logged out {profile.user} from {profile.web_addr}.")
        if not sock:
            print("ssh-agent: no agent running (SSH_AUTH_SOCK is not set)")
            continue
        removed = await _forget_in_agent(reactor, sock, _agent_comment(profile))
        if removed is None:
            print(f"ssh-agent: could not reach the agent at {sock}; nothing removed")
        else:
            print(f"ssh-agent: removed {removed} entries of this login")
    return 0


def _agent_comment(profile: Profile) -> str:
    """How our agent entries are known: one login's key and cert share it."""
    return f"teleconch:{profile.user}@{profile.proxy_host}"


async def _forget_in_agent(reactor: Any, sock: str, comment: str) -> int | None:
    """Remove every agent entry an earlier login of this profile added;
    how many, or None when the agent cannot be reached."""
    try:
        agent = await connect_agent(reactor, sock)
    except AgentError:
        return None
    removed = 0
    try:
        for identity in await agent.list_identities():
            if identity.comment == comment:
                await agent.remove(identity.blob)
                removed += 1
    finally:
        agent.close()
    return removed
