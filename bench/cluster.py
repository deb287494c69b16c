"""The bench rig: a teleconch cluster under twistd, a real sshd node, an sshd jump host.

Everything runs as separate processes on 127.0.0.1: the cluster (auth and
proxy in one twistd process), a real sshd node trusting the user CA, a second
sshd as the OpenSSH jump-host baseline, and the OpenSSH client. Three paths
to the node are compared:

    teleconch  ssh -J root@127.0.0.1:PROXYPORT root@web1.<cluster>
    sshd-jump  ssh -J root@127.0.0.1:JUMPPORT -p NODEPORT root@127.0.0.1
    direct     ssh -p NODEPORT root@127.0.0.1

Shared by every ``bench_*.py`` that needs a cluster, and by ``bench_proxy.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teleconch import totp

VENV_BIN = Path(sys.executable).parent
CLUSTER = "bench.example"
PASSWORD = "correct horse battery staple 42"  # noqa: S105 - a throwaway bench user
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATHS = ("teleconch", "sshd-jump", "direct")
JUMPS = ("teleconch", "sshd-jump")


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


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def smaps_breakdown(pid: int) -> dict[str, int]:
    """RSS kB by kind of mapping: where memory tracemalloc cannot see sits.

    Anonymous mappings of exactly 1 MiB are pymalloc's arenas (CPython 3.10+);
    those of 8 MiB (+ a guard page) thread stacks; other anonymous ones inside
    a 64 MiB reservation glibc's per-thread malloc arenas (or large mallocs);
    ``[heap]`` the main arena.
    """
    out: dict[str, int] = {}
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            size_kb = (hi - lo) // 1024
            name = head[5] if len(head) > 5 else ""
            if name.startswith("/"):
                kind = "files" if ".so" not in name else "shared libraries"
            elif name:
                kind = name
            elif size_kb == 1024:
                kind = "anon 1 MiB (pymalloc arenas)"
            elif size_kb in (8192, 8188):
                kind = "anon 8 MiB (thread stacks)"
            else:
                kind = "anon other (malloc thread arenas, large blocks)"
        elif head[0] == "Rss:":
            out[kind] = out.get(kind, 0) + int(head[1])
    return out


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
    identity: Path = Path()  # the bench user's key and certificate (for asyncssh)
    certificate: Path = Path()
    proxy_log: Path = Path()
    ctl: list[str] = field(default_factory=list)  # teleconch-ctl, as the admin
    chacha: bool = False  # chacha20-poly1305 on every hop (the configs' first line)

    def config(self, path: str) -> Path:
        conf = self.tconf if path == "teleconch" else self.bconf
        return conf.with_suffix(".chacha") if self.chacha else conf

    def argv(self, path: str, *extra: str) -> list[str]:
        """ssh argv for one of PATHS, up to (not including) the remote command.

        ``-F`` is passed on to the ``-J`` hop's ssh too, so a Ciphers line at
        the top of the config (before any Host block: the first value wins)
        sets the cipher on both hops.
        """
        if path == "teleconch":
            return [
                "ssh",
                "-F",
                str(self.config(path)),
                *extra,
                "-J",
                f"root@127.0.0.1:{self.proxy_port}",
                f"root@web1.{CLUSTER}",
            ]
        jump = ["-J", f"root@127.0.0.1:{self.jump_port}"] if path == "sshd-jump" else []
        return [
            "ssh",
            "-F",
            str(self.config(path)),
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


def start_cluster(
    rig: Rig, auth: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> tuple[int, int]:
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
                    # every bench client comes from 127.0.0.1, thousands at once
                    "max_startups": 10000,
                    "max_startups_per_source": 10000,
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
        env={**os.environ, **(env or {})},
    )
    rig.proxy_log = log
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


def build_rig(
    tmp: Path,
    procs: Procs,
    auth: dict[str, Any] | None = None,
    proxy_env: dict[str, str] | None = None,
) -> Rig:
    """The cluster (``auth``: extra auth_service settings; ``proxy_env``: extra
    environment of the twistd process), node, jump host, client."""
    rig = Rig(tmp, procs, home=tmp / "tsh")
    auth_port, web_port = start_cluster(rig, auth, proxy_env)
    ctl = [
        str(VENV_BIN / "teleconch-ctl"),
        "--data-dir",
        str(tmp / "data"),
        "--auth-server",
        f"127.0.0.1:{auth_port}",
    ]
    rig.ctl = ctl
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
    rig.identity, rig.certificate = Path(identity.group(1)), Path(cert.group(1))
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
    chacha = "Ciphers chacha20-poly1305@openssh.com\n"
    for conf in (rig.tconf, rig.bconf):
        conf.with_suffix(".chacha").write_text(chacha + conf.read_text())
    return rig


# --------------------------------------------------------------------------- figures


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def negotiated(rig: Rig, extra: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The ciphers each path's hops negotiated (from ssh -v)."""
    out: dict[str, list[str]] = {}
    for path in PATHS:
        r = subprocess.run(
            [*rig.argv(path, "-v", *extra), "true"],
            capture_output=True,
            env=rig.env,
            timeout=60,
        )
        err = r.stderr.decode(errors="replace")
        out[path] = re.findall(r"kex: server->client cipher: (\S+) MAC: (\S+)", err)
        if r.returncode != 0:
            raise RuntimeError(f"{path}: ssh failed:\n{err}")
    return out
