"""Joining a live web terminal session with ``teleconch join`` (real OpenSSH).

Interop: the cluster runs in this process; the node is Debian's sshd with a
host certificate; the session's owner is a real WebSocket client on the
proxy's TLS terminal socket; the joiners run the real ``teleconch`` client,
which runs the real ``ssh -t`` on a pseudo-terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import attrs
import pytest
import pytest_twisted
from playwright.async_api import Browser
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import deferLater

from teleconch.auth.types import JoinRule, RoleSpec
from tests.browser import BrowserThread, code_for, open_page
from tests.harness import Person, current_code, run, sign_up, wait_for_events
from tests.join_clients import OwnerSocket, PtyProgram, until
from tests.test_web_terminal import Node, a_node, wait_for_line
from tests.webclient import log_in

pytestmark = pytest.mark.interop

TERM = {"server_id": "web1", "login": "root", "term": {"w": 80, "h": 24}}


@attrs.define
class Room:
    """alice's web terminal on web1, and two people logged in with teleconch:
    bob (role pair: may join access sessions as observer or peer) and carol
    (role access: no join rule)."""

    node: Node
    owner: OwnerSocket
    homes: dict[str, Path]

    def env(self, who: str) -> dict[str, str]:
        return {"TELECONCH_HOME": str(self.homes[who])}


async def _person(node: Node, tmp: Path, name: str, role: str) -> Path:
    """``name`` signed up and logged in with ``teleconch login``.  The clock
    moves on only for the sign-up's code: the auth service drops a live
    session it has not heard of for 90 s of its clock."""
    cluster = node.cluster
    person: Person = await sign_up(cluster, name, logins=(name,), roles=(role,))
    home = tmp / f"tsh-{name}"
    code = current_code(person.totp_secret, cluster.clock)
    r = await run(
        ["teleconch", "login", "--proxy", str(cluster.web_addr), "--user", name,
         "--insecure"],
        env={"TELECONCH_HOME": str(home)},
        stdin=f"{person.password}\n{code}\n".encode(),
    )  # fmt: skip
    assert r.code == 0, r.err
    return home


@pytest_twisted.async_yield_fixture
async def room(tmp_path: Path) -> AsyncIterator[Room]:
    async with a_node(tmp_path) as node:
        cluster = node.cluster
        await cluster.admin_agent().upsert_role(
            RoleSpec(
                "pair",
                logins=("{{internal.logins}}",),  # OpenSSH needs one for the proxy
                node_labels={"*": ("*",)},
                join_sessions=(JoinRule(("access",), ("observer", "peer")),),
            )
        )
        alice = node.alice
        secrets = await log_in(
            cluster.web_addr,
            alice.name,
            alice.password,
            current_code(alice.totp_secret, cluster.clock),
        )
        owner = OwnerSocket(cluster, secrets, TERM)
        await until(lambda: bool(owner.of_type("session")), "the session opening")
        await until(lambda: owner.output.rstrip().endswith((b"#", b"$")), "a prompt")
        # After alice's session is open: each sign-up moves the cluster's clock
        # on (one-time codes), and sshd would take the web session's
        # certificate for one from the future.
        homes = {
            "bob": await _person(node, tmp_path, "bob", "pair"),
            "carol": await _person(node, tmp_path, "carol", "access"),
        }
        try:
            yield Room(node, owner, homes)
        finally:
            owner.close()
            await _ended(node)


async def _ended(node: Node) -> None:
    """The session over and its recording uploaded, before the cluster stops."""
    proxy = node.cluster.service.proxy
    assert proxy is not None
    await until(lambda: len(proxy.terminal_sessions) == 0, "the session's end")
    await wait_for_events(node.cluster, "session.upload")


@pytest_twisted.ensureDeferred
async def test_teleconch_join_sees_the_owners_output_and_an_observers_keys_are_dropped(
    room: Room,
) -> None:
    """bob lists the session with ``teleconch sessions ls`` and joins it as an
    observer in a terminal: the banner, the owner's output; what bob types
    never reaches the shell (the owner's echo of a later line shows none of
    it); Ctrl-] leaves with status 0.  Each side sees the other come and
    go, and the audit log has session.join and session.leave for bob.
    Joined again as a peer, bob's keys do reach the shell."""
    owner, sid = room.owner, room.owner.session_id
    r = await run(["teleconch", "sessions", "ls", "--format", "json"], room.env("bob"))
    assert r.code == 0, r.err
    [listed] = json.loads(r.out)
    assert (listed["id"], listed["user"], listed["node"]) == (sid, "alice", "web1")
    assert listed["modes"] == ["observer", "peer"]
    assert listed["parties"] == [{"user": "alice", "mode": "owner"}]

    bob = PtyProgram(["teleconch", "join", sid], room.env("bob"))
    try:
        await until(lambda: b"as observer (your keys are not sent)" in bob.output,
                    "bob's banner")  # fmt: skip
        await until(
            lambda: any(m["action"] == "joined" for m in owner.of_type("party")),
            "alice hearing of bob",
        )
        [joined] = owner.of_type("party")
        assert joined["message"] == "bob joined the session as observer"
        owner.type(b"echo own$((6*7))\r")
        await until(lambda: b"own42" in bob.output, "the owner's output at bob's")
        bob.type(b"echo bob-was-here\r")
        owner.type(b"echo mark$((1+1))\r")
        await until(lambda: b"mark2" in owner.output, "the owner's next line")
        assert b"bob-was-here" not in owner.output
        bob.type(b"\x1d")
        assert await bob.done == 0
    finally:
        bob.kill()
    assert b"you left the session" in bob.output
    await until(
        lambda: any(m["action"] == "left" for m in owner.of_type("party")),
        "alice hearing bob leave",
    )
    (join,) = await wait_for_events(room.node.cluster, "session.join", user="bob")
    assert join.success and join.fields["mode"] == "observer"
    assert join.fields["session_id"] == sid and join.fields["node"] == "web1"
    (leave,) = await wait_for_events(room.node.cluster, "session.leave", user="bob")
    assert leave.fields["reason"] == "left with Ctrl-]"

    peer = PtyProgram(["teleconch", "join", sid, "--mode", "peer"], room.env("bob"))
    try:
        await until(lambda: b"as peer (you type)" in peer.output, "the peer's banner")
        peer.type(b"echo peer$((2*3))\r")
        await until(lambda: b"peer6" in owner.output, "the peer's line in the shell")
        peer.type(b"\x1d")
        assert await peer.done == 0
    finally:
        peer.kill()


