"""Where the proxy's time goes on a bulk transfer: ``python bench/profile_datapath.py``.

Starts the rig of ``bench/cluster.py`` (what ``bench_proxy.py`` starts: the
cluster under twistd, a real sshd node, the OpenSSH client, all on
127.0.0.1), forces one cipher on every hop (a ``Ciphers`` line at the top of
the client's ssh_config, which ``ssh -J`` passes on to the jump hop with
``-F``), then records the proxy process with py-spy while a download
and an upload of ``--size-mb`` go through ``ssh -J``.  For each direction it
prints the throughput, the share of samples per part of the data path (packet
processing, ciphers, window adjusts, logging, TCP read and write, ...) and the
hottest frames, and keeps py-spy's raw (collapsed) output and a speedscope
file under ``--out`` to look at later (https://www.speedscope.app).

Usage: PYTHONPATH=. python bench/profile_datapath.py [--size-mb 512]
         [--cipher chacha20-poly1305@openssh.com] [--rate 250] [--out DIR]

py-spy is in the ``bench`` extra; it needs ptrace (root, or CAP_SYS_PTRACE).
The proxy runs this checkout's code (PYTHONPATH is set to it).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_throughput import transfer  # noqa: E402
from bench.cluster import VENV_BIN, Procs, build_rig, negotiated  # noqa: E402

#: (part, substrings of a frame that put a sample in it).  A frame reads
#: "function (file:line)".  A sample goes to the part of its innermost frame
#: that matches one (the leaf first, then its callers), so ``callWithLogger``,
#: which Twisted wraps around every read and write, does not swallow the rest;
#: within one frame the first part listed wins.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("waiting in the reactor (epoll)", ("EPollReactor.doPoll (", "select (")),
    ("logging", ("twisted/logger/", "log.py:msg", "logfile.py", "log.msg (")),
    (
        "ciphers",
        (
            "teleconch/conch/ciphers.py",
            "cryptography/",
            "twisted/conch/ssh/transport.py:SSHCiphers",
        ),
    ),
    (
        "window adjusts",
        (
            "adjustWindow (",
            "open_window (",
            "addWindowBytes (",
            "ssh_CHANNEL_WINDOW_ADJUST (",
        ),
    ),
    # socket.send happens in untilConcludes, called by writeSomeData
    (
        "TCP write",
        ("writeSomeData (", "doWrite (", "_sendmsg", "startWriting ("),
    ),
    ("TCP read", ("Connection.doRead (tcp.py:27", "Connection.doRead (twisted/")),
    (
        "packet processing",
        (
            "teleconch/conch/transport.py",
            "teleconch/conch/guard.py",
            "teleconch/conch/limits.py",
            "twisted/conch/ssh/transport.py",
            "twisted/conch/ssh/connection.py",
            "twisted/conch/ssh/channel.py",
            "twisted/conch/ssh/common.py",
        ),
    ),
    ("flow control and splicing", ("teleconch/conch/flow.py", "teleconch/proxy/")),
    (
        "reactor dispatch",
        (
            "twisted/internet/",
            "twisted/python/log.py",
            "twisted/python/context.py",
        ),
    ),
]


def part_of(stack: list[str]) -> str:
    """The part of the data path a sample is in (see PARTS)."""
    for frame in reversed(stack):
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return "other"


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw output: one ``root;...;leaf count`` line per distinct stack."""
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def summarise(samples: list[tuple[list[str], int]], top: int) -> str:
    total = sum(n for _, n in samples) or 1
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for stack, n in samples:
        parts[part_of(stack)] += n
        leaves[stack[-1]] += n
        for frame in set(stack):
            if "teleconch/" in frame or "cryptography/" in frame:
                inclusive[frame] += n
    lines = [f"    {total} samples of the proxy's main thread"]
    lines += [
        f"    {part:28} {100 * n / total:5.1f}%" for part, n in parts.most_common()
    ]
    lines.append(f"    hottest frames (self time), top {top}:")
    lines += [
        f"      {100 * n / total:5.1f}%  {frame}"
        for frame, n in leaves.most_common(top)
    ]
    lines.append(f"    inclusive time of teleconch and cryptography frames, top {top}:")
    lines += [
        f"      {100 * n / total:5.1f}%  {frame}"
        for frame, n in inclusive.most_common(top)
    ]
    return "\n".join(lines)


def record(pid: int, out: Path, fmt: str, rate: int) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` until it gets SIGINT."""
    py_spy = VENV_BIN / "py-spy"
    argv = [
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        fmt,
        "--output",
        str(out),
        "--nonblocking",
    ]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attach before the transfer starts
    if p.poll() is not None:
        err = p.stderr.read().decode() if p.stderr else ""
        raise RuntimeError(f"py-spy did not start (needs ptrace): {err}")
    return p


def stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--cipher", default="chacha20-poly1305@openssh.com")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("profile-datapath"))
    args = ap.parse_args()
    os.environ["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    args.out.mkdir(parents=True, exist_ok=True)

    procs = Procs()
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="profile-dp-"))
        )
        stack.callback(procs.stop_all)
        rig = build_rig(tmp, procs)
        if args.cipher == "chacha20-poly1305@openssh.com":
            rig.chacha = True  # the rig's own chacha20 configs
        else:
            forced = f"Ciphers {args.cipher}\n"  # before any Host: first wins
            rig.tconf.write_text(forced + rig.tconf.read_text())
        hops = negotiated(rig)["teleconch"]
        print(f"proxy pid {rig.proxy_pid}; ciphers per hop (jump, node): {hops}")
        upload = tmp / "upload.bin"
        with upload.open("wb") as f:
            f.truncate(args.size_mb * 1024 * 1024)
        for direction, src in (("down", None), ("up", upload)):
            raw = args.out / f"{direction}.raw.txt"
            spy = record(rig.proxy_pid, raw, "raw", args.rate)
            try:
                t = transfer(rig, "teleconch", args.size_mb, src)
            finally:
                stop(spy)
            print(
                f"\n{direction}: {args.size_mb / t.seconds:.1f} MB/s "
                f"({t.seconds:.2f} s, proxy CPU {t.jump_cpu:.2f} s, "
                f"{t.jump_cpu / (args.size_mb / 1024):.2f} s/GB)",
                flush=True,
            )
            print(summarise(read_raw(raw), args.top), flush=True)
            # The same stacks for speedscope, converted from the raw file.
            (args.out / f"{direction}.speedscope.json").write_text(
                to_speedscope(read_raw(raw), f"proxy {direction}")
            )
        print(f"\nraw and speedscope profiles in {args.out.resolve()}")


def to_speedscope(samples: list[tuple[list[str], int]], name: str) -> str:
    """A speedscope "sampled" profile of the collapsed stacks."""

    index: dict[str, int] = {}
    frames: list[dict[str, str]] = []
    stacks, weights = [], []
    for stack, n in samples:
        ids = []
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                frames.append({"name": frame})
            ids.append(index[frame])
        stacks.append(ids)
        weights.append(n)
    return json.dumps(
        {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": frames},
            "profiles": [
                {
                    "type": "sampled",
                    "name": name,
                    "unit": "none",
                    "startValue": 0,
                    "endValue": sum(weights),
                    "samples": stacks,
                    "weights": weights,
                }
            ],
        }
    )


if __name__ == "__main__":
    main()
