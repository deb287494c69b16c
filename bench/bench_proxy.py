"""teleconch proxy vs an OpenSSH jump host: throughput, session set-up, concurrency.

Everything runs as separate processes on 127.0.0.1: the cluster under twistd,
a real sshd node trusting the user CA, a second sshd as the OpenSSH jump-host
baseline, and the OpenSSH client. Three paths to the node are compared:

    teleconch  ssh -J root@127.0.0.1:PROXYPORT root@web1.<cluster>
    sshd-jump  ssh -J root@127.0.0.1:JUMPPORT -p NODEPORT root@127.0.0.1
    direct     ssh -p NODEPORT root@127.0.0.1

Usage: python bench/bench_proxy.py [--size-mb 256] [--setup-runs 30] [--sessions 200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from teleconch import totp

VENV_BIN = Path(sys.executable).parent
CLUSTER = "bench.example"
PASSWORD = "correct horse battery staple 42"  # noqa: S105 - a throwaway bench user
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATHS = ("teleconch", "sshd-jump", "direct")


# --------------------------------------------------------------------------- processes


@dataclass
class Procs:
    """Every long-running process we start, stopped (whole group) at the end."""

    items: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self,
        argv: list[str],
        log: Path,
        **kw: Any,  # any of Popen's keywords, each with its own type
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            p = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kw,
            )
        self.items.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.items):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in reversed(self.items):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run(
    argv: list[str], *, env: dict[str, str] | None = None, stdin: bytes = b""
) -> str:
    r = subprocess.run(
        argv, input=stdin, capture_output=True, env={**os.environ, **(env or {})}
    )
    if r.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({r.returncode}): {r.stderr.decode()}")
    return r.stdout.decode()


def wait_for_log(
    log: Path, patterns: dict[str, str], timeout: float = 30
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = {
            k: m.group(1) for k, pat in patterns.items() if (m := re.search(pat, text))
        }
        if len(found) == len(patterns):
            return found
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {patterns} in {log}:\n{log.read_text()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime (and, with children, cutime+cstime of reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int(
                    (d / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    out, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


# --------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    tmp: Path
    procs: Procs
    proxy_pid: int = 0
    proxy_port: int = 0
    jump_pid: int = 0
    jump_port: int = 0
    node_port: int = 0
    home: Path = Path()
    tconf: Path = Path()
    bconf: Path = Path()

    def argv(self, path: str, *extra: str) -> list[str]:
        """ssh argv for one of PATHS, up to (not including) the remote command."""
        if path == "teleconch":
            return [
                "ssh",
                "-F",
                str(self.tconf),
                *extra,
                "-J",
                f"root@127.0.0.1:{self.proxy_port}",
                f"root@web1.{CLUSTER}",
            ]
        jump = ["-J", f"root@127.0.0.1:{self.jump_port}"] if path == "sshd-jump" else []
        return [
            "ssh",
            "-F",
            str(self.bconf),
            *extra,
            *jump,
            "-p",
            str(self.node_port),
            "root@127.0.0.1",
        ]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TELECONCH_HOME": str(self.home)}


def _sshd_config(
    directory: Path, port: int, host_key: Path, cert: Path | None, user_ca: Path
) -> Path:
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        *([f"HostCertificate {cert}"] if cert else []),
        f"TrustedUserCAKeys {user_ca}",
        "AuthorizedKeysFile none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "PidFile none",
        "StrictModes no",
        "PermitRootLogin yes",
        "AllowTcpForwarding yes",
        "MaxStartups 400",
        "LogLevel ERROR",
    ]
    config = directory / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    return config


def start_sshd(
    procs: Procs, directory: Path, host_key: Path, cert: Path | None, user_ca: Path
) -> tuple[int, int]:
    directory.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)
    port = free_port()
    config = _sshd_config(directory, port, host_key, cert, user_ca)
    log = directory / "sshd.log"
    p = procs.start(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p.pid, port
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not start: {log.read_text()}")


def start_cluster(rig: Rig, auth: dict[str, Any] | None = None) -> tuple[int, int]:
    data = rig.tmp / "data"
    config = rig.tmp / "teleconch.yaml"
    config.write_text(
        json.dumps(
            {
                "teleconch": {"nodename": "bench", "data_dir": str(data)},
                "auth_service": {
                    "listen_addr": "127.0.0.1:0",
                    "cluster_name": CLUSTER,
                    **(auth or {}),
                },
                "proxy_service": {
                    "listen_addr": "127.0.0.1:0",
                    "web_listen_addr": "127.0.0.1:0",
                    "peer_listen_addr": "127.0.0.1:0",
                    "public_addr": "127.0.0.1",
                },
            }
        )
    )
    log = rig.tmp / "twistd.log"
    p = rig.procs.start(
        [
            str(VENV_BIN / "twistd"),
            "--pidfile=",
            "-n",
            "teleproxy",
            "--config",
            str(config),
        ],
        log,
    )
    ports = wait_for_log(
        log,
        {
            "auth": r"auth service of cluster .* listening on 127\.0\.0\.1:(\d+)",
            "ssh": r"proxy SSH listener on 127\.0\.0\.1:(\d+)",
            "web": r"proxy web listener on https://127\.0\.0\.1:(\d+)",
        },
    )
    rig.proxy_pid, rig.proxy_port = p.pid, int(ports["ssh"])
    return int(ports["auth"]), int(ports["web"])


def _https(
    web_port: int, method: str, path: str, body: dict[str, str] | None = None
) -> dict:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(
        f"https://127.0.0.1:{web_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read())


def sign_up_and_login(rig: Rig, ctl: list[str], web_port: int) -> None:
    out = run([*ctl, "users", "add", "bench", "--logins", "root"])
    token = re.search(r"/web/invite/(\S+)", out)
    assert token, out
    secret = _https(web_port, "GET", f"/v1/webapi/users/invite/{token.group(1)}")[
        "totp_secret"
    ]
    step = totp.counter_at(time.time())
    _https(
        web_port,
        "POST",
        "/v1/webapi/users/invite",
        {
            "token": token.group(1),
            "password": PASSWORD,
            "otp_token": totp.code_at(secret, step),
        },
    )
    while totp.counter_at(time.time()) == step:  # a code is accepted once
        time.sleep(0.5)
    code = totp.code_at(secret, totp.counter_at(time.time()))
    run(
        [
            str(VENV_BIN / "teleconch"),
            "login",
            "--proxy",
            f"127.0.0.1:{web_port}",
            "--user",
            "bench",
            "--insecure",
        ],
        env={"TELECONCH_HOME": str(rig.home)},
        stdin=f"{PASSWORD}\n{code}\n".encode(),
    )


def build_rig(tmp: Path, procs: Procs, auth: dict[str, Any] | None = None) -> Rig:
    """The cluster (``auth``: extra auth_service settings), node, jump host, client."""
    rig = Rig(tmp, procs, home=tmp / "tsh")
    auth_port, web_port = start_cluster(rig, auth)
    ctl = [
        str(VENV_BIN / "teleconch-ctl"),
        "--data-dir",
        str(tmp / "data"),
        "--auth-server",
        f"127.0.0.1:{auth_port}",
    ]
    sign_up_and_login(rig, ctl, web_port)

    (tmp / "node").mkdir()
    prefix = tmp / "node" / "web1"
    run([*ctl, "auth", "sign", "--host", "web1", "--out", str(prefix)])
    user_ca = tmp / "user_ca.pub"
    user_ca.write_text(run([*ctl, "auth", "export", "--type=user"]))
    _, rig.node_port = start_sshd(
        procs, tmp / "node", prefix, Path(f"{prefix}-cert.pub"), user_ca
    )
    run(
        [*ctl, "nodes", "add", "--name", "web1", "--addr", f"127.0.0.1:{rig.node_port}"]
    )

    jump_key = tmp / "jump" / "host_ed25519"
    jump_key.parent.mkdir()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(jump_key)])
    rig.jump_pid, rig.jump_port = start_sshd(
        procs, tmp / "jump", jump_key, None, user_ca
    )

    text = run(
        [str(VENV_BIN / "teleconch"), "config"], env={"TELECONCH_HOME": str(rig.home)}
    )
    rig.tconf = tmp / "ssh_config"
    rig.tconf.write_text(text + "\nHost *\n    BatchMode yes\n    LogLevel ERROR\n")
    identity = re.search(r'IdentityFile "?([^"\n]+)', text)
    cert = re.search(r'CertificateFile "?([^"\n]+)', text)
    assert identity and cert, text
    rig.bconf = tmp / "ssh_config.baseline"
    rig.bconf.write_text(
        "Host *\n"
        f'    IdentityFile "{identity.group(1)}"\n'
        f'    CertificateFile "{cert.group(1)}"\n'
        "    StrictHostKeyChecking no\n"
        "    UserKnownHostsFile /dev/null\n"
        "    BatchMode yes\n"
        "    LogLevel ERROR\n"
    )
    return rig


# --------------------------------------------------------------------------- measurements


def negotiated(rig: Rig) -> dict[str, list[str]]:
    """The ciphers each path's hops negotiated (from ssh -v)."""
    out: dict[str, list[str]] = {}
    for path in PATHS:
        r = subprocess.run(
            [*rig.argv(path, "-v"), "true"],
            capture_output=True,
            env=rig.env,
            timeout=60,
        )
        err = r.stderr.decode(errors="replace")
        out[path] = re.findall(r"kex: server->client cipher: (\S+) MAC: (\S+)", err)
        if r.returncode != 0:
            raise RuntimeError(f"{path}: ssh failed:\n{err}")
    return out


