"""The sign-up page as a person uses it, in a real Chromium (Debian's /usr/bin/chromium).

The cluster runs on the Twisted reactor in this process, so the browser must
never block it: Playwright's async API runs on its own asyncio loop in a
thread of its own, one browser for the module, and each test hands it a
coroutine and waits for the answer as a Deferred while the reactor serves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from playwright.async_api import Browser, Page, async_playwright
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from teleconch import totp
from teleconch.client.webapi import WebAPIError
from tests.harness import Cluster, current_code, start_cluster

pytestmark = pytest.mark.interop

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a long and memorable passphrase"
TIMEOUT_MS = 15_000  # well under pytest-timeout's 120 s, so a stuck page fails cleanly

T = TypeVar("T")
CodeFor = Callable[[str], str]


class BrowserThread:
    """One Chromium driven from an asyncio loop in a thread of its own."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="playwright", daemon=True
        )
        self._playwright: Any = None
        self.browser: Browser | None = None

    def start(self) -> None:
        self._thread.start()
        try:
            self._submit(self._launch()).result(timeout=60)
        except BaseException:
            self._end_loop()
            raise

    def stop(self) -> None:
        try:
            self._submit(self._close()).result(timeout=60)
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _launch(self) -> None:
        self._playwright = await async_playwright().start()
        try:
            self.browser = await self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
        except BaseException:
            await self._playwright.stop()
            raise

    async def _close(self) -> None:
        try:
            if self.browser is not None:
                await self.browser.close()
        finally:
            await self._playwright.stop()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, flow: Callable[[Browser], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """Run ``flow(browser)`` on the browser's loop; its result as a Deferred."""
        assert self.browser is not None
        future = self._submit(flow(self.browser))
        d: Deferred[T] = Deferred()

        def done(f: concurrent.futures.Future[T]) -> None:
            error = f.exception()
            threads = cast(IReactorFromThreads, reactor)
            if error is None:
                threads.callFromThread(d.callback, f.result())
            else:
                threads.callFromThread(d.errback, Failure(error))

        future.add_done_callback(done)
        return d


@pytest.fixture(scope="module")
def chromium() -> Iterator[BrowserThread]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    browser = BrowserThread()
    browser.start()
    yield browser
    browser.stop()


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


@attrs.define
class PageLog:
    """What the page did on its own: console lines, uncaught errors, requests."""

    console: list[str] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    requests: list[str] = attrs.field(factory=list)


# Chromium reports CSP violations on the console too; this catches them even
# if a version stops doing so, through the event the page itself sees.
_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
});
"""


# The words of an element's text that the layout broke over two lines.
_WORDS_SPLIT_ACROSS_LINES = """
(id) => {
  const el = document.getElementById(id);
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
  // A word starts in the node holding its first letter, ends in its last's.
  const at = (i, end) => {
    for (const node of nodes) {
      if (i < node.length || (end && i === node.length)) return [node, i];
      i -= node.length;
    }
    throw new Error('offset past the end of the text');
  };
  const split = [];
  for (const m of el.textContent.matchAll(/\\S+/g)) {
    const range = document.createRange();
    range.setStart(...at(m.index, false));
    range.setEnd(...at(m.index + m[0].length, true));
    const tops = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
    if (tops.size > 1) split.push(m[0]);
  }
  return split;
}
"""


@contextlib.asynccontextmanager
async def _page(browser: Browser) -> AsyncIterator[tuple[Page, PageLog]]:
    """A fresh context (no cookies, no cache) and page, closed even on failure."""
    context = await browser.new_context(ignore_https_errors=True)
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        log = PageLog()
        page.on("console", lambda m: log.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: log.errors.append(str(e)))
        page.on("request", lambda r: log.requests.append(f"{r.method} {r.url}"))
        await page.add_init_script(_WATCH_CSP)
        yield page, log
    finally:
        await context.close()


async def _open_invite(page: Page, url: str) -> None:
    response = await page.goto(url)
    assert response is not None and response.ok, response
    await page.wait_for_selector("#loading", state="hidden")


async def _fill(page: Page, password: str, confirm: str, otp: str) -> None:
    await page.fill("#password", password)
    await page.fill("#password-confirm", confirm)
    await page.fill("#otp", otp)
    await page.click("#submit")


async def _expect_done(page: Page) -> str:
    await page.wait_for_selector("#done", state="visible")
    assert await page.locator("#error").is_hidden()
    return await page.text_content("#login-command") or ""


def _code_for(cluster: Cluster) -> CodeFor:
    """The current code for a secret, by the wall clock shifted as the cluster's is."""
    offset = cluster.clock.offset
    return lambda secret: totp.code_at(secret, totp.counter_at(time.time() + offset))


