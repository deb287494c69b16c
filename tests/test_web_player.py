"""Recordings in the browser: the recordings page and the player, as a
person uses them.

Interop: the cluster runs in this process on 127.0.0.1 (auth service with
its SQLite store, proxy with the web UI), and the browser is Debian's
/usr/bin/chromium through Playwright (tests/browser.py).  The recordings
are made to order (tests/recordings.py: output at chosen milliseconds) and
uploaded through the auth service's own `Recordings`, as a proxy's
uploader does; who may see them is the auth service's rule, asked through
the Auth API by the proxy on behalf of the logged-in person.  Controls are
found by their labels and roles.  Every flow ends with no CSP violation,
uncaught error or console error.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from playwright.async_api import Browser, Page

from teleconch import totp
from teleconch.auth.recordings import Recordings
from tests import recordings as rec
from tests.browser import BrowserThread, PageLog, code_for, open_page
from tests.harness import Cluster, Person, sign_up, start_cluster

pytestmark = pytest.mark.interop


@attrs.frozen
class Site:
    cluster: Cluster
    alice: Person
    bob: Person

    @property
    def recordings(self) -> Recordings:
        auth = self.cluster.service.auth
        assert auth is not None and auth.server is not None
        return auth.server.recordings

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.cluster.web_addr.port}{path}"


@pytest_twisted.async_yield_fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """A cluster (no node: the recordings are stored directly), alice and bob."""
    cluster = await start_cluster(tmp_path / "data")
    try:
        alice = await sign_up(cluster, "alice")
        bob = await sign_up(cluster, "bob")
        yield Site(cluster, alice, bob)
    finally:
        await cluster.stop()


async def log_in(page: Page, site: Site, person: Person, path: str) -> None:
    """Open ``path``, log in on the login page it sends us to, come back."""
    site.cluster.clock.advance(totp.STEP)  # a code is accepted once
    await page.goto(site.url(path))
    await page.wait_for_url(re.compile(r"/web/login\?next="))
    await page.get_by_label("Username").fill(person.name)
    await page.get_by_label("Password").fill(person.password)
    await page.get_by_label("One-time code").fill(
        code_for(site.cluster)(person.totp_secret)
    )
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(re.compile(re.escape(path) + "$"))


async def clean(page: Page, log: PageLog, expected: str = "") -> None:
    """Nothing the page broke: no CSP violation, uncaught error or console
    error (but the ``expected`` one: the browser logs an API's 404)."""
    violations = await page.evaluate("[...window.__cspViolations]")
    problems = [
        m
        for m in log.console
        if m.startswith(("error", "warning")) and not (expected and expected in m)
    ]
    assert (violations, log.errors, problems) == ([], [], [])


async def screen(page: Page) -> str:
    text: str = await page.locator(".xterm-rows").inner_text()
    return text


async def settled(page: Page) -> str:
    """Wait for the player to finish loading or seeking; its state then."""
    await page.wait_for_function(
        "() => !['loading', 'seeking'].includes(document.getElementById('player')"
        ".dataset.state) && window.teleconchPlayer.screen.pending === 0"
    )
    state: str = await page.get_attribute("#player", "data-state") or ""
    return state


async def slide_to(page: Page, ms: int) -> None:
    """Move the Position slider to ``ms`` as a person lets go of it there."""
    await page.get_by_label("Position").evaluate(
        "(el, ms) => { el.value = String(ms);"
        " el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }",
        ms,
    )


async def position(page: Page) -> float:
    value: float = await page.evaluate("window.teleconchPlayer.position")
    return value


# --- the recordings page -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_recordings_page_lists_a_persons_own_and_finds_them_by_text(
    chromium: BrowserThread, site: Site, artefacts: Path
) -> None:
    """alice sees her two recordings and not bob's; bob sees only his; carol,
    an auditor, sees all three; the text search (made by the auth service in
    the output) finds the one that showed the text, and the search by node
    the one on that node; each row links to the player."""
    carol = await sign_up(site.cluster, "carol", roles=("auditor",))
    for sid, user, node, text in [
        ("rec-alice-1", "alice", "web1", "compiling the-needle-here done"),
        ("rec-alice-2", "alice", "db1", "nothing to see"),
        ("rec-bob-1", "bob", "web1", "bob's the-needle-here too"),
    ]:
        events = [rec.start(sid, user, node), rec.out(10, text), rec.end(20)]
        await rec.store(site.recordings, sid, user, rec.frames(events), 20, node=node)

    async def rows(page: Page) -> list[str]:
        await page.wait_for_function(
            "() => document.getElementById('loading').hidden && "
            "!document.querySelector('#search button').disabled"
        )
        found = page.locator("#recordings tbody tr")
        return sorted(
            [await found.nth(i).get_attribute("data-recording") or ""
             for i in range(await found.count())]
        )  # fmt: skip

    async def flow(browser: Browser) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with open_page(browser) as (page, log):
            await log_in(page, site, site.alice, "/web/recordings")
            seen["alice"] = await rows(page)
            await page.screenshot(path=artefacts / "recordings.png", full_page=True)
            await page.get_by_label("Text shown").fill("THE-NEEDLE-HERE")
            await page.get_by_role("button", name="Search").click()
            await page.wait_for_url("**/web/recordings?q=THE-NEEDLE-HERE")
            seen["text"] = await rows(page)
            await page.get_by_label("Text shown").fill("")
            await page.get_by_label("Node").fill("db1")
            await page.get_by_role("button", name="Search").click()
            await page.wait_for_url("**/web/recordings?node=db1")
            seen["node"] = await rows(page)
            link = page.get_by_role(
                "link", name=re.compile(r"^Play alice's session on db1")
            )
            seen["href"] = await link.get_attribute("href")
            await clean(page, log)
        async with open_page(browser) as (page, log):
            await log_in(page, site, site.bob, "/web/recordings")
            seen["bob"] = await rows(page)
            await clean(page, log)
        async with open_page(browser) as (page, log):
            await log_in(page, site, carol, "/web/recordings")
            seen["carol-all"] = await rows(page)
            await page.goto(site.url("/web/recordings?q=the-needle"))
            assert await page.get_by_label("Text shown").input_value() == "the-needle"
            seen["carol"] = await rows(page)
            await clean(page, log)
        return seen

    seen = await chromium.run(flow)
    assert seen["alice"] == ["rec-alice-1", "rec-alice-2"]
    assert seen["text"] == ["rec-alice-1"]
    assert seen["node"] == ["rec-alice-2"]
    assert seen["href"] == "/web/player/rec-alice-2"
    assert seen["bob"] == ["rec-bob-1"]
    assert seen["carol-all"] == ["rec-alice-1", "rec-alice-2", "rec-bob-1"]
    assert seen["carol"] == ["rec-alice-1", "rec-bob-1"]


