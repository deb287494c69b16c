"""Registering nodes and signing their host keys, checked with a real sshd and ssh."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.harness import Cluster, current_code, run, sign_up, start_cluster
from tests.sshd import start_sshd

pytestmark = pytest.mark.interop


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


def ctl(c: Cluster, *args: str) -> list[str]:
    return [
        "teleconch-ctl",
        "--data-dir",
        str(c.data_dir),
        "--auth-server",
        str(c.auth_addr),
        *args,
    ]


@pytest_twisted.ensureDeferred
async def test_nodes_are_added_listed_and_removed(cluster: Cluster) -> None:
    """`nodes add/ls/rm` keep the node's address and labels; bad input is refused."""
    r = await run(
        ctl(
            cluster,
            "nodes",
            "add",
            "--name",
            "web1",
            "--addr",
            "127.0.0.1:2222",
            "--labels",
            "env=prod,role=web",
        )
    )
    assert r.code == 0, r.err
    r = await run(ctl(cluster, "nodes", "ls"))
    # A node added by hand has no certificate from the auth service: "-".
    assert re.search(r"web1\s+127\.0\.0\.1:2222\s+env=prod,role=web\s+-\s", r.out), (
        r.out
    )
    assert "Cert expires" in r.out.splitlines()[0]
    r = await run(ctl(cluster, "nodes", "add", "--name", "bad name", "--addr", "x:1"))
    assert r.code == 1 and "not a valid node name" in r.err
    r = await run(ctl(cluster, "nodes", "add", "--name", "db1", "--addr", "nohost"))
    assert r.code == 1 and "--addr" in r.err
    r = await run(ctl(cluster, "nodes", "rm", "web1"))
    assert r.code == 0
    r = await run(ctl(cluster, "nodes", "rm", "web1"))
    assert r.code == 1 and "no node 'web1'" in r.err


@pytest_twisted.ensureDeferred
async def test_a_logged_in_user_reaches_an_sshd_node_with_no_prompt(
    cluster: Cluster, tmp_path: Path
) -> None:
    """auth sign + TrustedUserCAKeys: plain ssh with the login's files, strict host checking."""
    prefix = tmp_path / "node" / "web1"
    prefix.parent.mkdir()
    r = await run(
        ctl(
            cluster,
            "auth",
            "sign",
            "--host",
            "web1",
            "--format",
            "openssh",
            "--out",
            str(prefix),
        )
    )
    assert r.code == 0, r.err
    assert f"HostCertificate {prefix}-cert.pub" in r.out
    r = await run(["ssh-keygen", "-L", "-f", f"{prefix}-cert.pub"])
    assert "host certificate" in r.out
    assert re.search(r"Principals:\s*\n\s+web1\n\s+web1\.test\.example\n", r.out), r.out

    user_ca = (await cluster.admin_agent().export_ca("user"))[0]
    sshd = await start_sshd(
        tmp_path / "sshd", prefix, Path(f"{prefix}-cert.pub"), [user_ca]
    )
    try:
        alice = await sign_up(cluster, logins=("root",))
        home = tmp_path / "tsh"
        code = current_code(alice.totp_secret, cluster.clock)
        r = await run(
            [
                "teleconch",
                "login",
                "--proxy",
                str(cluster.web_addr),
                "--user",
                "alice",
                "--insecure",
            ],
            env={"TELECONCH_HOME": str(home)},
            stdin=f"{alice.password}\n{code}\n".encode(),
        )
        assert r.code == 0, r.err
        key = home / "keys" / "127.0.0.1" / "alice"
        r = await run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(key),
                "-p",
                str(sshd.port),
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={home / 'known_hosts'}",
                "-o",
                "HostKeyAlias=web1.test.example",
                "root@127.0.0.1",
                "echo",
                "reached",
                "$SSH_CONNECTION",
            ],
        )
        assert r.code == 0, r.err + sshd.log
        assert r.out.startswith("reached")
        assert re.search(
            r"Accepted publickey for root .* ED25519-CERT SHA256:\S+ ID alice ",
            sshd.log,
        )
    finally:
        await sshd.stop()
