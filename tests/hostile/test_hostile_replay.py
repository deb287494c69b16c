"""The hostile-input probe, replayed against a live cluster on 127.0.0.1.

Interop: the cluster (auth, proxy SSH, proxy web) runs in this process; the
node is a real OpenSSH sshd and the checks before and after the barrage run
the real OpenSSH client (`ssh -J` through the proxy).

Every case opens its own connection from its own loopback address, sends one
malformed SSH, AMP, HTTP or JSON input, and reads until the server closes
(see ``judge`` for what counts as a protocol error, ``probe`` for the
budgets).  The test then asserts, in one message listing every failure:
each case ended with a protocol error; no traceback was logged; a real
login and a real ``ssh -J`` still work; RSS grew by less than 16 MiB.

Set HOSTILE_REPORT=/some/file to also write the failure list there.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor
from twisted.internet.task import deferLater

from teleconch import totp
from tests.harness import Person, current_code, sign_up
from tests.hostile.cases import Result
from tests.hostile.corpus import corpus
from tests.hostile.logwatch import LogWatch, Record, attribute
from tests.hostile.probe import Targets, replay
from tests.test_proxy import World, _rss

pytestmark = pytest.mark.interop

RSS_LIMIT = 16 * 1024 * 1024


def settled_rss() -> int:
    """RSS after a full collection, with freed heap handed back to the system.

    Without malloc_trim, memory the barrage's own buffers used and freed can
    stay in this process's heap and count as growth.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure as is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _rss()


def targets_of(world: World) -> Targets:
    c = world.cluster
    return Targets(
        ssh=("127.0.0.1", world.proxy_port),
        auth=(c.auth_addr.host, c.auth_addr.port),
        web=(c.web_addr.host, c.web_addr.port),
    )


async def real_login(world: World, person: Person) -> str | None:
    """POST /v1/webapi/ssh/certs with a good password and code; None if a cert came back."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pub = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    code = current_code(person.totp_secret, world.cluster.clock)
    try:
        issued = await world.cluster.web().ssh_certs(
            person.name, person.password, code, pub.decode(), 300
        )
    except Exception as e:
        return f"real login failed: {e!r}"
    finally:
        world.cluster.clock.advance(totp.STEP)  # a code is accepted once
    if not issued.get("cert", "").startswith("ssh-ed25519-cert-v01@openssh.com "):
        return f"real login returned no certificate: {issued!r}"
    return None


async def jump(world: World) -> str | None:
    """A real `ssh -J` through the proxy runs `echo ok` on the sshd node."""
    r = await world.ssh("-o", "ConnectTimeout=10", "-J", f"root@127.0.0.1:{world.proxy_port}",
                        "root@web1.test.example", "echo", "ok")  # fmt: skip
    if r.code != 0 or r.out != "ok\n":
        return f"ssh -J failed (exit {r.code}): {r.out!r} {r.err[-400:]!r}"
    return None


def failure_report(
    results: list[Result],
    by_case: dict[str, list[Record]],
    unplaced: list[tuple[Record, list[str]]],
) -> list[str]:
    """One line per failing case (and its log records), grouped by protocol."""
    lines: list[str] = []
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        if r.verdict is not None or r.case.id in by_case:
            groups[r.case.proto].append(r)
    totals = Counter(r.case.proto for r in results)
    for proto, failed in groups.items():
        lines.append(f"--- {proto}: {len(failed)} of {totals[proto]} cases failed")
        for r in failed:
            verdict = r.verdict or "ended with a protocol error, but logged a traceback"
            lines.append(f"{r.case.id} [{r.source}]: {verdict}")
            lines.extend(
                f"    log: {rec.summary()}" for rec in by_case.get(r.case.id, [])
            )
    for rec, running in unplaced:
        lines.append(
            f"unattributed log: {rec.summary()} (nearest cases: {running[:4]})"
        )
    return lines


def write_report(path: Path, report: str, results: list[Result]) -> None:
    """The failures, then how every case ended (for checking a fix case by case)."""
    every = [
        f"{r.case.id}: {r.outcome.ended} {r.outcome.detail[:200]}" for r in results
    ]
    path.write_text("\n".join([report, "", "--- every case", *every]) + "\n")


# Production does not turn warnings into errors; the suite must see what it does.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_every_hostile_input_ends_in_a_protocol_error_and_service_goes_on(
    world: World,
) -> None:
    """The probe's inputs each end with a protocol error; no traceback; logins still work."""
    problems: list[str] = []
    with LogWatch() as watch:
        bob = await sign_up(world.cluster, "bob", logins=("root",))
        for warm_up in (await real_login(world, bob), await jump(world)):
            assert warm_up is None, warm_up
        cases = corpus()
        before = settled_rss()
        started = reactor.seconds()
        results = await replay(cases, targets_of(world))
        took = reactor.seconds() - started
        growth = settled_rss() - before
        for after in (await real_login(world, bob), await jump(world)):
            if after is not None:
                problems.append("after the barrage: " + after)
        await deferLater(reactor, 0.2)  # late connectionLost logging
        gc.collect()  # and unhandled errors in garbage Deferreds
    by_case, unplaced = attribute(watch.bad(), results)
    problems = failure_report(results, by_case, unplaced) + problems
    if growth >= RSS_LIMIT:
        problems.append(f"RSS grew by {growth / 2**20:.1f} MiB (limit 16 MiB)")
    counts = ", ".join(f"{p} {n}" for p, n in Counter(c.proto for c in cases).items())
    header = (
        f"{len(cases)} cases ({counts}) in {took:.1f}s, RSS +{growth / 2**20:.1f} MiB"
    )
    report = "\n".join([header, *problems])
    if os.environ.get("HOSTILE_REPORT"):
        write_report(Path(os.environ["HOSTILE_REPORT"]), report, results)
    print(report)
    assert not problems, report