@pytest_twisted.ensureDeferred
async def test_another_persons_recording_does_not_play_and_says_so(
    chromium: BrowserThread, site: Site
) -> None:
    """bob opening alice's player link: a message, no output, and the same
    message as for a recording that does not exist."""
    events = [rec.start("rec-a", "alice"), rec.out(10, "alice-private-output")]
    await rec.store(site.recordings, "rec-a", "alice", rec.frames(events), 10)

    async def flow(browser: Browser) -> list[str]:
        said = []
        async with open_page(browser) as (page, log):
            await log_in(page, site, site.bob, "/web/player/rec-a")
            for sid in ("rec-a", "rec-none"):
                await page.goto(site.url(f"/web/player/{sid}"))
                await page.wait_for_selector("#player[data-state='error']")
                said.append(await page.locator("#status").inner_text())
                assert "alice-private-output" not in await page.content()
            await clean(page, log, expected="status of 404")
        return said

    theirs, none = await chromium.run(flow)
    assert "that you may see" in theirs
    assert theirs.replace("rec-a", "X") == none.replace("rec-none", "X")


# --- the player ------------------------------------------------------------------


def _timed(sid: str, user: str) -> list[rec.Ev]:
    """Output every 200 ms for 30 s: ``tick-N`` on its own line."""
    lines = [rec.out(200 * n, f"tick-{n:03d}\r\n") for n in range(1, 151)]
    return [rec.start(sid, user), *lines, rec.end(30_200, 0)]


