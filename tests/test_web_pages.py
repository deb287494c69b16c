"""The web UI's pages as a person uses them, in a real Chromium (Debian's
/usr/bin/chromium, through the ``tests.browser`` plugin) against a real
cluster on 127.0.0.1: log in with a one-time code, the nodes and their
search, the live sessions, the account page, logging out.

Controls are found by their labels and roles, as a screen reader finds
them.  The cluster's clock is moved a TOTP step before each code is made,
so no code is used twice (the auth service accepts each once).  A
screenshot of every page goes to the test's ``artefacts`` directory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from playwright.async_api import Browser, Page

from teleconch import totp
from teleconch.auth.types import ActiveSession, Node, Party
from teleconch.client.webapi import WebAPIError
from tests import webclient
from tests.browser import BrowserThread, PageLog, open_page, wrong_code
from tests.harness import Cluster, Person, current_code, sign_up, start_cluster

pytestmark = pytest.mark.interop

NEW_PASSWORD = "an entirely different passphrase"


@attrs.frozen
class UI:
    cluster: Cluster
    alice: Person
    nodes: tuple[Node, ...]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.cluster.web_addr.port}"

    def next_code(self, secret: str | None = None) -> str:
        """A code of the next TOTP step (the clock moves on to it), never
        used before.  Callable from the browser's thread: the services only
        read the clock's offset."""
        self.cluster.clock.advance(totp.STEP)
        return current_code(secret or self.alice.totp_secret, self.cluster.clock)


@pytest_twisted.async_yield_fixture
async def ui(tmp_path: Path) -> AsyncIterator[UI]:
    """A cluster with two nodes of different labels (no sshd: listing only)
    and alice, signed up with logins alice and root."""
    cluster = await start_cluster(tmp_path / "data")
    try:
        admin = cluster.admin_agent()
        web1 = await admin.upsert_node(
            "web1", "127.0.0.1:2201", {"env": "prod", "team": "web"}
        )
        db1 = await admin.upsert_node(
            "db1", "127.0.0.1:2202", {"env": "dev", "team": "data"}
        )
        alice = await sign_up(cluster, "alice", logins=("alice", "root"))
        yield UI(cluster, alice, (web1, db1))
    finally:
        await cluster.stop()


async def _log_in(page: Page, ui: UI, password: str = "", code: str = "") -> None:
    """Fill in and send the login form (on the login page already)."""
    await page.get_by_label("Username").fill(ui.alice.name)
    await page.get_by_label("Password", exact=True).fill(password or ui.alice.password)
    await page.get_by_label("One-time code").fill(code or ui.next_code())
    await page.get_by_role("button", name="Log in").click()


async def _logged_in(page: Page, ui: UI) -> None:
    """Log in from the login page and wait for the nodes."""
    await page.goto(ui.base + "/web/login")
    await _log_in(page, ui)
    await page.wait_for_url("**/web/nodes")
    await page.wait_for_selector("#nodes tbody tr")


async def _visible_nodes(page: Page) -> list[str]:
    rows = page.locator("#nodes tbody tr")
    return [
        await rows.nth(i).get_attribute("data-node") or ""
        for i in range(await rows.count())
    ]


async def _clean(page: Page, log: PageLog) -> dict[str, Any]:
    """What the page broke: CSP violations, uncaught errors, console errors."""
    return {
        "violations": await page.evaluate("[...window.__cspViolations]"),
        "errors": list(log.errors),
        "console": [m for m in log.console if m.startswith(("error", "warning"))],
    }


def _pub_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