@dataclass
class Transfer:
    seconds: float
    proxy_cpu: float  # the jump process's CPU seconds (twistd, or sshd + children)
    client_cpu: float  # ssh client processes (incl. the -J ssh) of this bench


def transfer(rig: Rig, path: str, size_mb: int, upload: Path | None) -> Transfer:
    stdin: int | BinaryIO
    if upload is None:
        cmd, stdin = f"head -c {size_mb * 1024 * 1024} /dev/zero", subprocess.DEVNULL
    else:
        cmd, stdin = "cat > /dev/null", upload.open("rb")
    cpu_pid = {"teleconch": rig.proxy_pid, "sshd-jump": rig.jump_pid}.get(path)
    children = path == "sshd-jump"
    before = cpu_seconds(cpu_pid, children) if cpu_pid else 0.0
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
    time.sleep(0.2)  # let sshd reap the per-connection children (cutime)
    after = cpu_seconds(cpu_pid, children) if cpu_pid else 0.0
    client = (ru1.children_user - ru0.children_user) + (
        ru1.children_system - ru0.children_system
    )
    return Transfer(elapsed, after - before, client)


def session_setup(rig: Rig, path: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(
            [*rig.argv(path), "true"], capture_output=True, env=rig.env, timeout=60
        )
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError(f"{path} session failed: {r.stderr.decode()}")
    return times


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


@dataclass
class Concurrency:
    wanted: int
    ready: int
    failed: int
    ramp_seconds: float
    before_kb: int
    during_kb: int
    after_kb: int
    before_pss_kb: int
    during_pss_kb: int
    open_at_sample: int
    errors: list[str]

    @property
    def per_session_kb(self) -> float:
        return (self.during_kb - self.before_kb) / max(1, self.open_at_sample)

    @property
    def per_session_pss_kb(self) -> float:
        return (self.during_pss_kb - self.before_pss_kb) / max(1, self.open_at_sample)


def _drain(
    procs: list[subprocess.Popen[bytes]], ready: list[bool], stop: threading.Event
) -> None:
    sel = selectors.DefaultSelector()
    for i, p in enumerate(procs):
        assert p.stdout is not None
        sel.register(p.stdout, selectors.EVENT_READ, i)
    open_count = len(procs)
    while open_count and not stop.is_set():
        for key, _ in sel.select(timeout=0.5):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_count -= 1
            elif data.startswith(b"R"):
                ready[key.data] = True
    sel.close()


def memory_of(rig: Rig, path: str) -> tuple[int, int]:
    """(RSS kB, PSS kB) of the jump point: twistd, or sshd plus all its children."""
    if path == "teleconch":
        return rss_kb(rig.proxy_pid), pss_kb(rig.proxy_pid)
    pids = [rig.jump_pid, *descendants(rig.jump_pid)]
    return sum(rss_kb(p) for p in pids), sum(pss_kb(p) for p in pids)


def concurrency(rig: Rig, path: str, sessions: int, hold: int = 75) -> Concurrency:
    # each session: a marker, then 1 KiB every second for `hold` seconds
    cmd = f"echo R; for i in $(seq {hold}); do head -c 1024 /dev/urandom; sleep 1; done"
    before, before_pss = memory_of(rig, path)
    clients: list[subprocess.Popen[bytes]] = []
    ready = [False] * sessions
    stop = threading.Event()
    t0 = time.perf_counter()
    errors: list[str] = []
    try:
        for i in range(sessions):
            clients.append(
                subprocess.Popen(
                    [*rig.argv(path), cmd],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    env=rig.env,
                    start_new_session=True,
                )
            )
            if i % 20 == 19:
                time.sleep(0.2)  # connect in waves, not one SYN storm
        drainer = threading.Thread(
            target=_drain, args=(clients, ready, stop), daemon=True
        )
        drainer.start()
        deadline = time.monotonic() + hold - 10
        while not all(ready) and time.monotonic() < deadline:
            if all(
                c.poll() is not None
                for c, r in zip(clients, ready, strict=True)
                if not r
            ):
                break
            time.sleep(0.1)
        ramp = time.perf_counter() - t0
        time.sleep(1)
        during, during_pss = memory_of(rig, path)
        open_now = sum(
            1 for c, r in zip(clients, ready, strict=True) if r and c.poll() is None
        )
        for c in clients:
            try:
                c.wait(timeout=hold + 60)
            except subprocess.TimeoutExpired:
                errors.append("session did not finish in time")
        failed = 0
        for c in clients:
            if c.returncode != 0:
                failed += 1
                assert c.stderr is not None
                errors.append(c.stderr.read().decode(errors="replace").strip()[:200])
        stop.set()
        drainer.join(timeout=5)
    finally:
        stop.set()
        for c in clients:
            if c.poll() is None:
                os.killpg(c.pid, signal.SIGKILL)
                c.wait()
            for f in (c.stdout, c.stderr):
                if f is not None:
                    f.close()
    time.sleep(2)
    after, _ = memory_of(rig, path)
    return Concurrency(
        sessions,
        sum(ready),
        failed,
        ramp,
        before,
        during,
        after,
        before_pss,
        during_pss,
        open_now,
        errors,
    )


# --------------------------------------------------------------------------- main


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report_throughput(
    rig: Rig, size_mb: int, upload: Path
) -> dict[str, dict[str, Transfer]]:
    results: dict[str, dict[str, Transfer]] = {}
    for direction, src in (("down", None), ("up", upload)):
        results[direction] = {}
        for path in PATHS:
            t = transfer(rig, path, size_mb, src)
            results[direction][path] = t
            print(
                f"  {direction:4} {path:10} {size_mb / t.seconds:8.1f} MB/s  "
                f"{t.seconds:6.2f} s  jump CPU {t.proxy_cpu:5.2f} s  "
                f"client CPU {t.client_cpu:5.2f} s",
                flush=True,
            )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--setup-runs", type=int, default=30)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument(
        "--hold",
        type=int,
        default=200,
        help="seconds each concurrent session lasts: longer than the ramp-up (~80 s "
        "for 200 on 2 cores), so all are open when memory is sampled",
    )
    args = ap.parse_args()
    os.environ["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"

    procs = Procs()
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-proxy-"))
        )
        stack.callback(procs.stop_all)
        t0 = time.perf_counter()
        rig = build_rig(tmp, procs)
        print(
            f"set-up done in {time.perf_counter() - t0:.1f} s: proxy :{rig.proxy_port} "
            f"(pid {rig.proxy_pid}), jump sshd :{rig.jump_port}, "
            f"node sshd :{rig.node_port}"
        )
        for path, hops in negotiated(rig).items():
            print(f"  {path:10} ciphers per hop (jump, node): {hops}")

        upload = tmp / "upload.bin"
        with upload.open("wb") as f:
            f.truncate(args.size_mb * 1024 * 1024)

        print(f"\n1. throughput, {args.size_mb} MB", flush=True)
        tp = report_throughput(rig, args.size_mb, upload)

        print(f"\n2. session set-up, {args.setup_runs} x `ssh ... true`", flush=True)
        setup = {p: session_setup(rig, p, args.setup_runs) for p in PATHS}
        for p, xs in setup.items():
            print(
                f"  {p:10} median {statistics.median(xs) * 1000:7.1f} ms  "
                f"p95 {p95(xs) * 1000:7.1f} ms"
            )

        print(f"\n3. concurrency, {args.sessions} sessions at once", flush=True)
        conc = {}
        for p in ("teleconch", "sshd-jump"):
            c = conc[p] = concurrency(rig, p, args.sessions, args.hold)
            print(
                f"  {p:10} ready {c.ready}/{c.wanted} (ramp {c.ramp_seconds:.1f} s), "
                f"failed {c.failed}, open at sample {c.open_at_sample}; "
                f"RSS before {c.before_kb} kB, during {c.during_kb} kB "
                f"(PSS {c.during_pss_kb} kB), after {c.after_kb} kB",
                flush=True,
            )
            for e in sorted(set(c.errors))[:5]:
                print(f"    error: {e}")
        print_summary(args, tp, setup, conc)


