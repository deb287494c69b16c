"""Real Chromium (Debian's /usr/bin/chromium) for the web UI's interop tests.

The cluster runs on the Twisted reactor in the test's process, so the browser
must never block it: Playwright's async API runs on its own asyncio loop in a
thread of its own, one browser for the whole run, and each test hands it a
coroutine and waits for the answer as a Deferred while the reactor serves.

A plugin of the suite (``pytest_plugins`` in conftest.py): the ``chromium``
and ``artefacts`` fixtures, and `open_page` for a fresh context per flow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import pytest
from playwright.async_api import Browser, Page, async_playwright
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from teleconch import totp
from tests.harness import Cluster

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


@pytest.fixture(scope="session")
def chromium() -> Iterator[BrowserThread]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    browser = BrowserThread()
    browser.start()
    yield browser
    browser.stop()


#: Where screenshots go: $TELECONCH_ARTEFACTS, else test-artefacts/ in the checkout.
ARTEFACTS = Path(
    os.environ.get("TELECONCH_ARTEFACTS")
    or Path(__file__).resolve().parent.parent / "test-artefacts"
)


@pytest.fixture
def artefacts(request: pytest.FixtureRequest) -> Path:
    """This test's directory of artefacts (screenshots), kept after the run."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])
    module = Path(request.node.nodeid.split("::", 1)[0]).stem
    path = ARTEFACTS / module / name
    path.mkdir(parents=True, exist_ok=True)
    return path


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


@contextlib.asynccontextmanager
async def open_page(browser: Browser) -> AsyncIterator[tuple[Page, PageLog]]:
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


def code_for(cluster: Cluster) -> CodeFor:
    """The current code for a secret, by the wall clock shifted as the cluster's is."""
    offset = cluster.clock.offset
    return lambda secret: totp.code_at(secret, totp.counter_at(time.time() + offset))


def wrong_code(secret: str, now: float) -> str:
    """A code the server refuses: none of the steps it accepts around ``now``."""
    near = {totp.code_at(secret, totp.counter_at(now) + d) for d in range(-2, 3)}
    return next(c for c in (f"{n:06d}" for n in range(10**6)) if c not in near)