async def _can_log_in(ui: UI, password: str, secret: str) -> bool:
    """Whether ``teleconch login`` with this password and secret's code works."""
    try:
        await ui.cluster.web().ssh_certs(
            ui.alice.name, password, ui.next_code(secret), _pub_key(), 3600
        )
    except WebAPIError as e:
        if e.status not in (401, 403):
            raise
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_a_person_logs_in_with_a_code_and_sees_the_nodes_they_may_reach(
    chromium: BrowserThread, ui: UI, artefacts: Path
) -> None:
    """Username, password and code on the login page lead to the nodes page:
    each node with its address, labels and a terminal link per login; the
    session is the HttpOnly cookie plus the bearer in localStorage."""

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            await page.goto(ui.base + "/web/login")
            await page.screenshot(path=artefacts / "login.png", full_page=True)
            await _log_in(page, ui)
            await page.wait_for_url("**/web/nodes")
            await page.wait_for_selector("#nodes tbody tr")
            await page.screenshot(path=artefacts / "nodes.png", full_page=True)
            rows = page.locator("#nodes tbody tr")
            table = [
                (await rows.nth(i).inner_text()).split("\t")
                for i in range(await rows.count())
            ]
            links = page.get_by_role("link", name="root@web1")
            return {
                "nodes": await _visible_nodes(page),
                "table": table,
                "hrefs": await page.eval_on_selector_all(
                    "a.login", "(as) => as.map((a) => a.getAttribute('href'))"
                ),
                "root_link_target": await links.get_attribute("target"),
                "user": await page.text_content("#user"),
                "logout": await page.get_by_role("button", name="Log out").is_visible(),
                "stored": await page.evaluate(
                    "JSON.parse(localStorage.getItem('teleconch.session'))"
                ),
                "cookies": await page.context.cookies(),
                **await _clean(page, log),
            }

    seen = await chromium.run(flow)

    assert seen["nodes"] == ["db1", "web1"]
    db1, web1 = seen["table"]
    assert db1[:2] == ["db1", "127.0.0.1:2202"] and "env=dev" in db1[2]
    assert web1[:2] == ["web1", "127.0.0.1:2201"] and "team=web" in web1[2]
    assert sorted(seen["hrefs"]) == [
        "/web/console/db1/alice",
        "/web/console/db1/root",
        "/web/console/web1/alice",
        "/web/console/web1/root",
    ]
    assert seen["root_link_target"] == "_blank"
    assert seen["user"] == "alice" and seen["logout"]
    stored = seen["stored"]
    assert stored["user"] == "alice" and len(stored["token"]) >= 32
    assert stored["expires"] > ui.cluster.clock.seconds()
    (cookie,) = [c for c in seen["cookies"] if c["name"] == "__Host-session"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/" and cookie["value"] != stored["token"]
    assert seen["violations"] == [] and seen["errors"] == [] and seen["console"] == []


@pytest_twisted.ensureDeferred
async def test_a_wrong_code_says_to_check_the_device_clock(
    chromium: BrowserThread, ui: UI, artefacts: Path
) -> None:
    """The auth service's one message is shown as a sentence, the code is
    cleared for the next one, and the right code then works."""
    wrong = wrong_code(ui.alice.totp_secret, ui.cluster.clock.seconds())

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, _log):
            await page.goto(ui.base + "/web/login")
            await _log_in(page, ui, code=wrong)
            error = page.get_by_role("alert")
            await error.wait_for(state="visible")
            await page.screenshot(
                path=artefacts / "login-wrong-code.png", full_page=True
            )
            seen = {
                "error": await error.text_content(),
                "url": page.url,
                "code_after": await page.get_by_label("One-time code").input_value(),
                "focused": await page.evaluate("document.activeElement.id"),
                "stored": await page.evaluate(
                    "localStorage.getItem('teleconch.session')"
                ),
            }
            await page.get_by_label("One-time code").fill(ui.next_code())
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url("**/web/nodes")
            return seen

    seen = await chromium.run(flow)

    assert "Login failed" in seen["error"]
    assert "check that your device's clock is right" in seen["error"]
    assert seen["url"].endswith("/web/login")
    assert seen["code_after"] == "" and seen["focused"] == "otp"
    assert seen["stored"] is None


