"""Interactive latency and session set-up, through the proxy and through sshd as the jump host.

Latency: ``ssh -tt -J ...`` runs ``stty raw -echo; cat`` in a PTY on the node
(raw, so each byte goes to ``cat`` at once and is echoed once, by ``cat``); we
write one byte to ssh's stdin and time until it is read back from its stdout,
1,000 times, the two paths alternating in blocks of 50 keystrokes.

Set-up: ``ssh -J ... true``, wall time, the two paths alternating per run.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

from bench.cluster import JUMPS, Rig

READY = b"READY"
BLOCK = 50


class Echo:
    """One ``ssh -tt`` session running a raw ``cat`` on the node."""

    def __init__(self, rig: Rig, path: str) -> None:
        self.p = subprocess.Popen(
            [
                *rig.argv(path, "-tt"),
                f"stty raw -echo; echo {READY.decode()}; exec cat",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=rig.env,
            bufsize=0,
        )
        assert self.p.stdin is not None and self.p.stdout is not None
        self.wfd, self.rfd = self.p.stdin.fileno(), self.p.stdout.fileno()
        self._read_until(READY, 30)

    def _read_until(self, marker: bytes, timeout: float) -> None:
        seen = b""
        deadline = time.monotonic() + timeout
        while marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise RuntimeError(f"no {marker!r} from the node: {seen[-200:]!r}")
            chunk = os.read(self.rfd, 4096)
            if not chunk:
                raise RuntimeError(f"the session ended before {marker!r}: {seen!r}")
            seen += chunk

    def keystroke(self, byte: bytes) -> float:
        t0 = time.perf_counter()
        os.write(self.wfd, byte)
        got = b""
        while byte not in got:
            if not select.select([self.rfd], [], [], 10)[0]:
                raise RuntimeError("a keystroke was not echoed within 10 s")
            got += os.read(self.rfd, 4096)
        return time.perf_counter() - t0

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        for f in (self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


def latency(rig: Rig, keystrokes: int) -> dict[str, list[float]]:
    """Echo seconds per keystroke, per jump path."""
    sessions = {p: Echo(rig, p) for p in JUMPS}
    out: dict[str, list[float]] = {p: [] for p in JUMPS}
    try:
        for p in JUMPS:  # a few to warm both paths
            for _ in range(5):
                sessions[p].keystroke(b"w")
        block = 0
        while len(out[JUMPS[0]]) < keystrokes:
            order = JUMPS if block % 2 == 0 else JUMPS[::-1]
            n = min(BLOCK, keystrokes - len(out[JUMPS[0]]))
            for p in order:
                for i in range(n):
                    out[p].append(sessions[p].keystroke(bytes([97 + i % 26])))
            block += 1
    finally:
        for s in sessions.values():
            s.close()
    return out


def setup(rig: Rig, runs: int) -> dict[str, list[float]]:
    """``ssh -J ... true`` wall seconds per run, per jump path, alternating."""
    out: dict[str, list[float]] = {p: [] for p in JUMPS}
    for i in range(runs):
        for p in JUMPS if i % 2 == 0 else JUMPS[::-1]:
            t0 = time.perf_counter()
            r = subprocess.run(
                [*rig.argv(p), "true"], capture_output=True, env=rig.env, timeout=60
            )
            out[p].append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise RuntimeError(f"{p} session failed: {r.stderr.decode()}")
    return out
