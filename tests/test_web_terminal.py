"""The web terminal as a person uses it: real Chromium, a real sshd node.

Interop: the cluster runs in this process (so its memory is this process's
VmRSS), sshd is Debian's OpenSSH with a host certificate from the cluster's
host CA, and the browser is Debian's /usr/bin/chromium through Playwright
(tests/browser.py).  The person logs in on the login page and lands on
/web/console/<node>/<login>; the page's xterm.js talks to the proxy's WSS
terminal socket.  Screenshots go to the test's artefacts directory.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from playwright.async_api import Browser, Page
from twisted.internet import reactor

from tests.browser import BrowserThread, PageLog, code_for, open_page
from tests.harness import Cluster, Person, run, sign_up, start_cluster, wait_for_events
from tests.sshd import Sshd, start_sshd

pytestmark = pytest.mark.interop

RSS_GROWTH_LIMIT = 32 * 1024 * 1024


@attrs.define
class Node:
    cluster: Cluster
    sshd: Sshd
    alice: Person
    plain: Sshd | None = None

    def url(self, path: str) -> str:
        addr = self.cluster.web_addr
        return f"https://{addr.host}:{addr.port}{path}"


async def _sshd(tmp_path: Path, cluster: Cluster, name: str, certified: bool) -> Sshd:
    prefix = tmp_path / name / "host"
    prefix.parent.mkdir(parents=True)
    host_cert: Path | None = None
    if certified:
        r = await run(["teleconch-ctl", "--data-dir", str(cluster.data_dir), "--auth-server",
                       str(cluster.auth_addr), "auth", "sign", "--host", name, "--out",
                       str(prefix)])  # fmt: skip
        assert r.code == 0, r.err
        host_cert = Path(f"{prefix}-cert.pub")
    else:
        r = await run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(prefix)]
        )
        assert r.code == 0, r.err
    user_ca = (await cluster.admin_agent().export_ca("user"))[0]
    return await start_sshd(tmp_path / name / "sshd", prefix, host_cert, [user_ca])


@contextlib.asynccontextmanager
async def a_node(
    tmp_path: Path, plain: bool = False, raw: Mapping[str, Any] | None = None
) -> AsyncIterator[Node]:
    """A cluster (``raw``: more config), sshd node web1 (host certificate;
    and plain1 with a plain host key if asked), and alice, who may log in
    as root."""
    cluster = await start_cluster(tmp_path / "data", raw)
    started: list[Sshd] = []
    try:
        sshd = await _sshd(tmp_path, cluster, "web1", certified=True)
        started.append(sshd)
        agent = cluster.admin_agent()
        await agent.upsert_node("web1", f"127.0.0.1:{sshd.port}", {"env": "test"})
        other = None
        if plain:
            other = await _sshd(tmp_path, cluster, "plain1", certified=False)
            started.append(other)
            await agent.upsert_node(
                "plain1", f"127.0.0.1:{other.port}", {"env": "test"}
            )
        alice = await sign_up(cluster, logins=("root",))
        yield Node(cluster, sshd, alice, other)
    finally:
        for s in started:
            await s.stop()
        await cluster.stop()


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with a_node(tmp_path) as n:
        yield n


# -- the page, from the browser's thread --------------------------------------

ROWS_TEXT = "() => document.querySelector('.xterm-rows')?.innerText ?? ''"

# The whole scrollback as text, from xterm.js's buffer (wrapped lines joined).
BUFFER_TEXT = """
() => {
  const b = window.teleconchConsole.term.buffer.active;
  const lines = [];
  for (let i = 0; i < b.length; i++) {
    const line = b.getLine(i);
    const text = line.translateToString(true);
    if (line.isWrapped && lines.length) lines[lines.length - 1] += text;
    else lines.push(text);
  }
  return lines.join('\\n');
}
"""


async def log_in_to_console(page: Page, node: Node, path: str) -> None:
    """Open ``path``; the login page it sends us to; log in; back to ``path``."""
    codes = code_for(node.cluster)
    await page.goto(node.url(path))
    await page.wait_for_url(re.compile(r"/web/login\?next="))
    await page.get_by_label("Username").fill(node.alice.name)
    await page.get_by_label("Password").fill(node.alice.password)
    await page.get_by_label("One-time code").fill(codes(node.alice.totp_secret))
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(re.compile(re.escape(path) + "$"))


async def wait_connected(page: Page) -> None:
    await page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('Connected')"
    )
    await page.wait_for_function(
        "() => /[#$] ?$/m.test(document.querySelector('.xterm-rows').innerText.trimEnd())"
    )


async def type_line(page: Page, line: str) -> None:
    await page.locator("#terminal").click()
    await page.keyboard.type(line)
    await page.keyboard.press("Enter")


async def wait_for_line(page: Page, line: str, within_ms: float = 10_000) -> None:
    """A row of the rendered terminal that reads exactly ``line``."""
    await page.wait_for_function(
        "(line) => document.querySelector('.xterm-rows').innerText"
        ".split('\\n').some((row) => row.trim() === line)",
        arg=line,
        timeout=within_ms,
    )


def no_violations(log: PageLog, violations: list[str]) -> None:
    assert violations == [], violations
    assert log.errors == [], log.errors
    assert not [c for c in log.console if "Content Security Policy" in c], log.console


async def csp_violations(page: Page) -> list[str]:
    found: list[str] = await page.evaluate("window.__cspViolations")
    return found


# -- the tests ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_person_opens_a_terminal_and_uses_it(
    chromium: BrowserThread, node: Node, artefacts: Path
) -> None:
    """Log in, open the console: ``echo $((6*7))`` answers 42 in .xterm-rows;
    the session is listed while open; ``stty size`` follows the window; UTF-8
    split across frames is intact; truecolour styles apply without a CSP
    violation; ``exit 3`` shows status 3 and Reconnect opens a new session;
    session.start and session.end (exit status 3) are audited."""
    path = "/web/console/web1/root"
    seen: dict[str, Any] = {}

    async def first_part(browser: Browser) -> None:
        async with open_page(browser) as (page, log):
            await page.set_viewport_size({"width": 1000, "height": 700})
            await log_in_to_console(page, node, path)
            assert await page.title() == "root@web1"
            await wait_connected(page)
            await type_line(page, "echo $((6*7))")
            await wait_for_line(page, "42")
            await page.screenshot(path=str(artefacts / "console.png"))
            seen["first"] = await page.evaluate("window.teleconchConsole.sessionId")
            await _then(page, log, node, artefacts, seen)

    await chromium.run(first_part)
    first_id = seen["first"]
    assert first_id in seen["listed"]
    events = await wait_for_events(node.cluster, "session.end", count=2)
    ends = {e.fields["session_id"]: e for e in events}
    assert ends[first_id].fields["exit_code"] == 3
    assert ends[first_id].fields["duration"] > 0
    starts = await wait_for_events(node.cluster, "session.start", count=2)
    start = next(e for e in starts if e.fields["session_id"] == first_id)
    assert start.user == "alice" and start.fields["node"] == "web1"
    assert start.fields["login"] == "root"


async def _then(
    page: Page, log: PageLog, node: Node, artefacts: Path, seen: dict[str, Any]
) -> None:
    """The rest of the flow, on the browser's loop (the reactor's calls go
    through `_on_reactor`)."""
    listed = await _on_reactor(node.cluster.admin_agent().list_active_sessions)
    seen["listed"] = {s.id: s for s in listed}

    # The viewport shrinks: the terminal follows, and so does the node's idea of it.
    await page.set_viewport_size({"width": 700, "height": 450})
    await page.wait_for_timeout(300)
    cols, rows = await page.evaluate(
        "[window.teleconchConsole.term.cols, window.teleconchConsole.term.rows]"
    )
    await type_line(page, "stty size")
    await wait_for_line(page, f"{rows} {cols}")
    assert cols < 100

    # Accented letters and an emoji, many times over: no byte sequence torn.
    await type_line(
        page,
        "for i in $(seq 1 1500); do printf 'caf\\303\\251 na\\303\\257ve \\360\\237\\230\\200 ';"
        " done; echo; echo utf8-done",
    )
    await wait_for_line(page, "utf8-done", within_ms=30_000)
    text: str = await page.evaluate(BUFFER_TEXT)
    assert "\ufffd" not in text
    assert text.count("café naïve 😀") == 1500  # (the command line has "caf\\303")
    rows_text: str = await page.evaluate(ROWS_TEXT)
    assert "café naïve 😀" in rows_text

    # Truecolour goes through the CSP-clean style path: the colour applies.
    await type_line(page, "printf '\\033[38;2;255;0;0mRED-TEXT\\033[0m\\n'")
    await wait_for_line(page, "RED-TEXT")
    colour = await page.evaluate(
        "() => { const s = [...document.querySelectorAll('.xterm-rows span')]"
        ".find((e) => e.textContent === 'RED-TEXT');"
        " return s ? getComputedStyle(s).color : null; }"
    )
    assert colour == "rgb(255, 0, 0)"
    await page.screenshot(path=str(artefacts / "console-utf8.png"))

    # exit 3: the status, and a Reconnect button that opens a new session.
    await type_line(page, "exit 3")
    await page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('status 3')"
    )
    reconnect = page.get_by_role("button", name="Reconnect")
    assert await reconnect.is_visible()
    await page.screenshot(path=str(artefacts / "console-exit.png"))
    await reconnect.click()
    await wait_connected(page)
    second = await page.evaluate("window.teleconchConsole.sessionId")
    assert second and second != seen["first"]
    await type_line(page, "echo again-$((1+1))")
    await wait_for_line(page, "again-2")
    no_violations(log, await csp_violations(page))
    await type_line(page, "exit")
    await page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('status 0')"
    )


async def _on_reactor(call: Any) -> Any:
    """Run an async call on the reactor's thread from the browser's loop."""
    import asyncio

    from twisted.internet.defer import Deferred

    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def start() -> None:
        d = Deferred.fromCoroutine(call())
        d.addCallbacks(
            lambda r: loop.call_soon_threadsafe(future.set_result, r),
            lambda f: loop.call_soon_threadsafe(future.set_exception, f.value),
        )

    reactor.callFromThread(start)  # type: ignore[attr-defined]
    return await future


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest_twisted.ensureDeferred
async def test_yes_for_seconds_keeps_the_proxy_flat_and_ctrl_c_stops_it(
    chromium: BrowserThread, node: Node, artefacts: Path
) -> None:
    """``yes`` flat out for several seconds: the proxy's memory (this process)
    grows by under 32 MB, the page keeps answering, and Ctrl-C stops it: the
    next command is answered.  How fast is bench_web.py's to measure, not an
    assertion here; the figures are printed for ``-s`` runs."""
    path = "/web/console/web1/root"
    found: dict[str, Any] = {}

    async def flow(browser: Browser) -> None:
        async with open_page(browser) as (page, log):
            await log_in_to_console(page, node, path)
            await wait_connected(page)
            before = _rss()
            peak = before
            await type_line(page, "yes")
            started = time.monotonic()
            slowest = 0.0
            while time.monotonic() - started < 8:
                await page.wait_for_timeout(250)
                asked = time.monotonic()
                assert await page.evaluate("1 + 1") == 2  # the page stays responsive
                slowest = max(slowest, time.monotonic() - asked)
                peak = max(peak, _rss())
            found["written"] = await page.evaluate(
                "window.teleconchConsole.term.buffer.active.length"
            )
            await page.screenshot(path=str(artefacts / "console-yes.png"))
            await page.keyboard.press("Control+C")
            stopped = time.monotonic()
            await type_line(page, "echo stopped-$((2+3))")
            await wait_for_line(page, "stopped-5", within_ms=10_000)
            found["after_ctrl_c"] = time.monotonic() - stopped
            found["growth"] = peak - before
            found["slowest"] = slowest
            no_violations(log, await csp_violations(page))

    await chromium.run(flow)
    print(f"yes: {found}")  # the figures, for -s runs
    assert found["growth"] < RSS_GROWTH_LIMIT, found


@pytest_twisted.ensureDeferred
async def test_a_node_with_a_plain_host_key_is_refused_with_a_message(
    chromium: BrowserThread, tmp_path: Path, artefacts: Path
) -> None:
    """The proxy checks the node's host certificate: a plain key is refused,
    the page says so (and what to do), and the refusal is audited."""
    async with a_node(tmp_path, plain=True) as n:
        path = "/web/console/plain1/root"

        async def flow(browser: Browser) -> str:
            async with open_page(browser) as (page, _log):
                await log_in_to_console(page, n, path)
                await page.wait_for_function(
                    "() => document.getElementById('status').classList.contains('problem')"
                )
                await page.screenshot(path=str(artefacts / "console-plain-key.png"))
                assert await page.get_by_role("button", name="Reconnect").is_visible()
                text: str = await page.text_content("#status") or ""
                return text

        status = await chromium.run(flow)
        assert status.startswith(
            "Cannot open a terminal: plain1: remote host presented a public key, "
            "expected a host certificate from the cluster's host CA"
        ), status
        assert "teleconch-ctl auth sign --host plain1" in status
        events = await wait_for_events(n.cluster, "proxy.connect")
        refused = [e for e in events if e.fields.get("how") == "web" and not e.success]
        assert refused and refused[0].fields["reason"] == "host certificate refused"


@pytest_twisted.ensureDeferred
async def test_the_console_without_a_session_goes_to_the_login_page(
    chromium: BrowserThread, node: Node
) -> None:
    async def flow(browser: Browser) -> str:
        async with open_page(browser) as (page, _log):
            await page.goto(node.url("/web/console/web1/root"))
            await page.wait_for_url(re.compile(r"/web/login"))
            return page.url

    url = await chromium.run(flow)
    assert url.endswith("/web/login?next=%2Fweb%2Fconsole%2Fweb1%2Froot")


@pytest_twisted.ensureDeferred
async def test_a_console_opened_at_another_address_than_the_public_one_says_so(
    chromium: BrowserThread, node: Node, artefacts: Path
) -> None:
    """At ``localhost`` instead of the proxy's public address, the pages work but
    the terminal socket is refused (its Origin is foreign); the browser hides
    the refusal's answer from the page, so the page names the likely cause,
    and the refusal is audited with its reason."""
    base = f"https://localhost:{node.cluster.web_addr.port}"
    path = "/web/console/web1/root"
    codes = code_for(node.cluster)

    async def flow(browser: Browser) -> str:
        async with open_page(browser) as (page, _log):
            await page.goto(base + path)
            await page.wait_for_url(re.compile(r"/web/login\?next="))
            await page.get_by_label("Username").fill(node.alice.name)
            await page.get_by_label("Password").fill(node.alice.password)
            await page.get_by_label("One-time code").fill(codes(node.alice.totp_secret))
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url(re.compile(re.escape(path) + "$"))
            await page.wait_for_function(
                "() => document.getElementById('status').classList.contains('problem')"
            )
            await page.screenshot(path=str(artefacts / "console-foreign-origin.png"))
            text: str = await page.text_content("#status") or ""
            return text

    status = await chromium.run(flow)
    assert "proxy_service.public_addr" in status, status
    events = await wait_for_events(node.cluster, "web.terminal.refused")
    assert any(e.fields.get("reason") == "foreign origin" for e in events), events
