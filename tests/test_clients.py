"""The command-line clients as a person runs them, against a real cluster.

`teleconch login/status/logout` with a real ssh-agent, `teleconch-ctl` for
users, roles, tokens and CA export, checked with the real `ssh-keygen`, and
`twistd teleproxy` started from its plugin.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from teleconch import pki
from teleconch.ca import fingerprint, parse_public_key
from teleconch.client.webapi import WebAPIClient
from tests.harness import (
    Cluster,
    Person,
    ProcessResult,
    current_code,
    run,
    sign_up,
    start_cluster,
)

pytestmark = pytest.mark.interop


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path / "data")
    yield c
    await c.stop()


class _Agent(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: object) -> None:
        self.ended.callback(None)


@pytest_twisted.async_yield_fixture
async def agent_sock(tmp_path: Path) -> AsyncIterator[str]:
    """A real ssh-agent on a socket of its own."""
    sock = tmp_path / "agent.sock"
    proto = _Agent()
    process = reactor.spawnProcess(
        proto,
        "/usr/bin/ssh-agent",
        ["ssh-agent", "-D", "-a", str(sock)],
        env=dict(os.environ),
    )
    for _ in range(100):
        if sock.exists():
            break
        await deferLater(reactor, 0.05)
    yield str(sock)
    process.signalProcess("TERM")
    await proto.ended


def ctl(c: Cluster, *args: str) -> list[str]:
    return [
        "teleconch-ctl",
        "--data-dir",
        str(c.data_dir),
        "--auth-server",
        str(c.auth_addr),
        *args,
    ]


async def _login(
    c: Cluster,
    home: Path,
    person: Person,
    extra: tuple[str, ...] = ("--insecure",),
    **env: str,
) -> ProcessResult:
    code = current_code(person.totp_secret, c.clock)
    result = await run(
        [
            "teleconch",
            "login",
            "--proxy",
            str(c.web_addr),
            "--user",
            person.name,
            *extra,
        ],
        env={"TELECONCH_HOME": str(home), **env},
        stdin=f"{person.password}\n{code}\n".encode(),
    )
    c.clock.advance(30)  # a code is good once: the next login needs the next step's
    return result


@pytest_twisted.ensureDeferred
async def test_ctl_manages_users_roles_and_tokens(cluster: Cluster) -> None:
    """teleconch-ctl adds, lists, resets and removes users and roles, and makes tokens."""
    r = await run(ctl(cluster, "users", "add", "bob", "--logins", "bob,deploy"))
    assert r.code == 0, r.err
    assert re.search(r"https://\S+/web/invite/[\w-]{40,}", r.out)
    r = await run(ctl(cluster, "users", "ls"))
    assert re.search(r"bob\s+access\s+bob,deploy\s+invited", r.out), r.out

    r = await run(
        ctl(cluster, "users", "add", "carol", "--logins", "carol", "--roles", "nope")
    )
    assert r.code == 1 and "no such role: nope" in r.err
    assert "Traceback" not in r.err

    r = await run(
        ctl(
            cluster,
            "roles",
            "add",
            "dev",
            "--logins",
            "dev",
            "--node-labels",
            "env=dev",
            "--max-session-ttl",
            "8h",
        )
    )
    assert r.code == 0, r.err
    r = await run(ctl(cluster, "roles", "ls"))
    assert re.search(r"dev\s+dev\s+env=dev\s+8h", r.out), r.out
    r = await run(
        ctl(cluster, "users", "add", "carol", "--logins", "carol", "--roles", "dev")
    )
    assert r.code == 0, r.err
    r = await run(ctl(cluster, "roles", "rm", "dev"))
    assert r.code == 1 and "held by carol" in r.err

    r = await run(ctl(cluster, "users", "reset", "bob"))
    assert r.code == 0 and "/web/invite/" in r.out
    r = await run(ctl(cluster, "users", "rm", "bob"))
    assert r.code == 0
    r = await run(ctl(cluster, "users", "rm", "bob"))
    assert r.code == 1 and "no user 'bob'" in r.err

    r = await run(ctl(cluster, "tokens", "add", "--type=proxy", "--ttl", "10m"))
    assert r.code == 0, r.err
    assert re.search(r'ca_pin: "sha256:[0-9a-f]{64}"', r.out)
    assert re.search(r'auth_token: "[0-9a-f]{64}"', r.out)
    r = await run(ctl(cluster, "tokens", "ls"))
    assert re.search(r"[0-9a-f]{8}\.\.\.\s+proxy", r.out), r.out

    r = await run(
        ctl(cluster, "events", "ls", "--type", "user.create", "--format", "json")
    )
    assert r.code == 0 and '"user": "carol"' in r.out


@pytest_twisted.ensureDeferred
async def test_users_unlock_lifts_a_lock_out_without_a_reset(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`users ls` shows who is locked and until when; `users unlock` lets them in again."""
    alice = await sign_up(cluster)
    wrong = Person(alice.name, "not the password", alice.totp_secret)
    for _ in range(5):
        r = await _login(cluster, tmp_path / "tsh", wrong)
        assert r.code != 0
    r = await run(ctl(cluster, "users", "ls"))
    assert re.search(r"alice .* locked until \d{4}-\d\d-\d\dT", r.out), r.out
    r = await run(ctl(cluster, "users", "unlock", "alice"))
    assert r.code == 0 and "'alice' is unlocked" in r.out, r.err
    r = await run(ctl(cluster, "users", "ls"))
    assert "locked" not in r.out and "active" in r.out
    r = await _login(cluster, tmp_path / "tsh", alice)
    assert r.code == 0, r.err
    r = await run(ctl(cluster, "users", "unlock", "nobody"))
    assert r.code == 1 and "no user 'nobody'" in r.err
    unlocked = await cluster.admin_agent().search_events(events=["user.unlock"])
    assert [(e.user, e.fields["was_locked"]) for e in unlocked] == [("alice", True)]


