"""The sign-up page as a person uses it, in a real Chromium (Debian's /usr/bin/chromium).

The cluster runs on the Twisted reactor in this process, so the browser must
never block it: Playwright's async API runs on its own asyncio loop in a
thread of its own, one browser for the module, and each test hands it a
coroutine and waits for the answer as a Deferred while the reactor serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from playwright.async_api import Browser, Page

from teleconch import totp
from teleconch.client.webapi import WebAPIError
from tests.browser import PASSWORD, BrowserThread, code_for, open_page, wrong_code
from tests.harness import Cluster, current_code, start_cluster

pytestmark = pytest.mark.interop


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


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
    chromium: BrowserThread, cluster: Cluster, artefacts: Path
) -> None:
    """The invite link shows a QR code and secret; the form makes a working account."""
    url, _token, secret = await _invite(cluster)
    codes = code_for(cluster)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, _log):
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
            await page.screenshot(path=artefacts / "invite.png", full_page=True)
            await _fill(page, PASSWORD, PASSWORD, codes(shown))
            command = await _expect_done(page)
            # Words of the command split across lines would not paste right.
            split_words = await page.evaluate(
                _WORDS_SPLIT_ACROSS_LINES, "login-command"
            )
            form_gone = await page.locator("#signup").count() == 0
            await page.screenshot(path=artefacts / "done.png", full_page=True)
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
    codes = code_for(cluster)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            await _open_invite(page, url)
            code = codes(await _shown_secret(page))
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
    codes = code_for(cluster)
    wrong = wrong_code(secret, cluster.clock.seconds())
    # What the server answers a wrong code, asked directly (it spends nothing).
    with pytest.raises(WebAPIError) as refused:
        await cluster.web().complete_invite(token, PASSWORD, wrong)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, _log):
            await _open_invite(page, url)
            await _fill(page, PASSWORD, PASSWORD, wrong)
            await page.wait_for_selector("#error", state="visible")
            error = await page.text_content("#error")
            otp_after = await page.input_value("#otp")
            password_kept = await page.input_value("#password")
            await page.fill("#otp", codes(await _shown_secret(page)))
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
    chromium: BrowserThread, cluster: Cluster, artefacts: Path
) -> None:
    """An hour later the link explains what to do instead of showing a form."""
    url, _token, _secret = await _invite(cluster)
    cluster.clock.advance(3601)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, _log):
            await _open_invite(page, url)
            await page.wait_for_selector("#error", state="visible")
            await page.screenshot(path=artefacts / "expired.png", full_page=True)
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
    codes = code_for(cluster)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            response = await page.goto(url)
            assert response is not None
            csp = await response.header_value("content-security-policy")
            await page.wait_for_selector("#loading", state="hidden")
            await page.wait_for_function(
                "() => document.getElementById('qr').naturalWidth > 0"
            )
            await _fill(page, PASSWORD, PASSWORD, codes(await _shown_secret(page)))
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
