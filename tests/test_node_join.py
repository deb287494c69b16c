"""`teleconch join openssh`: a real sshd joins itself, is reached, and renews.

Interop: the cluster runs in this process; `teleconch join openssh`,
`teleconch login`, `teleconch ssh` and `teleconch-ctl` are real
subprocesses, and sshd, ssh and ssh-keygen are the Debian OpenSSH programs,
all on 127.0.0.1.  sshd's config lives in a temporary directory
(`--sshd-config`), and nothing is reloaded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import pytest_twisted

from teleconch.client.sshd_setup import DROPIN_NAME
from tests.harness import (
    Cluster,
    ProcessResult,
    current_code,
    run,
    sign_up,
    start_cluster,
    wait_for_events,
)
from tests.sshd import free_port, run_sshd

pytestmark = pytest.mark.interop

MAIN_CONFIG = """\
# A test sshd: no host key of its own until teleconch's drop-in gives one.
Port {port}
ListenAddress 127.0.0.1
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
StrictModes no
PermitRootLogin yes
LogLevel VERBOSE
"""


@attrs.define
class Node:
    """A cluster, and a node directory with an sshd_config that is not running yet."""

    cluster: Cluster
    tmp: Path
    port: int

    @property
    def etc(self) -> Path:
        return self.tmp / "etc"

    @property
    def sshd_config(self) -> Path:
        return self.tmp / "ssh" / "sshd_config"

    @property
    def dropin(self) -> Path:
        return self.tmp / "ssh" / "sshd_config.d" / DROPIN_NAME

    async def ctl(self, *args: str) -> ProcessResult:
        c = self.cluster
        return await run(["teleconch-ctl", "--data-dir", str(c.data_dir),
                          "--auth-server", str(c.auth_addr), *args])  # fmt: skip

    async def token(self) -> tuple[str, str]:
        """A node token and the CA pin, from `tokens add --type=node`'s command."""
        r = await self.ctl("tokens", "add", "--type=node")
        assert r.code == 0, r.err
        m = re.search(
            r"^teleconch join openssh --proxy (\S+) --token (\S+) --ca-pin (\S+) "
            r"--name NAME --addr HOST:22$",
            r.out,
            re.MULTILINE,
        )
        assert m, r.out
        return m.group(2), m.group(3)

    async def join(self, *args: str, name: str = "web1") -> ProcessResult:
        return await run(["teleconch", "join", "openssh",
                          "--proxy", str(self.cluster.web_addr),
                          "--name", name, "--addr", f"127.0.0.1:{self.port}",
                          "--labels", "env=test,role=web",
                          "--sshd-config", str(self.sshd_config),
                          "--dir", str(self.etc), "--insecure", *args])  # fmt: skip

    async def nodes(self) -> list[dict[str, object]]:
        r = await self.ctl("nodes", "ls", "--format", "json")
        assert r.code == 0, r.err
        nodes: list[dict[str, object]] = json.loads(r.out)
        return nodes


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    cluster = await start_cluster(tmp_path / "data")
    try:
        port = free_port()
        config = tmp_path / "ssh" / "sshd_config"
        config.parent.mkdir()
        config.write_text(MAIN_CONFIG.format(port=port))
        os.makedirs("/run/sshd", exist_ok=True)
        yield Node(cluster, tmp_path, port)
    finally:
        await cluster.stop()


def _expiry(cert: Path, keygen_out: str) -> str:
    m = re.search(r"Valid: from \S+ to (\S+)", keygen_out)
    assert m, keygen_out
    return m.group(1)


