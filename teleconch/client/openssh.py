"""Command lines for the user's own OpenSSH client, from a teleconch login.

``teleconch ssh``, ``teleconch proxy ssh`` and ``teleconch ls`` run the real
``ssh`` with the login's key, certificate and known_hosts, so a PTY, ``-A``,
``-L/-R/-D``, ``scp`` and ``sftp`` behave exactly as OpenSSH users expect.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from teleconch.client.keystore import KeyStore, Profile
from teleconch.config import parse_host_port

#: The proxy's subsystem listing the nodes a user may reach, as JSON.
NODES_SUBSYSTEM = "teleconch-nodes"
#: The proxy's subsystems listing the live sessions one may join (JSON), and
#: joining one (``teleconch-join@SID:MODE``): `teleconch.proxy.join_subsystem`.
SESSIONS_SUBSYSTEM = "teleconch-sessions"
JOIN_SUBSYSTEM = "teleconch-join"

#: For the hop to the proxy only (the node hop is end to end): the proxy
#: decrypts it in Python, where AES-GCM costs about half of chacha20-poly1305,
#: OpenSSH's first choice. "^" puts them first and keeps the rest.
PROXY_HOP_CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"


def teleconch_command() -> list[str]:
    """How to run this same client again (for a ProxyCommand)."""
    script = Path(sys.argv[0])
    if script.name == "teleconch" and script.exists():
        return [str(script.absolute())]
    return [sys.executable, "-m", "teleconch.client.tsh"]


def identity_options(store: KeyStore, profile: Profile) -> list[str]:
    paths = store.key_paths(profile.proxy_host, profile.user)
    return [
        "-o", f"IdentityFile={paths.private}",
        "-o", f"CertificateFile={paths.cert}",
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={store.known_hosts}",
    ]  # fmt: skip


def proxy_hop(store: KeyStore, profile: Profile, login: str) -> list[str]:
    """``ssh`` to the proxy's SSH listener, non-interactive, trusting only the host CA."""
    proxy = parse_host_port(profile.ssh_proxy_addr, 3023)
    return [
        "ssh",
        *identity_options(store, profile),
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ForwardAgent=no",
        "-o", "ClearAllForwardings=yes",
        "-o", f"Ciphers={PROXY_HOP_CIPHERS}",
        "-p", str(proxy.port),
        "-l", login,
        proxy.host,
    ]  # fmt: skip


def proxy_subsystem_argv(
    store: KeyStore, profile: Profile, login: str, host: str, port: int
) -> list[str]:
    """stdio to ``host:port`` through the proxy: the ProxyCommand of a node hop."""
    subsystem = f"proxy:{host}:{port}@{profile.cluster}"
    return [*proxy_hop(store, profile, login), "-T", "-s", subsystem]


def nodes_argv(store: KeyStore, profile: Profile, login: str) -> list[str]:
    return [*proxy_hop(store, profile, login), "-T", "-s", NODES_SUBSYSTEM]


def sessions_argv(store: KeyStore, profile: Profile, login: str) -> list[str]:
    return [*proxy_hop(store, profile, login), "-T", "-s", SESSIONS_SUBSYSTEM]


def join_argv(
    store: KeyStore, profile: Profile, login: str, session_id: str, mode: str
) -> list[str]:
    """Attach this terminal to a live session: a PTY, so keys go as typed and
    OpenSSH's ``~.`` escape works."""
    subsystem = f"{JOIN_SUBSYSTEM}@{session_id}:{mode}"
    return [*proxy_hop(store, profile, login), "-t", "-s", subsystem]


def node_argv(
    store: KeyStore,
    profile: Profile,
    login: str,
    node: str,
    options: list[str],
    command: list[str],
) -> list[str]:
    """``ssh login@node`` through the proxy, checking the node's host certificate."""
    proxy_command = shlex.join([*teleconch_command(), "proxy", "ssh", "%r@%h:%p"])
    return [
        "ssh",
        *identity_options(store, profile),
        "-o", f"ProxyCommand={proxy_command}",
        "-o", f"HostKeyAlias={_qualified(node, profile.cluster)}",
        *options,
        "-l", login,
        node,
        *command,
    ]  # fmt: skip


def _qualified(node: str, cluster: str) -> str:
    return node if node.endswith(f".{cluster}") else f"{node}.{cluster}"


def ssh_config(store: KeyStore, profile: Profile) -> str:
    """An ssh_config block (like ``tsh config``) so plain ``ssh web1.<cluster>`` works."""
    paths = store.key_paths(profile.proxy_host, profile.user)
    proxy = parse_host_port(profile.ssh_proxy_addr, 3023)
    command = shlex.join([*teleconch_command(), "proxy", "ssh"]) + " %r@%h:%p"
    cluster = profile.cluster
    return f"""\
# Begin generated teleconch configuration for {profile.proxy_host}
# Add it to ~/.ssh/config; then: ssh LOGIN@NODE.{cluster}
Host *.{cluster} {proxy.host}
    UserKnownHostsFile "{store.known_hosts}"
    IdentityFile "{paths.private}"
    CertificateFile "{paths.cert}"
    IdentitiesOnly yes

Host *.{cluster} !{proxy.host}
    ProxyCommand {command}

Host {proxy.host}
    Port {proxy.port}
    Ciphers {PROXY_HOP_CIPHERS}
# End generated teleconch configuration
"""
