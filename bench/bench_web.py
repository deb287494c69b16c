"""teleconch's web terminal vs ``ssh -J`` through the same proxy: echo latency, bulk output.

Everything runs on 127.0.0.1 as separate processes: the cluster under twistd,
a real sshd node trusting the user CA, the OpenSSH client, and a real
Chromium (Debian's /usr/bin/chromium, through Playwright) on the console
page. The two paths to the node's shell:

    web     Chromium -> wss://proxy/v1/webapi/sites/<cluster>/connect -> the
            proxy's own SSH client -> sshd (a PTY, xterm.js rendering)
    ssh -J  ssh -tt -J root@127.0.0.1:PROXYPORT root@web1.<cluster>

1. Keystroke to echo: one character at a time into the shell's PTY, timed
   until its echo is back (web: until xterm.js has parsed it; ssh: until ssh
   prints it), ``--keystrokes`` times; p50 and p95.
2. Bulk output: ``--size-mb`` MB of base64 text from the node. Web: rendered
   into the page (until xterm.js has parsed the line after it), through the
   proxy's flow control; ssh -J: to /dev/null.

Usage: PYTHONPATH=. python bench/bench_web.py [--keystrokes 300] [--size-mb 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster import (
    CLUSTER,
    PASSWORD,
    VENV_BIN,
    Procs,
    _https,
    cpu_seconds,
    p95,
    ratio,
    rss_kb,
    run,
    start_cluster,
    start_sshd,
)
from bench.cluster import Rig as ProxyRig
from teleconch import totp

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
CONSOLE = "/web/console/web1/root"
PROMPT = re.compile(rb"[#$] $")


@dataclass
class Rig:
    proxy: ProxyRig
    web_port: int
    secret: str
    ssh_config: Path

    def ssh(self, *args: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), *args, "-J",
                f"root@127.0.0.1:{self.proxy.proxy_port}", f"root@web1.{CLUSTER}"]  # fmt: skip

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.web_port}{path}"


def next_code(secret: str, after_step: int) -> tuple[str, int]:
    """A code of a step later than ``after_step`` (a code is accepted once)."""
    while totp.counter_at(time.time()) <= after_step:
        time.sleep(0.5)
    step = totp.counter_at(time.time())
    return totp.code_at(secret, step), step


def build(tmp: Path, procs: Procs) -> tuple[Rig, int]:
    proxy = ProxyRig(tmp, procs, home=tmp / "tsh")
    auth_port, web_port = start_cluster(proxy)
    ctl = [str(VENV_BIN / "teleconch-ctl"), "--data-dir", str(tmp / "data"),
           "--auth-server", f"127.0.0.1:{auth_port}"]  # fmt: skip
    out = run([*ctl, "users", "add", "bench", "--logins", "root"])
    token = re.search(r"/web/invite/(\S+)", out)
    assert token, out
    secret = _https(web_port, "GET", f"/v1/webapi/users/invite/{token.group(1)}")[
        "totp_secret"
    ]
    step = totp.counter_at(time.time())
    _https(web_port, "POST", "/v1/webapi/users/invite",
           {"token": token.group(1), "password": PASSWORD,
            "otp_token": totp.code_at(secret, step)})  # fmt: skip
    code, step = next_code(secret, step)
    run([str(VENV_BIN / "teleconch"), "login", "--proxy", f"127.0.0.1:{web_port}",
         "--user", "bench", "--insecure"],
        env={"TELECONCH_HOME": str(proxy.home)},
        stdin=f"{PASSWORD}\n{code}\n".encode())  # fmt: skip

    (tmp / "node").mkdir()
    prefix = tmp / "node" / "web1"
    run([*ctl, "auth", "sign", "--host", "web1", "--out", str(prefix)])
    user_ca = tmp / "user_ca.pub"
    user_ca.write_text(run([*ctl, "auth", "export", "--type=user"]))
    _, node_port = start_sshd(
        procs, tmp / "node", prefix, Path(f"{prefix}-cert.pub"), user_ca
    )
    run([*ctl, "nodes", "add", "--name", "web1", "--addr", f"127.0.0.1:{node_port}"])
    text = run(
        [str(VENV_BIN / "teleconch"), "config"], env={"TELECONCH_HOME": str(proxy.home)}
    )
    config = tmp / "ssh_config"
    config.write_text(text + "\nHost *\n    BatchMode yes\n    LogLevel ERROR\n")
    return Rig(proxy, web_port, secret, config), step


# --------------------------------------------------------------------------- ssh -J


class SshShell:
    """An interactive shell through ``ssh -tt -J``, driven through pipes."""

    def __init__(self, rig: Rig) -> None:
        self.p = subprocess.Popen(
            rig.ssh("-tt"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TELECONCH_HOME": str(rig.proxy.home)},
        )
        assert self.p.stdin is not None and self.p.stdout is not None
        self.stdin, self.out = self.p.stdin, self.p.stdout.fileno()
        self.read_until(PROMPT, 30)

    def read_until(self, pattern: re.Pattern[bytes], timeout: float) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while not pattern.search(seen):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.out], [], [], left)[0]:
                raise RuntimeError(f"ssh: no {pattern.pattern!r} in {seen[-200:]!r}")
            data = os.read(self.out, 65536)
            if not data:
                raise RuntimeError(f"ssh ended: {seen[-200:]!r}")
            seen += data
        return seen

    def send(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def close(self) -> None:
        self.send(b"\x15exit\n")
        self.p.wait(timeout=30)


def ssh_latency(rig: Rig, n: int) -> list[float]:
    shell = SshShell(rig)
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            shell.send(b"x")
            shell.read_until(re.compile(b"x"), 10)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        shell.close()
    return times


def bulk_command(size_mb: int) -> str:
    # The marker line is computed by the shell, so the typed command never matches it.
    return (
        f"base64 -w 100 /dev/urandom | head -c {size_mb * 1024 * 1024}; "
        "echo; echo $((6*7))-bulk-done"
    )


def ssh_bulk(rig: Rig, size_mb: int) -> tuple[float, float]:
    """Seconds for the output to reach /dev/null, and the proxy's CPU seconds."""
    cpu0 = cpu_seconds(rig.proxy.proxy_pid)
    t0 = time.perf_counter()
    subprocess.run(
        [*rig.ssh(), bulk_command(size_mb)],
        stdout=subprocess.DEVNULL,
        check=True,
        env={**os.environ, "TELECONCH_HOME": str(rig.proxy.home)},
        timeout=600,
    )
    return time.perf_counter() - t0, cpu_seconds(rig.proxy.proxy_pid) - cpu0


