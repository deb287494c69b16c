"""The recording proxy against node mode and an OpenSSH jump host, in one run.

Two clusters under twistd (bench_proxy's rig): one in ``session_recording:
node`` (the proxy splices), one in ``proxy`` (the proxy terminates the
client's SSH, logs in to the node through the forwarded agent, records).
Measured, all on 127.0.0.1 with the real OpenSSH client and sshd:

1. throughput of ``ssh -A -J`` downloading SIZE MB: proxy mode, node mode,
   and sshd as the jump host (ratios against the jump host);
2. the proxy's memory per recorded session (RSS with N sessions open);
3. the recording's stored bytes per MB of output (the spool's frames, as
   uploaded): zeros, and base64 of random bytes (terminal-like text).

Usage: python bench/bench_recording.py [--size-mb 128] [--sessions 20]
Prints a JSON summary last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.bench_throughput import transfer
from bench.cluster import (
    VENV_BIN,
    Procs,
    Rig,
    build_rig,
    rss_kb,
    run,
    wait_for_log,
)


def with_agent(rig: Rig, stack: ExitStack) -> None:
    """A real ssh-agent holding the bench user's certificate; ForwardAgent on."""
    sock = rig.tmp / "agent.sock"
    out = run(["ssh-agent", "-a", str(sock)])
    pid = re.search(r"SSH_AGENT_PID=(\d+)", out)
    assert pid, out
    stack.callback(os.kill, int(pid.group(1)), 15)
    os.environ["SSH_AUTH_SOCK"] = str(sock)
    key = rig.home / "keys" / "127.0.0.1" / "bench"
    run(["ssh-add", str(key)])
    with rig.tconf.open("a") as f:
        f.write("\nHost *\n    ForwardAgent yes\n")


def ctl(rig: Rig) -> list[str]:
    auth = wait_for_log(
        rig.tmp / "twistd.log",
        {"auth": r"auth service of cluster .* listening on 127\.0\.0\.1:(\d+)"},
    )["auth"]
    return [str(VENV_BIN / "teleconch-ctl"), "--data-dir", str(rig.tmp / "data"),
            "--auth-server", f"127.0.0.1:{auth}"]  # fmt: skip


def recordings(rig: Rig) -> list[dict[str, Any]]:
    return list(json.loads(run([*ctl(rig), "recordings", "ls", "--format", "json"])))


def stored_bytes_per_mb(rig: Rig, command: str, mb: float) -> float:
    """Run ``command`` (about ``mb`` MB of output); its recording's size per MB."""
    before = {r["id"] for r in recordings(rig)}
    r = subprocess.run([*rig.argv("teleconch"), command], stdout=subprocess.DEVNULL,
                       env=rig.env, timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0
    for _ in range(300):
        new = [x for x in recordings(rig) if x["id"] not in before and x["complete"]]
        if new:
            return float(new[0]["size"]) / mb
        time.sleep(0.2)
    raise RuntimeError("the recording was not uploaded")


def memory_per_session(rig: Rig, n: int) -> float:
    """kB of proxy RSS per open recorded session (n at once)."""
    base = rss_kb(rig.proxy_pid)
    procs = [
        subprocess.Popen([*rig.argv("teleconch"), "echo open; sleep 60"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=rig.env)
        for _ in range(n)
    ]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout is not None
            p.stdout.readline()  # the session is open
        time.sleep(2)
        during = rss_kb(rig.proxy_pid)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    return (during - base) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=128)
    ap.add_argument("--sessions", type=int, default=20)
    args = ap.parse_args()
    os.environ["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"
    procs = Procs()
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rec-"))
        )
        stack.callback(procs.stop_all)
        (tmp / "node").mkdir()
        (tmp / "proxy").mkdir()
        node = build_rig(tmp / "node", procs)
        rec = build_rig(tmp / "proxy", procs, {"session_recording": "proxy"})
        with_agent(rec, stack)
        size = args.size_mb
        mbps = {}
        for name, rig, path in (
            ("proxy-mode", rec, "teleconch"),
            ("node-mode", node, "teleconch"),
            ("sshd-jump", node, "sshd-jump"),
        ):
            t = transfer(rig, path, size, None)
            mbps[name] = size / t.seconds
            print(f"  {name:10} {mbps[name]:7.1f} MB/s  (jump CPU {t.jump_cpu:.1f} s)",
                  flush=True)  # fmt: skip
        per_session = memory_per_session(rec, args.sessions)
        print(f"  memory: {per_session:.0f} kB RSS per recorded session", flush=True)
        zeros = stored_bytes_per_mb(rec, "head -c 16777216 /dev/zero", 16)
        text = stored_bytes_per_mb(rec, "head -c 12582912 /dev/urandom | base64", 16)
        print(
            f"  stored per MB of output: zeros {zeros:.0f} B, base64 text {text:.0f} B"
        )
        summary = {
            "size_mb": size,
            "throughput_mb_s": {k: round(v, 1) for k, v in mbps.items()},
            "proxy_mode_vs_sshd_jump": round(mbps["proxy-mode"] / mbps["sshd-jump"], 2),
            "proxy_mode_vs_node_mode": round(mbps["proxy-mode"] / mbps["node-mode"], 2),
            "rss_kb_per_recorded_session": round(per_session),
            "sessions": args.sessions,
            "stored_bytes_per_mb_output": {
                "zeros": round(zeros),
                "base64": round(text),
            },
        }
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