@pytest_twisted.ensureDeferred
async def test_a_join_no_role_allows_is_refused_saying_why_and_audited(
    room: Room,
) -> None:
    """carol's roles have no join_sessions rule: she lists no session, and
    ``teleconch join`` exits 1 saying why; the refusal is a failed
    session.join in the audit log; alice's session goes on untouched."""
    sid = room.owner.session_id
    r = await run(
        ["teleconch", "sessions", "ls", "--format", "json"], room.env("carol")
    )
    assert r.code == 0, r.err
    assert json.loads(r.out) == []
    r = await run(["teleconch", "join", sid], room.env("carol"))
    assert r.code == 1
    assert "do not allow joining alice's sessions as observer" in r.err, r.err
    (refused,) = await wait_for_events(room.node.cluster, "session.join", user="carol")
    assert not refused.success and refused.fields["reason"] == "join not allowed"
    assert refused.fields["session_id"] == sid
    assert room.owner.of_type("party") == [] and room.owner.closed is None


@pytest_twisted.ensureDeferred
async def test_an_auditor_observes_from_the_sessions_page_in_chromium(
    chromium: BrowserThread, room: Room
) -> None:
    """dana (built-in auditor: no node of her own) opens /web/sessions in
    Chromium, clicks Observe on alice's session: her console says her keys
    are not sent and shows alice's output; alice's socket hears that dana
    joined, and dana's console shows who comes and goes."""
    cluster, owner = room.node.cluster, room.owner
    dana = await sign_up(cluster, "dana", logins=(), roles=("auditor",))
    # Her sign-up moved the cluster's clock on again: alice resizes, and the
    # session is registered anew before the auth service takes it for gone.
    assert owner.protocol is not None
    owner.protocol.sendMessage(json.dumps({"type": "resize", "cols": 100, "rows": 30})
                               .encode(), False)  # fmt: skip

    async def registered() -> bool:
        live = await cluster.admin_agent().list_active_sessions()
        return any(s.cols == 100 for s in live)

    for _ in range(200):
        if await registered():
            break
        await deferLater(reactor, 0.05)
    codes = code_for(cluster)
    node = room.node

    async def observe(browser: Browser) -> None:
        async with open_page(browser) as (page, log):
            await page.goto(node.url("/web/sessions"))
            await page.wait_for_url(re.compile(r"/web/login\?next="))
            await page.get_by_label("Username").fill("dana")
            await page.get_by_label("Password").fill(dana.password)
            await page.get_by_label("One-time code").fill(codes(dana.totp_secret))
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url(re.compile(r"/web/sessions$"))
            await page.get_by_role("link", name="Observe").click()
            await page.wait_for_url(
                re.compile(r"/web/console/session/.+\?mode=observer")
            )
            await page.wait_for_function(
                "() => document.getElementById('status').textContent"
                ".includes('your keys are not sent')"
            )
            # the owner's socket is the reactor's: typed from its thread
            threads = cast(IReactorFromThreads, reactor)
            threads.callFromThread(owner.type, b"echo seen$((40+2))\r")
            await wait_for_line(page, "seen42")
            await page.wait_for_function(
                "() => document.getElementById('notices').textContent"
                ".includes('bob joined the session as observer')",
                timeout=30_000,
            )
            assert log.errors == [], log.errors

    async def bob_joins() -> None:
        await until(lambda: any(m["user"] == "dana" for m in owner.of_type("party")),
                    "alice hearing of dana")  # fmt: skip
        bob = PtyProgram(["teleconch", "join", owner.session_id], room.env("bob"))
        try:
            await until(lambda: b"you joined" in bob.output, "bob's join")
            await chromium_done
        finally:
            bob.kill()

    chromium_done = chromium.run(observe)
    await bob_joins()
    dana_seen = [m["message"] for m in owner.of_type("party") if m["user"] == "dana"]
    assert dana_seen[0] == "dana joined the session as observer"