@pytest_twisted.ensureDeferred
async def test_the_search_box_filters_the_nodes_by_name_or_label(
    chromium: BrowserThread, ui: UI, artefacts: Path
) -> None:
    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, _log):
            await _logged_in(page, ui)
            search = page.get_by_label("Search")
            shown = {}
            for query in ["env=dev", "web", "TEAM", "prod web1", "nothing-like-it", ""]:
                await search.fill(query)
                shown[query] = await _visible_nodes(page)
                if query == "env=dev":
                    await page.screenshot(
                        path=artefacts / "nodes-search.png", full_page=True
                    )
            await search.fill("nothing-like-it")
            empty = await page.text_content("#empty")
            return {
                "shown": shown,
                "empty": empty,
                "count": await page.text_content("#count"),
            }

    seen = await chromium.run(flow)

    assert seen["shown"] == {
        "env=dev": ["db1"],
        "web": ["web1"],
        "TEAM": ["db1", "web1"],
        "prod web1": ["web1"],
        "nothing-like-it": [],
        "": ["db1", "web1"],
    }
    assert "No node matches" in seen["empty"]
    assert seen["count"] == "0 of 2 nodes"


@pytest_twisted.ensureDeferred
async def test_the_account_page_changes_the_password(
    chromium: BrowserThread, ui: UI, artefacts: Path
) -> None:
    """Current password, a code and the new one twice: the page says it is
    changed, this session goes on, and only the new password logs in."""

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            await _logged_in(page, ui)
            await page.get_by_role("link", name="Account").click()
            await page.wait_for_url("**/web/account")
            await page.screenshot(path=artefacts / "account.png", full_page=True)
            await page.get_by_label("Current password", exact=True).fill(
                ui.alice.password
            )
            await page.get_by_label("One-time code").fill(ui.next_code())
            await page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
            await page.get_by_label("Repeat the new password").fill(NEW_PASSWORD)
            await page.get_by_role("button", name="Change password").click()
            done = page.locator("#password-done")
            await done.wait_for(state="visible")
            await page.screenshot(
                path=artefacts / "account-password-changed.png", full_page=True
            )
            seen = {
                "done": await done.text_content(),
                "error_hidden": await page.locator("#password-error").is_hidden(),
                **await _clean(page, log),
            }
            await page.get_by_role("link", name="Nodes").click()
            await page.wait_for_selector("#nodes tbody tr")
            seen["still_logged_in"] = await _visible_nodes(page)
            return seen

    seen = await chromium.run(flow)

    assert seen["done"] == "Your password is changed."
    assert seen["error_hidden"]
    assert seen["still_logged_in"] == ["db1", "web1"]
    assert seen["violations"] == [] and seen["errors"] == []
    assert await _can_log_in(ui, NEW_PASSWORD, ui.alice.totp_secret)
    assert not await _can_log_in(ui, ui.alice.password, ui.alice.totp_secret)


@pytest_twisted.ensureDeferred
async def test_enrolling_a_new_authenticator_replaces_the_old_one(
    chromium: BrowserThread, ui: UI, artefacts: Path
) -> None:
    """The password shows a new secret and its QR code; a code from it
    confirms it; from then on its codes log in and the old secret's do not."""

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            await _logged_in(page, ui)
            await page.goto(ui.base + "/web/account")
            await page.get_by_label("Your password", exact=True).fill(ui.alice.password)
            await page.get_by_role("button", name="Show a new secret").click()
            await page.wait_for_function(
                "() => { const qr = document.getElementById('mfa-qr');"
                " return qr.complete && qr.naturalWidth > 0; }"
            )
            secret = (await page.text_content("#mfa-secret") or "").strip()
            await page.screenshot(
                path=artefacts / "account-new-authenticator.png", full_page=True
            )
            code = page.get_by_label("Code from the new authenticator")
            focused = await page.evaluate("document.activeElement.id")
            await code.fill(ui.next_code(secret))
            await page.get_by_role(
                "button", name="Confirm the new authenticator"
            ).click()
            done = page.locator("#mfa-done")
            await done.wait_for(state="visible")
            await page.screenshot(
                path=artefacts / "account-authenticator-enrolled.png", full_page=True
            )
            return {
                "secret": secret,
                "qr_src": await page.get_attribute("#mfa-qr", "src"),
                "focused": focused,
                "done": await done.text_content(),
                **await _clean(page, log),
            }

    seen = await chromium.run(flow)

    assert seen["secret"] and seen["secret"] != ui.alice.totp_secret
    assert (seen["qr_src"] or "").startswith("data:image/svg+xml;base64,")
    assert seen["focused"] == "mfa-otp"
    assert "new authenticator is enrolled" in seen["done"]
    assert seen["violations"] == [] and seen["errors"] == []
    assert not await _can_log_in(ui, ui.alice.password, ui.alice.totp_secret)
    assert await _can_log_in(ui, ui.alice.password, seen["secret"])


