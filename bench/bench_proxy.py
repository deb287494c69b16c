"""teleconch's proxy against OpenSSH's sshd as the jump host, every data-path figure in one run.

One rig (``bench/cluster.py``): the cluster under twistd, a real sshd node, an
sshd jump host, the OpenSSH client; plus ``bench/tiny_node.py`` for thousands
of sessions. In order:

1. memory: the proxy's RSS before and after N sessions have ended (gc run in
   the proxy through its TELECONCH_MEMDEBUG hook), ``bench_sessions.memory``
2. throughput both ways, chacha20-poly1305 on every hop and the client's
   default, with the jump host's CPU per GB, ``bench_throughput``
3. keystroke echo latency in a PTY, ``bench_latency.latency``
4. session set-up, ``ssh -J ... true``, ``bench_latency.setup``
5. concurrent sessions (asyncssh clients in this process), memory per session
   and set-up under load vs idle, ``bench_sessions.concurrency``

Every figure is printed beside the sshd jump host's and written to JSON.

Usage: PYTHONPATH=. python bench/bench_proxy.py [--quick] [--json out.json]
           [--compare previous.json] [--only memory,throughput,latency,setup,sessions]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_latency, bench_sessions, bench_throughput
from bench.cluster import (
    JUMPS,
    VENV_BIN,
    Procs,
    build_rig,
    median,
    negotiated,
    p95,
)
from bench.figures import DEFAULT_JSON, Figures, compare

PARTS = ("memory", "throughput", "latency", "setup", "sessions")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run, about a minute")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3, help="throughput runs per path")
    ap.add_argument("--keystrokes", type=int, default=1000)
    ap.add_argument("--setup-runs", type=int, default=30)
    ap.add_argument("--sessions", type=int, nargs="*", default=[1000, 5000])
    ap.add_argument("--probes", type=int, default=20, help="set-ups idle / loaded")
    ap.add_argument("--memory-sessions", type=int, default=200)
    ap.add_argument("--memory-rounds", type=int, default=2)
    ap.add_argument(
        "--trace-frames",
        type=int,
        default=0,
        help="run the proxy under tracemalloc (N frames) to see what memory keeps "
        "(inflates its RSS: for diagnosis, not for the figures)",
    )
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--compare", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.size_mb, args.runs, args.keystrokes = 32, 1, 200
        args.setup_runs, args.sessions, args.probes = 6, [100], 5
        args.memory_sessions, args.memory_rounds = 50, 1
    args.only = [p for p in args.only.split(",") if p]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        ap.error(f"--only: unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    return args


def main() -> None:
    args = parse_args()
    os.environ["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"
    nofile = bench_sessions.raise_nofile()
    figs = Figures()
    try:
        run_parts(args, figs, nofile)
    finally:  # what was measured is kept, even if a later part failed
        figs.print_table()
        figs.write(args.json, {k: str(v) for k, v in vars(args).items()})
        if args.compare:
            compare(args.compare, figs.as_json({}))


def run_parts(args: argparse.Namespace, figs: Figures, nofile: int) -> None:
    procs = Procs()
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-proxy-"))
        )
        stack.callback(procs.stop_all)
        memdir = tmp / "memdebug"
        t0 = time.perf_counter()
        rig = build_rig(
            tmp, procs, proxy_env=bench_sessions.proxy_env(memdir, args.trace_frames)
        )
        print(
            f"rig up in {time.perf_counter() - t0:.1f} s: proxy :{rig.proxy_port} "
            f"(pid {rig.proxy_pid}), jump sshd :{rig.jump_port}, node sshd "
            f":{rig.node_port}; descriptors {nofile}",
            flush=True,
        )
        for chacha in (False, True):
            rig.chacha = chacha
            for path, hops in negotiated(rig).items():
                label = "chacha20" if chacha else "default"
                print(f"  {label:8} {path:10} ciphers per hop: {hops}")
        rig.chacha = False

        if "memory" in args.only:
            n = args.memory_sessions
            print(f"\n1. memory: {args.memory_rounds} x {n} sessions", flush=True)
            m = asyncio.run(bench_sessions.memory(rig, memdir, n, args.memory_rounds))
            bench_sessions.print_memory(m)
            figs.detail["memory"] = m.figures()
            figs.add(
                f"proxy RSS after {n} sessions ended / before",
                m.ratio_after,
                None,
                "x (bar 1.10)",
                "lower",
            )

        if "throughput" in args.only:
            print(f"\n2. throughput, {args.size_mb} MB x {args.runs}", flush=True)
            tp = bench_throughput.throughput(rig, args.size_mb, args.runs)
            figs.detail["throughput"] = {
                c: {
                    d: {p: [vars(t) for t in ts] for p, ts in by_path.items()}
                    for d, by_path in by_dir.items()
                }
                for c, by_dir in tp.runs.items()
            }
            for cipher in tp.runs:
                for d in bench_throughput.DIRECTIONS:
                    mb = {p: tp.mb_s(cipher, d, p) for p in JUMPS}
                    cpu = {p: tp.cpu_per_gb(cipher, d, p) for p in JUMPS}
                    figs.add(
                        f"{d} MB/s, {cipher}", mb["teleconch"], mb["sshd-jump"], "MB/s"
                    )
                    figs.add(
                        f"{d} jump CPU s/GB, {cipher}",
                        cpu["teleconch"],
                        cpu["sshd-jump"],
                        "s/GB",
                        "lower",
                    )

        if "latency" in args.only:
            print(f"\n3. keystroke echo, {args.keystrokes} keystrokes", flush=True)
            lat = bench_latency.latency(rig, args.keystrokes)
            figs.detail["latency_ms"] = {
                p: {"p50": median(xs) * 1000, "p95": p95(xs) * 1000}
                for p, xs in lat.items()
            }
            for label, fn in (("p50", median), ("p95", p95)):
                v = {p: fn(lat[p]) * 1000 for p in JUMPS}
                figs.add(
                    f"echo {label} ms", v["teleconch"], v["sshd-jump"], "ms", "lower"
                )
                print(f"  {label}: {v['teleconch']:.2f} ms vs {v['sshd-jump']:.2f} ms")

        if "setup" in args.only:
            print(f"\n4. set-up, {args.setup_runs} x `ssh -J ... true`", flush=True)
            st = bench_latency.setup(rig, args.setup_runs)
            for label, fn in (("median", median), ("p95", p95)):
                v = {p: fn(st[p]) * 1000 for p in JUMPS}
                figs.add(
                    f"set-up {label} ms", v["teleconch"], v["sshd-jump"], "ms", "lower"
                )
                print(f"  {label}: {v['teleconch']:.1f} ms vs {v['sshd-jump']:.1f} ms")

        if "sessions" in args.only and args.sessions:
            print("\n5. concurrent sessions (asyncssh, tiny node)", flush=True)
            node_pid = bench_sessions.start_tiny_node(rig)
            figs.detail["sessions"] = {}
            for n in args.sessions:
                c = asyncio.run(
                    bench_sessions.concurrency(rig, node_pid, memdir, n, args.probes)
                )
                bench_sessions.print_concurrency(c)
                f = c.figures()
                figs.detail["sessions"][str(n)] = f
                figs.add(f"{n} sessions: opened", c.opened, n, "sessions")
                figs.add(
                    f"{n} sessions: proxy kB per session",
                    c.per_session_kb,
                    None,
                    "kB",
                    "lower",
                )
                figs.add(
                    f"{n} sessions: set-up loaded / idle",
                    f["setup_loaded_median_ms"],
                    f["setup_idle_median_ms"],
                    "ms (baseline: idle)",
                    "lower",
                )


if __name__ == "__main__":
    main()