def _wrong_code(secret: str, now: float) -> str:
    """A code the server refuses: none of the steps it accepts around ``now``."""
    near = {totp.code_at(secret, totp.counter_at(now) + d) for d in range(-2, 3)}
    return next(c for c in (f"{n:06d}" for n in range(10**6)) if c not in near)


def _pub_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


async def _invite(cluster: Cluster, name: str = "alice") -> tuple[str, str, str]:
    """Invite ``name``: the link to open, its token, and the secret the server holds."""
    invite = await cluster.admin_agent().create_user(name, [name], ["access"])
    token = invite.token
    secret = (await cluster.web().get_invite(token))["totp_secret"]
    addr = cluster.web_addr
    return f"https://{addr.host}:{addr.port}/web/invite/{token}", token, secret


async def _can_log_in(cluster: Cluster, name: str, secret: str) -> None:
    # The sign-up used this step's code, and a code is accepted once.
    cluster.clock.advance(totp.STEP)
    issued = await cluster.web().ssh_certs(
        name, PASSWORD, current_code(secret, cluster.clock), _pub_key(), 3600
    )
    assert issued["username"] == name
    assert issued["cert"].startswith("ssh-ed25519-cert-v01@openssh.com ")


async def _shown_secret(page: Page) -> str:
    return (await page.text_content("#secret") or "").strip()


@pytest_twisted.ensureDeferred
async def test_a_person_signs_up_in_the_browser(
    chromium: BrowserThread, cluster: Cluster, tmp_path: Path
) -> None:
    """The invite link shows a QR code and secret; the form makes a working account."""
    url, _token, secret = await _invite(cluster)
    code_for = _code_for(cluster)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with _page(browser) as (page, _log):
            await _open_invite(page, url)
            welcome = await page.text_content("#welcome")
            # The QR code is an SVG data URI: it rendered if it has pixels.
            await page.wait_for_function(
                "() => { const qr = document.getElementById('qr');"
                " return qr.complete && qr.naturalWidth > 0; }"
            )
            qr = page.locator("#qr")
            qr_visible = await qr.is_visible()
            qr_src = await qr.get_attribute("src") or ""
            qr_box = await qr.bounding_box()
            shown = await _shown_secret(page)
            await page.screenshot(path=tmp_path / "invite.png", full_page=True)
            await _fill(page, PASSWORD, PASSWORD, code_for(shown))
            command = await _expect_done(page)
            # Words of the command split across lines would not paste right.
            split_words = await page.evaluate(
                _WORDS_SPLIT_ACROSS_LINES, "login-command"
            )
            form_gone = await page.locator("#signup").count() == 0
            await page.screenshot(path=tmp_path / "done.png", full_page=True)
            return {
                "welcome": welcome,
                "qr_visible": qr_visible,
                "qr_src": qr_src,
                "qr_box": qr_box,
                "secret": shown,
                "command": command,
                "split_words": split_words,
                "form_gone": form_gone,
            }

    seen = await chromium.run(flow)

    assert "alice" in seen["welcome"]
    assert seen["qr_visible"]
    assert seen["qr_src"].startswith("data:image/svg+xml;base64,")
    assert seen["qr_box"]["width"] >= 100 and seen["qr_box"]["height"] >= 100
    assert seen["secret"] == secret
    port = cluster.web_addr.port
    assert f"teleconch login --proxy 127.0.0.1:{port} --user alice" in seen["command"]
    assert seen["split_words"] == []
    assert seen["form_gone"]
    await _can_log_in(cluster, "alice", seen["secret"])


@pytest_twisted.ensureDeferred
async def test_mismatched_passwords_are_caught_before_sending(
    chromium: BrowserThread, cluster: Cluster
) -> None:
    """A typo in the confirmation is shown at once; the invite is not spent."""
    url, _token, secret = await _invite(cluster)
    code_for = _code_for(cluster)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with _page(browser) as (page, log):
            await _open_invite(page, url)
            code = code_for(await _shown_secret(page))
            await _fill(page, PASSWORD, PASSWORD + "!", code)
            await page.wait_for_selector("#error", state="visible")
            error = await page.text_content("#error")
            focused = await page.evaluate("document.activeElement.id")
            posts = [r for r in log.requests if r.startswith("POST ")]
            signup_visible = await page.locator("#signup").is_visible()
            # Fixing the typo still works: nothing was sent, nothing was spent.
            await page.fill("#password-confirm", PASSWORD)
            await page.click("#submit")
            await _expect_done(page)
            return {
                "error": error,
                "focused": focused,
                "posts": posts,
                "signup_visible": signup_visible,
            }

    seen = await chromium.run(flow)

    assert "Passwords do not match" in seen["error"]
    assert seen["focused"] == "password-confirm"
    assert seen["posts"] == []
    assert seen["signup_visible"]
    await _can_log_in(cluster, "alice", secret)