@pytest_twisted.ensureDeferred
async def test_after_logging_out_the_old_token_is_refused(
    chromium: BrowserThread, ui: UI, artefacts: Path
) -> None:
    """Log out ends the session in the auth service: the cookie and bearer
    the browser held, sent again, are a 401; the browser forgot both."""

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, _log):
            await _logged_in(page, ui)
            stored = await page.evaluate(
                "JSON.parse(localStorage.getItem('teleconch.session'))"
            )
            (cookie,) = [
                c for c in await page.context.cookies() if c["name"] == "__Host-session"
            ]
            before = await page.evaluate(
                "async (token) => (await fetch('/v1/webapi/sites',"
                " {headers: {Authorization: 'Bearer ' + token}})).status",
                stored["token"],
            )
            await page.get_by_role("button", name="Log out").click()
            await page.wait_for_url("**/web/login")
            await page.screenshot(path=artefacts / "logged-out.png", full_page=True)
            seen = {
                "secrets": webclient.Secrets(cookie["value"], stored["token"]),
                "before": before,
                "stored_after": await page.evaluate(
                    "localStorage.getItem('teleconch.session')"
                ),
                "cookies_after": [c["name"] for c in await page.context.cookies()],
            }
            await page.goto(ui.base + "/web/nodes")
            await page.wait_for_url("**/web/login?next=%2Fweb%2Fnodes")
            return seen

    seen = await chromium.run(flow)

    assert seen["before"] == 200
    assert seen["stored_after"] is None and seen["cookies_after"] == []
    after = await webclient.call(
        ui.cluster.web_addr, "GET", "/v1/webapi/sites", None, seen["secrets"]
    )
    assert after.code == 401
    assert "log in again" in after.body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_a_page_opened_without_a_session_logs_in_and_comes_back(
    chromium: BrowserThread, ui: UI, artefacts: Path
) -> None:
    """/web/sessions without a session goes to the login page and, logged in,
    back to itself, listing the live session a proxy registered: user,
    node, login, start, parties and how one may join (here: not at all)."""
    web1 = ui.nodes[0]
    now = ui.cluster.clock.seconds()
    proxy = ui.cluster.service.proxy
    assert proxy is not None and proxy.agent is not None
    live = ActiveSession(
        "session-of-bob", "bob", "web1", web1.id, web1.addr, "root", "testhost",
        now, now, 80, 24, (Party("party-1", "bob", "192.0.2.9", last_active=now),),
    )  # fmt: skip
    await proxy.agent.upsert_active_session(live)

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            await page.goto(ui.base + "/web/sessions")
            await page.wait_for_url("**/web/login?next=%2Fweb%2Fsessions")
            await _log_in(page, ui)
            await page.wait_for_url("**/web/sessions")
            await page.wait_for_selector("#sessions tbody tr")
            await page.screenshot(path=artefacts / "sessions.png", full_page=True)
            row = page.locator("#sessions tbody tr")
            return {
                "rows": await row.count(),
                "cells": await row.first.locator("td").all_text_contents(),
                **await _clean(page, log),
            }

    try:
        seen = await chromium.run(flow)
    finally:
        await proxy.agent.end_active_session(live.id, 0, "the test is over")

    assert seen["rows"] == 1
    user, node, login, started, parties, join = seen["cells"]
    assert (user, node, login) == ("bob", "web1", "root")
    assert started and parties == "bob, peer (192.0.2.9)"
    assert join.strip() == ""  # bob's session: no rule lets this person join it
    assert seen["violations"] == [] and seen["errors"] == []