@pytest_twisted.ensureDeferred
async def test_a_node_joins_itself_is_reached_with_teleconch_ssh_and_renews(
    node: Node,
) -> None:
    """The command `tokens add --type=node` prints joins the sshd: host key
    made here, host certificate naming web1 and web1.<cluster>, the user CA,
    a drop-in Included at the top of sshd_config; `teleconch ssh root@web1`
    reaches it with no prompt; run again without a token, it renews the
    certificate for the same node, and `nodes ls` shows the later expiry."""
    token, pin = await node.token()
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 0, r.out + r.err
    assert "Node 'web1' joined cluster 'test.example'" in r.out
    key = node.etc / "ssh_host_ed25519_key"
    cert = node.etc / "ssh_host_ed25519_key-cert.pub"
    assert key.stat().st_mode & 0o777 == 0o600
    assert cert.stat().st_mode & 0o777 == 0o644
    assert (node.etc / "user_ca.pub").stat().st_mode & 0o777 == 0o644
    main = node.sshd_config.read_text()
    assert main.splitlines()[2] == f"Include {node.dropin}"
    assert f"TrustedUserCAKeys {node.etc / 'user_ca.pub'}" in node.dropin.read_text()

    r = await run(["ssh-keygen", "-L", "-f", str(cert)])
    assert "host certificate" in r.out
    assert re.search(r"Principals:\s*\n\s+web1\n\s+web1\.test\.example\n", r.out), r.out
    first_expiry = _expiry(cert, r.out)

    [listed] = await node.nodes()
    assert listed["name"] == "web1" and listed["addr"] == f"127.0.0.1:{node.port}"
    assert listed["labels"] == {"env": "test", "role": "web"}
    node_id, first_cert_expires = listed["id"], listed["cert_expires"]
    assert isinstance(first_cert_expires, float | int)
    events = await wait_for_events(node.cluster, "node.join")
    assert events[-1].success and events[-1].fields["node"] == "web1"
    assert token not in json.dumps([e.to_json() for e in events])

    sshd = await run_sshd(node.sshd_config, node.port)
    try:
        alice = await sign_up(node.cluster, logins=("root",))
        home = node.tmp / "tsh"
        code = current_code(alice.totp_secret, node.cluster.clock)
        r = await run(["teleconch", "login", "--proxy", str(node.cluster.web_addr),
                       "--user", "alice", "--insecure"],
                      env={"TELECONCH_HOME": str(home)},
                      stdin=f"{alice.password}\n{code}\n".encode())  # fmt: skip
        assert r.code == 0, r.err
        r = await run(["teleconch", "ssh", "root@web1", "echo", "ok"],
                      env={"TELECONCH_HOME": str(home)})  # fmt: skip
        assert (r.code, r.out) == (0, "ok\n"), r.err + sshd.log
        assert re.search(r"Accepted publickey for root .* ID alice ", sshd.log)
    finally:
        await sshd.stop()

    # The cluster's clock is ahead by now (the sign-up moved it a TOTP step),
    # well within the 5 minutes a renewal's timestamp may be off.
    r = await node.join()
    assert r.code == 0, r.out + r.err
    assert "Renewed the host certificate of node 'web1'" in r.out
    assert "cron" in r.out and "--renew" in r.out
    r = await run(["ssh-keygen", "-L", "-f", str(cert)])
    assert _expiry(cert, r.out) > first_expiry
    [listed] = await node.nodes()
    assert listed["id"] == node_id
    assert float(listed["cert_expires"]) > float(first_cert_expires)  # type: ignore[arg-type]
    r = await node.ctl("nodes", "ls")
    assert re.search(
        r"web1\s+127\.0\.0\.1:\d+\s+env=test,role=web\s+\d{4}-\d\d-\d\dT", r.out
    )
    events = await wait_for_events(node.cluster, "node.renew")
    assert events[-1].success and events[-1].fields["id"] == node_id
    # The sshd_config was changed once: the Include is there, not twice.
    assert node.sshd_config.read_text().count("Include ") == 1


