"""``teleconch recordings ls|search`` and ``teleconch play`` as people run them.

Interop: the cluster in this process, Debian's OpenSSH sshd as the node,
Chromium (Playwright) typing in the web terminal to make a recording, then
the real ``teleconch`` command, which runs the real OpenSSH ``ssh`` to the
proxy's ``teleconch-recordings`` subsystem, logged in as alice (the owner),
bob (another user) and audrey (an auditor); ``asciinema cat`` (2.4.0) reads
the asciicast.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from playwright.async_api import Browser

from tests.browser import BrowserThread, open_page
from tests.harness import BIN, ProcessResult, run, sign_up, wait_for_events
from tests.test_proxy import _login
from tests.test_web_terminal import (
    Node,
    a_node,
    log_in_to_console,
    type_line,
    wait_connected,
    wait_for_line,
)

pytestmark = pytest.mark.interop


@attrs.frozen
class Recorded:
    node: Node
    sid: str
    homes: dict[str, Path]

    async def teleconch(self, who: str, *argv: str) -> ProcessResult:
        return await run(
            ["teleconch", *argv], env={"TELECONCH_HOME": str(self.homes[who])}
        )


async def _record(chromium: BrowserThread, node: Node) -> str:
    """A web terminal session of alice's that prints two lines three seconds apart."""
    seen: dict[str, str] = {}

    async def session(browser: Browser) -> None:
        async with open_page(browser) as (page, _log):
            await log_in_to_console(page, node, "/web/console/web1/root")
            await wait_connected(page)
            await type_line(
                page, "echo Recorded-$((6*7)); sleep 3; echo after-$((2+3))"
            )
            await wait_for_line(page, "after-5")
            seen["id"] = await page.evaluate("window.teleconchConsole.sessionId")
            await type_line(page, "exit")

    await chromium.run(session)
    (upload,) = await wait_for_events(node.cluster, "session.upload")
    assert upload.fields["session_id"] == seen["id"]
    return seen["id"]


@pytest_twisted.async_yield_fixture
async def recorded(chromium: BrowserThread, tmp_path: Path) -> AsyncIterator[Recorded]:
    """alice's recorded session; alice, bob and audrey (auditor) logged in."""
    async with a_node(tmp_path) as node:
        sid = await _record(chromium, node)
        c = node.cluster
        bob = await sign_up(c, "bob", logins=("root",))
        audrey = await sign_up(
            c, "audrey", logins=("root",), roles=("access", "auditor")
        )
        homes = {}
        for person in (node.alice, bob, audrey):
            home = tmp_path / f"home-{person.name}"
            await _login(c, home, person.name, person.password, person.totp_secret)
            homes[person.name] = home
        yield Recorded(node, sid, homes)


def _ids(r: ProcessResult) -> list[str]:
    assert r.code == 0, r.err
    return [entry["id"] for entry in json.loads(r.out)]


@pytest_twisted.ensureDeferred
async def test_recordings_ls_shows_a_recording_to_its_owner_and_an_auditor_only(
    recorded: Recorded,
) -> None:
    """alice's ls (table and JSON) has her session with its node and login;
    bob's does not, and his play of it is refused saying why; audrey the
    auditor sees it; --user and --since filter."""
    sid = recorded.sid
    table = await recorded.teleconch("alice", "recordings", "ls")
    assert table.code == 0, table.err
    header, _, row = table.out.splitlines()[:3]
    assert header.split()[:4] == ["ID", "User", "Node", "Login"]
    assert row.split()[:4] == [sid, "alice", "web1", "root"]
    listed = await recorded.teleconch("alice", "recordings", "ls", "--format", "json")
    (entry,) = json.loads(listed.out)
    assert (entry["id"], entry["kind"], entry["complete"]) == (sid, "web", True)
    assert (
        _ids(await recorded.teleconch("bob", "recordings", "ls", "--format", "json"))
        == []
    )
    assert _ids(
        await recorded.teleconch("audrey", "recordings", "ls", "--format", "json")
    ) == [sid]
    filtered = await recorded.teleconch(
        "audrey", "recordings", "ls", "--format", "json", "--user", "bob"
    )
    assert _ids(filtered) == []
    since = await recorded.teleconch(
        "audrey", "recordings", "ls", "--format", "json", "--since", "1h"
    )
    assert _ids(since) == [sid]
    refused = await recorded.teleconch("bob", "play", sid)
    assert refused.code == 1 and "not yours; ask an auditor" in refused.err
    assert "Traceback" not in refused.err
    denied = await wait_for_events(recorded.node.cluster, "recording.denied")
    assert denied[0].user == "bob"


@pytest_twisted.ensureDeferred
async def test_recordings_search_finds_a_session_by_a_word_it_printed(
    recorded: Recorded,
) -> None:
    """A word only the output has (the command line had $((6*7))), in another
    case, finds the session; a word never printed finds nothing; bob's search
    does not see alice's session."""
    found = await recorded.teleconch(
        "alice", "recordings", "search", "RECORDED-42", "--format", "json"
    )
    assert _ids(found) == [recorded.sid]
    none = await recorded.teleconch(
        "alice", "recordings", "search", "never-printed", "--format", "json"
    )
    assert _ids(none) == []
    bobs = await recorded.teleconch(
        "bob", "recordings", "search", "Recorded-42", "--format", "json"
    )
    assert _ids(bobs) == []


@pytest_twisted.ensureDeferred
async def test_play_prints_asciicast_json_events_and_timed_text(
    recorded: Recorded, tmp_path: Path
) -> None:
    """``play --format asciicast | asciinema cat -`` shows the output;
    ``--format json`` has session.start first and session.end last;
    ``--speed 8 --skip-idle`` text playback finishes with both lines."""
    home, sid = recorded.homes["alice"], recorded.sid
    pipeline = (
        f"{shlex.quote(str(BIN / 'teleconch'))} play --format asciicast {shlex.quote(sid)}"
        f" | {shlex.quote(str(BIN / 'asciinema'))} cat -"
    )
    cat = await run(["bash", "-o", "pipefail", "-c", pipeline],
                    env={"TELECONCH_HOME": str(home)})  # fmt: skip
    assert cat.code == 0, cat.err
    assert "Recorded-42" in cat.out and "after-5" in cat.out

    events = await recorded.teleconch("alice", "play", sid, "--format", "json")
    assert events.code == 0, events.err
    kinds = [json.loads(line)["event"] for line in events.out.splitlines()]
    assert kinds[0] == "session.start" and kinds[-1] == "session.end"
    assert "print" in kinds

    text = await recorded.teleconch("alice", "play", sid, "--speed", "8", "--skip-idle")
    assert text.code == 0, text.err
    assert "Recorded-42" in text.out and "after-5" in text.out
    assert text.out.index("Recorded-42") < text.out.index("after-5")