@pytest_twisted.ensureDeferred
async def test_the_player_plays_pauses_on_space_and_speeds_up(
    chromium: BrowserThread, site: Site, artefacts: Path
) -> None:
    """Play shows the output in the terminal and moves the time on; the
    space bar pauses it (the time stops) and plays again; at 8x the
    recording's time runs several times faster than the page's clock."""
    stream = rec.frames(_timed("rec-1", "alice"), per_frame=5)
    await rec.store(site.recordings, "rec-1", "alice", stream, 30_200)

    async def flow(browser: Browser) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with open_page(browser) as (page, log):
            await log_in(page, site, site.alice, "/web/player/rec-1")
            assert await settled(page) == "paused"
            seen["time0"] = await page.locator("#time").inner_text()
            await page.get_by_role("button", name="Play").click()
            await page.wait_for_function(
                "() => document.querySelector('.xterm-rows').innerText.includes('tick-003')"
            )
            await page.keyboard.press("Space")
            await page.wait_for_selector("#player[data-state='paused']")
            paused_at = await position(page)
            seen["pause_label"] = await page.get_by_role("button", name="Play").count()
            await page.wait_for_timeout(600)
            seen["still"] = (paused_at, await position(page))
            seen["shown"] = await screen(page)
            await page.get_by_label("Speed").select_option("8")
            before = await page.evaluate(
                "[window.teleconchPlayer.position, performance.now()]"
            )
            await page.keyboard.press("Space")
            await page.wait_for_selector("#player[data-state='playing']")
            await page.wait_for_timeout(1000)
            after = await page.evaluate(
                "[window.teleconchPlayer.position, performance.now()]"
            )
            seen["rate"] = (after[0] - before[0]) / (after[1] - before[1])
            await page.wait_for_selector("#player[data-state='ended']")
            seen["end"] = await screen(page)
            seen["status"] = await page.locator("#status").inner_text()
            seen["time"] = await page.locator("#time").inner_text()
            await page.screenshot(path=artefacts / "player.png", full_page=True)
            await clean(page, log)
        return seen

    seen = await chromium.run(flow)
    assert seen["time0"] == "00:00 / 00:30"
    assert seen["pause_label"] == 1
    assert seen["still"][0] == seen["still"][1] and seen["still"][0] >= 600
    assert "tick-003" in seen["shown"]
    assert seen["rate"] > 3, seen["rate"]
    assert "tick-150" in seen["end"] and "status 0" in seen["status"]
    assert seen["time"] == "00:30 / 00:30"


@pytest_twisted.ensureDeferred
async def test_the_slider_and_arrows_seek_and_the_screen_shows_what_was_on_it_then(
    chromium: BrowserThread, site: Site, artefacts: Path
) -> None:
    """Sixty screens, one a second, each cleared and marked, and a resize to
    100x30 at 30.5 s: sliding to 57.5 s shows screen 57 (nothing of 56),
    back to 10.5 s screen 10; the left arrow goes back 5 s (screen 5), the
    right on 5 s (screen 10).  Played across the resize, the terminal takes
    the new size; a seek before it has the first size again, after it the
    new one."""
    resize = rec.Ev(30_500, "resize", fields={"cols": 100, "rows": 30})
    screens = sorted([*rec.marked_screens(60, 1000), resize], key=lambda e: e.ms)
    events = [rec.start("rec-s", "alice"), *screens, rec.end(60_000)]
    await rec.store(site.recordings, "rec-s", "alice", rec.frames(events), 60_000)

    async def size(page: Page) -> str:
        cols, rows = await page.evaluate(
            "[teleconchPlayer.term.cols, teleconchPlayer.term.rows]"
        )
        return f"{cols}x{rows}"

    async def flow(browser: Browser) -> dict[str, str]:
        shown = {}
        async with open_page(browser) as (page, log):
            await log_in(page, site, site.alice, "/web/player/rec-s")
            await settled(page)
            for ms in (57_500, 10_500):
                await slide_to(page, ms)
                assert await settled(page) == "paused"
                shown[str(ms)] = await screen(page)
            await page.screenshot(path=artefacts / "seek.png", full_page=True)
            await page.keyboard.press("ArrowLeft")
            await settled(page)
            shown["left"] = await screen(page)
            await page.keyboard.press("ArrowRight")
            await settled(page)
            shown["right"] = await screen(page)
            shown["time"] = await page.locator("#time").inner_text()
            await slide_to(page, 30_000)
            await settled(page)
            shown["size-30000"] = await size(page)
            await page.get_by_role("button", name="Play").click()
            await page.wait_for_function("() => teleconchPlayer.position > 31000")
            await page.keyboard.press("Space")
            shown["size-played"] = await size(page)
            for ms in (10_500, 57_500):
                await slide_to(page, ms)
                await settled(page)
                shown[f"size-{ms}"] = await size(page)
            await clean(page, log)
        return shown

    shown = await chromium.run(flow)
    assert (
        "SCREEN-0057 line 2" in shown["57500"] and "SCREEN-0056" not in shown["57500"]
    )
    assert (
        "SCREEN-0010 line 0" in shown["10500"] and "SCREEN-0057" not in shown["10500"]
    )
    assert "SCREEN-0005" in shown["left"] and "SCREEN-0010" not in shown["left"]
    assert "SCREEN-0010" in shown["right"] and shown["time"] == "00:10 / 01:00"
    assert (shown["size-30000"], shown["size-played"]) == ("80x24", "100x30")
    assert (shown["size-10500"], shown["size-57500"]) == ("80x24", "100x30")