# --------------------------------------------------------------------------- web

# Type one character at a time; each time, wait until xterm.js has parsed the
# echo (the page's own handler writes it; a write of '' queued after it calls
# back once it is done).
WEB_LATENCY = """
async (n) => {
  const c = window.teleconchConsole;
  const times = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await new Promise((resolve) => {
      const onMessage = (event) => {
        if (typeof event.data === 'string') return;
        c.socket.removeEventListener('message', onMessage);
        c.term.write('', resolve);
      };
      c.socket.addEventListener('message', onMessage);
      c.send(new Uint8Array([0x78]));
    });
    times.push(performance.now() - t0);
  }
  c.send(new Uint8Array([0x15]));
  return times;
}
"""

# Run the bulk command; the time until xterm.js has parsed the marker line.
WEB_BULK = """
async ({ command, marker }) => {
  const c = window.teleconchConsole;
  const term = c.term;
  return await new Promise((resolve) => {
    const t0 = performance.now();
    const watch = term.onWriteParsed(() => {
      const b = term.buffer.active;
      const last = b.baseY + b.cursorY;
      for (let i = Math.max(0, last - 3); i <= last; i++) {
        const line = b.getLine(i);
        if (line && line.translateToString(true).trim() === marker) {
          watch.dispose();
          resolve(performance.now() - t0);
          return;
        }
      }
    });
    c.send(new TextEncoder().encode(command + '\\r'));
  });
}
"""


