"""A web terminal session is recorded, uploaded, listed and exported.

Interop: the cluster in this process, Debian's OpenSSH sshd as the node,
Debian's Chromium (Playwright) typing in the web terminal, the real
``teleconch-ctl`` and ``asciinema`` 2.4.0 (``asciinema cat``) as programs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from playwright.async_api import Browser

from tests.browser import BrowserThread, open_page
from tests.harness import run, wait_for_events
from tests.test_web_terminal import (
    Node,
    a_node,
    log_in_to_console,
    type_line,
    wait_connected,
    wait_for_line,
)

pytestmark = pytest.mark.interop


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with a_node(tmp_path) as n:
        yield n


def _ctl(node: Node, *argv: str) -> list[str]:
    cluster = node.cluster
    return ["teleconch-ctl", "--data-dir", str(cluster.data_dir), "--auth-server",
            str(cluster.auth_addr), "recordings", *argv]  # fmt: skip


async def _echo_and_exit(
    chromium: BrowserThread, node: Node, word: str, status: int
) -> str:
    """In the browser's terminal: ``echo WORD-$((6*7))``, its output seen,
    then ``exit STATUS``; the session's id."""
    seen: dict[str, str] = {}

    async def session(browser: Browser) -> None:
        async with open_page(browser) as (page, _log):
            await log_in_to_console(page, node, "/web/console/web1/root")
            await wait_connected(page)
            await type_line(page, f"echo {word}-$((6*7))")
            await wait_for_line(page, f"{word}-42")
            seen["id"] = await page.evaluate("window.teleconchConsole.sessionId")
            await type_line(page, f"exit {status}")
            await page.wait_for_function(
                "s => document.getElementById('status').textContent.includes(s)",
                arg=f"exited with status {status}",
            )

    await chromium.run(session)
    return seen["id"]


@pytest_twisted.ensureDeferred
async def test_the_output_of_a_web_terminal_session_is_in_its_asciicast_export(
    chromium: BrowserThread, node: Node, tmp_path: Path
) -> None:
    """``echo`` in the browser's terminal, then ``exit 4``: the recording is
    uploaded (session.upload audited), listed complete by ``teleconch-ctl
    recordings ls``, and its ``export --format asciicast`` is asciicast v2
    that ``asciinema cat`` plays back with the echo's output; ``rm``
    removes it."""
    sid = await _echo_and_exit(chromium, node, "recorded", 4)
    (upload,) = await wait_for_events(node.cluster, "session.upload")
    assert upload.fields["session_id"] == sid and upload.user == node.alice.name

    r = await run(_ctl(node, "ls", "--format", "json"))
    assert r.code == 0, r.err
    (listed,) = json.loads(r.out)
    assert listed["id"] == sid and listed["complete"] is True
    assert (listed["user"], listed["node"], listed["login"]) == (
        node.alice.name, "web1", "root",
    )  # fmt: skip
    assert listed["duration_ms"] > 0 and listed["size"] > 0

    r = await run(_ctl(node, "export", sid, "--format", "asciicast"))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] > 0 and header["height"] > 0
    times = [json.loads(line)[0] for line in lines[1:]]
    assert times == sorted(times)
    cast = tmp_path / "session.cast"
    cast.write_text(r.out)
    played = await run(["asciinema", "cat", str(cast)])
    assert played.code == 0, played.err
    assert "recorded-42" in played.out

    r = await run(_ctl(node, "export", sid, "--format", "json"))
    events = [json.loads(line) for line in r.out.splitlines()]
    assert (
        events[0]["event"] == "session.start" and events[-1]["event"] == "session.end"
    )
    assert events[-1]["exit_code"] == 4

    r = await run(_ctl(node, "rm", sid))
    assert r.code == 0, r.err
    r = await run(_ctl(node, "export", sid))
    assert r.code == 1 and "no recording" in r.err


@pytest_twisted.ensureDeferred
async def test_with_record_input_on_what_is_typed_in_a_web_terminal_is_in_the_recording(
    chromium: BrowserThread, tmp_path: Path
) -> None:
    """``auth_service.record_input: yes``: the keys typed in the browser are
    in the recording as input events (json export) and "i" lines (asciicast,
    still played by ``asciinema cat``), alongside the output; ``recordings
    ls --user --node --since`` finds it."""
    raw = {"auth_service": {"record_input": True}}
    async with a_node(tmp_path, raw=raw) as node:
        sid = await _echo_and_exit(chromium, node, "typed", 0)
        await wait_for_events(node.cluster, "session.upload")
        ls = ["ls", "--format", "json", "--node", "web1", "--since", "1h"]
        r = await run(_ctl(node, *ls, "--user", node.alice.name))
        assert r.code == 0, r.err
        assert [x["id"] for x in json.loads(r.out)] == [sid]
        r = await run(_ctl(node, *ls, "--user", "nobody"))
        assert r.code == 0 and json.loads(r.out) == []
        r = await run(_ctl(node, *ls, "--since", "soon"))
        assert r.code == 1 and "neither a duration ago" in r.err
        r = await run(_ctl(node, "export", sid, "--format", "json"))
        assert r.code == 0, r.err
        events = [json.loads(line) for line in r.out.splitlines()]
        typed = "".join(e["data"] for e in events if e["event"] == "input")
        assert "echo typed-$((6*7))\r" in typed and typed.endswith("exit 0\r")
        shown = "".join(e["data"] for e in events if e["event"] == "print")
        assert "typed-42" in shown

        r = await run(_ctl(node, "export", sid, "--format", "asciicast"))
        assert r.code == 0, r.err
        lines = [json.loads(line) for line in r.out.splitlines()[1:]]
        assert "echo typed-$((6*7))" in "".join(t for _, k, t in lines if k == "i")
        cast = tmp_path / "typed.cast"
        cast.write_text(r.out)
        played = await run(["asciinema", "cat", str(cast)])
        assert played.code == 0, played.err
        assert "typed-42" in played.out