@pytest_twisted.ensureDeferred
async def test_skip_idle_shortens_a_long_gap_to_a_second(
    chromium: BrowserThread, site: Site
) -> None:
    """Ten minutes of nothing between two lines: with Skip idle the second
    comes a second after the first, and the time jumps over the gap."""
    events = [rec.start("rec-i", "alice"), rec.out(100, "before-the-gap\r\n"),
              rec.out(600_100, "after-the-gap\r\n"), rec.end(600_200)]  # fmt: skip
    await rec.store(site.recordings, "rec-i", "alice", rec.frames(events), 600_200)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            await log_in(page, site, site.alice, "/web/player/rec-i")
            await settled(page)
            await page.get_by_label("Skip idle").check()
            await page.get_by_role("button", name="Play").click()
            await page.wait_for_function(
                "() => document.querySelector('.xterm-rows').innerText.includes('after-the-gap')"
            )
            await page.wait_for_selector("#player[data-state='ended']")
            seen = {
                "screen": await screen(page),
                "time": await page.locator("#time").inner_text(),
            }
            await clean(page, log)
            return seen

    seen = await chromium.run(flow)
    assert "before-the-gap" in seen["screen"] and "after-the-gap" in seen["screen"]
    assert seen["time"] == "10:00 / 10:00"


# --- a large recording -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_100_mb_recording_seeks_without_being_fetched_whole(
    chromium: BrowserThread, site: Site
) -> None:
    """A 100 MB recording: ten seeks across it each show the frame at that
    time, and all the ranges the page fetched add up to a few MB."""
    stream = list(rec.large_recording("rec-big", "alice"))
    frames = len(stream) - 1
    duration = frames * rec.FRAME_GAP_MS
    size = await rec.store(site.recordings, "rec-big", "alice", stream, duration)
    del stream
    assert size >= rec.LARGE_BYTES
    # On the slider's steps (100 ms), each the time a frame starts.
    points = [duration * k // 1000 * 100 + rec.FRAME_GAP_MS for k in range(10)]

    async def flow(browser: Browser) -> dict[str, Any]:
        fetched: list[int] = []
        shown = {}
        async with open_page(browser) as (page, log):

            async def count(response: Any) -> None:
                if "/recordings/" in response.url:
                    fetched.append(len(await response.body()))

            page.on("response", count)
            await log_in(page, site, site.alice, "/web/player/rec-big")
            await settled(page)
            for ms in points:
                await slide_to(page, ms)
                assert await settled(page) == "paused"
                shown[ms] = await screen(page)
            await clean(page, log)
        return {"fetched": sum(fetched), "shown": shown}

    seen = await chromium.run(flow)
    for ms, text in seen["shown"].items():
        n = ms // rec.FRAME_GAP_MS - 1
        assert f"AT-FRAME-{n:06d}" in text, (ms, text[-300:])
    # Each seek: the frame's range and at most ~512 KiB of output before it
    # (as base64 in JSON), nowhere near the 100 MB.
    assert seen["fetched"] < 10 * 2 * 1024 * 1024, seen["fetched"]
