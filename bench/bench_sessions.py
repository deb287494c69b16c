"""Concurrent sessions through one proxy process, and the proxy's memory after sessions end.

Clients are asyncssh, all in this process, each logging in to the proxy with
the bench user's certificate and then, through a ``direct-tcpip`` channel (what
``ssh -J`` does), to the node with the same certificate, and opening a session
there. For 1,000 and 5,000 sessions the node is ``bench/tiny_node.py`` (one
asyncssh process: sshd forks per connection and throttles unauthenticated ones
behind MaxStartups, so 5,000 sessions would measure sshd); for the memory
check the node is the real sshd.

Memory after sessions end: the proxy runs with ``TELECONCH_MEMDEBUG`` (see
``teleconch/memdebug.py``); SIGUSR1 makes it collect garbage and report its RSS
and object counts, with ``--trace-frames N`` also a tracemalloc snapshot; the
difference between the snapshot before and after the sessions says what was
kept, and where it was allocated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from bench.cluster import (
    CLUSTER,
    Rig,
    median,
    p95,
    ratio,
    rss_kb,
    run,
    smaps_breakdown,
    threads,
    wait_for_log,
)

MEMDEBUG_ENV = "TELECONCH_MEMDEBUG"
TRACE_ENV = "TELECONCH_MEMDEBUG_TRACE"
HANDSHAKES_AT_ONCE = 32  # clients mid-handshake at any moment: waves, not a storm


def raise_nofile() -> int:
    """Raise this process's descriptor limit to the hard limit (children inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def proxy_env(directory: Path, trace_frames: int) -> dict[str, str]:
    directory.mkdir(mode=0o700, exist_ok=True)
    return {MEMDEBUG_ENV: str(directory), TRACE_ENV: str(trace_frames)}


def memdump(rig: Rig, directory: Path, timeout: float = 60) -> dict[str, Any]:
    """Ask the proxy to collect and dump (SIGUSR1); its summary once written."""
    n = 1 + sum(1 for _ in directory.glob("*.done"))
    os.kill(rig.proxy_pid, signal.SIGUSR1)
    done = directory / f"{n}.done"
    deadline = time.monotonic() + timeout
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy wrote no memory dump {n} in {directory}")
        time.sleep(0.1)
    summary: dict[str, Any] = json.loads((directory / f"{n}.json").read_text())
    summary["n"] = n
    return summary


def start_tiny_node(rig: Rig) -> int:
    """The asyncssh node, registered as ``tiny``; its pid."""
    from bench.cluster import free_port

    port = free_port()
    log = rig.tmp / "tiny_node.log"
    p = rig.procs.start(
        [
            sys.executable,
            str(Path(__file__).with_name("tiny_node.py")),
            "--port",
            str(port),
            "--host-key",
            str(rig.tmp / "node" / "web1"),
            "--user-ca",
            str(rig.tmp / "user_ca.pub"),
        ],
        log,
    )
    wait_for_log(log, {"port": r"tiny node listening on 127\.0\.0\.1:(\d+)"})
    run([*rig.ctl, "nodes", "add", "--name", "tiny", "--addr", f"127.0.0.1:{port}"])
    return p.pid


