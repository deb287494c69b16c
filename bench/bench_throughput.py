"""Throughput both ways through the proxy and through sshd as the jump host, with the
jump host's CPU seconds per GB.

The two paths alternate (teleconch first in even runs, sshd first in odd ones),
so a neighbour's burst on a shared machine falls on both; figures are medians.

CPU: the proxy is one twistd process, so its utime+stime (all threads) from
``/proc/PID/stat``. sshd forks per connection (``sshd-session`` and its
privilege-separated child): their CPU reaches the listener's cutime+cstime only
once each is reaped, and cutime includes what a reaped child had itself
collected from its own children. So we read the listener's cutime+cstime after
waiting until it has no descendants left (every session process reaped), not
after a fixed sleep.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench.cluster import JUMPS, Rig, cpu_seconds, descendants, median

DIRECTIONS = ("down", "up")
CIPHERS = ("chacha20-poly1305", "default")


@dataclass
class Transfer:
    seconds: float
    jump_cpu: float  # the jump process's CPU seconds (twistd, or sshd + children)
    client_cpu: float  # ssh client processes (incl. the -J ssh) of this bench


def wait_reaped(pid: int, timeout: float = 10) -> None:
    """Until ``pid`` has no children left: their CPU is then in its cutime."""
    deadline = time.monotonic() + timeout
    while descendants(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def jump_cpu(rig: Rig, path: str) -> float:
    if path == "teleconch":
        return cpu_seconds(rig.proxy_pid)
    if path == "sshd-jump":
        wait_reaped(rig.jump_pid)
        return cpu_seconds(rig.jump_pid, children=True)
    return 0.0


def transfer(rig: Rig, path: str, size_mb: int, upload: Path | None) -> Transfer:
    stdin: int | BinaryIO
    if upload is None:
        cmd, stdin = f"head -c {size_mb * 1024 * 1024} /dev/zero", subprocess.DEVNULL
    else:
        cmd, stdin = "cat > /dev/null", upload.open("rb")
    before = jump_cpu(rig, path)
    ru0 = os.times()
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            [*rig.argv(path), cmd],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=rig.env,
            timeout=600,
        )
    finally:
        if not isinstance(stdin, int):  # the upload file we opened
            stdin.close()
    elapsed = time.perf_counter() - t0
    ru1 = os.times()
    if r.returncode != 0:
        raise RuntimeError(f"{path} transfer failed: {r.stderr.decode()}")
    after = jump_cpu(rig, path)
    client = (ru1.children_user - ru0.children_user) + (
        ru1.children_system - ru0.children_system
    )
    return Transfer(elapsed, after - before, client)


@dataclass
class Throughput:
    """Per cipher mode, direction and path: every run's Transfer."""

    size_mb: int
    runs: dict[str, dict[str, dict[str, list[Transfer]]]]

    def mb_s(self, cipher: str, direction: str, path: str) -> float:
        return median(
            [self.size_mb / t.seconds for t in self.runs[cipher][direction][path]]
        )

    def cpu_per_gb(self, cipher: str, direction: str, path: str) -> float:
        gb = self.size_mb / 1024
        return median([t.jump_cpu / gb for t in self.runs[cipher][direction][path]])


def throughput(
    rig: Rig, size_mb: int, runs: int, ciphers: tuple[str, ...] = CIPHERS
) -> Throughput:
    upload = rig.tmp / "upload.bin"
    with upload.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    out: dict[str, dict[str, dict[str, list[Transfer]]]] = {}
    try:
        for cipher in ciphers:
            rig.chacha = cipher == "chacha20-poly1305"
            out[cipher] = {d: {p: [] for p in JUMPS} for d in DIRECTIONS}
            for direction in DIRECTIONS:
                for i in range(runs):
                    order = JUMPS if i % 2 == 0 else JUMPS[::-1]
                    for path in order:
                        src = upload if direction == "up" else None
                        t = transfer(rig, path, size_mb, src)
                        out[cipher][direction][path].append(t)
                        print(
                            f"  {cipher:17} {direction:4} {path:10} "
                            f"{size_mb / t.seconds:8.1f} MB/s  {t.seconds:6.2f} s  "
                            f"jump CPU {t.jump_cpu:5.2f} s  client CPU "
                            f"{t.client_cpu:5.2f} s",
                            flush=True,
                        )
    finally:
        rig.chacha = False
        upload.unlink(missing_ok=True)
    return Throughput(size_mb, out)
