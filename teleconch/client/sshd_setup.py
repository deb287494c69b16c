"""The files ``teleconch join openssh`` writes on a node, and sshd's config.

Everything here blocks (file writes, ``sshd -t``): callers run it in a
thread.  Every write goes through a ``FileChanges``, which remembers what was
there before so that a failure puts the node back as it was.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import subprocess
from pathlib import Path

import attrs

from teleconch.files import write_private_file

SSHD = "/usr/sbin/sshd"
#: Where sshd resolves a relative Include.
SSHD_DIR = Path("/etc/ssh")
KEY_NAME = "ssh_host_ed25519_key"
DROPIN_NAME = "teleconch.conf"


@attrs.frozen
class NodeFiles:
    """The node's identity in ``--dir`` (default /etc/teleconch)."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / KEY_NAME

    @property
    def public(self) -> Path:
        return self.directory / f"{KEY_NAME}.pub"

    @property
    def cert(self) -> Path:
        return self.directory / f"{KEY_NAME}-cert.pub"

    @property
    def user_ca(self) -> Path:
        return self.directory / "user_ca.pub"

    @property
    def cluster_ca(self) -> Path:
        """The cluster's TLS CA, pinned at the join: renewals are checked against it."""
        return self.directory / "cluster_ca.pem"


@attrs.frozen
class SshdFiles:
    """The main sshd_config and the drop-in next to it."""

    main: Path

    @property
    def dropin(self) -> Path:
        return self.main.parent / "sshd_config.d" / DROPIN_NAME

    @property
    def backup(self) -> Path:
        return self.main.with_name(self.main.name + ".teleconch.bak")

    def dropin_text(self, files: NodeFiles) -> str:
        return (
            "# Written by `teleconch join openssh`; run it again rather than edit.\n"
            f"HostKey {files.key}\n"
            f"HostCertificate {files.cert}\n"
            f"TrustedUserCAKeys {files.user_ca}\n"
        )


class FileChanges:
    """Files written, each with what it held before, so they can be put back."""

    def __init__(self) -> None:
        self._before: dict[Path, tuple[bytes, int] | None] = {}

    def write(self, path: Path, data: bytes, mode: int) -> None:
        if path not in self._before:
            try:
                st = path.stat()
                self._before[path] = (path.read_bytes(), stat.S_IMODE(st.st_mode))
            except FileNotFoundError:
                self._before[path] = None
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_private_file(path, data, mode)
        os.chmod(path, mode)

    def rollback(self) -> None:
        for path, before in reversed(list(self._before.items())):
            if before is None:
                path.unlink(missing_ok=True)
            else:
                write_private_file(path, before[0], before[1])
                os.chmod(path, before[1])
        self._before.clear()

    def commit(self) -> None:
        self._before.clear()


def _included(config: str, dropin: Path) -> bool:
    """Whether an Include before any Match block covers the drop-in."""
    for line in config.splitlines():
        words = line.strip().split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].lower()
        if keyword == "match":
            return False
        if keyword != "include":
            continue
        for pattern in words[1:]:
            pattern = pattern.strip('"')
            if not os.path.isabs(pattern):
                pattern = str(SSHD_DIR / pattern)
            if fnmatch.fnmatchcase(str(dropin), pattern):
                return True
    return False


def install_dropin(sshd: SshdFiles, files: NodeFiles, changes: FileChanges) -> bool:
    """Write the drop-in, and Include it at the top of the main config if it
    lacks one (backed up first); True when the main config was changed."""
    try:
        main = sshd.main.read_text()
    except FileNotFoundError:
        raise OSError(
            f"{sshd.main} does not exist: is OpenSSH's sshd installed? (--sshd-config)"
        ) from None
    changes.write(sshd.dropin, sshd.dropin_text(files).encode(), 0o644)
    if _included(main, sshd.dropin):
        return False
    mode = stat.S_IMODE(sshd.main.stat().st_mode)
    shutil.copy2(sshd.main, sshd.backup)
    header = (
        "# Added by `teleconch join openssh` (the previous file is in "
        f"{sshd.backup.name}).\n"
        "# sshd takes the first value of most options: keep this line first.\n"
        f"Include {sshd.dropin}\n\n"
    )
    changes.write(sshd.main, (header + main).encode(), mode)
    return True


def check_sshd(main: Path) -> tuple[bool, str]:
    """``sshd -t`` on the main config: whether it passed, and what it said."""
    try:
        done = subprocess.run(
            [SSHD, "-t", "-f", str(main)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"could not run {SSHD} -t: {e}"
    output = (done.stderr + done.stdout).strip()
    return done.returncode == 0, output


def reload_sshd() -> tuple[bool, str]:
    """Ask the init system to reload sshd; whether it did, and how."""
    attempts = []
    if shutil.which("systemctl"):
        attempts.append(["systemctl", "reload", "ssh"])
        attempts.append(["systemctl", "reload", "sshd"])
    if shutil.which("service"):
        attempts.append(["service", "ssh", "reload"])
    said = "neither systemctl nor service is installed"
    for argv in attempts:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            said = f"{' '.join(argv)}: {e}"
            continue
        if done.returncode == 0:
            return True, " ".join(argv)
        said = f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()}"
    return False, said