@pytest_twisted.ensureDeferred
async def test_a_used_token_is_refused(node: Node) -> None:
    """A node token joins once: a second node with it is refused, and audited."""
    token, pin = await node.token()
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 0, r.err
    other = attrs.evolve(node, tmp=node.tmp / "other")
    other.sshd_config.parent.mkdir(parents=True)
    other.sshd_config.write_text(MAIN_CONFIG.format(port=node.port))
    r = await other.join("--token", token, "--ca-pin", pin, name="web2")
    assert r.code == 1
    assert "invalid, expired or already used" in r.err
    assert (
        not other.dropin.exists()
        and not other.etc.joinpath("ssh_host_ed25519_key").exists()
    )
    events = await wait_for_events(node.cluster, "node.join", count=2)
    assert not events[-1].success
    assert events[-1].fields["reason"] == "unknown token or wrong type"
    assert [n["name"] for n in await node.nodes()] == ["web1"]


@pytest_twisted.ensureDeferred
async def test_a_wrong_ca_pin_writes_nothing_and_keeps_the_token(node: Node) -> None:
    """With the wrong --ca-pin nothing is written and the token is not used:
    the same token then joins with the right pin."""
    token, pin = await node.token()
    before = node.sshd_config.read_text()
    r = await node.join("--token", token, "--ca-pin", "sha256:" + "0" * 64)
    assert r.code == 1
    assert f"has CA pin {pin}, not sha256:000" in r.err
    assert "the token was not used" in r.err
    assert not node.etc.exists() and not node.dropin.exists()
    assert node.sshd_config.read_text() == before
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 0, r.err


@pytest_twisted.ensureDeferred
async def test_a_name_taken_by_a_registered_node_is_refused(node: Node) -> None:
    """A node registered by hand keeps its name: the join says to remove it
    first or pick another --name, and writes nothing."""
    r = await node.ctl("nodes", "add", "--name", "web1", "--addr", "10.0.0.9:22")
    assert r.code == 0, r.err
    token, pin = await node.token()
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 1
    assert "`teleconch-ctl nodes rm web1`" in r.err and "--name" in r.err
    assert not node.dropin.exists() and not (node.etc / "ssh_host_ed25519_key").exists()
    # The refusal came before the token was spent: it joins under another name.
    r = await node.join("--token", token, "--ca-pin", pin, name="web9")
    assert r.code == 0, r.err


@pytest_twisted.ensureDeferred
async def test_an_sshd_config_sshd_refuses_is_rolled_back_and_costs_no_token(
    node: Node,
) -> None:
    """When `sshd -t` refuses the result, the drop-in goes, sshd_config is
    restored byte for byte, the exit status is 1 with sshd's words, and the
    token was not used (it joins once the config is fixed)."""
    broken = node.sshd_config.read_text() + "NoSuchOption yes\n"
    node.sshd_config.write_text(broken)
    token, pin = await node.token()
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 1
    assert "Bad configuration option: NoSuchOption" in r.err
    assert "restored" in r.err and "token was not used" in r.err
    assert node.sshd_config.read_text() == broken
    assert not node.dropin.exists()
    assert not (node.etc / "ssh_host_ed25519_key").exists()
    assert await node.nodes() == []
    node.sshd_config.write_text(MAIN_CONFIG.format(port=node.port))
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 0, r.err


@pytest_twisted.ensureDeferred
async def test_renew_without_an_identity_asks_for_a_token(node: Node) -> None:
    """--renew on a node that never joined says to join with a token first."""
    r = await node.join("--renew")
    assert r.code == 1 and "join first with --token" in r.err


@pytest_twisted.ensureDeferred
async def test_a_removed_node_joins_again_with_a_new_token(node: Node) -> None:
    """After `nodes rm`, its identity renews nothing; the join command with a
    new token joins it again (a new host key and id), still one node."""
    token, pin = await node.token()
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 0, r.err
    [first] = await node.nodes()
    r = await node.ctl("nodes", "rm", "web1")
    assert r.code == 0, r.err
    r = await node.join()
    assert r.code == 1 and "join again with a token" in r.err
    token, pin = await node.token()
    r = await node.join("--token", token, "--ca-pin", pin)
    assert r.code == 0, r.err
    assert "joining it again with the token" in r.out
    [again] = await node.nodes()
    assert again["name"] == "web1" and again["id"] != first["id"]