@pytest_twisted.ensureDeferred
async def test_the_login_form_and_the_header_work_by_keyboard_alone(
    chromium: BrowserThread, ui: UI
) -> None:
    """Focus starts in Username; Tab goes to Password and One-time code; Enter
    logs in.  On the nodes page Tab reaches Log out, and Enter logs out."""

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, _log):
            await page.goto(ui.base + "/web/login")
            active = "document.activeElement.id"
            order = [await page.evaluate(active)]
            await page.keyboard.type(ui.alice.name)
            await page.keyboard.press("Tab")
            order.append(await page.evaluate(active))
            await page.keyboard.type(ui.alice.password)
            await page.keyboard.press("Tab")
            order.append(await page.evaluate(active))
            await page.keyboard.type(ui.next_code())
            await page.keyboard.press("Enter")
            await page.wait_for_url("**/web/nodes")
            await page.wait_for_selector("#nodes tbody tr")
            tabs = 0
            while (
                await page.evaluate("document.activeElement.textContent") != "Log out"
            ):
                await page.keyboard.press("Tab")
                tabs += 1
                assert tabs < 30, "Log out is not reachable by Tab"
            await page.keyboard.press("Enter")
            await page.wait_for_url("**/web/login")
            return {"order": order, "tabs": tabs}

    seen = await chromium.run(flow)

    assert seen["order"] == ["user", "password", "otp"]
    assert seen["tabs"] <= 6  # the brand, three links, then Log out


@pytest_twisted.ensureDeferred
async def test_no_page_breaks_its_content_security_policy_or_throws(
    chromium: BrowserThread, ui: UI
) -> None:
    """Every page, loaded and used, under the strict CSP: no violation, no
    uncaught error, no console error; and the watch would have seen one."""

    async def flow(browser: Browser) -> dict[str, Any]:
        async with open_page(browser) as (page, log):
            found: dict[str, Any] = {}
            response = await page.goto(ui.base + "/web/login")
            assert response is not None
            found["csp"] = await response.header_value("content-security-policy")
            found["login"] = await _clean(page, log)
            await _log_in(page, ui)
            await page.wait_for_url("**/web/nodes")
            await page.wait_for_selector("#nodes tbody tr")
            await page.get_by_label("Search").fill("env=prod")
            found["nodes"] = await _clean(page, log)
            for name, ready in [("sessions", "#loading"), ("account", "#mfa-start")]:
                await page.get_by_role("link", name=name.capitalize()).click()
                await page.wait_for_url(f"**/web/{name}")
                await page.wait_for_selector(
                    ready, state="hidden" if name == "sessions" else "visible"
                )
                found[name] = await _clean(page, log)
            await page.evaluate(
                "() => { const s = document.createElement('style');"
                " s.textContent = 'body { color: red; }'; document.head.append(s); }"
            )
            await page.wait_for_function("() => window.__cspViolations.length > 0")
            found["control"] = await page.evaluate("window.__cspViolations")
            return found

    seen = await chromium.run(flow)

    assert seen["csp"] and "script-src 'self'" in seen["csp"]
    assert "'unsafe-inline'" not in seen["csp"]
    for name in ["login", "nodes", "sessions", "account"]:
        assert seen[name] == {"violations": [], "errors": [], "console": []}, (
            name,
            json.dumps(seen[name]),
        )
    assert [v for v in seen["control"] if v.startswith("style-src")]
