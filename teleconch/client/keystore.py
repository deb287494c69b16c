"""The user's keys, certificates and profiles under ``$TELECONCH_HOME`` (``~/.tsh``).

Layout (as tsh keeps it)::

    keys/<proxy-host>/<user>            private key (0600)
    keys/<proxy-host>/<user>.pub
    keys/<proxy-host>/<user>-cert.pub   the short-lived certificate
    known_hosts                         @cert-authority lines for the host CA
    profiles/<proxy-host>.json          proxy addresses, cluster, user
    current-profile                     the proxy host last logged in to
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from teleconch.client.errors import UsageError
from teleconch.files import ensure_private_directory, write_private_file

KNOWN_HOSTS_MARK = "teleconch-cluster="


def teleconch_home() -> Path:
    env = os.environ.get("TELECONCH_HOME")
    return Path(env) if env else Path.home() / ".tsh"


def _write(path: Path, data: bytes) -> None:
    ensure_private_directory(path.parent)
    write_private_file(path, data)


@attrs.frozen
class Profile:
    """What ``teleconch login`` learnt about a proxy, for the commands after it."""

    proxy_host: str
    web_addr: str
    ssh_proxy_addr: str
    cluster: str
    user: str
    insecure: bool = False

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class KeyPaths:
    directory: Path
    user: str

    @property
    def private(self) -> Path:
        return self.directory / self.user

    @property
    def public(self) -> Path:
        return self.directory / f"{self.user}.pub"

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.user}-cert.pub"


class KeyStore:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or teleconch_home()

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    def key_paths(self, proxy_host: str, user: str) -> KeyPaths:
        return KeyPaths(self.home / "keys" / proxy_host, user)

    def save_key(
        self, proxy_host: str, user: str, key: ed25519.Ed25519PrivateKey, cert_line: str
    ) -> KeyPaths:
        paths = self.key_paths(proxy_host, user)
        for directory in (self.home, self.home / "keys", paths.directory):
            ensure_private_directory(directory)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(paths.private, private)
        _write(paths.public, public + f" {user}\n".encode())
        _write(paths.cert, cert_line.strip().encode() + b"\n")
        return paths

    def save_profile(self, profile: Profile) -> None:
        data = json.dumps(profile.to_json(), indent=2).encode() + b"\n"
        _write(self.home / "profiles" / f"{profile.proxy_host}.json", data)
        _write(self.home / "current-profile", profile.proxy_host.encode() + b"\n")

    def current_profile(self) -> Profile | None:
        try:
            host = (self.home / "current-profile").read_text().strip()
            data = json.loads((self.home / "profiles" / f"{host}.json").read_text())
            return Profile(**data)
        except (OSError, ValueError, TypeError):
            return None

    def profiles(self) -> list[Profile]:
        out = []
        for path in sorted((self.home / "profiles").glob("*.json")):
            try:
                out.append(Profile(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def remove_profile(self, profile: Profile) -> None:
        paths = self.key_paths(profile.proxy_host, profile.user)
        for path in (paths.private, paths.public, paths.cert):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            paths.directory.rmdir()
        (self.home / "profiles" / f"{profile.proxy_host}.json").unlink(missing_ok=True)
        current = self.home / "current-profile"
        if current.exists() and current.read_text().strip() == profile.proxy_host:
            current.unlink()

    def trust_host_ca(
        self, cluster: str, proxy_host: str, ca_lines: Sequence[str]
    ) -> None:
        """Replace this cluster's ``@cert-authority`` lines in known_hosts.

        The patterns make OpenSSH trust the host CA for the proxy on any port
        (a non-22 port is looked up as ``[host]:port``) and for every
        ``*.<cluster>`` node name.
        """
        patterns = ",".join(
            [proxy_host, f"[{proxy_host}]:*", f"*.{cluster}", f"[*.{cluster}]:*"]
        )
        mark = f"{KNOWN_HOSTS_MARK}{cluster}"
        kept: list[str] = []
        if self.known_hosts.exists():
            kept = [
                line
                for line in self.known_hosts.read_text().splitlines()
                if not line.endswith(" " + mark)
            ]
        for line in ca_lines:
            key_type, key_data = line.split()[:2]
            kept.append(f"@cert-authority {patterns} {key_type} {key_data} {mark}")
        _write(self.known_hosts, ("\n".join(kept) + "\n").encode())


def require_profile(store: KeyStore) -> Profile:
    """The current login's profile; UsageError saying how to log in if none."""
    profile = store.current_profile()
    if profile is None:
        raise UsageError(
            "not logged in: run teleconch login --proxy HOST:3080 --user NAME"
        )
    return profile