async def routed(rig: Rig, node: str, patience: float = 30) -> None:
    """Until the proxy routes to ``node``: it caches the node list (10 s)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            c, _ = await open_session(rig, node)
        except asyncssh.ChannelOpenError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
            continue
        await c.close()
        return


@dataclass
class Client:
    """One session: the connection to the proxy, the one through it, the process."""

    outer: asyncssh.SSHClientConnection
    inner: asyncssh.SSHClientConnection
    process: asyncssh.SSHClientProcess[bytes]

    async def close(self) -> None:
        self.process.stdin.write_eof()
        with contextlib.suppress(asyncssh.Error, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), 30)
        self.inner.close()
        self.outer.close()
        with contextlib.suppress(asyncssh.Error, OSError):
            await self.inner.wait_closed()
            await self.outer.wait_closed()


async def open_session(rig: Rig, node: str) -> tuple[Client, float]:
    key = asyncssh.read_private_key(str(rig.identity))
    cert = asyncssh.read_certificate(str(rig.certificate))
    t0 = time.perf_counter()
    common: dict[str, Any] = {
        "username": "root",
        "client_keys": [(key, cert)],
        "known_hosts": None,
        "agent_path": None,
        "keepalive_interval": 0,
    }
    outer = await asyncssh.connect("127.0.0.1", rig.proxy_port, **common)
    try:
        inner = await asyncssh.connect(f"{node}.{CLUSTER}", 22, tunnel=outer, **common)
        process = await inner.create_process(
            "cat > /dev/null; echo done" if node == "web1" else None, encoding=None
        )
        if node != "web1":  # the tiny node says R once the session is there
            line = await process.stdout.readline()
            if line != b"R\n":
                raise RuntimeError(f"the node said {line!r}, not R")
    except BaseException:
        outer.close()
        raise
    return Client(outer, inner, process), time.perf_counter() - t0


async def open_many(
    rig: Rig, node: str, n: int, errors: list[str]
) -> tuple[list[Client], list[float]]:
    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    clients: list[Client] = []
    times: list[float] = []

    async def one() -> None:
        async with gate:
            try:
                c, t = await open_session(rig, node)
            except (asyncssh.Error, OSError, RuntimeError) as e:
                errors.append(f"{type(e).__name__}: {e}"[:200])
                return
            clients.append(c)
            times.append(t)

    await asyncio.gather(*(one() for _ in range(n)))
    return clients, times


async def setup_times(rig: Rig, node: str, runs: int) -> list[float]:
    """``runs`` sessions one after the other, each closed: set-up seconds."""
    out = []
    for _ in range(runs):
        c, t = await open_session(rig, node)
        out.append(t)
        await c.close()
    return out


async def close_all(clients: list[Client]) -> None:
    gate = asyncio.Semaphore(256)

    async def one(c: Client) -> None:
        async with gate:
            await c.close()

    await asyncio.gather(*(one(c) for c in clients))


# --------------------------------------------------------------------------- concurrency


@dataclass
class Concurrency:
    sessions: int
    opened: int
    ramp_seconds: float
    proxy_rss_before_kb: int
    proxy_rss_during_kb: int
    proxy_rss_after_kb: int
    node_rss_during_kb: int
    setup_idle: list[float]
    setup_loaded: list[float]
    errors: list[str] = field(default_factory=list)

    @property
    def per_session_kb(self) -> float:
        return (self.proxy_rss_during_kb - self.proxy_rss_before_kb) / max(
            1, self.opened
        )

    def figures(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"] = sorted(set(self.errors))[:10]
        d["per_session_kb"] = self.per_session_kb
        for name in ("setup_idle", "setup_loaded"):
            xs = d.pop(name)
            d[f"{name}_median_ms"] = median(xs) * 1000
            d[f"{name}_p95_ms"] = p95(xs) * 1000 if xs else 0.0
        return d


async def concurrency(
    rig: Rig, node_pid: int, memdir: Path, sessions: int, probes: int
) -> Concurrency:
    await routed(rig, "tiny")  # the node list is fresh, the caches warm
    idle = await setup_times(rig, "tiny", probes)
    before = (await asyncio.to_thread(memdump, rig, memdir))["rss_kb"]
    errors: list[str] = []
    t0 = time.perf_counter()
    clients, _ = await open_many(rig, "tiny", sessions, errors)
    ramp = time.perf_counter() - t0
    try:
        loaded = await setup_times(rig, "tiny", probes)
        during = (await asyncio.to_thread(memdump, rig, memdir))["rss_kb"]
        node = rss_kb(node_pid)
    finally:
        await close_all(clients)
    await asyncio.sleep(2)
    after = (await asyncio.to_thread(memdump, rig, memdir))["rss_kb"]
    return Concurrency(
        sessions,
        len(clients),
        ramp,
        before,
        during,
        after,
        node,
        idle,
        loaded,
        errors,
    )


def print_concurrency(c: Concurrency) -> None:
    f = c.figures()
    print(
        f"  {c.sessions} sessions: opened {c.opened} in {c.ramp_seconds:.1f} s; proxy "
        f"RSS {c.proxy_rss_before_kb} -> {c.proxy_rss_during_kb} kB, "
        f"{c.per_session_kb:.1f} kB per session; after {c.proxy_rss_after_kb} kB",
        flush=True,
    )
    print(
        f"    set-up idle median {f['setup_idle_median_ms']:.1f} ms "
        f"p95 {f['setup_idle_p95_ms']:.1f}; under load median "
        f"{f['setup_loaded_median_ms']:.1f} ms p95 {f['setup_loaded_p95_ms']:.1f} "
        f"({ratio(f['setup_loaded_median_ms'], f['setup_idle_median_ms'])} idle)",
        flush=True,
    )
    for e in f["errors"][:5]:
        print(f"    error: {e}")


# --------------------------------------------------------------------------- memory


@dataclass
class Memory:
    sessions: int
    rounds: int
    rss_before_kb: int
    rss_after_kb: list[int]
    rss_trimmed_before_kb: int
    rss_trimmed_after_kb: list[int]
    objects_before: int
    objects_after: int
    growth_by_type: list[tuple[str, int]]
    traced_growth: list[tuple[str, int, int]]  # site, bytes, blocks
    traced_before_kb: float = 0.0
    traced_after_kb: float = 0.0
    smaps_before: dict[str, int] = field(default_factory=dict)
    smaps_after: dict[str, int] = field(default_factory=dict)
    threads_before: int = 0
    threads_after: int = 0

    @property
    def ratio_after(self) -> float:
        return self.rss_after_kb[-1] / self.rss_before_kb if self.rss_before_kb else 0

    def figures(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_after"] = self.ratio_after
        return d


def type_growth(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, int]]:
    b, a = dict(before["types"]), dict(after["types"])
    grown = [(t, a[t] - b.get(t, 0)) for t in a if a[t] - b.get(t, 0) > 0]
    return sorted(grown, key=lambda x: -x[1])[:15]


def traced_growth(memdir: Path, before: int, after: int) -> list[tuple[str, int, int]]:
    first, last = (memdir / f"{before}.tracemalloc", memdir / f"{after}.tracemalloc")
    if not (first.exists() and last.exists()):
        return []
    keep = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ]
    a = tracemalloc.Snapshot.load(str(first)).filter_traces(keep)
    b = tracemalloc.Snapshot.load(str(last)).filter_traces(keep)
    out = []
    for stat in b.compare_to(a, "traceback")[:12]:
        if stat.size_diff <= 0:
            continue
        # a Traceback runs from the oldest frame to the most recent: show the
        # allocation site first, then its callers
        frames = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno}"
            for f in list(stat.traceback)[::-1][:6]
        )
        out.append((frames, stat.size_diff, stat.count_diff))
    return out


async def memory(rig: Rig, memdir: Path, sessions: int, rounds: int) -> Memory:
    """RSS before, and after each round of ``sessions`` concurrent sessions ended."""
    warm, _ = await open_many(rig, "web1", 10, [])  # caches, lazy imports, pools
    await close_all(warm)
    await asyncio.sleep(3)
    first = await asyncio.to_thread(memdump, rig, memdir)
    smaps_before, threads_before = (
        smaps_breakdown(rig.proxy_pid),
        threads(rig.proxy_pid),
    )
    afters, trimmed = [], []
    last = first
    for _ in range(rounds):
        errors: list[str] = []
        clients, _ = await open_many(rig, "web1", sessions, errors)
        if errors:
            print(f"    {len(errors)} sessions failed, e.g. {errors[0]}")
        await close_all(clients)
        await asyncio.sleep(5)  # the registry's end calls, the node's closes
        last = await asyncio.to_thread(memdump, rig, memdir)
        afters.append(last["rss_kb"])
        trimmed.append(last["rss_trimmed_kb"])
    traced = first.get("tracemalloc") or (0, 0)
    traced_last = last.get("tracemalloc") or (0, 0)
    return Memory(
        sessions,
        rounds,
        first["rss_kb"],
        afters,
        first["rss_trimmed_kb"],
        trimmed,
        first["gc_objects"],
        last["gc_objects"],
        type_growth(first, last),
        traced_growth(memdir, first["n"], last["n"]),
        traced[0] / 1024,
        traced_last[0] / 1024,
        smaps_before,
        smaps_breakdown(rig.proxy_pid),
        threads_before,
        threads(rig.proxy_pid),
    )


def print_memory(m: Memory) -> None:
    print(
        f"  proxy RSS before {m.rss_before_kb} kB; after each round of "
        f"{m.sessions} sessions ended (gc run): {m.rss_after_kb} kB "
        f"({m.ratio_after:.3f}x; the bar is 1.10x); gc objects "
        f"{m.objects_before} -> {m.objects_after}",
        flush=True,
    )
    print(
        f"  after malloc_trim: before {m.rss_trimmed_before_kb} kB, after "
        f"{m.rss_trimmed_after_kb} kB"
    )
    print(f"  threads {m.threads_before} -> {m.threads_after}; RSS by mapping (kB):")
    for kind in sorted(set(m.smaps_before) | set(m.smaps_after)):
        b, a = m.smaps_before.get(kind, 0), m.smaps_after.get(kind, 0)
        if a != b:
            print(f"    {kind:50} {b:8} -> {a:8} ({a - b:+})")
    if m.traced_before_kb:
        print(
            f"  tracemalloc: {m.traced_before_kb:.0f} kB -> {m.traced_after_kb:.0f} kB"
        )
    for t, n in m.growth_by_type[:8]:
        print(f"    +{n:6} {t}")
    for site, size, count in m.traced_growth[:8]:
        print(f"    +{size / 1024:8.1f} kB in {count:+6} blocks: {site}")


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000 if xs else 0.0


def main() -> None:
    import argparse

    from bench.cluster import Procs, build_rig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, nargs="*", default=[1000, 5000])
    ap.add_argument("--memory-sessions", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--trace-frames", type=int, default=0)
    ap.add_argument(
        "--proxy-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the proxy (e.g. MALLOC_ARENA_MAX=2), to experiment",
    )
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.proxy_env)
    raise_nofile()
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as t:
        tmp = Path(t)
        memdir = tmp / "memdebug"
        try:
            rig = build_rig(
                tmp, procs, proxy_env={**proxy_env(memdir, args.trace_frames), **extra}
            )
            if args.memory_sessions:
                print(f"memory after {args.memory_sessions} sessions ended", flush=True)
                m = asyncio.run(memory(rig, memdir, args.memory_sessions, args.rounds))
                print_memory(m)
            if args.sessions:
                node_pid = start_tiny_node(rig)
                for n in args.sessions:
                    print(f"{n} concurrent sessions (asyncssh, tiny node)", flush=True)
                    print_concurrency(
                        asyncio.run(concurrency(rig, node_pid, memdir, n, args.probes))
                    )
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