@pytest_twisted.ensureDeferred
async def test_ctl_without_an_admin_identity_says_where_to_run(tmp_path: Path) -> None:
    """Run away from the auth server's data directory, teleconch-ctl explains itself."""
    r = await run(
        ["teleconch-ctl", "--data-dir", str(tmp_path / "empty"), "users", "ls"]
    )
    assert r.code == 1
    assert "no admin identity" in r.err and "Traceback" not in r.err


@pytest_twisted.ensureDeferred
async def test_login_writes_keys_known_hosts_and_agent_entries(
    cluster: Cluster, agent_sock: str, tmp_path: Path
) -> None:
    """`teleconch login` stores key + cert 0600, trusts the host CA, loads the agent."""
    alice = await sign_up(cluster)
    home = tmp_path / "tsh"
    r = await _login(
        cluster, home, alice, ("--insecure", "--ttl", "1h"), SSH_AUTH_SOCK=agent_sock
    )
    assert r.code == 0, r.err
    assert "--insecure" in r.err  # the warning
    assert "Logged in as: alice" in r.out and "Logins:       alice, root" in r.out
    assert "valid for 1h" in r.out or "valid for 59m" in r.out
    assert "ssh-agent: added the key and certificate (for " in r.out, r.out

    keys = home / "keys" / "127.0.0.1"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("alice", "alice.pub", "alice-cert.pub"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600

    known = (home / "known_hosts").read_text()
    host_ca = (await cluster.admin_agent().export_ca("host"))[0].split()[-2:]
    line = next(x for x in known.splitlines() if x.startswith("@cert-authority"))
    patterns = line.split()[1].split(",")
    assert patterns == [
        "127.0.0.1",
        "[127.0.0.1]:*",
        "*.test.example",
        "[*.test.example]:*",
    ]
    assert line.split()[2:4] == host_ca

    r = await run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": agent_sock})
    assert "ssh-ed25519-cert-v01@openssh.com" in r.out
    assert (keys / "alice-cert.pub").read_text().split()[1] in r.out

    # Logging in again replaces the cluster's known_hosts line instead of adding one.
    r = await _login(cluster, home, alice, SSH_AUTH_SOCK=agent_sock)
    assert r.code == 0, r.err
    assert (home / "known_hosts").read_text().count("@cert-authority") == 1
    assert "replacing 2 from an earlier login" in r.out, r.out

    r = await run(["teleconch", "status"], env={"TELECONCH_HOME": str(home)})
    assert (
        r.code == 0
        and "Logged in as: alice" in r.out
        and "Cluster:      test.example" in r.out
    )
    # The extensions in words (ssh-keygen -L dumps ours as hex).
    assert "Roles:        access" in r.out
    assert "permit-agent-forwarding, permit-port-forwarding, permit-pty" in r.out
    assert "Traits:       logins=alice,root" in r.out

    r = await run(
        ["teleconch", "logout"],
        env={"TELECONCH_HOME": str(home), "SSH_AUTH_SOCK": agent_sock},
    )
    assert r.code == 0, r.err
    assert "ssh-agent: removed 2 entries of this login" in r.out
    assert not (keys / "alice").exists()
    r = await run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": agent_sock})
    assert "ssh-ed25519" not in r.out
    r = await run(["teleconch", "status"], env={"TELECONCH_HOME": str(home)})
    assert r.code == 1 and "Not logged in" in r.out

    # Without an agent, both say so instead of staying silent.
    r = await _login(cluster, home, alice, SSH_AUTH_SOCK="")
    assert r.code == 0, r.err
    assert "no agent running (SSH_AUTH_SOCK is not set)" in r.out
    r = await run(
        ["teleconch", "logout"], env={"TELECONCH_HOME": str(home), "SSH_AUTH_SOCK": ""}
    )
    assert "no agent running (SSH_AUTH_SOCK is not set)" in r.out


@pytest_twisted.ensureDeferred
async def test_certificate_reads_right_in_ssh_keygen(
    cluster: Cluster, tmp_path: Path
) -> None:
    """ssh-keygen -L shows the user cert as issued, signed by the exported user CA."""
    alice = await sign_up(cluster)
    home = tmp_path / "tsh"
    r = await _login(cluster, home, alice, ("--insecure", "--ttl", "2h"))
    assert r.code == 0, r.err
    cert_file = home / "keys" / "127.0.0.1" / "alice-cert.pub"
    r = await run(["ssh-keygen", "-L", "-f", str(cert_file)], env={"TZ": "UTC"})
    assert r.code == 0, r.err
    text = r.out
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in text
    assert 'Key ID: "alice"' in text
    principals = re.search(r"Principals:\s*\n((?:\s{16}\S+\n)+)", text)
    assert principals and principals.group(1).split() == ["alice", "root"]
    for ext in (
        "permit-X11-forwarding",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
        "teleconch-roles",
    ):
        assert ext in text
    assert "Critical Options: (none)" in text
    valid = re.search(r"Valid: from (\S+) to (\S+)", text)
    assert valid
    from datetime import datetime

    start, end = (datetime.fromisoformat(v) for v in valid.groups())
    assert 2 * 3600 <= (end - start).total_seconds() <= 2 * 3600 + 61

    r = await run(ctl(cluster, "auth", "export", "--type=user"))
    assert r.code == 0, r.err
    user_ca = parse_public_key(" ".join(r.out.split()[:2]))
    assert f"Signing CA: ED25519 {fingerprint(user_ca)}" in text
    r = await run(ctl(cluster, "auth", "export", "--type=host"))
    assert r.out.startswith("@cert-authority *.test.example,test.example ssh-ed25519 ")


@pytest_twisted.ensureDeferred
async def test_login_refuses_an_untrusted_proxy_certificate(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Without --insecure a self-signed proxy is refused, and the message says what to do."""
    alice = await sign_up(cluster)
    r = await _login(cluster, tmp_path / "tsh", alice, ())
    assert r.code == 1
    assert (
        "not trusted" in r.err and "--insecure" in r.err and "https_cert_file" in r.err
    )
    assert not (tmp_path / "tsh" / "keys").exists()


@pytest_twisted.ensureDeferred
async def test_login_verifies_a_proxy_certificate_from_a_trusted_ca(
    tmp_path: Path,
) -> None:
    """With https_cert_file from a CA the client trusts, login needs no --insecure."""
    ca = pki.TLSAuthority.generate("web-ca", reactor.seconds())
    key = pki.generate_private_key_pem()
    cert = ca.issue(
        pki.public_key_pem(key),
        pki.ROLE_PROXY,
        "web",
        reactor.seconds(),
        3600,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    (tmp_path / "web.crt").write_bytes(cert)
    (tmp_path / "web.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    assert (
        x509.load_pem_x509_certificate(cert).issuer
        != x509.load_pem_x509_certificate(cert).subject
    )
    c = await start_cluster(
        tmp_path / "data",
        {
            "proxy_service": {
                "https_cert_file": str(tmp_path / "web.crt"),
                "https_key_file": str(tmp_path / "web.key"),
            }
        },
    )
    try:
        alice = await sign_up(c)
        r = await _login(
            c, tmp_path / "tsh", alice, (), SSL_CERT_FILE=str(tmp_path / "ca.crt")
        )
        assert r.code == 0, r.err
        assert "WARNING" not in r.err
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_password_at_login_prints_the_reason_not_a_traceback(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A failed login exits 1 with the server's message."""
    alice = await sign_up(cluster)
    wrong = Person(alice.name, "wrong password!", alice.totp_secret)
    r = await _login(cluster, tmp_path / "tsh", wrong)
    assert r.code == 1
    assert "ERROR: login failed" in r.err and "Traceback" not in r.err


class _Twistd(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        end = cast(
            ProcessDone | ProcessTerminated, reason.value
        )  # what processEnded gets
        self.ended.callback((end.exitCode, end.signal))


@pytest_twisted.ensureDeferred
async def test_twistd_teleproxy_starts_prints_its_banner_and_stops(
    tmp_path: Path,
) -> None:
    """The plugin runs the all-in-one from a config file and shuts down on SIGTERM."""
    config = tmp_path / "teleconch.yaml"
    config.write_text(
        f"teleconch:\n  data_dir: {tmp_path / 'data'}\n  nodename: smoke\n"
        "auth_service:\n  listen_addr: 127.0.0.1:0\n  cluster_name: smoke.test\n"
        "proxy_service:\n  listen_addr: 127.0.0.1:0\n  web_listen_addr: 127.0.0.1:0\n"
        "  peer_listen_addr: 127.0.0.1:0\n"
    )
    proto = _Twistd()
    twistd = str(Path(sys.executable).parent / "twistd")
    process = reactor.spawnProcess(
        proto,
        twistd,
        [twistd, "--pidfile=", "-n", "teleproxy", "--config", str(config)],
        env=dict(os.environ),
        path=str(tmp_path),
    )
    try:
        for _ in range(200):
            if b"users add alice" in proto.output or proto.ended.called:
                break
            await deferLater(reactor, 0.05)
        text = proto.output.decode()
        assert "teleconch smoke.test is running." in text, text
        # The banner says where each listener is bound, and names no page
        # that does not exist.
        assert re.search(r"auth service: +listening on 127\.0\.0\.1:\d+", text), text
        assert re.search(r"SSH proxy: .*\(listening on 127\.0\.0\.1:\d+\)", text)
        assert "web and login" not in text
        assert "teleconch-ctl --data-dir" in text
        web = re.search(r"proxy web listener on https://(\S+)", text)
        assert web, text
        host, port = web.group(1).rsplit(":", 1)
        from teleconch.config import HostPort

        ping = await WebAPIClient(
            reactor, HostPort(host, int(port)), insecure=True
        ).ping()
        assert ping["cluster_name"] == "smoke.test"
    finally:
        if not proto.ended.called:
            process.signalProcess(signal.SIGTERM)
    # twistd shuts down cleanly, then re-raises SIGTERM so its status reports it.
    assert await proto.ended in ((0, None), (None, signal.SIGTERM))
    assert "Server Shut Down." in proto.output.decode()
    assert (
        stat.S_IMODE((tmp_path / "data" / "auth" / "user_ca").stat().st_mode) == 0o600
    )
    key = serialization.load_ssh_private_key(
        (tmp_path / "data" / "auth" / "user_ca").read_bytes(), None
    )
    assert key is not None


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    """A typo in the config stops start-up with the key's name, not a traceback."""
    config = tmp_path / "teleconch.yaml"
    config.write_text("auth_service:\n  cluster_nam: x\n")
    r = await run(["twistd", "--pidfile=", "-n", "teleproxy", "--config", str(config)])
    assert r.code == 2
    assert "auth_service.cluster_nam" in r.err
    assert "Traceback" not in r.out + r.err
    # The message alone: not twistd's usage text nor the program's path.
    assert "Usage:" not in r.out + r.err and "--pidfile" not in r.out + r.err
    assert len((r.out + r.err).strip().splitlines()) == 1


@pytest_twisted.ensureDeferred
async def test_twistd_exits_non_zero_in_one_line_when_a_port_is_taken(
    tmp_path: Path,
) -> None:
    """Another process on the auth port: which address, which key, exit 1, no traceback."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    config = tmp_path / "teleconch.yaml"
    config.write_text(
        f"teleconch:\n  data_dir: {tmp_path / 'data'}\n"
        f"auth_service:\n  listen_addr: 127.0.0.1:{port}\n"
        "proxy_service:\n  listen_addr: 127.0.0.1:0\n  web_listen_addr: 127.0.0.1:0\n"
        "  peer_listen_addr: 127.0.0.1:0\n"
    )
    try:
        r = await run(
            ["twistd", "--pidfile=", "-n", "teleproxy", "--config", str(config)]
        )
    finally:
        holder.close()
    text = r.out + r.err
    assert r.code == 1, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "cannot" in line]
    assert len(lines) == 1, text
    assert f"cannot listen on 127.0.0.1:{port} (auth_service.listen_addr)" in lines[0]
    assert "another process holds the port" in lines[0]