@pytest_twisted.ensureDeferred
async def test_a_wrong_code_shows_the_servers_message(
    chromium: BrowserThread, cluster: Cluster
) -> None:
    """The server's refusal is shown to the person; the right code then works."""
    url, token, secret = await _invite(cluster)
    code_for = _code_for(cluster)
    wrong = _wrong_code(secret, cluster.clock.seconds())
    # What the server answers a wrong code, asked directly (it spends nothing).
    with pytest.raises(WebAPIError) as refused:
        await cluster.web().complete_invite(token, PASSWORD, wrong)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with _page(browser) as (page, _log):
            await _open_invite(page, url)
            await _fill(page, PASSWORD, PASSWORD, wrong)
            await page.wait_for_selector("#error", state="visible")
            error = await page.text_content("#error")
            otp_after = await page.input_value("#otp")
            password_kept = await page.input_value("#password")
            await page.fill("#otp", code_for(await _shown_secret(page)))
            await page.click("#submit")
            await _expect_done(page)
            return {
                "error": error,
                "otp_after": otp_after,
                "password_kept": password_kept,
            }

    seen = await chromium.run(flow)

    message = str(refused.value)
    assert "one-time code is wrong" in message
    # The page shows it as a sentence: a capital letter first.
    assert message[0].upper() + message[1:] in seen["error"]
    assert seen["otp_after"] == ""
    assert seen["password_kept"] == PASSWORD
    await _can_log_in(cluster, "alice", secret)


@pytest_twisted.ensureDeferred
async def test_an_expired_invite_says_to_ask_for_a_new_one(
    chromium: BrowserThread, cluster: Cluster, tmp_path: Path
) -> None:
    """An hour later the link explains what to do instead of showing a form."""
    url, _token, _secret = await _invite(cluster)
    cluster.clock.advance(3601)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with _page(browser) as (page, _log):
            await _open_invite(page, url)
            await page.wait_for_selector("#error", state="visible")
            await page.screenshot(path=tmp_path / "expired.png", full_page=True)
            return {
                "error": await page.text_content("#error"),
                "signup_visible": await page.locator("#signup").is_visible(),
                "done_visible": await page.locator("#done").is_visible(),
            }

    seen = await chromium.run(flow)

    error = seen["error"].lower()
    assert "expired" in error
    assert error.count("ask your administrator for a new") == 1
    assert not seen["signup_visible"] and not seen["done_visible"]


@pytest_twisted.ensureDeferred
async def test_the_page_obeys_its_content_security_policy(
    chromium: BrowserThread, cluster: Cluster
) -> None:
    """Loading and completing the page breaks no CSP rule and throws no error."""
    url, _token, _secret = await _invite(cluster)
    code_for = _code_for(cluster)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with _page(browser) as (page, log):
            response = await page.goto(url)
            assert response is not None
            csp = await response.header_value("content-security-policy")
            await page.wait_for_selector("#loading", state="hidden")
            await page.wait_for_function(
                "() => document.getElementById('qr').naturalWidth > 0"
            )
            await _fill(page, PASSWORD, PASSWORD, code_for(await _shown_secret(page)))
            await _expect_done(page)
            violations = await page.evaluate("[...window.__cspViolations]")
            console, errors = list(log.console), list(log.errors)
            # The watch works: an inline style, which the policy forbids, is seen.
            await page.evaluate(
                "() => { const s = document.createElement('style');"
                " s.textContent = 'body { color: red; }'; document.head.append(s); }"
            )
            await page.wait_for_function("() => window.__cspViolations.length > 0")
            return {
                "csp": csp,
                "violations": violations,
                "console": console,
                "errors": errors,
                "control": await page.evaluate("window.__cspViolations"),
            }

    seen = await chromium.run(flow)

    # The policy is really there, so obeying it means something.
    assert seen["csp"] and "script-src 'self'" in seen["csp"]
    assert seen["violations"] == []
    assert [v for v in seen["control"] if v.startswith("style-src")]
    assert seen["errors"] == []
    assert [m for m in seen["console"] if m.startswith(("error", "warning"))] == []
    assert not [m for m in seen["console"] if "Content Security Policy" in m]
