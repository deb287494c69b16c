"""A real OpenSSH sshd on 127.0.0.1 for interop tests, stopped by the test that started it."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    """A port nobody listens on now (sshd cannot bind port 0 and tell us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Log(ProcessProtocol):
    def __init__(self) -> None:
        self.log = b""
        self.ended: Deferred[None] = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.log += data

    outReceived = errReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


@attrs.define
class Sshd:
    port: int
    directory: Path
    _proto: _Log
    _process: IProcessTransport

    @property
    def log(self) -> str:
        return self._proto.log.decode(errors="replace")

    async def stop(self) -> None:
        if not self._proto.ended.called:
            self._process.signalProcess("TERM")
        await self._proto.ended


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _prepare(directory: Path, ca_file: Path, user_ca_lines: Sequence[str]) -> None:
    os.makedirs("/run/sshd", exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    ca_file.write_text("".join(line + "\n" for line in user_ca_lines))


async def start_sshd(
    directory: Path,
    host_key: Path,
    host_cert: Path | None,
    user_ca_lines: Sequence[str],
    extra: Sequence[str] = (),
) -> Sshd:
    """Start sshd trusting ``user_ca_lines`` and presenting ``host_cert``."""
    ca_file = directory / "user_ca.pub"
    _prepare(directory, ca_file, user_ca_lines)
    port = free_port()
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        *([f"HostCertificate {host_cert}"] if host_cert else []),
        f"TrustedUserCAKeys {ca_file}",
        "AuthorizedKeysFile none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "PidFile none",
        "StrictModes no",
        "PermitRootLogin yes",
        "AllowAgentForwarding yes",
        "AllowTcpForwarding yes",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        *extra,
    ]
    config = directory / "sshd_config"
    _write(config, "\n".join(lines) + "\n")
    return await run_sshd(config, port)


async def run_sshd(config: Path, port: int) -> Sshd:
    """Start sshd on ``config`` (which listens on ``port``) and wait until it does."""
    os.makedirs("/run/sshd", exist_ok=True)
    proto = _Log()
    process = reactor.spawnProcess(
        proto,
        SSHD,
        [SSHD, "-D", "-e", "-f", str(config)],
        env={"PATH": os.environ["PATH"]},
    )
    sshd = Sshd(port, config.parent, proto, process)
    for _ in range(200):
        if b"Server listening" in proto.log or proto.ended.called:
            break
        await deferLater(reactor, 0.02)
    if b"Server listening" not in proto.log:
        await sshd.stop()
        raise RuntimeError(f"sshd did not start:\n{sshd.log}")
    return sshd