def web_session(rig: Rig, step: int, keystrokes: int, size_mb: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    code, _ = next_code(rig.secret, step)
    out: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1200, "height": 800}
            )
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(rig.url(CONSOLE))
            page.wait_for_url(re.compile(r"/web/login"))
            page.get_by_label("Username").fill("bench")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_label("One-time code").fill(code)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(re.compile(re.escape(CONSOLE) + "$"))
            page.wait_for_function(
                "() => document.getElementById('status').textContent.startsWith('Connected')"
            )
            page.wait_for_function(
                "() => /[#$] ?$/.test(document.querySelector('.xterm-rows')"
                ".innerText.trimEnd())"
            )
            out["size"] = page.evaluate(
                "[window.teleconchConsole.term.cols, window.teleconchConsole.term.rows]"
            )
            out["latency"] = page.evaluate(WEB_LATENCY, keystrokes)
            rss0 = rss_kb(rig.proxy.proxy_pid)
            cpu0 = cpu_seconds(rig.proxy.proxy_pid)
            ms = page.evaluate(
                WEB_BULK, {"command": bulk_command(size_mb), "marker": "42-bulk-done"}
            )
            out["bulk_seconds"] = ms / 1000
            out["bulk_cpu"] = cpu_seconds(rig.proxy.proxy_pid) - cpu0
            out["rss_growth_kb"] = rss_kb(rig.proxy.proxy_pid) - rss0
        finally:
            browser.close()
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keystrokes", type=int, default=300)
    ap.add_argument("--size-mb", type=int, default=32)
    args = ap.parse_args()
    os.environ["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"
    procs = Procs()
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-web-"))
        )
        stack.callback(procs.stop_all)
        t0 = time.perf_counter()
        rig, step = build(tmp, procs)
        print(f"set-up done in {time.perf_counter() - t0:.1f} s "
              f"(proxy pid {rig.proxy.proxy_pid})", flush=True)  # fmt: skip

        print(f"\n1. keystroke to echo, {args.keystrokes} keystrokes", flush=True)
        ssh_times = ssh_latency(rig, args.keystrokes)
        print(f"\n2. bulk output, {args.size_mb} MB", flush=True)
        ssh_seconds, ssh_cpu = ssh_bulk(rig, args.size_mb)
        web = web_session(rig, step, args.keystrokes, args.size_mb)
        web_times = web["latency"]

    size = args.size_mb
    rows = [
        ("echo p50 ms", statistics.median(web_times), statistics.median(ssh_times)),
        ("echo p95 ms", p95(web_times), p95(ssh_times)),
        ("bulk output MB/s", size / web["bulk_seconds"], size / ssh_seconds),
        (f"proxy CPU s, {size} MB", web["bulk_cpu"], ssh_cpu),
    ]
    print(
        "\nSUMMARY (web terminal in Chromium vs ssh -J through the same proxy, same run)"
    )
    print(f"{'measure':28} {'web':>12} {'ssh -J':>12} {'web/ssh':>8}")
    for label, w, s in rows:
        print(f"{label:28} {w:12.2f} {s:12.2f} {ratio(w, s):>8}")
    print(f"(web: the page's terminal was {web['size'][0]}x{web['size'][1]}, output "
          f"rendered by xterm.js; ssh -J: to /dev/null; proxy RSS growth during the "
          f"web bulk run {web['rss_growth_kb']} kB)")  # fmt: skip
    print(json.dumps({"web": {k: v for k, v in web.items() if k != "latency"},
                      "ssh_bulk_seconds": ssh_seconds}))  # fmt: skip


if __name__ == "__main__":
    main()