def print_summary(
    args: argparse.Namespace,
    tp: dict[str, dict[str, Transfer]],
    setup: dict[str, list[float]],
    conc: dict[str, Concurrency],
) -> None:
    print("\nSUMMARY (teleconch vs OpenSSH sshd as jump host, same run)")
    print(
        f"{'measure':34} {'teleconch':>12} {'sshd-jump':>12} {'direct':>12} {'tc/jump':>8}"
    )
    for d in ("down", "up"):
        r = {p: args.size_mb / tp[d][p].seconds for p in PATHS}
        print(
            f"{'throughput ' + d + ' MB/s':34} {r['teleconch']:12.1f} {r['sshd-jump']:12.1f}"
            f" {r['direct']:12.1f} {ratio(r['teleconch'], r['sshd-jump']):>8}"
        )
        c = {p: tp[d][p].proxy_cpu for p in PATHS}
        label = f"jump CPU s, {d} {args.size_mb} MB"
        print(
            f"{label:34} {c['teleconch']:12.2f}"
            f" {c['sshd-jump']:12.2f} {'-':>12} {ratio(c['teleconch'], c['sshd-jump']):>8}"
        )
    for label, fn in (("set-up median ms", statistics.median), ("set-up p95 ms", p95)):
        v = {p: fn(setup[p]) * 1000 for p in PATHS}
        print(
            f"{label:34} {v['teleconch']:12.1f} {v['sshd-jump']:12.1f} {v['direct']:12.1f}"
            f" {ratio(v['teleconch'], v['sshd-jump']):>8}"
        )
    t, j = conc["teleconch"], conc["sshd-jump"]
    print(
        f"{'sessions ok / ' + str(args.sessions):34} {t.ready - t.failed:12} "
        f"{j.ready - j.failed:12} {'-':>12}"
    )
    print(
        f"{'memory per session kB (RSS)':34} {t.per_session_kb:12.1f} {j.per_session_kb:12.1f}"
        f" {'-':>12} {ratio(t.per_session_kb, j.per_session_kb):>8}"
    )
    print(
        f"{'memory per session kB (PSS)':34} {t.per_session_pss_kb:12.1f} "
        f"{j.per_session_pss_kb:12.1f} {'-':>12} "
        f"{ratio(t.per_session_pss_kb, j.per_session_pss_kb):>8}"
    )
    print(
        f"{'sessions open at memory sample':34} {t.open_at_sample:12} {j.open_at_sample:12}"
    )
    print(
        f"{'jump RSS after sessions ended kB':34} {t.after_kb:12} {j.after_kb:12} {'-':>12}"
    )


if __name__ == "__main__":
    main()
